"""Fair sharing, priority, per-tenant limits and ``Prefer: wait`` with real workers.

vor runs as an operator runs it (``vor api``, a cpu worker of one process, an io
worker), on an embedded Redis of its own. The cpu worker reports one slot, so one
local job runs at a time: a backlog is as long as it can be. Each erase idles
``DELAY`` s, so a job's run time is well above the noise of a shared machine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest
import redis

from api.routes.jobs import preferred_wait
from services.cli.embedded import EmbeddedService
from services.cli.processes import kill_tree
from services.media.synthetic import SyntheticClip, make_clip
from tests.conftest import API_KEYS, service_env
from tests.helpers import TERMINAL, accepted, submit, wait, wait_for_stage

DELAY = 0.4
BACKLOG = 200
KEYS = {**API_KEYS, "initech": "key-initech"}


@pytest.fixture(scope="module")
def fair(tmp_path_factory: pytest.TempPathFactory, svor_server: str) -> Iterator[EmbeddedService]:
    env = service_env(
        "",
        svor_server,
        VOR_API_KEYS=",".join(f"{t}:{k}" for t, k in KEYS.items()),
        VOR_TENANT_LIMITS=json.dumps({"initech": {"max_queued": 2}}),
        VOR_DEBUG_STAGE_DELAYS=f"erase:{DELAY}",
        VOR_HEARTBEAT_S="0.5",
        VOR_STALL_TIMEOUT_S="3",
        VOR_SWEEP_INTERVAL_S="1",
    )
    env.pop("VOR_REDIS_URL")
    with EmbeddedService(tmp_path_factory.mktemp("fair"), env=env, io_threads=2) as service:
        workers = redis.Redis.from_url(service.env["VOR_REDIS_URL"])
        deadline = time.monotonic() + 30
        while workers.zcard("vor:sched:workers") < 2:
            assert time.monotonic() < deadline, "the workers never reported their slots"
            time.sleep(0.1)
        yield service
        broker = redis.Redis.from_url(service.broker_url)
        deadline = time.monotonic() + 10
        while (
            broker.zcount("unacked_index", time.time() - 5, "+inf") and time.monotonic() < deadline
        ):
            time.sleep(0.1)  # a task still returning would hold the workers' soft shutdown


def client_of(service: EmbeddedService, tenant: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {KEYS[tenant]}"}
    return httpx.Client(base_url=service.url, headers=headers, timeout=70)


@pytest.fixture
def acme(fair: EmbeddedService) -> Iterator[httpx.Client]:
    with client_of(fair, "acme") as http:
        yield http


@pytest.fixture
def globex(fair: EmbeddedService) -> Iterator[httpx.Client]:
    with client_of(fair, "globex") as http:
        yield http


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    return make_clip(tmp_path_factory.mktemp("clips") / "tiny.mp4", width=64, height=48, frames=4)


def spec(clip: SyntheticClip, **extra: object) -> dict[str, Any]:
    return {"engine": "local", "classes": [{"label": "d", "boxes": [clip.box(0)]}], **extra}


def at(job: dict[str, Any], field: str) -> float:
    return datetime.fromisoformat(job[field]).timestamp()


def jobs_of(client: httpx.Client, ids: list[str]) -> list[dict[str, Any]]:
    return [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]


def sched(service: EmbeddedService) -> dict[str, int]:
    """What the scheduler holds now: released jobs per pool and waiting jobs."""
    client = redis.Redis.from_url(service.env["VOR_REDIS_URL"])
    found = {pool: int(client.hlen(f"vor:sched:running:{pool}")) for pool in ("cpu", "io")}
    found["waiting"] = sum(int(client.zcard(k)) for k in client.scan_iter("vor:sched:wait:*"))
    return found


def until_idle(service: EmbeddedService, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (held := sched(service)) != {"cpu": 0, "io": 0, "waiting": 0}:
        assert time.monotonic() < deadline, f"slots never came back: {held}"
        time.sleep(0.2)


@pytest.mark.timeout(150)
def test_a_backlog_does_not_delay_another_tenant(
    fair: EmbeddedService, acme: httpx.Client, globex: httpx.Client, tiny: SyntheticClip
) -> None:
    """A queues 200 jobs; B's one job starts within one running job's time and ends
    long before A's backlog; then A's high-priority job overtakes A's queued ones."""
    with ThreadPoolExecutor(4) as pool:
        backlog = list(pool.map(lambda _: accepted(acme, spec(tiny), tiny.path)["id"],
                                range(BACKLOG)))  # fmt: skip
    scrape = httpx.get(f"{fair.url}/metrics").text
    waiting = next(line for line in scrape.splitlines()
                   if line.startswith('vor_admission_waiting{pool="cpu"}'))  # fmt: skip
    assert float(waiting.split()[-1]) > BACKLOG * 0.8, waiting
    assert 'vor_admission_capacity{pool="cpu"} 1.0' in scrape
    b = accepted(globex, spec(tiny), tiny.path)
    high = accepted(acme, spec(tiny, priority="high"), tiny.path)
    b_done = wait(globex, b["id"], timeout=60)
    high_done = wait(acme, high["id"], timeout=60)
    a_jobs = jobs_of(acme, backlog)
    ran = [j for j in a_jobs if j["finished_at"] and j["started_at"]]
    longest = max(at(j, "finished_at") - at(j, "started_at") for j in ran)
    assert b_done["status"] == high_done["status"] == "succeeded"
    b_queued, b_started = at(b_done, "created_at"), at(b_done, "started_at")
    ahead_of_b = [j for j in ran if b_queued < at(j, "started_at") < b_started]
    assert len(ahead_of_b) <= 1, f"{len(ahead_of_b)} of A's jobs started while B waited"
    b_wait = b_started - b_queued
    assert b_wait <= longest + 2.0, f"B waited {b_wait:.2f} s; one A job took {longest:.2f} s"
    assert sum(j["status"] not in TERMINAL for j in a_jobs) > BACKLOG * 0.8, "A's backlog is on"
    overtaken = [j for j in a_jobs if j["status"] == "queued"]
    assert overtaken and all(j["started_at"] is None for j in overtaken)
    jumped = [j for j in ran if at(high_done, "created_at") < at(j, "started_at")]
    assert all(at(j, "started_at") > at(high_done, "started_at") for j in jumped), jumped
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda job_id: acme.delete(f"/v1/jobs/{job_id}"), backlog))
    until_idle(fair)


@pytest.mark.timeout(60)
def test_the_queued_limit_answers_429(fair: EmbeddedService, tiny: SyntheticClip) -> None:
    with client_of(fair, "initech") as initech:
        answers = [submit(initech, spec(tiny), tiny.path) for _ in range(8)]
        statuses = [r.status_code for r in answers]
        assert 429 in statuses, statuses
        refused = answers[statuses.index(429)]
        # One job runs (the pool has one slot), two wait: the next is refused, unless
        # the first ended meanwhile on a slow machine.
        assert set(statuses[: statuses.index(429)]) == {202}, statuses
        assert statuses.index(429) >= 3, statuses
        assert int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["code"] == "tenant_queue_full" and "VOR_TENANT_MAX_QUEUED" in error["message"]
        stored = initech.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
        assert len(stored) == statuses.count(202), "nothing of a refused job is stored"
        for job in stored:
            wait(initech, job["id"], timeout=30)
    until_idle(fair)


@pytest.mark.timeout(90)
def test_prefer_wait(
    fair: EmbeddedService, acme: httpx.Client, globex: httpx.Client, tiny: SyntheticClip
) -> None:
    done = submit(acme, spec(tiny), tiny.path, headers={"Prefer": "wait=50"})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "succeeded" and done.headers["preference-applied"] == "wait=50"
    ahead = [accepted(globex, spec(tiny), tiny.path)["id"] for _ in range(4)]
    began = time.monotonic()
    late = submit(acme, spec(tiny), tiny.path, headers={"Prefer": "respond-async, wait=1"})
    assert late.status_code == 202 and late.json()["status"] in ("queued", "running")
    assert 0.9 <= time.monotonic() - began < 5 and late.headers["preference-applied"] == "wait=1"
    plain = submit(acme, spec(tiny), tiny.path, headers={"Prefer": "wait=soon"})
    assert plain.status_code == 202 and "preference-applied" not in plain.headers
    for job_id in [*ahead, late.json()["id"], plain.json()["id"]]:
        wait(acme if job_id not in ahead else globex, job_id, timeout=60)
    until_idle(fair)


@pytest.mark.timeout(120)
def test_kill_9_of_the_workers_loses_no_job_and_no_slot(
    fair: EmbeddedService, acme: httpx.Client, globex: httpx.Client, tiny: SyntheticClip
) -> None:
    owned = [(acme, accepted(acme, spec(tiny), tiny.path)["id"]) for _ in range(4)]
    owned += [(globex, accepted(globex, spec(tiny), tiny.path)["id"]) for _ in range(2)]
    wait_for_stage(acme, owned[0][1], "erase")
    assert sched(fair)["waiting"] >= 3, "jobs wait in admission while one runs"
    for name in ("worker-cpu", "worker-io"):
        kill_tree(fair.processes[name].pid)
        fair.processes[name].wait(10)
    time.sleep(0.5)
    for name in ("worker-cpu", "worker-io"):
        fair.restart(name)
    ended = [wait(client, job_id, timeout=90) for client, job_id in owned]
    assert [j["status"] for j in ended] == ["succeeded"] * len(owned), ended
    assert ended[0]["runs"]["erase"] == 2, ended[0]["runs"]
    until_idle(fair)
    again = submit(acme, spec(tiny), tiny.path, headers={"Prefer": "wait=50"})
    assert again.status_code == 200 and again.json()["status"] == "succeeded"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait=5", 5),
        ("respond-async, wait=3", 3),
        ("handling=lenient, WAIT = 2", 2),
        ('wait="7"', 7),
        ("wait=600", 60),
        ("wait=0", 0),
        ("wait=soon", None),
        ("wait=-1", None),
        ("wait=١", None),
        ("respond-async", None),
        (None, None),
    ],
)
def test_prefer_header_is_read_as_rfc_7240_says(header: str | None, seconds: int | None) -> None:
    assert preferred_wait(header) == seconds
