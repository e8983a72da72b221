"""What one stage works with: its resources, and the run of one stage of one job (its
scratch directory, inputs, outputs and progress)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from services.engines import get_engine
from services.engines.base import Engine
from services.errors import Canceled, NotFound
from services.jobs.lifecycle import Lifecycle
from services.jobs.plan import span, windowed_steps_done
from services.jobs.store import JobStore
from services.models import Job, Stage, Status
from services.settings import Settings
from services.storage import Storage


@dataclass
class Resources:
    """What a stage works with: the lifecycle (job store, storage, settings) and engines."""

    jobs: Lifecycle
    time_limit_errors: tuple[type[BaseException], ...] = ()
    """What the runner raises inside a stage that outlived its time limit."""
    engines: dict[str, Engine] = field(default_factory=dict)

    @property
    def store(self) -> JobStore:
        return self.jobs.store

    @property
    def storage(self) -> Storage:
        return self.jobs.storage

    @property
    def settings(self) -> Settings:
        return self.jobs.settings

    def engine(self, name: str) -> Engine:
        if name not in self.engines:
            self.engines[name] = get_engine(name, self.settings, redis_client=self.store.redis)
        return self.engines[name]


@dataclass
class StageRun:
    """One stage of one job: its scratch directory, inputs and progress reporting."""

    job: Job
    stage: Stage
    res: Resources
    scratch: Path
    window: int | None = None
    """The window of a long video this step works on (``services.media.windows``)."""
    began: float = field(default_factory=time.monotonic)
    _last_report: float = 0.0

    def fetch(self, name: str) -> Path:
        key = self.job.artifacts.get(name)
        if key is None:
            raise NotFound(f"the job has no {name!r} file yet", stage=self.stage.value)
        dest = self.scratch / "in" / key.replace("/", "_")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.res.storage.get_file(key, dest)
            except NotFound as exc:
                raise NotFound(
                    f"stored file {key} is gone (was a job it came from deleted?)",
                    stage=self.stage.value,
                ) from exc
        return dest

    def store(self, name: str, path: Path, key: str, content_type: str | None = None) -> str:
        self.res.storage.put_file(key, path, content_type)
        self.job = self.res.store.update(self.job.id, lambda j: j.artifacts.__setitem__(name, key))
        return key

    def key(self, name: str) -> str:
        return f"jobs/{self.job.id}/{name}"

    def out(self, name: str) -> Path:
        path = self.scratch / "out" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def folder(self, name: str) -> Path:
        path = self.scratch / "out" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def progress(self, fraction: float) -> None:
        """Report progress within this stage; raises Canceled once the job was canceled."""
        now = time.monotonic()
        if now - self._last_report < 0.5 and fraction < 1.0:
            return
        self._last_report = now
        start, end = span(self.job.mode, self.stage)
        if self.window is not None:
            done, total = windowed_steps_done(self.job, self.stage)
            fraction = min(1.0, (done + fraction) / total)
        job = self.res.store.set_progress(self.job.id, start + (end - start) * fraction)
        if job.status is Status.canceled:
            raise Canceled("the job was canceled", stage=self.stage.value)
