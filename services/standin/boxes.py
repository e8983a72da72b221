"""An engine that costs almost nothing: the prompted boxes are the objects, and erasing
returns the video as it is.

``vor svor-server --engine boxes`` runs on it, so that load tests measure vor and
not the upstream's pixels.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from services.engines.base import FoundObject, Progress, Segmentation
from services.media.video import video_size, write_video
from services.models import ClassPrompt


class BoxEngine:
    name = "boxes"

    def segment(
        self, video: Path, prompt: ClassPrompt, out_dir: Path, progress: Progress
    ) -> Segmentation:
        width, height, fps, frames = video_size(video)
        ids = np.zeros((height, width), np.uint8)
        objects = []
        for number, (x, y, w, h) in enumerate(prompt.boxes, start=1):
            x0, y0 = int(x * width), int(y * height)
            x1, y1 = max(x0 + 1, int((x + w) * width)), max(y0 + 1, int((y + h) * height))
            ids[y0:y1, x0:x1] = number
            objects.append(FoundObject(id=number, box=(x, y, w, h)))
        out = write_video(out_dir / "ids.mkv", (ids for _ in range(frames)), fps,
                                codec="ffv1")  # fmt: skip
        progress(1.0)
        return Segmentation(out, objects, f"{len(objects)} boxes")

    def erase(
        self, video: Path, mask: Path, out_dir: Path, progress: Progress, *, dilation: int
    ) -> Path:
        out = out_dir / f"erased{video.suffix}"
        shutil.copyfile(video, out)
        progress(1.0)
        return out
