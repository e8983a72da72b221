"""The SVOR stand-in's own knobs: rate limiting, body limit, fault control, command line."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from services.engines.base import no_progress
from services.engines.svor.engine import SEG_PATH
from services.media.synthetic import make_clip
from services.media.video import read_frames
from services.models import ClassPrompt
from services.standin.boxes import BoxEngine
from services.standin.cli import add_arguments, faults_from_args, texts_from_args
from services.standin.faults import Faults
from services.standin.server import create_app, serve_in_thread


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_in_thread(create_app(max_body_bytes=4096)) as base:
        yield base


@pytest.fixture(autouse=True)
def _clean(url: str) -> None:
    httpx.post(f"{url}/_faults", json={}).raise_for_status()
    httpx.delete(f"{url}/_stats").raise_for_status()


def test_token_bucket_answers_429_with_retry_after(url: str) -> None:
    httpx.post(f"{url}/_faults", json={"rate_limit_per_s": 1}).raise_for_status()
    with httpx.Client(base_url=url) as client:
        answers = [client.get(f"{SEG_PATH}/status/nope") for _ in range(6)]
    codes = [a.status_code for a in answers]
    assert codes[0] == 404 and 429 in codes
    limited = next(a for a in answers if a.status_code == 429)
    assert float(limited.headers["retry-after"]) >= 1
    counted = httpx.get(f"{url}/_stats").json()["requests"]["sam3_prompt_seg/status"]
    assert counted["404"] + counted["429"] == 6


def test_body_over_the_limit_gets_413_and_is_counted(url: str, tmp_path: Path) -> None:
    answer = httpx.post(
        f"{url}{SEG_PATH}",
        files={"input_video": ("v.mp4", b"\0" * 5000, "video/mp4")},
        data={"frame_index": "0"},
    )
    assert answer.status_code == 413
    stats = httpx.get(f"{url}/_stats").json()
    assert stats["requests"] == {"sam3_prompt_seg": {"413": 1}}
    assert stats["uploads"][0]["bytes"] > 5000


def test_not_a_video_is_a_400(url: str) -> None:
    answer = httpx.post(
        f"{url}{SEG_PATH}",
        files={"input_video": ("v.mp4", b"not a video", "video/mp4")},
        data={"frame_index": "0", "bounding_boxes": "[[0.1, 0.1, 0.5, 0.5]]"},
    )
    assert answer.status_code == 400 and "not a readable video" in answer.json()["message"]


def test_faults_are_replaced_at_runtime_and_validated(url: str) -> None:
    set_to = httpx.post(f"{url}/_faults", json={"fail_502": 1, "only": "files"}).json()
    assert set_to["fail_502"] == 1 and set_to["burst_429"] == 0
    assert httpx.get(f"{url}/files/missing.mp4").status_code == 502
    assert httpx.get(f"{url}/files/missing.mp4").status_code == 404
    assert httpx.get(f"{url}/_faults").json()["fail_502"] == 0
    assert httpx.post(f"{url}/_faults", json={"fail_503": 1}).status_code == 400


def test_text_prompts_find_the_boxes_their_table_names(tmp_path: Path) -> None:
    with serve_in_thread(create_app()) as url:
        _text_prompts(url, tmp_path)


def _text_prompts(url: str, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "c.mp4")
    box = [round(v, 4) for v in clip.box(0)]
    assert httpx.post(f"{url}/_texts", json={"Red Disc": [box]}).status_code == 200
    assert httpx.post(f"{url}/_texts", json={"x": [[0.5, 0.5, 0.8, 0.1]]}).status_code == 400
    assert httpx.get(f"{url}/_texts").json() == {"red disc": [box]}, "the bad table replaced none"

    def segment(text: str) -> dict[str, Any]:
        with clip.path.open("rb") as handle:
            answer = httpx.post(
                f"{url}{SEG_PATH}", files={"input_video": handle},
                data={"frame_index": "0", "text": text},
            )  # fmt: skip
        return dict(answer.json())

    assert segment("a cat")["code"] == 1001 and "--text-box" in segment("a cat")["message"]
    task = segment("red  DISC")["task_id"]
    for _ in range(200):
        body = httpx.get(f"{url}{SEG_PATH}/status/{task}").json()
        if body["status"] != "running" and body["status"] != "queued":
            break
        time.sleep(0.05)
    assert body["status"] == "completed", body
    assert list(body["extra_info"]["object_boxes"]) == ["1"]
    assert "obj_id 1" in body["extra_info"]["suggest_obj"]


def test_command_line_flags_become_faults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--port", "9001", "--burst-429", "3", "--retry-after", "2.5", "--never-complete"]
    )
    assert args.port == 9001 and args.api_key is None
    assert faults_from_args(args) == Faults(burst_429=3, retry_after=2.5, never_complete=True)
    assert faults_from_args(parser.parse_args([])) == Faults()
    args = parser.parse_args(["--text-box", "sign=0.1,0.2,0.3,0.4", "--text-box", "sign=0,0,1,1"])
    assert texts_from_args(args) == {"sign": [(0.1, 0.2, 0.3, 0.4), (0.0, 0.0, 1.0, 1.0)]}
    with pytest.raises(SystemExit):
        parser.parse_args(["--text-box", "sign=0.5,0.5,0.8,0.1"])


def test_the_boxes_engine_takes_the_boxes_for_objects(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "c.mp4", frames=6)
    prompt = ClassPrompt(label="d", boxes=[clip.box(0), (0.0, 0.0, 0.25, 0.25)])
    found = BoxEngine().segment(clip.path, prompt, tmp_path, no_progress)
    assert [o.id for o in found.objects] == [1, 2] and found.suggestion == "2 boxes"
    ids = next(read_frames(found.mask_path, "gray"))
    assert set(np.unique(ids)) == {0, 1, 2}
    erased = BoxEngine().erase(clip.path, found.mask_path, tmp_path, no_progress, dilation=4)
    assert erased.read_bytes() == clip.path.read_bytes()
