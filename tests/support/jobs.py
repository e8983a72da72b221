"""The job service over real parts, without Celery: Redis (a key prefix of its own),
file storage in a temporary folder, and a dispatcher that records what it was asked.

``Recording`` stands in for the queue, as the lifecycle is built to allow: it is
handed in at start-up, like Celery's, and keeps every message it was given so a
test can run the stages itself (``run_plan``) or look at the webhooks queued.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

import redis

from services.jobs import pipeline
from services.jobs.lifecycle import Lifecycle
from services.jobs.plan import plan
from services.jobs.store import JobStore
from services.metrics import QueueDepths
from services.models import Job, Queue
from services.settings import Settings
from services.storage import FileStorage, UrlSigner

WEBHOOK_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXZvci10ZXN0cw=="


@dataclass
class Recording:
    """A ``Dispatcher`` that keeps the jobs and webhook events it was asked to queue."""

    enqueued: list[Job] = field(default_factory=list)
    notified: list[tuple[str, str, Job | None]] = field(default_factory=list)
    queued: set[str] = field(default_factory=set)
    """What ``queued_jobs`` answers: jobs that still have a message in a queue."""
    warmed: int = 0

    def enqueue(self, job: Job) -> None:
        self.enqueued.append(job)

    def notify(self, job_id: str, event: str, *, snapshot: Job | None = None) -> None:
        self.notified.append((job_id, event, snapshot))

    def warm_up(self) -> None:
        self.warmed += 1

    def queued_jobs(self, *, held_for_less_than_s: float) -> set[str]:
        return set(self.queued)

    def depths(self) -> QueueDepths:
        return QueueDepths({q.value: 0 for q in Queue}, 0)

    def events(self, job_id: str) -> list[str]:
        return [event for jid, event, _ in self.notified if jid == job_id]


def make_lifecycle(redis_url: str, folder: Path, **settings: object) -> Lifecycle:
    """A lifecycle on its own key prefix, storage and data dir."""
    client = redis.Redis.from_url(redis_url)
    store = JobStore(client, prefix=f"t{secrets.token_hex(4)}")
    settings.setdefault("dispatch_capacity", 100)  # no worker reports its slots here
    config = Settings(
        data_dir=folder / "data",
        redis_url=redis_url,
        webhook_secret=WEBHOOK_SECRET,
        allowed_url_networks="127.0.0.0/8",
        **settings,  # type: ignore[arg-type]
    )
    storage = FileStorage(folder / "storage", UrlSigner(b"test-key"), "http://vor.test")
    return Lifecycle(store, storage, config, Recording())


def recording(jobs: Lifecycle) -> Recording:
    assert isinstance(jobs.dispatcher, Recording)
    return jobs.dispatcher


def run_plan(res: pipeline.Resources, job_id: str) -> Job:
    """Run every stage the job has left, in the plan's order, as the workers would."""
    job = res.store.require(job_id)
    for step in plan(job, Queue.cpu).steps():
        outcome = pipeline.run_stage(
            step.stage, job_id, res, label=step.label, generation=job.generation
        )
        if outcome is not pipeline.StageOutcome.done:
            break
    return res.store.require(job_id)
