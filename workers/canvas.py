"""The Celery canvas of one job: which stages run, where, in what order.

compress -> segment (one task per class, joined by a chord) -> mask_convert ->
merge -> erase -> publish. Stages already done (``job.done``) are left out, so
the sweeper can re-enqueue a stalled job from where it stopped. Every message
carries the job's generation; re-enqueueing bumps it, which makes older
messages stale. Stages that wait on the network (the svor engine's segment and
erase) go to the ``io`` queue; CPU work to ``cpu``.
"""

from __future__ import annotations

from celery import chain, chord
from celery.canvas import Signature

from services.models import Job
from workers import tasks
from workers.celery_app import CPU_QUEUE, IO_QUEUE


def build(job: Job) -> Signature | None:
    """The canvas of the stages the job has still to run; None when nothing is left."""
    remote = IO_QUEUE if job.engine == "svor" else CPU_QUEUE
    done = set(job.done)

    def stage(task: Signature, *args: str, queue: str = CPU_QUEUE) -> Signature:
        return task.si(job.id, job.generation, *args).set(queue=queue)

    if job.mode == "segment":
        before = ["compress"]
        labels = [c.label for c in job.spec.classes]
        after = ["publish"]
    elif "mask_upload" in job.artifacts:
        before, labels, after = ["compress"], [], ["erase", "publish"]
    elif job.spec.from_job:
        before, labels, after = [], [], ["mask_convert", "merge", "erase", "publish"]
    else:
        before = ["compress"]
        labels = [c.label for c in job.spec.classes]
        after = ["mask_convert", "merge", "erase", "publish"]
    queues = {"erase": remote}
    steps = [stage(getattr(tasks, name), queue=queues.get(name, CPU_QUEUE))
             for name in before + after if name not in done]  # fmt: skip
    head = [s for s in steps if s.task.removeprefix("vor.") in before]
    tail = [s for s in steps if s.task.removeprefix("vor.") in after]
    segments = [stage(tasks.segment, label, queue=remote)
                for label in labels if f"segment:{label}" not in done]  # fmt: skip
    if segments:
        if not tail:
            raise ValueError(f"job {job.id} has segments left but nothing after them")
        body = tail[0] if len(tail) == 1 else chain(*tail)
        return chain(*head, chord(segments, body))
    if not head + tail:
        return None
    return chain(*head, *tail)


def enqueue(job: Job) -> None:
    canvas = build(job)
    if canvas is not None:
        canvas.apply_async()
