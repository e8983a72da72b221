"""One set of object ids for a whole video, from the id masks of its windows.

The upstream numbers objects per upload, so object 1 of one window need not be
object 1 of the next. Windows are taken outward from the anchor (the window of
the annotation frame): the anchor keeps its ids; each next window is matched
against the one it follows on the frames they share:

1. **overlap**: a local id and a global id whose masks overlap with an IoU of at
   least ``MIN_IOU`` (summed over the shared frames) are one object; pairs are
   taken greedily, best IoU first, each id at most once;
2. **appearance**: a local id left unmatched (only then is a window's appearance
   measured: it costs a decode of the window) is compared with every object known
   so far that is *not* in the shared frames (it left the frame, or was hidden):
   the colour histograms (hue and saturation) of their pixels whose Bhattacharyya
   distance is at most ``MAX_HIST_DISTANCE`` are one object, so an object that
   leaves and comes back keeps its id;
3. anything else is a new object, with the next free id.

The stitched mask takes each frame from the window that owns it
(``windows.cut_points``: the middle of each overlap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from services.errors import InvalidInput
from services.media.video import VideoWriter, read_frames, video_size
from services.media.windows import Window, cut_points, order_from

Box = tuple[float, float, float, float]

MIN_IOU = 0.3
"""Masks of one object in two uploads of the same frames overlap far more than this;
two objects that merely touch overlap far less."""
MAX_HIST_DISTANCE = 0.35
"""Bhattacharyya distance between two hue-saturation histograms (0: same, 1: disjoint)
under which two ids are one object. The same object in two windows measures below
0.15 on the test clips, two objects of different colours above 0.6."""
HIST_BINS = (18, 8)
SAMPLE_EVERY = 2
"""Appearance is measured on every second frame of a window: enough pixels, half the cost."""
MAX_ID = 255


@dataclass
class WindowIds:
    """One window's id mask (local ids) and its working video (for appearance)."""

    mask: Path
    video: Path


@dataclass
class Stitched:
    mask: Path
    boxes: dict[int, Box]
    """Each global id's normalised box on the annotation frame, or where first seen."""
    mapping: list[dict[int, int]] = field(default_factory=list)
    """Per window, local id -> global id."""


def _frames(path: Path, first: int, stop: int) -> list[np.ndarray]:
    """Frames ``first`` to ``stop - 1`` of a mask; only those are kept."""
    kept = []
    for index, image in enumerate(read_frames(path, "gray")):
        if index >= stop:
            break
        if index >= first:
            kept.append(image)
    return kept


def overlap_iou(
    ours: Sequence[np.ndarray], theirs: Sequence[np.ndarray]
) -> dict[tuple[int, int], float]:
    """IoU of every (our id, their id) pair over the shared frames, summed frame by frame."""
    inter: dict[tuple[int, int], int] = {}
    area_a: dict[int, int] = {}
    area_b: dict[int, int] = {}
    for a, b in zip(ours, theirs, strict=True):
        pairs = a.astype(np.uint16) * 256 + b.astype(np.uint16)
        counts = np.bincount(pairs.ravel(), minlength=65536)
        for code in np.flatnonzero(counts):
            ia, ib, n = int(code) >> 8, int(code) & 255, int(counts[code])
            if ia:
                area_a[ia] = area_a.get(ia, 0) + n
            if ib:
                area_b[ib] = area_b.get(ib, 0) + n
            if ia and ib:
                inter[(ia, ib)] = inter.get((ia, ib), 0) + n
    return {(ia, ib): n / (area_a[ia] + area_b[ib] - n) for (ia, ib), n in inter.items()}


def appearance(mask: Path, video: Path) -> dict[int, np.ndarray]:
    """Each id's hue-saturation histogram over its pixels (normalised), from one window."""
    hists: dict[int, np.ndarray] = {}
    for index, (ids, image) in enumerate(
        zip(read_frames(mask, "gray"), read_frames(video), strict=False)
    ):
        if index % SAMPLE_EVERY:
            continue
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
        for obj in np.unique(ids):
            if obj == 0:
                continue
            where = (ids == obj).astype(np.uint8)
            hist = cv2.calcHist([hsv], [0, 1], where, list(HIST_BINS), [0, 180, 0, 256])
            hists[int(obj)] = hists.get(int(obj), 0) + hist
    return {k: h / max(float(h.sum()), 1.0) for k, h in hists.items()}


def hist_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        cv2.compareHist(a.astype(np.float32), b.astype(np.float32), cv2.HISTCMP_BHATTACHARYYA)
    )


def overlap_pairs(iou: dict[tuple[int, int], float]) -> dict[int, int]:
    """Local id -> global id for the pairs that overlap enough, best IoU first."""
    mapping: dict[int, int] = {}
    taken: set[int] = set()
    for (local, known), value in sorted(iou.items(), key=lambda item: -item[1]):
        if value >= MIN_IOU and local not in mapping and known not in taken:
            mapping[local] = known
            taken.add(known)
    return mapping


def match(
    iou: dict[tuple[int, int], float],
    local_ids: Sequence[int],
    looks: dict[int, np.ndarray],
    known_looks: dict[int, np.ndarray],
    present: set[int],
    next_id: int,
) -> dict[int, int]:
    """Local id -> global id for one window (the rules in the module's docstring).

    ``iou`` pairs (local, global) on the shared frames; ``present``: global ids seen
    on those frames (they cannot be matched by appearance); ``known_looks``: every
    global id's histogram so far.
    """
    mapping = overlap_pairs(iou)
    taken = set(mapping.values())
    for local in sorted(set(local_ids) - set(mapping)):
        best, distance = None, MAX_HIST_DISTANCE
        for known, look in known_looks.items():
            if known in taken or known in present or local not in looks:
                continue
            d = hist_distance(looks[local], look)
            if d <= distance:
                best, distance = known, d
        if best is None:
            if next_id > MAX_ID:
                raise InvalidInput(
                    f"the video holds more than {MAX_ID} objects of one class across its windows; "
                    "prompt fewer objects or split the video",
                    field="classes",
                )
            best, next_id = next_id, next_id + 1
        mapping[local] = best
        taken.add(best)
    return mapping


def stitch(
    parts: Sequence[WindowIds], windows: Sequence[Window], anchor_index: int,
    frame_index: int, dest: Path,
) -> Stitched:  # fmt: skip
    """The windows' id masks as one mask with one set of ids (see the module docstring)."""
    mapping: list[dict[int, int]] = [{} for _ in windows]
    known_looks: dict[int, np.ndarray] = {}
    next_id = 1
    for k, neighbour in order_from(anchor_index, len(windows)):
        ids = sorted(_ids(parts[k].mask))
        looks: dict[int, np.ndarray] = {}
        if neighbour is None:
            looks = appearance(parts[k].mask, parts[k].video)
            mapping[k] = {i: i for i in ids}
        else:
            ours, theirs = _shared(parts, windows, k, neighbour, mapping[neighbour])
            present = {int(v) for f in theirs for v in np.unique(f) if v}
            iou = overlap_iou(ours, theirs)
            mapping[k] = overlap_pairs(iou)
            if set(ids) - set(mapping[k]):
                looks = appearance(parts[k].mask, parts[k].video)
                mapping[k] = match(iou, ids, looks, known_looks, present, next_id)
        for own, glob in mapping[k].items():
            if glob not in known_looks and own in looks:
                known_looks[glob] = looks[own]
        next_id = max([next_id - 1, *mapping[k].values()]) + 1
    boxes = _write(parts, windows, mapping, frame_index, dest)
    return Stitched(dest, boxes, mapping)


def _ids(mask: Path) -> set[int]:
    found: set[int] = set()
    for image in read_frames(mask, "gray"):
        found.update(int(v) for v in np.unique(image) if v)
    return found


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.zeros(256, np.uint8)
    for local, glob in mapping.items():
        lut[local] = glob
    return lut


def _shared(
    parts: Sequence[WindowIds], windows: Sequence[Window], k: int, j: int, known: dict[int, int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The frames windows ``k`` and ``j`` share: ``k``'s local ids, ``j``'s global ids."""
    start, end = max(windows[k][0], windows[j][0]), min(windows[k][1], windows[j][1])
    ours = _frames(parts[k].mask, start - windows[k][0], end - windows[k][0])
    lut = _lut(known)
    shared = _frames(parts[j].mask, start - windows[j][0], end - windows[j][0])
    theirs = [cv2.LUT(f, lut) for f in shared]
    return ours, theirs


def _write(
    parts: Sequence[WindowIds], windows: Sequence[Window], mapping: list[dict[int, int]],
    frame_index: int, dest: Path,
) -> dict[int, Box]:  # fmt: skip
    """Each frame from the window that owns it, with global ids; the objects' boxes."""
    width, height, fps, _ = video_size(parts[0].mask)
    cuts = [*cut_points(windows), windows[-1][1]]
    first: dict[int, Box] = {}
    on_anchor: dict[int, Box] = {}
    with VideoWriter(dest, width, height, fps, codec="ffv1") as writer:
        for k, (start, _) in enumerate(windows):
            lut = _lut(mapping[k])
            for offset, image in enumerate(read_frames(parts[k].mask, "gray")):
                index = start + offset
                if not cuts[k] <= index < cuts[k + 1]:
                    continue
                ids = cv2.LUT(image, lut)
                _boxes(ids, first, on_anchor if index == frame_index else None)
                writer.write(ids)
    return {i: on_anchor.get(i, box) for i, box in sorted(first.items())}


def _boxes(ids: np.ndarray, first: dict[int, Box], on_anchor: dict[int, Box] | None) -> None:
    height, width = ids.shape
    for obj in np.unique(ids):
        obj = int(obj)
        if obj == 0 or (obj in first and on_anchor is None):
            continue
        x, y, w, h = cv2.boundingRect((ids == obj).astype(np.uint8))
        box = (x / width, y / height, w / width, h / height)
        first.setdefault(obj, box)
        if on_anchor is not None:
            on_anchor[obj] = box


def propagated_boxes(
    source_mask: Path, source: Window, target: Window
) -> tuple[int, list[Box]] | None:
    """How to prompt window ``target`` from the one before it in propagation: on the shared
    frame where ``source``'s mask shows the most objects (on a tie, the one nearest the middle
    of ``source``, where its tracking is furthest from either end), the box of each; as
    ``(frame index within target, normalised boxes)``. None when no object is on any shared
    frame (the objects left the picture: nothing to prompt)."""
    start, end = max(source[0], target[0]), min(source[1], target[1])
    best: tuple[int, int] | None = None
    boxes: list[Box] = []
    for offset, image in enumerate(read_frames(source_mask, "gray")):
        index = source[0] + offset
        if not start <= index < end:
            continue
        ids = [int(v) for v in np.unique(image) if v]
        score = (len(ids), -abs(2 * index + 1 - source[0] - source[1]))
        if ids and (best is None or score > best):
            best = score
            found: dict[int, Box] = {}
            _boxes(image, found, None)
            boxes = [found[i] for i in sorted(found)]
            chosen = index
    if best is None:
        return None
    return chosen - target[0], boxes
