"""The publish stage's picture: the erased region pasted back into the original.

The engine works on a (possibly smaller) working copy; the result keeps the
original's resolution, frame rate, frame count, orientation and audio, and every
pixel outside the dilated mask is the original's own. The edge is feathered
inside the dilated region only, so nothing outside it changes.
"""

from __future__ import annotations

import math
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

RESULT_X264_PARAMS = "me=dia:partitions=i8x8,i4x4:subme=1"
"""The result's encode: veryfast with a diamond motion search, no inter sub-partitions and
the quickest subpixel refinement. On 640x360 footage at CRF 17 it takes 44% less CPU than
plain veryfast for 9% more bytes (docs/performance.md, section 7)."""


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

    @property
    def pad(self) -> int:
        """How far the blend reaches past the mask's bounding box."""
        return self.grow + 2

    def alpha(self, mask: np.ndarray) -> np.ndarray:
        """How much of the erased picture each pixel of a region takes (0..1, float32).

        One distance transform gives both the dilation (distance to the mask <=
        ``grow``, a disc) and the feather (how far a pixel lies inside that edge).
        """
        outside = (mask == 0).view(np.uint8)
        distance = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_5)
        alpha: np.ndarray = np.clip((self.grow + 1 - distance) / (self.ramp + 1), 0.0, 1.0)
        alpha[distance > self.grow] = 0.0
        return alpha

    def apply(self, original: np.ndarray, erased: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``erased`` and ``mask`` are already at the original's size; returns a new frame."""
        x, y, w, h = cv2.boundingRect(mask)
        if w == 0 or h == 0:
            return original
        height, width = mask.shape
        pad = self.pad
        x0, y0 = max(0, x - pad), max(0, y - pad)
        x1, y1 = min(width, x + w + pad), min(height, y + h + pad)
        alpha = self.alpha(mask[y0:y1, x0:x1])
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
    rotation = facts.rotation if upright else 0
    display_rotation = 0 if upright else facts.rotation
    # Without audio to copy or a rotation to declare, the encoder writes the result itself.
    direct = not facts.audio and not display_rotation
    video_only = out if direct else out.with_name(f".{out.stem}.video.mp4")
    planar = not (width % 2 or height % 2 or work_w % 2 or work_h % 2)
    if planar:
        frames = _planar_frames(original, erased, mask, rotation, blend, (width, height))
    else:
        frames = _bgr_frames(original, erased, mask, rotation, blend, (width, height))
    try:
        with VideoWriter(
            video_only,
            *_even(width, height),
            float(facts.fps),
            crf=crf,
            preset="veryfast",
            x264_params=RESULT_X264_PARAMS,
            container_options={"movflags": "+faststart"},
        ) as writer:
            for index, image in enumerate(frames):
                writer.write(image, "yuv420p" if planar else None)
                if progress:
                    progress((index + 1) / facts.frames)
        if writer.frames != facts.frames:
            raise VorError(f"decoded {writer.frames} of the original's {facts.frames} frames")
        if not direct:
            _mux(video_only, original, out, facts, rotation=display_rotation)
    finally:
        if not direct:
            video_only.unlink(missing_ok=True)
    return out


def _bgr_frames(
    original: Path, erased: Path, mask: Path, rotation: int, blend: Blend, size: tuple[int, int]
) -> Iterator[np.ndarray]:
    """The composite as BGR frames, odd sides padded: for sizes yuv420p cannot split."""
    width, height = size
    frames = zip(
        _original_frames(original, rotation),
        read_frames(erased, "bgr24"),
        read_frames(mask, "gray"),
        strict=False,
    )
    for image, erased_small, mask_small in frames:
        if mask_small.any():
            image = blend.apply(
                image,
                _fit(erased_small, width, height, cv2.INTER_CUBIC),
                _fit(mask_small, width, height, cv2.INTER_NEAREST),
            )
        yield pad_even(image)


def _planar_frames(
    original: Path, erased: Path, mask: Path, rotation: int, blend: Blend, size: tuple[int, int]
) -> Iterator[np.ndarray]:
    """The composite as yuv420p frames (PyAV's layout), blended plane by plane.

    The pictures stay in the codecs' own colour space from decoder to encoder, and
    only the region around the mask is scaled up from the working size and blended;
    frames without a mask are the original's as decoded.
    """
    width, height = size
    frames = zip(
        read_frames(original, "yuv420p"),
        read_frames(erased, "yuv420p"),
        read_frames(mask, "gray"),
        strict=False,
    )
    k = rotation // 90
    for packed, erased_small, mask_small in frames:
        if not k and not mask_small.any():
            yield packed
            continue
        planes = [np.rot90(p, k) if k else p.copy() for p in _split_yuv420p(packed)]
        if mask_small.any():
            _blend_planes(planes, _split_yuv420p(erased_small), mask_small, blend, size)
        yield _join_yuv420p(planes, width, height)


def _split_yuv420p(packed: np.ndarray) -> list[np.ndarray]:
    """PyAV's yuv420p array (the Y, U and V planes one after the other, in rows of the
    frame's width) as three planes; views, not copies."""
    height, width = packed.shape[0] * 2 // 3, packed.shape[1]
    flat = packed.reshape(-1)
    luma, chroma = height * width, (height // 2) * (width // 2)
    return [
        flat[:luma].reshape(height, width),
        flat[luma : luma + chroma].reshape(height // 2, width // 2),
        flat[luma + chroma :].reshape(height // 2, width // 2),
    ]


def _join_yuv420p(planes: list[np.ndarray], width: int, height: int) -> np.ndarray:
    return np.concatenate([p.reshape(-1) for p in planes]).reshape(height * 3 // 2, width)


def _blend_planes(
    planes: list[np.ndarray],
    erased: list[np.ndarray],
    mask: np.ndarray,
    blend: Blend,
    size: tuple[int, int],
) -> None:
    """Blend ``erased`` (working size) into ``planes`` (full size) where the grown ``mask`` is.

    The mask is taken at full size by nearest neighbour, as ``cv2.resize`` does,
    and the erased planes are scaled up (bicubic, pixel centres aligned) in the
    region only; chroma takes the alpha averaged over each 2x2 block.
    """
    width, height = size
    work_h, work_w = mask.shape
    sx, sy = width / work_w, height / work_h
    x, y, w, h = cv2.boundingRect(mask)
    x0 = max(0, (math.floor(x * sx) - blend.pad) // 2 * 2)
    y0 = max(0, (math.floor(y * sy) - blend.pad) // 2 * 2)
    x1 = min(width, -(-(math.ceil((x + w) * sx) + blend.pad) // 2) * 2)
    y1 = min(height, -(-(math.ceil((y + h) * sy) + blend.pad) // 2) * 2)
    cols = np.minimum((np.arange(x0, x1) * (work_w / width)).astype(np.intp), work_w - 1)
    rows = np.minimum((np.arange(y0, y1) * (work_h / height)).astype(np.intp), work_h - 1)
    alpha = blend.alpha(np.ascontiguousarray(mask[rows[:, None], cols[None, :]]))
    half = cv2.resize(alpha, ((x1 - x0) // 2, (y1 - y0) // 2), interpolation=cv2.INTER_AREA)
    for plane, source, a, step in zip(planes, erased, (alpha, half, half), (1, 2, 2), strict=True):
        left, top = x0 // step, y0 // step
        rows, cols = a.shape
        region = plane[top : top + rows, left : left + cols]
        if (work_w, work_h) == (width, height):
            scaled = np.ascontiguousarray(source[top : top + rows, left : left + cols])
        else:
            shift = np.array([[sx, 0, 0.5 * sx - 0.5 - left], [0, sy, 0.5 * sy - 0.5 - top]])
            scaled = cv2.warpAffine(
                source, shift, (cols, rows), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
            )
        region[:] = cv2.blendLinear(scaled, np.ascontiguousarray(region), a, 1.0 - a)


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
