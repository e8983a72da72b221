"""Request bodies that cost the API the most it accepts to parse."""

from __future__ import annotations

import json

COORDINATE = 0.1234567890123456
"""A coordinate with every digit a float keeps: the longest a number gets in a spec."""


def largest_spec(limit: int, *, video_url: str = "http://10.0.0.1/v.mp4") -> bytes:
    """A valid spec of at most ``limit`` bytes with as many numbers as fit: 16 classes
    (the most a spec takes) of 255 boxes (the most ids a class has), then points.

    Its ``video_url`` is refused by the network policy only after the whole spec was
    parsed and validated, so sending it costs the API a full parse and queues nothing.
    """
    f = COORDINATE
    classes: list[dict[str, object]] = [
        {"label": f"class-{i}", "boxes": [[f / 2, f / 2, f, f]] * 255, "points": [],
         "point_labels": []}
        for i in range(16)
    ]  # fmt: skip
    spec = {"classes": classes, "video_url": video_url}
    per_point = len(json.dumps([f, f])) + len(", ") + len(", 1")
    room = (limit - len(json.dumps(spec))) // per_point
    for index in range(max(0, room)):
        prompt = classes[index % 16]
        prompt["points"].append([f, f])  # type: ignore[attr-defined]
        prompt["point_labels"].append(1)  # type: ignore[attr-defined]
    body = json.dumps(spec).encode()
    while len(body) > limit:
        classes[0]["points"].pop()  # type: ignore[attr-defined]
        classes[0]["point_labels"].pop()  # type: ignore[attr-defined]
        body = json.dumps(spec).encode()
    return body
