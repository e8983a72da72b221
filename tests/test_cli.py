"""The command line as a user runs it: demo, serve, remove."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import pytest

import workers.__main__ as worker_main
from services.cli import main
from services.cli.embedded import EmbeddedService, free_port, start_redis, worker_args
from services.cli.processes import alive, descendants
from services.media.synthetic import SyntheticClip
from services.media.video import probe
from services.settings import get_settings
from tests.conftest import API_KEYS

VOR = [sys.executable, "-m", "services.cli"]


def clean_env(tmp_path: Path) -> dict[str, str]:
    """A user's environment: no Redis URL, no keys; only a data directory of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOR_", "SVOR_"))}
    env["VOR_DATA_DIR"] = str(tmp_path / "data")
    return env


@pytest.mark.timeout(240)
def test_demo_runs_end_to_end_on_the_embedded_default(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [*VOR, "demo", "--out", str(out)], env=clean_env(tmp_path), capture_output=True,
        text=True, timeout=230,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "before/after:" in proc.stdout and "stage timings:" in proc.stdout
    result = probe(out / "result.mp4")
    original = probe(out / "input.mp4")
    assert (result.width, result.height, result.frames) == (
        original.width, original.height, original.frames,
    )  # fmt: skip
    assert result.audio
    picture = cv2.imread(str(out / "before_after.png"))
    assert picture is not None and picture.shape[1] > 2 * original.width - 10


def assert_celery_finds_the_workers(data_dir: Path, tmp_path: Path) -> None:
    """Celery's own command line, pointed at the running service by its data directory
    alone (``vor.json``), as the README tells operators (and Flower) to do."""
    env = clean_env(tmp_path) | {"VOR_DATA_DIR": str(data_dir)}
    celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
    deadline = time.monotonic() + 60
    while True:
        ping = subprocess.run(
            [*celery, "inspect", "ping", "--timeout", "3"],
            env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
        if "2 nodes online" in ping.stdout or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.count("pong") == 2, ping.stdout
    assert "2 nodes online" in ping.stdout


def test_the_celery_app_imports_without_a_redis_url(tmp_path: Path) -> None:
    """No URL and no ``vor serve`` to find: importing works; using the broker says why not."""
    code = (
        "import workers.celery_app as c, workers.tasks, api.app\n"
        "try:\n    c.app.conf.broker_url\nexcept Exception as e:\n    print(type(e).__name__, e)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(tmp_path),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("NotConfigured VOR_REDIS_URL is not set and no `vor serve`")


@pytest.mark.timeout(120)
def test_serve_stops_every_child_on_sigterm(tmp_path: Path) -> None:
    port, data_dir = free_port(), tmp_path / "d"
    proc = subprocess.Popen(
        [*VOR, "serve", "--port", str(port), "--workers", "1", "--data-dir", str(data_dir)],
        env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "vor is serving at" in line:
                break
        else:
            pytest.fail("vor serve did not start: " + "".join(seen))
        assert any("webhooks are signed with whsec_" in line for line in seen)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        served = json.loads((data_dir / "vor.json").read_text())
        assert served["api_url"] == f"http://127.0.0.1:{port}"
        assert f"broker: {served['broker_url']}\n" in seen
        assert f"api: {served['api_url']}\n" in seen
        assert_celery_finds_the_workers(data_dir, tmp_path)
        children = descendants(proc.pid)
        assert len(children) >= 4, "redis, api and two workers"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
        assert not (data_dir / "vor.json").exists(), "a stopped vor serve leaves its URLs behind"
        time.sleep(0.5)
        left = [pid for pid in children if alive(pid)]
        assert not left, f"children left running: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.timeout(120)
def test_api_started_before_redis_answers_503_then_serves(tmp_path: Path) -> None:
    """The API warms up at start; with Redis not up yet it starts anyway and says 503."""
    redis_port, api_port = free_port(), free_port()
    env = clean_env(tmp_path) | {"VOR_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                                 "VOR_WEBHOOK_SECRET": "whsec_" + "A" * 32}  # fmt: skip
    log = tmp_path / "api.log"
    api = subprocess.Popen(
        [*VOR, "api", "--port", str(api_port)], env=env, stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    redis_proc = None
    try:
        url = f"http://127.0.0.1:{api_port}"
        for _ in range(300):
            try:
                response = httpx.get(f"{url}/v1/jobs", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("the API did not start: " + log.read_text())
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"]
        assert "warm-up of redis skipped" in log.read_text()
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json() == {"status": "not ready",
                                "checks": {"redis": "unreachable", "storage": "ok"}}  # fmt: skip
        assert str(redis_port) not in ready.text, "an unauthenticated answer names the address"
        detail = (
            f"redis is unreachable: ConnectionError: Error 111 connecting to 127.0.0.1:{redis_port}"
        )
        assert detail in log.read_text(), "the details go to the log"

        redis_proc = start_redis(tmp_path / "redis", redis_port)
        assert httpx.get(f"{url}/v1/jobs", timeout=10).status_code == 200
    finally:
        api.terminate()
        api.wait(30)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)


@pytest.mark.timeout(180)
def test_remove_segment_then_skip_segment_against_a_server(
    service: EmbeddedService, clip2: SyntheticClip, tmp_path: Path
) -> None:
    env = {**clean_env(tmp_path), "VOR_API_KEY": API_KEYS["acme"]}
    video = tmp_path / "two.mp4"
    video.write_bytes(clip2.path.read_bytes())
    w, h = clip2.width, clip2.height
    box1 = [round(v * s) for v, s in zip(clip2.box(0, 1), (w, h, w, h), strict=True)]
    box2 = clip2.box(0, 2)
    segment = subprocess.run(
        [*VOR, "remove", str(video), "--server", service.url, "--segment",
         "--boxes", "discs:" + ",".join(map(str, box1)),
         "--boxes", "discs:" + ",".join(f"{v:.4f}" for v in box2)],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert segment.returncode == 0, segment.stderr
    assert "id 1: box" in segment.stdout and "id 2: box" in segment.stdout
    assert (tmp_path / "two_preview.png").exists()
    assert "%" in segment.stderr, "a progress bar was shown"

    out = tmp_path / "out.mp4"
    remove = subprocess.run(
        [*VOR, "remove", "--video", str(video), "--server", service.url, "--skip-segment",
         "--targets", "discs:2", "-o", str(out)],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert remove.returncode == 0, remove.stderr
    assert probe(out).frames == 12


def test_remove_reports_a_bad_prompt_clearly(
    service: EmbeddedService, clip: SyntheticClip, tmp_path: Path
) -> None:
    env = {**clean_env(tmp_path), "VOR_API_KEY": API_KEYS["acme"]}
    proc = subprocess.run(
        [*VOR, "remove", str(clip.path), "--server", service.url, "--classes", "person:a person",
         "--segment", "--engine", "local"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unsupported_prompt" in proc.stderr and "classes[0].text" in proc.stderr


def test_remove_reports_a_file_that_is_not_a_video_clearly(tmp_path: Path) -> None:
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    proc = subprocess.run(
        [*VOR, "remove", str(notes), "--boxes", "0,0,10,10"],
        env=clean_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("vor: the file is not a readable video"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_parser_knows_every_command() -> None:
    parser = main.build_parser()
    args = parser.parse_args(["worker", "--queues", "io", "--pool", "threads"])
    assert (args.queues, args.pool, args.concurrency) == ("io", "threads", None)
    assert parser.parse_args(["worker"]).queues == "cpu,io"
    assert set(main.COMMANDS) | {"svor-server"} == {
        "serve",
        "api",
        "worker",
        "remove",
        "demo",
        "svor-server",
    }


def test_a_worker_is_named_by_its_queues_and_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    args = worker_main.parser().parse_args(worker_args("cpu", "prefork", 2))
    monkeypatch.setenv("VOR_LOG_FORMAT", "json")
    get_settings.cache_clear()
    try:
        argv = worker_main.celery_argv(args, 4242)
    finally:
        get_settings.cache_clear()
    assert argv[:2] == ["--quiet", "worker"] and argv[-2:] == ["--concurrency", "2"]
    assert argv[argv.index("--hostname") + 1] == "cpu-4242@%h"
    assert argv[argv.index("--pool") + 1] == "prefork"


def test_svor_server_and_worker_run_as_their_own_modules(tmp_path: Path) -> None:
    """``vor svor-server`` becomes ``python -m services.standin``: its flags are the stand-in's."""
    out = subprocess.run(
        [*VOR, "svor-server", "--help"], env=clean_env(tmp_path), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "usage: vor svor-server" in out.stdout and "--burst-429" in out.stdout
    worker = subprocess.run(
        [*VOR, "worker", "--queues", "cpu", "--pool", "solo"], env=clean_env(tmp_path),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert worker.returncode == 2, worker.stderr
    assert worker.stderr.startswith("vor: VOR_REDIS_URL is not set"), worker.stderr
    port = free_port()
    proc = subprocess.Popen(
        [*VOR, "svor-server", "--port", str(port)], env=clean_env(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/_stats", timeout=1).status_code == 200
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
