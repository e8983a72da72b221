"""The ``local`` engine: CPU only, no key, no network, no model weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from services.engines.base import FoundObject, Progress, Segmentation
from services.engines.local import CAPABILITIES, capabilities
from services.engines.local.inpaint import erase_frames
from services.engines.local.tracking import MaskTracker, id_map, seeds_from_prompt, segment_seed
from services.media.masks import dilate
from services.media.video import VideoWriter, read_frames, video_size
from services.models import ClassPrompt, InputInfo

_PROGRESS_EVERY = 8


class LocalEngine:
    name = "local"
    capabilities = CAPABILITIES

    def __init__(
        self, *, max_side: int = 960, working_crf: int = 14, window_s: float = 0.0
    ) -> None:
        self.max_side = max_side
        self.working_crf = working_crf
        self.capabilities = capabilities(window_s)

    def prepare(self, source: Path, info: InputInfo, out_dir: Path, progress: Progress) -> Path:
        """Decode, downscale so the long side is at most ``max_side``, re-encode near-lossless."""
        width, height = working_size(info.width, info.height, self.max_side)
        out = Path(out_dir) / "work.mp4"
        total = max(1, info.frames)
        with VideoWriter(out, width, height, info.fps, crf=self.working_crf) as writer:
            for index, image in enumerate(read_frames(source)):
                if image.shape[1] != width or image.shape[0] != height:
                    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
                writer.write(image)
                if index % _PROGRESS_EVERY == 0:
                    progress(min(1.0, index / total))
        progress(1.0)
        return out

    def segment(
        self, video: Path, prompt: ClassPrompt, out_dir: Path, progress: Progress
    ) -> Segmentation:
        self.capabilities.check_prompt(prompt, "classes")
        width, height, fps, frames = video_size(video)
        prompt.check_frame_index(frames, field="classes.frame_index")
        out_dir = Path(out_dir)
        store = np.lib.format.open_memmap(
            out_dir / f"{prompt.label}.frames.npy", "w+", np.uint8, (frames, height, width, 3)
        )
        ids = np.lib.format.open_memmap(
            out_dir / f"{prompt.label}.ids.npy", "w+", np.uint8, (frames, height, width)
        )
        try:
            count = 0
            for index, image in enumerate(read_frames(video)):
                if index >= frames:
                    break
                store[index] = image
                count += 1
            frames = count
            anchor = store[prompt.frame_index]
            seeds = seeds_from_prompt(prompt, width, height)
            beside = [
                store[i]
                for i in (prompt.frame_index - 1, prompt.frame_index + 1)
                if 0 <= i < frames
            ]
            masks = [segment_seed(anchor, seed, beside) for seed in seeds]
            ids[prompt.frame_index] = id_map(masks, (height, width))
            done = 1
            for order in (
                range(prompt.frame_index + 1, frames),
                range(prompt.frame_index - 1, -1, -1),
            ):
                tracker = MaskTracker(anchor, masks)
                for index in order:
                    after = index + order.step
                    upcoming = store[after] if 0 <= after < frames else None
                    ids[index] = id_map(tracker.step(store[index], upcoming), (height, width))
                    done += 1
                    if done % _PROGRESS_EVERY == 0:
                        progress(0.95 * done / frames)
            mask_path = out_dir / f"{prompt.label}.mask.mkv"
            with VideoWriter(mask_path, width, height, fps, codec="ffv1") as writer:
                for index in range(frames):
                    writer.write(ids[index])
            objects = [
                FoundObject(i, _normalised_box(m, width, height, seed.box))
                for i, (m, seed) in enumerate(zip(masks, seeds, strict=True), start=1)
            ]
        finally:
            del store, ids
            (out_dir / f"{prompt.label}.frames.npy").unlink(missing_ok=True)
            (out_dir / f"{prompt.label}.ids.npy").unlink(missing_ok=True)
        progress(1.0)
        return Segmentation(mask_path, objects, _suggestion(prompt, len(objects)))

    def erase(
        self, video: Path, mask: Path, out_dir: Path, progress: Progress, *, dilation: int
    ) -> Path:
        width, height, fps, frames = video_size(video)
        out = Path(out_dir) / "erased.mkv"
        holes = (dilate(m > 127, dilation) for m in _mask_frames(mask, width, height))
        total = max(1, frames)
        with VideoWriter(out, width, height, fps, codec="ffv1", pix_fmt="bgr0") as writer:
            for index, image in enumerate(erase_frames(read_frames(video), holes)):
                writer.write(image)
                if index % _PROGRESS_EVERY == 0:
                    progress(min(1.0, index / total))
        progress(1.0)
        return out


def working_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size the engine works at: long side at most ``max_side``, both sides even."""
    scale = min(1.0, max_side / max(width, height))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def _mask_frames(path: Path, width: int, height: int) -> Iterator[np.ndarray]:
    for m in read_frames(path, "gray"):
        if m.shape != (height, width):
            m = cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST)
        yield m


def _normalised_box(
    mask: np.ndarray, width: int, height: int, fallback: tuple[int, int, int, int] | None
) -> tuple[float, float, float, float]:
    if mask.any():
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    elif fallback is not None:
        x0, y0 = fallback[0], fallback[1]
        x1, y1 = x0 + fallback[2], y0 + fallback[3]
    else:
        return (0.0, 0.0, 0.0, 0.0)
    return (
        round(float(x0) / width, 5),
        round(float(y0) / height, 5),
        round(float(x1 - x0) / width, 5),
        round(float(y1 - y0) / height, 5),
    )


def _suggestion(prompt: ClassPrompt, count: int) -> str:
    parts = []
    if prompt.boxes:
        parts.append(f"{len(prompt.boxes)} box{'es' if len(prompt.boxes) != 1 else ''}")
    if prompt.points:
        parts.append(f"{len(prompt.points)} point{'s' if len(prompt.points) != 1 else ''}")
    noun = "object" if count == 1 else "objects"
    return f"{count} {noun} from {' and '.join(parts)} on frame {prompt.frame_index}"
