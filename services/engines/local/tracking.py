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

from services.media.masks import dilate, erode
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


def segment_seed(
    image: np.ndarray, seed: Seed, neighbours: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """The object's mask (bool HxW) on the annotation frame, by GrabCut from its seed.

    With ``neighbours`` (the frames either side) and a box, the box is re-segmented
    by motion: the pixels that follow the object between the frames rather than the
    camera (GrabCut on a box alone takes the background between a bike's spokes and
    misses thin parts).
    """
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
    if seed.box is not None and neighbours and mask.any():
        mask = _refine_by_motion(image, mask, seed.box, neighbours)
        for px, py in seed.positive:
            cv2.circle(mask.view(np.uint8), (px, py), radius, 1, -1)
        for px, py in seed.negative:
            cv2.circle(mask.view(np.uint8), (px, py), radius, 0, -1)
    if seed.positive:
        mask = _keep_components_with_points(mask, seed.positive)
    return mask


def _refine_by_motion(
    image: np.ndarray,
    mask: np.ndarray,
    box: tuple[int, int, int, int],
    neighbours: Sequence[np.ndarray],
) -> np.ndarray:
    """The box's pixels that move with the object (GrabCut's ``mask``) rather than the camera."""
    height, width = mask.shape
    x, y, w, h = box
    in_box = np.zeros_like(mask)
    in_box[y : y + h, x : x + w] = True
    crop = (slice(y, y + h), slice(x, x + w))
    here = image[crop].astype(np.float32)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    grid = np.dstack(np.meshgrid(np.arange(width), np.arange(height))).astype(np.float32)
    dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    object_errors, background_errors = [], []
    for other in neighbours:
        other_gray = cv2.cvtColor(other, cv2.COLOR_BGR2GRAY)
        camera = _background_motion(_dense_flow(dis, gray, other_gray), grid, dilate(in_box, 4))
        matched = _match_translation(mask, gray, other_gray, np.zeros(2))
        if camera is None or matched is None:
            continue
        back = cv2.invertAffineTransform(matched)
        as_object = cv2.warpAffine(other, back, (width, height), borderMode=cv2.BORDER_REPLICATE)
        object_errors.append(np.abs(here - as_object[crop]).sum(axis=2))
        background_errors.append(_camera_error(here, other, camera, crop))
    if not object_errors:
        return mask
    window = (_RESIDUAL_WINDOW, _RESIDUAL_WINDOW)
    object_error = cv2.blur(np.min(object_errors, axis=0), window)
    background_error = cv2.blur(np.min(background_errors, axis=0), window)
    motion = (background_error - object_error) / (background_error + object_error + _RESIDUAL_FLOOR)
    evidence = motion + 0.1 * np.where(mask[crop], 1.0, -1.0) + 0.1
    belief = evidence + _SMOOTHING * cv2.GaussianBlur(np.tanh(3 * evidence), (0, 0), 1.5)
    refined = np.zeros_like(mask)
    refined[crop] = belief > 0
    return _snap(image, refined) if refined.any() else mask


_SNAP = 2


def _snap(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask`` with its edge moved to the nearest colour edge, by GrabCut in a thin band.

    The motion evidence is pooled over a few pixels, so it bleeds past the object's edge.
    """
    if not _SNAP or not mask.any():
        return mask
    trimap = np.full(mask.shape, cv2.GC_BGD, np.uint8)
    trimap[dilate(mask, _SNAP)] = cv2.GC_PR_BGD
    trimap[mask] = cv2.GC_PR_FGD
    trimap[erode(mask, _SNAP)] = cv2.GC_FGD
    snapped = _grabcut(image, trimap, iterations=1, pad=8)
    return snapped if snapped.sum() >= 0.5 * mask.sum() else mask


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
    result: np.ndarray = (trimap == cv2.GC_FGD) | (trimap == cv2.GC_PR_FGD)
    if not undecided.any():
        certain: np.ndarray = trimap == cv2.GC_FGD
        return certain
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
        # The stub types ``rect`` as required; None is valid (and unused) with GC_INIT_WITH_MASK.
        cv2.grabCut(  # type: ignore[call-overload]
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
    out: np.ndarray = trimap == cv2.GC_FGD
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

    Each new frame is segmented around the object's predicted place (its last mask
    moved by its own translation, found by matching its pixels) from three cues:

    - motion: which explains the pixel better, the object's translation from the
      previous frame or the camera's homography (fitted to the flow outside the
      objects) from the previous or the upcoming frame; taking the better of the two
      neighbours for the camera removes the ghost an object leaves where it uncovers
      the background;
    - colour: a histogram of the object against a ring of background around it, from
      the annotation frame (colours seen in neither count for neither);
    - shape: the predicted mask, fading out a few pixels beyond its edge.

    Their sum is smoothed by a few mean-field passes and thresholded. When the
    result shrinks sharply (a tree passing in front), the prediction, not the
    occluded remnant, is carried to the next frame, so the object comes back whole.
    """

    def __init__(self, image: np.ndarray, masks: Sequence[np.ndarray]) -> None:
        self._dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        self._image = image
        self._gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        height, width = self._gray.shape
        self._grid = np.dstack(np.meshgrid(np.arange(width), np.arange(height))).astype(np.float32)
        self._objects = [_Object.start(image, m.astype(bool)) for m in masks]

    @property
    def masks(self) -> list[np.ndarray]:
        return [o.visible for o in self._objects]

    def step(self, image: np.ndarray, upcoming: np.ndarray | None = None) -> list[np.ndarray]:
        """The masks on ``image`` (the next frame); ``upcoming`` is the frame after it."""
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        union = np.zeros(gray.shape, bool)
        for obj in self._objects:
            union |= obj.carried
        zone = dilate(union, 8)
        camera_prev = _background_motion(_dense_flow(self._dis, gray, self._gray), self._grid, zone)
        camera_next = None
        if upcoming is not None:
            after = cv2.cvtColor(upcoming, cv2.COLOR_BGR2GRAY)
            camera_next = _background_motion(_dense_flow(self._dis, gray, after), self._grid, zone)
        for obj in self._objects:
            obj.step(self._image, self._gray, image, gray, (camera_prev, upcoming, camera_next))
        self._image, self._gray = image, gray
        return self.masks


_MOTION_WEIGHT = 1.0
_COLOUR_WEIGHT = 0.5
_SHAPE_WEIGHT = 0.5
_SHAPE_REACH = 8.0
_RESIDUAL_WINDOW = 5
_RESIDUAL_FLOOR = 20.0
_SMOOTHING = 0.8
_OCCLUDED = 0.5
_BINS = 16


@dataclass
class _Object:
    """One tracked object: its visible mask, the mask carried on, its motion and colours."""

    visible: np.ndarray
    carried: np.ndarray
    area: float
    velocity: np.ndarray | None
    colour: np.ndarray

    @classmethod
    def start(cls, image: np.ndarray, mask: np.ndarray) -> _Object:
        ring = dilate(mask, 25) & ~dilate(mask, 3)
        colour = _colour_odds(image, mask, ring)
        return cls(mask, mask, float(max(1, mask.sum())), None, colour)

    def step(
        self,
        before: np.ndarray,
        before_gray: np.ndarray,
        image: np.ndarray,
        gray: np.ndarray,
        camera: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None],
    ) -> None:
        if not self.carried.any():
            self.visible = self.carried
            return
        height, width = gray.shape
        shift = self._shift(before_gray, gray)
        moved = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], np.float32)
        predicted = cv2.warpAffine(self.carried.astype(np.uint8), moved, (width, height)) > 0
        if not predicted.any():
            predicted = self.carried
        margin = int(max(8, 0.3 * np.sqrt(self.area)))
        ys, xs = np.nonzero(predicted)
        y0, y1 = max(0, ys.min() - margin), min(height, ys.max() + margin + 1)
        x0, x1 = max(0, xs.min() - margin), min(width, xs.max() + margin + 1)
        crop = (slice(y0, y1), slice(x0, x1))
        motion = _motion_evidence(image, before, moved, camera, crop)
        if camera[2] is None:
            # No frame after this one to tell the uncovered background from the object:
            # motion may only take away from the prediction.
            motion = np.where(predicted[crop], motion, np.minimum(motion, 0.0))
        colour = self.colour[_colour_bins(image[crop])]
        inside = predicted[crop].astype(np.uint8)
        outside = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 3)
        shape = np.where(inside > 0, 1.0, 1.0 - 2.0 * np.minimum(outside / _SHAPE_REACH, 1.0))
        evidence = _MOTION_WEIGHT * motion + _COLOUR_WEIGHT * colour + _SHAPE_WEIGHT * shape
        found = np.zeros((height, width), bool)
        found[crop] = _smooth_decision(evidence.astype(np.float32))
        found = _keep_touching(_snap(image, found), predicted)
        got = int(found.sum())
        if got < _OCCLUDED * predicted.sum():
            self.carried = predicted
        else:
            self.carried = found
            self.area = 0.8 * self.area + 0.2 * got
        self.visible = found

    def _shift(self, before_gray: np.ndarray, gray: np.ndarray) -> np.ndarray:
        """The object's translation (dx, dy) since the last frame.

        A match that would jerk the object far from its last velocity is taken to be an
        occluder's (a tree passing in front) and replaced by that velocity: objects keep
        their momentum, occluders come and go.
        """
        template = self.visible if self.visible.sum() > 0.3 * self.area else self.carried
        guess = self.velocity if self.velocity is not None else np.zeros(2)
        matched = _match_translation(template, before_gray, gray, guess)
        shift = matched[:, 2] if matched is not None else guess
        last = self.velocity
        if last is not None and np.linalg.norm(shift - last) > 3.0 + 0.5 * np.linalg.norm(last):
            shift = last
        self.velocity = shift if last is None else 0.5 * shift + 0.5 * last
        return shift


def _motion_evidence(
    image: np.ndarray,
    before: np.ndarray,
    moved: np.ndarray,
    camera: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None],
    crop: tuple[slice, slice],
) -> np.ndarray:
    """Per pixel of the crop, +1 (moves like the object) .. -1 (moves like the camera's view).

    The object's hypothesis is the previous frame moved by the object's translation;
    the camera's is the previous or the upcoming frame moved by the camera's homography,
    whichever fits better (the previous frame alone shows the background the object
    just uncovered as "not background").
    """
    camera_prev, upcoming, camera_next = camera
    height, width = image.shape[:2]
    here = image[crop].astype(np.float32)
    as_object = cv2.warpAffine(before, moved, (width, height), borderMode=cv2.BORDER_REPLICATE)
    object_error = np.abs(here - as_object[crop]).sum(axis=2)
    background_error = _camera_error(here, before, camera_prev, crop)
    if upcoming is not None and camera_next is not None:
        background_error = np.minimum(
            background_error, _camera_error(here, upcoming, camera_next, crop)
        )
    window = (_RESIDUAL_WINDOW, _RESIDUAL_WINDOW)
    object_error = cv2.blur(object_error, window)
    background_error = cv2.blur(background_error, window)
    odds: np.ndarray = (background_error - object_error) / (
        background_error + object_error + _RESIDUAL_FLOOR
    )
    return odds


def _camera_error(
    here: np.ndarray, other: np.ndarray, camera: np.ndarray | None, crop: tuple[slice, slice]
) -> np.ndarray:
    """Per pixel of the crop, how far ``other`` moved by the camera is from this frame."""
    height, width = other.shape[:2]
    seen = other
    if camera is not None:
        seen = cv2.warpPerspective(
            other,
            camera,
            (width, height),
            flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
    error: np.ndarray = np.abs(here - seen[crop].astype(np.float32)).sum(axis=2)
    return error


def _dense_flow(dis: cv2.DISOpticalFlow, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """DIS flow from ``first`` to ``second``, computed afresh (no initial flow)."""
    # The stub types ``flow`` as required; None (no initial flow) is valid at runtime.
    flow: np.ndarray = dis.calc(first, second, None)  # type: ignore[call-overload]
    return flow


def _colour_bins(image: np.ndarray) -> np.ndarray:
    q = (image // (256 // _BINS)).astype(np.int32)
    return (q[..., 0] * _BINS + q[..., 1]) * _BINS + q[..., 2]


def _colour_odds(image: np.ndarray, inside: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Per colour bin, -1 (background's colour) .. +1 (the object's), from two regions."""
    bins = _colour_bins(image)
    odds = []
    seen = np.zeros(_BINS**3, bool)
    for region in (inside, outside):
        counts = np.bincount(bins[region], minlength=_BINS**3).astype(np.float32)
        seen |= counts > 0
        blurred = cv2.GaussianBlur(counts.reshape(_BINS, _BINS * _BINS), (3, 3), 0).ravel()
        odds.append(np.log(blurred / max(float(blurred.sum()), 1.0) + 1e-4))
    # A colour neither region has shows no preference: the blur alone would give the
    # background colours the object meets later (unseen in the annotation frame's ring)
    # the odds of the object colours beside them, and the mask would grow into them.
    odds_of_seen = np.clip(odds[0] - odds[1], -3, 3) / 3
    return np.where(seen, odds_of_seen, 0.0).astype(np.float32)


def _smooth_decision(evidence: np.ndarray, passes: int = 3) -> np.ndarray:
    """Pixels with positive evidence after a few mean-field passes (neighbours agree)."""
    belief = evidence
    for _ in range(passes):
        belief = evidence + _SMOOTHING * cv2.GaussianBlur(np.tanh(belief), (0, 0), 2.0)
    return belief > 0


def _keep_touching(found: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The components of ``found`` that cover at least 2% of the prediction."""
    count, labels = cv2.connectedComponents(found.astype(np.uint8), connectivity=8)
    if count <= 1:
        return found
    overlap = np.bincount(labels[predicted], minlength=count)
    keep = np.nonzero(overlap >= 0.02 * predicted.sum())[0]
    return np.isin(labels, keep[keep > 0])


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
    homography: np.ndarray | None
    homography, _ = cv2.findHomography(src, dst, cv2.RANSAC, 2.0, maxIters=200)
    return homography


def id_map(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Object masks as one uint8 map of ids 1..N (later objects win overlaps)."""
    out = np.zeros(shape, np.uint8)
    for index, mask in enumerate(masks, start=1):
        out[mask] = index
    return out
