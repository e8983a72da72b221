"""Quality and speed of the local engine against ground truth; prints one table.

    .venv/bin/python bench/quality.py            # shared clips (if present) + synthetic
    .venv/bin/python bench/quality.py --full     # running-car also at its own 972x540
    .venv/bin/python bench/quality.py --long     # peak RSS erasing a 60 s 720p synthetic clip

Segmentation: a box around the true mask on the first, middle and last frame,
tracked through the clip; J is the mean per-frame IoU. Completion: a hole is cut
(blacked out) from real frames, erased, and compared with the original frames
inside the hole, beside per-frame OpenCV Telea on the same holes. Flicker is the
mean absolute change from one frame to the next inside the hole. Everything runs
on one core (cv2.setNumThreads(1)).
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.engines.base import no_progress  # noqa: E402
from services.engines.local.engine import LocalEngine  # noqa: E402
from services.engines.local.inpaint import VideoEraser, telea  # noqa: E402
from services.media.synthetic import make_clip, textured_background  # noqa: E402
from services.media.video import VideoWriter, read_frames  # noqa: E402
from services.models import ClassPrompt  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DILATION = 4


@dataclass
class Row:
    clip: str
    j: list[float] = field(default_factory=list)
    psnr: tuple[float, float] | None = None
    ssim: tuple[float, float] | None = None
    flicker: tuple[float, float] | None = None
    segment_fps: float | None = None
    erase_fps: float | None = None


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def box_of(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (
        xs.min() / w,
        ys.min() / h,
        (xs.max() + 1 - xs.min()) / w,
        (ys.max() + 1 - ys.min()) / h,
    )


def measure_segmentation(video: Path, truth: list[np.ndarray], row: Row, work: Path) -> None:
    last = len(truth) - 1
    for start in (0, last // 2, last):
        prompt = ClassPrompt(label="obj", boxes=[box_of(truth[start])], frame_index=start)
        began = time.perf_counter()
        seg = LocalEngine().segment(video, prompt, work, no_progress)
        elapsed = time.perf_counter() - began
        ids = list(read_frames(seg.mask_path, "gray"))
        row.j.append(float(np.mean([iou(m == 1, t) for m, t in zip(ids, truth, strict=True)])))
        if start == 0:
            row.segment_fps = len(truth) / elapsed


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = cv2.cvtColor(a, cv2.COLOR_BGR2GRAY).astype(np.float64)
    b = cv2.cvtColor(b, cv2.COLOR_BGR2GRAY).astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (11, 11), 1.5)

    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    return ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))


def hole_scores(
    results: list[np.ndarray], truth: list[np.ndarray], holes: list[np.ndarray]
) -> tuple[float, float, float]:
    """PSNR and SSIM inside the holes over the whole clip, and flicker inside them."""
    squared, count, ssims = 0.0, 0, []
    flicker = []
    for t, (out, ref, hole) in enumerate(zip(results, truth, holes, strict=True)):
        if not hole.any():
            continue
        diff = out.astype(np.float64)[hole] - ref.astype(np.float64)[hole]
        squared += float((diff**2).sum())
        count += diff.size
        ssims.append(float(ssim_map(out, ref)[hole].mean()))
        if t > 0:
            change = np.abs(out.astype(np.float32) - results[t - 1].astype(np.float32))
            flicker.append(float(change[hole].mean()))
    psnr = 10 * np.log10(255.0**2 / max(squared / max(count, 1), 1e-10))
    return psnr, float(np.mean(ssims)), float(np.mean(flicker)) if flicker else 0.0


def flicker_of(frames: list[np.ndarray], holes: list[np.ndarray]) -> float:
    values = [
        float(np.abs(frames[t].astype(np.float32) - frames[t - 1].astype(np.float32))[h].mean())
        for t, h in enumerate(holes)
        if t > 0 and h.any()
    ]
    return float(np.mean(values)) if values else 0.0


def measure_completion(
    frames: list[np.ndarray], holes: list[np.ndarray], truth: list[np.ndarray], row: Row
) -> None:
    """Erase ``holes`` (blacked out first, so nothing leaks) and score against ``truth``."""
    cut = []
    for image, hole in zip(frames, holes, strict=True):
        image = image.copy()
        image[hole] = 0
        cut.append(image)
    began = time.perf_counter()
    ours = list(VideoEraser().run(iter(cut), iter(holes)))
    row.erase_fps = len(frames) / (time.perf_counter() - began)
    baseline = [telea(image, hole) for image, hole in zip(cut, holes, strict=True)]
    p_ours, s_ours, f_ours = hole_scores(ours, truth, holes)
    p_telea, s_telea, _ = hole_scores(baseline, truth, holes)
    row.psnr = (p_ours, p_telea)
    row.ssim = (s_ours, s_telea)
    row.flicker = (f_ours, flicker_of(truth, holes))


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def bmx_trees(work: Path) -> Row | None:
    folder = DATA / "bmx-trees"
    if not folder.exists():
        return None
    row = Row("bmx-trees 432x240")
    video = folder / "bmx-trees.mp4"
    truth = [m > 127 for m in read_frames(folder / "bmx-trees_mask.mkv", "gray")]
    measure_segmentation(video, truth, row, work)
    frames = list(read_frames(video))
    # A moving hole that is not the rider: the rider's own mask, mirrored left-right,
    # played backwards and moved 110 px right, so it crosses trees, wall and grass.
    shift = np.float32([[1, 0, 110], [0, 1, 0]])
    holes = [
        cv2.warpAffine(np.ascontiguousarray(m[:, ::-1]).astype(np.uint8), shift, m.shape[::-1]) > 0
        for m in truth[::-1]
    ]
    measure_completion(frames, [grow(h, DILATION) for h in holes], frames, row)
    return row


def running_car(full: bool) -> Row | None:
    folder = DATA / "running-car"
    if not folder.exists():
        return None
    frames = list(read_frames(folder / "running_car.mp4"))
    height, width = frames[0].shape[:2]
    if not full:
        width, height = 432, 240
        frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames]
    square = cv2.imread(str(folder / "mask_square.png"), cv2.IMREAD_GRAYSCALE)
    hole = cv2.resize(square, (width, height), interpolation=cv2.INTER_NEAREST) > 127
    row = Row(f"running-car {width}x{height}")
    measure_completion(frames, [hole] * len(frames), frames, row)
    return row


def synthetic(work: Path) -> Row:
    clip = make_clip(work / "synthetic.mp4", width=432, height=240, frames=48, objects=2, fps=24)
    row = Row("synthetic 432x240, 2 discs")
    truth = [m == 1 for m in clip.masks]
    measure_segmentation(clip.path, truth, row, work)
    frames = list(read_frames(clip.path))
    holes = [grow(m > 0, DILATION) for m in clip.masks]
    measure_completion(frames, holes, [clip.background] * len(frames), row)
    return row


def long_clip_peak_rss(work: Path, seconds: float = 60.0) -> None:
    """Erase a 60 s 1280x720 clip through LocalEngine.erase and print the process's peak RSS."""
    width, height, fps = 1280, 720, 30.0
    frames = int(seconds * fps)
    video, mask = work / "long.mp4", work / "long_mask.mkv"
    background = textured_background(width, height)
    with (
        VideoWriter(video, width, height, fps, crf=23) as vw,
        VideoWriter(mask, width, height, fps, codec="ffv1") as mw,
    ):
        for image, hole in _moving_disc(background, frames):
            vw.write(image)
            mw.write(hole)
    before = _peak_rss_mb()
    began = time.perf_counter()
    LocalEngine().erase(video, mask, work, no_progress, dilation=DILATION)
    elapsed = time.perf_counter() - began
    print(
        f"60 s 720p erase: {frames} frames in {elapsed:.0f} s ({frames / elapsed:.1f} frames/s), "
        f"peak RSS {_peak_rss_mb():.0f} MB (before erasing: {before:.0f} MB)"
    )


def _moving_disc(background: np.ndarray, frames: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    height, width = background.shape[:2]
    radius = height // 8
    for t in range(frames):
        x = radius + int((width - 2 * radius) * ((t % 300) / 299))
        image = background.copy()
        hole = np.zeros((height, width), np.uint8)
        cv2.circle(image, (x, height // 2), radius, (30, 40, 230), -1)
        cv2.circle(hole, (x, height // 2), radius, 255, -1)
        yield image, hole


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fmt(pair: tuple[float, float] | None, digits: int) -> str:
    return "-" if pair is None else f"{pair[0]:.{digits}f} / {pair[1]:.{digits}f}"


def print_table(rows: list[Row]) -> None:
    header = (
        "| clip | J first / middle / last | PSNR hole local / Telea (dB) | SSIM hole local / Telea "
        "| flicker local / original | segment fps | erase fps | peak RSS MB |"
    )
    print(header)
    print("|" + "---|" * 8)
    for row in rows:
        j = " / ".join(f"{v:.3f}" for v in row.j) if row.j else "-"
        seg = f"{row.segment_fps:.1f}" if row.segment_fps else "-"
        era = f"{row.erase_fps:.1f}" if row.erase_fps else "-"
        print(
            f"| {row.clip} | {j} | {_fmt(row.psnr, 2)} | {_fmt(row.ssim, 3)} | "
            f"{_fmt(row.flicker, 2)} | {seg} | {era} | {_peak_rss_mb():.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="running-car at 972x540 too")
    parser.add_argument("--long", action="store_true", help="peak RSS on a 60 s 720p clip")
    parser.add_argument("--only", choices=["bmx", "car", "synthetic"], help="one clip only")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.long:
            long_clip_peak_rss(work)
            return
        rows: list[Row | None] = []
        if args.only in (None, "bmx"):
            rows.append(bmx_trees(work))
        if args.only in (None, "car"):
            rows.append(running_car(full=False))
            if args.full:
                rows.append(running_car(full=True))
        if args.only in (None, "synthetic"):
            rows.append(synthetic(work))
        print_table([r for r in rows if r is not None])


if __name__ == "__main__":
    main()
