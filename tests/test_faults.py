"""The fault-injection suite: real processes, broken on purpose; every job still ends.

A service of its own (embedded Redis with AOF, one CPU worker, one I/O worker)
idles ``DELAY`` seconds at the start of every stage, so a test can break
things while a given stage runs. Heartbeats and sweeps are fast here so a
lost worker is noticed in seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from services.cli.embedded import EmbeddedService
from services.cli.processes import kill_tree
from services.media.synthetic import SyntheticClip, make_clip
from services.media.video import probe
from tests.conftest import api_client, service_env
from tests.helpers import accepted, wait, wait_for_stage
from tests.support.receiver import Receiver

DELAY = 1.0
STAGES = ["compress", "segment", "mask_convert", "merge", "erase", "publish"]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory, svor_server: str) -> Iterator[EmbeddedService]:
    env = service_env(
        "",
        svor_server,
        VOR_DEBUG_STAGE_DELAYS=",".join(f"{s}:{DELAY}" for s in STAGES),
        VOR_HEARTBEAT_S="0.5",
        VOR_STALL_TIMEOUT_S="3",
        VOR_SWEEP_INTERVAL_S="1",
        VOR_WEBHOOK_MAX_ATTEMPTS="4",
        VOR_DEBUG_CRASH_LABEL="poison",
    )
    env.pop("VOR_REDIS_URL")
    with EmbeddedService(tmp_path_factory.mktemp("faulty"), env=env, io_threads=4) as service:
        yield service


@pytest.fixture
def client(faulty: EmbeddedService) -> Iterator[httpx.Client]:
    with api_client(faulty) as http:
        yield http


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    return make_clip(tmp_path_factory.mktemp("clips") / "small.mp4", frames=12, audio=True)


def spec_for(clip: SyntheticClip, **extra: object) -> dict[str, object]:
    return {"classes": [{"label": "disc", "boxes": [clip.box(0)]}], **extra}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage", STAGES)
def test_kill_9_of_the_worker_during_a_stage(
    faulty: EmbeddedService,
    client: httpx.Client,
    small: SyntheticClip,
    stage: str,
    tmp_path: Path,
) -> None:
    """The whole worker (main process and pool) dies; the job is run again and succeeds once."""
    with Receiver() as receiver:
        job = accepted(client, spec_for(small, webhook_url=receiver.url), small.path)
        wait_for_stage(client, job["id"], stage)
        worker = faulty.processes["worker-cpu"]
        kill_tree(worker.pid)
        worker.wait(10)
        faulty.restart("worker-cpu")
        final = wait(client, job["id"], timeout=90)
        assert final["status"] == "succeeded", final
        key = "segment:disc" if stage == "segment" else stage
        assert final["runs"][key] == 2, final["runs"]
        result = client.get(final["result"]["video_url"])
        (tmp_path / "r.mp4").write_bytes(result.content)
        assert probe(tmp_path / "r.mp4").frames == 12
        receiver.wait_for(1, timeout=30)
        time.sleep(0.5)  # room for a duplicate delivery, which the next lines would catch
        events = [json.loads(r.body) for r in receiver.requests]
        assert [e["type"] for e in events].count("job.succeeded") >= 1
        ids = {r.headers["webhook-id"] for r in receiver.requests}
        assert len(ids) == 1, "receivers deduplicate by webhook-id"


@pytest.mark.timeout(120)
def test_redis_restart_mid_job(
    faulty: EmbeddedService, client: httpx.Client, small: SyntheticClip
) -> None:
    job = accepted(client, spec_for(small), small.path)
    queued = accepted(client, spec_for(small), small.path)
    wait_for_stage(client, job["id"], "erase")
    faulty.redis.terminate()
    faulty.redis.wait(15)
    answers = [client.get(f"/v1/jobs/{job['id']}") for _ in range(3)]
    assert {r.status_code for r in answers} == {503}
    assert all(r.headers["retry-after"] for r in answers)
    assert answers[0].json()["error"]["code"] == "unavailable"
    submit = client.post("/v1/jobs", data={"spec": json.dumps(spec_for(small))},
                         files={"video": ("a.mp4", small.path.read_bytes())})  # fmt: skip
    assert submit.status_code == 503
    time.sleep(2)
    from services.cli.embedded import start_redis

    assert faulty.redis_port is not None
    faulty.redis = start_redis(faulty.data_dir / "redis", faulty.redis_port)
    for job_id in (job["id"], queued["id"]):
        final = wait(client, job_id, timeout=90)
        assert final["status"] == "succeeded", final
    after = wait(client, accepted(client, spec_for(small), small.path)["id"], timeout=60)
    assert after["status"] == "succeeded", "workers keep consuming after Redis came back"


@pytest.mark.timeout(120)
def test_poison_input_is_tried_a_bounded_number_of_times(
    client: httpx.Client, small: SyntheticClip
) -> None:
    spec = {"classes": [{"label": "poison", "boxes": [small.box(0)]}]}
    final = wait(client, accepted(client, spec, small.path)["id"], timeout=100)
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "worker_crashed"
    assert final["error"]["stage"] == "segment"
    assert final["runs"]["segment:poison"] == 4, "three runs that died, then the refusal"
    after = wait(client, accepted(client, spec_for(small), small.path)["id"], timeout=60)
    assert after["status"] == "succeeded", "the queue goes on"


@pytest.mark.timeout(120)
def test_webhook_receiver_down_then_redelivered(client: httpx.Client, small: SyntheticClip) -> None:
    from services.cli.embedded import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    job = wait(client, accepted(client, spec_for(small, webhook_url=url), small.path)["id"])
    assert job["status"] == "succeeded"
    deadline = time.monotonic() + 30
    while (seen := client.get(f"/v1/jobs/{job['id']}").json())["webhook_state"].get(
        "job.succeeded"
    ) != "failed":
        assert time.monotonic() < deadline, seen["webhooks"]
        time.sleep(0.2)
    attempts = [w for w in seen["webhooks"] if w["event"] == "job.succeeded"]
    assert len(attempts) == 4 and not any(w["ok"] for w in attempts)
    gaps = [
        (datetime.fromisoformat(b["at"]) - datetime.fromisoformat(a["at"])).total_seconds()
        for a, b in zip(attempts, attempts[1:], strict=False)
    ]
    assert gaps == sorted(gaps), f"backoff grows: {gaps}"
    with Receiver(port=port) as receiver:
        response = client.post(f"/v1/jobs/{job['id']}/webhooks/redeliver")
        assert response.status_code == 202
        delivered = receiver.wait_for(1, timeout=20)
        assert json.loads(delivered[0].body)["type"] == "job.succeeded"
        assert delivered[0].headers["webhook-id"] == attempts[0]["webhook_id"]
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["webhook_state"]["job.succeeded"] == "delivered"
