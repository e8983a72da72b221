"""The stage lease: one running copy of a stage, and a heartbeat while it runs."""

from __future__ import annotations

import time

import redis

from services.jobs.lease import StageLease
from services.jobs.store import JobStore


def test_one_copy_holds_the_lease_and_its_heartbeat_keeps_it(redis_url: str) -> None:
    store = JobStore(redis.Redis.from_url(redis_url), prefix="t-lease")
    store.redis.zadd(store._key("active"), {"job_a": 0})
    with StageLease(store, "job_a", "erase", heartbeat_s=0.2) as first:
        assert first.acquire()
        with StageLease(store, "job_a", "erase", heartbeat_s=0.2) as second:
            assert not second.acquire()
        time.sleep(0.8)
        assert store.has_live_lease("job_a"), "renewed past its 0.6 s TTL"
        beat = store.redis.zscore(store._key("active"), "job_a")
        assert beat is not None and time.time() - beat < 0.5, "the job is touched"
    assert not store.has_live_lease("job_a")
    with StageLease(store, "job_a", "erase", heartbeat_s=0.2) as third:
        assert third.acquire()
