"""The ``svor`` engine: SVOR cloud segmentation (SAM3) and erasure (MiEraser) over HTTPS.

``SvorEngine`` turns the pipeline's files and normalised prompts into calls of
``SvorClient`` (``client.py``, which owns every retry and the shared rate
limit) and SVOR's answers back into vor's formats; ``fit_upload``
(``upload_fit.py``) keeps every upload under the gateway's body limit.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np
import redis

from services import metrics
from services.engines.base import FoundObject, Progress, Segmentation
from services.engines.svor import capabilities
from services.engines.svor.client import (
    DOWNLOAD_MAX_BYTES,
    ERASE_PATH,
    SEG_PATH,
    SvorClient,
    SvorPrompt,
    SvorResult,
    parse_retry_after,
)
from services.engines.svor.ratelimit import UpstreamLimiter
from services.engines.svor.upload_fit import UploadPlan, copy_if_fits, fit_upload
from services.errors import (
    InvalidInput,
    UpstreamAuth,
    UpstreamFailed,
    UpstreamTooLarge,
)
from services.media.masks import dilate
from services.media.video import PixelFormat, VideoWriter, read_frames, video_format, video_size
from services.media.windows import plan_windows
from services.models import ClassPrompt, InputInfo
from services.settings import Settings

__all__ = [
    "DOWNLOAD_MAX_BYTES",
    "ERASE_PATH",
    "SEG_PATH",
    "SvorClient",
    "SvorEngine",
    "SvorPrompt",
    "SvorResult",
    "UploadPlan",
    "engine_from_settings",
    "fit_upload",
    "limiter_from_settings",
    "parse_retry_after",
    "svor_prompt",
]

UPLOAD_OVERHEAD_BYTES = 8 * 1024
MAX_SHRINKS = 3
SHRINK_FACTOR = 0.6


class SvorEngine:
    """The Engine protocol on top of ``SvorClient``.

    The compress stage makes the one copy every call uploads (the source's own
    video stream when it already fits, else one encode), leaving room beside it
    for the erase call's mask; what comes back is kept as it is unless its
    size, length or values must change.
    """

    name = "svor"

    def __init__(
        self,
        client: SvorClient,
        *,
        max_upload_bytes: int = 1000 * 1024,
        max_duration_s: float = 3.0,
    ) -> None:
        self.client = client
        self.max_upload_bytes = max_upload_bytes
        self.capabilities = capabilities(max_duration_s)

    @property
    def _budget(self) -> int:
        return self.max_upload_bytes - UPLOAD_OVERHEAD_BYTES

    def prepare(self, source: Path, info: InputInfo, out_dir: Path, progress: Progress) -> Path:
        """The upload, under the limit with room for a mask; its plan is ``svor_upload.json``.

        A video longer than one upload takes is cut into windows later: its working copy
        gets one upload's budget per window, so that each window fits about as a short
        clip does.
        """
        self.capabilities.check_clip(info)
        out = Path(out_dir) / "svor_upload.mp4"
        windows = plan_windows(info.frames, info.fps, self.capabilities.window_s)
        per_window = info.frames / len(windows)
        mask_room = _mask_size_guess(round(per_window), info.width, info.height)
        target = (self._budget - mask_room) * len(windows)
        plan = copy_if_fits(source, out, target_bytes=target) or fit_upload(
            source, out, target_bytes=target, progress=progress
        )
        plan.save(out.with_suffix(".json"))
        return out

    def segment(
        self, video: Path, prompt: ClassPrompt, out_dir: Path, progress: Progress
    ) -> Segmentation:
        out_dir = Path(out_dir)
        width, height, fps, frames = video_size(video)
        prompt.check_frame_index(frames, field="classes.frame_index")
        stem = f"svor_{prompt.label}"

        def call(upload: Path) -> tuple[SvorResult, tuple[int, int]]:
            up_w, up_h, _, _ = video_size(upload)
            result = self.client.segment(upload, svor_prompt(prompt), _span(progress, 0.05, 0.85))
            return result, (up_w, up_h)

        (result, upload_size) = self._with_shrinking(
            video, self._budget, out_dir / f"{stem}_upload", call
        )
        raw = self.client.download(result.video_url, out_dir / f"{stem}_raw{_suffix(result)}")
        progress(0.9)
        object_boxes = _object_boxes(result.extra_info.get("object_boxes"))
        mask_path = _id_mask(
            raw, out_dir / f"{stem}.mask.mkv", (width, height), fps, frames, sorted(object_boxes)
        )
        up_w, up_h = upload_size
        objects = [
            FoundObject(obj_id, _normalise(box, up_w, up_h))
            for obj_id, box in sorted(object_boxes.items())
        ] or _objects_from_mask(mask_path, prompt.frame_index)
        progress(1.0)
        return Segmentation(mask_path, objects, _suggestion(result.extra_info.get("suggest_obj")))

    def erase(
        self, video: Path, mask: Path, out_dir: Path, progress: Progress, *, dilation: int
    ) -> Path:
        out_dir = Path(out_dir)
        width, height, fps, frames = video_size(video)

        def call(upload: Path) -> tuple[SvorResult, tuple[int, int]]:
            up_w, up_h, _, _ = video_size(upload)
            mask_up = out_dir / "svor_erase_mask.mp4"
            holes = _holes(mask, (width, height), dilation, (up_w, up_h))
            written = _encode_upload_mask(holes, mask_up, (up_w, up_h), fps)
            if written != frames:
                raise InvalidInput(
                    f"the mask has {written} frames and the video {frames}; they must match",
                    field="mask",
                )
            if upload.stat().st_size + mask_up.stat().st_size > self._budget:
                raise UpstreamTooLarge("video and mask together are over the upload budget")
            return self.client.erase(upload, mask_up, _span(progress, 0.05, 0.85)), (up_w, up_h)

        budget = self._budget - _mask_size_guess(frames, width, height)
        result, _ = self._with_shrinking(video, budget, out_dir / "svor_erase_upload", call)
        raw = self.client.download(result.video_url, out_dir / f"svor_erased_raw{_suffix(result)}")
        progress(0.9)
        out = _conform(raw, out_dir / "svor_erased.mp4", (width, height), fps, frames)
        progress(1.0)
        return out

    def _with_shrinking(
        self,
        video: Path,
        budget: int,
        stem: Path,
        call: Callable[[Path], tuple[SvorResult, tuple[int, int]]],
    ) -> tuple[SvorResult, tuple[int, int]]:
        """``call(upload)``, first fitting ``video`` to ``budget``; on 413, again smaller."""
        upload = video
        if video.stat().st_size > budget:
            upload = stem.with_suffix(".fit.mp4")
            fit_upload(video, upload, target_bytes=budget)
        for shrink in range(MAX_SHRINKS):
            try:
                return call(upload)
            except UpstreamTooLarge:
                smaller = stem.with_suffix(f".shrink{shrink}.mp4")
                target = int(min(budget, upload.stat().st_size) * SHRINK_FACTOR)
                fit_upload(video, smaller, target_bytes=target)
                upload = smaller
        return call(upload)


def svor_prompt(prompt: ClassPrompt) -> SvorPrompt:
    """A ``ClassPrompt`` as SVOR takes it: the same normalised coordinates, since the
    upload is the whole frame, scaled."""
    return SvorPrompt(
        frame_index=prompt.frame_index,
        text=prompt.text,
        remove_prompt=prompt.remove_prompt,
        points=list(prompt.points),
        point_labels=list(prompt.point_labels),
        boxes=list(prompt.boxes),
    )


def _span(progress: Progress, low: float, high: float) -> Progress:
    return lambda f: progress(low + (high - low) * f)


def _suffix(result: SvorResult) -> str:
    suffix = Path(urlsplit(result.video_url).path).suffix.lower()
    return suffix if suffix in {".mp4", ".mkv", ".mov", ".webm", ".avi"} else ".mp4"


def _suggestion(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def _object_boxes(value: Any) -> dict[int, tuple[float, float, float, float]]:
    """``extra_info.object_boxes`` as {id: [x, y, w, h]}, from a dict or a list of objects."""
    items: list[tuple[Any, Any]] = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        for index, entry in enumerate(value, start=1):
            if isinstance(entry, dict):
                key = entry.get("id", entry.get("obj_id", index))
                items.append((key, entry.get("box", entry.get("bbox"))))
            else:
                items.append((index, entry))
    boxes: dict[int, tuple[float, float, float, float]] = {}
    for key, box in items:
        try:
            obj_id = int(key)
            x, y, w, h = (float(v) for v in box)
        except (TypeError, ValueError):
            continue
        if 1 <= obj_id <= 255:
            boxes[obj_id] = (x, y, w, h)
    return boxes


def _normalise(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[float, float, float, float]:
    """An ``object_boxes`` entry (pixels of the uploaded video) as a normalised box.

    The upload is the whole frame scaled, so this is also the box on the
    original. A box the upstream reports past the frame's edge is cut at it.
    """
    x, y, w, h = box
    x0, y0 = min(1.0, max(0.0, x / width)), min(1.0, max(0.0, y / height))
    x1, y1 = min(1.0, max(x0, (x + w) / width)), min(1.0, max(y0, (y + h) / height))
    return (round(x0, 5), round(y0, 5), round(x1 - x0, 5), round(y1 - y0, 5))


def _id_lut(ids: list[int]) -> np.ndarray:
    """Each gray level mapped to the nearest known id (or 0), to undo lossy coding."""
    if not ids:
        return np.arange(256, dtype=np.uint8)
    levels = np.array([0, *ids], dtype=np.int16)
    grays = np.arange(256, dtype=np.int16)[:, None]
    nearest: np.ndarray = levels[np.abs(grays - levels[None, :]).argmin(axis=1)].astype(np.uint8)
    return nearest


def _conformed_frames(
    path: Path, size: tuple[int, int], frames: int, pix_fmt: PixelFormat, interpolation: int
) -> Iterator[np.ndarray]:
    """Frames of an upstream video at ``size``, exactly ``frames`` of them.

    One or two frames more or fewer (an encoder's rounding) are trimmed or the
    last frame repeated; a bigger difference means the upstream got it wrong.
    """
    width, height = size
    count = 0
    last: np.ndarray | None = None
    for image in read_frames(path, pix_fmt):
        if count >= frames:
            count += 1
            continue
        if image.shape[1] != width or image.shape[0] != height:
            image = cv2.resize(image, (width, height), interpolation=interpolation)
        last = image
        count += 1
        yield image
    if last is None or abs(count - frames) > 2:
        raise UpstreamFailed(f"SVOR returned a video of {count} frames for {frames}")
    for _ in range(frames - count):
        yield last


def _id_mask(
    raw: Path, dest: Path, size: tuple[int, int], fps: float, frames: int, ids: list[int]
) -> Path:
    """The upstream's object-id mask as vor keeps masks (gray8 FFV1, the working copy's size
    and length): the downloaded file itself when it is that already, else re-encoded with
    every value taken to the nearest known id (a lossy codec blurs them)."""
    lossless = raw.suffix == ".mkv" and video_format(raw) == ("ffv1", "gray", *size)
    if lossless and video_size(raw)[3] == frames:
        return raw
    lut = _id_lut(ids)
    with VideoWriter(dest, size[0], size[1], fps, codec="ffv1") as writer:
        for image in _conformed_frames(raw, size, frames, "gray", cv2.INTER_NEAREST):
            writer.write(cv2.LUT(image, lut))
    return dest


def _objects_from_mask(mask: Path, frame_index: int) -> list[FoundObject]:
    """Boxes of every id where it is first seen, from the annotation frame on."""
    found: dict[int, tuple[float, float, float, float]] = {}
    for index, image in enumerate(read_frames(mask, "gray")):
        if index < frame_index:
            continue
        height, width = image.shape
        for obj_id in np.unique(image):
            if obj_id == 0 or int(obj_id) in found:
                continue
            ys, xs = np.nonzero(image == obj_id)
            x0, y0 = float(xs.min()), float(ys.min())
            box = (x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0)
            found[int(obj_id)] = _normalise(box, width, height)
    return [FoundObject(i, box) for i, box in sorted(found.items())]


def _holes(
    mask: Path, size: tuple[int, int], dilation: int, upload_size: tuple[int, int]
) -> Iterator[np.ndarray]:
    """The mask's marked region (values above 127) grown by ``dilation`` px at ``size``,
    as 0/255 frames at ``upload_size``: each frame decoded once and handled as an array."""
    width, height = size
    for image in read_frames(mask, "gray"):
        if image.shape != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
        _, hole = cv2.threshold(image, 127, 255, cv2.THRESH_BINARY)
        hole = dilate(hole, dilation)
        if upload_size != size:
            hole = cv2.resize(hole, upload_size, interpolation=cv2.INTER_NEAREST)
        yield hole


def _encode_upload_mask(
    holes: Iterator[np.ndarray], dest: Path, size: tuple[int, int], fps: float
) -> int:
    """The 0/255 mask as lossless gray H.264; frames written.

    Binary masks compress well losslessly; x264's quickest preset with CABAC put
    back writes them at half the CPU of superfast for about a tenth more bytes
    (docs/performance.md, section 7).
    """
    width, height = size
    with VideoWriter(
        dest, width, height, fps, pix_fmt="gray", crf=0, preset="ultrafast", x264_params="cabac=1"
    ) as writer:
        for hole in holes:
            writer.write(hole)
    return writer.frames


def _mask_size_guess(frames: int, width: int, height: int) -> int:
    """Room left for the mask beside the video in one upload: a generous first guess."""
    return min(200 * 1024, 16 * 1024 + frames * (width + height) // 2)


def _conform(raw: Path, dest: Path, size: tuple[int, int], fps: float, frames: int) -> Path:
    """The upstream result as is when it matches ``size`` and ``frames``, else re-encoded."""
    got_w, got_h, _, got_frames = video_size(raw)
    if (got_w, got_h) == size and got_frames == frames:
        return raw
    with VideoWriter(dest, size[0], size[1], fps, crf=16) as writer:
        for image in _conformed_frames(raw, size, frames, "bgr24", cv2.INTER_AREA):
            writer.write(image)
    return dest


# --------------------------------------------------------------------------- wiring


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LEASE_MARGIN_S = 30.0


def limiter_from_settings(settings: Settings, client: redis.Redis) -> UpstreamLimiter | None:
    """The limit on SVOR calls shared by every worker on ``client``'s Redis; None when off.

    A slot's lease is twice the read timeout plus a margin: longer than any
    ordinary call, short enough that a dead worker's slot soon comes back. A
    call that runs longer still (a slow download) may let one more call in.
    """
    if settings.svor_rate_limit_per_s <= 0 and settings.svor_max_concurrency <= 0:
        return None
    origin = urlsplit(settings.svor_base_url)
    return UpstreamLimiter(
        client,
        f"svor:{origin.hostname}:{origin.port or origin.scheme}",
        rate_per_s=settings.svor_rate_limit_per_s,
        burst=settings.svor_rate_burst,
        max_concurrency=settings.svor_max_concurrency,
        lease_s=2 * settings.svor_timeout_s + LEASE_MARGIN_S,
    )


def engine_from_settings(
    settings: Settings, *, redis_client: redis.Redis | None = None
) -> SvorEngine:
    """The svor engine as configured; refuses to start without a key unless on loopback.

    The shared limiter uses ``redis_client`` (the pipeline hands in the job store's
    Redis); without one the calls go unlimited.
    """
    if not settings.svor_api_key and not _is_loopback(settings.svor_base_url):
        raise UpstreamAuth(
            f"the svor engine needs an API key for {settings.svor_base_url}: set SVOR_API_KEY"
        )
    http = httpx.Client(
        timeout=httpx.Timeout(settings.svor_timeout_s, connect=10.0), follow_redirects=True
    )
    client = SvorClient(
        http,
        base_url=settings.svor_base_url,
        api_key=settings.svor_api_key,
        max_retries=settings.svor_max_retries,
        poll_deadline_s=settings.svor_poll_deadline_s,
        limiter=limiter_from_settings(settings, redis_client) if redis_client else None,
        observe=metrics.upstream_observer(redis_client) if redis_client else None,
    )
    return SvorEngine(
        client,
        max_upload_bytes=settings.svor_max_upload_bytes,
        max_duration_s=settings.svor_max_duration_s,
    )
