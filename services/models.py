"""The job spec a client sends and the job vor keeps, as pydantic models."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.errors import InvalidSpec

Unit = Annotated[float, Field(ge=0.0, le=1.0)]
LABEL_PATTERN = re.compile(r"[A-Za-z0-9_\-]{1,64}")
"""A class label, matched whole (``fullmatch``: ``$`` would let a final newline through)."""
URL_PATTERN = re.compile(r"https?://[^\s/]+(/\S*)?")


def http_url(value: str | None) -> str | None:
    """A URL field's check: http(s), no spaces or line breaks; None passes."""
    if value is not None and not URL_PATTERN.fullmatch(value):
        raise ValueError("must be an http:// or https:// URL, without spaces or line breaks")
    return value


WEBHOOK_EVENTS = ("job.succeeded", "job.failed", "job.canceled", "job.progress")


class Status(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    def is_terminal(self) -> bool:
        return self in {Status.succeeded, Status.failed, Status.canceled}


class Stage(StrEnum):
    compress = "compress"
    segment = "segment"
    stitch = "stitch"
    mask_convert = "mask_convert"
    merge = "merge"
    erase = "erase"
    blend = "blend"
    publish = "publish"


class Queue(StrEnum):
    """Where work waits for a worker: ``cpu`` for computing, ``io`` for waiting on the network."""

    cpu = "cpu"
    io = "io"


class ClassPrompt(BaseModel):
    """One class of objects to find: by text, boxes or points, on one frame."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(examples=["person"])
    text: str | None = Field(default=None, examples=["person"])
    remove_prompt: str | None = None
    boxes: list[tuple[Unit, Unit, Unit, Unit]] = Field(
        default_factory=list,
        max_length=255,
        description="[x, y, w, h], top-left corner, normalised 0..1; each box is one object "
        "(ids 1..255)",
    )
    points: list[tuple[Unit, Unit]] = Field(default_factory=list, description="[x, y], 0..1")
    point_labels: list[Literal[0, 1]] = Field(
        default_factory=list, description="1 = on the object, 0 = not on it; one per point"
    )
    frame_index: int = Field(default=0, ge=0, description="the annotation frame")

    @field_validator("label")
    @classmethod
    def _label_is_a_name(cls, value: str) -> str:
        if not LABEL_PATTERN.fullmatch(value):
            raise ValueError("label must be 1-64 letters, digits, '_' or '-'")
        return value

    @field_validator("boxes")
    @classmethod
    def _boxes_inside_frame(
        cls, boxes: list[tuple[float, float, float, float]]
    ) -> list[tuple[float, float, float, float]]:
        for x, y, w, h in boxes:
            if w <= 0 or h <= 0:
                raise ValueError("a box needs a positive width and height")
            if x + w > 1.0 + 1e-6 or y + h > 1.0 + 1e-6:
                raise ValueError(
                    "a box [x, y, w, h] must lie inside the frame (x+w <= 1, y+h <= 1)"
                )
        return boxes

    @model_validator(mode="after")
    def _points_have_labels(self) -> ClassPrompt:
        if self.point_labels and len(self.point_labels) != len(self.points):
            raise ValueError("point_labels needs one label per point")
        if self.points and not self.point_labels:
            self.point_labels = [1] * len(self.points)
        if self.points and 1 not in self.point_labels and not self.boxes:
            raise ValueError("points need at least one positive (label 1) point")
        if not (self.text or self.boxes or self.points):
            raise ValueError("a class needs a text, boxes or points")
        return self

    @property
    def has_geometry(self) -> bool:
        return bool(self.boxes or self.points)

    def check_frame_index(self, frames: int, *, field: str) -> None:
        """Refuse an annotation frame past the video's last (``frames`` frames long)."""
        if self.frame_index >= frames:
            raise InvalidSpec(
                f"frame_index {self.frame_index} is past the last frame: the video has "
                f"{frames} frames (0..{frames - 1})",
                field=field,
            )


class JobOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mask_dilation: int | None = Field(
        default=None, ge=0, le=64, description="pixels grown around the mask; default 4"
    )
    cutout: list[int] | None = Field(
        default=None, description="segment jobs: object ids to publish cut out on black/alpha"
    )


class JobSpec(BaseModel):
    """What a client asks for. Checked in full before anything is queued."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "mode": "remove",
                    "engine": "local",
                    "classes": [
                        {"label": "person", "boxes": [[0.15, 0.70, 0.30, 0.25]], "frame_index": 0}
                    ],
                    "options": {"mask_dilation": 4},
                    "webhook_url": "https://example.com/hooks/vor",
                    "webhook_events": ["job.succeeded", "job.failed"],
                }
            ]
        },
    )

    mode: Literal["remove", "segment"] = "remove"
    engine: Literal["local", "svor"] | None = None
    classes: list[ClassPrompt] = Field(default_factory=list, max_length=16)
    targets: dict[str, list[Annotated[int, Field(ge=1, le=255)]]] | None = None
    from_job: str | None = Field(
        default=None,
        description="a finished segment job whose video (and, for a remove job, objects) to reuse",
    )
    options: JobOptions = Field(default_factory=JobOptions)
    webhook_url: str | None = Field(default=None, max_length=2048)
    webhook_events: list[str] = Field(
        default_factory=lambda: ["job.succeeded", "job.failed", "job.canceled"]
    )
    video_url: str | None = Field(default=None, max_length=2048)
    priority: Literal["high", "normal", "low"] = Field(
        default="normal",
        description="orders this tenant's own queued jobs: high before normal before low",
    )

    @field_validator("webhook_url", "video_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return http_url(value)

    @field_validator("targets")
    @classmethod
    def _targets_name_classes(
        cls, targets: dict[str, list[int]] | None, info: ValidationInfo
    ) -> dict[str, list[int]] | None:
        classes = info.data.get("classes") or []
        labels = [c.label for c in classes]
        unknown = sorted(set(targets or {}) - set(labels)) if labels else []
        if unknown:
            raise ValueError(f"targets name unknown classes {unknown}; classes are {labels}")
        return targets

    @field_validator("webhook_events")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - set(WEBHOOK_EVENTS))
        if unknown:
            raise ValueError(f"unknown events {unknown}; known: {list(WEBHOOK_EVENTS)}")
        return events

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        labels = [c.label for c in self.classes]
        if len(set(labels)) != len(labels):
            raise ValueError("class labels must be unique")
        if self.mode == "segment" and not self.classes:
            raise ValueError("a segment job needs at least one class")
        if self.mode == "remove" and not self.from_job:
            for c in self.classes:
                if not c.has_geometry and not (self.targets and self.targets.get(c.label)):
                    raise ValueError(
                        f"class {c.label!r} has only a text prompt: name the ids to remove in "
                        f"targets (run a segment job first to see them)"
                    )
        return self


class InputInfo(BaseModel):
    duration_s: float
    width: int
    height: int
    fps: float
    frames: int
    audio: bool
    codec: str | None = None
    rotation: int = 0
    size_bytes: int | None = None


class SegmentObject(BaseModel):
    id: int
    box: tuple[float, float, float, float] = Field(description="[x, y, w, h] normalised")


class SegmentInfo(BaseModel):
    suggestion: str = ""
    objects: list[SegmentObject] = Field(default_factory=list)


class WindowProgress(BaseModel):
    """A long video on an engine with a clip limit runs as windows (``services.media.windows``)."""

    total: int = Field(description="windows the working video is cut into")
    segmented: int = Field(description="windows every class has been segmented on")
    erased: int = Field(description="windows erased (remove jobs)")
    done: int = Field(description="windows finished: erased (remove jobs) or segmented")


class JobError(BaseModel):
    code: str
    message: str
    stage: str | None = None


class WebhookAttempt(BaseModel):
    event: str
    webhook_id: str
    attempt: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    ok: bool = False


def utcnow() -> datetime:
    return datetime.now(UTC)


class Job(BaseModel):
    """A job as the job store keeps it; ``public()`` is what a client sees."""

    id: str
    tenant: str
    mode: Literal["remove", "segment"]
    engine: Literal["local", "svor"]
    status: Status = Status.queued
    stage: Stage | None = None
    progress: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    spec: JobSpec
    input: InputInfo | None = None
    segments: dict[str, SegmentInfo] = Field(default_factory=dict)
    selection: dict[str, list[int] | None] = Field(
        default_factory=dict, description="per class, the object ids to remove (None: all)"
    )
    artifacts: dict[str, str] = Field(
        default_factory=dict, description="storage keys: input, work, masks, result, ..."
    )
    windows: list[tuple[int, int]] = Field(
        default_factory=list,
        description="frame ranges [start, end) of the working video's windows; empty or one: "
        "the video runs whole",
    )
    error: JobError | None = None
    generation: int = Field(
        default=0, description="bumped when the sweeper re-enqueues; older messages are stale"
    )
    done: list[str] = Field(default_factory=list, description="stages (and classes) finished")
    stage_started_at: datetime | None = None
    runs: dict[str, int] = Field(
        default_factory=dict, description="how often each stage (and class) was started"
    )
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="seconds spent in each stage (the slowest class for segment)",
    )
    webhooks: list[WebhookAttempt] = Field(default_factory=list)
    webhook_state: dict[str, str] = Field(
        default_factory=dict, description="per terminal event: delivered, retrying, failed, gone"
    )
    idempotency_key: str | None = None
    batch_id: str | None = Field(default=None, description="the batch this job is an item of")
    batch_index: int | None = Field(default=None, description="its index in that batch's items")

    def public(
        self, result: dict[str, str] | None = None, input_url: str | None = None
    ) -> dict[str, Any]:
        return self.view(result, input_url).model_dump(mode="json")

    def window_progress(self) -> WindowProgress | None:
        if len(self.windows) < 2:
            return None
        total = len(self.windows)
        labels = [c.label for c in self.spec.classes]
        done = set(self.done)
        segmented = (
            sum(all(f"segment:{label}:w{k}" in done for label in labels) for k in range(total))
            if labels
            else 0
        )
        erased = sum(f"erase:w{k}" in done for k in range(total))
        finished = erased if self.mode == "remove" else segmented
        return WindowProgress(total=total, segmented=segmented, erased=erased, done=finished)

    def windows_state(self) -> dict[str, Any]:
        """A long video's windows done of total, as events carry it; nothing for a short one."""
        progress = self.window_progress()
        return {} if progress is None else {"windows": progress.model_dump()}

    def view(self, result: dict[str, str] | None = None, input_url: str | None = None) -> JobView:
        return JobView(
            id=self.id,
            mode=self.mode,
            engine=self.engine,
            status=self.status,
            stage=self.stage,
            progress=round(self.progress, 4),
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            input=self.input,
            spec=self.spec,
            segments=self.segments,
            result=result or {},
            input_url=input_url,
            error=self.error,
            windows=self.window_progress(),
            timings={k: round(v, 3) for k, v in self.timings.items()},
            runs=self.runs,
            webhooks=self.webhooks,
            webhook_state=self.webhook_state,
            batch_id=self.batch_id,
        )


class JobView(BaseModel):
    """A job as a client sees it (the API's answers and the webhooks' ``data``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(examples=["job_3f2a9c0d1e4b5a6f7c8d"])
    mode: Literal["remove", "segment"]
    engine: Literal["local", "svor"]
    status: Status
    stage: Stage | None = Field(description="the stage running or last run")
    progress: float = Field(ge=0.0, le=1.0)
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    input: InputInfo | None = Field(description="the probed video; null until it is known")
    spec: JobSpec = Field(description="the spec as accepted")
    segments: dict[str, SegmentInfo] = Field(
        description="per class: the objects segmentation found"
    )
    result: dict[str, str] = Field(
        description="signed URLs of the results once succeeded: video_url, mask_url, "
        "preview_url (segment jobs: mask_url, preview_url, overlay_url per class, ...)"
    )
    input_url: str | None = Field(
        default=None,
        description="signed URL of the video as sent (null for a video_url not fetched yet)",
    )
    error: JobError | None = Field(description="why the job failed")
    windows: WindowProgress | None = Field(
        default=None, description="long videos on the svor engine: windows done of total"
    )
    timings: dict[str, float] = Field(description="seconds spent in each stage")
    runs: dict[str, int] = Field(description="how often each stage (and class) was started")
    webhooks: list[WebhookAttempt] = Field(description="every webhook delivery attempt")
    webhook_state: dict[str, str] = Field(
        description="per terminal event: delivered, retrying, failed or gone"
    )
    batch_id: str | None = Field(default=None, description="the batch this job is an item of")
