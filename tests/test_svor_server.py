"""The SVOR stand-in's own knobs: rate limiting, body limit, fault control, command line."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.engines.svor import SEG_PATH
from services.svor_server import (
    Faults,
    add_arguments,
    create_app,
    faults_from_args,
    serve_in_thread,
)


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


def test_command_line_flags_become_faults() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--port", "9001", "--burst-429", "3", "--retry-after", "2.5", "--never-complete"]
    )
    assert args.port == 9001 and args.api_key is None
    assert faults_from_args(args) == Faults(burst_429=3, retry_after=2.5, never_complete=True)
    assert faults_from_args(parser.parse_args([])) == Faults()
