"""SVOR's prompt fields as vor's ``ClassPrompt``, refused as SVOR refuses them.

``points`` and ``bounding_boxes`` are JSON lists of coordinates normalised to the
frame (0~1); labels are 1 (on the object) or 0. The stand-in has no language
model: a text prompt finds the boxes its text table (``--text-box``) gives it.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any, Literal

from pydantic import ValidationError

from services.models import ClassPrompt

BOX_FIELDS = ("x", "y", "w", "h")
Box = tuple[float, float, float, float]


class BadRequest(Exception):
    """What SVOR answers with 400 请求参数错误; the message says what is wrong."""


def _json_list(value: str | None, field: str) -> list[Any] | None:
    """A form field that holds a JSON list; None when it is absent or empty."""
    if value is None or not value.strip():
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise BadRequest(f"{field} is not valid JSON: {value[:80]!r}") from exc
    if not isinstance(parsed, list):
        raise BadRequest(f"{field} must be a JSON list, not {value[:80]!r}")
    return parsed


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _normalised(items: list[Any], field: str, names: tuple[str, ...]) -> list[tuple[float, ...]]:
    """Each item a list of ``len(names)`` numbers, each normalised to the frame (0~1)."""
    out = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        shown = json.dumps(item)[:80]
        if not isinstance(item, list) or len(item) != len(names):
            raise BadRequest(f"{where} must be [{', '.join(names)}], not {shown}")
        if not all(_is_number(v) for v in item):
            raise BadRequest(f"{where} = {shown}: every value must be a number")
        for name, value in zip(names, item, strict=True):
            if not 0.0 <= value <= 1.0:
                raise BadRequest(
                    f"{where} = {shown}: {name} = {value:g} is outside 0~1 (coordinates are "
                    "normalised to the frame's width and height, not pixels)"
                )
        out.append(tuple(float(v) for v in item))
    return out


def _labels(value: str | None, field: str, of: str, count: int) -> list[Literal[0, 1]] | None:
    """A JSON list of 1 (on the object) and 0 (not on it), one per item of ``of``."""
    labels = _json_list(value, field)
    if labels is None:
        return None
    if any(type(label) is not int or label not in (0, 1) for label in labels):
        raise BadRequest(f"{field} must hold only 1 and 0, not {json.dumps(labels)[:80]}")
    if len(labels) != count:
        raise BadRequest(f"{field} has {len(labels)} labels for {count} {of}")
    return labels


def _boxes(value: str | None) -> list[Box]:
    boxes = _normalised(_json_list(value, "bounding_boxes") or [], "bounding_boxes", BOX_FIELDS)
    for index, (x, y, w, h) in enumerate(boxes):
        if w <= 0 or h <= 0:
            raise BadRequest(f"bounding_boxes[{index}] has no area (w and h must be above 0)")
        if x + w > 1.0 + 1e-6 or y + h > 1.0 + 1e-6:
            raise BadRequest(
                f"bounding_boxes[{index}] runs past the frame (x + w = {x + w:g}, "
                f"y + h = {y + h:g}; both at most 1)"
            )
    return [(x, y, w, h) for x, y, w, h in boxes]


def class_prompt(
    frame_index: int,
    text: str | None,
    remove_prompt: str | None,
    points: str | None,
    point_labels: str | None,
    bounding_boxes: str | None,
    bounding_box_labels: str | None,
) -> ClassPrompt:
    """SVOR's form fields (normalised coordinates, JSON lists) as vor's ``ClassPrompt``."""
    boxes = _boxes(bounding_boxes)
    box_labels = _labels(bounding_box_labels, "bounding_box_labels", "bounding_boxes", len(boxes))
    if box_labels and 0 in box_labels:
        raise BadRequest("bounding_box_labels: this stand-in takes positive boxes (1) only")
    pts = _normalised(_json_list(points, "points") or [], "points", ("x", "y"))
    labels = _labels(point_labels, "point_labels", "points", len(pts))
    try:
        return ClassPrompt(
            label="svor",
            text=text or None,
            remove_prompt=remove_prompt or None,
            boxes=boxes,
            points=[(x, y) for x, y in pts],
            point_labels=labels or [1] * len(pts),
            frame_index=frame_index,
        )
    except ValidationError as exc:
        raise BadRequest(exc.errors()[0]["msg"].removeprefix("Value error, ")) from exc


def text_key(text: str) -> str:
    return " ".join(text.lower().split())


def parse_text_box(value: str) -> tuple[str, Box]:
    """``TEXT=x,y,w,h`` (``--text-box``): a box the stand-in finds for that text prompt."""
    text, sep, coords = value.rpartition("=")
    try:
        x, y, w, h = (float(v) for v in coords.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TEXT=x,y,w,h, got {value!r}") from None
    if not sep or not text.strip():
        raise argparse.ArgumentTypeError(f"expected TEXT=x,y,w,h, got {value!r}")
    try:
        text_table({text: [(x, y, w, h)]})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text, (x, y, w, h)


def text_table(entries: dict[str, list[Box]]) -> dict[str, list[Box]]:
    """The text-to-boxes table, checked as prompts are (normalised, inside the frame)."""
    table: dict[str, list[Box]] = {}
    for text, boxes in entries.items():
        try:
            checked = ClassPrompt(label="text", boxes=boxes).boxes
        except ValidationError as exc:
            raise ValueError(f"boxes for {text!r}: {exc.errors()[0]['msg']}") from exc
        table.setdefault(text_key(text), []).extend(checked)
    return table
