"""The SVOR API client: submit a task, poll it to the end, download its result.

It owns every retry (429/502/503/504, refused connections, timeouts) and,
given an ``UpstreamLimiter``, waits for the limit shared by all workers before
each call to the API's origin and passes an upstream's ``Retry-After`` on to
every worker through it.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from services.engines.base import Progress, no_progress
from services.engines.svor.ratelimit import Lease, LimiterWaitTooLong, UpstreamLimiter
from services.errors import (
    UpstreamAuth,
    UpstreamBadRequest,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnavailable,
)

API_ROOT = "/customize/xiaomi-ev/video_obj_removal/customize/v1/videos"
SEG_PATH = f"{API_ROOT}/sam3_prompt_seg"
ERASE_PATH = f"{API_ROOT}/mieraser"
RETRIED_STATUS = frozenset({429, 502, 503, 504})
JSON_MAX_BYTES = 4 * 1024 * 1024
DOWNLOAD_MAX_BYTES = 1024 * 1024 * 1024
POLL_FIRST_S = 0.25
POLL_GROWTH = 1.5
POLL_MAX_S = 5.0
POLL_DUE_S = 0.03
POLL_DUE_SHARE = 0.015
"""Near a task's due time the first interval is this share of it, and at least ``POLL_DUE_S``."""
POLL_DUE_GROWTH = 1.25
_TIMEOUT_CAUSES = {httpx.ConnectTimeout: "connect", httpx.ReadTimeout: "read_timeout"}


@dataclass(frozen=True)
class SvorPrompt:
    """A prompt as SVOR defines it: coordinates normalised to 0~1 of the frame."""

    frame_index: int = 0
    text: str | None = None
    remove_prompt: str | None = None
    points: list[tuple[float, float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    """[x, y, w, h], top-left corner."""

    def form(self) -> dict[str, str]:
        """The form fields of ``sam3_prompt_seg``: coordinates and labels as JSON lists."""
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


class PollSchedule:
    """When to look at a task again: soon after it ends, seldom before.

    With nothing known, the first look comes after ``POLL_FIRST_S`` and the
    intervals grow by ``POLL_GROWTH`` up to ``POLL_MAX_S``. Once the last task
    of the same kind was seen running ``due_s`` seconds after it started, the
    intervals near that time start at ``step`` (1.5% of it, at least
    ``POLL_DUE_S``) and grow by ``POLL_DUE_GROWTH``, and the first look comes
    two steps before it: a task as long as the last is noticed within a step or
    two, with three or four looks in all, and one that runs longer is looked at
    less and less often.
    """

    def __init__(self, due_s: float | None) -> None:
        if due_s is None:
            self.first, self.delay, self.growth = None, POLL_FIRST_S, POLL_GROWTH
        else:
            step = max(POLL_DUE_S, POLL_DUE_SHARE * due_s)
            self.first, self.delay, self.growth = max(0.0, due_s - 2 * step), step, POLL_DUE_GROWTH

    def next_delay(self, elapsed: float) -> float:
        if self.first is not None and elapsed < self.first:
            return self.first - elapsed
        delay = self.delay
        self.delay = min(POLL_MAX_S, self.delay * self.growth)
        return delay


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
    With a ``limiter``, every request to the API's origin first waits for the
    limit shared by all workers (with this client's ``sleep``, so a fake clock
    makes it free), and a 429's ``Retry-After`` pauses every worker, not only
    this one. ``stats`` counts requests, retries by cause and time spent
    waiting, for tests and benchmarks.
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
        limiter: UpstreamLimiter | None = None,
        observe: Callable[[str, str], None] | None = None,
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
        self.limiter = limiter
        self.observe = observe or (lambda kind, status: None)
        self.stats: dict[str, Any] = {
            "requests": 0,
            "retries": {},
            "slept_s": 0.0,
            "limiter_wait_s": 0.0,
        }
        self.due_s: dict[str, float] = {}
        """Per endpoint, how long its last task was seen running: where polling starts."""

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
        schedule = PollSchedule(self.due_s.get(path))
        running_for = 0.0
        malformed = 0
        status = "unknown"
        while True:
            elapsed = self.clock() - start
            remaining = max(0.0, self.poll_deadline_s - elapsed)
            self._sleep(min(schedule.next_delay(elapsed), remaining))
            looked = self.clock() - start
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
                    self.due_s[path] = running_for
                    return self._completed(task_id, body)
                if status in {"failed", "error"}:
                    reason = body.get("error_message") or _message(reply.content)
                    raise UpstreamFailed(f"SVOR task {task_id} failed: {reason}")
                running_for = looked
            elapsed = self.clock() - start
            progress(min(0.95, elapsed / (elapsed + 20.0)))
            if elapsed >= self.poll_deadline_s:
                raise UpstreamTimeout(
                    f"SVOR task {task_id} did not finish within {self.poll_deadline_s:g} s "
                    f"(last status: {status})"
                )

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
        ours = _same_origin(url, self.base_url)
        if self.api_key and ours:
            headers["Authorization"] = f"Bearer {self.api_key}"
        limiter = self.limiter if ours else None
        attempt = 0
        while True:
            lease = self._admit(limiter, method, url)
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
                    self.observe("request", str(reply.status))
                    _raise_for_status(reply, url)
                    return reply
                cause = str(reply.status)
                detail = f"HTTP {reply.status}: {_message(reply.content)}"
                retry_after = parse_retry_after(reply.headers.get("retry-after"))
                if reply.status == 429 and retry_after and limiter is not None:
                    limiter.pause(min(retry_after, self.poll_deadline_s))
            finally:
                lease.release()
            self.observe("request", cause)
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

    def _admit(self, limiter: UpstreamLimiter | None, method: str, url: str) -> Lease:
        """Wait for the shared limit, at most ``poll_deadline_s``; the lease to release."""
        if limiter is None:
            return Lease(None, None)
        try:
            lease = limiter.acquire(self._sleep, max_wait_s=self.poll_deadline_s)
        except LimiterWaitTooLong as exc:
            raise UpstreamRateLimited(f"SVOR {method} {urlsplit(url).path}: {exc}") from exc
        self.stats["limiter_wait_s"] += lease.waited_s
        return lease

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)], never below Retry-After."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2**attempt)
        jitter: float = self.rng() * ceiling
        return max(retry_after or 0.0, jitter)

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
        self.observe("retry", cause)

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
