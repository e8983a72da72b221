"""Mask-convert + merge: the reference CLI's ffmpeg ``geq``/``blend`` against vor's numpy path.

    .venv/bin/python bench/masks.py [--width 854 --height 480 --frames 120 --classes 2]

Builds one object-id mask (FFV1 gray8) per class with several moving objects,
then times, on the same inputs:

- reference: per class one ffmpeg ``geq`` process picking the target ids, then
  ``blend=all_mode=lighten`` to merge, every step writing an FFV1 file;
- ours, two stages: ``select_ids`` per class, then ``union`` (what the
  mask-convert and merge stages do when run apart);
- ours, one pass: ``select_union`` (each id mask decoded once, one file written);
- floor: decoding each id mask once to numpy, nothing else; and, for scale,
  the floor plus writing one FFV1 mask (the least a method that writes its
  result can do).

The three merged masks must be identical pixel for pixel.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from services.media.masks import mask_size, select_ids, select_union, union, write_mask
from services.media.video import read_frames, run_ffmpeg


def make_id_masks(
    folder: Path, width: int, height: int, frames: int, classes: int, objects: int
) -> list[Path]:
    """Per class, ``objects`` ellipses (ids 1..objects) moving on their own paths."""
    rng = np.random.default_rng(3)
    return [
        write_mask(
            folder / f"ids_{c}.mkv",
            moving_ellipses(rng, width, height, frames, objects),
            width,
            height,
            25.0,
        )
        for c in range(classes)
    ]


def moving_ellipses(
    rng: np.random.Generator, width: int, height: int, frames: int, objects: int
) -> Iterator[np.ndarray]:
    starts = rng.uniform(0.1, 0.9, (objects, 2)) * (width, height)
    speeds = rng.uniform(-2.5, 2.5, (objects, 2))
    axes = (rng.uniform(0.04, 0.12, (objects, 2)) * min(width, height)).astype(int)
    for t in range(frames):
        ids = np.zeros((height, width), np.uint8)
        for k in range(objects):
            cx, cy = ((starts[k] + speeds[k] * t) % (width, height)).astype(int)
            size = (int(axes[k, 0]), int(axes[k, 1]))
            cv2.ellipse(ids, (int(cx), int(cy)), size, 15.0 * k + t, 0, 360, k + 1, -1)
        yield ids


def targets_for(objects: int) -> list[int]:
    """Every other id (1, 3, ...): the geq expression has to test several values."""
    return list(range(1, objects + 1, 2))


def reference(masks: list[Path], ids: list[int], folder: Path) -> Path:
    test = "+".join(f"eq(lum(X,Y),{i})" for i in ids)
    selected = []
    for n, mask in enumerate(masks):
        out = folder / f"ref_sel_{n}.mkv"
        run_ffmpeg(
            [
                "-i",
                str(mask),
                "-vf",
                f"geq=lum='if({test},255,0)'",
                "-c:v",
                "ffv1",
                "-pix_fmt",
                "gray",
                str(out),
            ]
        )
        selected.append(out)
    merged = selected[0]
    for n, other in enumerate(selected[1:]):
        out = folder / f"ref_merged_{n}.mkv"
        run_ffmpeg(
            [
                "-i",
                str(merged),
                "-i",
                str(other),
                "-filter_complex",
                "blend=all_mode=lighten",
                "-c:v",
                "ffv1",
                "-pix_fmt",
                "gray",
                str(out),
            ]
        )
        merged = out
    return merged


def two_stage(masks: list[Path], ids: list[int], folder: Path) -> Path:
    selected = [select_ids(m, ids, folder / f"sel_{n}.mkv") for n, m in enumerate(masks)]
    return union(selected, folder / "merged.mkv")


def one_pass(masks: list[Path], ids: list[int], folder: Path) -> Path:
    return select_union([(m, ids) for m in masks], folder / "one_pass.mkv")


def floor(masks: list[Path], ids: list[int], folder: Path) -> Path:
    for mask in masks:
        for _ in read_frames(mask, "gray"):
            pass
    return masks[0]


def floor_and_write(masks: list[Path], ids: list[int], folder: Path) -> Path:
    """The least any method must do: read every input once and write one FFV1 mask."""
    readers = [read_frames(mask, "gray") for mask in masks]
    frames = (group[0] for group in zip(*readers, strict=True))
    return write_mask(folder / "floor_write.mkv", frames, *mask_size(masks[0]), 25.0)


def best_time(run: Callable[[], Path], repeat: int) -> tuple[float, Path]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    assert out is not None
    return min(times), out


def frames_of_file(path: Path) -> np.ndarray:
    return np.stack(list(read_frames(path, "gray")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--objects", type=int, default=4, help="object ids per class")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per method")
    args = parser.parse_args()
    ids = targets_for(args.objects)
    with tempfile.TemporaryDirectory(prefix="vor-bench-masks-") as tmp:
        folder = Path(tmp)
        masks = make_id_masks(
            folder, args.width, args.height, args.frames, args.classes, args.objects
        )
        methods: dict[str, Callable[[list[Path], list[int], Path], Path]] = {
            "reference (ffmpeg geq + blend)": reference,
            "ours, two stages (select_ids + union)": two_stage,
            "ours, one pass (select_union)": one_pass,
            "floor (decode each id mask once)": floor,
            "floor + writing one FFV1 mask": floor_and_write,
        }
        results = {
            name: best_time(lambda fn=fn: fn(masks, ids, folder), args.repeat)  # type: ignore[misc]
            for name, fn in methods.items()
        }
        outputs = [frames_of_file(out) for name, (_, out) in results.items() if "floor" not in name]
        identical = all(np.array_equal(outputs[0], other) for other in outputs[1:])
        if not identical:
            raise SystemExit("the merged masks differ between methods")
        print(
            f"{args.classes} classes, {args.frames} frames of {args.width}x{args.height}, "
            f"ids {ids} of 1..{args.objects} per class; best of {args.repeat}; "
            f"outputs identical: {identical}, {int((outputs[0] > 0).mean() * 100)}% marked"
        )
        ref = results["reference (ffmpeg geq + blend)"][0]
        base = results["floor (decode each id mask once)"][0]
        print(f"{'method':40} {'seconds':>8} {'frames/s':>9} {'vs ref':>8} {'/ floor':>8}")
        for name, (seconds, _) in results.items():
            print(
                f"{name:40} {seconds:8.3f} {args.frames / seconds:9.1f} "
                f"{ref / seconds:7.1f}x {seconds / base:7.2f}x"
            )


if __name__ == "__main__":
    main()
