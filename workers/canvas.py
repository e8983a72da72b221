"""A job's plan as Celery's canvas: the one place where stages become messages.

``services.jobs.plan`` says which stages run, where and in what order; this turns
that into ``chain(head..., chord(segments, tail))``. Tasks are named, not imported
(``vor.<stage>``), so building a canvas loads none of the work the tasks do. Every
message carries the job's generation: re-enqueueing bumps it, which makes older
messages stale.
"""

from __future__ import annotations

from celery import chain, chord
from celery.canvas import Signature

from services.jobs.plan import Plan, Step
from services.models import Job
from workers.celery_app import app, task_name


def signature(job: Job, step: Step) -> Signature:
    """The immutable message of one step: ``vor.<stage>(job_id, generation[, label])``."""
    args = (job.id, job.generation) if step.label is None else (job.id, job.generation, step.label)
    return app.signature(task_name(step.stage), args=args, immutable=True).set(
        queue=step.queue.value
    )


def build(job: Job, plan: Plan) -> Signature | None:
    """The canvas of ``plan`` for ``job``; None when nothing is left to run."""
    head = [signature(job, step) for step in plan.head]
    tail = [signature(job, step) for step in plan.tail]
    if plan.segments:
        body = tail[0] if len(tail) == 1 else chain(*tail)
        return chain(*head, chord([signature(job, step) for step in plan.segments], body))
    if not head + tail:
        return None
    return chain(*head, *tail)
