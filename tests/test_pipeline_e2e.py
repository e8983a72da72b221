"""Whole jobs through real processes: API -> Redis -> Celery chain -> storage -> webhooks."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import redis
from standardwebhooks.webhooks import Webhook

from services.cli.embedded import EmbeddedService
from services.media.synthetic import SyntheticClip
from services.media.video import probe, read_frames, write_video
from tests.conftest import WEBHOOK_SECRET
from tests.helpers import accepted, download, submit, wait
from tests.support.receiver import Receiver

pytestmark = pytest.mark.timeout(180)


def frames_of(path: Path) -> list[np.ndarray]:
    return list(read_frames(path))


def removal_error(result: list[np.ndarray], clip: SyntheticClip) -> tuple[float, float]:
    """Mean abs error vs the true background inside the object, and the original's."""
    inside = [m > 0 for m in clip.masks]
    ours = np.mean(
        [
            np.abs(r.astype(int) - clip.background)[m].mean()
            for r, m in zip(result, inside, strict=True)
        ]
    )
    original = frames_of(clip.path)
    theirs = np.mean(
        [
            np.abs(o.astype(int) - clip.background)[m].mean()
            for o, m in zip(original, inside, strict=True)
        ]
    )
    return float(ours), float(theirs)


def outside_error(result: list[np.ndarray], clip: SyntheticClip, margin: int = 9) -> float:
    original = frames_of(clip.path)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    errors = []
    for r, o, m in zip(result, original, clip.masks, strict=True):
        far = cv2.dilate((m > 0).astype(np.uint8), kernel) == 0
        errors.append(np.abs(r.astype(int) - o.astype(int))[far].mean())
    return float(np.mean(errors))


def events_of(receiver: Receiver, event: str, *, count: int, timeout: float = 30) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in receiver.requests if json.loads(r.body)["type"] == event]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_local_remove_job_end_to_end(
    acme: httpx.Client, clip: SyntheticClip, tmp_path: Path
) -> None:
    with Receiver(fail_first=2) as receiver:
        spec = {
            "classes": [{"label": "disc", "boxes": [clip.box(0)], "frame_index": 0}],
            "webhook_url": receiver.url,
        }
        job = wait(acme, accepted(acme, spec, clip.path)["id"])
        assert job["status"] == "succeeded", job
        assert job["progress"] == 1.0 and job["error"] is None
        assert set(job["timings"]) >= {"compress", "segment", "mask_convert", "merge", "erase"}
        assert job["segments"]["disc"]["objects"][0]["id"] == 1

        result = download(acme, job["result"]["video_url"], tmp_path / "result.mp4")
        info = probe(result)
        assert (info.width, info.height, info.frames, info.fps) == (96, 64, 16, 12.0)
        assert info.audio, "the audio track must be kept"
        frames = frames_of(result)
        ours, original = removal_error(frames, clip)
        assert ours < original / 3, (ours, original)
        assert outside_error(frames, clip) < 4.0
        preview = download(acme, job["result"]["preview_url"], tmp_path / "p.png")
        assert cv2.imread(str(preview)).shape == (64, 96, 3)
        mask = download(acme, job["result"]["mask_url"], tmp_path / "mask.mkv")
        assert probe(mask).frames == 16

        succeeded = events_of(receiver, "job.succeeded", count=3)
        assert len(succeeded) >= 3, "two failed deliveries, then one that worked"
        ids = {r.headers["webhook-id"] for r in succeeded}
        assert len(ids) == 1, "every retry of one event carries the same webhook-id"
        last = succeeded[-1]
        payload = Webhook(WEBHOOK_SECRET).verify(last.body, last.headers)
        assert payload["data"]["id"] == job["id"]
        assert payload["data"]["status"] == "succeeded"
        assert payload["data"]["result"]["video_url"]
        assert not events_of(receiver, "job.progress", count=1, timeout=0), "not asked for"
    logged = acme.get(f"/v1/jobs/{job['id']}").json()["webhooks"]
    attempts = [w for w in logged if w["event"] == "job.succeeded"]
    assert [w["ok"] for w in attempts][-3:] == [False, False, True]
    assert attempts[0]["status_code"] == 500


def test_each_progress_message_has_a_webhook_id_of_its_own(
    acme: httpx.Client, clip: SyntheticClip
) -> None:
    """A receiver that deduplicates by ``webhook-id`` (as the README advises) keeps every
    progress message: one per stage started, each with its own id and its own body."""
    with Receiver() as receiver:
        spec = {
            "classes": [{"label": "disc", "boxes": [clip.box(0)]}],
            "webhook_url": receiver.url,
            "webhook_events": ["job.progress", "job.succeeded"],
        }
        job = wait(acme, accepted(acme, spec, clip.path)["id"])
        assert job["status"] == "succeeded", job
        started = sum(job["runs"].values())
        assert events_of(receiver, "job.succeeded", count=1)
        received = events_of(receiver, "job.progress", count=started)
    verifier = Webhook(WEBHOOK_SECRET)
    kept: dict[str, dict[str, Any]] = {}
    for delivery in received:
        kept.setdefault(
            delivery.headers["webhook-id"], verifier.verify(delivery.body, delivery.headers)
        )
    assert len(received) == started, "one progress message per stage started"
    assert len(kept) == started, "a deduplicating receiver kept only some of them"
    assert {payload["data"]["id"] for payload in kept.values()} == {job["id"]}


def test_segment_then_remove_from_job(
    acme: httpx.Client, clip2: SyntheticClip, tmp_path: Path
) -> None:
    with Receiver() as receiver:
        spec = {
            "mode": "segment",
            "classes": [{"label": "discs", "boxes": [clip2.box(0, 1), clip2.box(0, 2)]}],
            "options": {"cutout": [2]},
            "webhook_url": receiver.url,
            "webhook_events": ["job.progress", "job.succeeded"],
        }
        seg = wait(acme, accepted(acme, spec, clip2.path)["id"])
        assert seg["status"] == "succeeded", seg
        assert events_of(receiver, "job.succeeded", count=1)
        progress = events_of(receiver, "job.progress", count=3)
        stages = [json.loads(r.body)["data"]["stage"] for r in progress]
        assert {"compress", "segment", "publish"} <= set(stages), stages
    objects = seg["segments"]["discs"]["objects"]
    assert [o["id"] for o in objects] == [1, 2]
    assert {"mask_url", "preview_url", "overlay_url", "cutout_url", "cutout_alpha_url"} <= set(
        seg["result"]
    )
    ids_mask = download(acme, seg["result"]["mask_url"], tmp_path / "ids.mkv")
    first = next(read_frames(ids_mask, "gray"))
    assert set(np.unique(first)) == {0, 1, 2}

    bad = submit(acme, {"from_job": seg["id"], "targets": {"discs": [7]}})
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "targets.discs"

    job = wait(acme, accepted(acme, {"from_job": seg["id"], "targets": {"discs": [2]}})["id"])
    assert job["status"] == "succeeded", job
    assert "compress" not in job["timings"] and "segment" not in job["timings"]
    frames = frames_of(download(acme, job["result"]["video_url"], tmp_path / "r.mp4"))
    original = frames_of(clip2.path)
    for index, (r, o) in enumerate(zip(frames, original, strict=True)):
        kept = clip2.masks[index] == 1
        removed = clip2.masks[index] == 2
        assert np.abs(r.astype(int) - o)[kept].mean() < 12, "object 1 was not a target"
        assert (
            np.abs(r.astype(int) - clip2.background)[removed].mean()
            < np.abs(o.astype(int) - clip2.background)[removed].mean() / 2
        )


def test_two_classes_segment_in_parallel_and_are_merged(
    acme: httpx.Client, clip2: SyntheticClip, redis_url: str, tmp_path: Path
) -> None:
    """One segment task per class, joined by a chord; the merge removes both."""
    spec = {
        "classes": [
            {"label": "left", "boxes": [clip2.box(0, 1)]},
            {"label": "right", "boxes": [clip2.box(0, 2)]},
        ]
    }
    job = wait(acme, accepted(acme, spec, clip2.path)["id"])
    assert job["status"] == "succeeded", job
    assert set(job["segments"]) == {"left", "right"}
    assert job["runs"]["segment:left"] == job["runs"]["segment:right"] == 1, job["runs"]
    assert "merge" in job["timings"]
    frames = frames_of(download(acme, job["result"]["video_url"], tmp_path / "r.mp4"))
    original = frames_of(clip2.path)
    for index, (r, o) in enumerate(zip(frames, original, strict=True)):
        for object_id in (1, 2):
            inside = clip2.masks[index] == object_id
            assert (
                np.abs(r.astype(int) - clip2.background)[inside].mean()
                < np.abs(o.astype(int) - clip2.background)[inside].mean() / 2
            ), (index, object_id)
    # Nobody waits on Celery's results, so no process listens on their channels
    # (Celery's Redis backend would keep the API subscribed to every task it sent).
    listening = redis.Redis.from_url(redis_url).pubsub_channels("celery-task-meta-*")
    assert listening == []


def test_remove_with_own_mask(acme: httpx.Client, clip: SyntheticClip, tmp_path: Path) -> None:
    mask_path = write_video(
        tmp_path / "mask.mkv",
        [(m > 0).astype(np.uint8) * 255 for m in clip.masks],
        12,
        codec="ffv1",
    )
    job = wait(acme, accepted(acme, {"mode": "remove"}, clip.path, mask=mask_path)["id"])
    assert job["status"] == "succeeded", job
    assert "segment" not in job["timings"]
    ours, original = removal_error(
        frames_of(download(acme, job["result"]["video_url"], tmp_path / "r.mp4")), clip
    )
    assert ours < original / 3

    short = write_video(
        tmp_path / "short.mkv", [np.zeros((64, 96), np.uint8)] * 5, 12, codec="ffv1"
    )
    response = submit(acme, {"mode": "remove"}, clip.path, mask=short)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "mask"
    assert "5 frames" in response.json()["error"]["message"]


def test_targets_naming_an_id_not_found_fail_the_job(
    acme: httpx.Client, clip: SyntheticClip
) -> None:
    spec = {"classes": [{"label": "disc", "boxes": [clip.box(0)]}], "targets": {"disc": [5]}}
    job = wait(acme, accepted(acme, spec, clip.path)["id"])
    assert job["status"] == "failed"
    assert job["error"]["stage"] == "mask_convert"
    assert job["error"]["code"] == "invalid_spec"
    assert "[5]" in job["error"]["message"] and "[1]" in job["error"]["message"]
    after = wait(
        acme,
        accepted(acme, {"classes": [{"label": "disc", "boxes": [clip.box(0)]}]}, clip.path)["id"],
    )
    assert after["status"] == "succeeded", "a failed job never blocks the queue"


def test_video_url_job(acme: httpx.Client, clip: SyntheticClip, tmp_path: Path) -> None:
    import http.server
    import threading

    folder = clip.path.parent

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{clip.path.name}"
        spec = {"classes": [{"label": "disc", "boxes": [clip.box(0)]}], "video_url": url}
        job = wait(acme, accepted(acme, spec)["id"])
        assert job["status"] == "succeeded", job
        assert job["input"]["frames"] == 16
        missing = wait(acme, accepted(acme, {**spec, "video_url": url + ".gone"})["id"])
        assert missing["status"] == "failed"
        assert missing["error"]["code"] == "invalid_input"
        assert "404" in missing["error"]["message"]
    finally:
        server.shutdown()
        server.server_close()


def test_svor_engine_job_through_injected_faults(
    acme: httpx.Client, svor_server: str, clip: SyntheticClip, tmp_path: Path
) -> None:
    httpx.post(
        f"{svor_server}/_faults",
        json={"burst_429": 2, "retry_after": 1, "fail_502": 1, "fail_504": 1},
    ).raise_for_status()
    before = httpx.get(f"{svor_server}/_stats").json()
    spec = {"engine": "svor", "classes": [{"label": "disc", "boxes": [clip.box(0)]}]}
    job = wait(acme, accepted(acme, spec, clip.path)["id"], timeout=150)
    assert job["status"] == "succeeded", job
    after = httpx.get(f"{svor_server}/_stats").json()
    assert after != before
    result = download(acme, job["result"]["video_url"], tmp_path / "r.mp4")
    info = probe(result)
    assert (info.width, info.height, info.frames) == (96, 64, 16)
    ours, original = removal_error(frames_of(result), clip)
    assert ours < original / 2


def test_svor_auth_failure_fails_at_once(
    acme: httpx.Client,
    svor_server: str,
    clip: SyntheticClip,
    tmp_path: Path,
    service: EmbeddedService,
) -> None:
    httpx.post(f"{svor_server}/_faults", json={"fail_status": 1}).raise_for_status()
    spec = {"engine": "svor", "classes": [{"label": "disc", "boxes": [clip.box(0)]}]}
    job = wait(acme, accepted(acme, spec, clip.path)["id"], timeout=150)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "upstream_failed"
    assert job["error"]["stage"] == "segment"
