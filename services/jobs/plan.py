"""The stages of a job, as data: which run, in what order, on which queue, and how much
of the job's progress each one stands for.

A remove job runs ``compress -> segment (one per class, side by side) -> mask_convert ->
merge -> erase -> publish``; a segment job stops after segmentation and publishes its
masks; a job with its own mask skips segmentation, and a ``from_job`` remove job starts
at ``mask_convert``. Stages already done (``job.done``) are left out, so the sweeper
can enqueue a stalled job again from where it stopped. The engine's stages (segment,
erase) go to the queue its capabilities name; everything else computes on ``cpu``.

``workers/`` turns a ``Plan`` into Celery's canvas; nothing here knows Celery.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.models import Job, Queue, Stage

ENGINE_STAGES = frozenset({Stage.segment, Stage.erase})
"""Stages whose work the engine does, on the queue the engine declares."""
WEBHOOK_QUEUE = Queue.io
"""Webhook deliveries wait on the network."""
BATCH_QUEUE = Queue.io
"""Expanding a batch into jobs waits on Redis (and on DNS, checking each item's URL)."""

SPANS: dict[str, dict[Stage, tuple[float, float]]] = {
    "remove": {
        Stage.compress: (0.0, 0.1),
        Stage.segment: (0.1, 0.4),
        Stage.mask_convert: (0.4, 0.45),
        Stage.merge: (0.45, 0.5),
        Stage.erase: (0.5, 0.85),
        Stage.publish: (0.85, 1.0),
    },
    "segment": {Stage.compress: (0.0, 0.2), Stage.segment: (0.2, 0.85), Stage.publish: (0.85, 1.0)},
}
"""The share of a job's progress each stage covers, per mode."""


def stage_key(stage: Stage, label: str | None = None) -> str:
    """How a job's ``done`` and ``runs`` name a stage: ``erase``, or ``segment:<label>``."""
    return stage.value if label is None else f"{stage.value}:{label}"


def span(mode: str, stage: Stage) -> tuple[float, float]:
    """Where ``stage`` starts and ends within the progress (0..1) of a ``mode`` job."""
    return SPANS[mode].get(stage, (0.0, 1.0))


@dataclass(frozen=True)
class Step:
    """One message to send: a stage (of one class, for segment) on a queue."""

    stage: Stage
    queue: Queue
    label: str | None = None

    @property
    def key(self) -> str:
        return stage_key(self.stage, self.label)


@dataclass(frozen=True)
class Plan:
    """The steps a job has still to run: ``head`` in order, then every one of
    ``segments`` side by side, then ``tail`` in order once they all finished."""

    head: tuple[Step, ...] = ()
    segments: tuple[Step, ...] = ()
    tail: tuple[Step, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.head or self.segments or self.tail)

    def steps(self) -> tuple[Step, ...]:
        return (*self.head, *self.segments, *self.tail)


def stages(job: Job) -> tuple[list[Stage], list[str], list[Stage]]:
    """The job's whole plan by mode and inputs: stages before segmentation, the classes
    to segment, and the stages after it."""
    labels = [c.label for c in job.spec.classes]
    if job.mode == "segment":
        return [Stage.compress], labels, [Stage.publish]
    after = [Stage.mask_convert, Stage.merge, Stage.erase, Stage.publish]
    if "mask_upload" in job.artifacts:
        return [Stage.compress], [], [Stage.erase, Stage.publish]
    if job.spec.from_job:
        return [], [], after
    return [Stage.compress], labels, after


def plan(job: Job, engine_queue: Queue) -> Plan:
    """The steps ``job`` has still to run; its engine's stages go to ``engine_queue``."""
    before, labels, after = stages(job)
    done = set(job.done)

    def step(stage: Stage, label: str | None = None) -> Step:
        return Step(stage, engine_queue if stage in ENGINE_STAGES else Queue.cpu, label)

    head = tuple(step(s) for s in before if s.value not in done)
    segments = tuple(
        step(Stage.segment, label)
        for label in labels
        if stage_key(Stage.segment, label) not in done
    )
    tail = tuple(step(s) for s in after if s.value not in done)
    if segments and not tail:
        raise ValueError(f"job {job.id} has segments left but nothing after them")
    return Plan(head, segments, tail)
