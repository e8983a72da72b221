"""No job stays queued or running forever.

Every few seconds one process (whoever holds the sweep lock) looks at the jobs
whose heartbeat is older than ``VOR_STALL_TIMEOUT_S``:

- a job whose stage outlived ``VOR_STAGE_TIME_LIMIT_S`` is failed (``stage_timeout``);
- a running job with no live stage lease lost its worker (killed, or its
  messages were lost with the broker): its generation is bumped and the stages
  it has not done are enqueued again; old copies of its messages become stale;
- a queued job whose message is in no queue and in no worker's hands was lost
  with the broker (``FLUSHALL``): it is enqueued again the same way.

Each re-enqueue counts as a run of the stage, so an input that kills its worker
every time fails after ``VOR_STAGE_MAX_RUNS`` instead of looping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis

from services.errors import StageTimedOut
from services.models import Job, JobError, Status, utcnow
from services.settings import Settings
from services.store import JobStore

log = logging.getLogger("vor.sweeper")


@dataclass
class SweepReport:
    requeued: list[str]
    failed: list[str]
    waiting: list[str]


def message_pending(broker: redis.Redis, job_id: str, queues: Iterable[str]) -> bool:
    """Whether a message of the job waits in a queue or is held by a worker."""
    needle = job_id.encode()
    for queue in queues:
        for key in broker.scan_iter(match=f"{queue}*", count=100):
            if broker.type(key) == b"list" and any(needle in m for m in broker.lrange(key, 0, -1)):
                return True
    return any(needle in value for value in broker.hvals("unacked"))


def sweep(
    store: JobStore,
    broker: redis.Redis,
    settings: Settings,
    enqueue: Callable[[Job], None],
    *,
    queues: Iterable[str] = ("cpu", "io"),
) -> SweepReport:
    report = SweepReport([], [], [])
    now = time.time()
    for job_id in store.active_ids(older_than_s=settings.stall_timeout_s):
        job = store.get(job_id)
        if job is None or job.status.is_terminal():
            store.forget_active(job_id)
            continue
        started = job.stage_started_at.timestamp() if job.stage_started_at else None
        if started and now - started > settings.stage_time_limit_s + settings.stall_timeout_s:
            error = JobError(
                code=StageTimedOut.code,
                message=f"the {job.stage} stage did not finish within "
                f"{settings.stage_time_limit_s:g} s; try a shorter video",
                stage=job.stage.value if job.stage else None,
            )
            store.finish(job_id, Status.failed, error=error, stage=job.stage)
            report.failed.append(job_id)
            continue
        if store.has_live_lease(job_id):
            store.touch(job_id)
            continue
        if job.status is Status.queued and message_pending(broker, job_id, queues):
            store.touch(job_id)
            report.waiting.append(job_id)
            continue
        job = store.bump_generation(job_id)
        log.warning("job %s stalled at %s: enqueued again (generation %d)",
                    job_id, job.stage or "queue", job.generation)  # fmt: skip
        store.touch(job_id)
        enqueue(job)
        report.requeued.append(job_id)
    return report


def sweep_forever(
    store: JobStore,
    broker: redis.Redis,
    settings: Settings,
    enqueue: Callable[[Job], None],
    stop: Callable[[], bool],
) -> None:
    """Sweep every ``sweep_interval_s`` while holding the sweep lock; never raise."""
    while not stop():
        try:
            if store.acquire_lease("sweeper", "sweeper", settings.sweep_interval_s * 0.9):
                report = sweep(store, broker, settings, enqueue)
                if report.requeued or report.failed:
                    log.warning("sweep at %s: requeued %s, failed %s", utcnow().isoformat(),
                                report.requeued, report.failed)  # fmt: skip
        except Exception:
            log.warning("sweep failed; trying again", exc_info=True)
        time.sleep(settings.sweep_interval_s)
