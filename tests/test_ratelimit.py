"""The upstream limiter against the real Redis, alone and inside ``SvorClient``.

Each test has a key prefix of its own. Where a test needs no wall time, a fake
clock drives both the limiter and the client; the tests that show the limit
holding across threads, processes and a killed worker use Redis's own clock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.engines.svor.engine import SvorClient, engine_from_settings
from services.engines.svor.ratelimit import LimiterWaitTooLong, UpstreamLimiter
from services.errors import UpstreamRateLimited
from services.settings import Settings
from services.standin.server import create_app, serve_in_thread

ROOT = Path(__file__).resolve().parents[1]
SEG_STATUS = "/customize/xiaomi-ev/video_obj_removal/customize/v1/videos/sam3_prompt_seg/status/x"

CHILD = """
import sys, time, redis
from services.engines.svor.ratelimit import UpstreamLimiter
url, prefix, mode, n, rate = sys.argv[1:6]
r = redis.Redis.from_url(url)
limiter = UpstreamLimiter(r, "up", rate_per_s=float(rate), burst=1,
                          max_concurrency=1 if mode == "hold" else 0, lease_s=0.6,
                          key_prefix=prefix)
r.incr(prefix + "ready")
while not r.exists(prefix + "go"):
    time.sleep(0.005)
for _ in range(int(n)):
    limiter.acquire()
    print(time.time(), flush=True)
if mode == "hold":
    time.sleep(60)
"""


class FakeTime:
    """A clock that moves only when slept on (and really sleeps a hundredth of it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        time.sleep(min(0.01, seconds / 100))


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"test-limit-{uuid.uuid4().hex[:8]}:"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{name}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def rdb(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    with serve_in_thread(create_app()) as url:
        yield url


def limiter(rdb: redis.Redis, prefix: str, **kwargs: Any) -> UpstreamLimiter:
    return UpstreamLimiter(rdb, "up", key_prefix=prefix, **kwargs)


def children(redis_url: str, prefix: str, mode: str, count: int, n: int, rate: float) -> list[Any]:
    """``count`` processes, each with a limiter of its own, held back until ``prefix + 'go'``."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, redis_url, prefix, mode, str(n), str(rate)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )  # fmt: skip
        for _ in range(count)
    ]
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 20
    while int(client.get(prefix + "ready") or 0) < count:  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "limiter child processes did not start"
        time.sleep(0.01)
    return procs


# --------------------------------------------------------------------------- the bucket


def test_bucket_lets_a_burst_through_then_the_rate(rdb: redis.Redis, prefix: str) -> None:
    fake = FakeTime()
    lim = limiter(rdb, prefix, rate_per_s=4, burst=2, clock=fake.clock)
    assert [lim.try_acquire()[2] for _ in range(2)] == ["granted", "granted"]
    lease, wait, reason = lim.try_acquire()
    assert lease is None and reason == "rate" and wait == pytest.approx(0.25)
    started = fake.now
    for _ in range(8):
        lim.acquire(fake.sleep)
    assert fake.now - started == pytest.approx(8 / 4)


@pytest.mark.timeout(30)
def test_rate_holds_across_threads_and_processes(
    redis_url: str, rdb: redis.Redis, prefix: str
) -> None:
    rate, per_worker = 20.0, 5
    procs = children(redis_url, prefix, "rate", 2, per_worker, rate)
    lim = limiter(rdb, prefix, rate_per_s=rate, burst=1)
    granted: list[float] = []
    lock = threading.Lock()

    def thread() -> None:
        for _ in range(per_worker):
            lim.acquire()
            with lock:
                granted.append(time.time())

    threads = [threading.Thread(target=thread) for _ in range(2)]
    rdb.set(prefix + "go", 1)
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    for proc in procs:
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        granted += [float(line) for line in out.split()]

    times = sorted(granted)
    assert len(times) == 4 * per_worker
    span = times[-1] - times[0]
    assert (len(times) - 1) / rate - 0.05 <= span <= 3 * len(times) / rate
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            in_window = j - i + 1
            assert in_window <= 1 + (times[j] - times[i]) * rate + 1, (i, j, times)


# --------------------------------------------------------------------------- the semaphore


def test_slots_cap_calls_in_flight_until_released(rdb: redis.Redis, prefix: str) -> None:
    fake = FakeTime()
    lim = limiter(rdb, prefix, max_concurrency=2, lease_s=30, clock=fake.clock)
    first, second = lim.acquire(fake.sleep), lim.acquire(fake.sleep)
    lease, wait, reason = lim.try_acquire()
    assert lease is None and reason == "slots" and 0 < wait <= 0.05
    first.release()
    with lim.acquire(fake.sleep) as third:
        assert third.waited_s == 0
        assert lim.try_acquire()[2] == "slots"
    assert rdb.zcard(lim.slots_key) == 1
    second.release()
    assert rdb.zcard(lim.slots_key) == 0


@pytest.mark.timeout(30)
def test_slot_of_a_killed_worker_comes_back_when_its_lease_ends(
    redis_url: str, rdb: redis.Redis, prefix: str
) -> None:
    (proc,) = children(redis_url, prefix, "hold", 1, 1, 0.0)
    rdb.set(prefix + "go", 1)
    assert proc.stdout is not None
    held_at = float(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    lim = limiter(rdb, prefix, max_concurrency=1, lease_s=0.6)
    assert lim.try_acquire()[2] == "slots"
    lease = lim.acquire(max_wait_s=5)
    got_at = time.time()
    lease.release()
    assert 0.5 <= got_at - held_at <= 2.0
    assert lease.waited_s > 0


# --------------------------------------------------------------------------- pauses


def test_pause_holds_every_worker_and_is_never_shortened(redis_url: str, prefix: str) -> None:
    fake = FakeTime()
    one, other = (
        limiter(redis.Redis.from_url(redis_url), prefix, rate_per_s=10, clock=fake.clock)
        for _ in range(2)
    )
    assert one.pause(7) == pytest.approx(7)
    assert other.pause(2) == pytest.approx(7)
    lease, wait, reason = other.try_acquire()
    assert lease is None and reason == "paused" and wait == pytest.approx(7)
    lease = other.acquire(fake.sleep)
    assert lease.waited_s == pytest.approx(7)
    assert one.try_acquire()[2] == "rate"


def test_wait_longer_than_allowed_is_refused_at_once(rdb: redis.Redis, prefix: str) -> None:
    fake = FakeTime()
    lim = limiter(rdb, prefix, rate_per_s=1, clock=fake.clock)
    lim.pause(100)
    with pytest.raises(LimiterWaitTooLong, match="paused"):
        lim.acquire(fake.sleep, max_wait_s=10)
    assert fake.sleeps == []


def test_redis_down_lets_calls_through() -> None:
    dead = redis.Redis(host="127.0.0.1", port=9, socket_connect_timeout=0.5)
    lim = UpstreamLimiter(dead, "up", rate_per_s=1, max_concurrency=1)
    leases = [lim.acquire(max_wait_s=0) for _ in range(3)]
    assert all(lease.waited_s == 0 for lease in leases)
    assert lim.pause(5) == 0.0
    leases[0].release()


# --------------------------------------------------------------------------- inside SvorClient


def client_with(url: str, lim: UpstreamLimiter, fake: FakeTime, **kwargs: Any) -> SvorClient:
    return SvorClient(
        httpx.Client(timeout=5),
        base_url=url,
        api_key=None,
        clock=fake.clock,
        sleep=fake.sleep,
        limiter=lim,
        **kwargs,
    )


def test_client_waits_for_the_shared_rate_on_its_own_clock(
    stand_in: str, rdb: redis.Redis, prefix: str
) -> None:
    fake = FakeTime()
    client = client_with(stand_in, limiter(rdb, prefix, rate_per_s=2, clock=fake.clock), fake)
    started = time.monotonic()
    for _ in range(6):
        client.request("GET", "/_stats")
    assert client.stats["limiter_wait_s"] == pytest.approx((6 - 2) / 2)
    assert time.monotonic() - started < 2


def test_retry_after_pauses_every_client(stand_in: str, redis_url: str, prefix: str) -> None:
    httpx.post(f"{stand_in}/_faults", json={"burst_429": 1, "retry_after": 7}).raise_for_status()
    httpx.delete(f"{stand_in}/_stats").raise_for_status()
    fake = FakeTime()
    first, second = (
        client_with(
            stand_in,
            limiter(redis.Redis.from_url(redis_url), prefix, rate_per_s=50, clock=fake.clock),
            fake,
            max_retries=0,
        )
        for _ in range(2)
    )
    with pytest.raises(UpstreamRateLimited, match="after 0 retries"):
        first.request("GET", SEG_STATUS)
    second.request("GET", "/_stats")
    assert second.stats["limiter_wait_s"] == pytest.approx(7)
    assert second.stats["retries"] == {}
    requests = httpx.get(f"{stand_in}/_stats").json()["requests"]
    assert requests == {"sam3_prompt_seg/status": {"429": 1}}
    httpx.post(f"{stand_in}/_faults", json={}).raise_for_status()


def test_limiter_wait_over_the_deadline_fails_without_calling(
    stand_in: str, rdb: redis.Redis, prefix: str
) -> None:
    httpx.delete(f"{stand_in}/_stats").raise_for_status()
    fake = FakeTime()
    lim = limiter(rdb, prefix, rate_per_s=5, clock=fake.clock)
    lim.pause(120)
    client = client_with(stand_in, lim, fake, poll_deadline_s=30)
    with pytest.raises(UpstreamRateLimited, match="shared limit"):
        client.request("GET", SEG_STATUS)
    assert httpx.get(f"{stand_in}/_stats").json()["requests"] == {}


def test_engine_from_settings_wires_the_shared_limiter(rdb: redis.Redis) -> None:
    base = Settings(svor_base_url="http://127.0.0.1:8090", svor_timeout_s=10)
    on = base.model_copy(update={"svor_rate_limit_per_s": 3, "svor_max_concurrency": 2})
    lim = engine_from_settings(on, redis_client=rdb).client.limiter
    assert lim is not None and lim.redis is rdb
    assert (lim.rate_per_s, lim.burst, lim.max_concurrency, lim.lease_s) == (3, 3, 2, 50)
    assert lim.bucket_key == "vor:limit:svor:127.0.0.1:8090:bucket"
    off = base.model_copy(update={"svor_rate_limit_per_s": 0, "svor_max_concurrency": 0})
    assert engine_from_settings(off, redis_client=rdb).client.limiter is None
