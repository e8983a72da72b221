"""The stand-in's parts called directly: prompt fields, fault dice, the gate's answers,
its state and the task life cycle."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request

from services.engines.svor.client import ERASE_PATH, SEG_PATH
from services.errors import UpstreamFailed
from services.standin.faults import Faults, Injector
from services.standin.gate import bad_request, endpoint_of
from services.standin.prompts import BadRequest, class_prompt, parse_text_box, text_table
from services.standin.state import State, Task
from services.standin.tasks import start_task


def prompt(**fields: str | None) -> Any:
    return class_prompt(
        0,
        fields.get("text"),
        None,
        fields.get("points"),
        fields.get("point_labels"),
        fields.get("bounding_boxes"),
        fields.get("bounding_box_labels"),
    )


def test_prompt_fields_are_normalised_lists_and_refused_as_svor_refuses() -> None:
    found = prompt(bounding_boxes="[[0.1, 0.2, 0.3, 0.4]]", points="[[0.5, 0.5]]")
    assert found.boxes == [(0.1, 0.2, 0.3, 0.4)] and found.point_labels == [1]
    with pytest.raises(BadRequest, match="outside 0~1 .*not pixels"):
        prompt(bounding_boxes="[[10, 20, 30, 40]]")
    with pytest.raises(BadRequest, match="2 labels for 1 points"):
        prompt(points="[[0.5, 0.5]]", point_labels="[1, 0]")
    with pytest.raises(BadRequest, match="not valid JSON"):
        prompt(points="[0.5,")


def test_the_text_table_is_checked_like_prompts() -> None:
    assert parse_text_box("Stop Sign=0.1,0.2,0.3,0.4") == ("Stop Sign", (0.1, 0.2, 0.3, 0.4))
    assert text_table({"Stop  SIGN": [(0.1, 0.2, 0.3, 0.4)]}) == {
        "stop sign": [(0.1, 0.2, 0.3, 0.4)]
    }
    with pytest.raises(ValueError, match="inside the frame"):
        text_table({"sign": [(0.5, 0.5, 0.8, 0.1)]})


def test_counted_faults_are_used_up_on_their_endpoint_only() -> None:
    injector = Injector(Faults(fail_502=2, only="mieraser", seed=1, rate_429=0.5))
    assert not injector.take("fail_502", "sam3_prompt_seg")
    assert [injector.take("fail_502", "mieraser") for _ in range(3)] == [True, True, False]
    again = Injector(Faults(seed=1, rate_429=0.5))
    assert [injector.dice_429() for _ in range(20)] == [again.dice_429() for _ in range(20)]


def test_the_token_bucket_says_how_long_to_wait() -> None:
    injector = Injector(Faults(rate_limit_per_s=2))
    assert injector.throttle() is None and injector.throttle() is None
    wait = injector.throttle()
    assert wait is not None and 0 < wait <= 0.5


def test_the_gate_names_endpoints_and_answers_400_as_svor() -> None:
    assert endpoint_of(SEG_PATH) == "sam3_prompt_seg"
    assert endpoint_of(f"{ERASE_PATH}/status/abc") == "mieraser/status"
    assert endpoint_of("/files/x.mp4") == "files" and endpoint_of("/_stats") == "other"
    answer = bad_request("frame_index 9 is past the last frame")
    assert answer.status_code == 400
    assert (
        json.loads(answer.body)["message"] == "请求参数错误: frame_index 9 is past the last frame"
    )


@pytest.fixture
def state(tmp_path: Path) -> State:
    return State(
        None, Faults(), api_key=None, work_dir=tmp_path, max_body_bytes=1000, max_duration_s=3
    )


def request() -> Request:
    scope = {"type": "http", "scheme": "http", "server": ("svor.test", 80), "path": "/",
             "root_path": "", "query_string": b"", "headers": []}  # fmt: skip
    return Request(scope)


def wait_for(task: Task) -> Task:
    deadline = time.monotonic() + 5
    while task.status in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.01)
    return task


def test_a_task_runs_its_work_and_keeps_its_result(state: State, tmp_path: Path) -> None:
    made = tmp_path / "made.mp4"
    made.write_bytes(b"video")
    task_id = start_task(state, "mieraser", lambda: (made, {"k": 1}), request())
    task = wait_for(state.tasks[task_id])
    assert task.public() == {
        "code": 0, "task_id": task_id, "status": "completed",
        "video_path": f"http://svor.test/files/{task_id}.mp4", "extra_info": {"k": 1},
    }  # fmt: skip
    assert (state.files_dir / f"{task_id}.mp4").read_bytes() == b"video"
    assert state.snapshot()["tasks"] == 1


def test_task_faults_fail_or_hold_a_task(state: State) -> None:
    def crash() -> tuple[Path, dict[str, Any]]:
        raise UpstreamFailed("the engine gave up")

    assert (
        wait_for(state.tasks[start_task(state, "mieraser", crash, request())]).public()[
            "error_message"
        ]
        == "the engine gave up"
    )
    state.injector.set(Faults(fail_status=1))
    failed = wait_for(state.tasks[start_task(state, "mieraser", crash, request())])
    assert failed.error_message == "task failed (injected by fail_status)"
    state.injector.set(Faults(never_complete=True))
    held = state.tasks[start_task(state, "mieraser", crash, request())]
    time.sleep(0.2)
    assert held.status == "running"
