"""Traps that have bitten Celery + Redis users, each set off on purpose.

One service of its own with a tiny visibility timeout (3 s), an erase stage
that outlives it, a stage time limit, and a broker on a Redis database apart
from the job store, so the broker can lose everything while the jobs survive.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from services.cli.embedded import EmbeddedService
from services.media.synthetic import SyntheticClip, make_clip
from tests.conftest import api_client, service_env
from tests.helpers import accepted, wait, wait_for_stage
from tests.support.receiver import Receiver

VISIBILITY_S = 3


@pytest.fixture(scope="module")
def trap(tmp_path_factory: pytest.TempPathFactory, svor_server: str) -> Iterator[EmbeddedService]:
    env = service_env(
        "",
        svor_server,
        VOR_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
        VOR_DEBUG_STAGE_DELAYS=f"erase:{VISIBILITY_S * 2.5}",
        VOR_DEBUG_TRANSIENT_ONCE=f"merge:{VISIBILITY_S * 2}",
        VOR_HEARTBEAT_S="0.5",
        VOR_STALL_TIMEOUT_S="3",
        VOR_SWEEP_INTERVAL_S="1",
        VOR_SOFT_SHUTDOWN_S="2",
    )
    env.pop("VOR_REDIS_URL")
    with EmbeddedService(tmp_path_factory.mktemp("trap"), env=env, workers=2) as service:
        yield service


@pytest.fixture
def client(trap: EmbeddedService) -> Iterator[httpx.Client]:
    with api_client(trap) as http:
        yield http


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    return make_clip(tmp_path_factory.mktemp("clips") / "small.mp4", frames=8)


def spec_for(clip: SyntheticClip) -> dict[str, object]:
    return {"classes": [{"label": "disc", "boxes": [clip.box(0)]}]}


@pytest.mark.timeout(120)
def test_stage_and_countdown_longer_than_visibility_timeout_run_once(
    client: httpx.Client, small: SyntheticClip
) -> None:
    """Redis redelivers the erase message (and the merge retry held for its ETA) while the
    first copy still runs or waits: the lease and the done markers keep it to one run."""
    job = wait(client, accepted(client, spec_for(small), small.path)["id"], timeout=100)
    assert job["status"] == "succeeded", job
    assert job["runs"]["erase"] == 1, job["runs"]
    assert job["runs"]["merge"] == 2, "the injected transient failure, then the retry"
    assert job["timings"]["erase"] >= VISIBILITY_S * 2.5


@pytest.mark.timeout(120)
def test_cancel_mid_stage_stops_the_work_and_frees_its_files(
    trap: EmbeddedService, client: httpx.Client, small: SyntheticClip
) -> None:
    job = accepted(client, spec_for(small), small.path)
    wait_for_stage(client, job["id"], "erase")
    scratch = trap.data_dir / "work" / job["id"]
    assert scratch.exists()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    deadline = time.monotonic() + 5
    while scratch.exists():
        assert time.monotonic() < deadline, "the canceled stage kept its files"
        time.sleep(0.1)
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "canceled" and final["result"] == {}


@pytest.mark.timeout(120)
def test_delete_mid_stage_cancels_as_cancel_does(
    trap: EmbeddedService, client: httpx.Client, small: SyntheticClip
) -> None:
    """DELETE of a running job stops it like cancel: its scratch files go and its
    ``job.canceled`` webhook is sent (from the job as it was: it is gone from the store)."""
    with Receiver() as receiver:
        spec = {**spec_for(small), "webhook_url": receiver.url}
        job = accepted(client, spec, small.path)
        wait_for_stage(client, job["id"], "erase")
        scratch = trap.data_dir / "work" / job["id"]
        assert scratch.exists()
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
        (hook,) = receiver.wait_for(1, timeout=20)
        body = json.loads(hook.body)
        assert (body["type"], body["data"]["id"]) == ("job.canceled", job["id"])
        assert body["data"]["status"] == "canceled"
        deadline = time.monotonic() + 5
        while scratch.exists():
            assert time.monotonic() < deadline, "the deleted job's stage kept its files"
            time.sleep(0.1)
        assert not (trap.data_dir / "storage" / "jobs" / job["id"]).exists()
        time.sleep(1)
        assert len(receiver.requests) == 1


@pytest.mark.timeout(150)
def test_broker_losing_everything_is_reconciled(
    trap: EmbeddedService, client: httpx.Client, small: SyntheticClip
) -> None:
    trap.processes["worker-cpu"].terminate()
    trap.processes["worker-cpu"].wait(30)
    jobs = [accepted(client, spec_for(small), small.path)["id"] for _ in range(3)]
    broker = redis.Redis.from_url(trap.env["VOR_BROKER_URL"])
    assert broker.llen("cpu") >= 3
    broker.flushdb()
    trap.restart("worker-cpu")
    for job_id in jobs:
        final = wait(client, job_id, timeout=120)
        assert final["status"] == "succeeded", final


def test_no_files_left_behind(trap: EmbeddedService, client: httpx.Client) -> None:
    jobs = client.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
    assert jobs and all(j["status"] in {"succeeded", "failed", "canceled"} for j in jobs)
    work = trap.data_dir / "work"
    left = [p.name for p in work.iterdir()] if work.exists() else []
    assert left == [], f"scratch files of finished jobs: {left}"
    uploads = trap.data_dir / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
