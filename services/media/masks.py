"""Mask videos: picking object ids, merging classes, dilating, and client-supplied masks.

Masks are gray8 FFV1 in MKV, streamed frame by frame. An object-id mask holds
one id per pixel (0 = background); a binary mask holds 0 or 255.
"""

from __future__ import annotations

import functools
import itertools
import shutil
from collections.abc import Collection, Generator, Iterator, Sequence
from pathlib import Path
from typing import cast

import av
import cv2
import numpy as np

from services.errors import InvalidInput, VorError
from services.media.video import VideoWriter, open_input, read_frames

Box = tuple[float, float, float, float]
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
MAX_IMAGE_PIXELS = 64_000_000
THRESHOLD_LUT = np.where(np.arange(256) > 127, 255, 0).astype(np.uint8)


def lookup_table(ids: Collection[int] | None) -> np.ndarray:
    """256 entries: 255 for the chosen ids (None = every non-zero id), else 0."""
    lut = np.zeros(256, np.uint8)
    if ids is None:
        lut[1:] = 255
    else:
        lut[[i for i in ids if 0 < i < 256]] = 255
    return lut


def frame_count(path: Path | str) -> int:
    """Frames in the first video stream, counted from its packets (no decoding)."""
    container = open_input(path)
    try:
        if not container.streams.video:
            raise InvalidInput("the file has no video stream", field="video")
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)
    finally:
        container.close()


def mask_size(path: Path | str) -> tuple[int, int]:
    """(width, height) of a mask video."""
    container = open_input(path)
    try:
        ctx = container.streams.video[0].codec_context
        return int(ctx.width), int(ctx.height)
    finally:
        container.close()


def fps_of(path: Path | str) -> float:
    container = open_input(path)
    try:
        stream = container.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate or 25)
    finally:
        container.close()


def write_mask(
    out: Path, frames: Iterator[np.ndarray], width: int, height: int, fps: float
) -> Path:
    """Write gray8 frames as lossless FFV1; returns ``out``."""
    with VideoWriter(out, width, height, fps, codec="ffv1", pix_fmt="gray") as writer:
        for frame in frames:
            writer.write(frame)
    return out


def select_ids(id_mask: Path, ids: Collection[int] | None, out: Path) -> Path:
    """The mask-convert stage: the chosen object ids become 255, everything else 0."""
    return select_union([(id_mask, ids)], out)


def union(masks: Sequence[Path], out: Path) -> Path:
    """The merge stage: per-pixel max (ffmpeg's ``lighten``) of binary masks of one size."""
    if not masks:
        raise ValueError("union needs at least one mask")
    if len(masks) == 1:
        shutil.copyfile(masks[0], out)
        return out
    return select_union([(m, None) for m in masks], out, binary=True)


def select_union(
    sources: Sequence[tuple[Path, Collection[int] | None]], out: Path, *, binary: bool = False
) -> Path:
    """Mask-convert and merge in one pass: each id mask is decoded once, looked up, and maxed.

    ``sources`` pairs an object-id mask with the ids to keep from it (None = all
    non-zero). With ``binary`` the inputs are already 0/255 and are merged as they are.
    """
    if not sources:
        raise ValueError("select_union needs at least one mask")
    width, height = _same_size([path for path, _ in sources])
    luts = [lookup_table(ids) for _, ids in sources]

    def merged() -> Iterator[np.ndarray]:
        readers = [_frames(path) for path, _ in sources]
        try:
            for count in itertools.count():
                frames = [next(reader, None) for reader in readers]
                present = [f for f in frames if f is not None]
                if not present:
                    return
                if len(present) < len(frames):
                    raise VorError(f"the masks have different frame counts (one ends at {count})")
                picked = (
                    present
                    if binary
                    else [cv2.LUT(f, t) for f, t in zip(present, luts, strict=True)]
                )
                yield functools.reduce(np.maximum, picked)
        finally:
            for reader in readers:
                reader.close()

    return write_mask(out, merged(), width, height, fps_of(sources[0][0]))


def _frames(path: Path) -> Generator[np.ndarray, None, None]:
    """Gray frames, as the generator ``read_frames`` is, so it can be closed early."""
    return cast(Generator[np.ndarray, None, None], read_frames(path, "gray"))


def _same_size(paths: Sequence[Path]) -> tuple[int, int]:
    sizes = {path: mask_size(path) for path in paths}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{p.name} {w}x{h}" for p, (w, h) in sizes.items())
        raise VorError(f"masks of different sizes cannot be merged: {listed}")
    return sizes[paths[0]]


@functools.lru_cache(maxsize=64)
def disc(px: int) -> np.ndarray:
    """The one structuring element of every mask dilation and erosion in vor: a disc
    of radius ``px`` (an ellipse in a ``2px+1`` square), so a mask grows evenly."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Grow the non-zero region by ``px`` pixels; a bool mask comes back bool, a 0/255
    one as it went in."""
    if mask.dtype == bool:
        if px <= 0:
            return mask.astype(bool)
        return cv2.dilate(mask.astype(np.uint8), disc(px)).astype(bool)
    return mask if px <= 0 else cv2.dilate(mask, disc(px))


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    """Shrink the non-zero region by ``px`` pixels (the inverse of ``dilate``)."""
    if mask.dtype == bool:
        if px <= 0:
            return mask.astype(bool)
        return cv2.erode(mask.astype(np.uint8), disc(px)).astype(bool)
    return mask if px <= 0 else cv2.erode(mask, disc(px))


def dilate_video(mask: Path, px: int, out: Path) -> Path:
    """A binary mask video grown by ``px`` pixels on every frame."""
    width, height = mask_size(mask)
    frames = (dilate(frame, px) for frame in read_frames(mask, "gray"))
    return write_mask(out, frames, width, height, fps_of(mask))


def ids_present(id_mask: Path) -> dict[int, Box]:
    """Every object id in the mask, with its normalised [x, y, w, h] box where first seen."""
    found: dict[int, Box] = {}
    for frame in read_frames(id_mask, "gray"):
        height, width = frame.shape
        counts = np.bincount(frame.ravel(), minlength=256)
        for object_id in np.flatnonzero(counts[1:]) + 1:
            if int(object_id) in found:
                continue
            x, y, w, h = cv2.boundingRect((frame == object_id).view(np.uint8))
            found[int(object_id)] = (x / width, y / height, w / width, h / height)
    return dict(sorted(found.items()))


def load_user_mask(
    path: Path,
    *,
    frames: int,
    width: int,
    height: int,
    targets: Collection[int] | None,
    out: Path,
    fps: float = 25.0,
) -> Path:
    """A client's own mask as a binary 0/255 FFV1 video of ``frames`` frames at width x height.

    The mask is a video with one frame per video frame or one PNG/JPEG used for
    every frame. Without ``targets`` values above 127 count as marked (lossy
    codecs blur 255); with ``targets`` the pixel values are object ids.
    """
    lut = lookup_table(targets) if targets is not None else THRESHOLD_LUT
    with path.open("rb") as handle:
        head = handle.read(24)
    if not head:
        raise InvalidInput("the mask file is empty (0 bytes)", field="mask")
    source = (
        _repeat(_fit(_read_image(path, head), width, height), frames)
        if head.startswith(IMAGE_MAGIC)
        else _mask_video_frames(path, frames)
    )
    seen = np.zeros(256, bool)
    marked = False

    def binary() -> Iterator[np.ndarray]:
        nonlocal marked
        count = 0
        for frame in source:
            count += 1
            if frame.shape != (height, width):
                frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_NEAREST)
            result = cv2.LUT(frame, lut)
            if not marked:
                marked = bool(result.any())
                seen[np.bincount(frame.ravel(), minlength=256) > 0] = True
            yield result
        if count != frames:
            raise InvalidInput(
                f"only {count} of the mask's {frames} frames could be decoded", field="mask"
            )

    try:
        write_mask(out, binary(), width, height, fps)
    except av.FFmpegError as exc:
        out.unlink(missing_ok=True)
        raise InvalidInput("the mask video could not be decoded", field="mask") from exc
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    if not marked:
        out.unlink(missing_ok=True)
        raise InvalidInput(_empty_message(np.flatnonzero(seen), targets), field="mask")
    return out


def _empty_message(values: np.ndarray, targets: Collection[int] | None) -> str:
    base = "the mask marks nothing to remove"
    nonzero = [int(v) for v in values if v]
    if not nonzero:
        return f"{base}: every pixel is 0 (paint the region to remove white, 255)"
    if targets is not None:
        return f"{base}: it holds the values {nonzero[:16]}, none of the targets {sorted(targets)}"
    return (
        f"{base}: its brightest value is {max(nonzero)}; mark the region with 255, or, if the "
        "pixel values are object ids, name the ids in targets"
    )


def _repeat(image: np.ndarray, frames: int) -> Iterator[np.ndarray]:
    for _ in range(frames):
        yield image


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)


def _read_image(path: Path, head: bytes) -> np.ndarray:
    """One PNG/JPEG as gray8: the brightest colour channel, transparent pixels as 0."""
    too_large = InvalidInput(
        f"the mask image has more than {MAX_IMAGE_PIXELS} pixels", field="mask"
    )
    # PNG's IHDR gives the size before a decompression bomb is inflated.
    if head.startswith(IMAGE_MAGIC[0]) and _png_pixels(head) > MAX_IMAGE_PIXELS:
        raise too_large
    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise InvalidInput("the mask image could not be decoded (send a PNG or JPEG)", field="mask")
    if image.shape[0] * image.shape[1] > MAX_IMAGE_PIXELS:
        raise too_large
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    if image.ndim == 2:
        return image
    gray = image[..., :3].max(axis=2)
    if image.shape[2] == 4:
        gray[image[..., 3] == 0] = 0
    return np.ascontiguousarray(gray)


def _png_pixels(head: bytes) -> int:
    return int.from_bytes(head[16:20]) * int.from_bytes(head[20:24])


def _mask_video_frames(path: Path, expected: int) -> Iterator[np.ndarray]:
    try:
        count = frame_count(path)
    except InvalidInput as exc:
        raise InvalidInput(
            "the mask is neither a PNG/JPEG image nor a readable video", field="mask"
        ) from exc
    if count != expected:
        raise InvalidInput(
            f"the mask has {count} frames; the video has {expected}: send one mask frame per "
            "video frame, or a single image",
            field="mask",
        )
    return read_frames(path, "gray")
