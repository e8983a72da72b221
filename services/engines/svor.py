"""The ``svor`` engine: SVOR cloud segmentation (SAM3) and erasure (MiEraser) over HTTPS.

Three parts, top to bottom: ``SvorClient`` speaks the SVOR API (submit, poll,
download) and owns every retry; ``fit_upload`` re-encodes a clip until it fits
the gateway's body limit; ``SvorEngine`` turns the pipeline's files and
normalised prompts into SVOR calls and SVOR's answers back into vor's formats.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import cv2
import httpx
import numpy as np

from services.engines.base import FoundObject, Progress, Segmentation, no_progress
from services.errors import (
    InputTooLarge,
    InvalidInput,
    UpstreamAuth,
    UpstreamBadRequest,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnavailable,
)
from services.media import PixelFormat, VideoWriter, open_input, read_frames, video_size
from services.models import ClassPrompt, InputInfo
from services.settings import Settings

API_ROOT = "/customize/xiaomi-ev/video_obj_removal/customize/v1/videos"
SEG_PATH = f"{API_ROOT}/sam3_prompt_seg"
ERASE_PATH = f"{API_ROOT}/mieraser"
RETRIED_STATUS = frozenset({429, 502, 503, 504})
JSON_MAX_BYTES = 4 * 1024 * 1024
DOWNLOAD_MAX_BYTES = 1024 * 1024 * 1024
POLL_FIRST_S = 0.5
POLL_MAX_S = 5.0
POLL_GROWTH = 1.5
_TIMEOUT_CAUSES = {httpx.ConnectTimeout: "connect", httpx.ReadTimeout: "read_timeout"}


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class SvorPrompt:
    """A prompt in SVOR's terms: absolute pixels of the uploaded video."""

    frame_index: int = 0
    text: str | None = None
    remove_prompt: str | None = None
    points: list[tuple[int, int]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    """[x, y, w, h], top-left corner."""

    def form(self) -> dict[str, str]:
        data = {"frame_index": str(self.frame_index)}
        if self.text:
            data["text"] = self.text
        if self.remove_prompt:
            data["remove_prompt"] = self.remove_prompt
        if self.points:
            data["points"] = json.dumps([list(p) for p in self.points])
            data["point_labels"] = json.dumps(self.point_labels or [1] * len(self.points))
        if self.boxes:
            data["bounding_boxes"] = json.dumps([list(b) for b in self.boxes])
            data["bounding_box_labels"] = json.dumps([1] * len(self.boxes))
        return data


@dataclass(frozen=True)
class SvorResult:
    task_id: str
    video_url: str
    extra_info: dict[str, Any]


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: httpx.Headers
    content: bytes


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _message(content: bytes) -> str:
    """The most readable error text in an upstream body."""
    try:
        body = json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace").strip()[:300] or "(empty body)"
    if isinstance(body, dict):
        for key in ("message", "msg", "error_message", "detail", "error"):
            if body.get(key):
                return str(body[key])[:300]
    return str(body)[:300]


def _json(reply: _Reply) -> Any:
    try:
        return json.loads(reply.content)
    except ValueError:
        return None


def _same_origin(a: str, b: str) -> bool:
    x, y = urlsplit(a), urlsplit(b)
    return (x.scheme, x.hostname, x.port) == (y.scheme, y.hostname, y.port)


class SvorClient:
    """The SVOR API: submit a task, poll it to the end, download its video.

    Every HTTP request retries 429/502/503/504, refused connections and timeouts
    with exponential backoff and full jitter, never sooner than ``Retry-After``.
    ``stats`` counts requests and retries by cause, for tests and benchmarks.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        base_url: str,
        api_key: str | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_retries: int = 5,
        poll_deadline_s: float = 600.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/") + "/"
        self.api_key = api_key
        self.clock = clock
        self.sleep = sleep
        self.max_retries = max_retries
        self.poll_deadline_s = poll_deadline_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.rng = rng
        self.stats: dict[str, Any] = {"requests": 0, "retries": {}, "slept_s": 0.0}

    def segment(
        self, video: Path, prompt: SvorPrompt, progress: Progress = no_progress
    ) -> SvorResult:
        """Run SAM3 prompt segmentation; the result URL is the raw object-id mask video."""
        files = {"input_video": (video.name, video.read_bytes(), "video/mp4")}
        task_id = self.submit(SEG_PATH, files, prompt.form())
        return self.wait(SEG_PATH, task_id, progress)

    def erase(self, video: Path, mask: Path, progress: Progress = no_progress) -> SvorResult:
        """Run MiEraser on ``video`` where the 0/255 ``mask`` video is white."""
        files = {
            "input_video": (video.name, video.read_bytes(), "video/mp4"),
            "input_mask": (mask.name, mask.read_bytes(), "video/mp4"),
        }
        task_id = self.submit(ERASE_PATH, files, {})
        return self.wait(ERASE_PATH, task_id, progress)

    def submit(self, path: str, files: dict[str, Any], data: dict[str, str]) -> str:
        reply = self.request("POST", path, files=files, data=data)
        body = _json(reply)
        if not isinstance(body, dict):
            raise UpstreamFailed(f"SVOR answered {path.rsplit('/', 1)[-1]} with malformed JSON")
        if body.get("code", 0) not in (0, "0"):
            raise UpstreamFailed(
                f"SVOR refused the task (code {body.get('code')}): {_message(reply.content)}"
            )
        task_id = body.get("task_id")
        if not task_id:
            raise UpstreamFailed("SVOR accepted the task but sent no task_id")
        return str(task_id)

    def wait(self, path: str, task_id: str, progress: Progress = no_progress) -> SvorResult:
        """Poll ``{path}/status/{task_id}`` until it ends or ``poll_deadline_s`` passes."""
        start = self.clock()
        delay = POLL_FIRST_S
        malformed = 0
        status = "unknown"
        while True:
            reply = self.request("GET", f"{path}/status/{task_id}")
            body = _json(reply)
            if not isinstance(body, dict):
                malformed += 1
                if malformed > self.max_retries:
                    raise UpstreamFailed(
                        f"SVOR's status answers for task {task_id} are not valid JSON "
                        f"({malformed} in a row)"
                    )
                self._count("malformed_json")
            else:
                malformed = 0
                status = str(body.get("status", "unknown")).lower()
                if status in {"completed", "success", "succeeded"}:
                    return self._completed(task_id, body)
                if status in {"failed", "error"}:
                    reason = body.get("error_message") or _message(reply.content)
                    raise UpstreamFailed(f"SVOR task {task_id} failed: {reason}")
            elapsed = self.clock() - start
            progress(min(0.95, elapsed / (elapsed + 20.0)))
            remaining = self.poll_deadline_s - elapsed
            if remaining <= 0:
                raise UpstreamTimeout(
                    f"SVOR task {task_id} did not finish within {self.poll_deadline_s:g} s "
                    f"(last status: {status})"
                )
            self._sleep(min(delay, remaining))
            delay = min(POLL_MAX_S, delay * POLL_GROWTH)

    def download(self, url: str, dest: Path, *, max_bytes: int = DOWNLOAD_MAX_BYTES) -> Path:
        """Fetch a result URL (relative ones resolve against the base URL) to ``dest``."""
        reply = self.request("GET", urljoin(self.base_url, url), max_bytes=max_bytes)
        dest.write_bytes(reply.content)
        return dest

    def request(
        self, method: str, url: str, *, max_bytes: int = JSON_MAX_BYTES, **kwargs: Any
    ) -> _Reply:
        """One call with retries; raises the fitting ``Upstream*`` error when it fails.

        ``url`` is absolute, or an API path appended to the base URL (which may
        carry a path prefix of its own).
        """
        if not urlsplit(url).scheme:
            url = self.base_url + url.lstrip("/")
        headers = dict(kwargs.pop("headers", {}) or {})
        if self.api_key and _same_origin(url, self.base_url):
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempt = 0
        while True:
            self.stats["requests"] += 1
            retry_after: float | None = None
            try:
                reply = self._send(method, url, headers, max_bytes, kwargs)
            except httpx.TimeoutException as exc:
                cause = _TIMEOUT_CAUSES.get(type(exc), "timeout")
                detail = f"{type(exc).__name__} after the client's timeout"
            except httpx.TransportError as exc:
                cause = "connect" if isinstance(exc, httpx.ConnectError) else "transport"
                detail = f"{type(exc).__name__}: {exc}"
            else:
                if reply.status not in RETRIED_STATUS:
                    _raise_for_status(reply, url)
                    return reply
                cause = str(reply.status)
                detail = f"HTTP {reply.status}: {_message(reply.content)}"
                retry_after = parse_retry_after(reply.headers.get("retry-after"))
            if retry_after is not None and retry_after > self.poll_deadline_s:
                detail += f"; it asks to wait {retry_after:g} s"
            elif attempt < self.max_retries:
                self._count(cause)
                self._sleep(self.backoff(attempt, retry_after))
                attempt += 1
                continue
            error = UpstreamRateLimited if cause == "429" else UpstreamUnavailable
            raise error(
                f"SVOR {method} {urlsplit(url).path} still failing after {attempt} retries "
                f"({detail})"
            )

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)], never below Retry-After."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2**attempt)
        return max(retry_after or 0.0, self.rng() * ceiling)

    def _send(
        self, method: str, url: str, headers: dict[str, str], max_bytes: int, kwargs: Any
    ) -> _Reply:
        request = self.http.build_request(method, url, headers=headers, **kwargs)
        response = self.http.send(request, stream=True)
        try:
            chunks: list[bytes] = []
            total = 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise UpstreamFailed(
                        f"SVOR's answer to {urlsplit(url).path} is over {max_bytes} bytes"
                    )
                chunks.append(chunk)
            return _Reply(response.status_code, response.headers, b"".join(chunks))
        finally:
            response.close()

    def _completed(self, task_id: str, body: dict[str, Any]) -> SvorResult:
        url = body.get("video_path")
        if not url or not isinstance(url, str):
            raise UpstreamFailed(f"SVOR task {task_id} completed without a video_path")
        extra = body.get("extra_info")
        return SvorResult(task_id, url, extra if isinstance(extra, dict) else {})

    def _count(self, cause: str) -> None:
        retries = self.stats["retries"]
        retries[cause] = retries.get(cause, 0) + 1

    def _sleep(self, seconds: float) -> None:
        self.stats["slept_s"] += seconds
        self.sleep(seconds)


def _raise_for_status(reply: _Reply, url: str) -> None:
    if reply.status < 400:
        return
    where = urlsplit(url).path.rsplit("/", 1)[-1]
    text = _message(reply.content)
    if reply.status in (401, 403):
        raise UpstreamAuth(
            f"SVOR rejected the API key (HTTP {reply.status}: {text}); check SVOR_API_KEY"
        )
    if reply.status == 413:
        raise UpstreamTooLarge(f"SVOR refused the upload as too large (HTTP 413): {text}")
    if reply.status < 500 and reply.status != 404:
        raise UpstreamBadRequest(f"SVOR refused the {where} request (HTTP {reply.status}): {text}")
    raise UpstreamFailed(f"SVOR {where} answered HTTP {reply.status}: {text}")


# --------------------------------------------------------------------------- upload fitting

CRF_START = 23
CRF_BEST = 18
CRF_SOFT_MAX = 32
CRF_HARD_MAX = 51
MAX_SIDE = 1280
MIN_SIDE = 128
MAX_FIT_ATTEMPTS = 8
FIT_GOAL = 0.85
"""Aim this far under the target, so that one encode usually lands inside it."""
GOOD_ENOUGH = 0.5
"""A fitting encode this close to the target is kept without looking for a lower CRF."""


@dataclass
class UploadPlan:
    """What ``fit_upload`` chose, and every encode it tried on the way."""

    width: int
    height: int
    scale: float
    crf: int
    bytes: int
    target_bytes: int
    source_bytes: int
    frames: int
    attempts: list[dict[str, float]] = field(default_factory=list)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def _encode(
    frames: Iterable[np.ndarray], dest: Path, size: tuple[int, int], fps: float, crf: int
) -> int:
    """Encode ``frames`` as H.264 at ``size``; the number of frames written."""
    written = 0
    with VideoWriter(dest, size[0], size[1], fps, crf=crf, preset="veryfast") as writer:
        for image in frames:
            writer.write(_resized(image, size))
            written += 1
    return written


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _estimate(sample: Path, frames: int) -> float:
    """The bytes a whole clip of ``frames`` would take, from an encode of its first frames.

    The keyframe (large) counts once, the other frames at their mean size, so
    that a short sample does not overstate long clips.
    """
    container = open_input(sample)
    try:
        keys: list[int] = []
        others: list[int] = []
        for packet in container.demux(container.streams.video[0]):
            if packet.size:
                (keys if packet.is_keyframe else others).append(packet.size)
    finally:
        container.close()
    if not others:
        return float(np.mean(keys)) * frames
    return sum(keys) + float(np.mean(others)) * max(0, frames - len(keys))


def _next_crf(sizes: dict[int, int], target: int, max_crf: int, good_enough: float) -> int | None:
    """The next CRF worth encoding at one scale, or None when no better one is left there.

    Size falls roughly exponentially with CRF (halving every ~6), but far from
    evenly for noisy content, so between a CRF that is too big and one that fits,
    the next guess interpolates log(size) between the two measured points.
    """
    goal = FIT_GOAL * target
    fits = [c for c, size in sizes.items() if size <= target]
    if fits:
        c_fit = min(fits)
        s_fit = sizes[c_fit]
        overs = [c for c, size in sizes.items() if size > target and c < c_fit]
        if s_fit >= good_enough * target or c_fit <= CRF_BEST:
            return None
        if not overs:
            guess = c_fit - math.floor(6 * math.log2(goal / s_fit))
            return max(CRF_BEST, min(c_fit - 1, guess))
        c_over = max(overs)
        if c_fit - c_over <= 1:
            return None
        s_over = sizes[c_over]
        share = math.log(s_over / goal) / math.log(s_over / s_fit)
        return min(c_fit - 1, max(c_over + 1, math.ceil(c_over + share * (c_fit - c_over))))
    c_over = max(sizes)
    if c_over >= max_crf:
        return None
    return min(max_crf, c_over + max(1, math.ceil(6 * math.log2(sizes[c_over] / goal))))


class _Fitter:
    """The search behind ``fit_upload``: first on a short sample, then on the whole clip."""

    def __init__(self, source: Path, dest: Path, target: int) -> None:
        self.source, self.dest, self.target = source, dest, target
        self.width, self.height, self.fps, self.frames = video_size(source)
        self.max_scale = min(1.0, MAX_SIDE / max(self.width, self.height))
        self.min_scale = min(self.max_scale, MIN_SIDE / max(self.width, self.height))
        self.sample_frames = min(self.frames, max(6, round(self.fps / 2)))
        self.best: tuple[Path, float, int, int, int] | None = None
        self.attempts: list[dict[str, float]] = []
        self._samples: dict[tuple[int, int], list[np.ndarray]] = {}

    def size_at(self, scale: float) -> tuple[int, int]:
        return _even(self.width * scale), _even(self.height * scale)

    def search(
        self,
        measure: Callable[[float, int], int],
        scale: float,
        crf: int,
        *,
        good_enough: float,
        attempts: int,
    ) -> tuple[float, int]:
        """Walk (scale, crf) until a fitting size is good enough; the best point seen."""
        sizes: dict[int, int] = {}
        found: tuple[float, int] | None = None
        for _ in range(attempts):
            size = sizes[crf] = measure(scale, crf)
            if size <= self.target and (found is None or crf < found[1]):
                found = (scale, crf)
            max_crf = CRF_HARD_MAX if scale <= self.min_scale else CRF_SOFT_MAX
            following = _next_crf(sizes, self.target, max_crf, good_enough)
            if following is not None:
                crf = following
                continue
            if found is not None or scale <= self.min_scale:
                break
            shrink = min(0.9, math.sqrt(FIT_GOAL * self.target / size))
            scale, crf, sizes = max(self.min_scale, scale * shrink), CRF_SOFT_MAX - 2, {}
        return found or (scale, crf)

    def sampled(self, scale: float, crf: int) -> int:
        size = self.size_at(scale)
        if size not in self._samples:
            first = itertools.islice(read_frames(self.source), self.sample_frames)
            self._samples = {size: [_resized(image, size) for image in first]}
        sample = self.dest.with_name(self.dest.stem + ".sample.mp4")
        _encode(self._samples[size], sample, size, self.fps, crf)
        estimate = _estimate(sample, self.frames)
        sample.unlink()
        self.attempts.append({"scale": round(scale, 4), "crf": crf, "estimate": int(estimate)})
        return int(estimate)

    def whole(self, scale: float, crf: int) -> int:
        trial = self.dest.with_name(f"{self.dest.stem}.try{len(self.attempts)}.mp4")
        written = _encode(read_frames(self.source), trial, self.size_at(scale), self.fps, crf)
        size = trial.stat().st_size
        self.attempts.append({"scale": round(scale, 4), "crf": crf, "bytes": size})
        if size <= self.target and (self.best is None or crf < self.best[2]):
            if self.best is not None:
                self.best[0].unlink()
            self.best = (trial, scale, crf, size, written)
        else:
            trial.unlink()
        return size


def fit_upload(
    source: Path, dest: Path, *, target_bytes: int, progress: Progress = no_progress
) -> UploadPlan:
    """Re-encode ``source`` (H.264, no audio, every frame) so that it is at most ``target_bytes``.

    The search runs first on the clip's first half second, whose size predicts
    the whole clip's, and then on the whole clip from the point it found, so a
    clip is usually encoded in full once or twice. While too big, CRF rises up
    to 32, then the picture shrinks (down to a 128 px long side, where CRF may go
    on to 51); a fit that leaves more than half the budget unused makes it look
    for a lower CRF between the measured points.
    """
    fitter = _Fitter(source, dest, target_bytes)
    start = fitter.search(
        fitter.sampled, fitter.max_scale, CRF_START, good_enough=GOOD_ENOUGH, attempts=6
    )
    progress(0.5)
    fitter.search(fitter.whole, *start, good_enough=0.0, attempts=MAX_FIT_ATTEMPTS)
    if fitter.best is None:
        raise InputTooLarge(
            f"the clip cannot be compressed under {target_bytes} bytes for the svor engine, "
            "even at the lowest quality; use a shorter clip or the local engine",
            field="video",
        )
    trial, scale, crf, size, written = fitter.best
    trial.replace(dest)
    width, height = fitter.size_at(scale)
    progress(1.0)
    return UploadPlan(
        width=width,
        height=height,
        scale=round(scale, 4),
        crf=crf,
        bytes=size,
        target_bytes=target_bytes,
        source_bytes=source.stat().st_size,
        frames=written,
        attempts=fitter.attempts,
    )


# --------------------------------------------------------------------------- engine

UPLOAD_OVERHEAD_BYTES = 8 * 1024
MAX_SHRINKS = 3
SHRINK_FACTOR = 0.6


class SvorEngine:
    """The Engine protocol on top of ``SvorClient``."""

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
        self.max_duration_s = max_duration_s

    @property
    def _budget(self) -> int:
        return self.max_upload_bytes - UPLOAD_OVERHEAD_BYTES

    def prepare(self, source: Path, info: InputInfo, out_dir: Path, progress: Progress) -> Path:
        """Compress ``source`` under the upload limit; the plan is saved as ``svor_upload.json``."""
        if info.duration_s > self.max_duration_s + 0.5 / max(info.fps, 1.0):
            raise InputTooLarge(
                f"the svor engine takes clips of at most {self.max_duration_s:g} s; this one "
                f"lasts {info.duration_s:g} s (trim it, or use the local engine)",
                field="video",
            )
        out = Path(out_dir) / "svor_upload.mp4"
        plan = fit_upload(source, out, target_bytes=self._budget, progress=progress)
        plan.save(out.with_suffix(".json"))
        return out

    def segment(
        self, video: Path, prompt: ClassPrompt, out_dir: Path, progress: Progress
    ) -> Segmentation:
        out_dir = Path(out_dir)
        width, height, fps, frames = video_size(video)
        if prompt.frame_index >= frames:
            raise InvalidInput(
                f"frame_index {prompt.frame_index} is past the last frame ({frames - 1})",
                field="classes.frame_index",
            )
        stem = f"svor_{prompt.label}"

        def call(upload: Path) -> tuple[SvorResult, tuple[int, int]]:
            up_w, up_h, _, _ = video_size(upload)
            return self.client.segment(
                upload, svor_prompt(prompt, up_w, up_h), _span(progress, 0.05, 0.85)
            ), (up_w, up_h)

        (result, upload_size) = self._with_shrinking(
            video, self._budget, out_dir / f"{stem}_upload", call
        )
        raw = self.client.download(result.video_url, out_dir / f"{stem}_raw{_suffix(result)}")
        progress(0.9)
        object_boxes = _object_boxes(result.extra_info.get("object_boxes"))
        mask_path = out_dir / f"{stem}.mask.mkv"
        _write_id_mask(raw, mask_path, (width, height), fps, frames, sorted(object_boxes))
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
        holes = _dilated_masks(mask, (width, height), frames, dilation)
        mask_full = out_dir / "svor_erase_mask_full.mkv"
        with VideoWriter(mask_full, width, height, fps, codec="ffv1") as writer:
            for hole in holes:
                writer.write(hole)

        def call(upload: Path) -> tuple[SvorResult, tuple[int, int]]:
            up_w, up_h, _, _ = video_size(upload)
            mask_up = out_dir / "svor_erase_mask.mp4"
            _encode_upload_mask(mask_full, mask_up, (up_w, up_h), fps)
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


def svor_prompt(prompt: ClassPrompt, width: int, height: int) -> SvorPrompt:
    """A normalised ``ClassPrompt`` in absolute pixels of a ``width`` x ``height`` video."""

    def px(value: float, extent: int) -> int:
        return min(extent, max(0, int(round(value * extent))))

    return SvorPrompt(
        frame_index=prompt.frame_index,
        text=prompt.text,
        remove_prompt=prompt.remove_prompt,
        points=[(px(x, width - 1), px(y, height - 1)) for x, y in prompt.points],
        point_labels=list(prompt.point_labels),
        boxes=[
            (px(x, width), px(y, height), max(1, px(w, width)), max(1, px(h, height)))
            for x, y, w, h in prompt.boxes
        ],
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
    return levels[np.abs(grays - levels[None, :]).argmin(axis=1)].astype(np.uint8)


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


def _write_id_mask(
    raw: Path, dest: Path, size: tuple[int, int], fps: float, frames: int, ids: list[int]
) -> None:
    lut = _id_lut(ids)
    with VideoWriter(dest, size[0], size[1], fps, codec="ffv1") as writer:
        for image in _conformed_frames(raw, size, frames, "gray", cv2.INTER_NEAREST):
            writer.write(lut[image])


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


def _dilated_masks(
    mask: Path, size: tuple[int, int], frames: int, dilation: int
) -> list[np.ndarray]:
    """The mask's 255 region grown by ``dilation`` px, as 0/255 frames at ``size``."""
    kernel = (
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilation + 1, 2 * dilation + 1))
        if dilation > 0
        else None
    )
    width, height = size
    out: list[np.ndarray] = []
    for image in read_frames(mask, "gray"):
        if image.shape != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
        binary = np.where(image > 127, 255, 0).astype(np.uint8)
        out.append(cv2.dilate(binary, kernel) if kernel is not None else binary)
    if len(out) != frames:
        raise InvalidInput(
            f"the mask has {len(out)} frames and the video {frames}; they must match",
            field="mask",
        )
    return out


def _encode_upload_mask(mask: Path, dest: Path, size: tuple[int, int], fps: float) -> None:
    """The 0/255 mask as lossless H.264 at the upload's size (binary masks compress well)."""
    width, height = size
    with VideoWriter(dest, width, height, fps, crf=0, preset="veryfast") as writer:
        for image in read_frames(mask, "gray"):
            if image.shape != (height, width):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
            writer.write(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))


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


def engine_from_settings(settings: Settings) -> SvorEngine:
    """The svor engine as configured; refuses to start without a key unless on loopback."""
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
    )
    return SvorEngine(
        client,
        max_upload_bytes=settings.svor_max_upload_bytes,
        max_duration_s=settings.svor_max_duration_s,
    )
