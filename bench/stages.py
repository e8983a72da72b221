"""Where a job's time goes: per-stage wall time on both engines, through the real service.

    python bench/stages.py [--clips demo,bmx-trees,running-car] [--faults]

Starts vor (embedded Redis, API, workers) and ``vor svor-server`` as real
processes, runs each clip as a remove job on the local engine and on the svor
engine (against the stand-in; clips of at most 3 s, the svor engine's limit),
and prints one row per job: submit-to-done
wall time, each stage's own time, the service's overhead (wall minus stages),
and for svor the bytes uploaded against the input's size and the faults the
client retried through.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.cli.client import VorClient  # noqa: E402
from services.cli.embedded import EmbeddedService, free_port  # noqa: E402
from services.media.synthetic import make_clip  # noqa: E402
from services.media.video import probe, read_frames, write_video  # noqa: E402
from services.standin.process import start_standin  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
STAGES = ["compress", "segment", "mask_convert", "merge", "erase", "publish"]


def demo_clip(folder: Path) -> tuple[Path, list[float]]:
    clip = make_clip(folder / "demo.mp4", width=320, height=192, frames=36, fps=12, audio=True)
    return clip.path, list(clip.box(0))


def bmx_clip(folder: Path, max_frames: int | None) -> tuple[Path, list[float]] | None:
    video, mask = (
        SHARED / "bmx-trees" / "bmx-trees.mp4",
        SHARED / "bmx-trees" / "bmx-trees_mask.mkv",
    )
    if not video.exists():
        return None
    first = next(read_frames(mask, "gray"))
    ys, xs = np.nonzero(first > 127)
    h, w = first.shape
    box = [xs.min() / w, ys.min() / h, (xs.max() - xs.min() + 1) / w, (ys.max() - ys.min() + 1) / h]
    if max_frames is None:
        return video, [float(v) for v in box]
    out = folder / f"bmx-{max_frames}.mp4"
    frames = [f for _, f in zip(range(max_frames), read_frames(video), strict=False)]
    write_video(out, frames, 24, crf=16)
    return out, [float(v) for v in box]


def running_car_clip() -> tuple[Path, Path] | None:
    """running-car with its square hole (an image mask, scaled by vor): no segmentation."""
    video = SHARED / "running-car" / "running_car.mp4"
    mask = SHARED / "running-car" / "mask_square.png"
    return (video, mask) if video.exists() and mask.exists() else None


def run_job(
    client: VorClient, video: Path, box: list[float] | None, engine: str, mask: Path | None = None
) -> dict:
    spec: dict = {"engine": engine}
    if box is not None:
        spec["classes"] = [{"label": "obj", "boxes": [box]}]
    started = time.monotonic()
    job = client.submit(spec, video, mask=mask)
    job = client.wait(job["id"], poll_s=0.05)
    job["wall_s"] = time.monotonic() - started
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--faults",
        action="store_true",
        help="inject 2x429 (Retry-After 1), 1x502, 1x504 before each svor job",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--clips", default="demo,bmx-trees,running-car", help="comma-separated; absent ones skip"
    )
    args = parser.parse_args()
    wanted = set(args.clips.split(","))

    folder = Path(tempfile.mkdtemp(prefix="vor-bench-"))
    clips: dict[str, tuple[Path, list[float] | None, Path | None]] = {}
    if "demo" in wanted:
        clips["demo 320x192x36"] = (*demo_clip(folder), None)
    for name, frames in (("bmx-trees 432x240x80", None), ("bmx-trees 432x240x72", 72)):
        found = bmx_clip(folder, frames) if "bmx-trees" in wanted else None
        if found:
            clips[name] = (*found, None)
    car = running_car_clip() if "running-car" in wanted else None
    if car:
        clips["running-car 972x540x292 (mask)"] = (car[0], None, car[1])
    svor_port = free_port()
    svor = start_standin(svor_port, folder / "svor.log")
    svor_url = f"http://127.0.0.1:{svor_port}"
    env = {"VOR_SVOR_BASE_URL": svor_url, "VOR_MAX_DURATION_S": "600"}
    rows = []
    try:
        with EmbeddedService(folder / "vor", workers=args.workers, env=env) as service:
            client = VorClient(service.url)
            for name, (video, box, mask) in clips.items():
                info = probe(video)
                for engine in ("local", "svor"):
                    if engine == "svor" and info.duration_s > 3.0:
                        continue
                    httpx.delete(f"{svor_url}/_stats")
                    faults = {"burst_429": 2, "retry_after": 1, "fail_502": 1, "fail_504": 1}
                    httpx.post(f"{svor_url}/_faults", json=faults if args.faults else {})
                    job = run_job(client, video, box, engine, mask)
                    stats = httpx.get(f"{svor_url}/_stats").json()
                    rows.append((name, engine, info, job, stats))
    finally:
        svor.terminate()
    print_table(rows, args.faults)


def print_table(rows: list, faults: bool) -> None:
    head = (
        f"{'clip':<30} {'engine':<6} {'status':<9} {'wall s':>7} "
        + " ".join(f"{s[:8]:>8}" for s in STAGES)
        + f" {'stages':>7} {'overhead':>8}  upload / input, upstream faults retried"
    )
    print(head)
    print("-" * len(head))
    for name, engine, info, job, stats in rows:
        timings = job.get("timings", {})
        stage_sum = sum(timings.values())
        cells = " ".join(f"{timings.get(s, 0.0):8.2f}" for s in STAGES)
        extra = ""
        if engine == "svor":
            uploads = [u["bytes"] for u in stats.get("uploads", [])]
            codes: dict[str, int] = {}
            for by_status in stats.get("requests", {}).values():
                for code, count in by_status.items():
                    if code in {"429", "502", "504"}:
                        codes[code] = codes.get(code, 0) + count
            extra = (
                f"  max {max(uploads or [0]) / 1024:.0f} KB / {info.size_bytes / 1024:.0f} KB"
                f", retried {codes or 'nothing'}"
            )
        print(
            f"{name:<30} {engine:<6} {job['status']:<9} {job['wall_s']:7.2f} {cells} "
            f"{stage_sum:7.2f} {job['wall_s'] - stage_sum:8.2f}{extra}"
        )
    print(
        f"\nfaults injected before each svor job: {faults}; overhead = wall - sum of stages "
        "(queueing, Celery hand-offs, storage copies, polling at 50 ms)"
    )


if __name__ == "__main__":
    main()
