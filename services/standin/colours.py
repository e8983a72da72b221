"""A text detector for the stand-in: a text prompt names colours, and every blob of
those colours on every frame is an object.

The stand-in has no language model. ``--text-color "ball=#e63c28,#1e28e6"`` (or
``POST /_text_colors``) makes the text ``ball`` find every connected region of
pixels within ``TOLERANCE`` of one of those colours, on every frame. Like the real
service, it numbers objects per upload, by first appearance (top to bottom, then
left to right on a frame): a region that overlaps an object of the previous frame
(same colour) is that object; any other is a new one. An object that leaves and
comes back within one upload gets a new number, as a tracker that lost it would.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from services.engines.base import FoundObject, Segmentation
from services.media.video import VideoWriter, read_frames, video_size

Colour = tuple[int, int, int]
"""Blue, green, red (OpenCV's order)."""

TOLERANCE = 40
"""Largest difference per channel between a pixel and the named colour (H.264 shifts
flat colours by a few levels and smears edges)."""
MIN_AREA = 6
"""Smaller regions are noise (an edge's mixed pixels), not objects."""
HEX = re.compile(r"#?([0-9a-fA-F]{6})")


def parse_colour(value: str) -> Colour:
    """``#rrggbb`` as (b, g, r)."""
    found = HEX.fullmatch(value.strip())
    if found is None:
        raise ValueError(f"expected a colour as #rrggbb, got {value!r}")
    red, green, blue = (int(found.group(1)[i : i + 2], 16) for i in (0, 2, 4))
    return (blue, green, red)


def parse_text_colours(value: str) -> tuple[str, list[Colour]]:
    """``TEXT=#rrggbb[,#rrggbb...]`` (``--text-color``)."""
    text, sep, colours = value.rpartition("=")
    if not sep or not text.strip():
        raise ValueError(f"expected TEXT=#rrggbb[,#rrggbb...], got {value!r}")
    return text, [parse_colour(c) for c in colours.split(",")]


def _regions(image: np.ndarray, colour: Colour) -> list[np.ndarray]:
    low = np.clip(np.array(colour) - TOLERANCE, 0, 255).astype(np.uint8)
    high = np.clip(np.array(colour) + TOLERANCE, 0, 255).astype(np.uint8)
    hit = cv2.inRange(image, low, high)
    hit = cv2.morphologyEx(hit, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(hit, connectivity=8)
    order = sorted(range(1, count), key=lambda i: (stats[i, 1], stats[i, 0]))
    return [labels == i for i in order if stats[i, cv2.CC_STAT_AREA] >= MIN_AREA]


def _box(where: np.ndarray) -> tuple[float, float, float, float]:
    height, width = where.shape
    x, y, w, h = cv2.boundingRect(where.astype(np.uint8))
    return (x / width, y / height, w / width, h / height)


def find_objects(video: Path, colours: list[Colour], out_dir: Path) -> Segmentation:
    """Every region of ``colours`` on every frame, as an object-id mask (gray8 FFV1)."""
    width, height, fps, _ = video_size(video)
    out = Path(out_dir) / "colour_ids.mkv"
    previous = np.zeros((height, width), np.uint8)
    colour_of: dict[int, int] = {}
    boxes: dict[int, tuple[float, float, float, float]] = {}
    with VideoWriter(out, width, height, fps, codec="ffv1") as writer:
        for image in read_frames(video):
            ids = np.zeros((height, width), np.uint8)
            for index, colour in enumerate(colours):
                for where in _regions(image, colour):
                    before = [int(v) for v in np.unique(previous[where]) if v]
                    same = [v for v in before if colour_of.get(v) == index]
                    if same:
                        obj = same[0]
                    elif len(boxes) < 255:
                        obj = len(boxes) + 1
                        colour_of[obj], boxes[obj] = index, _box(where)
                    else:
                        continue
                    ids[where] = obj
            writer.write(ids)
            previous = ids
    objects = [FoundObject(i, box) for i, box in sorted(boxes.items())]
    return Segmentation(out, objects, f"{len(objects)} objects of the named colours")
