"""Upstream faults end to end: the real service (API, workers) against a real stand-in SVOR.

The service here is one of this module's own, on a Redis database of its own
(its workers never take the shared service's messages), with small deadlines:
a read times out after 2 s, a task may run 5 s, a call is retried 3 times.
Every fault ends in a succeeded job or a failed one with the right code, in a
bounded time, and a failed job's ``job.failed`` webhook is sent exactly once.
Jobs are segment jobs (compress, segment, publish), the shortest path through
the svor engine.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from services.cli.embedded import EmbeddedService, free_port
from services.media.synthetic import SyntheticClip, make_clip
from services.standin.process import start_standin
from tests.conftest import SVOR_KEY, api_client, service_env
from tests.helpers import accepted, wait
from tests.support.receiver import Receiver

FAULTS_DB_OFFSET = 3
"""Databases ``redis_url``'s index + 0..3 belong to this test session (see conftest)."""
TIMEOUT_S = 2.0
POLL_DEADLINE_S = 5.0
MAX_RETRIES = 3
JOB_S = 8.0
"""A generous bound on a fault-free segment job here (compress, segment, publish)."""
BACKOFF_S = 0.5 + 1.0 + 2.0
"""The most 3 retries sleep without Retry-After (full jitter under 0.5 * 2**n)."""
SEG = "sam3_prompt_seg"

pytestmark = pytest.mark.timeout(120)


class StandIn:
    """``vor svor-server`` as a process of this module, restartable with another key."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, api_key: str) -> None:
        self.proc = start_standin(self.port, self.log, "--api-key", api_key)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def set_faults(self, **faults: Any) -> None:
        """Replace every fault and zero the counters."""
        httpx.post(f"{self.url}/_faults", json=faults).raise_for_status()
        httpx.delete(f"{self.url}/_stats").raise_for_status()

    def requests(self) -> dict[str, dict[str, int]]:
        return dict(httpx.get(f"{self.url}/_stats").json()["requests"])


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    server = StandIn(tmp_path_factory.mktemp("svor-faults") / "svor.log")
    server.start(SVOR_KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def faults_redis_url(redis_url: str) -> str:
    base, _, db = redis_url.rpartition("/")
    url = f"{base}/{int(db) + FAULTS_DB_OFFSET}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def faulty(
    tmp_path_factory: pytest.TempPathFactory, faults_redis_url: str, stand_in: StandIn
) -> Iterator[httpx.Client]:
    env = service_env(
        faults_redis_url,
        stand_in.url,
        VOR_SVOR_TIMEOUT_S=str(TIMEOUT_S),
        VOR_SVOR_POLL_DEADLINE_S=str(POLL_DEADLINE_S),
        VOR_SVOR_MAX_RETRIES=str(MAX_RETRIES),
        VOR_SVOR_MAX_DURATION_S="5",
    )
    data_dir = tmp_path_factory.mktemp("vor-faults")
    with EmbeddedService(data_dir, env=env, io_threads=2) as svc, api_client(svc) as client:
        yield client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        yield rx


@pytest.fixture(autouse=True)
def _no_faults_after(stand_in: StandIn) -> Iterator[None]:
    yield
    stand_in.set_faults()


def run_job(
    client: httpx.Client, clip: SyntheticClip, receiver: Receiver
) -> tuple[dict[str, Any], float]:
    """Submit a segment job on the svor engine and wait for its end: (job, seconds)."""
    spec = {
        "mode": "segment",
        "engine": "svor",
        "classes": [{"label": "disc", "boxes": [list(clip.box(0))]}],
        "webhook_url": receiver.url,
    }
    started = time.monotonic()
    job = wait(client, accepted(client, spec, clip.path)["id"], timeout=60)
    return job, time.monotonic() - started


def assert_failed(job: dict[str, Any], code: str, receiver: Receiver) -> None:
    """Failed at segment with ``code``, and its ``job.failed`` webhook sent exactly once."""
    assert job["status"] == "failed", job
    assert (job["error"]["code"], job["error"]["stage"]) == (code, "segment"), job["error"]
    (hook,) = receiver.wait_for(1, timeout=10)
    time.sleep(0.5)
    assert len(receiver.requests) == 1, [r.body[:80] for r in receiver.requests]
    body = json.loads(hook.body)
    assert (body["type"], body["data"]["id"]) == ("job.failed", job["id"])


def assert_succeeded(job: dict[str, Any], receiver: Receiver) -> None:
    assert job["status"] == "succeeded", job
    assert [o["id"] for o in job["segments"]["disc"]["objects"]] == [1]
    (hook,) = receiver.wait_for(1, timeout=10)
    assert json.loads(hook.body)["type"] == "job.succeeded"


# --------------------------------------------------------------------------- ridden out


def test_429_burst_with_retry_after_is_waited_out_by_every_worker(
    faulty: httpx.Client,
    stand_in: StandIn,
    clip: SyntheticClip,
    receiver: Receiver,
    faults_redis_url: str,
) -> None:
    stand_in.set_faults(burst_429=2, retry_after=1, only=SEG)
    job, took = run_job(faulty, clip, receiver)
    assert_succeeded(job, receiver)
    assert stand_in.requests()[SEG] == {"429": 2, "200": 1}
    assert 2.0 <= took <= JOB_S + 2 * 1.0
    bucket = f"vor:limit:svor:127.0.0.1:{stand_in.port}:bucket"
    assert redis.Redis.from_url(faults_redis_url).hexists(bucket, "paused_until"), (
        "the Retry-After pause was not shared through Redis"
    )


def test_502_504_storm_is_ridden_out(
    faulty: httpx.Client, stand_in: StandIn, clip: SyntheticClip, receiver: Receiver
) -> None:
    stand_in.set_faults(fail_502=2, fail_504=1, only=SEG)
    job, took = run_job(faulty, clip, receiver)
    assert_succeeded(job, receiver)
    assert stand_in.requests()[SEG] == {"502": 2, "504": 1, "200": 1}
    assert took <= JOB_S + BACKOFF_S


def test_answer_hanging_past_the_read_timeout_is_retried(
    faulty: httpx.Client, stand_in: StandIn, clip: SyntheticClip, receiver: Receiver
) -> None:
    stand_in.set_faults(hang_s=TIMEOUT_S + 0.5, hang_requests=1, only=f"{SEG}/status")
    job, took = run_job(faulty, clip, receiver)
    assert_succeeded(job, receiver)
    assert TIMEOUT_S <= took <= JOB_S + TIMEOUT_S + 0.5
    deadline = time.monotonic() + 3
    while sum(stand_in.requests()[f"{SEG}/status"].values()) < 2:
        assert time.monotonic() < deadline, "the hung status poll was never retried"
        time.sleep(0.1)


def test_malformed_status_answers_are_polled_again(
    faulty: httpx.Client, stand_in: StandIn, clip: SyntheticClip, receiver: Receiver
) -> None:
    stand_in.set_faults(malformed_json=2, only=f"{SEG}/status")
    job, took = run_job(faulty, clip, receiver)
    assert_succeeded(job, receiver)
    assert took <= JOB_S + 5


# --------------------------------------------------------------------------- failed for good


def test_task_that_never_completes_fails_at_the_deadline(
    faulty: httpx.Client, stand_in: StandIn, clip: SyntheticClip, receiver: Receiver
) -> None:
    stand_in.set_faults(never_complete=True)
    job, took = run_job(faulty, clip, receiver)
    assert_failed(job, "upstream_timeout", receiver)
    assert f"within {POLL_DEADLINE_S:g} s" in job["error"]["message"]
    assert POLL_DEADLINE_S <= took <= POLL_DEADLINE_S + JOB_S


@pytest.mark.parametrize(
    ("fault", "code"),
    [("fail_502", "upstream_unavailable"), ("burst_429", "upstream_rate_limited")],
)
def test_retries_run_out(
    faulty: httpx.Client,
    stand_in: StandIn,
    clip: SyntheticClip,
    receiver: Receiver,
    fault: str,
    code: str,
) -> None:
    stand_in.set_faults(**{fault: 100}, retry_after=1, only=SEG)
    job, took = run_job(faulty, clip, receiver)
    assert_failed(job, code, receiver)
    assert f"after {MAX_RETRIES} retries" in job["error"]["message"]
    assert sum(stand_in.requests()[SEG].values()) == MAX_RETRIES + 1
    assert took <= JOB_S + MAX_RETRIES * 1.0 + BACKOFF_S


def test_failed_task_fails_the_job(
    faulty: httpx.Client, stand_in: StandIn, clip: SyntheticClip, receiver: Receiver
) -> None:
    stand_in.set_faults(fail_status=1)
    job, took = run_job(faulty, clip, receiver)
    assert_failed(job, "upstream_failed", receiver)
    assert "injected by fail_status" in job["error"]["message"]
    assert took <= JOB_S


def test_malformed_submit_answer_fails_clearly(
    faulty: httpx.Client, stand_in: StandIn, clip: SyntheticClip, receiver: Receiver
) -> None:
    stand_in.set_faults(malformed_json=1, only=SEG)
    job, took = run_job(faulty, clip, receiver)
    assert_failed(job, "upstream_failed", receiver)
    assert "malformed JSON" in job["error"]["message"]
    assert took <= JOB_S


def test_bad_request_is_never_retried(
    faulty: httpx.Client,
    stand_in: StandIn,
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    long = make_clip(tmp_path_factory.mktemp("long") / "four_s.mp4", frames=48, fps=12)
    stand_in.set_faults()
    job, took = run_job(faulty, long, receiver)
    assert_failed(job, "upstream_bad_request", receiver)
    assert "at most 3 s" in job["error"]["message"]
    assert stand_in.requests() == {SEG: {"400": 1}}
    assert took <= JOB_S


def test_wrong_key_fails_at_once_without_retries(
    faulty: httpx.Client, stand_in: StandIn, clip: SyntheticClip, receiver: Receiver
) -> None:
    stand_in.stop()
    stand_in.start(api_key="another-key")
    try:
        job, took = run_job(faulty, clip, receiver)
        assert_failed(job, "upstream_auth", receiver)
        assert "SVOR_API_KEY" in job["error"]["message"]
        assert stand_in.requests() == {SEG: {"403": 1}}
        assert took <= JOB_S
    finally:
        stand_in.stop()
        stand_in.start(api_key=SVOR_KEY)
