"""The stages of a job, as data: which run, in what order, on which queue, and how much
of the job's progress each one stands for.

A remove job runs ``compress -> segment (one per class, side by side) -> mask_convert ->
merge -> erase -> publish``; a segment job stops after segmentation and publishes its
masks; a job with its own mask skips segmentation, and a ``from_job`` remove job starts
at ``mask_convert``. Stages already done (``job.done``) are left out, so the sweeper
can enqueue a stalled job again from where it stopped. The engine's stages (segment,
erase) go to the queue its capabilities name; everything else computes on ``cpu``.

A video longer than its engine takes in one call (``job.windows``: more than one)
segments and erases per window (``segment:<label>:w<k>``, ``erase:w<k>``): a class
prompted by text segments every window side by side; one prompted by boxes or points
goes window by window outward from the annotation frame's window (each window is
prompted from the one before it); ``stitch`` then gives the whole video one set of
object ids, the windows are erased side by side, and ``blend`` cross-fades them into
one video before ``publish``. A one-window job runs exactly the plan above.

``workers/`` turns a ``Plan`` into Celery's canvas; nothing here knows Celery.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.media.windows import anchor, order_from
from services.models import ClassPrompt, Job, Queue, Stage

ENGINE_STAGES = frozenset({Stage.segment, Stage.erase})
"""Stages whose work the engine does, on the queue the engine declares."""
WEBHOOK_QUEUE = Queue.io
"""Webhook deliveries wait on the network."""
BATCH_QUEUE = Queue.io
"""Expanding a batch into jobs waits on Redis (and on DNS, checking each item's URL)."""

SPANS: dict[str, dict[Stage, tuple[float, float]]] = {
    "remove": {
        Stage.compress: (0.0, 0.1),
        Stage.segment: (0.1, 0.38),
        Stage.stitch: (0.38, 0.4),
        Stage.mask_convert: (0.4, 0.45),
        Stage.merge: (0.45, 0.5),
        Stage.erase: (0.5, 0.82),
        Stage.blend: (0.82, 0.85),
        Stage.publish: (0.85, 1.0),
    },
    "segment": {
        Stage.compress: (0.0, 0.2),
        Stage.segment: (0.2, 0.8),
        Stage.stitch: (0.8, 0.85),
        Stage.publish: (0.85, 1.0),
    },
}
"""The share of a job's progress each stage covers, per mode."""


def stage_key(stage: Stage, label: str | None = None, window: int | None = None) -> str:
    """How a job's ``done`` and ``runs`` name a step: ``erase``, ``segment:<label>``, and
    per window ``erase:w<k>``, ``segment:<label>:w<k>``."""
    parts = [stage.value, *([label] if label is not None else []),
             *([f"w{window}"] if window is not None else [])]  # fmt: skip
    return ":".join(parts)


def span(mode: str, stage: Stage) -> tuple[float, float]:
    """Where ``stage`` starts and ends within the progress (0..1) of a ``mode`` job."""
    return SPANS[mode].get(stage, (0.0, 1.0))


@dataclass(frozen=True)
class Step:
    """One message to send: a stage (of one class, for segment; of one window, for a long
    video's segment and erase) on a queue."""

    stage: Stage
    queue: Queue
    label: str | None = None
    window: int | None = None

    @property
    def key(self) -> str:
        return stage_key(self.stage, self.label, self.window)


Lane = tuple[Step, ...]
"""Steps that run one after another."""


@dataclass(frozen=True)
class Phase:
    """Lanes: one runs alone; several (or one marked ``side_by_side``) run side by side,
    and the next phase starts once every one of them finished."""

    lanes: tuple[Lane, ...]
    side_by_side: bool = False


@dataclass(frozen=True)
class Plan:
    """The steps a job has still to run, phase after phase."""

    phases: tuple[Phase, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.phases

    def steps(self) -> tuple[Step, ...]:
        return tuple(step for phase in self.phases for lane in phase.lanes for step in lane)


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


def class_lanes(prompt: ClassPrompt, windows: list[tuple[int, int]]) -> list[Lane]:
    """A class's segment steps per window (queue filled in by ``plan``): every window on
    its own lane for a text prompt; one lane outward from the annotation frame's window
    for boxes and points, each window prompted from the one it follows."""
    steps = [Step(Stage.segment, Queue.cpu, prompt.label, k) for k in range(len(windows))]
    if not prompt.has_geometry:
        return [(step,) for step in steps]
    order = order_from(anchor(windows, prompt.frame_index), len(windows))
    return [tuple(steps[k] for k, _ in order)]


class _Builder:
    def __init__(self, job: Job, engine_queue: Queue) -> None:
        self.done = set(job.done)
        self.engine_queue = engine_queue
        self.phases: list[Phase] = []
        self.serial: list[Step] = []

    def step(self, stage: Stage, label: str | None = None, window: int | None = None) -> Step:
        queue = self.engine_queue if stage in ENGINE_STAGES else Queue.cpu
        return Step(stage, queue, label, window)

    def then(self, *steps: Step) -> None:
        self.serial.extend(s for s in steps if s.key not in self.done)

    def side_by_side(self, lanes: list[Lane]) -> None:
        left = [lane for lane in (tuple(s for s in ln if s.key not in self.done) for ln in lanes)
                if lane]  # fmt: skip
        if not left:
            return
        if self.serial:
            self.phases.append(Phase((tuple(self.serial),)))
            self.serial = []
        self.phases.append(Phase(tuple(left), side_by_side=True))

    def plan(self) -> Plan:
        if self.serial:
            self.phases.append(Phase((tuple(self.serial),)))
        if self.phases and self.phases[-1].side_by_side:
            raise ValueError("a plan may not end with steps side by side")
        return Plan(tuple(self.phases))


def plan(job: Job, engine_queue: Queue) -> Plan:
    """The steps ``job`` has still to run; its engine's stages go to ``engine_queue``."""
    before, labels, after = stages(job)
    build = _Builder(job, engine_queue)
    build.then(*(build.step(s) for s in before))
    windows = list(job.windows)
    if len(windows) < 2:
        segments = [build.step(Stage.segment, label) for label in labels]
        build.side_by_side([(step,) for step in segments])
        left = [s for s in segments if s.key not in build.done]
        if left and not [s for s in after if s.value not in build.done]:
            raise ValueError(f"job {job.id} has segments left but nothing after them")
        build.then(*(build.step(s) for s in after))
        return build.plan()
    prompts = {c.label: c for c in job.spec.classes}
    lanes = [tuple(build.step(s.stage, s.label, s.window) for s in lane)
             for label in labels for lane in class_lanes(prompts[label], windows)]  # fmt: skip
    build.side_by_side(lanes)
    if labels:
        build.then(build.step(Stage.stitch))
    for stage in after:
        if stage is Stage.erase:
            build.side_by_side([(build.step(Stage.erase, None, k),) for k in range(len(windows))])
            build.then(build.step(Stage.blend))
        else:
            build.then(build.step(stage))
    return build.plan()


def windowed_steps_done(job: Job, stage: Stage) -> tuple[int, int]:
    """Windowed steps of ``stage`` done, of how many (every class's, for segment)."""
    total = len(job.windows) * (len(job.spec.classes) if stage is Stage.segment else 1)
    done = sum(1 for key in job.done if key.startswith(f"{stage.value}:") and ":w" in key)
    return done, max(1, total)
