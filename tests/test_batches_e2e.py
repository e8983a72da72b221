"""Batches end to end: the API, real workers, a real Redis, clips served on loopback,
and a webhook receiver that checks ``batch.completed``'s signature.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from services.cli.embedded import EmbeddedService
from services.cli.processes import kill_tree
from services.media.synthetic import SyntheticClip, make_clip
from services.media.video import probe
from tests.conftest import API_KEYS, WEBHOOK_SECRET, api_client, service_env
from tests.support.files import FileServer
from tests.support.receiver import Receiver


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    """64x48, 6 frames: the cheapest clip a job can run on."""
    return make_clip(
        tmp_path_factory.mktemp("batch-clips") / "tiny.mp4", width=64, height=48, frames=6
    )


@pytest.fixture(scope="module")
def files(tiny: SyntheticClip) -> Iterator[FileServer]:
    with FileServer(tiny.path.parent) as server:
        yield server


def shared_spec(clip: SyntheticClip) -> dict[str, Any]:
    return {"classes": [{"label": "disc", "boxes": [clip.box(0)]}]}


def post_batch(
    client: httpx.Client, body: dict[str, Any], key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/v1/batches", json=body, headers=headers)


def wait_batch(client: httpx.Client, batch_id: str, timeout: float = 100) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.get(f"/v1/batches/{batch_id}", params={"limit": 1}).json()
        if batch["status"] in {"completed", "canceled"}:
            return dict(batch)
        assert time.monotonic() < deadline, f"batch {batch_id} stuck: {batch}"
        time.sleep(0.25)


def all_items(client: httpx.Client, batch_id: str, limit: int = 20) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        page = client.get(f"/v1/batches/{batch_id}", params={"offset": offset, "limit": limit})
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        offset = page.json()["next_offset"]
    return items


def completed_events(receiver: Receiver) -> list[dict[str, Any]]:
    """Every ``batch.completed`` received, each checked against its signature."""
    verifier = Webhook(WEBHOOK_SECRET)
    events = []
    for request in receiver.requests:
        payload = verifier.verify(request.body, request.headers)
        if payload["type"] == "batch.completed":
            events.append(payload)
    return events


@pytest.mark.timeout(150)
def test_five_invalid_items_fail_alone_and_the_batch_completes_once(
    acme: httpx.Client, files: FileServer, tiny: SyntheticClip
) -> None:
    items: list[Any] = [{"video_url": files.url("tiny.mp4"), "ref": f"clip-{i}"} for i in range(50)]
    bad_box = {"classes": [{"label": "disc", "boxes": [[0.9, 0.9, 0.5, 0.5]]}]}
    invalid = {
        3: (
            {"video_url": files.url("tiny.mp4"), "spec": bad_box},
            "items[3].spec.classes[0].boxes",
        ),
        11: ({"video_url": "ftp://example.com/a.mp4"}, "items[11].video_url"),
        20: ({"video_url": "http://169.254.169.254/latest"}, "items[20].video_url"),
        33: ({"video_url": files.url("tiny.mp4"), "colour": "red"}, "items[33].colour"),
        47: ({"video_url": files.url("missing.mp4")}, None),
    }
    for index, (item, _) in invalid.items():
        items[index] = item
    with Receiver() as receiver:
        began = time.monotonic()
        spec = {
            **shared_spec(tiny),
            "webhook_url": receiver.url,
            "webhook_events": ["job.succeeded", "job.failed"],
        }
        answer = post_batch(acme, {"spec": spec, "items": items, "webhook_url": receiver.url})
        assert answer.status_code == 202, answer.text
        assert time.monotonic() - began < 2
        batch = answer.json()
        assert answer.headers["location"] == f"/v1/batches/{batch['id']}"
        assert batch["total"] == 50 and batch["status"] in {"accepting", "running"}
        final = wait_batch(acme, batch["id"])
        assert final["status"] == "completed" and final["progress"] == 1.0
        assert final["counts"]["succeeded"] == 45 and final["counts"]["failed"] == 5
        assert final["counts"]["invalid"] == 4
        receiver.wait_for(47, timeout=20)
        time.sleep(1.0)
        [event] = completed_events(receiver)
        types = [json.loads(r.body)["type"] for r in receiver.requests]
    assert event["data"]["id"] == batch["id"] and event["data"]["counts"]["succeeded"] == 45
    assert types.count("job.succeeded") == 45 and types.count("job.failed") == 1, (
        "each item still sends its own job webhooks (the 404 item's job fails; the 4 "
        "refused items have no job)"
    )
    items_seen = all_items(acme, batch["id"])
    assert [item["index"] for item in items_seen] == list(range(50))
    for index, item in enumerate(items_seen):
        if index not in invalid:
            assert item["status"] == "succeeded" and item["result"]["video_url"], item
            assert item["ref"] == f"clip-{index}"
            continue
        assert item["status"] == "failed", item
        field = invalid[index][1]
        if field is None:
            assert item["error"]["code"] == "invalid_input" and "404" in item["error"]["message"]
        else:
            assert item["error"]["field"] == field and item["error"]["message"].startswith(field)
    job = acme.get(f"/v1/jobs/{items_seen[0]['job_id']}").json()
    assert job["batch_id"] == batch["id"]


def test_idempotency_key_replays_a_batch_and_refuses_another_body(
    acme: httpx.Client, globex: httpx.Client, files: FileServer, tiny: SyntheticClip
) -> None:
    body = {"spec": shared_spec(tiny), "items": [{"video_url": files.url("tiny.mp4")}] * 2}
    first = post_batch(acme, body, key="batch-key-1")
    again = post_batch(acme, body, key="batch-key-1")
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = post_batch(acme, {**body, "items": body["items"][:1]}, key="batch-key-1")
    assert other.status_code == 409 and other.json()["error"]["field"] == "Idempotency-Key"
    assert globex.get(f"/v1/batches/{first.json()['id']}").status_code == 404
    wait_batch(acme, first.json()["id"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [{}], "spec": {"classes": "person"}}, "spec.classes"),
        ({"items": [{}], "webhook_events": ["job.succeeded"]}, "webhook_events"),
        ({"items": [{}], "webhook_url": "http://169.254.169.254/hook"}, "webhook_url"),
        ({"items": [{}] * 10_001}, "items"),
    ],
)
def test_a_malformed_batch_is_refused_whole(
    acme: httpx.Client, body: dict[str, Any], field: str
) -> None:
    answer = post_batch(acme, body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field


def test_cancel_ends_what_has_not_ended(
    acme: httpx.Client, files: FileServer, tiny: SyntheticClip
) -> None:
    items = [{"video_url": files.url("tiny.mp4")}] * 100
    with Receiver() as receiver:
        batch = post_batch(
            acme, {"spec": shared_spec(tiny), "items": items, "webhook_url": receiver.url}
        ).json()
        canceled = acme.post(f"/v1/batches/{batch['id']}/cancel")
        assert canceled.status_code == 200, canceled.text
        assert canceled.json()["status"] in {"canceling", "canceled"}
        final = wait_batch(acme, batch["id"], timeout=60)
        receiver.wait_for(1, timeout=10)
        assert len(completed_events(receiver)) == 1
    counts = final["counts"]
    assert final["status"] == "canceled" and counts["canceled"] >= 50, counts
    assert counts["succeeded"] + counts["canceled"] == 100 and counts["pending"] == 0
    again = acme.post(f"/v1/batches/{batch['id']}/cancel")
    assert again.status_code == 409


@pytest.fixture(scope="module")
def fragile(
    tmp_path_factory: pytest.TempPathFactory, svor_server: str
) -> Iterator[EmbeddedService]:
    """A service that notices a lost worker in seconds, with a batch's steps slowed down
    so a test can kill the workers while a batch is being expanded."""
    env = service_env(
        "",
        svor_server,
        VOR_DEBUG_STAGE_DELAYS="batch:0.5",
        VOR_BATCH_CHUNK="3",
        VOR_HEARTBEAT_S="0.5",
        VOR_STALL_TIMEOUT_S="3",
        VOR_SWEEP_INTERVAL_S="1",
        VOR_TENANT_LIMITS='{"globex": {"max_queued": 4}}',
    )
    env.pop("VOR_REDIS_URL")
    with EmbeddedService(tmp_path_factory.mktemp("fragile"), env=env, io_threads=2) as service:
        yield service


ITEMS = 30
"""Expanded 3 at a time, 0.5 s a step: the workers die about 1 s into 5 s of expansion."""


@pytest.mark.timeout(150)
def test_kill_9_of_the_workers_mid_batch_loses_no_item(
    fragile: EmbeddedService, tmp_path: Path, tiny: SyntheticClip
) -> None:
    with FileServer(tiny.path.parent) as server, api_client(fragile) as client, Receiver() as rx:
        items = [{"video_url": server.url("tiny.mp4")}] * ITEMS
        body = {"spec": shared_spec(tiny), "items": items, "webhook_url": rx.url}
        batch = post_batch(client, body).json()
        deadline = time.monotonic() + 30
        while (state := client.get(f"/v1/batches/{batch['id']}").json())["counts"]["running"] < 1:
            assert time.monotonic() < deadline, state
            time.sleep(0.05)
        assert state["status"] == "accepting", "the workers die while items run and others wait"
        for name in ("worker-io", "worker-cpu"):
            kill_tree(fragile.processes[name].pid)
            fragile.processes[name].wait(10)
        time.sleep(1.0)
        fragile.restart_dead()
        final = wait_batch(client, batch["id"], timeout=120)
        assert final["status"] == "completed"
        assert final["counts"]["succeeded"] == ITEMS, final["counts"]
        rx.wait_for(1, timeout=10)
        time.sleep(1.0)
        assert len(completed_events(rx)) == 1
        items_seen = all_items(client, batch["id"], limit=100)
        job_ids = [item["job_id"] for item in items_seen]
        assert len(set(job_ids)) == ITEMS and None not in job_ids
        listed, cursor = [], None
        while True:
            page = client.get(
                "/v1/jobs", params={"limit": 100, **({"cursor": cursor} if cursor else {})}
            ).json()
            listed += [job["id"] for job in page["jobs"] if job["batch_id"] == batch["id"]]
            if not (cursor := page["next_cursor"]):
                break
        assert sorted(listed) == sorted(job_ids), "no item made a second job"


@pytest.mark.timeout(300)
def test_another_tenants_job_does_not_wait_behind_a_batch(
    acme: httpx.Client, globex: httpx.Client, files: FileServer, tiny: SyntheticClip
) -> None:
    """A submits a batch of 200, then B one job: B's job starts within the time of one
    running job, and finishes before A's batch does."""
    spec = shared_spec(tiny)
    batch = post_batch(acme, {"spec": spec, "items": [{"video_url": files.url("tiny.mp4")}] * 200})
    assert batch.status_code == 202
    deadline = time.monotonic() + 60
    while (state := acme.get(f"/v1/batches/{batch.json()['id']}").json())["counts"][
        "succeeded"
    ] < 1:
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    one_job_s = _seconds_of_a_finished_item(acme, batch.json()["id"])
    submitted = time.monotonic()
    job = globex.post("/v1/jobs", json={**spec, "video_url": files.url("tiny.mp4")}).json()
    while (seen := globex.get(f"/v1/jobs/{job['id']}").json())["status"] == "queued":
        time.sleep(0.05)
    waited = time.monotonic() - submitted
    assert waited <= one_job_s * 1.5 + 1.0, (waited, one_job_s)
    while seen["status"] not in {"succeeded", "failed", "canceled"}:
        time.sleep(0.1)
        seen = globex.get(f"/v1/jobs/{job['id']}").json()
    assert seen["status"] == "succeeded"
    assert acme.get(f"/v1/batches/{batch.json()['id']}").json()["status"] != "completed"
    acme.post(f"/v1/batches/{batch.json()['id']}/cancel")
    wait_batch(acme, batch.json()["id"], timeout=120)


@pytest.mark.timeout(120)
def test_a_batch_larger_than_the_tenants_queue_waits_for_room(
    fragile: EmbeddedService, tiny: SyntheticClip
) -> None:
    """globex may queue 4 jobs: a batch of 10, submitted while the CPU worker is frozen,
    waits for room (the 429's Retry-After) instead of failing the items that do not fit."""
    worker = fragile.processes["worker-cpu"]
    with FileServer(tiny.path.parent) as server, api_client(fragile, "globex") as client:
        frozen = kill_tree(worker.pid, signal.SIGSTOP)
        try:
            items = [{"video_url": server.url("tiny.mp4")}] * 10
            batch = post_batch(client, {"spec": shared_spec(tiny), "items": items}).json()
            deadline = time.monotonic() + 30
            while (state := client.get(f"/v1/batches/{batch['id']}").json())["counts"][
                "queued"
            ] < 4:
                assert time.monotonic() < deadline, state
                time.sleep(0.1)
            time.sleep(2.0)
            state = client.get(f"/v1/batches/{batch['id']}").json()
            assert state["status"] == "accepting" and state["counts"]["pending"] >= 5, state
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        final = wait_batch(client, batch["id"], timeout=100)
    assert final["counts"]["succeeded"] == 10 and final["counts"]["invalid"] == 0, final


def _seconds_of_a_finished_item(client: httpx.Client, batch_id: str) -> float:
    for item in all_items(client, batch_id, limit=500):
        if item["status"] == "succeeded":
            job = client.get(f"/v1/jobs/{item['job_id']}").json()
            return float(sum(job["timings"].values()))
    raise AssertionError("no item has finished")


def test_a_batch_of_10000_items_fits_the_request_limits(acme: httpx.Client) -> None:
    """10,000 items with specs of their own (about 1.5 MB) are accepted at once."""
    items = [
        {"video_url": f"http://127.0.0.1:9/clips/{i:05d}.mp4", "ref": f"{i:05d}",
         "spec": {"classes": [{"label": "logo", "boxes": [[0.8, 0.05, 0.15, 0.1]]}]}}
        for i in range(10_000)
    ]  # fmt: skip
    body = json.dumps({"items": items}).encode()
    assert len(body) > 1024 * 1024
    began = time.monotonic()
    answer = acme.post("/v1/batches", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 202, answer.text
    assert time.monotonic() - began < 5
    batch = answer.json()
    assert batch["total"] == 10_000
    acme.post(f"/v1/batches/{batch['id']}/cancel")
    final = wait_batch(acme, batch["id"], timeout=60)
    assert final["counts"]["pending"] == 0


VOR = [sys.executable, "-m", "services.cli"]


@pytest.mark.timeout(120)
def test_vor_remove_a_folder_as_one_batch(
    service: EmbeddedService, tiny: SyntheticClip, files: FileServer, tmp_path: Path
) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mov"):
        (folder / name).write_bytes(tiny.path.read_bytes())
    (folder / "notes.txt").write_text("not a video")
    box = [round(v * s) for v, s in zip(tiny.box(0), (64, 48, 64, 48), strict=True)]
    env = {**os.environ, "VOR_API_KEY": API_KEYS["acme"]}
    proc = subprocess.run(
        [*VOR, "remove", str(folder), "--server", service.url,
         "--boxes", "disc:" + ",".join(map(str, box)), "-o", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "accepted: 3 videos" in lines[0] and "3/3 ended" in lines[-1]
    assert all(line.startswith("[") for line in lines[1:]), "one progress bar, redrawn"
    for stem in ("a", "b", "c"):
        assert probe(tmp_path / "out" / f"{stem}_removed.mp4").frames == 6
    summary = json.loads((tmp_path / "out" / "batch.json").read_text())
    assert [item["status"] for item in summary["items"]] == ["succeeded"] * 3

    listed = tmp_path / "videos.txt"
    listed.write_text(
        f"# two clips\nclips/a.mp4\n\n{files.url('tiny.mp4')}\n{files.url('gone.mp4')}\n"
    )
    proc = subprocess.run(
        [*VOR, "remove", str(listed), "--server", service.url,
         "--boxes", "disc:" + ",".join(f"{v:.4f}" for v in tiny.box(0))],
        env=env, capture_output=True, text=True, timeout=100, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "gone.mp4: failed" in proc.stdout and "404" in proc.stdout
    assert (tmp_path / "videos_removed" / "a_removed.mp4").exists()
    assert (tmp_path / "videos_removed" / "tiny_removed.mp4").exists()
