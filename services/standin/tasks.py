"""The life of an SVOR task on the stand-in: accepted, running, then completed or failed,
with the latency, failures and hangs its faults ask for."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request

from services.errors import VorError
from services.standin.state import State, Task


def run_task(
    state: State,
    task: Task,
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


def start_task(
    state: State, kind: str, work: Callable[[], tuple[Path, dict[str, Any]]], request: Request
) -> str:
    task = Task(uuid.uuid4().hex, kind)
    faults = state.faults
    plan = (faults.task_latency_s, faults.never_complete, state.injector.take("fail_status", kind))
    with state.lock:
        state.tasks[task.id] = task
        state.stats["tasks"] += 1
    args = (state, task, work, plan, str(request.base_url))
    if faults.task_latency_s:
        # Tasks wait out their latency side by side, as on the real service; only the
        # engine's work itself goes through the executor's threads.
        task.status = "running"
        timer = threading.Timer(
            faults.task_latency_s, state.executor.submit, args=(run_task, *args)
        )
        timer.daemon = True
        timer.start()
    else:
        state.executor.submit(run_task, *args)
    return task.id
