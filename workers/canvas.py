"""A job's plan as Celery's canvas: the one place where stages become messages.

``services.jobs.plan`` says which stages run, where and in what order; this turns
that into ``chain(head..., chord(segments, tail))`` (for a long video, chords of
windows nested in the body: ``chord(segment lanes, chain(stitch, ..., chord(erase
windows, chain(blend, publish))))``). Tasks are named, not imported
(``vor.<stage>``), so building a canvas loads none of the work the tasks do. Every
message carries the job's generation: re-enqueueing bumps it, which makes older
messages stale.
"""

from __future__ import annotations

from celery import chain, chord
from celery.canvas import Signature

from services.jobs.plan import Lane, Phase, Plan, Step
from services.models import Job
from workers.celery_app import app, task_name


def signature(job: Job, step: Step) -> Signature:
    """The immutable message of one step: ``vor.<stage>(job_id, generation[, label])``,
    with ``window=k`` for a long video's windowed steps."""
    args = (job.id, job.generation) if step.label is None else (job.id, job.generation, step.label)
    kwargs = {} if step.window is None else {"window": step.window}
    return app.signature(task_name(step.stage), args=args, kwargs=kwargs, immutable=True).set(
        queue=step.queue.value
    )


def _lane(job: Job, lane: Lane) -> Signature:
    sigs = [signature(job, step) for step in lane]
    return sigs[0] if len(sigs) == 1 else chain(*sigs)


def _build(job: Job, phases: tuple[Phase, ...]) -> Signature | None:
    if not phases:
        return None
    first, rest = phases[0], _build(job, phases[1:])
    if first.side_by_side:
        if rest is None:
            raise ValueError("steps side by side need a step after them")
        return chord([_lane(job, lane) for lane in first.lanes], rest)
    sigs = [signature(job, step) for step in first.lanes[0]]
    if rest is not None:
        sigs.append(rest)
    return sigs[0] if len(sigs) == 1 else chain(*sigs)


def build(job: Job, plan: Plan) -> Signature | None:
    """The canvas of ``plan`` for ``job``: ``chain(steps..., chord(lanes, rest))``; None when
    nothing is left to run."""
    return _build(job, plan.phases)
