"""The publish stage's picture: the erased region pasted back into the original.

The engine works on a (possibly smaller) working copy; the result keeps the
original's resolution, frame rate, frame count, orientation and audio, and every
pixel outside the dilated mask is the original's own. The edge is feathered
inside the dilated region only, so nothing outside it changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from services.errors import VorError
from services.media.masks import frame_count, mask_size
from services.media.video import VideoWriter, open_input, read_frames, run_ffmpeg


@dataclass(frozen=True)
class SourceFacts:
    width: int
    height: int
    fps: Fraction
    frames: int
    rotation: int
    """Display rotation, degrees counter-clockwise, as ffmpeg's ``-display_rotation``."""
    audio: bool
    video_offset_s: float
    """How far the video starts after the file's start, so the audio stays in sync."""


@dataclass(frozen=True)
class Blend:
    """Paste ``erased`` into ``original`` where the mask is, grown and feathered at full size."""

    grow: int
    ramp: int

    @classmethod
    def for_scale(cls, dilation: int, feather: int, scale: float) -> Blend:
        """Pixel counts at working size, scaled to full size; the feather never passes the
        dilation, so the region the engine erased is always taken whole."""
        grow = round(max(0, dilation) * scale)
        return cls(grow=grow, ramp=min(grow, round(max(0, feather) * scale)))

    def apply(self, original: np.ndarray, erased: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``erased`` and ``mask`` are already at the original's size; returns a new frame.

        One distance transform gives both the dilation (distance to the mask <=
        ``grow``, a disc) and the feather (how far a pixel lies inside that edge).
        """
        x, y, w, h = cv2.boundingRect(mask)
        if w == 0 or h == 0:
            return original
        height, width = mask.shape
        pad = self.grow + 2
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(width, x + w + pad), min(height, y + h + pad)
        outside = (mask[y0:y1, x0:x1] == 0).view(np.uint8)
        distance = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_5)
        alpha = np.clip((self.grow + 1 - distance) / (self.ramp + 1), 0.0, 1.0)
        alpha[distance > self.grow] = 0.0
        result = original.copy()
        result[y0:y1, x0:x1] = cv2.blendLinear(
            erased[y0:y1, x0:x1], original[y0:y1, x0:x1], alpha, 1.0 - alpha
        )
        return result


def composite(
    original: Path,
    erased: Path,
    mask: Path,
    out: Path,
    *,
    dilation: int,
    feather: int = 2,
    crf: int = 17,
    progress: Callable[[float], None] | None = None,
) -> Path:
    """Write ``out`` (H.264 MP4): ``original`` with its masked region taken from ``erased``.

    ``erased`` and the binary ``mask`` share the working size; ``dilation`` and
    ``feather`` are in working-size pixels. yuv420p needs even sizes: an odd
    width or height is padded by one replicated column or row.
    """
    facts = source_facts(original)
    for name, path in (("erased video", erased), ("mask", mask)):
        count = frame_count(path)
        if count < facts.frames:
            raise VorError(f"the {name} has {count} frames; the original has {facts.frames}")
    work_w, work_h = mask_size(mask)
    upright = facts.rotation in (90, 270) and _closer_to_transposed(facts, work_w, work_h)
    width, height = (facts.height, facts.width) if upright else (facts.width, facts.height)
    blend = Blend.for_scale(dilation, feather, max(width / work_w, height / work_h))
    video_only = out.with_name(f".{out.stem}.video.mp4")
    frames = zip(
        _original_frames(original, facts.rotation if upright else 0),
        read_frames(erased, "bgr24"),
        read_frames(mask, "gray"),
        strict=False,
    )
    try:
        with VideoWriter(
            video_only, *_even(width, height), float(facts.fps), crf=crf, preset="veryfast"
        ) as writer:
            for index, (image, erased_small, mask_small) in enumerate(frames):
                if mask_small.any():
                    image = blend.apply(
                        image,
                        _fit(erased_small, width, height, cv2.INTER_CUBIC),
                        _fit(mask_small, width, height, cv2.INTER_NEAREST),
                    )
                writer.write(pad_even(image))
                if progress:
                    progress((index + 1) / facts.frames)
        if writer.frames != facts.frames:
            raise VorError(f"decoded {writer.frames} of the original's {facts.frames} frames")
        _mux(video_only, original, out, facts, rotation=0 if upright else facts.rotation)
    finally:
        video_only.unlink(missing_ok=True)
    return out


def source_facts(path: Path) -> SourceFacts:
    """What the output must keep of the original: size, rate, count, rotation, audio."""
    container = open_input(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        frames = sum(1 for packet in container.demux(stream) if packet.size)
        container.seek(0)
        first = next(container.decode(stream))
        rotation = int(getattr(first, "rotation", 0) or 0) % 360
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        file_start = container.start_time / av.time_base if container.start_time else 0.0
        return SourceFacts(
            width=first.width,
            height=first.height,
            fps=Fraction(rate),
            frames=frames,
            rotation=rotation,
            audio=bool(container.streams.audio),
            video_offset_s=max(0.0, start - file_start),
        )
    finally:
        container.close()


def pad_even(image: np.ndarray) -> np.ndarray:
    """Repeat the last row/column where a side is odd (yuv420p needs even sizes)."""
    height, width = image.shape[:2]
    if width % 2 == 0 and height % 2 == 0:
        return image
    return cv2.copyMakeBorder(image, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)


def _even(width: int, height: int) -> tuple[int, int]:
    return width + width % 2, height + height % 2


def _fit(image: np.ndarray, width: int, height: int, interpolation: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _closer_to_transposed(facts: SourceFacts, work_w: int, work_h: int) -> bool:
    """Was the working copy made upright (autorotated)? Judged by its aspect ratio."""
    aspect = work_w / work_h
    return abs(aspect - facts.height / facts.width) < abs(aspect - facts.width / facts.height)


def _original_frames(path: Path, rotation: int) -> Iterator[np.ndarray]:
    for image in read_frames(path, "bgr24"):
        yield np.ascontiguousarray(np.rot90(image, rotation // 90)) if rotation else image


def _mux(video: Path, original: Path, out: Path, facts: SourceFacts, *, rotation: int) -> None:
    """Put the new video and the original's first audio stream (copied as is) in ``out``."""
    video_input: list[str] = []
    if rotation:
        video_input += ["-display_rotation", str(rotation)]
    if facts.video_offset_s:
        video_input += ["-itsoffset", f"{facts.video_offset_s:.6f}"]
    args: list[str] = [*video_input, "-i", str(video)]
    if facts.audio:
        args += ["-i", str(original), "-map", "0:v:0", "-map", "1:a:0"]
    tail = ["-movflags", "+faststart", str(out)]
    try:
        run_ffmpeg([*args, "-c", "copy", *tail])
    except RuntimeError:
        if not facts.audio:
            raise
        # Some audio codecs (PCM from MOV, Vorbis) do not go into MP4 as they are.
        run_ffmpeg([*args, "-c:v", "copy", "-c:a", "aac", "-b:a", "192k", *tail])
