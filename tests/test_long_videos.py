"""A 20 s clip on the svor engine, through ``vor svor-server`` (3 s per upload) and real
workers: windows, one set of object ids, removal of one id in every window; and on the
local engine, windows of ``VOR_LOCAL_WINDOW_S`` (10 s)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from services.cli.embedded import EmbeddedService
from services.cli.processes import kill_tree
from services.jobs import pipeline
from services.jobs.plan import plan
from services.jobs.stagerun import Resources
from services.jobs.submission import Submission
from services.media.synthetic import CROSSING_COLOURS, SyntheticClip, make_crossing_clip
from services.media.video import read_frames
from services.media.windows import plan_windows
from services.models import JobSpec, Queue, Stage
from tests.conftest import SVOR_KEY, api_client, service_env
from tests.helpers import accepted, download, wait
from tests.support.files import FileServer
from tests.support.jobs import make_lifecycle, recording

COLOURS = {"ball": ["#e63c28", "#283ce6"]}
"""Red and blue as #rrggbb: what the stand-in's colour detector finds for "ball"."""


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    return make_crossing_clip(tmp_path_factory.mktemp("long") / "crossing.mp4")


@pytest.fixture
def colours(svor_server: str) -> None:
    httpx.post(f"{svor_server}/_text_colors", json=COLOURS).raise_for_status()
    httpx.post(f"{svor_server}/_faults", json={}).raise_for_status()


def uploads(svor_server: str) -> dict[str, Any]:
    return dict(httpx.get(f"{svor_server}/_stats").json())


def ids_per_object(mask: Path, clip: SyntheticClip) -> dict[int, set[int]]:
    """For each true object, the ids the stitched mask gives its pixels on any frame."""
    found: dict[int, set[int]] = {1: set(), 2: set()}
    for truth, ids in zip(clip.masks, read_frames(mask, "gray"), strict=True):
        for obj in (1, 2):
            inside = ids[(truth == obj) & (ids > 0)]
            if inside.size:
                values, counts = np.unique(inside, return_counts=True)
                found[obj].add(int(values[counts.argmax()]))
    return found


def test_a_20s_clip_keeps_one_id_per_object_and_removes_one_everywhere(
    acme: httpx.Client,
    svor_server: str,
    long_clip: SyntheticClip,
    colours: None,
    tmp_path: Path,
) -> None:
    windows = plan_windows(len(long_clip.masks), long_clip.fps, 3.0)
    assert len(windows) == 9
    httpx.delete(f"{svor_server}/_stats").raise_for_status()
    spec = {"mode": "segment", "engine": "svor", "classes": [{"label": "ball", "text": "ball"}]}
    seg = wait(acme, accepted(acme, spec, long_clip.path)["id"], timeout=150)
    assert seg["status"] == "succeeded", seg["error"]
    assert seg["windows"] == {"total": 9, "segmented": 9, "erased": 0, "done": 9}
    stats = uploads(svor_server)
    assert stats["requests"]["sam3_prompt_seg"] == {"200": 9}
    events = acme.get(f"/v1/jobs/{seg['id']}/events").text
    assert '"windows": {"total": 9, "segmented": 9' in events
    objects = seg["segments"]["ball"]["objects"]
    assert [o["id"] for o in objects] == [1, 2]
    mask = download(acme, seg["result"]["mask_url"], tmp_path / "ids.mkv")
    per_object = ids_per_object(mask, long_clip)
    assert len(per_object[1]) == 1 and len(per_object[2]) == 1, per_object
    assert per_object[1] != per_object[2]
    red = next(iter(per_object[1]))

    remove = {"engine": "svor", "from_job": seg["id"], "targets": {"ball": [red]}}
    job = wait(acme, accepted(acme, remove)["id"], timeout=150)
    assert job["status"] == "succeeded", job["error"]
    assert job["windows"]["erased"] == 9
    result = download(acme, job["result"]["video_url"], tmp_path / "result.mp4")
    reds, blues = [], []
    for truth, image in zip(long_clip.masks, read_frames(result), strict=True):
        core = truth == 1
        reds.append(_near(image[core], CROSSING_COLOURS[0]))
        if (truth == 2).sum() > 100:  # at least a third of the disc in the picture
            blues.append(_near(image[truth == 2], CROSSING_COLOURS[1]))
    assert max(reds) < 0.05, f"red left on a frame: {max(reds):.2f} of its pixels"
    assert min(blues) > 0.6, f"blue damaged on a frame: {min(blues):.2f} of its pixels left"


def _near(pixels: np.ndarray, colour: tuple[int, int, int]) -> float:
    """Share of ``pixels`` within 40 levels of ``colour`` on every channel."""
    close = np.all(np.abs(pixels.astype(int) - np.array(colour)) <= 40, axis=1)
    return float(close.mean())


def test_a_box_prompt_mid_clip_propagates_both_ways_through_every_window(
    acme: httpx.Client, svor_server: str, long_clip: SyntheticClip, tmp_path: Path
) -> None:
    """The box on frame 80 (window 4) prompts that window; every other window is prompted
    with the boxes found on the frames it shares with its neighbour, outward both ways."""
    box = list(long_clip.box(80, 1))
    spec = {"engine": "svor", "classes": [{"label": "red", "boxes": [box], "frame_index": 80}]}
    job = wait(acme, accepted(acme, spec, long_clip.path)["id"], timeout=150)
    assert job["status"] == "succeeded", job["error"]
    assert job["windows"] == {"total": 9, "segmented": 9, "erased": 9, "done": 9}
    assert [o["id"] for o in job["segments"]["red"]["objects"]] == [1]
    [found] = job["segments"]["red"]["objects"]
    assert found["box"] == pytest.approx(box, abs=0.05), "the object's box on frame_index"
    result = download(acme, job["result"]["video_url"], tmp_path / "result.mp4")
    reds = [
        _near(image[truth == 1], CROSSING_COLOURS[0])
        for truth, image in zip(long_clip.masks, read_frames(result), strict=True)
    ]
    assert max(reds) < 0.05, f"red left on frame {int(np.argmax(reds))}"


def test_the_local_engine_runs_a_long_clip_as_windows_too(
    acme: httpx.Client, long_clip: SyntheticClip, tmp_path: Path
) -> None:
    spec = {"engine": "local", "classes": [{"label": "red", "boxes": [list(long_clip.box(0, 1))]}]}
    job = wait(acme, accepted(acme, spec, long_clip.path)["id"], timeout=150)
    assert job["status"] == "succeeded", job["error"]
    assert job["windows"] == {"total": 3, "segmented": 3, "erased": 3, "done": 3}
    result = download(acme, job["result"]["video_url"], tmp_path / "result.mp4")
    reds, blues = [], []
    for truth, image in zip(long_clip.masks, read_frames(result), strict=True):
        reds.append(_near(image[truth == 1], CROSSING_COLOURS[0]))
        if (truth == 2).sum() > 100:
            blues.append(_near(image[truth == 2], CROSSING_COLOURS[1]))
    assert max(reds) < 0.05, f"red left on frame {int(np.argmax(reds))}"
    assert min(blues) > 0.6, f"blue damaged: {sorted(enumerate(blues), key=lambda b: b[1])[:5]}"


@pytest.fixture(scope="module")
def crashy(tmp_path_factory: pytest.TempPathFactory, svor_server: str) -> Iterator[EmbeddedService]:
    """A service of its own whose segment steps idle a second first, and whose sweeper
    notices a dead worker within seconds."""
    env = service_env(
        "",
        svor_server,
        VOR_DEBUG_STAGE_DELAYS="segment:1",
        VOR_HEARTBEAT_S="0.5",
        VOR_STALL_TIMEOUT_S="3",
        VOR_SWEEP_INTERVAL_S="1",
    )
    env.pop("VOR_REDIS_URL")
    with EmbeddedService(tmp_path_factory.mktemp("crashy"), env=env, io_threads=2) as service:
        yield service


@pytest.mark.timeout(150)
def test_a_worker_killed_mid_job_redoes_only_the_windows_it_had_not_finished(
    crashy: EmbeddedService, svor_server: str, long_clip: SyntheticClip, colours: None
) -> None:
    spec = {"mode": "segment", "engine": "svor", "classes": [{"label": "ball", "text": "ball"}]}
    with api_client(crashy) as client:
        httpx.delete(f"{svor_server}/_stats").raise_for_status()
        job_id = accepted(client, spec, long_clip.path)["id"]
        deadline = time.monotonic() + 60
        while (client.get(f"/v1/jobs/{job_id}").json()["windows"] or {}).get("segmented", 0) < 3:
            assert time.monotonic() < deadline, "the windows never got going"
            time.sleep(0.1)
        worker = crashy.processes["worker-io"]
        kill_tree(worker.pid)
        worker.wait(10)
        calls_before = _seg_calls(svor_server)
        done_before = client.get(f"/v1/jobs/{job_id}").json()["windows"]["segmented"]
        crashy.restart("worker-io")
        job = wait(client, job_id, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert 3 <= done_before < 9
    again = _seg_calls(svor_server) - calls_before
    assert again == 9 - done_before, (
        f"{done_before} windows were done at the kill; {again} upstream calls after it"
    )
    assert [o["id"] for o in job["segments"]["ball"]["objects"]] == [1, 2]


def _seg_calls(svor_server: str) -> int:
    return int(uploads(svor_server)["requests"]["sam3_prompt_seg"].get("200", 0))


def test_a_long_video_url_is_planned_again_with_its_windows_after_compress(
    redis_url: str, svor_server: str, long_clip: SyntheticClip, tmp_path: Path
) -> None:
    """A ``video_url`` job's length is known only once compress fetched it: found long,
    the job is enqueued again (a new generation) with its windows."""
    with FileServer(long_clip.path.parent) as files:
        jobs = make_lifecycle(redis_url, tmp_path, svor_base_url=svor_server,
                              svor_api_key=SVOR_KEY, max_duration_s=30)  # fmt: skip
        url = files.url(long_clip.path.name)
        spec = JobSpec.model_validate({"engine": "svor", "video_url": url, "targets": {"a": [1]},
                                       "classes": [{"label": "a", "text": "ball"}]})  # fmt: skip
        job, _ = jobs.submit(Submission(tenant="acme", spec=spec))
        assert job.windows == [] and job.input is None
        res = Resources(jobs=jobs)
        outcome = pipeline.run_stage(Stage.compress, job.id, res, generation=job.generation)
    assert outcome is pipeline.StageOutcome.skipped
    after = jobs.store.require(job.id)
    assert len(after.windows) == 9 and after.generation == job.generation + 1
    assert after.done == ["compress"]
    assert all(f"work:w{k}" in after.artifacts for k in range(9))
    replanned = recording(jobs).enqueued[-1]
    keys = [s.key for s in plan(replanned, Queue.io).steps()]
    assert keys[:9] == [f"segment:a:w{k}" for k in range(9)] and keys[-2:] == ["blend", "publish"]
