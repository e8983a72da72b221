"""Prompted segmentation and mask tracking with classical computer vision.

An object starts as a GrabCut segmentation of its box (and points) on the
annotation frame. Each following frame carries the previous mask along a dense
optical flow and re-segments a band around the carried mask with GrabCut, so the
boundary snaps back to colour edges instead of drifting with flow errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from services.models import ClassPrompt

_POINT_RADIUS_FRACTION = 0.012
_MIN_POINT_RADIUS = 2
_SIMILAR_COLOUR = 30.0


@dataclass(frozen=True)
class Seed:
    """What the prompt says about one object: an optional box and point marks, in pixels."""

    box: tuple[int, int, int, int] | None
    positive: list[tuple[int, int]]
    negative: list[tuple[int, int]]


def seeds_from_prompt(prompt: ClassPrompt, width: int, height: int) -> list[Seed]:
    """One seed per box (points inside it refine it), plus one for positive points outside boxes.

    Negative points carve out of every object.
    """
    boxes = [_box_pixels(b, width, height) for b in prompt.boxes]
    labels = prompt.point_labels or [1] * len(prompt.points)
    points = [
        (min(width - 1, int(x * width)), min(height - 1, int(y * height))) for x, y in prompt.points
    ]
    negative = [p for p, label in zip(points, labels, strict=True) if label == 0]
    positive = [p for p, label in zip(points, labels, strict=True) if label == 1]
    seeds: list[Seed] = []
    claimed: set[tuple[int, int]] = set()
    for box in boxes:
        inside = [p for p in positive if _inside(p, box)]
        claimed.update(inside)
        seeds.append(Seed(box, inside, negative))
    loose = [p for p in positive if p not in claimed]
    if loose:
        seeds.append(Seed(None, loose, negative))
    return seeds


def _box_pixels(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int, int]:
    x, y, w, h = box
    x0, y0 = int(round(x * width)), int(round(y * height))
    x1, y1 = int(round((x + w) * width)), int(round((y + h) * height))
    x0, y0 = min(max(0, x0), width - 1), min(max(0, y0), height - 1)
    x1, y1 = max(x0 + 1, min(width, x1)), max(y0 + 1, min(height, y1))
    return x0, y0, x1 - x0, y1 - y0


def _inside(point: tuple[int, int], box: tuple[int, int, int, int]) -> bool:
    x, y = point
    bx, by, bw, bh = box
    return bx <= x < bx + bw and by <= y < by + bh


def _point_radius(width: int, height: int) -> int:
    return max(_MIN_POINT_RADIUS, int(round(_POINT_RADIUS_FRACTION * max(width, height))))


def segment_seed(image: np.ndarray, seed: Seed) -> np.ndarray:
    """The object's mask (bool HxW) on the annotation frame, by GrabCut from its seed."""
    height, width = image.shape[:2]
    radius = _point_radius(width, height)
    trimap = np.full((height, width), cv2.GC_BGD, np.uint8)
    if seed.box is not None:
        x, y, w, h = seed.box
        trimap[y : y + h, x : x + w] = cv2.GC_PR_FGD
    else:
        x, y, w, h = _region_around_points(seed.positive, width, height)
        trimap[y : y + h, x : x + w] = cv2.GC_PR_BGD
        similar = _similar_to_points(image, seed.positive, radius)
        region = np.zeros_like(similar)
        region[y : y + h, x : x + w] = True
        trimap[similar & region] = cv2.GC_PR_FGD
    for px, py in seed.positive:
        cv2.circle(trimap, (px, py), radius, int(cv2.GC_FGD), -1)
    for px, py in seed.negative:
        cv2.circle(trimap, (px, py), radius, int(cv2.GC_BGD), -1)
    mask = _grabcut(image, trimap, iterations=5, pad=max(width, height))
    if seed.box is not None and not mask.any():
        x, y, w, h = seed.box
        mask[y : y + h, x : x + w] = True
    if seed.positive:
        mask = _keep_components_with_points(mask, seed.positive)
    return mask


def _region_around_points(
    points: Sequence[tuple[int, int]], width: int, height: int
) -> tuple[int, int, int, int]:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    margin = int(0.2 * max(width, height))
    x0, y0 = max(0, min(xs) - margin), max(0, min(ys) - margin)
    x1, y1 = min(width, max(xs) + margin + 1), min(height, max(ys) + margin + 1)
    return x0, y0, x1 - x0, y1 - y0


def _similar_to_points(
    image: np.ndarray, points: Sequence[tuple[int, int]], radius: int
) -> np.ndarray:
    """Pixels connected to a point through colours close to the colours around the points."""
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).astype(np.float32)
    marks = np.zeros(image.shape[:2], np.uint8)
    for px, py in points:
        cv2.circle(marks, (px, py), radius, 1, -1)
    samples = lab[marks.astype(bool)]
    distance = np.full(image.shape[:2], np.inf, np.float32)
    for colour in samples[:: max(1, len(samples) // 16)]:
        distance = np.minimum(distance, np.linalg.norm(lab - colour, axis=2))
    close = (distance < _SIMILAR_COLOUR).astype(np.uint8) | marks
    _, labels = cv2.connectedComponents(close, connectivity=8)
    keep = {int(labels[py, px]) for px, py in points} - {0}
    return np.isin(labels, list(keep))


def _grabcut(image: np.ndarray, trimap: np.ndarray, *, iterations: int, pad: int = 8) -> np.ndarray:
    """GrabCut on the smallest crop that holds every undecided pixel; bool mask of the frame."""
    undecided = (trimap == cv2.GC_PR_FGD) | (trimap == cv2.GC_PR_BGD)
    result = (trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)
    if not undecided.any():
        return trimap == cv2.GC_FGD
    has_fg = ((trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)).any()
    has_bg = ((trimap == cv2.GC_BGD) | (trimap == cv2.GC_PR_BGD)).any()
    if not (has_fg and has_bg):
        return result
    ys, xs = np.nonzero(undecided)
    height, width = trimap.shape
    y0, y1 = max(0, ys.min() - pad), min(height, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(width, xs.max() + pad + 1)
    crop = np.ascontiguousarray(trimap[y0:y1, x0:x1])
    crop_bg = (crop == cv2.GC_BGD) | (crop == cv2.GC_PR_BGD)
    crop_fg = (crop == cv2.GC_FGD) | (crop == cv2.GC_PR_FGD)
    if crop_bg.sum() < 8 or crop_fg.sum() < 8:
        return result
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(
            np.ascontiguousarray(image[y0:y1, x0:x1]),
            crop,
            None,
            bgd,
            fgd,
            iterations,
            cv2.GC_INIT_WITH_MASK,
        )
    except cv2.error:
        return result
    out = trimap == cv2.GC_FGD
    out[y0:y1, x0:x1] = (crop == cv2.GC_FGD) | (crop == cv2.GC_PR_FGD)
    return out


def _keep_components_with_points(mask: np.ndarray, points: Sequence[tuple[int, int]]) -> np.ndarray:
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask
    keep = {int(labels[y, x]) for x, y in points} - {0}
    if not keep:
        return mask
    return np.isin(labels, list(keep))


class MaskTracker:
    """Carries object masks from frame to frame and re-segments them on each new frame.

    The carry uses each object's own motion (a similarity transform fitted to the
    flow inside its eroded mask), not the dense flow at its edge, where the flow
    is dragged by the background. The re-segmentation is GrabCut on a band around
    the carried mask, told by the motion which band pixels move with the
    background (and so cannot be the object).
    """

    def __init__(self, image: np.ndarray, masks: Sequence[np.ndarray]) -> None:
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        self._gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        self._masks = [m.astype(bool) for m in masks]
        self._areas = [max(1, int(m.sum())) for m in self._masks]
        self._velocity: list[np.ndarray | None] = [None] * len(self._masks)
        height, width = self._gray.shape
        self._grid = np.dstack(np.meshgrid(np.arange(width), np.arange(height))).astype(np.float32)

    @property
    def masks(self) -> list[np.ndarray]:
        return self._masks

    def step(self, image: np.ndarray) -> list[np.ndarray]:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        forward = self._dis.calc(self._gray, gray, None)
        backward = self._dis.calc(gray, self._gray, None)
        union = np.zeros(gray.shape, bool)
        for mask in self._masks:
            union |= mask
        background = _background_motion(backward, self._grid, _grow(union, 6))
        masks = []
        for index, (mask, area) in enumerate(zip(self._masks, self._areas, strict=True)):
            carried, motion, self._velocity[index] = _carry(
                mask, forward, gray.shape, self._velocity[index], self._gray, gray
            )
            if not carried.any():
                masks.append(carried)
                continue
            cue = _motion_cue(backward, self._grid, motion, background)
            masks.append(self._refine(image, carried, cue, area))
        self._gray = gray
        self._masks = masks
        return masks

    def _refine(
        self, image: np.ndarray, carried: np.ndarray, cue: np.ndarray | None, area: int
    ) -> np.ndarray:
        size = np.sqrt(max(area, int(carried.sum())))
        band = _grow(carried, max(2, int(round(0.25 * size))))
        trimap = np.full(carried.shape, cv2.GC_BGD, np.uint8)
        trimap[band] = cv2.GC_PR_BGD
        trimap[carried] = cv2.GC_PR_FGD
        core = _shrink(carried, max(1, int(round(0.08 * size))))
        if cue is not None:
            trimap[core & (cue > -0.5)] = cv2.GC_FGD
            trimap[band & (cue < -0.8)] = cv2.GC_BGD
        else:
            trimap[core] = cv2.GC_FGD
        refined = _grabcut(image, trimap, iterations=2, pad=max(8, int(0.5 * size)))
        got = int(refined.sum())
        if got < 0.6 * carried.sum() or got > 1.8 * carried.sum():
            return carried
        return refined


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def _shrink(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


def _carry(
    mask: np.ndarray,
    forward: np.ndarray,
    shape: tuple[int, int],
    velocity: np.ndarray | None,
    before: np.ndarray,
    after: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The mask moved by its own motion, that motion (2x3, prev -> cur) and its new velocity.

    A fitted motion that would jerk the object's centre far from its last velocity
    is taken to be an occluder's (a tree passing in front) and replaced by that
    velocity: objects keep their momentum, occluders come and go. A plain
    translation found by matching the object's pixels is preferred when it fits
    them better (flat objects have little flow inside).
    """
    core = _shrink(mask, 2)
    if core.sum() < 12:
        core = mask
    ys, xs = np.nonzero(core)
    if len(xs) < 3:
        return mask.copy(), None, velocity
    step = max(1, len(xs) // 400)
    src = np.column_stack([xs[::step], ys[::step]]).astype(np.float32)
    dst = src + forward[ys[::step], xs[::step]]
    motion, _ = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=1.5, maxIters=200
    )
    if motion is None:
        shift = np.median(dst - src, axis=0)
        motion = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], np.float64)
    centre = np.array([xs.mean(), ys.mean(), 1.0])
    shift = motion @ centre - centre[:2]
    matched = _match_translation(mask, before, after, shift)
    if matched is not None and _misfit(mask, before, after, matched) < _misfit(
        mask, before, after, motion
    ):
        motion = matched
        shift = motion[:, 2].copy()
    if velocity is not None and np.linalg.norm(shift - velocity) > 3.0 + 0.5 * np.linalg.norm(
        velocity
    ):
        motion = np.array([[1, 0, velocity[0]], [0, 1, velocity[1]]], np.float64)
        shift = velocity
    height, width = shape
    warped = cv2.warpAffine(
        mask.astype(np.float32), motion, (width, height), flags=cv2.INTER_LINEAR
    )
    return warped >= 0.5, motion, shift


def _match_translation(
    mask: np.ndarray, before: np.ndarray, after: np.ndarray, guess: np.ndarray
) -> np.ndarray | None:
    """The translation (2x3) that best matches the object's pixels, searched around ``guess``."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    height, width = mask.shape
    reach = int(max(6, 0.5 * max(x1 - x0, y1 - y0), 2 * np.abs(guess).max() + 4))
    sx0, sy0 = max(0, x0 - reach), max(0, y0 - reach)
    sx1, sy1 = min(width, x1 + reach), min(height, y1 + reach)
    if sx1 - sx0 <= x1 - x0 or sy1 - sy0 <= y1 - y0:
        return None
    template = np.ascontiguousarray(before[y0:y1, x0:x1])
    weights = np.ascontiguousarray(mask[y0:y1, x0:x1].astype(np.uint8))
    scores = cv2.matchTemplate(after[sy0:sy1, sx0:sx1], template, cv2.TM_SQDIFF, mask=weights)
    _, _, best, _ = cv2.minMaxLoc(scores)
    dx, dy = sx0 + best[0] - x0, sy0 + best[1] - y0
    return np.array([[1, 0, dx], [0, 1, dy]], np.float64)


def _misfit(mask: np.ndarray, before: np.ndarray, after: np.ndarray, motion: np.ndarray) -> float:
    """Mean absolute difference of the object's pixels moved by ``motion`` from the new frame."""
    height, width = mask.shape
    moved = cv2.warpAffine(before, motion, (width, height), flags=cv2.INTER_LINEAR)
    where = cv2.warpAffine(mask.astype(np.uint8), motion, (width, height)) > 0
    if not where.any():
        return float("inf")
    return float(np.abs(moved[where].astype(np.float32) - after[where]).mean())


def _background_motion(
    backward: np.ndarray, grid: np.ndarray, objects: np.ndarray
) -> np.ndarray | None:
    """The camera's motion (3x3 homography, cur -> prev), fitted outside the objects."""
    height, width = objects.shape
    step = max(4, int(np.sqrt(height * width / 1500)))
    ys, xs = np.mgrid[step // 2 : height : step, step // 2 : width : step]
    keep = ~objects[ys, xs]
    if keep.sum() < 8:
        return None
    src = grid[ys[keep], xs[keep]]
    dst = src + backward[ys[keep], xs[keep]]
    homography, _ = cv2.findHomography(src, dst, cv2.RANSAC, 2.0, maxIters=200)
    return homography


def _motion_cue(
    backward: np.ndarray,
    grid: np.ndarray,
    motion: np.ndarray | None,
    background: np.ndarray | None,
) -> np.ndarray | None:
    """Per pixel of the new frame, -1 (moves like the background) .. +1 (moves like the object).

    None when the two motions are too alike to tell apart.
    """
    if motion is None or background is None:
        return None
    inverse = cv2.invertAffineTransform(motion)
    height, width = backward.shape[:2]
    seen = grid + backward
    as_object = cv2.transform(grid.reshape(-1, 1, 2), inverse).reshape(height, width, 2)
    as_background = cv2.perspectiveTransform(grid.reshape(-1, 1, 2), background).reshape(
        height, width, 2
    )
    separation = np.linalg.norm(as_object - as_background, axis=2)
    if float(np.median(separation)) < 1.5:
        return None
    to_object = np.linalg.norm(seen - as_object, axis=2)
    to_background = np.linalg.norm(seen - as_background, axis=2)
    return np.clip((to_object - to_background) / np.maximum(separation, 1.0), -1.0, 1.0) * -1.0


def id_map(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Object masks as one uint8 map of ids 1..N (later objects win overlaps)."""
    out = np.zeros(shape, np.uint8)
    for index, mask in enumerate(masks, start=1):
        out[mask] = index
    return out
