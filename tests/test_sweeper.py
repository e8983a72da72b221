"""The sweeper called directly: real Redis, the lifecycle, a recording dispatcher."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from services.jobs import sweeper
from services.jobs.lease import StageLease
from services.jobs.lifecycle import Lifecycle
from services.jobs.submission import Submission
from services.media.synthetic import SyntheticClip
from services.models import JobSpec, Stage, Status, utcnow
from tests.support.jobs import make_lifecycle, recording

STALL_S = 0.2


@pytest.fixture
def jobs(redis_url: str, tmp_path: Path) -> Lifecycle:
    return make_lifecycle(
        redis_url,
        tmp_path,
        stall_timeout_s=STALL_S,
        stage_time_limit_s=5,
        heartbeat_s=0.5,
        sweep_interval_s=0.2,
    )


def stalled(jobs: Lifecycle, clip: SyntheticClip) -> str:
    spec = JobSpec.model_validate(
        {"classes": [{"label": "a", "boxes": [clip.box(0)]}], "webhook_url": "http://127.0.0.1:9/h"}
    )
    job_id = jobs.submit(Submission(tenant="acme", spec=spec, video=clip.path))[0].id
    jobs.store.start_stage(job_id, Stage.compress)
    time.sleep(STALL_S * 1.5)
    return job_id


def test_a_job_that_lost_its_worker_is_enqueued_again(jobs: Lifecycle, clip: SyntheticClip) -> None:
    job_id = stalled(jobs, clip)
    report = sweeper.sweep(jobs)
    assert report.requeued == [job_id] and report.failed == []
    assert [j.generation for j in recording(jobs).enqueued] == [0, 1]
    assert sweeper.sweep(jobs).requeued == [], "the requeue counts as a heartbeat"


def test_a_job_with_a_message_or_a_lease_waits(jobs: Lifecycle, clip: SyntheticClip) -> None:
    queued, leased = stalled(jobs, clip), stalled(jobs, clip)
    recording(jobs).queued.add(queued)
    with StageLease(jobs.store, leased, "compress", heartbeat_s=60) as lease:
        assert lease.acquire()
        time.sleep(STALL_S * 1.5)
        report = sweeper.sweep(jobs)
    assert sorted(report.waiting) == sorted([queued, leased]) and report.requeued == []


def test_a_stage_past_its_time_limit_fails_through_the_lifecycle(
    jobs: Lifecycle, clip: SyntheticClip
) -> None:
    job_id = stalled(jobs, clip)
    long_ago = utcnow() - timedelta(seconds=60)
    jobs.store.update(job_id, lambda j: setattr(j, "stage_started_at", long_ago))
    (jobs.settings.work_dir / job_id).mkdir(parents=True)
    time.sleep(STALL_S * 1.5)
    report = sweeper.sweep(jobs)
    job = jobs.store.require(job_id)
    assert report.failed == [job_id] and job.status is Status.failed
    assert job.error is not None and (job.error.code, job.error.stage) == (
        "stage_timeout",
        "compress",
    )
    assert recording(jobs).events(job_id) == ["job.failed"], "the webhook goes out"
    assert not (jobs.settings.work_dir / job_id).exists(), "and the files go"


def test_an_ended_job_is_forgotten(jobs: Lifecycle, clip: SyntheticClip) -> None:
    job_id = stalled(jobs, clip)
    jobs.store.redis.zadd(jobs.store._key("active"), {job_id: 0})
    jobs.store.finish(job_id, Status.canceled)
    jobs.store.redis.zadd(jobs.store._key("active"), {job_id: 0})
    assert sweeper.sweep(jobs).requeued == []
    assert job_id not in jobs.store.active_ids()


def test_sweep_forever_stops_when_told(jobs: Lifecycle) -> None:
    calls = iter([False, True])
    started = time.monotonic()
    sweeper.sweep_forever(jobs, lambda: next(calls))
    assert time.monotonic() - started < jobs.settings.sweep_interval_s + 1
