"""The physical floor: decode the clip once and encode it once, against the local pipeline.

    .venv/bin/python bench/floor.py [--repeat 2] [--frames 80]

The floor is what any service that returns a re-encoded video must spend:
PyAV decoding the input once plus libx264 encoding it once at its own size
(the settings of vor's results: crf 18, preset veryfast). It is set against
the local engine's job on bmx-trees (432x240, when ../shared/data has it) and
on a synthetic 432x240 clip, run through the real service (embedded Redis,
API, workers), where each stage's own time comes from the job's ``timings``.

To show where the time goes, it also times, in this process, the codec steps
the stages are made of: decoding the input, H.264 at the working copy's crf
14, FFV1 gray (an id mask) and FFV1 bgr0 (the erased video), each encode and
decode once over the clip.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stages import STAGES, bmx_clip, run_job  # noqa: E402
from services.cli.client import VorClient  # noqa: E402
from services.cli.embedded import EmbeddedService  # noqa: E402
from services.media.synthetic import make_clip  # noqa: E402
from services.media.video import PixelFormat, VideoWriter, read_frames, video_size  # noqa: E402


def best(run: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def codec_steps(video: Path, folder: Path, repeat: int) -> dict[str, float]:
    """Seconds of each codec step over the whole clip (best of ``repeat``)."""
    frames = list(read_frames(video))
    gray = [f[:, :, 1].copy() for f in frames]
    height, width = frames[0].shape[:2]
    fps = video_size(video)[2]

    def encode(name: str, images: list, **kwargs: Any) -> Path:
        path = folder / name
        with VideoWriter(path, width, height, fps, **kwargs) as writer:
            for image in images:
                writer.write(image)
        return path

    def decode(path: Path, fmt: PixelFormat = "bgr24") -> None:
        for _ in read_frames(path, fmt):
            pass

    steps = {
        "decode input (H.264)": best(lambda: decode(video), repeat),
        "encode H.264 crf 18 (result)": best(lambda: encode("r.mp4", frames), repeat),
        "encode H.264 crf 14 (working copy)": best(lambda: encode("w.mp4", frames, crf=14), repeat),
        "encode FFV1 gray (mask)": best(lambda: encode("m.mkv", gray, codec="ffv1"), repeat),
        "encode FFV1 bgr0 (erased)": best(
            lambda: encode("e.mkv", frames, codec="ffv1", pix_fmt="bgr0"), repeat
        ),
    }
    steps["decode FFV1 gray"] = best(lambda: decode(folder / "m.mkv", "gray"), repeat)
    steps["decode FFV1 bgr0"] = best(lambda: decode(folder / "e.mkv"), repeat)
    steps["decode H.264 crf 14"] = best(lambda: decode(folder / "w.mp4"), repeat)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="jobs per clip (best total kept)")
    parser.add_argument("--frames", type=int, default=80, help="frames of the synthetic clip")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vor-floor-"))
    synthetic = make_clip(folder / "synthetic.mp4", width=432, height=240, frames=args.frames,
                          fps=24, crf=16)  # fmt: skip
    clips: dict[str, tuple[Path, list[float]]] = {}
    found = bmx_clip(folder, None)
    if found:
        clips["bmx-trees 432x240x80"] = found
    clips[f"synthetic 432x240x{args.frames}"] = (synthetic.path, list(synthetic.box(0)))
    warm = make_clip(folder / "warm.mp4", width=96, height=64, frames=8, fps=8)

    jobs: dict[str, dict[str, Any]] = {}
    with EmbeddedService(folder / "vor", workers=1) as service:
        client = VorClient(service.url)
        run_job(client, warm.path, list(warm.box(0)), "local")  # imports, first-use costs
        for name, (video, box) in clips.items():
            runs = [run_job(client, video, box, "local") for _ in range(args.repeat)]
            jobs[name] = min(runs, key=lambda j: sum(j["timings"].values()))
    # The service is stopped: the floor is timed on an idle machine, as the jobs were.
    steps = {name: codec_steps(video, folder, 3) for name, (video, _) in clips.items()}
    report(jobs, steps)


def report(jobs: dict[str, dict[str, Any]], steps: dict[str, dict[str, float]]) -> None:
    head = f"{'clip':<24} {'floor s':>7} " + " ".join(f"{s[:8]:>8}" for s in STAGES)
    head += f" {'stages':>7} {'x floor':>7} {'wall s':>7}"
    print("local engine job through the service, stage seconds; floor = decode + H.264 encode")
    print(head)
    print("-" * len(head))
    for name, job in jobs.items():
        if job["status"] != "succeeded":
            raise SystemExit(f"{name}: job {job['id']} {job['status']}: {job.get('error')}")
        floor = steps[name]["decode input (H.264)"] + steps[name]["encode H.264 crf 18 (result)"]
        timings = job["timings"]
        total = sum(timings.values())
        cells = " ".join(f"{timings.get(s, 0.0):8.2f}" for s in STAGES)
        print(f"{name:<24} {floor:7.3f} {cells} {total:7.2f} {total / floor:6.1f}x "
              f"{job['wall_s']:7.2f}")  # fmt: skip
        print(f"{'  as multiples of floor':<32} "
              + " ".join(f"{timings.get(s, 0.0) / floor:7.1f}x" for s in STAGES))  # fmt: skip
    worst = max(sum(j["timings"].values()) / (
        steps[n]["decode input (H.264)"] + steps[n]["encode H.264 crf 18 (result)"])
        for n, j in jobs.items())  # fmt: skip
    print(f"target: stages <= 4x floor: {'met' if worst <= 4 else 'MISSED'} (worst {worst:.1f}x)\n")

    names = list(steps)
    print("codec steps over the whole clip, seconds (in-process, best of 3)")
    print(f"{'step':36} " + " ".join(f"{n[:24]:>24}" for n in names))
    for step in steps[names[0]]:
        print(f"{step:36} " + " ".join(f"{steps[n][step]:24.3f}" for n in names))


if __name__ == "__main__":
    main()
