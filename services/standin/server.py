"""An SVOR-compatible HTTP server backed by the local engine, with fault injection.

``vor svor-server`` runs it, so that the svor engine (and anyone integrating
with SVOR) can be exercised without the cloud: the same endpoints, field names,
coordinates (``points`` and ``bounding_boxes`` normalised to 0~1 as JSON lists,
``object_boxes`` back in pixels of the upload), status codes (400 请求参数错误
saying what is wrong) and task life cycle, plus faults on demand (429 bursts and rate
limits with ``Retry-After``, 502/504, latency, hung requests, malformed JSON,
tasks that fail or never finish). Faults are set at start and replaced at
runtime with ``POST /_faults``; ``GET /_stats`` counts requests by endpoint and
status code, and the size of every upload.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import math
import random
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import types
import typing
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import uvicorn
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.engines.base import Progress, Segmentation, no_progress
from services.engines.svor.client import ERASE_PATH, SEG_PATH
from services.errors import InputTooLarge, InvalidInput, VorError
from services.media.video import VideoWriter, probe, read_frames
from services.models import ClassPrompt, InputInfo

DEFAULT_MAX_BODY_BYTES = 1000 * 1024
FILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
JSON_ENDPOINTS = frozenset(
    {"sam3_prompt_seg", "sam3_prompt_seg/status", "mieraser", "mieraser/status"}
)
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
BAD_REQUEST = "请求参数错误"
BOX_FIELDS = ("x", "y", "w", "h")
BOX_TASK_THREADS = 8
"""The boxes engine costs next to nothing, so its tasks end side by side, as on the cloud."""
Box = tuple[float, float, float, float]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class SegmentErase(Protocol):
    """The part of the Engine protocol this server needs."""

    def segment(
        self, video: Path, prompt: ClassPrompt, out_dir: Path, progress: Progress
    ) -> Segmentation: ...

    def erase(
        self, video: Path, mask: Path, out_dir: Path, progress: Progress, *, dilation: int
    ) -> Path: ...


class Faults(BaseModel):
    """What to break. Counters (``burst_429``, ``fail_502``, ...) are used up one per request."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    rate_429: float = Field(
        default=0.0, ge=0, le=1, description="share of requests answered 429, at random"
    )
    burst_429: int = Field(default=0, ge=0, description="answer the next N requests with 429")
    retry_after: float | None = Field(
        default=None, ge=0, description="Retry-After seconds sent with a 429"
    )
    fail_502: int = Field(default=0, ge=0, description="answer the next N requests with 502")
    fail_504: int = Field(default=0, ge=0, description="answer the next N requests with 504")
    latency_s: float = Field(default=0.0, ge=0, description="added before answering every request")
    task_latency_s: float = Field(default=0.0, ge=0, description="how long each task stays running")
    hang_s: float = Field(
        default=0.0, ge=0, description="hang this long before answering (read timeouts)"
    )
    hang_requests: int = Field(default=1, ge=0, description="how many requests hang_s applies to")
    never_complete: bool = Field(default=False, description="new tasks stay running forever")
    malformed_json: int = Field(
        default=0, ge=0, description="answer the next N JSON requests with junk"
    )
    fail_status: int = Field(default=0, ge=0, description="the next N tasks end failed")
    rate_limit_per_s: float = Field(
        default=0.0, ge=0, description="token bucket: more requests per second get 429 (0 = off)"
    )
    only: str | None = Field(
        default=None,
        description="counted faults hit only this endpoint: sam3_prompt_seg, "
        "sam3_prompt_seg/status, mieraser, mieraser/status or files",
    )
    max_body_bytes: int | None = Field(
        default=None, gt=0, description="request bodies over this get 413 (default 1000 KB)"
    )
    seed: int | None = Field(default=None, description="seed for rate_429's dice")


@dataclass
class _Task:
    id: str
    kind: str
    accepted_at: float = field(default_factory=time.monotonic)
    status: str = "queued"
    video_path: str | None = None
    extra_info: dict[str, Any] | None = None
    error_message: str | None = None

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": 0, "task_id": self.id, "status": self.status}
        if self.status == "completed":
            body["video_path"] = self.video_path
            body["extra_info"] = self.extra_info or {}
        if self.status == "failed":
            body["error_message"] = self.error_message
        return body


class _State:
    """Faults, counters and tasks, shared by the event loop and the task thread."""

    def __init__(
        self,
        engine: SegmentErase | None,
        faults: Faults,
        *,
        api_key: str | None,
        work_dir: Path,
        max_body_bytes: int,
        max_duration_s: float,
        task_threads: int = 1,
    ) -> None:
        self._engine = engine
        self.api_key = api_key
        self.work_dir = work_dir
        self.files_dir = work_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.default_max_body = max_body_bytes
        self.max_duration_s = max_duration_s
        self.lock = threading.Lock()
        self.faults = faults
        self.tasks: dict[str, _Task] = {}
        self.texts: dict[str, list[Box]] = {}
        self.executor = ThreadPoolExecutor(task_threads, thread_name_prefix="svor-task")
        self.set_faults(faults)
        self.reset_stats()

    @property
    def engine(self) -> SegmentErase:
        with self.lock:
            if self._engine is None:
                from services.engines.local.engine import LocalEngine

                self._engine = LocalEngine()
            return self._engine

    @property
    def max_body_bytes(self) -> int:
        return self.faults.max_body_bytes or self.default_max_body

    def set_faults(self, faults: Faults) -> None:
        with self.lock:
            self.faults = faults.model_copy()
            self.rng = random.Random(faults.seed)
            self.tokens = max(1.0, faults.rate_limit_per_s)
            self.tokens_at = time.monotonic()

    def reset_stats(self) -> None:
        with self.lock:
            self.stats: dict[str, Any] = {
                "requests": {},
                "uploads": [],
                "tasks": 0,
                "task_seconds": [],
            }

    def take(self, counter: str, endpoint: str) -> bool:
        """Use up one of a counted fault, if any is left and it applies to ``endpoint``."""
        with self.lock:
            left = getattr(self.faults, counter)
            if left <= 0 or (self.faults.only and self.faults.only != endpoint):
                return False
            setattr(self.faults, counter, left - 1)
            return True

    def dice_429(self) -> bool:
        with self.lock:
            return self.faults.rate_429 > 0 and self.rng.random() < self.faults.rate_429

    def throttle(self) -> float | None:
        """Token bucket; None when the request may pass, else the seconds until it could."""
        with self.lock:
            rate = self.faults.rate_limit_per_s
            if rate <= 0:
                return None
            now = time.monotonic()
            self.tokens = min(max(1.0, rate), self.tokens + (now - self.tokens_at) * rate)
            self.tokens_at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return None
            return (1 - self.tokens) / rate

    def count(self, endpoint: str, status: int) -> None:
        with self.lock:
            by_status = self.stats["requests"].setdefault(endpoint, {})
            by_status[str(status)] = by_status.get(str(status), 0) + 1

    def record_task(self, task: _Task) -> None:
        """How long a task took from its acceptance to its end: the upstream's floor."""
        seconds = round(time.monotonic() - task.accepted_at, 4)
        with self.lock:
            self.stats["task_seconds"].append(
                {"endpoint": task.kind, "status": task.status, "seconds": seconds}
            )

    def boxes_named(self, text: str) -> list[Box] | None:
        with self.lock:
            return self.texts.get(_text_key(text))

    def record_upload(self, endpoint: str, size: int) -> None:
        with self.lock:
            self.stats["uploads"].append({"endpoint": endpoint, "bytes": size})

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            copy: dict[str, Any] = json.loads(json.dumps(self.stats))
            return copy


def _endpoint(path: str) -> str:
    for base, name in ((SEG_PATH, "sam3_prompt_seg"), (ERASE_PATH, "mieraser")):
        if path == base:
            return name
        if path.startswith(base + "/status/"):
            return f"{name}/status"
    return "files" if path.startswith("/files/") else "other"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status, headers=headers)


def _seconds(value: float) -> str:
    return str(max(1, math.ceil(value))) if value > 0 else "0"


class _Gate:
    """ASGI middleware in front of the SVOR routes: body limit, auth, faults, counters.

    The body is read in full first (SVOR bodies are about 1 MB), so a 413 is
    answered after the upload like a real gateway, and the route reads it again.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], state: _State):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/_") or _endpoint(path) == "other":
            await self.app(scope, receive, send)
            return
        endpoint = _endpoint(path)
        answered = {"status": 500}

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = message["status"]
            await send(message)

        try:
            body, size = await _read_body(receive, self.state.max_body_bytes)
            if scope["method"] == "POST":
                self.state.record_upload(endpoint, size)
            refusal = await self._refusal(scope, endpoint, size)
            if refusal is not None:
                await refusal(scope, receive, tracked)
                return
            await self.app(scope, _replay(body, receive), tracked)
        finally:
            self.state.count(endpoint, answered["status"])

    async def _refusal(self, scope: Scope, endpoint: str, size: int) -> Response | None:
        state, faults = self.state, self.state.faults
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        if faults.hang_s and state.take("hang_requests", endpoint):
            await asyncio.sleep(faults.hang_s)
        if size > state.max_body_bytes:
            return _error(413, f"request body over {state.max_body_bytes} bytes")
        if state.api_key and endpoint != "files":
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not auth.startswith("Bearer "):
                return _error(401, "missing Bearer token")
            given = auth.removeprefix("Bearer ").strip().encode()
            if not hmac.compare_digest(given, state.api_key.encode()):
                return _error(403, "invalid API key")
        wait = state.throttle()
        if wait is not None:
            return _error(429, "rate limit exceeded", {"Retry-After": _seconds(wait)})
        if state.dice_429() or state.take("burst_429", endpoint):
            headers = (
                {} if faults.retry_after is None else {"Retry-After": f"{faults.retry_after:g}"}
            )
            return _error(429, "too many requests (injected)", headers)
        if state.take("fail_502", endpoint):
            return _error(502, "bad gateway (injected)")
        if state.take("fail_504", endpoint):
            return _error(504, "gateway timeout (injected)")
        if endpoint in JSON_ENDPOINTS and state.take("malformed_json", endpoint):
            return Response('{"code": 0, "task_id": "', media_type="application/json")
        return None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, int]:
    """The whole request body (kept up to ``limit`` bytes, the rest drained) and its size."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        if not message.get("more_body") or size > DRAIN_LIMIT_BYTES:
            break
    return b"".join(chunks), size


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


# --------------------------------------------------------------------------- SVOR semantics


class _BadRequest(Exception):
    """What SVOR answers with 400 请求参数错误; the message says what is wrong."""


def _bad_request(message: str) -> JSONResponse:
    return _error(400, f"{BAD_REQUEST}: {message}")


def _json_list(value: str | None, field: str) -> list[Any] | None:
    """A form field that holds a JSON list; None when it is absent or empty."""
    if value is None or not value.strip():
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise _BadRequest(f"{field} is not valid JSON: {value[:80]!r}") from exc
    if not isinstance(parsed, list):
        raise _BadRequest(f"{field} must be a JSON list, not {value[:80]!r}")
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
            raise _BadRequest(f"{where} must be [{', '.join(names)}], not {shown}")
        if not all(_is_number(v) for v in item):
            raise _BadRequest(f"{where} = {shown}: every value must be a number")
        for name, value in zip(names, item, strict=True):
            if not 0.0 <= value <= 1.0:
                raise _BadRequest(
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
        raise _BadRequest(f"{field} must hold only 1 and 0, not {json.dumps(labels)[:80]}")
    if len(labels) != count:
        raise _BadRequest(f"{field} has {len(labels)} labels for {count} {of}")
    return labels


def _boxes(value: str | None) -> list[Box]:
    boxes = _normalised(_json_list(value, "bounding_boxes") or [], "bounding_boxes", BOX_FIELDS)
    for index, (x, y, w, h) in enumerate(boxes):
        if w <= 0 or h <= 0:
            raise _BadRequest(f"bounding_boxes[{index}] has no area (w and h must be above 0)")
        if x + w > 1.0 + 1e-6 or y + h > 1.0 + 1e-6:
            raise _BadRequest(
                f"bounding_boxes[{index}] runs past the frame (x + w = {x + w:g}, "
                f"y + h = {y + h:g}; both at most 1)"
            )
    return [(x, y, w, h) for x, y, w, h in boxes]


def _class_prompt(
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
        raise _BadRequest("bounding_box_labels: this stand-in takes positive boxes (1) only")
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
        raise _BadRequest(exc.errors()[0]["msg"].removeprefix("Value error, ")) from exc


def _text_key(text: str) -> str:
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
        _text_table({text: [(x, y, w, h)]})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text, (x, y, w, h)


def _text_table(entries: dict[str, list[Box]]) -> dict[str, list[Box]]:
    """The text-to-boxes table, checked as prompts are (normalised, inside the frame)."""
    table: dict[str, list[Box]] = {}
    for text, boxes in entries.items():
        try:
            checked = ClassPrompt(label="text", boxes=boxes).boxes
        except ValidationError as exc:
            raise ValueError(f"boxes for {text!r}: {exc.errors()[0]['msg']}") from exc
        table.setdefault(_text_key(text), []).extend(checked)
    return table


def _save(upload: UploadFile, dest: Path) -> InputInfo:
    with dest.open("wb") as out:
        shutil.copyfileobj(upload.file, out)
    return probe(dest)


def _check_duration(info: InputInfo, limit: float) -> None:
    if info.duration_s > limit + 1e-6:
        raise InputTooLarge(f"clip lasts {info.duration_s:g} s; at most {limit:g} s is accepted")


def _to_mp4(source: Path, dest: Path, fps: float) -> Path:
    """An engine's (lossless, large) result as the H.264 MP4 a cloud API would return;
    an MP4 already (the boxes engine's copy of the upload) as it is."""
    if source.suffix == ".mp4":
        return source
    writer: VideoWriter | None = None
    for image in read_frames(source):
        if writer is None:
            writer = VideoWriter(dest, image.shape[1], image.shape[0], fps, crf=16)
        writer.write(image)
    if writer is None:
        raise InvalidInput("the engine returned an empty video")
    writer.close()
    return dest


def _run_task(
    state: _State,
    task: _Task,
    work: Callable[[], tuple[Path, dict[str, Any]]],
    plan: tuple[float, bool, bool],
    base_url: str,
) -> None:
    _, never, fail = plan
    task.status = "running"
    if never:
        return
    try:
        if fail:
            task.error_message, task.status = "task failed (injected by fail_status)", "failed"
            return
        path, extra = work()
        name = f"{task.id}{path.suffix}"
        shutil.copyfile(path, state.files_dir / name)
        task.video_path, task.extra_info = f"{base_url}files/{name}", extra
        task.status = "completed"
    except VorError as exc:
        task.error_message, task.status = exc.message, "failed"
    except Exception as exc:  # the stand-in reports any engine crash the way SVOR would
        task.error_message, task.status = f"internal error: {type(exc).__name__}: {exc}", "failed"
    finally:
        state.record_task(task)


def _start(
    state: _State, kind: str, work: Callable[[], tuple[Path, dict[str, Any]]], request: Request
) -> str:
    task = _Task(uuid.uuid4().hex, kind)
    faults = state.faults
    plan = (faults.task_latency_s, faults.never_complete, state.take("fail_status", kind))
    with state.lock:
        state.tasks[task.id] = task
        state.stats["tasks"] += 1
    args = (state, task, work, plan, str(request.base_url))
    if faults.task_latency_s:
        # Tasks wait out their latency side by side, as on the real service; only the
        # engine's work itself goes through the executor's threads.
        task.status = "running"
        timer = threading.Timer(
            faults.task_latency_s, state.executor.submit, args=(_run_task, *args)
        )
        timer.daemon = True
        timer.start()
    else:
        state.executor.submit(_run_task, *args)
    return task.id


# --------------------------------------------------------------------------- app


def create_app(
    engine: SegmentErase | None = None,
    faults: Faults | None = None,
    *,
    api_key: str | None = None,
    work_dir: Path | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_duration_s: float = 3.0,
    texts: dict[str, list[Box]] | None = None,
    task_threads: int = 1,
) -> FastAPI:
    """The stand-in as an ASGI app; ``engine`` defaults to ``LocalEngine`` (made on first use).

    ``texts`` maps a text prompt to the boxes (normalised, on the annotation frame)
    of what it names: the stand-in has no language model, so a text prompt finds
    the objects this table gives it. ``task_threads`` run the engine's work of
    that many tasks at once (one for the CPU-heavy local engine).
    """
    scratch = None if work_dir else tempfile.TemporaryDirectory(prefix="svor-server-")
    root = Path(work_dir) if work_dir else Path(scratch.name)  # type: ignore[union-attr]
    state = _State(
        engine,
        faults or Faults(),
        api_key=api_key,
        work_dir=root,
        max_body_bytes=max_body_bytes,
        max_duration_s=max_duration_s,
        task_threads=task_threads,
    )
    state.texts = _text_table(texts or {})

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.executor.shutdown(wait=False, cancel_futures=True)
        if scratch is not None:
            scratch.cleanup()

    app = FastAPI(title="SVOR stand-in", lifespan=lifespan)
    app.state.svor = state
    app.add_middleware(_Gate, state=state)

    @app.exception_handler(RequestValidationError)
    async def _bad_fields(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _bad_request(f"bad parameter {where}: {first.get('msg', 'invalid')}")

    def task_dir() -> Path:
        path = root / "tasks" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    @app.post(SEG_PATH)
    def sam3_prompt_seg(
        request: Request,
        input_video: Annotated[UploadFile, File()],
        frame_index: Annotated[int, Form(ge=0)] = 0,
        text: Annotated[str | None, Form()] = None,
        remove_prompt: Annotated[str | None, Form()] = None,
        points: Annotated[str | None, Form()] = None,
        point_labels: Annotated[str | None, Form()] = None,
        bounding_boxes: Annotated[str | None, Form()] = None,
        bounding_box_labels: Annotated[str | None, Form()] = None,
    ) -> JSONResponse:
        """Start a SAM3 prompt segmentation task (coordinates normalised to 0~1)."""
        folder = task_dir()
        video = folder / "input.mp4"
        try:
            prompt = _class_prompt(
                frame_index,
                text,
                remove_prompt,
                points,
                point_labels,
                bounding_boxes,
                bounding_box_labels,
            )
            info = _save(input_video, video)
            _check_duration(info, state.max_duration_s)
        except _BadRequest as exc:
            return _bad_request(str(exc))
        except VorError as exc:
            return _bad_request(exc.message)
        if frame_index >= info.frames:
            return _bad_request(
                f"frame_index {frame_index} is past the last frame ({info.frames - 1})"
            )
        named = None
        if not prompt.has_geometry:
            named = state.boxes_named(prompt.text or "")
            if named is None:
                return JSONResponse(
                    {
                        "code": 1001,
                        "message": f"this SVOR stand-in cannot segment from text, and no "
                        f"--text-box names {prompt.text!r}: send points or bounding_boxes",
                    }
                )
            prompt = prompt.model_copy(update={"boxes": named})

        def work() -> tuple[Path, dict[str, Any]]:
            result = state.engine.segment(video, prompt, folder, no_progress)
            boxes = {
                str(o.id): [
                    round(o.box[0] * info.width),
                    round(o.box[1] * info.height),
                    round(o.box[2] * info.width),
                    round(o.box[3] * info.height),
                ]
                for o in result.objects
            }
            suggestion = result.suggestion
            if named is not None:
                ids = "、".join(str(o.id) for o in result.objects)
                suggestion = (
                    f"符合用户指令的有 obj_id {ids}, 需消除 (the stand-in's --text-box table names "
                    f"{len(named)} object(s) {prompt.text!r})"
                )
            return result.mask_path, {"suggest_obj": suggestion, "object_boxes": boxes}

        return JSONResponse({"code": 0, "task_id": _start(state, "sam3_prompt_seg", work, request)})

    @app.post(ERASE_PATH)
    def mieraser(
        request: Request,
        input_video: Annotated[UploadFile, File()],
        input_mask: Annotated[UploadFile, File()],
    ) -> JSONResponse:
        """Start a MiEraser task: remove the white region of ``input_mask``."""
        folder = task_dir()
        video, mask = folder / "input.mp4", folder / "mask_upload.mp4"
        try:
            info = _save(input_video, video)
            _check_duration(info, state.max_duration_s)
            mask_info = _save(input_mask, mask)
        except VorError as exc:
            return _bad_request(exc.message)
        if (mask_info.width, mask_info.height, mask_info.frames) != (
            info.width,
            info.height,
            info.frames,
        ):
            return _bad_request(
                f"input_mask is {mask_info.width}x{mask_info.height}, {mask_info.frames} frames; "
                f"input_video is {info.width}x{info.height}, {info.frames} frames",
            )

        def work() -> tuple[Path, dict[str, Any]]:
            # Engines read a mask's values above 127 as marked, so a lossy one needs no cleaning.
            result = state.engine.erase(video, mask, folder, no_progress, dilation=0)
            return _to_mp4(result, folder / "result.mp4", info.fps), {}

        return JSONResponse({"code": 0, "task_id": _start(state, "mieraser", work, request)})

    def status_of(task_id: str, kind: str) -> JSONResponse:
        task = state.tasks.get(task_id)
        if task is None or task.kind != kind:
            return _error(404, f"unknown task {task_id}")
        return JSONResponse(task.public())

    @app.get(SEG_PATH + "/status/{task_id}")
    def sam3_prompt_seg_status(task_id: str) -> JSONResponse:
        """A segmentation task's status."""
        return status_of(task_id, "sam3_prompt_seg")

    @app.get(ERASE_PATH + "/status/{task_id}")
    def mieraser_status(task_id: str) -> JSONResponse:
        """An erase task's status."""
        return status_of(task_id, "mieraser")

    @app.get("/files/{name}")
    def files(name: str) -> Response:
        """A task's result video."""
        path = state.files_dir / name
        if not FILE_NAME.fullmatch(name) or not path.is_file():
            return _error(404, "no such file")
        return FileResponse(path, media_type="video/mp4" if name.endswith(".mp4") else None)

    @app.get("/_faults")
    def get_faults() -> Faults:
        """The faults in force now (counters as far as they are used up)."""
        return state.faults

    @app.post("/_faults")
    def set_faults(faults: Faults) -> Faults:
        """Replace every fault at once (fields left out are off)."""
        state.set_faults(faults)
        return state.faults

    @app.get("/_texts")
    def get_texts() -> dict[str, list[Box]]:
        """The text prompts the stand-in knows, with the boxes each one finds."""
        with state.lock:
            return dict(state.texts)

    @app.post("/_texts")
    def set_texts(texts: dict[str, list[tuple[float, float, float, float]]]) -> JSONResponse:
        """Replace the text table: {"sign": [[x, y, w, h], ...]}, normalised."""
        try:
            table = _text_table(texts)
        except ValueError as exc:
            return _bad_request(str(exc))
        with state.lock:
            state.texts = table
        return JSONResponse(table)

    @app.get("/_stats")
    def get_stats() -> dict[str, Any]:
        """Requests by endpoint and status code, upload sizes, tasks started, and each ended
        task's seconds from acceptance to its end (``task_seconds``: the upstream's floor)."""
        return state.snapshot()

    @app.delete("/_stats", status_code=204)
    def reset_stats() -> None:
        """Start the counters again from zero."""
        state.reset_stats()

    return app


# --------------------------------------------------------------------------- command line


def _argument_type(annotation: Any) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    found: type = args[0] if isinstance(annotation, types.UnionType) and args else annotation
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``vor svor-server`` flags: where to listen, the key, and one flag per ``Faults`` field."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--api-key", default=None, help="require this Bearer key (default: none)")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--engine", choices=["local", "boxes"], default="local",
        help="local: real segmentation and erasure; boxes: boxes are the objects and erasure "
        "returns the video unchanged (for load tests)",
    )  # fmt: skip
    parser.add_argument(
        "--text-box", dest="text_boxes", action="append", type=parse_text_box, default=[],
        metavar="TEXT=x,y,w,h",
        help="a text prompt finds this box (normalised, on the annotation frame); repeat for more "
        "boxes and texts (also settable at runtime: POST /_texts)",
    )  # fmt: skip
    faults = parser.add_argument_group("faults (also settable at runtime: POST /_faults)")
    for name, info in Faults.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _argument_type(info.annotation)
        if kind is bool:
            faults.add_argument(flag, action="store_true", help=info.description)
        else:
            faults.add_argument(flag, type=kind, default=info.default, help=info.description)


def faults_from_args(args: argparse.Namespace) -> Faults:
    return Faults(**{name: getattr(args, name) for name in Faults.model_fields})


def texts_from_args(args: argparse.Namespace) -> dict[str, list[Box]]:
    texts: dict[str, list[Box]] = {}
    for text, box in args.text_boxes:
        texts.setdefault(text, []).append(box)
    return texts


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``app`` on a free loopback port in a thread (tests, benchmarks); yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the SVOR stand-in did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _engine_named(name: str) -> SegmentErase | None:
    if name == "boxes":
        from services.standin.boxes import BoxEngine

        return BoxEngine()
    return None


def serve(
    host: str,
    port: int,
    *,
    faults: Faults,
    api_key: str | None,
    log_level: str = "warning",
    engine: str = "local",
    texts: dict[str, list[Box]] | None = None,
) -> None:
    """Run the stand-in with uvicorn until interrupted."""
    active = faults.model_dump(exclude_defaults=True)
    print(f"SVOR stand-in on http://{host}:{port} (faults: {active or 'none'})", file=sys.stderr)
    app = create_app(
        engine=_engine_named(engine),
        faults=faults,
        api_key=api_key,
        texts=texts,
        task_threads=BOX_TASK_THREADS if engine == "boxes" else 1,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
    )
