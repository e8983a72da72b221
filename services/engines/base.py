"""The one interface every engine speaks.

An engine sees only local files: the pipeline fetches inputs from storage
into a work directory, calls the engine, and stores what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from services.errors import InvalidInput, UnsupportedPrompt
from services.models import ClassPrompt, InputInfo, Queue

Progress = Callable[[float], None]
"""Called with 0..1 as work advances; it may raise ``Canceled`` to stop the work."""


def no_progress(_: float) -> None:
    return None


@dataclass(frozen=True)
class FoundObject:
    id: int
    box: tuple[float, float, float, float]
    """[x, y, w, h] normalised to 0..1, on the annotation frame (or where first seen)."""


@dataclass
class Segmentation:
    mask_path: Path
    """Object-id mask: gray8 FFV1 in MKV, same size and frame count as the working video."""
    objects: list[FoundObject] = field(default_factory=list)
    suggestion: str = ""


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, declared once; every check of a job against its engine
    (at submit, in the compress stage, when segmenting) reads this."""

    name: str
    queue: Queue
    """Where its segment and erase stages wait for a worker."""
    text_prompts: bool
    """Whether it can find objects from a text prompt alone."""
    max_clip_s: float | None = None
    """The longest clip it takes; None: only the service's own limit."""
    window_s: float | None = None
    """The longest clip one call of it takes; a longer video runs as overlapping windows
    of this length (``services.media.windows``). None: the whole video in one call."""

    def check_clip(self, info: InputInfo) -> None:
        """Refuse a clip longer than ``max_clip_s`` (by more than half a frame, which a
        container's rounding of the last frame's duration can add)."""
        limit = self.max_clip_s
        if limit is not None and info.duration_s > limit + 0.5 / max(info.fps, 1.0):
            raise InvalidInput(
                f"the {self.name} engine takes clips of at most {limit:g} s and this one lasts "
                f"{info.duration_s:.2f} s: trim it, or use the local engine",
                field="video",
            )

    def check_prompt(self, prompt: ClassPrompt, field: str) -> None:
        """Refuse a class this engine cannot segment (a text prompt alone, without text)."""
        if not self.text_prompts and not prompt.has_geometry:
            raise UnsupportedPrompt(
                f"class {prompt.label!r} has only a text prompt; the {self.name} engine needs "
                "boxes or points (text needs a segmentation model: use engine 'svor')",
                field=field,
            )


class Engine(Protocol):
    name: str
    capabilities: Capabilities

    def prepare(self, source: Path, info: InputInfo, out_dir: Path, progress: Progress) -> Path:
        """Make the working copy this engine segments and erases (the compress stage)."""
        ...

    def segment(
        self, video: Path, prompt: ClassPrompt, out_dir: Path, progress: Progress
    ) -> Segmentation:
        """Find the prompted objects in every frame of ``video``."""
        ...

    def erase(
        self, video: Path, mask: Path, out_dir: Path, progress: Progress, *, dilation: int
    ) -> Path:
        """Remove the 255 region of ``mask`` from ``video``; same size and frame count."""
        ...
