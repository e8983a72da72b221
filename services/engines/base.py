"""The one interface every engine speaks.

An engine sees only local files: the pipeline fetches inputs from storage
into a work directory, calls the engine, and stores what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from services.models import ClassPrompt, InputInfo

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


class Engine(Protocol):
    name: str

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
