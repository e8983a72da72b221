"""An SVOR-compatible HTTP server backed by the local engine, with fault injection.

The app and its routes; the gate with its faults (``gate.py``, ``faults.py``), the
prompt fields (``prompts.py``), the task life cycle (``tasks.py``), the shared
state (``state.py``), the command line (``cli.py``) and the boxes engine
(``boxes.py``) each live in a module of their own. No product code imports this
package: ``vor svor-server`` runs it as ``python -m services.standin``.

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

import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response

from services.engines.base import FoundObject, no_progress
from services.engines.svor import upload_limits
from services.engines.svor.client import ERASE_PATH, SEG_PATH
from services.errors import InvalidInput, VorError
from services.media.video import VideoWriter, probe, read_frames
from services.models import InputInfo
from services.standin.colours import Colour, find_objects, parse_colour
from services.standin.faults import Faults
from services.standin.gate import Gate, bad_request, error_response
from services.standin.prompts import BadRequest, Box, class_prompt, text_key, text_table
from services.standin.state import SegmentErase, State
from services.standin.tasks import start_task

DEFAULT_MAX_BODY_BYTES = 1000 * 1024
FILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
BOX_TASK_THREADS = 8
"""The boxes engine costs next to nothing, so its tasks end side by side, as on the cloud."""


def _save(upload: UploadFile, dest: Path) -> InputInfo:
    with dest.open("wb") as out:
        shutil.copyfileobj(upload.file, out)
    return probe(dest)


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


def _object_boxes(objects: list[FoundObject], info: InputInfo) -> dict[str, list[int]]:
    """Found objects' normalised boxes as SVOR's ``object_boxes``: pixels of the upload."""
    return {
        str(o.id): [
            round(o.box[0] * info.width),
            round(o.box[1] * info.height),
            round(o.box[2] * info.width),
            round(o.box[3] * info.height),
        ]
        for o in objects
    }


def _by_colour(
    video: Path, colours: list[Colour], folder: Path, text: str, info: InputInfo
) -> Callable[[], tuple[Path, dict[str, Any]]]:
    """A segmentation task of the colour detector (``--text-color``)."""

    def work() -> tuple[Path, dict[str, Any]]:
        result = find_objects(video, colours, folder)
        ids = "、".join(str(o.id) for o in result.objects)
        suggestion = (
            f"符合用户指令的有 obj_id {ids}, 需消除 (the stand-in's --text-color table "
            f"names the colours of {text!r})"
        )
        return result.mask_path, {
            "suggest_obj": suggestion,
            "object_boxes": _object_boxes(result.objects, info),
        }

    return work


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
    text_colours: dict[str, list[Colour]] | None = None,
) -> FastAPI:
    """The stand-in as an ASGI app; ``engine`` defaults to ``LocalEngine`` (made on first use).

    ``texts`` maps a text prompt to the boxes (normalised, on the annotation frame)
    of what it names: the stand-in has no language model, so a text prompt finds
    the objects this table gives it. ``task_threads`` run the engine's work of
    that many tasks at once (one for the CPU-heavy local engine).
    """
    scratch = None if work_dir else tempfile.TemporaryDirectory(prefix="svor-server-")
    root = Path(work_dir) if work_dir else Path(scratch.name)  # type: ignore[union-attr]
    state = State(
        engine,
        faults or Faults(),
        api_key=api_key,
        work_dir=root,
        max_body_bytes=max_body_bytes,
        max_duration_s=max_duration_s,
        task_threads=task_threads,
    )
    state.texts = text_table(texts or {})
    state.colours = {text_key(t): c for t, c in (text_colours or {}).items()}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.executor.shutdown(wait=False, cancel_futures=True)
        if scratch is not None:
            scratch.cleanup()

    app = FastAPI(title="SVOR stand-in", lifespan=lifespan)
    app.state.svor = state
    app.add_middleware(Gate, state=state)

    @app.exception_handler(RequestValidationError)
    async def _bad_fields(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return bad_request(f"bad parameter {where}: {first.get('msg', 'invalid')}")

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
            prompt = class_prompt(
                frame_index,
                text,
                remove_prompt,
                points,
                point_labels,
                bounding_boxes,
                bounding_box_labels,
            )
            info = _save(input_video, video)
            upload_limits(state.max_duration_s).check_clip(info)
            prompt.check_frame_index(info.frames, field="frame_index")
        except BadRequest as exc:
            return bad_request(str(exc))
        except VorError as exc:
            return bad_request(exc.message)
        named = None
        colours = None if prompt.has_geometry else state.colours_named(prompt.text or "")
        if colours is not None:
            return JSONResponse(
                {
                    "code": 0,
                    "task_id": start_task(
                        state,
                        "sam3_prompt_seg",
                        _by_colour(video, colours, folder, prompt.text or "", info),
                        request,
                    ),
                }
            )
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
            boxes = _object_boxes(result.objects, info)
            suggestion = result.suggestion
            if named is not None:
                ids = "、".join(str(o.id) for o in result.objects)
                suggestion = (
                    f"符合用户指令的有 obj_id {ids}, 需消除 (the stand-in's --text-box table names "
                    f"{len(named)} object(s) {prompt.text!r})"
                )
            return result.mask_path, {"suggest_obj": suggestion, "object_boxes": boxes}

        return JSONResponse(
            {"code": 0, "task_id": start_task(state, "sam3_prompt_seg", work, request)}
        )

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
            upload_limits(state.max_duration_s).check_clip(info)
            mask_info = _save(input_mask, mask)
        except VorError as exc:
            return bad_request(exc.message)
        if (mask_info.width, mask_info.height, mask_info.frames) != (
            info.width,
            info.height,
            info.frames,
        ):
            return bad_request(
                f"input_mask is {mask_info.width}x{mask_info.height}, {mask_info.frames} frames; "
                f"input_video is {info.width}x{info.height}, {info.frames} frames",
            )

        def work() -> tuple[Path, dict[str, Any]]:
            # Engines read a mask's values above 127 as marked, so a lossy one needs no cleaning.
            result = state.engine.erase(video, mask, folder, no_progress, dilation=0)
            return _to_mp4(result, folder / "result.mp4", info.fps), {}

        task_id = start_task(state, "mieraser", work, request)
        return JSONResponse({"code": 0, "task_id": task_id})

    def status_of(task_id: str, kind: str) -> JSONResponse:
        task = state.tasks.get(task_id)
        if task is None or task.kind != kind:
            return error_response(404, f"unknown task {task_id}")
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
            return error_response(404, "no such file")
        return FileResponse(path, media_type="video/mp4" if name.endswith(".mp4") else None)

    @app.get("/_faults")
    def get_faults() -> Faults:
        """The faults in force now (counters as far as they are used up)."""
        return state.faults

    @app.post("/_faults")
    def set_faults(faults: Faults) -> Faults:
        """Replace every fault at once (fields left out are off)."""
        state.injector.set(faults)
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
            table = text_table(texts)
        except ValueError as exc:
            return bad_request(str(exc))
        with state.lock:
            state.texts = table
        return JSONResponse(table)

    @app.get("/_text_colors")
    def get_text_colours() -> dict[str, list[Colour]]:
        """The text prompts the colour detector knows, with their colours (b, g, r)."""
        with state.lock:
            return dict(state.colours)

    @app.post("/_text_colors")
    def set_text_colours(texts: dict[str, list[str]]) -> JSONResponse:
        """Replace the colour table: {"ball": ["#e63c28", "#1e28e6"]}."""
        try:
            table = {text_key(t): [parse_colour(c) for c in cs] for t, cs in texts.items()}
        except ValueError as exc:
            return bad_request(str(exc))
        with state.lock:
            state.colours = table
        return JSONResponse({t: [list(c) for c in cs] for t, cs in table.items()})

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
    text_colours: dict[str, list[Colour]] | None = None,
) -> None:
    """Run the stand-in with uvicorn until interrupted."""
    active = faults.model_dump(exclude_defaults=True)
    print(f"SVOR stand-in on http://{host}:{port} (faults: {active or 'none'})", file=sys.stderr)
    app = create_app(
        engine=_engine_named(engine),
        faults=faults,
        api_key=api_key,
        texts=texts,
        text_colours=text_colours,
        task_threads=BOX_TASK_THREADS if engine == "boxes" else 1,
    )
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
    )
