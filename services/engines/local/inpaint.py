"""Video erasure: fill the masked region of every frame from the frames that saw it.

Camera-aligned completion, streamed through a sliding window of frames:

1. Between consecutive frames, a homography from corners tracked outside both
   holes (pyramidal Lucas-Kanade, checked forward and backward, RANSAC; a
   similarity transform when too few corners survive). Chained, these align any
   frame of the window to any other. Under zoom, rotation and blur this holds far
   better than dense flow, which the hole and the blur both corrupt.
2. For a target frame, each direction (back, forward) takes candidate frames
   nearest first (distance 1, 2, 3, ...). A candidate is aligned to the target,
   matched to it by a per-channel gain and offset fitted on a ring around the
   hole, and shifted by the ring's remaining residual spread smoothly over the
   hole (a membrane blend: exposure changes and small misalignments do not show
   as seams). A hole pixel is copied from the first ``_PER_SIDE`` candidates of
   each direction that saw it (inside that frame and outside that frame's own
   hole, so masked pixels are never copied), blended with weights that fall with
   distance and with the ring's residual near that pixel: where the camera model
   fits badly (parallax, an object moving on its own), the better-fitting copy
   wins. Candidates fitting far worse than the best one are skipped.
3. Pixels no frame in the window saw are inpainted spatially (Telea) from the
   filled result.

Only ``2 * radius + 1`` frames are held at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypedDict

import cv2
import numpy as np

from services.media.masks import dilate

_RING = 4
"""Width of the band around a hole that anchors colour correction and the seam."""
_FEATURE_MARGIN = 6
"""Corners closer than this to a hole are not tracked (their patches overlap it)."""
_MAX_CORNERS = 300


class _LKParams(TypedDict):
    winSize: tuple[int, int]
    maxLevel: int
    criteria: tuple[int, int, float]


_LK: _LKParams = {
    "winSize": (21, 21),
    "maxLevel": 4,
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03),
}
_MIN_INLIERS = 12
_SIGMA = 12.0
"""Largest smoothing (pixels) of the seam correction."""
_CELL = 4
"""Grid cell (pixels) the seam correction is computed on."""
_PER_SIDE = 2
"""Frames each way a hole pixel is copied from (nearest first) before the sides are blended."""


def telea(image: np.ndarray, hole: np.ndarray, radius: int = 5) -> np.ndarray:
    """OpenCV's spatial inpainting of one frame: the fallback, and the baseline to beat."""
    if not hole.any():
        return image.copy()
    return cv2.inpaint(image, hole.astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)


@dataclass
class _Slot:
    image: np.ndarray
    hole: np.ndarray
    guard: np.ndarray
    """The hole grown by a pixel: bilinear samples here would mix in hole pixels."""
    gray: np.ndarray
    corners: np.ndarray | None
    """Corners outside the hole, (N, 1, 2) float32, for alignment."""
    to_next: np.ndarray | None = None
    """Homography from this frame's coordinates to the next frame's; None if tracking failed."""


class VideoEraser:
    """Streams frames and holes in, filled frames out, holding ``2 * radius + 1`` frames."""

    def __init__(self, *, radius: int = 8, telea_radius: int = 5, tolerance: float = 5.0) -> None:
        self.radius = radius
        self.telea_radius = telea_radius
        self.tolerance = tolerance
        """A candidate whose ring error exceeds ``tolerance`` times the best one's is skipped."""

    def run(
        self, frames: Iterable[np.ndarray], holes: Iterable[np.ndarray]
    ) -> Iterator[np.ndarray]:
        window: deque[_Slot] = deque()
        first = 0
        target = 0
        for image, hole in zip(frames, holes, strict=True):
            hole = hole.astype(bool)
            gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            slot = _Slot(image, hole, dilate(hole, 1), gray, _corners(gray, hole))
            if window:
                window[-1].to_next = _track(window[-1], slot)
            window.append(slot)
            while target - first > self.radius:
                window.popleft()
                first += 1
            if first + len(window) - 1 - target >= self.radius:
                yield self._fill(window, target - first)
                target += 1
        while target < first + len(window):
            yield self._fill(window, target - first)
            target += 1

    def _fill(self, window: deque[_Slot], index: int) -> np.ndarray:
        slot = window[index]
        if not slot.hole.any():
            return slot.image.copy()
        ring_y, ring_x = np.nonzero(dilate(slot.hole, _RING) & ~slot.guard)
        hole_y, hole_x = np.nonzero(slot.hole)
        ring = _homogeneous(ring_x, ring_y)
        inner = _homogeneous(hole_x, hole_y)
        known = slot.image[ring_y, ring_x].astype(np.float32)
        membrane = _Membrane(slot.hole.shape, ring_x, ring_y, hole_x, hole_y)
        count = len(hole_x)
        blend = np.zeros((count, 3), np.float32)
        total = np.zeros(count, np.float32)
        best_error = np.inf
        for direction in (-1, 1):
            chain = np.eye(3)
            pending = np.arange(count)
            used = np.zeros(count, np.int32)
            for distance in range(1, self.radius + 1):
                other = index + direction * distance
                if other < 0 or other >= len(window) or not pending.size:
                    break
                link = window[other - 1].to_next if direction > 0 else window[other].to_next
                if link is None:
                    break
                chain = (link if direction > 0 else np.linalg.inv(link)) @ chain
                source = window[other]
                seen, where = _project(inner[pending], chain, source.guard)
                if not seen.any():
                    continue
                anchors, ring_where = _project(ring, chain, source.guard)
                gain, offset, residual, error = _match(
                    _sample(source.image, ring_where), known[anchors]
                )
                if error > self.tolerance * best_error + 2.0:
                    continue
                best_error = min(best_error, error)
                chosen = pending[seen]
                # The ring's residual, and its size, spread over the hole: a seam
                # correction for this frame's copy, and how well it fits around here.
                spread = membrane(
                    anchors, np.column_stack([residual, np.abs(residual).mean(axis=1)]), chosen
                )
                values = _sample(source.image, where) * gain + offset + spread[:, :3]
                weight = 1.0 / ((np.maximum(spread[:, 3], 0.0) + 1.0) * distance)
                blend[chosen] += weight[:, None] * values
                total[chosen] += weight
                used[chosen] += 1
                pending = pending[used[pending] < _PER_SIDE]
        seen = total > 0
        colours = blend / np.maximum(total, 1e-9)[:, None]
        out = slot.image.copy()
        out[hole_y, hole_x] = np.clip(colours + 0.5, 0, 255).astype(np.uint8)
        if not seen.all():
            rest = np.zeros(slot.hole.shape, np.uint8)
            rest[hole_y[~seen], hole_x[~seen]] = 255
            out = cv2.inpaint(out, rest, self.telea_radius, cv2.INPAINT_TELEA)
        return out


class _Membrane:
    """Spreads a residual known on the ring smoothly over the hole (normalised convolution).

    Works on a coarse grid (cells of ``_CELL`` pixels): the field is meant to be smooth,
    and this keeps it cheap however many candidate frames need one.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        ring_x: np.ndarray,
        ring_y: np.ndarray,
        hole_x: np.ndarray,
        hole_y: np.ndarray,
    ) -> None:
        height, width = shape
        self.cells = (height // _CELL + 1, width // _CELL + 1)
        self.ring_cell = (ring_y // _CELL) * self.cells[1] + ring_x // _CELL
        self.hole_at = np.column_stack(
            [(hole_x + 0.5) / _CELL - 0.5, (hole_y + 0.5) / _CELL - 0.5]
        ).astype(np.float32)
        extent = max(np.ptp(hole_x), np.ptp(hole_y)) + 1
        self.sigma = float(np.clip(extent / 8.0, 3.0, _SIGMA)) / _CELL

    def __call__(self, anchors: np.ndarray, residual: np.ndarray, at: np.ndarray) -> np.ndarray:
        """The residual (given at ring points ``anchors``) spread to hole points ``at``."""
        channels = residual.shape[1]
        if not anchors.any():
            return np.zeros((len(at), channels), np.float32)
        size = self.cells[0] * self.cells[1]
        cells = self.ring_cell[anchors]
        grid = np.empty((*self.cells, channels + 1), np.float32)
        grid[..., channels] = np.bincount(cells, minlength=size).reshape(self.cells)
        for c in range(channels):
            grid[..., c] = np.bincount(cells, residual[:, c], minlength=size).reshape(self.cells)
        grid = cv2.GaussianBlur(grid, (0, 0), self.sigma)
        weight = grid[..., channels:]
        spread = np.where(weight > 1e-6, grid[..., :channels] / np.maximum(weight, 1e-6), 0.0)
        return _sample(np.ascontiguousarray(spread, np.float32), self.hole_at[at])


def _homogeneous(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    return np.column_stack([xs, ys, np.ones_like(xs)]).astype(np.float64)


def _project(
    points: np.ndarray, homography: np.ndarray, guard: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Which points land inside the frame and outside ``guard``, and where those land."""
    height, width = guard.shape
    mapped = points @ homography.T
    depth = mapped[:, 2]
    ok = depth > 1e-6
    p = np.full((len(points), 2), -1.0, np.float32)
    p[ok] = mapped[ok, :2] / depth[ok, None]
    ok &= (p[:, 0] >= 0) & (p[:, 0] <= width - 1) & (p[:, 1] >= 0) & (p[:, 1] <= height - 1)
    xi = np.rint(p[ok, 0]).astype(np.int32)
    yi = np.rint(p[ok, 1]).astype(np.int32)
    ok[ok] = ~guard[yi, xi]
    return ok, p[ok]


def _corners(gray: np.ndarray, hole: np.ndarray) -> np.ndarray | None:
    keep = (~dilate(hole, _FEATURE_MARGIN)).astype(np.uint8) * 255
    return cv2.goodFeaturesToTrack(
        gray, _MAX_CORNERS, qualityLevel=0.005, minDistance=7, mask=keep, blockSize=7
    )


def _track(source: _Slot, target: _Slot) -> np.ndarray | None:
    """Homography from ``source`` to ``target``, tracking source's corners both ways."""
    start = source.corners
    if start is None or len(start) < 4:
        return None
    # The stub types nextPts as required; None (no initial guess) is valid at runtime.
    landed, status, _ = cv2.calcOpticalFlowPyrLK(  # type: ignore[call-overload]
        source.gray, target.gray, start, None, **_LK
    )
    back, status_back, _ = cv2.calcOpticalFlowPyrLK(
        target.gray, source.gray, landed, start.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **_LK
    )
    good = (status[:, 0] == 1) & (status_back[:, 0] == 1)
    good &= np.linalg.norm((back - start)[:, 0], axis=1) < 1.0
    height, width = target.hole.shape
    end = landed[:, 0]
    xi = np.clip(np.rint(end[:, 0]).astype(np.int32), 0, width - 1)
    yi = np.clip(np.rint(end[:, 1]).astype(np.int32), 0, height - 1)
    good &= ~dilate(target.hole, _FEATURE_MARGIN // 2)[yi, xi]
    if good.sum() >= _MIN_INLIERS:
        homography: np.ndarray | None
        homography, inliers = cv2.findHomography(start[good], landed[good], cv2.RANSAC, 2.0)
        if homography is not None and inliers.sum() >= _MIN_INLIERS:
            return homography
    if good.sum() >= 4:
        affine, _ = cv2.estimateAffinePartial2D(start[good], landed[good])
        if affine is not None:
            return np.vstack([affine, [0.0, 0.0, 1.0]])
    return None


def _match(
    sampled: np.ndarray, known: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Per-channel gain and offset taking ``sampled`` to ``known``, the residual and its mean."""
    if len(sampled) < 16:
        ones = np.ones(3, np.float32)
        return ones, np.zeros(3, np.float32), np.zeros((len(sampled), 3), np.float32), 50.0
    mean_a, mean_b = sampled.mean(axis=0), known.mean(axis=0)
    da = sampled - mean_a
    var_a = (da * da).mean(axis=0)
    cov = (da * (known - mean_b)).mean(axis=0)
    gain = np.where(var_a > 4.0, np.clip(cov / np.maximum(var_a, 1e-3), 0.8, 1.25), 1.0)
    offset = mean_b - gain * mean_a
    residual = known - (sampled * gain + offset)
    return (
        gain.astype(np.float32),
        offset.astype(np.float32),
        residual,
        float(np.abs(residual).mean()),
    )


def _sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` at float (x, y) points, as float32 (N, channels)."""
    count = len(points)
    columns = 1024
    rows = -(-count // columns)
    padded = np.zeros((rows * columns, 2), np.float32)
    padded[:count] = points
    grid = padded.reshape(rows, columns, 2)
    # Border: OpenCV's default (BORDER_CONSTANT). A BORDER_REPLICATE passed here as the
    # fifth positional argument landed in ``dst`` and was ignored, so it is left out.
    out = cv2.remap(image, grid[..., 0], grid[..., 1], cv2.INTER_LINEAR)
    return out.reshape(rows * columns, -1)[:count].astype(np.float32)


def erase_frames(
    frames: Iterable[np.ndarray], holes: Iterable[np.ndarray], *, radius: int = 8
) -> Iterator[np.ndarray]:
    """Filled frames, one per input frame, in order."""
    return VideoEraser(radius=radius).run(frames, holes)
