"""Fitting an upload under the SVOR gateway's body limit, called directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.engines.svor.upload_fit import fit_upload
from services.errors import InputTooLarge
from services.media.synthetic import SyntheticClip
from services.media.video import probe


def test_the_upload_fits_its_budget_and_keeps_every_frame(
    clip: SyntheticClip, tmp_path: Path
) -> None:
    budget = clip.path.stat().st_size // 2
    seen: list[float] = []
    plan = fit_upload(clip.path, tmp_path / "up.mp4", target_bytes=budget, progress=seen.append)
    out = probe(tmp_path / "up.mp4")
    assert (tmp_path / "up.mp4").stat().st_size == plan.bytes <= budget
    assert out.frames == plan.frames == len(clip.masks) and not out.audio
    assert seen[-1] == 1.0 and plan.attempts
    plan.save(tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text())["crf"] == plan.crf


def test_a_budget_nothing_fits_is_refused(clip: SyntheticClip, tmp_path: Path) -> None:
    with pytest.raises(InputTooLarge, match="cannot be compressed under 200 bytes"):
        fit_upload(clip.path, tmp_path / "up.mp4", target_bytes=200)
