"""Re-encode a clip until it fits a byte budget (the SVOR gateway's body limit).

``fit_upload`` searches CRF and scale on a short sample first, whose size
predicts the whole clip's, then on the whole clip from the point it found.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from services.engines.base import Progress, no_progress
from services.errors import InputTooLarge
from services.media.video import VideoWriter, open_input, read_frames, video_size

CRF_START = 23
CRF_BEST = 18
CRF_SOFT_MAX = 32
CRF_HARD_MAX = 51
MAX_SIDE = 1280
MIN_SIDE = 128
MAX_FIT_ATTEMPTS = 8
FIT_GOAL = 0.85
"""Aim this far under the target, so that one encode usually lands inside it."""
GOOD_ENOUGH = 0.5
"""A fitting encode this close to the target is kept without looking for a lower CRF."""


@dataclass
class UploadPlan:
    """What ``fit_upload`` chose, and every encode it tried on the way."""

    width: int
    height: int
    scale: float
    crf: int | None
    """None when the source's own stream was copied (``copy_if_fits``)."""
    bytes: int
    target_bytes: int
    source_bytes: int
    frames: int
    attempts: list[dict[str, float]] = field(default_factory=list)
    copied: bool = False

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def _encode(
    frames: Iterable[np.ndarray], dest: Path, size: tuple[int, int], fps: float, crf: int
) -> int:
    """Encode ``frames`` as H.264 at ``size``; the number of frames written."""
    written = 0
    with VideoWriter(dest, size[0], size[1], fps, crf=crf, preset="veryfast") as writer:
        for image in frames:
            writer.write(_resized(image, size))
            written += 1
    return written


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _estimate(sample: Path, frames: int) -> float:
    """The bytes a whole clip of ``frames`` would take, from an encode of its first frames.

    The keyframe (large) counts once, the other frames at their mean size, so
    that a short sample does not overstate long clips.
    """
    container = open_input(sample)
    try:
        keys: list[int] = []
        others: list[int] = []
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                (keys if packet.is_keyframe else others).append(packet.size)
    finally:
        container.close()
    if not others:
        return float(np.mean(keys)) * frames
    return sum(keys) + float(np.mean(others)) * max(0, frames - len(keys))


def _next_crf(sizes: dict[int, int], target: int, max_crf: int, good_enough: float) -> int | None:
    """The next CRF worth encoding at one scale, or None when no better one is left there.

    Size falls roughly exponentially with CRF (halving every ~6), but far from
    evenly for noisy content, so between a CRF that is too big and one that fits,
    the next guess interpolates log(size) between the two measured points.
    """
    goal = FIT_GOAL * target
    fits = [c for c, size in sizes.items() if size <= target]
    if fits:
        c_fit = min(fits)
        s_fit = sizes[c_fit]
        overs = [c for c, size in sizes.items() if size > target and c < c_fit]
        if s_fit >= good_enough * target or c_fit <= CRF_BEST:
            return None
        if not overs:
            guess = c_fit - math.floor(6 * math.log2(goal / s_fit))
            return max(CRF_BEST, min(c_fit - 1, guess))
        c_over = max(overs)
        if c_fit - c_over <= 1:
            return None
        s_over = sizes[c_over]
        share = math.log(s_over / goal) / math.log(s_over / s_fit)
        return min(c_fit - 1, max(c_over + 1, math.ceil(c_over + share * (c_fit - c_over))))
    c_over = max(sizes)
    if c_over >= max_crf:
        return None
    return min(max_crf, c_over + max(1, math.ceil(6 * math.log2(sizes[c_over] / goal))))


class _Fitter:
    """The search behind ``fit_upload``: first on a short sample, then on the whole clip."""

    def __init__(self, source: Path, dest: Path, target: int) -> None:
        self.source, self.dest, self.target = source, dest, target
        self.width, self.height, self.fps, self.frames = video_size(source)
        self.max_scale = min(1.0, MAX_SIDE / max(self.width, self.height))
        self.min_scale = min(self.max_scale, MIN_SIDE / max(self.width, self.height))
        self.sample_frames = min(self.frames, max(6, round(self.fps / 2)))
        self.best: tuple[Path, float, int, int, int] | None = None
        self.attempts: list[dict[str, float]] = []
        self._samples: dict[tuple[int, int], list[np.ndarray]] = {}

    def size_at(self, scale: float) -> tuple[int, int]:
        return _even(self.width * scale), _even(self.height * scale)

    def search(
        self,
        measure: Callable[[float, int], int],
        scale: float,
        crf: int,
        *,
        good_enough: float,
        attempts: int,
    ) -> tuple[float, int]:
        """Walk (scale, crf) until a fitting size is good enough; the best point seen."""
        sizes: dict[int, int] = {}
        found: tuple[float, int] | None = None
        for _ in range(attempts):
            size = sizes[crf] = measure(scale, crf)
            if size <= self.target and (found is None or crf < found[1]):
                found = (scale, crf)
            max_crf = CRF_HARD_MAX if scale <= self.min_scale else CRF_SOFT_MAX
            following = _next_crf(sizes, self.target, max_crf, good_enough)
            if following is not None:
                crf = following
                continue
            if found is not None or scale <= self.min_scale:
                break
            shrink = min(0.9, math.sqrt(FIT_GOAL * self.target / size))
            scale, crf, sizes = max(self.min_scale, scale * shrink), CRF_SOFT_MAX - 2, {}
        return found or (scale, crf)

    def sampled(self, scale: float, crf: int) -> int:
        size = self.size_at(scale)
        if size not in self._samples:
            first = itertools.islice(read_frames(self.source), self.sample_frames)
            self._samples = {size: [_resized(image, size) for image in first]}
        sample = self.dest.with_name(self.dest.stem + ".sample.mp4")
        _encode(self._samples[size], sample, size, self.fps, crf)
        estimate = _estimate(sample, self.frames)
        sample.unlink()
        self.attempts.append({"scale": round(scale, 4), "crf": crf, "estimate": int(estimate)})
        return int(estimate)

    def whole(self, scale: float, crf: int) -> int:
        trial = self.dest.with_name(f"{self.dest.stem}.try{len(self.attempts)}.mp4")
        written = _encode(read_frames(self.source), trial, self.size_at(scale), self.fps, crf)
        size = trial.stat().st_size
        self.attempts.append({"scale": round(scale, 4), "crf": crf, "bytes": size})
        if size <= self.target and (self.best is None or crf < self.best[2]):
            if self.best is not None:
                self.best[0].unlink()
            self.best = (trial, scale, crf, size, written)
        else:
            trial.unlink()
        return size


def copy_if_fits(source: Path, dest: Path, *, target_bytes: int) -> UploadPlan | None:
    """``source``'s video stream alone, copied packet for packet into MP4, when SVOR can take
    it as it is: H.264 in yuv420p, upright, even sides of at most ``MAX_SIDE``, under
    ``target_bytes``. Nothing is decoded but the first frame, nothing encoded; None (and
    no ``dest``) when any of that does not hold."""
    container = open_input(source)
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width), int(ctx.height)
        pix_fmt = ctx.format.name if ctx.format is not None else ""
        if (
            ctx.name != "h264"
            or pix_fmt != "yuv420p"
            or width % 2
            or height % 2
            or max(width, height) > MAX_SIDE
            or stream.metadata.get("rotate", "0") != "0"
            or int(getattr(next(container.decode(stream)), "rotation", 0) or 0) % 360
        ):
            return None
        container.seek(0)
        packets = [packet for packet in container.demux(stream) if packet.size]
        if sum(packet.size for packet in packets) > target_bytes:
            return None
        out = av.open(str(dest), mode="w", format="mp4")
        try:
            copy = out.add_stream_from_template(stream)
            for packet in packets:
                packet.stream = copy
                out.mux(packet)
        finally:
            out.close()
    finally:
        container.close()
    size = dest.stat().st_size
    if size > target_bytes or video_size(dest)[3] != len(packets):
        dest.unlink()
        return None
    return UploadPlan(
        width=width,
        height=height,
        scale=1.0,
        crf=None,
        bytes=size,
        target_bytes=target_bytes,
        source_bytes=source.stat().st_size,
        frames=len(packets),
        copied=True,
    )


def fit_upload(
    source: Path, dest: Path, *, target_bytes: int, progress: Progress = no_progress
) -> UploadPlan:
    """Re-encode ``source`` (H.264, no audio, every frame) so that it is at most ``target_bytes``.

    The search runs first on the clip's first half second, whose size predicts
    the whole clip's, and then on the whole clip from the point it found, so a
    clip is usually encoded in full once or twice. While too big, CRF rises up
    to 32, then the picture shrinks (down to a 128 px long side, where CRF may go
    on to 51); a fit that leaves more than half the budget unused makes it look
    for a lower CRF between the measured points.
    """
    fitter = _Fitter(source, dest, target_bytes)
    start = fitter.search(
        fitter.sampled, fitter.max_scale, CRF_START, good_enough=GOOD_ENOUGH, attempts=6
    )
    progress(0.5)
    fitter.search(fitter.whole, *start, good_enough=0.0, attempts=MAX_FIT_ATTEMPTS)
    if fitter.best is None:
        raise InputTooLarge(
            f"the clip cannot be compressed under {target_bytes} bytes for the svor engine, "
            "even at the lowest quality; use a shorter clip or the local engine",
            field="video",
        )
    trial, scale, crf, size, written = fitter.best
    trial.replace(dest)
    width, height = fitter.size_at(scale)
    progress(1.0)
    return UploadPlan(
        width=width,
        height=height,
        scale=round(scale, 4),
        crf=crf,
        bytes=size,
        target_bytes=target_bytes,
        source_bytes=source.stat().st_size,
        frames=written,
        attempts=fitter.attempts,
    )
