"""The local engine's tracker called directly: seeds from prompts, the first mask, tracking."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.engines.local.tracking import MaskTracker, id_map, seeds_from_prompt, segment_seed
from services.media.synthetic import SyntheticClip
from services.media.video import read_frames
from services.models import ClassPrompt


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_seeds_one_per_box_and_one_for_loose_points() -> None:
    prompt = ClassPrompt(
        label="x",
        boxes=[(0.0, 0.0, 0.5, 0.5)],
        points=[(0.1, 0.1), (0.9, 0.9), (0.2, 0.2)],
        point_labels=[1, 1, 0],
    )
    boxed, loose = seeds_from_prompt(prompt, 100, 80)
    assert boxed.box == (0, 0, 50, 40) and boxed.positive == [(10, 8)]
    assert loose.box is None and loose.positive == [(90, 72)]
    assert boxed.negative == loose.negative == [(20, 16)]


def test_the_first_mask_and_its_track_follow_the_disc(clip: SyntheticClip, tmp_path: Path) -> None:
    frames = list(read_frames(clip.path))
    (seed,) = seeds_from_prompt(
        ClassPrompt(label="d", boxes=[clip.box(0)]), clip.width, clip.height
    )
    first = segment_seed(frames[0], seed, frames[1:2])
    assert iou(first, clip.masks[0] == 1) > 0.6
    tracker = MaskTracker(frames[0], [first])
    for index in range(1, 6):
        (mask,) = tracker.step(frames[index], frames[index + 1])
        assert iou(mask, clip.masks[index] == 1) > 0.5, index
    ids = id_map([first, ~first], first.shape)
    assert set(np.unique(ids)) == {1, 2}
