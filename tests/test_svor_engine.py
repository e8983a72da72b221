"""The svor engine against the SVOR stand-in (backed by the local engine) on loopback.

A fake clock and sleep make every backoff and poll wait free: the fake sleep
advances the clock by what was asked and really sleeps only a hundredth of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from services.engines.base import no_progress
from services.engines.svor.client import PollSchedule
from services.engines.svor.engine import (
    SEG_PATH,
    SvorClient,
    SvorEngine,
    SvorPrompt,
    _id_mask,
    engine_from_settings,
    parse_retry_after,
)
from services.engines.svor.upload_fit import copy_if_fits
from services.errors import (
    UpstreamAuth,
    UpstreamBadRequest,
    UpstreamFailed,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from services.media.synthetic import SyntheticClip, make_clip
from services.media.video import (
    VideoWriter,
    probe,
    read_frames,
    video_format,
    video_size,
    write_video,
)
from services.models import ClassPrompt
from services.settings import Settings
from services.standin.server import create_app, serve_in_thread

API_KEY = "test-key"


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        time.sleep(min(0.02, seconds / 100))


@pytest.fixture(scope="module")
def svor_url() -> Iterator[str]:
    with serve_in_thread(create_app()) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    with serve_in_thread(create_app(api_key=API_KEY)) as url:
        yield url


@pytest.fixture(autouse=True)
def _clean_server(request: pytest.FixtureRequest) -> None:
    if "svor_url" in request.fixturenames:
        url = request.getfixturevalue("svor_url")
        httpx.post(f"{url}/_faults", json={}).raise_for_status()
        httpx.delete(f"{url}/_stats").raise_for_status()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def client_for(url: str, fake: FakeTime, **kwargs: Any) -> SvorClient:
    options: dict[str, Any] = {"max_retries": 5, "poll_deadline_s": 10_000.0, "api_key": None}
    options.update(kwargs)
    timeout = options.pop("timeout", httpx.Timeout(10.0, connect=2.0))
    return SvorClient(
        httpx.Client(timeout=timeout), base_url=url, clock=fake.clock, sleep=fake.sleep, **options
    )


def set_faults(url: str, **faults: Any) -> None:
    httpx.post(f"{url}/_faults", json=faults).raise_for_status()


def stats(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_stats").json()


def box_prompt(clip: SyntheticClip) -> ClassPrompt:
    return ClassPrompt(label="disc", boxes=[clip.box(0)])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def segment(url: str, fake: FakeTime, clip: SyntheticClip, out: Path, **client_kwargs: Any) -> Any:
    client = client_for(url, fake, **client_kwargs)
    result = SvorEngine(client).segment(clip.path, box_prompt(clip), out, no_progress)
    return client, result


# --------------------------------------------------------------------------- the round trip


def test_prepare_segment_erase_round_trip(
    svor_url: str, fake: FakeTime, clip: SyntheticClip, tmp_path: Path
) -> None:
    engine = SvorEngine(client_for(svor_url, fake))
    seen: list[float] = []
    work = engine.prepare(clip.path, probe(clip.path), tmp_path, no_progress)
    plan = json.loads((tmp_path / "svor_upload.json").read_text())
    assert (plan["width"], plan["height"], plan["frames"]) == (96, 64, 16)
    assert video_size(work)[3] == 16

    seg = engine.segment(work, box_prompt(clip), tmp_path, seen.append)
    masks = list(read_frames(seg.mask_path, "gray"))
    assert len(masks) == 16 and masks[0].shape == (64, 96)
    assert set(np.unique(np.stack(masks))) <= {0, 1}
    assert min(iou(m == 1, t == 1) for m, t in zip(masks, clip.masks, strict=True)) > 0.5
    assert [o.id for o in seg.objects] == [1]
    assert np.allclose(seg.objects[0].box, clip.box(0), atol=0.06)
    assert seg.suggestion and seen[-1] == 1.0

    binary = tmp_path / "binary.mkv"
    with VideoWriter(binary, 96, 64, clip.fps, codec="ffv1") as writer:
        for m in masks:
            writer.write(np.where(m > 0, 255, 0).astype(np.uint8))
    result = engine.erase(work, binary, tmp_path, no_progress, dilation=2)
    frames = list(read_frames(result))
    assert len(frames) == 16 and frames[0].shape == (64, 96, 3)
    before = list(read_frames(work))
    inside = clip.masks[8] > 0
    error_before = np.abs(before[8].astype(int) - clip.background)[inside].mean()
    error_after = np.abs(frames[8].astype(int) - clip.background)[inside].mean()
    assert error_after < error_before / 2

    uploads = stats(svor_url)["uploads"]
    assert [u["endpoint"] for u in uploads] == ["sam3_prompt_seg", "mieraser"]
    assert all(u["bytes"] <= 1000 * 1024 for u in uploads)


def test_prepare_fits_noisy_720p_under_the_limit(fake: FakeTime, tmp_path: Path) -> None:
    source = tmp_path / "noisy.mp4"
    rng = np.random.default_rng(3)
    ramp = np.linspace(40, 200, 1280, dtype=np.int16)[None, :, None]
    with VideoWriter(source, 1280, 720, 10.0, crf=18, preset="ultrafast") as writer:
        for _ in range(25):
            writer.write(
                np.clip(ramp + rng.integers(-40, 40, (720, 1280, 3)), 0, 255).astype(np.uint8)
            )
    info = probe(source)
    engine = SvorEngine(client_for("http://127.0.0.1:9", fake))
    work = engine.prepare(source, info, tmp_path, no_progress)

    plan = json.loads(work.with_suffix(".json").read_text())
    size = work.stat().st_size
    assert info.size_bytes and info.size_bytes > 4 * 1000 * 1024
    assert size == plan["bytes"] <= 1000 * 1024 - 8 * 1024
    assert {"scale", "crf", "attempts"} <= plan.keys() and len(plan["attempts"]) >= 2
    out = probe(work)
    assert (out.frames, out.fps, out.audio) == (25, 10.0, False)
    assert out.width % 2 == 0 and out.height % 2 == 0
    assert (out.width, out.height) == (plan["width"], plan["height"])
    print(f"noisy 1280x720 {info.duration_s}s: {info.size_bytes} -> {size} bytes, plan {plan}")


def test_prepare_drops_audio_and_keeps_every_frame_of_a_long_clip(
    fake: FakeTime, tmp_path: Path
) -> None:
    source = make_clip(tmp_path / "audio.mp4", audio=True).path
    engine = SvorEngine(client_for("http://127.0.0.1:9", fake))
    work = engine.prepare(source, probe(source), tmp_path, no_progress)
    assert probe(source).audio and not probe(work).audio
    long = make_clip(tmp_path / "long.mp4", frames=48, fps=12).path
    (tmp_path / "long").mkdir()
    work = engine.prepare(long, probe(long), tmp_path / "long", no_progress)
    assert probe(work).frames == 48, "a long clip's working copy is cut into windows later"


def test_prepare_copies_a_stream_that_fits_and_encodes_one_that_cannot_go_as_it_is(
    fake: FakeTime, tmp_path: Path
) -> None:
    engine = SvorEngine(client_for("http://127.0.0.1:9", fake))
    source = make_clip(tmp_path / "audio.mp4", audio=True).path
    work = engine.prepare(source, probe(source), tmp_path, no_progress)
    plan = json.loads(work.with_suffix(".json").read_text())
    assert plan["copied"] and plan["crf"] is None and plan["attempts"] == []
    with av.open(str(source)) as a, av.open(str(work)) as b:
        assert [bytes(p) for p in a.demux(video=0) if p.size] == [
            bytes(p) for p in b.demux(video=0) if p.size
        ], "the stream is copied packet for packet, never decoded and encoded"
        assert not b.streams.audio

    yuv444 = tmp_path / "yuv444.mp4"
    write_video(yuv444, list(read_frames(source)), 12.0, pix_fmt="yuv444p")
    out = tmp_path / "second"
    out.mkdir()
    work = engine.prepare(yuv444, probe(yuv444), out, no_progress)
    plan = json.loads(work.with_suffix(".json").read_text())
    assert not plan["copied"] and plan["crf"] is not None
    assert video_format(work)[:2] == ("h264", "yuv420p")
    assert copy_if_fits(source, tmp_path / "small.mp4", target_bytes=1000) is None
    assert not (tmp_path / "small.mp4").exists()


def test_polling_learns_how_long_tasks_take(svor_url: str, clip: SyntheticClip) -> None:
    set_faults(svor_url, task_latency_s=0.6)
    client = SvorClient(httpx.Client(timeout=10), base_url=svor_url, api_key=None)
    prompt = SvorPrompt(boxes=[clip.box(0)])
    client.segment(clip.path, prompt)
    assert 0.3 < client.due_s[SEG_PATH] < 0.8, client.due_s
    httpx.delete(f"{svor_url}/_stats").raise_for_status()
    began = time.monotonic()
    client.segment(clip.path, prompt)
    waited = time.monotonic() - began
    server = stats(svor_url)
    [task] = server["task_seconds"]
    assert server["requests"]["sam3_prompt_seg/status"]["200"] <= 5
    assert waited - task["seconds"] < 0.3, (waited, task)


def test_poll_schedule_grows_and_starts_near_the_learned_time() -> None:
    fresh = PollSchedule(None)
    delays = [fresh.next_delay(0.0) for _ in range(12)]
    assert delays[:3] == [0.25, 0.375, 0.5625] and max(delays) == 5.0
    learned = PollSchedule(2.0)
    assert learned.next_delay(0.0) == pytest.approx(1.94)
    assert [learned.next_delay(1.94 + e) for e in (0.0, 0.03)] == pytest.approx([0.03, 0.0375])
    long = PollSchedule(30.0)
    assert [long.next_delay(0.0), long.next_delay(29.1)] == pytest.approx([29.1, 0.45])


def test_a_lossless_id_mask_is_kept_and_a_lossy_one_cleaned(tmp_path: Path) -> None:
    ids = np.zeros((64, 96), np.uint8)
    ids[10:30, 10:30], ids[35:60, 50:90] = 1, 2
    lossless = write_video(tmp_path / "raw.mkv", [ids] * 4, 12, codec="ffv1")
    assert _id_mask(lossless, tmp_path / "kept.mkv", (96, 64), 12, 4, [1, 2]) == lossless
    lossy = write_video(tmp_path / "raw.mp4", [ids * 60] * 4, 12, crf=30, pix_fmt="gray")
    cleaned = _id_mask(lossy, tmp_path / "clean.mkv", (96, 64), 12, 4, [60, 120])
    frames = np.stack(list(read_frames(cleaned, "gray")))
    assert set(np.unique(frames)) <= {0, 60, 120} and video_format(cleaned)[:2] == ("ffv1", "gray")
    assert (frames[:, 20, 20] == 60).all() and (frames[:, 50, 70] == 120).all()


# --------------------------------------------------------------------------- transient faults


def test_429_burst_waits_at_least_retry_after(
    svor_url: str, fake: FakeTime, clip: SyntheticClip, tmp_path: Path
) -> None:
    set_faults(svor_url, burst_429=3, retry_after=7)
    client, seg = segment(svor_url, fake, clip, tmp_path)
    assert seg.objects
    assert client.stats["retries"] == {"429": 3}
    assert all(s >= 7 for s in fake.sleeps[:3])
    assert stats(svor_url)["requests"]["sam3_prompt_seg"] == {"429": 3, "200": 1}


def test_502_and_504_storms_are_ridden_out(
    svor_url: str, fake: FakeTime, clip: SyntheticClip, tmp_path: Path
) -> None:
    set_faults(svor_url, fail_502=2, fail_504=2)
    client, seg = segment(svor_url, fake, clip, tmp_path)
    assert seg.objects
    assert client.stats["retries"] == {"502": 2, "504": 2}
    assert stats(svor_url)["requests"]["sam3_prompt_seg"] == {"502": 2, "504": 2, "200": 1}


@pytest.mark.parametrize(
    ("fault", "error"), [("burst_429", UpstreamRateLimited), ("fail_502", UpstreamUnavailable)]
)
def test_retries_run_out(
    svor_url: str, fake: FakeTime, clip: SyntheticClip, tmp_path: Path, fault: str, error: type
) -> None:
    set_faults(svor_url, **{fault: 100})
    with pytest.raises(error, match="after 3 retries"):
        segment(svor_url, fake, clip, tmp_path, max_retries=3, rng=lambda: 1.0)
    assert fake.sleeps == [0.5, 1.0, 2.0]
    assert sum(stats(svor_url)["requests"]["sam3_prompt_seg"].values()) == 4


def test_read_timeout_is_retried(
    svor_url: str, fake: FakeTime, clip: SyntheticClip, tmp_path: Path
) -> None:
    set_faults(svor_url, hang_s=2.0, only="sam3_prompt_seg/status")
    client, seg = segment(svor_url, fake, clip, tmp_path, timeout=httpx.Timeout(0.6, connect=2.0))
    assert seg.objects
    assert client.stats["retries"].get("read_timeout", 0) >= 1


def test_refused_connection_is_retried_then_unavailable(
    fake: FakeTime, clip: SyntheticClip
) -> None:
    client = client_for("http://127.0.0.1:9", fake, max_retries=2)
    with pytest.raises(UpstreamUnavailable, match="ConnectError"):
        client.segment(clip.path, SvorPrompt(boxes=[(0.1, 0.3, 0.2, 0.3)]))
    assert client.stats["retries"] == {"connect": 2}


def test_malformed_status_is_polled_again(
    svor_url: str, fake: FakeTime, clip: SyntheticClip, tmp_path: Path
) -> None:
    set_faults(svor_url, malformed_json=2, only="sam3_prompt_seg/status")
    client, seg = segment(svor_url, fake, clip, tmp_path)
    assert seg.objects
    assert client.stats["retries"] == {"malformed_json": 2}


def test_malformed_submit_answer_fails_clearly(
    svor_url: str, fake: FakeTime, clip: SyntheticClip, tmp_path: Path
) -> None:
    set_faults(svor_url, malformed_json=1, only="sam3_prompt_seg")
    with pytest.raises(UpstreamFailed, match="malformed JSON"):
        segment(svor_url, fake, clip, tmp_path)


# --------------------------------------------------------------------------- permanent failures


def test_bad_request_fails_at_once(svor_url: str, fake: FakeTime, clip: SyntheticClip) -> None:
    client = client_for(svor_url, fake)
    with pytest.raises(UpstreamBadRequest, match="frame_index"):
        client.segment(clip.path, SvorPrompt(frame_index=99, boxes=[(0.1, 0.3, 0.2, 0.3)]))
    assert stats(svor_url)["requests"] == {"sam3_prompt_seg": {"400": 1}}
    assert client.stats["retries"] == {}


@pytest.mark.parametrize(("key", "status"), [(None, "401"), ("wrong", "403")])
def test_bad_key_fails_at_once(
    keyed_url: str, fake: FakeTime, clip: SyntheticClip, key: str | None, status: str
) -> None:
    httpx.delete(f"{keyed_url}/_stats").raise_for_status()
    client = client_for(keyed_url, fake, api_key=key)
    with pytest.raises(UpstreamAuth, match="SVOR_API_KEY"):
        client.segment(clip.path, SvorPrompt(boxes=[(0.1, 0.3, 0.2, 0.3)]))
    assert stats(keyed_url)["requests"] == {"sam3_prompt_seg": {status: 1}}


def test_right_key_is_sent(keyed_url: str, fake: FakeTime, clip: SyntheticClip) -> None:
    client = client_for(keyed_url, fake, api_key=API_KEY)
    result = client.segment(clip.path, SvorPrompt(boxes=[(0.1, 0.3, 0.2, 0.3)]))
    assert result.video_url.startswith(keyed_url)


def test_failed_task_raises_its_message(
    svor_url: str, fake: FakeTime, clip: SyntheticClip, tmp_path: Path
) -> None:
    set_faults(svor_url, fail_status=1)
    with pytest.raises(UpstreamFailed, match="injected by fail_status"):
        segment(svor_url, fake, clip, tmp_path)


def test_task_that_never_completes_times_out(
    svor_url: str, fake: FakeTime, clip: SyntheticClip, tmp_path: Path
) -> None:
    set_faults(svor_url, never_complete=True)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match="within 30 s"):
        segment(svor_url, fake, clip, tmp_path, poll_deadline_s=30.0)
    assert 30.0 <= fake.now <= 30.0 + 1e-6
    assert max(fake.sleeps) <= 5.0
    assert time.monotonic() - started < 10


def test_text_only_prompt_is_refused_by_the_stand_in(
    svor_url: str, fake: FakeTime, clip: SyntheticClip
) -> None:
    client = client_for(svor_url, fake)
    with pytest.raises(UpstreamFailed, match="cannot segment from text"):
        client.segment(clip.path, SvorPrompt(text="red disc"))


def test_clip_over_3_s_is_refused(svor_url: str, fake: FakeTime, tmp_path: Path) -> None:
    long = make_clip(tmp_path / "long.mp4", frames=40)
    client = client_for(svor_url, fake)
    with pytest.raises(UpstreamBadRequest, match="at most 3 s"):
        client.segment(long.path, SvorPrompt(boxes=[(0.1, 0.3, 0.2, 0.3)]))


# --------------------------------------------------------------------------- 413: compress harder


def test_413_makes_segment_compress_harder(
    svor_url: str, fake: FakeTime, clip: SyntheticClip, tmp_path: Path
) -> None:
    set_faults(svor_url, max_body_bytes=int(clip.path.stat().st_size * 0.8))
    client, seg = segment(svor_url, fake, clip, tmp_path)
    server = stats(svor_url)
    assert server["requests"]["sam3_prompt_seg"] == {"413": 1, "200": 1}
    first, second = (u["bytes"] for u in server["uploads"])
    assert second < first
    masks = list(read_frames(seg.mask_path, "gray"))
    assert len(masks) == 16 and masks[0].shape == (64, 96)
    assert iou(masks[0] == 1, clip.masks[0] == 1) > 0.5


def test_413_makes_erase_compress_harder(
    svor_url: str, fake: FakeTime, clip: SyntheticClip, tmp_path: Path
) -> None:
    mask = tmp_path / "mask.mkv"
    with VideoWriter(mask, 96, 64, clip.fps, codec="ffv1") as writer:
        for m in clip.masks:
            writer.write(np.where(m > 0, 255, 0).astype(np.uint8))
    first_body = clip.path.stat().st_size
    set_faults(svor_url, max_body_bytes=first_body)
    engine = SvorEngine(client_for(svor_url, fake))
    result = engine.erase(clip.path, mask, tmp_path, no_progress, dilation=1)
    codes = stats(svor_url)["requests"]["mieraser"]
    assert codes == {"413": 1, "200": 1}
    assert video_size(result)[:2] == (96, 64) and video_size(result)[3] == 16


# --------------------------------------------------------------------------- small parts


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert (
        parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30
    )
    assert (
        parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0
    )
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_backoff_is_full_jitter_under_a_cap(fake: FakeTime) -> None:
    client = client_for("http://127.0.0.1:9", fake, rng=lambda: 0.5, backoff_cap_s=3.0)
    assert [client.backoff(a) for a in range(5)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    assert client.backoff(0, retry_after=9.0) == 9.0


def test_engine_from_settings_needs_a_key_off_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SVOR_API_KEY", raising=False)
    monkeypatch.delenv("VOR_SVOR_API_KEY", raising=False)
    with pytest.raises(UpstreamAuth, match="set SVOR_API_KEY"):
        engine_from_settings(Settings(svor_base_url="https://svor.example.com"))
    engine = engine_from_settings(
        Settings(svor_base_url="http://127.0.0.1:8090", svor_max_retries=2, svor_timeout_s=7)
    )
    assert engine.name == "svor" and engine.client.max_retries == 2
    assert engine.client.http.timeout.read == 7 and engine.client.http.timeout.connect == 10
