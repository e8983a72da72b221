"""No job stays queued or running forever.

Every few seconds one process (whoever holds the sweep lock) looks at the jobs
whose heartbeat is older than ``VOR_STALL_TIMEOUT_S``:

- a job whose stage outlived ``VOR_STAGE_TIME_LIMIT_S`` is failed (``stage_timeout``)
  through ``Lifecycle.fail``, as a stage's own failure is: state, ``job.failed``
  webhook, clean-up and metrics;
- a job with no live stage lease, no message waiting in a queue and no message
  a worker took within that time lost its worker (killed) or its messages (the
  broker lost its data): its generation is bumped and the stages it has not done
  are enqueued again; old copies of its messages become stale.

Each re-enqueue counts as a run of the stage, so an input that kills its worker
every time fails after ``VOR_STAGE_MAX_RUNS`` instead of looping.

A job waiting for a slot in the scheduler is not stalled: its heartbeat is
renewed. Every sweep also gives back the slots of jobs that ended or vanished
(a crash between a job's ending and its ``done``) and releases what may start,
so a crash between two steps of admission strands nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.errors import StageTimedOut
from services.jobs.lifecycle import Lifecycle
from services.models import Job, utcnow
from services.settings import Settings

log = logging.getLogger("vor.sweeper")


@dataclass
class SweepReport:
    requeued: list[str]
    failed: list[str]
    waiting: list[str]


def sweep(jobs: Lifecycle) -> SweepReport:
    store, settings = jobs.store, jobs.settings
    report = SweepReport([], [], [])
    now = time.time()
    return_slots(jobs)
    jobs.dispatch()
    stale = store.active_ids(older_than_s=settings.stall_timeout_s)
    waiting = jobs.scheduler.waiting_among(stale)
    store.touch_many(sorted(waiting))
    report.waiting.extend(waiting)
    stale = [job_id for job_id in stale if job_id not in waiting]
    if not stale:
        return report
    with_messages = jobs.dispatcher.queued_jobs(held_for_less_than_s=settings.stall_timeout_s)
    for job_id in stale:
        job = store.get(job_id)
        if job is None or job.status.is_terminal():
            store.forget_active(job_id)
            continue
        started = job.stage_started_at.timestamp() if job.stage_started_at else None
        if started and now - started > settings.stage_time_limit_s + settings.stall_timeout_s:
            if jobs.fail(job_id, job.stage, _timed_out(job, settings)) is not None:
                report.failed.append(job_id)
            continue
        if store.has_live_lease(job_id) or job_id in with_messages:
            store.touch(job_id)
            report.waiting.append(job_id)
            continue
        job = jobs.requeue(job_id)
        log.warning("job %s stalled at %s: enqueued again (generation %d)",
                    job_id, job.stage or "queue", job.generation)  # fmt: skip
        report.requeued.append(job_id)
    return report


def return_slots(jobs: Lifecycle) -> list[str]:
    """Give back the slots of released jobs that ended or no longer exist; their ids."""
    freed = []
    for job_id in jobs.scheduler.released():
        job = jobs.store.get(job_id)
        if (job is None or job.status.is_terminal()) and jobs.scheduler.done(job_id):
            freed.append(job_id)
    if freed:
        log.warning("slots of ended jobs given back: %s", freed)
    return freed


def _timed_out(job: Job, settings: Settings) -> StageTimedOut:
    stage = job.stage.value if job.stage else "queued"
    return StageTimedOut(
        f"the {stage} stage did not finish within {settings.stage_time_limit_s:g} s; "
        "try a shorter video",
        stage=job.stage.value if job.stage else None,
    )


def sweep_forever(
    jobs: Lifecycle, stop: Callable[[], bool], *, beat: Callable[[], None] | None = None
) -> None:
    """Sweep every ``sweep_interval_s`` while holding the sweep lock; never raise.
    ``beat`` runs every interval in every process (a worker reports its slots)."""
    interval = jobs.settings.sweep_interval_s
    while not stop():
        try:
            if beat is not None:
                beat()
            if jobs.store.acquire_lease("sweeper", "sweeper", interval * 0.9):
                report = sweep(jobs)
                if report.requeued or report.failed:
                    log.warning("sweep at %s: requeued %s, failed %s", utcnow().isoformat(),
                                report.requeued, report.failed)  # fmt: skip
        except Exception:
            log.warning("sweep failed; trying again", exc_info=True)
        time.sleep(interval)
