"""vor's svor path beside the reference CLI's documented workflow, on the same clips in one run.

    python bench/vs_reference.py [--clips synthetic,running-car] [--latency 2] [--jobs 6]
                                 [--repeat 3] [--workers 1,2] [--profile]

The upstream is ``vor svor-server --engine boxes --task-latency-s LATENCY`` (a
real process): each task takes LATENCY seconds, segmentation returns the
prompted box as the object, erasure returns the uploaded video. Both sides
remove one class prompted by one box from 3 s clips of 640x360.

- **reference**: the workflow of the SVOR skill document, step by step, as its
  CLI does it: compress with ffmpeg so the upload fits the ~1000 KB gateway,
  upload to ``sam3_prompt_seg``, poll its status every 3 s, download the
  object-id mask, turn the target id into 255 (ffmpeg ``geq``), merge the
  classes (``blend=all_mode=lighten``; with one class, a copy), upload video
  and mask to ``mieraser``, poll every 3 s, download the erased (small) video.
  ffmpeg is imageio-ffmpeg's static binary. Its CPU is this process's own
  (HTTP, polling) plus every ffmpeg child's.
- **vor**: ``vor serve`` (embedded Redis, API, a prefork CPU worker, a threaded
  I/O worker) with the svor engine, once per ``--workers`` setting (the CPU
  pool's processes; by default cores - 1, ``vor serve``'s default before
  issue 9, and one per core, its default now); a job is submit, wait for
  ``succeeded``, download the full-resolution result. Its CPU is that of
  every vor process (``vor serve``, API, workers and their children; Redis
  apart), read from ``/proc``. One job runs first to warm the worker pools and
  is not counted.
  vor's shared limits on upstream calls are lifted (``VOR_SVOR_RATE_LIMIT_PER_S=0``,
  ``VOR_SVOR_MAX_CONCURRENCY=0``): the reference has none, and at their
  defaults (5 calls/s) six jobs at once would wait on them by design.

The upstream floor is the stand-in's own time per task (``GET /_stats``,
``task_seconds``: accepted to completed), segmentation plus erasure per job.
``--profile`` then times each step of vor's svor path in this process on the
first clip (CPU and wall), with the upstream at zero latency.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.cli.client import VorClient  # noqa: E402
from services.cli.embedded import free_port  # noqa: E402
from services.cli.processes import descendants  # noqa: E402
from services.media.synthetic import make_clip  # noqa: E402
from services.media.video import VideoWriter, ffmpeg_exe, probe, read_frames, run_ffmpeg, video_size  # noqa: E402
from services.standin.process import start_standin  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
API = "/customize/xiaomi-ev/video_obj_removal/customize/v1/videos"
SEG, ERASE = f"{API}/sam3_prompt_seg", f"{API}/mieraser"
GATEWAY_BYTES = 1000 * 1024
REFERENCE_POLL_S = 3.0
DEFAULT_WORKERS = (max(1, (os.cpu_count() or 2) - 1), os.cpu_count() or 1)
"""The CPU pool ``vor serve`` had by default (cores - 1), and the one it has (one per core)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- clips


def synthetic_clip(folder: Path) -> tuple[str, Path, list[float]]:
    clip = make_clip(
        folder / "synthetic.mp4", width=640, height=360, frames=75, fps=25, audio=True, crf=18
    )
    return "synthetic 640x360x75", clip.path, [round(v, 4) for v in clip.box(0)]


def running_car_clip(folder: Path) -> tuple[str, Path, list[float]] | None:
    """The first 3 s of running-car at 640x360; the box is its square hole (scaled)."""
    video = SHARED / "running-car" / "running_car.mp4"
    if not video.exists():
        return None
    out = folder / "running-car.mp4"
    run_ffmpeg(
        [
            "-i",
            str(video),
            "-t",
            "3",
            "-vf",
            "scale=640:360",
            "-an",
            "-c:v",
            "libx264",
            "-crf",
            "18",
            "-preset",
            "veryfast",
            str(out),
        ]
    )
    return "running-car 640x360x75", out, [0.1736, 0.15, 0.6505, 0.6958]


# --------------------------------------------------------------------------- CPU


def _ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of one process, in clock ticks (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return sum(int(v) for v in fields[11:15])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _role(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    words = [a.decode(errors="replace") for a in args]
    if "worker" in words or "workers" in words:
        return "worker-" + words[words.index("--queues") + 1] if "--queues" in words else "worker"
    if "api" in words:
        return "api"
    return "redis" if _comm(pid).startswith("redis") else "serve"


def tree_cpu(root: int) -> dict[str, float]:
    """CPU seconds of ``root`` and every process under it, by role (``vor serve``'s children).

    Live processes count with their reaped children (cutime), so a child that
    exits between two readings is still counted once, through its parent.
    """
    out: dict[str, float] = {"serve": _ticks(root) / CLK_TCK}
    for child in [p for p in descendants(root) if _parent(p) == root]:
        role = _role(child)
        total = sum(_ticks(p) for p in [child, *descendants(child)]) / CLK_TCK
        out[role] = out.get(role, 0.0) + total
    return out


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def tree_cpu_s(root: int) -> float:
    """CPU seconds of the vor processes under ``root`` (``vor serve``), Redis apart."""
    return sum(v for role, v in tree_cpu(root).items() if role != "redis")


def own_cpu_s() -> float:
    """This process's CPU (every thread) plus that of its reaped children (ffmpeg)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


# --------------------------------------------------------------------------- the reference


def ffmpeg(*args: str) -> None:
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args],
        check=True,
        capture_output=True,
    )


def reference_job(upstream: str, video: Path, box: list[float], work: Path) -> Path:
    """The skill document's workflow for one class prompted by one box."""
    work.mkdir(parents=True, exist_ok=True)
    local = work / "input.mp4"
    shutil.copyfile(video, local)
    upload = local
    if local.stat().st_size > GATEWAY_BYTES // 5:
        upload = work / "compressed.mp4"
        ffmpeg("-i", str(local), "-vf", "scale=512:-2", "-crf", "32", str(upload))
    with httpx.Client(base_url=upstream, timeout=60) as http:
        form = {
            "frame_index": "0",
            "bounding_boxes": json.dumps([box]),
            "bounding_box_labels": json.dumps([1]),
        }
        with upload.open("rb") as handle:
            answer = http.post(SEG, files={"input_video": handle}, data=form).json()
        done = _poll(http, SEG, answer["task_id"])
        raw = work / "mask_obj_raw.mkv"
        raw.write_bytes(http.get(done["video_path"]).content)
        final = work / "mask_obj_final.mp4"
        ffmpeg(
            "-i",
            str(raw),
            "-vf",
            "geq=lum='if(eq(lum(X,Y),1),255,0)'",
            "-pix_fmt",
            "gray",
            str(final),
        )
        merged = work / "mask_merged.mp4"
        shutil.copyfile(final, merged)
        with upload.open("rb") as vf, merged.open("rb") as mf:
            answer = http.post(ERASE, files={"input_video": vf, "input_mask": mf}).json()
        done = _poll(http, ERASE, answer["task_id"])
        out = work / "removed.mp4"
        out.write_bytes(http.get(done["video_path"]).content)
    return out


def _poll(http: httpx.Client, path: str, task_id: str) -> dict[str, Any]:
    while True:
        time.sleep(REFERENCE_POLL_S)
        body = http.get(f"{path}/status/{task_id}").json()
        if body.get("status") == "completed":
            return dict(body)
        if body.get("status") == "failed":
            raise RuntimeError(f"task failed: {body.get('error_message')}")


# --------------------------------------------------------------------------- vor


@contextmanager
def vor_serve(
    folder: Path, upstream: str, workers: int | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOR_", "SVOR_"))}
    env |= {
        "VOR_SVOR_BASE_URL": upstream,
        "VOR_ENGINE": "svor",
        "VOR_SVOR_RATE_LIMIT_PER_S": "0",
        "VOR_SVOR_MAX_CONCURRENCY": "0",
    }
    log = (folder / "vor-serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(folder / "vor"),
            *(["--workers", str(workers)] if workers else []),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=os.getcwd(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vor serve did not start; see {folder / 'vor-serve.log'}")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def vor_job(url: str, video: Path, box: list[float], work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    client = VorClient(url)
    spec = {"engine": "svor", "classes": [{"label": "obj", "boxes": [box]}]}
    job = client.submit(spec, video)
    job = client.wait(job["id"])
    if job["status"] != "succeeded":
        raise RuntimeError(f"vor job {job['id']} {job['status']}: {job.get('error')}")
    client.download(job["result"]["video_url"], work / "result.mp4")
    return job


# --------------------------------------------------------------------------- runs


def timed(jobs: int, run: Callable[[int], Any], cpu: Callable[[], float]) -> dict[str, Any]:
    """``jobs`` runs at once (threads): wall seconds, CPU per job, what each returned."""
    cpu0, began = cpu(), time.monotonic()
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(run, range(jobs)))
    wall = time.monotonic() - began
    return {"wall": wall, "cpu": (cpu() - cpu0) / jobs, "results": results}


def upstream_floor(upstream: str) -> float | None:
    """Mean task seconds per job (segmentation + erasure) since the last reset; None if the
    stand-in does not report them."""
    seconds = httpx.get(f"{upstream}/_stats").json().get("task_seconds")
    if not seconds:
        return None
    by_kind: dict[str, list[float]] = {}
    for entry in seconds:
        by_kind.setdefault(entry["endpoint"], []).append(entry["seconds"])
    return sum(statistics.mean(v) for v in by_kind.values())


def measure(
    run: Callable[[str], Callable[[int], Any]],
    cpu: Callable[[], float],
    upstream: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """``--repeat`` single jobs, then ``--jobs`` at once: wall, CPU per job, the floor."""
    singles, floors = [], []
    for r in range(args.repeat):
        httpx.delete(f"{upstream}/_stats")
        singles.append(timed(1, run(f"one{r}-"), cpu))
        floors.append(upstream_floor(upstream))
    httpx.delete(f"{upstream}/_stats")
    many = timed(args.jobs, run("many-"), cpu)
    known = [f for f in floors if f is not None]
    return {
        "one": statistics.median(s["wall"] for s in singles),
        "ones": [s["wall"] for s in singles],
        "cpu_one": statistics.median(s["cpu"] for s in singles),
        "many": many["wall"],
        "cpu_many": many["cpu"],
        "floor_one": statistics.median(known) if known else None,
        "floor_many": upstream_floor(upstream),
        "singles": singles,
    }


def measure_clip(
    folder: Path, upstream: str, clip: tuple[str, Path, list[float]], args: argparse.Namespace
) -> dict[str, Any]:
    """The reference, then vor under each ``--workers`` setting, on one clip."""
    name, video, box = clip
    out: dict[str, Any] = {"name": name, "bytes": video.stat().st_size, "vor": {}}

    def ref(tag: str) -> Callable[[int], Path]:
        return lambda i: reference_job(upstream, video, box, folder / f"ref-{name[:5]}-{tag}{i}")

    out["reference"] = measure(ref, own_cpu_s, upstream, args)
    for workers in args.workers:
        with vor_serve(folder / f"serve-{name[:5]}-{workers}", upstream, workers) as (url, proc):
            vor_cpu = lambda: tree_cpu_s(proc.pid)  # noqa: E731

            def ours(tag: str, url: str = url) -> Callable[[int], dict[str, Any]]:
                return lambda i: vor_job(url, video, box, folder / f"vor-{name[:5]}-{tag}{i}")

            timed(1, ours("warm"), vor_cpu)
            roles0 = tree_cpu(proc.pid)
            result = measure(ours, vor_cpu, upstream, args)
            roles1 = tree_cpu(proc.pid)
        count = args.repeat + args.jobs
        result["roles"] = {k: (roles1[k] - roles0.get(k, 0.0)) / count for k in roles1}
        result["timings"] = [s["results"][0]["timings"] for s in result["singles"]]
        out["vor"][workers] = result
    return out


def print_report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"upstream: vor svor-server --engine boxes --task-latency-s {args.latency:g}; "
        f"one job = median of {args.repeat}; {args.jobs} jobs at once = one run"
    )
    for row in rows:
        print(f"\n{row['name']} ({row['bytes'] / 1024:.0f} KB), one class prompted by a box")
        head = (
            f"{'':<38} {'one job s':>10} {f'{args.jobs} at once s':>13} {'ratio':>6} "
            f"{'CPU/job s':>10} {'CPU/job s':>10}"
        )
        print(head)
        print(
            f"{'':<38} {'(wall)':>10} {'(wall)':>13} {'':>6} {'(one)':>10} "
            f"{f'({args.jobs} at once)':>10}"
        )
        print("-" * len(head))
        first = next(iter(row["vor"].values()))
        floor = first["floor_one"]
        if floor is not None:
            many_floor = first["floor_many"] or float("nan")
            print(f"{'upstream floor (task time per job)':<38} {floor:10.2f} {many_floor:13.2f}")
        sides = [("reference workflow (3 s polls)", row["reference"])]
        sides += [(f"vor (vor serve --workers {w})", v) for w, v in row["vor"].items()]
        for label, s in sides:
            print(
                f"{label:<38} {s['one']:10.2f} {s['many']:13.2f} {s['many'] / s['one']:6.2f} "
                f"{s['cpu_one']:10.2f} {s['cpu_many']:10.2f}"
            )
        r = row["reference"]
        print(f"reference: single runs, wall s: {_fmt(r['ones'])}")
        stages = ("compress", "segment", "mask_convert", "merge", "erase", "publish")
        for workers, v in row["vor"].items():
            means = {s: statistics.mean(t.get(s, 0.0) for t in v["timings"]) for s in stages}
            print(f"vor --workers {workers}: single runs, wall s: {_fmt(v['ones'])}")
            print(
                "  stage seconds (mean of the single jobs): "
                + ", ".join(f"{s} {t:.2f}" for s, t in means.items())
            )
            print(
                "  CPU per job by process, s: "
                + ", ".join(f"{k} {t:.2f}" for k, t in sorted(v["roles"].items()))
            )
            verdicts = []
            if floor is not None:
                verdicts.append(
                    _verdict(f"one job <= floor + 1.0 s ({floor + 1:.2f})", v["one"] <= floor + 1)
                )
            ratio = v["many"] / v["one"]
            verdicts.append(
                _verdict(f"{args.jobs} at once <= 1.3x one ({ratio:.2f}x)", ratio <= 1.3)
            )
            cpu = v["cpu_one"] / r["cpu_one"]
            verdicts.append(_verdict(f"CPU per job <= 2x the reference's ({cpu:.2f}x)", cpu <= 2))
            print("  targets: " + "; ".join(verdicts))


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _verdict(text: str, ok: bool) -> str:
    return f"{text}: {'met' if ok else 'MISSED'}"


# --------------------------------------------------------------------------- profile


def profile(folder: Path, upstream: str, clip: tuple[str, Path, list[float]]) -> None:
    """Each step of vor's svor path, in this process: CPU and wall seconds."""
    from services.engines.base import no_progress
    from services.engines.svor.engine import SvorClient, SvorEngine
    from services.media import compose, masks, preview
    from services.models import ClassPrompt

    name, video, box = clip
    httpx.post(f"{upstream}/_faults", json={}).raise_for_status()
    work = folder / "profile"
    work.mkdir()
    engine = SvorEngine(SvorClient(httpx.Client(timeout=60), base_url=upstream, api_key=None))
    info = probe(video)
    rows: list[tuple[str, float, float]] = []

    def step(label: str, call: Callable[[], Any]) -> Any:
        cpu0, wall0 = time.process_time(), time.monotonic()
        result = call()
        rows.append((label, time.process_time() - cpu0, time.monotonic() - wall0))
        return result

    upload = step(
        "compress: fit the upload", lambda: engine.prepare(video, info, work, no_progress)
    )
    seg_dir = work / "seg"
    seg_dir.mkdir()
    prompt = ClassPrompt(label="obj", boxes=[tuple(box)])  # type: ignore[list-item]
    seg = step(
        "segment: call + id mask", lambda: engine.segment(upload, prompt, seg_dir, no_progress)
    )
    mask = step(
        "merge: select_union",
        lambda: masks.select_union([(seg.mask_path, None)], work / "mask.mkv"),
    )
    erase_dir = work / "erase"
    erase_dir.mkdir()
    erased = step(
        "erase: call + conform",
        lambda: engine.erase(upload, mask, erase_dir, no_progress, dilation=4),
    )
    step(
        "publish: composite",
        lambda: compose.composite(video, erased, mask, work / "result.mp4", dilation=4),
    )
    step(
        "publish: preview",
        lambda: preview.preview_png(video, seg.mask_path, 0, work / "preview.png"),
    )
    print(
        f"\nprofile of vor's svor path on {name}, in-process, upstream at zero latency "
        "(the upstream's own work runs in its process and is not counted)"
    )
    print(f"{'step':<28} {'CPU s':>7} {'wall s':>7}")
    for label, cpu, wall in rows:
        print(f"{label:<28} {cpu:7.3f} {wall:7.3f}")
    print(f"{'total':<28} {sum(r[1] for r in rows):7.3f} {sum(r[2] for r in rows):7.3f}")


ENCODES = {
    "veryfast": None,
    "veryfast, me=dia, intra-only partitions": "me=dia:partitions=i8x8,i4x4",
    "veryfast, + subme=1 (vor's result)": "me=dia:partitions=i8x8,i4x4:subme=1",
    "superfast": "superfast",
}


def encode_settings(clips: list[tuple[str, Path, list[float]]], folder: Path) -> None:
    """The result's encode (CRF 17) with each setting: CPU, bytes, PSNR against the input."""
    import numpy as np

    print("\nthe result's H.264 encode at CRF 17, each setting (CPU best of 2; PSNR of the")
    print("re-encode against the decoded input)")
    print(f"{'clip':<24} {'setting':<42} {'CPU s':>6} {'bytes':>8} {'PSNR dB':>8}")
    for name, video, _ in clips:
        frames = list(read_frames(video, "yuv420p"))
        height, width = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
        fps = video_size(video)[2]
        for label, setting in ENCODES.items():
            out, best = folder / "encode.mp4", float("inf")
            for _ in range(2):
                preset = setting if setting == "superfast" else "veryfast"
                params = None if setting in (None, "superfast") else setting
                cpu0 = time.process_time()
                with VideoWriter(
                    out, width, height, fps, crf=17, preset=preset, x264_params=params
                ) as writer:
                    for frame in frames:
                        writer.write(frame, "yuv420p")
                best = min(best, time.process_time() - cpu0)
            pairs = zip(frames, read_frames(out, "yuv420p"), strict=True)
            mse = np.mean([np.mean((a.astype(float) - b) ** 2) for a, b in pairs])
            psnr = 10 * np.log10(255**2 / mse)
            print(f"{name:<24} {label:<42} {best:6.3f} {out.stat().st_size:8d} {psnr:8.2f}")


MASK_ENCODES = {
    "superfast": ("superfast", None),
    "ultrafast, CABAC on (vor's erase mask)": ("ultrafast", "cabac=1"),
    "ultrafast": ("ultrafast", None),
}


def mask_encode_settings(clips: list[tuple[str, Path, list[float]]], folder: Path) -> None:
    """The erase mask's lossless gray H.264, each setting, on each clip's box (75 frames)."""
    import numpy as np

    print("\nthe erase mask as lossless gray H.264, each setting (the clip's box, CPU best of 3)")
    print(f"{'clip':<24} {'setting':<42} {'CPU s':>6} {'bytes':>8}")
    for name, video, box in clips:
        width, height, fps, frames = video_size(video)
        hole = np.zeros((height, width), np.uint8)
        sizes = (width, height, width, height)
        x, y, w, h = (round(v * s) for v, s in zip(box, sizes, strict=True))
        hole[y : y + h, x : x + w] = 255
        for label, (preset, params) in MASK_ENCODES.items():
            out, best = folder / "mask.mp4", float("inf")
            for _ in range(3):
                cpu0 = time.process_time()
                with VideoWriter(
                    out, width, height, fps, pix_fmt="gray", crf=0, preset=preset,
                    x264_params=params,
                ) as writer:  # fmt: skip
                    for _ in range(frames):
                        writer.write(hole)
                best = min(best, time.process_time() - cpu0)
            print(f"{name:<24} {label:<42} {best:6.3f} {out.stat().st_size:8d}")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", default="synthetic,running-car")
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--workers",
        default=",".join(map(str, DEFAULT_WORKERS)),
        help="comma-separated vor serve --workers settings, each measured in turn",
    )
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="vor-vs-ref-"))
    wanted = set(args.clips.split(","))
    clips = [synthetic_clip(folder)] if "synthetic" in wanted else []
    car = running_car_clip(folder) if "running-car" in wanted else None
    if car:
        clips.append(car)
    port = free_port()
    upstream_proc = start_standin(
        port,
        folder / "svor.log",
        "--engine",
        "boxes",
        "--task-latency-s",
        str(args.latency),
        niceness=10,
    )
    upstream = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for clip in clips:
            rows.append(measure_clip(folder, upstream, clip, args))
        print_report(rows, args)
        if args.profile and clips:
            profile(folder, upstream, clips[0])
            encode_settings(clips, folder)
            mask_encode_settings(clips, folder)
    finally:
        upstream_proc.terminate()
        upstream_proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
