"""The stages of a long video, window by window (``job.windows``; the plan in ``plan.py``).

Each window's inputs (``work:w<k>``, ``mask:w<k>``) are cut once, by ``compress`` and
``merge``, and each window's result (``segment:<label>:w<k>``, ``erased:w<k>``) is
stored as soon as it exists, so a retried or re-enqueued job calls the upstream
again only for windows it has no result of. ``stitch`` and ``blend`` put the windows
back together as the files the one-window stages make (``segment:<label>``,
``erased``), so that everything after them is the same for every length.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.jobs.stagerun import StageRun
from services.media import stitch as stitching
from services.media import windows as geometry
from services.media.video import VideoWriter, video_size
from services.models import Job, SegmentInfo, SegmentObject, Stage
from services.settings import Settings


def _windows(job: Job) -> list[geometry.Window]:
    return [(int(start), int(end)) for start, end in job.windows]


def dilation(job: Job, settings: Settings) -> int:
    value = job.spec.options.mask_dilation
    return settings.default_mask_dilation if value is None else value


def set_windows(run: StageRun, work: Path, window_s: float | None) -> bool:
    """Cut the working copy into its windows and store each; True when they differ from
    the windows the job was planned with (it must be planned again)."""
    _, _, fps, frames = video_size(work)
    windows = geometry.plan_windows(frames, fps, window_s)
    planned = _windows(run.job)
    found = windows if len(windows) > 1 else []
    if planned != found:
        run.job = run.res.store.update(run.job.id, lambda j: setattr(j, "windows", found))
    if found:
        paths = [run.out(f"work-w{k}.mp4") for k in range(len(found))]
        geometry.cut(work, found, paths, lossless=False)
        for k, path in enumerate(paths):
            run.store(f"work:w{k}", path, run.key(f"windows/work-{k}.mp4"))
    return planned != found and (len(planned) > 1 or len(found) > 1)


def cut_mask(run: StageRun, mask: Path) -> None:
    """A long video's 0/255 mask, cut into its windows for the erase steps."""
    windows = run.job.windows
    if len(windows) < 2:
        return
    paths = [run.out(f"mask-w{k}.mkv") for k in range(len(windows))]
    geometry.cut(mask, windows, paths, lossless=True)
    for k, path in enumerate(paths):
        run.store(f"mask:w{k}", path, run.key(f"windows/mask-{k}.mkv"))


def segment(run: StageRun, label: str | None) -> None:
    """One class on one window: the user's prompt on the annotation frame's window; a box
    or point prompt elsewhere becomes the boxes found on the frames this window shares
    with the one it follows; a text prompt goes to every window as it is."""
    job, k = run.job, run.window
    assert k is not None and label is not None
    prompt = next(c for c in job.spec.classes if c.label == label)
    windows = _windows(job)
    first = geometry.anchor(windows, prompt.frame_index)
    start, end = windows[k]
    if k == first:
        prompt = prompt.model_copy(update={"frame_index": prompt.frame_index - start})
    elif not prompt.has_geometry:
        prompt = prompt.model_copy(update={"frame_index": 0})
    else:
        source = k - 1 if k > first else k + 1
        found = stitching.propagated_boxes(
            run.fetch(f"segment:{label}:w{source}"), windows[source], windows[k]
        )
        if found is None:
            _store_mask(run, label, _empty_mask(run, end - start))
            return
        frame, boxes = found
        prompt = prompt.model_copy(
            update={"frame_index": frame, "boxes": boxes, "points": [], "point_labels": []}
        )
    engine = run.res.engine(job.engine)
    result = engine.segment(
        run.fetch(f"work:w{k}"), prompt, run.folder(f"segment-{label}-w{k}"), run.progress
    )
    _store_mask(run, label, result.mask_path)
    if k == first:
        info = SegmentInfo(suggestion=result.suggestion)
        run.job = run.res.store.update(job.id, lambda j: j.segments.__setitem__(label, info))
    run.progress(1.0)


def _store_mask(run: StageRun, label: str, mask: Path) -> None:
    run.store(f"segment:{label}:w{run.window}", mask,
              run.key(f"windows/segments/{label}-{run.window}.mkv"))  # fmt: skip


def _empty_mask(run: StageRun, frames: int) -> Path:
    width, height, fps, _ = video_size(run.fetch(f"work:w{run.window}"))
    out = run.out("empty.mkv")
    blank = np.zeros((height, width), np.uint8)
    with VideoWriter(out, width, height, fps, codec="ffv1") as writer:
        for _ in range(frames):
            writer.write(blank)
    return out


def stitch(run: StageRun) -> None:
    """Every class's window masks as one id mask with one set of ids (``media.stitch``)."""
    job = run.job
    windows = _windows(job)
    for index, prompt in enumerate(job.spec.classes):
        label = prompt.label
        parts = [
            stitching.WindowIds(run.fetch(f"segment:{label}:w{k}"), run.fetch(f"work:w{k}"))
            for k in range(len(windows))
        ]
        first = geometry.anchor(windows, prompt.frame_index)
        done = stitching.stitch(parts, windows, first, prompt.frame_index, run.out(f"{label}.mkv"))
        run.store(f"segment:{label}", done.mask, run.key(f"segments/{label}.mkv"))
        objects = [SegmentObject(id=i, box=box) for i, box in done.boxes.items()]
        info = SegmentInfo(
            suggestion=job.segments.get(label, SegmentInfo()).suggestion, objects=objects
        )
        run.job = run.res.store.update(job.id, _set_segments(label, info))
        run.progress((index + 1) / len(job.spec.classes))


def _set_segments(label: str, info: SegmentInfo) -> Callable[[Job], None]:
    def change(job: Job) -> None:
        job.segments[label] = info

    return change


def erase(run: StageRun, label: str | None) -> None:
    job, k = run.job, run.window
    engine = run.res.engine(job.engine)
    erased = engine.erase(
        run.fetch(f"work:w{k}"),
        run.fetch(f"mask:w{k}"),
        run.folder(f"erase-w{k}"),
        run.progress,
        dilation=dilation(job, run.res.settings),
    )
    run.store(f"erased:w{k}", erased, run.key(f"windows/erased-{k}{erased.suffix}"))
    run.progress(1.0)


def blend(run: StageRun) -> None:
    """The erased windows as one video, cross-faded over each overlap."""
    windows = _windows(run.job)
    parts = [run.fetch(f"erased:w{k}") for k in range(len(windows))]
    joined = geometry.join(parts, windows, run.out("erased.mp4"))
    run.store("erased", joined, run.key("erased.mp4"))
    run.progress(1.0)


STAGES = {Stage.segment: segment, Stage.erase: erase}
"""The steps that run per window."""
