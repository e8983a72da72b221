"""Video erasure: fill the masked region of every frame from the frames that saw it.

Flow-guided completion, streamed through a sliding window of frames:

1. Between consecutive frames, dense optical flow (DIS) both ways. Inside each
   frame's hole the flow describes the thing being removed (or nothing at all),
   so it is replaced there by a smooth fill of the flow around the hole
   (normalised convolution): the background's motion, continued into the hole.
2. For a target frame, every hole pixel is followed along the completed flows
   to the nearest frames forward and backward; the first frame where it lands
   outside that frame's own hole gives its colour. Masked pixels of a source
   frame are never used. Each side's copy is shifted by a smooth offset so it
   meets the frame at the hole's edge (a membrane blend), then the two sides
   are blended, nearer frames weighing more.
3. Where the two sides disagree (the flow could not be trusted: heavy blur,
   zoom), the copy gives way to spatial inpainting (Telea); pixels no frame in
   the window saw are inpainted spatially too.

Only ``2 * radius + 1`` frames with their flows are held at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

_FLOW_MARGIN = 4
_RING = 3
"""Width of the band around a hole that anchors the seam correction."""
"""Pixels around a hole whose flow is also distrusted (the flow bleeds over edges)."""


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """A bool mask grown by ``pixels`` (a disc structuring element)."""
    if pixels <= 0:
        return mask.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def telea(image: np.ndarray, hole: np.ndarray, radius: int = 5) -> np.ndarray:
    """OpenCV's spatial inpainting of one frame: the fallback, and the baseline to beat."""
    if not hole.any():
        return image.copy()
    return cv2.inpaint(image, hole.astype(np.uint8) * 255, radius, cv2.INPAINT_TELEA)


def _smooth_fill(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``image`` with ``hole`` replaced by a blur of its surroundings.

    Flow is computed on this: a hole's hard edges (black, or the removed object)
    would otherwise pull the flow around it towards the hole's own motion.
    """
    if not hole.any():
        return image
    values = image.astype(np.float32)
    filled = complete_flow(values[..., None], hole, margin=0)[..., 0]
    return np.clip(filled + 0.5, 0, 255).astype(np.uint8)


def complete_flow(flow: np.ndarray, hole: np.ndarray, margin: int = _FLOW_MARGIN) -> np.ndarray:
    """The field with its values inside ``hole`` replaced by a smooth fill from around it.

    Normalised convolution at a quarter of the size: cheap, and smooth enough for a
    motion field or a flow-only stand-in for the hole's colours.
    """
    if not hole.any():
        return flow
    distrust = dilate(hole, margin)
    height, width = hole.shape
    ys, xs = np.nonzero(distrust)
    extent = max(ys.max() - ys.min(), xs.max() - xs.min()) + 1
    factor = 4 if min(height, width) >= 64 else 1
    small = (max(1, width // factor), max(1, height // factor))
    weight = cv2.resize((~distrust).astype(np.float32), small, interpolation=cv2.INTER_AREA)
    values = cv2.resize(flow * (~distrust)[..., None], small, interpolation=cv2.INTER_AREA)
    sigma = max(1.0, extent / factor / 2.0)
    blurred_weight = cv2.GaussianBlur(weight, (0, 0), sigma)
    blurred_values = cv2.GaussianBlur(values, (0, 0), sigma)
    if blurred_values.ndim == 2:
        blurred_values = blurred_values[..., None]
    smooth = blurred_values / np.maximum(blurred_weight, 1e-4)[..., None]
    channels = flow.shape[2]
    outside = flow[~distrust]
    smooth[blurred_weight < 1e-4] = outside.mean(axis=0) if len(outside) else np.zeros(channels)
    filled = cv2.resize(smooth, (width, height), interpolation=cv2.INTER_LINEAR)
    filled = filled.reshape(height, width, channels)
    out = flow.copy()
    out[distrust] = filled[distrust]
    return out


@dataclass
class _Slot:
    image: np.ndarray
    hole: np.ndarray
    gray: np.ndarray
    guard: np.ndarray
    """The hole grown by a pixel: bilinear samples here would mix in hole pixels."""
    forward: np.ndarray | None = None
    """Completed flow from this frame to the next one."""
    backward: np.ndarray | None = None
    """Completed flow from this frame to the previous one."""


class VideoEraser:
    """Streams frames and holes in, filled frames out, holding ``2 * radius + 1`` frames."""

    def __init__(self, *, radius: int = 8, telea_radius: int = 5, trust: float = 12.0) -> None:
        self.radius = radius
        self.trust = trust
        self.telea_radius = telea_radius
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)

    def run(
        self, frames: Iterable[np.ndarray], holes: Iterable[np.ndarray]
    ) -> Iterator[np.ndarray]:
        window: deque[_Slot] = deque()
        first = 0
        target = 0
        for image, hole in zip(frames, holes, strict=True):
            hole = hole.astype(bool)
            gray = _smooth_fill(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), hole)
            slot = _Slot(image, hole, gray, dilate(hole, 1))
            if window:
                self._link(window[-1], slot)
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

    def _link(self, before: _Slot, after: _Slot) -> None:
        forward = self._dis.calc(before.gray, after.gray, None)
        backward = self._dis.calc(after.gray, before.gray, None)
        before.forward = complete_flow(forward, before.hole)
        after.backward = complete_flow(backward, after.hole)

    def _fill(self, window: deque[_Slot], index: int) -> np.ndarray:
        slot = window[index]
        if not slot.hole.any():
            return slot.image.copy()
        ring = dilate(slot.hole, _RING) & ~slot.guard
        ys, xs = np.nonzero(slot.hole | ring)
        in_hole = slot.hole[ys, xs]
        start = np.column_stack([xs, ys]).astype(np.float32)
        known = slot.image[ys, xs].astype(np.float32)
        sides = []
        for direction in (1, -1):
            colours, distance = _follow(window, index, start, direction, self.radius)
            found = distance > 0
            colours += _seam_correction(slot.hole.shape, xs, ys, in_hole, found, known - colours)
            sides.append((colours, found, distance))
        (ahead, found_ahead, far_ahead), (behind, found_behind, far_behind) = sides
        weight_ahead = np.where(found_ahead, 1.0 / np.maximum(far_ahead, 1), 0.0)
        weight_behind = np.where(found_behind, 1.0 / np.maximum(far_behind, 1), 0.0)
        total = np.maximum(weight_ahead + weight_behind, 1e-6)
        temporal = (ahead * weight_ahead[:, None] + behind * weight_behind[:, None]) / total[
            :, None
        ]
        both = found_ahead & found_behind
        disagreement = np.where(both, np.abs(ahead - behind).mean(axis=1), 0.0)
        trust = np.exp(-((disagreement / self.trust) ** 2))
        trust[~(found_ahead | found_behind)] = 0.0
        trust_map = np.zeros(slot.hole.shape, np.float32)
        trust_map[ys, xs] = trust
        trust_map = cv2.GaussianBlur(trust_map, (0, 0), 2.0)
        trust = trust_map[ys, xs][in_hole]
        spatial = telea(slot.image, slot.hole, self.telea_radius)
        base = spatial[ys[in_hole], xs[in_hole]].astype(np.float32)
        fill = trust[:, None] * temporal[in_hole] + (1.0 - trust[:, None]) * base
        out = spatial
        out[ys[in_hole], xs[in_hole]] = np.clip(fill + 0.5, 0, 255).astype(np.uint8)
        return out


def _seam_correction(
    shape: tuple[int, int],
    xs: np.ndarray,
    ys: np.ndarray,
    in_hole: np.ndarray,
    found: np.ndarray,
    residual: np.ndarray,
) -> np.ndarray:
    """A smooth offset that makes copied colours meet the frame at the hole's edge.

    The residual (frame minus copy) is known on the ring around the hole; it is
    spread into the hole (Telea on the residual), as a membrane (Poisson-like)
    blend would: exposure changes and small misalignments stop showing as seams.
    """
    anchors = found & ~in_hole
    if not anchors.any():
        return np.zeros_like(residual)
    field = np.zeros((*shape, 3), np.float32)
    field[ys[anchors], xs[anchors]] = residual[anchors]
    unknown = np.zeros(shape, np.uint8)
    unknown[ys[~anchors], xs[~anchors]] = 255
    correction = np.stack(
        [cv2.inpaint(field[..., c], unknown, _RING, cv2.INPAINT_TELEA)[ys, xs] for c in range(3)],
        axis=1,
    )
    correction[~found] = 0.0
    return correction


def _follow(
    window: deque[_Slot], index: int, start: np.ndarray, direction: int, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    """Colours where each point first lands outside a hole going one way, and how many frames away.

    Distance 0 means it never did within the window.
    """
    count = len(start)
    colours = np.zeros((count, 3), np.float32)
    distance = np.zeros(count, np.int32)
    position = start.copy()
    pending = np.arange(count)
    height, width = window[index].hole.shape
    for step in range(1, radius + 1):
        here, there = index + (step - 1) * direction, index + step * direction
        if there < 0 or there >= len(window) or pending.size == 0:
            break
        flow = window[here].forward if direction > 0 else window[here].backward
        if flow is None:
            break
        position[pending] += _sample(flow, position[pending])
        p = position[pending]
        inside = (p[:, 0] >= 0) & (p[:, 0] <= width - 1) & (p[:, 1] >= 0) & (p[:, 1] <= height - 1)
        source = window[there]
        xi = np.clip(np.rint(p[:, 0]).astype(np.int32), 0, width - 1)
        yi = np.clip(np.rint(p[:, 1]).astype(np.int32), 0, height - 1)
        usable = inside & ~source.guard[yi, xi]
        if usable.any():
            chosen = pending[usable]
            colours[chosen] = _sample(source.image, p[usable])
            distance[chosen] = step
        pending = pending[~usable & inside]
    return colours, distance


def _sample(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` at float (x, y) points, as float32 (N, channels)."""
    count = len(points)
    columns = 1024
    rows = -(-count // columns)
    padded = np.zeros((rows * columns, 2), np.float32)
    padded[:count] = points
    grid = padded.reshape(rows, columns, 2)
    out = cv2.remap(image, grid[..., 0], grid[..., 1], cv2.INTER_LINEAR, cv2.BORDER_REPLICATE)
    return out.reshape(rows * columns, -1)[:count].astype(np.float32)


def erase_frames(
    frames: Iterable[np.ndarray], holes: Iterable[np.ndarray], *, radius: int = 8
) -> Iterator[np.ndarray]:
    """Filled frames, one per input frame, in order."""
    return VideoEraser(radius=radius).run(frames, holes)
