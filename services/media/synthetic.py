"""Small clips with a known answer, made on the spot: for the demo, tests and benchmarks.

A textured static background (so a good eraser can restore it from other frames)
and one or more objects moving across it, with their true masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from services.media.video import VideoWriter


@dataclass
class SyntheticClip:
    path: Path
    masks: list[np.ndarray]
    """Per frame, HxW uint8 object ids (0 = background, 1.. = object)."""
    background: np.ndarray
    width: int
    height: int
    fps: float

    def box(self, frame: int, object_id: int = 1) -> tuple[float, float, float, float]:
        """The normalised [x, y, w, h] box around an object on a frame."""
        ys, xs = np.nonzero(self.masks[frame] == object_id)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        return (
            float(x0 / self.width),
            float(y0 / self.height),
            float((x1 - x0) / self.width),
            float((y1 - y0) / self.height),
        )


def textured_background(width: int, height: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            90 + 60 * np.sin(xx / 23.0) + 30 * np.cos(yy / 17.0),
            120 + 50 * np.cos(xx / 31.0 + yy / 29.0),
            100 + 70 * np.sin(yy / 19.0),
        ],
        axis=-1,
    )
    noise = cv2.GaussianBlur(rng.normal(0, 25, (height, width, 3)).astype(np.float32), (0, 0), 1.5)
    image = np.clip(base + noise, 0, 255).astype(np.uint8)
    for _ in range(max(3, width * height // 4000)):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(
            image, (x, y), (x + int(rng.integers(3, 15)), y + int(rng.integers(3, 15))), colour, -1
        )
    return image


def make_clip(
    path: Path | str,
    *,
    width: int = 96,
    height: int = 64,
    frames: int = 16,
    fps: float = 12.0,
    objects: int = 1,
    radius: int | None = None,
    audio: bool = False,
    crf: int = 12,
) -> SyntheticClip:
    """A static textured scene with ``objects`` discs moving left to right."""
    path = Path(path)
    background = textured_background(width, height)
    radius = radius or max(4, min(width, height) // 7)
    colours = [(30, 40, 230), (230, 60, 40), (40, 220, 60), (200, 200, 30)]
    masks: list[np.ndarray] = []
    writer = VideoWriter(path, width, height, fps, crf=crf) if not audio else None
    images: list[np.ndarray] = []
    for t in range(frames):
        image = background.copy()
        mask = np.zeros((height, width), np.uint8)
        for k in range(objects):
            lane = (k + 1) * height // (objects + 1)
            span = width - 4 * radius
            x = 2 * radius + int(span * t / max(1, frames - 1))
            if k % 2:
                x = width - x
            cv2.circle(image, (x, lane), radius, colours[k % len(colours)], -1)
            cv2.circle(
                image,
                (x - radius // 3, lane - radius // 3),
                max(1, radius // 3),
                (250, 250, 250),
                -1,
            )
            cv2.circle(mask, (x, lane), radius, k + 1, -1)
        masks.append(mask)
        if writer:
            writer.write(image)
        else:
            images.append(image)
    if writer:
        writer.close()
    else:
        _write_with_audio(path, images, fps, crf)
    return SyntheticClip(path, masks, background, width, height, fps)


def make_clip_with(
    path: Path | str,
    boxes: list[tuple[float, float, float, float]],
    *,
    width: int = 200,
    height: int = 120,
    frames: int = 24,
    fps: float = 12.0,
    step: float = 0.01,
    crf: int = 12,
) -> SyntheticClip:
    """A static textured scene with one ellipse per box: on frame 0 each fills its box
    (normalised [x, y, w, h]), then moves right by ``step`` of the width per frame."""
    path = Path(path)
    background = textured_background(width, height)
    colours = [(30, 40, 230), (230, 60, 40), (40, 220, 60), (200, 200, 30)]
    masks: list[np.ndarray] = []
    with VideoWriter(path, width, height, fps, crf=crf) as writer:
        for t in range(frames):
            image = background.copy()
            mask = np.zeros((height, width), np.uint8)
            for k, (x, y, w, h) in enumerate(boxes):
                centre = (round((x + w / 2 + step * t) * width), round((y + h / 2) * height))
                axes = (max(1, round(w * width / 2)), max(1, round(h * height / 2)))
                colour = colours[k % len(colours)]
                cv2.ellipse(image, centre, axes, 0, 0, 360, colour, -1)
                highlight = (centre[0] - axes[0] // 3, centre[1] - axes[1] // 3)
                cv2.circle(image, highlight, max(1, min(axes) // 3), (250, 250, 250), -1)
                cv2.ellipse(mask, centre, axes, 0, 0, 360, k + 1, -1)
            masks.append(mask)
            writer.write(image)
    return SyntheticClip(path, masks, background, width, height, fps)


def _write_with_audio(path: Path, images: list[np.ndarray], fps: float, crf: int) -> None:
    height, width = images[0].shape[:2]
    container = av.open(str(path), mode="w")
    video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.options = {"crf": str(crf), "preset": "veryfast"}
    sample_rate = 16000
    audio = container.add_stream("aac", rate=sample_rate)
    audio.layout = "mono"
    total = int(sample_rate * len(images) / fps)
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(total) / sample_rate)).astype(np.float32)
    for image in images:
        for packet in video.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    chunk = 1024
    for start in range(0, total, chunk):
        samples = tone[start : start + chunk].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        for packet in audio.encode(frame):
            container.mux(packet)
    for packet in audio.encode():
        container.mux(packet)
    container.close()


CROSSING_COLOURS = ((40, 60, 230), (230, 60, 40))
"""Red and blue (BGR), flat: the stand-in's ``--text-color`` finds them."""


def _crossing_x(k: int, t: float, width: int, seconds: float, radius: int) -> float:
    """Object 1 crosses left to right over the whole clip; object 2 goes right to left,
    leaves the frame at about 40 % of the clip and comes back from the left at 60 %."""
    if k == 0:
        return radius + (width - 2 * radius) * t / seconds
    leave, back = 0.4 * seconds, 0.6 * seconds
    speed = (width + 2 * radius) / leave
    if t < leave:
        return width + radius - speed * t - radius
    if t < back:
        return -10.0 * radius
    return -radius + speed * (t - back)


def make_crossing_clip(
    path: Path | str,
    *,
    seconds: float = 20.0,
    fps: float = 8.0,
    width: int = 160,
    height: int = 90,
    crf: int = 12,
) -> SyntheticClip:
    """A long clip for windowed jobs: two flat discs (``CROSSING_COLOURS``) on a
    desaturated textured scene, crossing every window boundary; object 2 leaves the
    frame and comes back. ``masks`` hold ids 1 and 2."""
    path = Path(path)
    texture = textured_background(width, height).astype(np.float32)
    gray = texture.mean(axis=2, keepdims=True)
    background = np.clip(0.3 * texture + 0.7 * gray, 0, 255).astype(np.uint8)
    radius = max(4, height // 9)
    masks: list[np.ndarray] = []
    with VideoWriter(path, width, height, fps, crf=crf) as writer:
        for index in range(round(seconds * fps)):
            t = index / fps
            image = background.copy()
            mask = np.zeros((height, width), np.uint8)
            for k, colour in enumerate(CROSSING_COLOURS):
                centre = (round(_crossing_x(k, t, width, seconds, radius)), (k + 1) * height // 3)
                cv2.circle(image, centre, radius, colour, -1)
                cv2.circle(mask, centre, radius, k + 1, -1)
            masks.append(mask)
            writer.write(image)
    return SyntheticClip(path, masks, background, width, height, fps)
