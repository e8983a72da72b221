"""The stand-in's state: its tasks, its counters, its text table, its engine."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from services.engines.base import Progress, Segmentation
from services.models import ClassPrompt
from services.standin.faults import Faults, Injector
from services.standin.prompts import Box, text_key


class SegmentErase(Protocol):
    """The part of the Engine protocol this server needs."""

    def segment(
        self, video: Path, prompt: ClassPrompt, out_dir: Path, progress: Progress
    ) -> Segmentation: ...

    def erase(
        self, video: Path, mask: Path, out_dir: Path, progress: Progress, *, dilation: int
    ) -> Path: ...


@dataclass
class Task:
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


class State:
    """Tasks, counters, the text table and the faults, shared by the event loop and the task
    threads."""

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
        self.injector = Injector(faults)
        self.tasks: dict[str, Task] = {}
        self.texts: dict[str, list[Box]] = {}
        self.colours: dict[str, list[tuple[int, int, int]]] = {}
        self.executor = ThreadPoolExecutor(task_threads, thread_name_prefix="svor-task")
        self.reset_stats()

    @property
    def engine(self) -> SegmentErase:
        with self.lock:
            if self._engine is None:
                from services.engines.local.engine import LocalEngine

                self._engine = LocalEngine()
            return self._engine

    @property
    def faults(self) -> Faults:
        return self.injector.faults

    @property
    def max_body_bytes(self) -> int:
        return self.faults.max_body_bytes or self.default_max_body

    def reset_stats(self) -> None:
        with self.lock:
            self.stats: dict[str, Any] = {
                "requests": {},
                "uploads": [],
                "tasks": 0,
                "task_seconds": [],
            }

    def count(self, endpoint: str, status: int) -> None:
        with self.lock:
            by_status = self.stats["requests"].setdefault(endpoint, {})
            by_status[str(status)] = by_status.get(str(status), 0) + 1

    def record_task(self, task: Task) -> None:
        """How long a task took from its acceptance to its end: the upstream's floor."""
        seconds = round(time.monotonic() - task.accepted_at, 4)
        with self.lock:
            self.stats["task_seconds"].append(
                {"endpoint": task.kind, "status": task.status, "seconds": seconds}
            )

    def boxes_named(self, text: str) -> list[Box] | None:
        with self.lock:
            return self.texts.get(text_key(text))

    def colours_named(self, text: str) -> list[tuple[int, int, int]] | None:
        with self.lock:
            return self.colours.get(text_key(text))

    def record_upload(self, endpoint: str, size: int) -> None:
        with self.lock:
            self.stats["uploads"].append({"endpoint": endpoint, "bytes": size})

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            copy: dict[str, Any] = json.loads(json.dumps(self.stats))
            return copy
