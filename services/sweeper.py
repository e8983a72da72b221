"""No job stays queued or running forever.

Every few seconds one process (whoever holds the sweep lock) looks at the jobs
whose heartbeat is older than ``VOR_STALL_TIMEOUT_S``:

- a job whose stage outlived ``VOR_STAGE_TIME_LIMIT_S`` is failed (``stage_timeout``)
  through ``pipeline.fail``, as a stage's own failure is: state, ``job.failed``
  webhook, clean-up and metrics;
- a job with no live stage lease, no message waiting in a queue and no message
  a worker took within that time lost its worker (killed) or its messages (the
  broker lost its data): its generation is bumped and the stages it has not done
  are enqueued again; old copies of its messages become stale.

Each re-enqueue counts as a run of the stage, so an input that kills its worker
every time fails after ``VOR_STAGE_MAX_RUNS`` instead of looping.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import redis

from services import pipeline
from services.errors import StageTimedOut
from services.models import Job, utcnow

log = logging.getLogger("vor.sweeper")


@dataclass
class SweepReport:
    requeued: list[str]
    failed: list[str]
    waiting: list[str]


JOB_ID = re.compile(rb"job_[0-9a-f]{20}")


def jobs_with_messages(
    broker: redis.Redis, queues: Iterable[str], *, held_for_less_than_s: float
) -> set[str]:
    """Jobs with a message waiting in a queue, or delivered to a worker recently.

    A message a worker took long ago and never started (no stage lease) was most
    likely taken by a worker that died: it does not count.
    """
    found: set[str] = set()
    for queue in queues:
        for key in broker.scan_iter(match=f"{queue}*", count=100):
            if broker.type(key) == b"list":
                for message in cast("list[bytes]", broker.lrange(key, 0, -1)):
                    found.update(m.decode() for m in JOB_ID.findall(message))
    cutoff = time.time() - held_for_less_than_s
    # redis-py types its commands for both clients (sync | Awaitable); ours is sync.
    scored = cast(
        "list[tuple[bytes, float]]",
        broker.zrangebyscore("unacked_index", cutoff, "+inf", withscores=True),
    )
    recent = {tag for tag, _ in scored}
    for tag, message in broker.hscan_iter("unacked"):
        if tag in recent:
            found.update(m.decode() for m in JOB_ID.findall(message))
    return found


def sweep(
    res: pipeline.Resources,
    broker: redis.Redis,
    enqueue: Callable[[Job], None],
    *,
    queues: Iterable[str] = ("cpu", "io"),
) -> SweepReport:
    store, settings = res.store, res.settings
    report = SweepReport([], [], [])
    now = time.time()
    stale = store.active_ids(older_than_s=settings.stall_timeout_s)
    if not stale:
        return report
    with_messages = jobs_with_messages(
        broker, queues, held_for_less_than_s=settings.stall_timeout_s
    )
    for job_id in stale:
        job = store.get(job_id)
        if job is None or job.status.is_terminal():
            store.forget_active(job_id)
            continue
        started = job.stage_started_at.timestamp() if job.stage_started_at else None
        if started and now - started > settings.stage_time_limit_s + settings.stall_timeout_s:
            stage = job.stage.value if job.stage else "queued"
            timed_out = StageTimedOut(
                f"the {stage} stage did not finish within {settings.stage_time_limit_s:g} s; "
                "try a shorter video",
                stage=job.stage.value if job.stage else None,
            )
            if pipeline.fail(res, job_id, job.stage, timed_out) is not None:
                report.failed.append(job_id)
            continue
        if store.has_live_lease(job_id) or job_id in with_messages:
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
    res: pipeline.Resources,
    broker: redis.Redis,
    enqueue: Callable[[Job], None],
    stop: Callable[[], bool],
) -> None:
    """Sweep every ``sweep_interval_s`` while holding the sweep lock; never raise."""
    settings = res.settings
    while not stop():
        try:
            if res.store.acquire_lease("sweeper", "sweeper", settings.sweep_interval_s * 0.9):
                report = sweep(res, broker, enqueue)
                if report.requeued or report.failed:
                    log.warning("sweep at %s: requeued %s, failed %s", utcnow().isoformat(),
                                report.requeued, report.failed)  # fmt: skip
        except Exception:
            log.warning("sweep failed; trying again", exc_info=True)
        time.sleep(settings.sweep_interval_s)
