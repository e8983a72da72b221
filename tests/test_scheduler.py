"""The admission scheduler against a real Redis: its Lua scripts, its limits, and how the
lifecycle and the sweeper use it (a recording dispatcher stands in for Celery)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from services.errors import TenantQueueFull
from services.jobs import sweeper
from services.jobs.lifecycle import Lifecycle
from services.jobs.scheduler import FALLBACK_CAPACITY, Scheduler
from services.jobs.store import new_job_id
from services.jobs.submission import Submission
from services.media.synthetic import SyntheticClip
from services.models import Job, JobSpec, Stage, Status
from services.settings import Settings, TenantLimits
from tests.support.jobs import make_lifecycle, recording

SPEC = {"engine": "local", "classes": [{"label": "a", "boxes": [[0.1, 0.1, 0.3, 0.3]]}]}


def job(tenant: str, priority: str = "normal", engine: str = "local") -> Job:
    spec = JobSpec.model_validate({**SPEC, "engine": engine, "priority": priority})
    return Job(id=new_job_id(), tenant=tenant, mode="remove", engine=engine, spec=spec)


@pytest.fixture
def make(redis_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    def scheduler(**settings: object) -> Scheduler:
        config = Settings(data_dir=tmp_path, redis_url=redis_url, **settings)  # type: ignore[arg-type]
        return Scheduler(redis.Redis.from_url(redis_url), config, prefix=f"t{new_job_id()[-8:]}")

    return scheduler


def admit_all(sched: Scheduler, jobs: list[Job]) -> list[str]:
    for one in jobs:
        assert sched.admit(one)
    return [one.id for one in jobs]


def test_tenants_take_turns_whatever_their_backlog(make) -> None:  # type: ignore[no-untyped-def]
    sched = make(dispatch_capacity=3)
    a = admit_all(sched, [job("a") for _ in range(50)])
    assert sched.release() == a[:3], "capacity 3: three of A's jobs go"
    b = admit_all(sched, [job("b")])
    assert sched.release() == [], "nothing more while the pool is full"
    assert sched.done(a[0])
    assert sched.release() == b, "B's one job is next: A was served more recently"
    assert sched.done(a[1]) and sched.release() == [a[3]]
    assert sched.waiting("a") == 46 and sched.waiting("b") == 0


def test_round_robin_between_backlogs(make) -> None:  # type: ignore[no-untyped-def]
    sched = make(dispatch_capacity=6)
    a = admit_all(sched, [job("a") for _ in range(10)])
    b = admit_all(sched, [job("b") for _ in range(10)])
    c = admit_all(sched, [job("c") for _ in range(2)])
    assert sched.release() == [a[0], b[0], c[0], a[1], b[1], c[1]]


def test_priority_orders_one_tenants_own_jobs(make) -> None:  # type: ignore[no-untyped-def]
    sched = make(dispatch_capacity=1)
    low, normal = job("a", "low"), [job("a") for _ in range(3)]
    admit_all(sched, [low, *normal])
    high = job("a", "high")
    admit_all(sched, [high])
    order = []
    while released := sched.release():
        order += released
        sched.done(released[0])
    assert order == [high.id, *(j.id for j in normal), low.id]


def test_the_running_limit_holds_a_tenant_back_not_the_others(make) -> None:  # type: ignore[no-untyped-def]
    sched = make(
        dispatch_capacity=10,
        tenant_max_running=2,
        tenant_limits={"b": TenantLimits(max_running=3)},
    )
    a = admit_all(sched, [job("a") for _ in range(5)])
    b = admit_all(sched, [job("b") for _ in range(5)])
    assert sorted(sched.release()) == sorted(a[:2] + b[:3])
    assert sched.release() == []
    sched.done(a[0])
    assert sched.release() == [a[2]]


def test_pools_have_their_own_capacity(make) -> None:  # type: ignore[no-untyped-def]
    sched = make(dispatch_capacity=1)
    local, svor = job("a", engine="local"), job("a", engine="svor")
    admit_all(sched, [local, job("a", engine="local"), svor])
    assert sorted(sched.release()) == sorted([local.id, svor.id])


def test_done_is_idempotent_and_drops_a_waiting_job(make) -> None:  # type: ignore[no-untyped-def]
    sched = make(dispatch_capacity=1)
    first, second, third = admit_all(sched, [job("a"), job("a"), job("a")])
    assert sched.release() == [first]
    assert sched.done(second) is False, "a waiting job holds no slot"
    assert sched.done(first) is True and sched.done(first) is False
    assert sched.release() == [third] and sched.holds_slot(third)
    assert not sched.admit(job("a").model_copy(update={"id": third})), "it holds a slot"


def test_capacity_follows_the_live_workers(make) -> None:  # type: ignore[no-untyped-def]
    sched = make()
    assert sched.capacity("cpu") == FALLBACK_CAPACITY
    sched.report_worker("w1", ["cpu"], 2, ttl_s=60)
    sched.report_worker("w2", ["io", "cpu"], 3, ttl_s=60)
    sched.report_worker("gone", ["cpu"], 7, ttl_s=0.05)
    time.sleep(0.1)
    assert (sched.capacity("cpu"), sched.capacity("io")) == (5, 3)


def test_queue_limit(make) -> None:  # type: ignore[no-untyped-def]
    sched = make(dispatch_capacity=1, tenant_max_queued=2)
    admit_all(sched, [job("a"), job("a"), job("a")])
    sched.release()
    with pytest.raises(TenantQueueFull) as refused:
        sched.check_room("a")
    assert refused.value.retry_after and "VOR_TENANT_MAX_QUEUED" in refused.value.message
    sched.check_room("b")
    assert sched.room("b") == 2


# ------------------------------------------------------------------ with the lifecycle


@pytest.fixture
def jobs(redis_url: str, tmp_path: Path) -> Lifecycle:
    return make_lifecycle(
        redis_url, tmp_path, dispatch_capacity=1, tenant_max_queued=2, stall_timeout_s=0.2
    )


def submit(jobs: Lifecycle, clip: SyntheticClip, tenant: str = "acme") -> str:
    spec = JobSpec.model_validate({"classes": [{"label": "a", "boxes": [clip.box(0)]}]})
    return jobs.submit(Submission(tenant=tenant, spec=spec, video=clip.path))[0].id


def test_an_ending_releases_the_next_job(jobs: Lifecycle, clip: SyntheticClip) -> None:
    first, second = submit(jobs, clip), submit(jobs, clip)
    assert [j.id for j in recording(jobs).enqueued] == [first]
    jobs.cancel(jobs.store.require(first))
    assert [j.id for j in recording(jobs).enqueued] == [first, second]


def test_a_full_queue_refuses_and_stores_nothing(jobs: Lifecycle, clip: SyntheticClip) -> None:
    ids = [submit(jobs, clip) for _ in range(3)]
    with pytest.raises(TenantQueueFull):
        submit(jobs, clip)
    assert sorted(j.id for j in jobs.store.list_jobs("acme")[0]) == sorted(ids)
    submit(jobs, clip, tenant="globex")
    jobs.delete(jobs.store.require(ids[2]))
    submit(jobs, clip)  # a deleted waiting job left the queue: there is room again


def test_a_canceled_waiting_job_is_never_enqueued(jobs: Lifecycle, clip: SyntheticClip) -> None:
    first, second, third = submit(jobs, clip), submit(jobs, clip), submit(jobs, clip)
    jobs.cancel(jobs.store.require(second))
    jobs.succeed(first, "publish", 0.1)
    assert [j.id for j in recording(jobs).enqueued] == [first, third]


def test_the_sweeper_leaves_waiting_jobs_and_returns_lost_slots(
    jobs: Lifecycle, clip: SyntheticClip
) -> None:
    first, second = submit(jobs, clip), submit(jobs, clip)
    jobs.store.start_stage(first, Stage.compress)
    # A crash between the job's ending and its slot's return: the store says ended.
    jobs.store.finish(first, Status.failed)
    time.sleep(0.3)
    report = sweeper.sweep(jobs)
    assert report.requeued == [] and report.waiting == []
    assert [j.id for j in recording(jobs).enqueued] == [first, second]
    assert jobs.scheduler.holds_slot(second) and not jobs.scheduler.holds_slot(first)


def test_a_waiting_job_is_not_stalled(jobs: Lifecycle, clip: SyntheticClip) -> None:
    first, second = submit(jobs, clip), submit(jobs, clip)
    recording(jobs).queued.add(first)
    time.sleep(0.3)
    report = sweeper.sweep(jobs)
    assert sorted(report.waiting) == sorted([first, second]), "one has a message, one waits"
    assert report.requeued == [] and len(recording(jobs).enqueued) == 1


def test_a_released_job_whose_message_was_lost_is_enqueued_again(
    jobs: Lifecycle, clip: SyntheticClip
) -> None:
    first = submit(jobs, clip)
    time.sleep(0.3)
    report = sweeper.sweep(jobs)
    assert report.requeued == [first]
    assert [(j.id, j.generation) for j in recording(jobs).enqueued] == [(first, 0), (first, 1)]
    assert jobs.scheduler.holds_slot(first), "the same slot, not a second one"


def test_a_job_stored_but_never_admitted_is_admitted_by_the_sweeper(
    jobs: Lifecycle, clip: SyntheticClip
) -> None:
    """A crash between storing a job and admitting it: the sweeper finds it stalled."""
    first = submit(jobs, clip)
    lost = job("acme")
    jobs.store.create(lost)
    time.sleep(0.3)
    recording(jobs).queued.add(first)
    report = sweeper.sweep(jobs)
    assert report.requeued == [lost.id]
    assert jobs.scheduler.waiting_among([lost.id]) == {lost.id}, "it waits its turn"
    jobs.succeed(first, "publish", 0.1)
    assert [j.id for j in recording(jobs).enqueued] == [first, lost.id]
