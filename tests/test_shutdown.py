"""SIGTERM during a long stage: the worker stops soon and the stage's message is back at once."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator

import pytest
import redis

from services.cli.embedded import EmbeddedService
from services.media.synthetic import make_clip
from tests.conftest import api_client, service_env
from tests.helpers import accepted, wait, wait_for_stage

LONG_ERASE_S = 12.0
SOFT_SHUTDOWN_S = 2.0


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory, svor_server: str) -> Iterator[EmbeddedService]:
    env = service_env(
        "",
        svor_server,
        VOR_DEBUG_STAGE_DELAYS=f"erase:{LONG_ERASE_S}",
        VOR_SOFT_SHUTDOWN_S=str(SOFT_SHUTDOWN_S),
        VOR_HEARTBEAT_S="0.5",
    )
    env.pop("VOR_REDIS_URL")
    with EmbeddedService(tmp_path_factory.mktemp("slow"), env=env) as service:
        yield service


@pytest.mark.timeout(150)
def test_sigterm_mid_stage_hands_the_message_back_at_once(
    slow: EmbeddedService, tmp_path_factory: pytest.TempPathFactory
) -> None:
    clip = make_clip(tmp_path_factory.mktemp("c") / "c.mp4", frames=8)
    client = api_client(slow)
    spec = {"classes": [{"label": "disc", "boxes": [clip.box(0)]}]}
    job = accepted(client, spec, clip.path)
    wait_for_stage(client, job["id"], "erase")
    broker = redis.Redis.from_url(slow.env["VOR_BROKER_URL"])
    worker = slow.processes["worker-cpu"]
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=LONG_ERASE_S)
    stopped_after = time.monotonic() - began
    assert stopped_after < LONG_ERASE_S / 2, f"the worker took {stopped_after:.1f} s to stop"
    waiting = [json.loads(m) for m in broker.lrange("cpu", 0, -1)]
    assert any(job["id"] in m["headers"]["argsrepr"] for m in waiting), (
        "the erase message is back in its queue, not hidden until the visibility timeout"
    )
    slow.restart("worker-cpu")
    final = wait(client, job["id"], timeout=90)
    assert final["status"] == "succeeded", final
    assert final["runs"]["erase"] == 2
