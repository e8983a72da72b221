"""Pictures and videos people look at: annotated frames, mask overlays, cutouts, before/after.

Masks may be smaller than the video (segmentation runs on the working copy);
they are scaled up with nearest-neighbour so ids stay ids.
"""

from __future__ import annotations

from collections.abc import Collection, Generator
from pathlib import Path
from typing import cast

import cv2
import numpy as np

from services.errors import InvalidInput
from services.media.compose import pad_even
from services.media.masks import fps_of, lookup_table
from services.media.video import PixelFormat, VideoWriter, read_frames

TINT_ALPHA = 0.45
PANEL_MAX_HEIGHT = 720
_GOLDEN = 0.618033988749895


def _palette() -> np.ndarray:
    """256 BGR colours, id 0 black; neighbouring ids get far-apart hues (golden-ratio steps)."""
    hsv = np.zeros((256, 1, 3), np.uint8)
    hues = (np.arange(256) * _GOLDEN * 180) % 180
    hsv[:, 0, 0] = hues.astype(np.uint8)
    hsv[:, 0, 1] = 220
    hsv[:, 0, 2] = 255
    colours = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[:, 0, :]
    colours[0] = 0
    return colours


PALETTE = _palette()


def id_colour(object_id: int) -> tuple[int, int, int]:
    """The BGR colour an object id is drawn in, everywhere."""
    b, g, r = PALETTE[object_id % 256]
    return int(b), int(g), int(r)


def frame_at(path: Path, index: int, pix_fmt: PixelFormat = "bgr24") -> np.ndarray:
    """One decoded frame; an index past the end is the caller's mistake, said plainly."""
    if index < 0:
        raise InvalidInput(f"frame index {index} is negative", field="frame_index")
    count = 0
    frames = cast(Generator[np.ndarray, None, None], read_frames(path, pix_fmt))
    try:
        for count, image in enumerate(frames, start=1):
            if count == index + 1:
                return image
    finally:
        frames.close()
    raise InvalidInput(
        f"frame index {index} is past the end: the video has {count} frames", field="frame_index"
    )


def fit_mask(ids: np.ndarray, width: int, height: int) -> np.ndarray:
    if ids.shape == (height, width):
        return ids
    return cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)


def draw_label(
    image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int]
) -> None:
    """Text in ``colour`` with a dark outline, readable on any background."""
    scale = max(0.4, min(image.shape[:2]) / 400)
    thick = max(1, round(scale * 1.5))
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(image, text, origin, font, scale, (0, 0, 0), thick + 2 * max(1, thick), cv2.LINE_AA)
    cv2.putText(image, text, origin, font, scale, colour, thick, cv2.LINE_AA)


def annotate(image: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``image`` with each object outlined, boxed and numbered in its own colour."""
    out = image.copy()
    line = max(1, round(min(image.shape[:2]) / 300))
    present = np.flatnonzero(np.bincount(ids.ravel(), minlength=256)[1:]) + 1
    for object_id in present:
        colour = id_colour(int(object_id))
        region = (ids == object_id).view(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, line + 1, cv2.LINE_AA)
        x, y, w, h = cv2.boundingRect(region)
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), colour, line)
        text_y = y - 4 * line if y > 24 * line else y + h + 16 * line
        draw_label(out, str(object_id), (x, min(text_y, image.shape[0] - 2)), colour)
    return out


def preview_png(video: Path, id_mask: Path, frame_index: int, out: Path) -> Path:
    """The annotation frame with every object outlined, boxed and numbered."""
    image = frame_at(video, frame_index)
    ids = fit_mask(frame_at(id_mask, frame_index, "gray"), image.shape[1], image.shape[0])
    _write_png(out, annotate(image, ids))
    return out


def tint(image: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Objects washed in their colours at ``TINT_ALPHA``, with a solid outline."""
    colours = PALETTE[ids]
    inside = (ids > 0)[..., None]
    washed = cv2.addWeighted(image, 1 - TINT_ALPHA, colours, TINT_ALPHA, 0)
    out = np.where(inside, washed, image)
    kernel = np.ones((3, 3), np.uint8)
    grown = cv2.dilate(ids, kernel)
    edge = (grown != cv2.erode(ids, kernel))[..., None]
    return np.where(edge, PALETTE[grown], out)


def overlay_video(video: Path, id_mask: Path, out: Path) -> Path:
    """An MP4 of the video with the mask tinted over it, one colour per object id."""
    writer: VideoWriter | None = None
    try:
        for image, ids in zip(read_frames(video), read_frames(id_mask, "gray"), strict=False):
            height, width = image.shape[:2]
            if writer is None:
                writer = VideoWriter(out, width + width % 2, height + height % 2, fps_of(video))
            writer.write(pad_even(tint(image, fit_mask(ids, width, height))))
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise InvalidInput("the video has no frames", field="video")
    return out


def cutout(
    video: Path, id_mask: Path, ids: Collection[int], out_mp4: Path, out_webm: Path
) -> tuple[Path, Path]:
    """The chosen objects alone: on black (H.264 MP4) and with alpha (VP9 WebM, yuva420p)."""
    lut = lookup_table(ids)
    fps = fps_of(video)
    black: VideoWriter | None = None
    clear: VideoWriter | None = None
    try:
        for image, id_frame in zip(read_frames(video), read_frames(id_mask, "gray"), strict=False):
            height, width = image.shape[:2]
            if black is None or clear is None:
                black = VideoWriter(out_mp4, width + width % 2, height + height % 2, fps)
                clear = VideoWriter(out_webm, width, height, fps, codec="libvpx-vp9")
            alpha = fit_mask(cv2.LUT(id_frame, lut), width, height)
            black.write(pad_even(cv2.bitwise_and(image, image, mask=alpha)))
            clear.write(np.dstack([image, alpha]))
    finally:
        for writer in (black, clear):
            if writer is not None:
                writer.close()
    if black is None:
        raise InvalidInput("the video has no frames", field="video")
    return out_mp4, out_webm


def before_after_png(
    original: Path, result: Path, frame_index: int, out: Path, *, mask: Path | None = None
) -> Path:
    """Side by side, labelled "before" and "after"; the mask, if given, outlined on "before"."""
    before = frame_at(original, frame_index).copy()
    height, width = before.shape[:2]
    after = cv2.resize(frame_at(result, frame_index), (width, height), interpolation=cv2.INTER_AREA)
    if mask is not None:
        region = fit_mask(frame_at(mask, frame_index, "gray"), width, height)
        contours, _ = cv2.findContours(
            (region > 0).view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(before, contours, -1, (0, 230, 255), max(2, width // 320), cv2.LINE_AA)
    scale = min(1.0, PANEL_MAX_HEIGHT / height)
    panels = []
    for image, label in ((before, "before"), (after, "after")):
        if scale < 1.0:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        draw_label(image, label, (10, 10 + max(20, image.shape[0] // 16)), (255, 255, 255))
        panels.append(image)
    gap = np.full((panels[0].shape[0], 6, 3), 32, np.uint8)
    _write_png(out, np.hstack([panels[0], gap, panels[1]]))
    return out


def _write_png(out: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"could not encode {out.name} as PNG")
    out.write_bytes(data.tobytes())
