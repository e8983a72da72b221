"""The Celery canvas of one job: which stages run, where, in what order.

compress -> segment (one task per class, joined by a chord) -> mask_convert ->
merge -> erase -> publish. Stages that wait on the network (the svor engine's
segment and erase) go to the ``io`` queue; CPU work to ``cpu``.
"""

from __future__ import annotations

from celery import chain, chord
from celery.canvas import Signature

from services.models import Job
from workers import tasks
from workers.celery_app import CPU_QUEUE, IO_QUEUE


def build(job: Job) -> Signature:
    remote = IO_QUEUE if job.engine == "svor" else CPU_QUEUE

    def stage(task: Signature, *args: str, queue: str = CPU_QUEUE) -> Signature:
        return task.si(job.id, *args).set(queue=queue)

    tail = [stage(tasks.erase, queue=remote), stage(tasks.publish)]
    if job.mode == "segment":
        segments = [stage(tasks.segment, c.label, queue=remote) for c in job.spec.classes]
        return chain(stage(tasks.compress), chord(segments, stage(tasks.publish)))
    if "mask_upload" in job.artifacts:
        return chain(stage(tasks.compress), *tail)
    convert = [stage(tasks.mask_convert), stage(tasks.merge)]
    if job.spec.from_job:
        return chain(*convert, *tail)
    segments = [stage(tasks.segment, c.label, queue=remote) for c in job.spec.classes]
    return chain(stage(tasks.compress), chord(segments, chain(*convert, *tail)))


def enqueue(job: Job) -> None:
    build(job).apply_async()
