"""Service overhead per job, and what a second class costs the segmentation stage.

    .venv/bin/python bench/overhead.py [--jobs 30] [--class-jobs 5] [--class-latency 1]

Starts vor (embedded Redis, API, CPU and I/O workers) and ``vor svor-server
--engine boxes`` (an upstream that costs no pixels) as real processes, then:

1. runs ``--jobs`` svor-engine remove jobs one after another with the upstream
   at zero latency and prints, per job, submit-to-``succeeded`` wall time (as
   the client sees it: upload, queueing, every hand-off, its own notice of the
   end) minus the stages' own work (the job's ``timings``): mean, p50, p95, max;
   the same from the server's own ``created_at``/``finished_at``;
2. sets the upstream's task latency to ``--class-latency`` seconds and runs
   jobs with one class and with two classes, alternating, and prints the
   segmentation phase's wall time (from the job entering ``segment`` to it
   leaving it, as the job's live events show; the classes run as a chord on the
   I/O worker's threads) and the two-class / one-class ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import start_upstream  # noqa: E402
from services.cli.client import VorClient  # noqa: E402
from services.cli.embedded import EmbeddedService, free_port  # noqa: E402
from services.media.synthetic import make_clip  # noqa: E402

AFTER_SEGMENT = {"mask_convert", "merge", "erase", "publish"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_job(client: VorClient, spec: dict[str, Any], video: Path) -> dict[str, Any]:
    """Submit, follow the live events to the end; the job with wall and segment-phase times."""
    began = time.monotonic()
    job = client.submit(spec, video)
    seg_in = seg_out = None
    for state in client.follow(job["id"], timeout=300, poll_s=0.02):
        now = time.monotonic()
        stage = state.get("stage")
        if stage == "segment" and seg_in is None:
            seg_in = now
        if seg_out is None and (stage in AFTER_SEGMENT or state["status"] == "succeeded"):
            seg_out = now
    wall = time.monotonic() - began
    job = client.get(job["id"])
    job["wall_s"] = wall
    job["segment_phase_s"] = (seg_out - seg_in) if seg_in and seg_out else float("nan")
    return job


def server_span(job: dict[str, Any]) -> float:
    created = datetime.fromisoformat(job["created_at"])
    finished = datetime.fromisoformat(job["finished_at"])
    return (finished - created).total_seconds()


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:44} {statistics.mean(ms):7.0f} {percentile(ms, 0.5):7.0f} "
        f"{percentile(ms, 0.95):7.0f} {max(ms):7.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=30, help="sequential jobs for the overhead")
    parser.add_argument("--class-jobs", type=int, default=5, help="jobs per class count")
    parser.add_argument("--class-latency", type=float, default=1.0, help="upstream s per task")
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vor-overhead-"))
    clip = make_clip(
        folder / "clip.mp4", width=args.width, height=args.height, frames=args.frames, fps=8
    )
    box = list(clip.box(0))
    one = {"engine": "svor", "classes": [{"label": "a", "boxes": [box]}]}
    two = {"engine": "svor", "classes": [{"label": "a", "boxes": [box]},
                                         {"label": "b", "boxes": [box]}]}  # fmt: skip
    port = free_port()
    upstream_url = f"http://127.0.0.1:{port}"
    upstream = start_upstream(port, 0.0, folder / "svor.log")
    env = {"VOR_SVOR_BASE_URL": upstream_url}
    try:
        with EmbeddedService(folder / "vor", env=env) as service:
            client = VorClient(service.url)
            timed_job(client, one, clip.path)  # warm-up: imports, connections
            jobs = [timed_job(client, one, clip.path) for _ in range(args.jobs)]
            httpx.post(f"{upstream_url}/_faults", json={"task_latency_s": args.class_latency})
            by_classes: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
            for _ in range(args.class_jobs):
                by_classes[1].append(timed_job(client, one, clip.path))
                by_classes[2].append(timed_job(client, two, clip.path))
    finally:
        upstream.terminate()
    report(args, jobs, by_classes)


def report(args: argparse.Namespace, jobs: list, by_classes: dict[int, list]) -> None:
    failed = [j["id"] for j in jobs + by_classes[1] + by_classes[2] if j["status"] != "succeeded"]
    if failed:
        raise SystemExit(f"jobs did not succeed: {failed}")
    stages = [sum(j["timings"].values()) for j in jobs]
    wall = [j["wall_s"] for j in jobs]
    client_over = [w - s for w, s in zip(wall, stages, strict=True)]
    server_over = [server_span(j) - s for j, s in zip(jobs, stages, strict=True)]
    print(
        f"{args.jobs} sequential svor-engine jobs, upstream `svor-server --engine boxes` at zero "
        f"latency, clip {args.width}x{args.height}x{args.frames}"
    )
    print(f"{'per job (ms)':44} {'mean':>7} {'p50':>7} {'p95':>7} {'max':>7}")
    print(summary("submit -> succeeded, client wall", wall))
    print(summary("sum of stage timings", stages))
    print(summary("overhead, client (wall - stages)", client_over))
    print(summary("overhead, server (finished - created - stages)", server_over))
    mean_stage = {
        name: statistics.mean(j["timings"].get(name, 0.0) for j in jobs) * 1000
        for name in jobs[0]["timings"]
    }
    print("stage means (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in mean_stage.items()))
    target = percentile(client_over, 0.95) * 1000 < 300
    print(f"target: overhead < 300 ms per job (p95, client): {'met' if target else 'MISSED'}\n")

    print(f"segmentation with upstream task latency {args.class_latency:g} s, "
          f"{args.class_jobs} jobs each, alternating")  # fmt: skip
    print(f"{'classes':>7} {'segment phase s (median)':>25} {'min':>6} {'max':>6} "
          f"{'timings.segment s':>18} {'job wall s':>10}")  # fmt: skip
    medians = {}
    for count, group in by_classes.items():
        phase = [j["segment_phase_s"] for j in group]
        medians[count] = statistics.median(phase)
        print(
            f"{count:7d} {medians[count]:25.2f} {min(phase):6.2f} {max(phase):6.2f} "
            f"{statistics.median(j['timings']['segment'] for j in group):18.2f} "
            f"{statistics.median(j['wall_s'] for j in group):10.2f}"
        )
    ratio = medians[2] / medians[1]
    print(f"two classes / one class, segment phase: {ratio:.2f}x "
          f"(target <= 1.3x: {'met' if ratio <= 1.3 else 'MISSED'})")  # fmt: skip


if __name__ == "__main__":
    main()
