"""What hostile bodies cost the API, and whether it keeps answering meanwhile.

    .venv/bin/python bench/front_door.py [--gigabytes 2] [--parsers 4] [--seconds 5]

Starts an embedded Redis and ``vor api`` alone (the limits at their defaults:
VOR_MAX_JSON_BYTES 1 MiB, VOR_MAX_UPLOAD_BYTES 500 MiB) as real processes, then:

1. offers ``--gigabytes`` of body over a raw socket, chunked (no length given),
   as JSON and as a multipart upload, and once declared in Content-Length; it
   prints how much the API took before its 413, and the API process's resident
   memory (VmRSS, sampled every 20 ms) and the bytes in files it held open
   (its temporary upload files, which have no name on disk) at their peaks;
2. polls ``GET /healthz`` for ``--seconds`` with the API idle, then again while
   ``--parsers`` clients send the largest spec the API accepts (1 MiB of
   numbers, refused for its video_url only after a full parse) back to back,
   and prints the latencies of both runs and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.support.bodies import largest_spec  # noqa: E402
from bench.support.rawhttp import RawRequest, open_file_bytes, rss_kib  # noqa: E402
from services.cli.embedded import free_port, start_redis  # noqa: E402

JSON_LIMIT = 1024 * 1024
BOUNDARY = "vorbench"


def start_api(folder: Path) -> tuple[subprocess.Popen[bytes], int, subprocess.Popen[bytes]]:
    redis_port, port = free_port(), free_port()
    redis_proc = start_redis(folder / "redis", redis_port)
    env = {
        "PATH": "/usr/bin:/bin",
        "VOR_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "VOR_DATA_DIR": str(folder / "data"),
        "VOR_WEBHOOK_SECRET": "whsec_" + "QkVOQ0gtU0VDUkVULUZPUi1WT1I=",
        "VOR_API_KEYS": "bench:key",
    }
    api = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=ROOT, stdout=(folder / "api.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return api, port, redis_proc
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"vor api did not start; see {folder / 'api.log'}")


class Peaks:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss = [rss_kib(pid)]
        self.files = [open_file_bytes(pid)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.rss.append(rss_kib(self.pid))
            self.files.append(open_file_bytes(self.pid))

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        time.sleep(0.5)
        after = rss_kib(self.pid)
        return (
            f"RSS {self.rss[0] / 1024:.0f} MiB before, peak {max(self.rss) / 1024:.0f}, "
            f"{after / 1024:.0f} after; open files peak "
            f"{(max(self.files) - self.files[0]) / 1024**2:.1f} MiB over the "
            f"{self.files[0] / 1024**2:.1f} before, {open_file_bytes(self.pid) / 1024**2:.1f} after"
        )


def offer(port: int, pid: int, name: str, headers: dict[str, str], head: bytes, total: int) -> None:
    peaks = Peaks(pid)
    began = time.monotonic()
    with RawRequest("127.0.0.1", port, "POST", "/v1/jobs", headers) as request:
        if head:
            request.send_chunk(head)
        sent = request.stream_chunks(total, timeout=600) if head else 0
        answer = request.response(timeout=30)
    took = time.monotonic() - began
    print(f"{name}: HTTP {answer.status} after {sent / 1024**2:.1f} MiB sent of "
          f"{total / 1024**3:.1f} GiB offered, {took:.2f} s; {peaks.stop()}")  # fmt: skip


def latencies(url: str, seconds: float) -> list[float]:
    found = []
    with httpx.Client(timeout=10) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            began = time.perf_counter()
            client.get(f"{url}/healthz").raise_for_status()
            found.append((time.perf_counter() - began) * 1000)
            time.sleep(0.02)
    return found


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"n={len(values)} p50 {statistics.median(values):.1f} ms, p99 {p99:.1f} ms, "
            f"max {ordered[-1]:.1f} ms")  # fmt: skip


def parse_load(url: str, parsers: int, seconds: float) -> tuple[list[float], list[float], int]:
    body = largest_spec(JSON_LIMIT)
    stop = threading.Event()
    took: list[float] = []
    statuses: list[int] = []

    def send() -> None:
        with httpx.Client(timeout=30, headers={"authorization": "Bearer key"}) as client:
            while not stop.is_set():
                began = time.perf_counter()
                response = client.post(
                    f"{url}/v1/jobs", content=body, headers={"content-type": "application/json"}
                )
                took.append((time.perf_counter() - began) * 1000)
                statuses.append(response.status_code)

    threads = [threading.Thread(target=send, daemon=True) for _ in range(parsers)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    found = latencies(url, seconds)
    stop.set()
    for thread in threads:
        thread.join()
    assert set(statuses) == {422}, set(statuses)
    return found, took, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--parsers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    total = int(args.gigabytes * 1024**3)
    folder = Path(tempfile.mkdtemp(prefix="vor-front-door-"))
    api, port, redis_proc = start_api(folder)
    url = f"http://127.0.0.1:{port}"
    auth = {"authorization": "Bearer key"}
    try:
        print(f"vor api pid {api.pid}; limits: JSON {JSON_LIMIT} B, uploads 500 MiB (defaults)")
        json_type = {**auth, "content-type": "application/json"}
        chunked = {"transfer-encoding": "chunked"}
        form_type = {**auth, "content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        video_part = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        offer(port, api.pid, "JSON, chunked", {**json_type, **chunked}, b'{"label": "', total)
        offer(port, api.pid, "multipart, chunked", {**form_type, **chunked}, video_part, total)
        declared = {**json_type, "content-length": str(total)}
        offer(port, api.pid, "JSON, Content-Length declared", declared, b"", total)
        idle = latencies(url, args.seconds)
        busy, took, size = parse_load(url, args.parsers, args.seconds)
        print(f"GET /healthz, API idle: {summary(idle)}")
        print(f"GET /healthz while {args.parsers} clients send a {size}-byte spec back to back "
              f"({len(took)} parsed, each answered 422 in p50 {statistics.median(took):.0f} ms): "
              f"{summary(busy)}")  # fmt: skip
        print(f"ratio busy/idle: p50 {statistics.median(busy) / statistics.median(idle):.1f}x, "
              f"max {max(busy) / max(idle):.1f}x")  # fmt: skip
    finally:
        api.terminate()
        api.wait(15)
        redis_proc.terminate()
        redis_proc.wait(10)


if __name__ == "__main__":
    main()
