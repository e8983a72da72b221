"""Window geometry, cutting and cross-fading, id matching across windows, and the
stand-in's colour detector: plain functions, without Celery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.jobs.plan import windowed_steps_done
from services.jobs.windowed import dilation
from services.media import stitch, windows
from services.media.synthetic import make_crossing_clip
from services.media.video import read_frames, video_size, write_video
from services.models import Job, JobSpec, Stage
from services.settings import Settings
from services.standin.colours import find_objects, parse_colour, parse_text_colours


@pytest.mark.parametrize(("frames", "fps"), [(160, 8.0), (600, 30.0), (3600, 30.0), (91, 30.0)])
def test_windows_fit_the_limit_overlap_and_cover_every_frame(frames: int, fps: float) -> None:
    found = windows.plan_windows(frames, fps, 3.0)
    assert found[0][0] == 0 and found[-1][1] == frames
    assert all((end - start) / fps <= 3.0 for start, end in found)
    length = windows.frames_per_window(fps, 3.0)
    overlap = windows.overlap_for(length)
    for (_, end), (start, _) in zip(found, found[1:], strict=False):
        assert end - start == overlap
    assert found[-1][1] - found[-1][0] > overlap


def test_a_short_clip_or_an_engine_without_a_limit_is_one_window() -> None:
    assert windows.plan_windows(90, 30.0, 3.0) == [(0, 90)]
    assert windows.plan_windows(36, 12.0, 3.0) == [(0, 36)], "3.0 s is still one upload"
    assert windows.plan_windows(18_000, 30.0, None) == [(0, 18_000)]
    assert windows.frames_per_window(30.0, 3.0) == 90
    assert windows.overlap_for(90) == windows.OVERLAP_FRAMES


def test_the_anchor_and_the_order_go_outward() -> None:
    found = [(0, 23), (18, 41), (36, 59), (54, 77)]
    assert (
        windows.anchor(found, 20) == 0
        and windows.anchor(found, 30) == 1
        and windows.anchor(found, 76) == 3
    )
    assert windows.order_from(1, 4) == [(1, None), (2, 1), (3, 2), (0, 1)]
    assert windows.cut_points(found) == [0, 20, 38, 56]


def test_blend_weights_ramp_strictly_inside_zero_and_one() -> None:
    weights = windows.blend_weights(8)
    assert np.all(np.diff(weights) > 0) and weights[0] > 0 and weights[-1] < 1
    assert np.allclose(weights + weights[::-1], 1.0)


def test_cut_and_join_give_the_video_back_with_crossfaded_overlaps(tmp_path: Path) -> None:
    frames = [np.full((16, 16, 3), 8 * i, np.uint8) for i in range(30)]
    video = write_video(tmp_path / "v.mkv", frames, 10.0, codec="ffv1", pix_fmt="bgr0")
    found = windows.plan_windows(30, 10.0, 1.2)
    parts = [tmp_path / f"w{k}.mkv" for k in range(len(found))]
    windows.cut(video, found, parts, lossless=True)
    assert [video_size(p)[3] for p in parts] == [e - s for s, e in found]
    flat = [np.full((16, 16, 3), 40 * k, np.uint8) for k in range(len(found))]
    painted = []
    for k, (start, end) in enumerate(found):
        painted.append(write_video(tmp_path / f"p{k}.mkv", [flat[k]] * (end - start), 10.0,
                                   codec="ffv1", pix_fmt="bgr0"))  # fmt: skip
    joined = list(windows.joined_frames(painted, found))
    assert len(joined) == 30
    levels = [int(image[0, 0, 0]) for image in joined]
    assert levels == sorted(levels), "each overlap fades from one window to the next"
    start, end = found[1][0], found[0][1]
    assert all(0 < levels[i] < 40 for i in range(start, end))


def test_matching_keeps_ids_by_overlap_and_by_appearance() -> None:
    red, blue = np.zeros((18, 8), np.float32), np.zeros((18, 8), np.float32)
    red[0, 7], blue[12, 7] = 1.0, 1.0
    iou = {(2, 1): 0.8, (1, 1): 0.1}
    mapping = stitch.match(iou, [1, 2, 3], {1: red, 2: blue, 3: red}, {1: blue, 5: red},
                           present={1}, next_id=6)  # fmt: skip
    assert mapping == {2: 1, 1: 5, 3: 6}, "overlap first; a returning look once; then new ids"


def test_iou_over_shared_frames() -> None:
    a = np.zeros((4, 4), np.uint8)
    a[:2, :2] = 1
    b = np.zeros((4, 4), np.uint8)
    b[:2, :1] = 7
    assert stitch.overlap_iou([a, a], [b, b]) == {(1, 7): 0.5}


def test_stitch_gives_one_id_per_object_across_windows(tmp_path: Path) -> None:
    """Window masks that number the two objects differently, and object 2 returning in a
    window of its own under a third number, come out as ids 1 and 2 throughout."""
    clip = make_crossing_clip(tmp_path / "c.mp4", seconds=6.0, fps=8.0)
    found = windows.plan_windows(len(clip.masks), clip.fps, 2.0)
    parts = []
    for k, (start, end) in enumerate(found):
        swap = np.array([0, 2, 1] if k % 2 else [0, 1, 2], np.uint8)
        masks = [swap[m] for m in clip.masks[start:end]]
        if k == len(found) - 1:
            masks = [np.where(m == swap[2], 3, m).astype(np.uint8) for m in masks]
        mask = write_video(tmp_path / f"m{k}.mkv", masks, clip.fps, codec="ffv1")
        video = write_video(tmp_path / f"v{k}.mkv", list(read_frames(clip.path))[start:end],
                            clip.fps, codec="ffv1", pix_fmt="bgr0")  # fmt: skip
        parts.append(stitch.WindowIds(mask, video))
    done = stitch.stitch(parts, found, 0, 0, tmp_path / "ids.mkv")
    assert sorted(done.boxes) == [1, 2]
    for truth, ids in zip(clip.masks, read_frames(done.mask, "gray"), strict=True):
        for obj in (1, 2):
            assert set(np.unique(ids[truth == obj])) <= {obj}


def test_the_colour_detector_numbers_objects_per_upload(tmp_path: Path) -> None:
    clip = make_crossing_clip(tmp_path / "c.mp4")
    text, colours = parse_text_colours("ball=#e63c28,#283ce6")
    assert text == "ball" and colours[0] == parse_colour("#e63c28") == (40, 60, 230)
    found = find_objects(clip.path, colours, tmp_path)
    assert [o.id for o in found.objects] == [1, 2, 3], "object 2 comes back as a new one"
    first = next(read_frames(found.mask_path, "gray"))
    assert set(np.unique(first[clip.masks[0] == 1])) <= {0, 1}
    with pytest.raises(ValueError, match="#rrggbb"):
        parse_colour("red")


def test_window_progress_counts_windows_done() -> None:
    spec = JobSpec.model_validate({"mode": "remove", "classes": [{"label": "a", "text": "a"}],
                                   "targets": {"a": [1]}})  # fmt: skip
    job = Job(id="j", tenant="t", mode="remove", engine="svor", spec=spec,
              windows=[(0, 10), (8, 20), (18, 30)])  # fmt: skip
    job.done = ["compress", "segment:a:w0", "segment:a:w2", "erase:w1"]
    assert windowed_steps_done(job, Stage.segment) == (2, 3)
    view = job.window_progress()
    assert view is not None
    assert (view.total, view.segmented, view.erased, view.done) == (3, 2, 1, 1)
    assert dilation(job, Settings()) == Settings().default_mask_dilation
