"""Long videos on the svor engine: seams at window joins, and a 2-minute 720p job.

    .venv/bin/python bench/windows.py seams [--seconds 20] [--size 320x180] [--fps 12]
    .venv/bin/python bench/windows.py long [--seconds 120] [--size 1280x720] [--fps 30]
    .venv/bin/python bench/windows.py local [--whole] [--seconds 60] [--size 640x360] [--fps 30]

Starts vor (embedded Redis, API, a CPU and an I/O worker) and ``vor svor-server``
(3 s per upload, its colour detector naming the clip's two discs "ball") as real
processes, and removes disc 1 from a ``make_crossing_clip`` clip whose discs cross
every window boundary.

``seams`` (stand-in on the local engine: real inpainting) prints the mean absolute
frame-to-frame change of the result for frame pairs at window joins (the overlap
frames, where one window's erasure fades into the next) and for pairs inside a
window, in two regions: outside both discs (what the issue measures) and inside
the region erased (where the windows' own pixels show); the ratio join/inside
should be at most 1.2.

``long`` (stand-in on the boxes engine: erasure returns the video, so vor's own
cost is measured) injects 429 (with Retry-After), 502 and 504 answers, and prints
success, the windows, the peak resident memory of each worker process (VmRSS, its
pool's children included, sampled every 0.5 s), wall time, and the sum of the
upstream's task times (``/_stats``).

``local`` removes disc 1 (a box on frame 0) from a clip and from one twice as long on
the local engine through the service (windows of ``VOR_LOCAL_WINDOW_S``) and prints
the workers' peak RSS; with ``--whole``, it runs the engine's own steps (prepare,
segment, erase) in this process on the whole clip instead and prints this process's
peak RSS (``ru_maxrss``): the segment step memory-maps every frame, so that grows
with the clip's length.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory import sample  # noqa: E402
from services.cli.client import VorClient  # noqa: E402
from services.cli.embedded import EmbeddedService, free_port  # noqa: E402
from services.media.synthetic import make_crossing_clip  # noqa: E402
from services.media.video import read_frames  # noqa: E402
from services.media.windows import plan_windows  # noqa: E402
from services.standin.process import start_standin  # noqa: E402

COLOURS = "ball=#e63c28,#283ce6"
SPEC = {
    "engine": "svor",
    "classes": [{"label": "ball", "text": "ball"}],
    "targets": {"ball": [1]},
}
FAULTS = {"burst_429": 3, "retry_after": 1, "fail_502": 3, "fail_504": 3, "rate_429": 0.03}


class PeakMemory:
    """The largest RSS seen per process role while it runs (a thread sampling /proc)."""

    def __init__(self, service: EmbeddedService) -> None:
        self.service, self.peak_kb = service, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            totals: dict[str, int] = {}
            for role, (_, rss) in sample(self.service).items():
                name = role.split(" child")[0]
                if name.startswith("worker"):
                    totals[name] = totals.get(name, 0) + rss
            for name, rss in totals.items():
                self.peak_kb[name] = max(self.peak_kb.get(name, 0), rss)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def changes(result: Path, truth: list[np.ndarray], dilate_px: int) -> tuple[list[float], ...]:
    """Per frame pair (i, i+1): mean |change| outside both discs, and inside disc 1's
    erased region (its mask on either frame, grown as the erasure grows it)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1,) * 2)
    outside, erased = [], []
    previous: np.ndarray | None = None
    for index, image in enumerate(read_frames(result)):
        image = image.astype(np.float32)
        if previous is not None:
            objects = cv2.dilate(((truth[index - 1] > 0) | (truth[index] > 0)).astype(np.uint8),
                                 kernel)  # fmt: skip
            hole = ((truth[index - 1] == 1) | (truth[index] == 1)).astype(np.uint8)
            diff = np.abs(image - previous).mean(axis=2)
            outside.append(float(diff[objects == 0].mean()))
            erased.append(float(diff[hole > 0].mean()) if hole.any() else float("nan"))
        previous = image
    return outside, erased


def at_joins(windows: list[tuple[int, int]], pairs: int) -> np.ndarray:
    """Which frame pairs (i, i+1) touch a window overlap (the cross-fade and its edges)."""
    joins = np.zeros(pairs, bool)
    for (_, end), (start, _) in zip(windows, windows[1:], strict=False):
        joins[max(0, start - 1) : min(pairs, end)] = True
    return joins


def run(args: argparse.Namespace, engine: str, faults: dict[str, Any] | None) -> dict[str, Any]:
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="vor-windows-") as tmp:
        folder = Path(tmp)
        began = time.perf_counter()
        clip = make_crossing_clip(folder / "clip.mp4", seconds=args.seconds, fps=args.fps,
                                  width=width, height=height)  # fmt: skip
        made_s = time.perf_counter() - began
        port = free_port()
        standin = start_standin(port, folder / "svor.log", "--engine", engine,
                                "--text-color", COLOURS)  # fmt: skip
        upstream = f"http://127.0.0.1:{port}"
        env = {
            "VOR_SVOR_BASE_URL": upstream,
            "VOR_MAX_DURATION_S": str(args.seconds + 1),
            "VOR_STAGE_TIME_LIMIT_S": "3600",
        }
        try:
            with EmbeddedService(folder / "vor", env=env, io_threads=8) as service:
                httpx.post(f"{upstream}/_faults", json=faults or {}).raise_for_status()
                httpx.delete(f"{upstream}/_stats").raise_for_status()
                client = VorClient(service.url, timeout=60)
                with PeakMemory(service) as memory:
                    began = time.perf_counter()
                    job = client.submit(SPEC, clip.path)
                    job = client.wait(job["id"], poll_s=0.5, timeout=3600)
                    wall = time.perf_counter() - began
                stats = httpx.get(f"{upstream}/_stats").json()
                result = folder / "result.mp4"
                if job["status"] == "succeeded":
                    client.download(job["result"]["video_url"], result)
                windows = plan_windows(len(clip.masks), clip.fps, 3.0)
                out = {"job": job, "windows": windows, "wall": wall, "stats": stats,
                       "peak_kb": memory.peak_kb, "made_s": made_s}  # fmt: skip
                if engine == "local" and job["status"] == "succeeded":
                    out["changes"] = changes(result, clip.masks, 6)
                return out
        finally:
            standin.terminate()
            standin.wait(10)


def report_seams(out: dict[str, Any]) -> None:
    job = out["job"]
    print(f"job {job['status']} in {out['wall']:.1f} s; windows {job.get('windows')}")
    if "changes" not in out:
        print(job.get("error"))
        return
    windows = out["windows"]
    outside, erased = (np.array(c) for c in out["changes"])
    joins = at_joins(windows, len(outside))
    for name, values in (("outside the discs", outside), ("in the erased region", erased)):
        ok = ~np.isnan(values)
        at, inside = values[joins & ok].mean(), values[~joins & ok].mean()
        print(f"{name:22}: change at joins {at:6.3f}, inside windows {inside:6.3f}, "
              f"ratio {at / inside:5.2f} (target <= 1.2)")  # fmt: skip


def report_long(out: dict[str, Any]) -> None:
    job, stats = out["job"], out["stats"]
    tasks = stats["task_seconds"]
    upstream_s = sum(t["seconds"] for t in tasks)
    codes: dict[str, int] = {}
    for endpoint in stats["requests"].values():
        for code, count in endpoint.items():
            codes[code] = codes.get(code, 0) + count
    print(f"clip made in {out['made_s']:.0f} s; job {job['status']}; windows {job.get('windows')}")
    print(f"answers by status: {dict(sorted(codes.items()))}")
    print(f"wall {out['wall']:.1f} s; upstream tasks {len(tasks)}, their times summed "
          f"{upstream_s:.1f} s; wall / sum {out['wall'] / max(upstream_s, 1e-9):.2f}")  # fmt: skip
    print("timings:", job.get("timings"))
    for name, kb in sorted(out["peak_kb"].items()):
        print(f"peak RSS {name}: {kb / 1024:.0f} MiB (with its pool's children)")


def local_engine(args: argparse.Namespace) -> None:
    """The local engine on one clip and on one twice as long: in this process on the whole
    clip (``VOR_LOCAL_WINDOW_S=0``'s path), then through the service with its windows."""
    import resource

    from services.engines.base import no_progress
    from services.engines.local.engine import LocalEngine
    from services.media.video import probe
    from services.models import ClassPrompt

    width, height = (int(v) for v in args.size.split("x"))
    for seconds in (args.seconds / 2, args.seconds):
        with tempfile.TemporaryDirectory(prefix="vor-local-") as tmp:
            folder = Path(tmp)
            clip = make_crossing_clip(folder / "clip.mp4", seconds=seconds, fps=args.fps,
                                      width=width, height=height)  # fmt: skip
            box = list(clip.box(0, 1))
            if args.whole:
                engine = LocalEngine()
                began = time.perf_counter()
                work = engine.prepare(clip.path, probe(clip.path), folder, no_progress)
                prompt = ClassPrompt(label="red", boxes=[tuple(box)])
                seg = engine.segment(work, prompt, folder, no_progress)
                engine.erase(work, seg.mask_path, folder, no_progress, dilation=4)
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"whole clip, in process, {seconds:.0f} s {width}x{height} @ "
                      f"{args.fps:g} fps: {time.perf_counter() - began:.0f} s, "
                      f"peak RSS so far {peak:.0f} MiB")  # fmt: skip
                continue
            env = {"VOR_MAX_DURATION_S": str(seconds + 1), "VOR_STAGE_TIME_LIMIT_S": "3600"}
            with EmbeddedService(folder / "vor", env=env) as service:
                client = VorClient(service.url, timeout=60)
                spec = {"engine": "local", "classes": [{"label": "red", "boxes": [box]}]}
                with PeakMemory(service) as memory:
                    began = time.perf_counter()
                    job = client.wait(client.submit(spec, clip.path)["id"], poll_s=0.5)
                    wall = time.perf_counter() - began
            peaks = ", ".join(
                f"{n} {kb / 1024:.0f} MiB" for n, kb in sorted(memory.peak_kb.items())
            )
            print(f"service, windows, {seconds:.0f} s {width}x{height} @ {args.fps:g} fps: "
                  f"{job['status']} in {wall:.0f} s, windows {job.get('windows')}, "
                  f"peak RSS {peaks}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["seams", "long", "local"])
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--size")
    parser.add_argument("--fps", type=float)
    parser.add_argument("--whole", action="store_true", help="local: in process, no windows")
    args = parser.parse_args()
    if args.what == "seams":
        args.seconds, args.size = args.seconds or 20.0, args.size or "320x180"
        args.fps = args.fps or 12.0
        report_seams(run(args, "local", None))
    elif args.what == "local":
        args.seconds, args.size = args.seconds or 60.0, args.size or "640x360"
        args.fps = args.fps or 30.0
        local_engine(args)
    else:
        args.seconds, args.size = args.seconds or 120.0, args.size or "1280x720"
        args.fps = args.fps or 30.0
        report_long(run(args, "boxes", FAULTS))


if __name__ == "__main__":
    main()
