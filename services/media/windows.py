"""Long clips as overlapping windows that each fit one upstream call, and back again.

An engine that takes clips of at most ``limit_s`` (the SVOR service: 3 s) gets a
longer working video as windows of ``frames_per_window`` frames. Neighbouring
windows share ``OVERLAP_FRAMES`` frames (fewer when a window is short): on them
the object ids of two uploads are matched (``services.media.stitch``) and the two
erased versions are cross-faded (``join``), so that no seam shows.

Everything here is a plain function over frame ranges and files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from services.media.video import PixelFormat, VideoWriter, read_frames, video_size

Window = tuple[int, int]
"""Frames ``[start, end)`` of the working video."""

OVERLAP_FRAMES = 8
"""Frames two neighbouring windows share. Eight is enough to match ids robustly (an
object seen on several frames of both uploads) and to cross-fade over a third of a
second at 25 fps, and costs about a tenth more upstream time for 3 s windows at 30 fps.
A window of fewer than 32 frames shares a quarter of its length instead."""


def frames_per_window(fps: float, limit_s: float) -> int:
    """The most frames one window may hold at ``fps``: ``limit_s`` of them, as many as a
    short clip the engine accepts whole may have (its check allows half a frame more for
    a container's rounding, so a window of exactly ``limit_s`` passes it too)."""
    return max(2, math.floor(limit_s * fps + 1e-6))


def overlap_for(length: int) -> int:
    return max(1, min(OVERLAP_FRAMES, length // 4))


def plan_windows(frames: int, fps: float, limit_s: float | None) -> list[Window]:
    """The windows of a ``frames``-long video at ``fps`` for an engine taking ``limit_s``.

    One window (the whole video) when it fits or the engine has no limit. Otherwise
    windows of ``frames_per_window`` frames, each starting ``overlap`` frames before its
    predecessor ends; the last one ends with the video and is longer than the overlap.
    """
    if limit_s is None or frames <= 0:
        return [(0, max(frames, 0))]
    length = frames_per_window(fps, limit_s)
    if frames <= length:
        return [(0, frames)]
    overlap = overlap_for(length)
    step = length - overlap
    count = math.ceil((frames - overlap) / step)
    return [(k * step, min(k * step + length, frames)) for k in range(count)]


def anchor(windows: Sequence[Window], frame: int) -> int:
    """The window that holds ``frame`` (the first, when two share it)."""
    for index, (start, end) in enumerate(windows):
        if start <= frame < end:
            return index
    return len(windows) - 1


def order_from(anchor_index: int, count: int) -> list[tuple[int, int | None]]:
    """Windows outward from the anchor: ``(window, neighbour it follows)``, the anchor first
    (no neighbour), then forward to the end, then backward to the start."""
    forward = [(k, k - 1) for k in range(anchor_index + 1, count)]
    backward = [(k, k + 1) for k in range(anchor_index - 1, -1, -1)]
    return [(anchor_index, None), *forward, *backward]


def cut_points(windows: Sequence[Window]) -> list[int]:
    """Where each window's own frames begin: the middle of its overlap with the one
    before (0 for the first). Window k owns ``[cut[k], cut[k+1])``."""
    cuts = [0]
    for (_, prev_end), (start, _) in zip(windows, windows[1:], strict=False):
        cuts.append(start + (prev_end - start) // 2)
    return cuts


def blend_weights(overlap: int) -> np.ndarray:
    """The later window's weight on each shared frame: a linear ramp strictly between 0
    and 1, so that the cross-fade starts and ends one step away from either window."""
    return (np.arange(1, overlap + 1, dtype=np.float32) / (overlap + 1)).astype(np.float32)


def cut(video: Path, windows: Sequence[Window], dest: Sequence[Path], *, lossless: bool) -> None:
    """Write each window of ``video`` to its file in one decoding pass.

    ``lossless``: FFV1 gray (object-id and 0/255 masks); otherwise H.264 at a
    quality that leaves the upstream's own fitting room to work.
    """
    width, height, fps, _ = video_size(video)
    pix_fmt: PixelFormat = "gray" if lossless else "bgr24"
    writers: dict[int, VideoWriter] = {}
    try:
        for index, image in enumerate(read_frames(video, pix_fmt)):
            for k, (start, end) in enumerate(windows):
                if start <= index < end:
                    writer = writers.get(k)
                    if writer is None:
                        writer = writers[k] = _writer(dest[k], width, height, fps, lossless)
                    writer.write(image)
                    if index == end - 1:
                        writers.pop(k).close()
    finally:
        for writer in writers.values():
            writer.close()


def _writer(path: Path, width: int, height: int, fps: float, lossless: bool) -> VideoWriter:
    if lossless:
        return VideoWriter(path, width, height, fps, codec="ffv1")
    return VideoWriter(path, width, height, fps, crf=16)


def joined_frames(parts: Sequence[Path], windows: Sequence[Window]) -> Iterator[np.ndarray]:
    """The windows' videos as one, cross-faded over every overlap (``blend_weights``).

    Only the previous window's shared frames are held while the next one is read.
    """
    held: list[np.ndarray] = []
    for k, (path, (start, end)) in enumerate(zip(parts, windows, strict=True)):
        next_start = windows[k + 1][0] if k + 1 < len(windows) else end
        weights = blend_weights(len(held))
        keep: list[np.ndarray] = []
        for offset, image in enumerate(read_frames(path)):
            if start + offset >= end:
                break
            if offset < len(held):
                w = float(weights[offset])
                mixed = held[offset].astype(np.float32) * (1 - w) + image.astype(np.float32) * w
                image = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)
            if start + offset >= next_start and k + 1 < len(windows):
                keep.append(image)
                continue
            yield image
        held = keep


def join(parts: Sequence[Path], windows: Sequence[Window], dest: Path) -> Path:
    """``joined_frames`` written as one H.264 video at the windows' size and rate."""
    width, height, fps, _ = video_size(parts[0])
    with VideoWriter(dest, width, height, fps, crf=16) as writer:
        for image in joined_frames(parts, windows):
            writer.write(image)
    return dest
