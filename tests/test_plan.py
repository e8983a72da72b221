"""The stage plan as data, and its one translation into Celery's canvas (built, not sent)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

import pytest

from services.engines import capabilities
from services.jobs.plan import Phase, Plan, Step, plan, span, stage_key, stages
from services.models import Job, JobSpec, Queue, Stage
from services.settings import Settings, get_settings


def job(mode: str = "remove", engine: str = "local", **spec: object) -> Job:
    body: dict[str, object] = {"mode": mode, "classes": [{"label": "a", "boxes": [[0, 0, 1, 1]]}]}
    body.update(spec)
    return Job(id="job_" + "0" * 20, tenant="t", mode=mode, engine=engine,  # type: ignore[arg-type]
               spec=JobSpec.model_validate(body))  # fmt: skip


def test_stages_per_mode_and_input() -> None:
    assert stages(job()) == (
        [Stage.compress],
        ["a"],
        [Stage.mask_convert, Stage.merge, Stage.erase, Stage.publish],
    )
    assert stages(job("segment")) == ([Stage.compress], ["a"], [Stage.publish])
    own_mask = job(classes=[])
    own_mask.artifacts["mask_upload"] = "jobs/x/mask_upload.png"
    assert stages(own_mask) == ([Stage.compress], [], [Stage.erase, Stage.publish])
    reused = job(from_job="job_" + "1" * 20)
    assert stages(reused)[:2] == ([], [])


def test_engine_stages_go_to_the_queue_the_engine_declares() -> None:
    settings = Settings()
    svor = plan(job(engine="svor"), capabilities("svor", settings).queue)
    head, segments, tail = svor.phases
    assert head == Phase(((Step(Stage.compress, Queue.cpu),),))
    assert segments == Phase(((Step(Stage.segment, Queue.io, "a"),),), side_by_side=True)
    assert [s.queue for s in tail.lanes[0]] == [Queue.cpu, Queue.cpu, Queue.io, Queue.cpu]
    local = plan(job(), capabilities("local", settings).queue)
    assert {s.queue for s in local.steps()} == {Queue.cpu}


def test_done_stages_are_left_out() -> None:
    half = job(classes=[{"label": "a", "boxes": [[0, 0, 1, 1]]}, {"label": "b", "text": "b"}],
               targets={"b": [1]})  # fmt: skip
    half.done = ["compress", "segment:a"]
    left = plan(half, Queue.cpu)
    assert left.phases[0].side_by_side
    assert [s.key for s in left.phases[0].lanes[0]] == ["segment:b"]
    half.done += ["segment:b", "mask_convert", "merge", "erase", "publish"]
    assert plan(half, Queue.cpu).empty


def test_segments_need_something_after_them() -> None:
    broken = job("segment")
    broken.done = ["publish"]
    with pytest.raises(ValueError, match="nothing after them"):
        plan(broken, Queue.cpu)


def test_spans_cover_the_job_in_order() -> None:
    """Of a long video (stitch, erase windows, blend); a short one skips the two short spans."""
    for mode in ("remove", "segment"):
        before, labels, after = stages(job(mode))
        windowed = [Stage.erase, Stage.blend] if mode == "remove" else []
        after = [s for s in after if s is not Stage.erase]
        order = [*before, Stage.segment, Stage.stitch, *after[:-1], *windowed, Stage.publish]
        edges = [span(mode, s) for s in order]
        assert edges[0][0] == 0.0 and edges[-1][1] == 1.0
        assert all(a[1] == b[0] for a, b in zip(edges, edges[1:], strict=False))
    assert stage_key(Stage.segment, "a") == "segment:a" and stage_key(Stage.erase) == "erase"
    assert stage_key(Stage.segment, "a", 3) == "segment:a:w3"
    assert stage_key(Stage.erase, None, 0) == "erase:w0"


@pytest.fixture
def canvas(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Iterator[ModuleType]:
    """``workers.canvas``, imported with a broker URL set (Celery reads it at import)."""
    monkeypatch.setenv("VOR_REDIS_URL", redis_url)
    get_settings.cache_clear()
    try:
        yield importlib.import_module("workers.canvas")
    finally:
        get_settings.cache_clear()


def test_the_canvas_is_the_plan_by_task_name(canvas: ModuleType) -> None:
    two = job(engine="svor", classes=[{"label": "a", "boxes": [[0, 0, 1, 1]]},
                                     {"label": "b", "boxes": [[0, 0, 1, 1]]}])  # fmt: skip
    two.generation = 3
    built = canvas.build(two, plan(two, Queue.io))
    compress, join = built.tasks
    assert (compress.task, compress.args, compress.options["queue"]) == (
        "vor.compress",
        (two.id, 3),
        "cpu",
    )
    assert [(s.task, s.args[2], s.options["queue"]) for s in join.tasks] == [
        ("vor.segment", "a", "io"),
        ("vor.segment", "b", "io"),
    ]
    assert [s.task for s in join.body.tasks] == [
        "vor.mask_convert",
        "vor.merge",
        "vor.erase",
        "vor.publish",
    ]
    assert all(s.immutable for s in (compress, *join.tasks, *join.body.tasks))


def test_a_plan_without_segments_is_a_plain_chain(canvas: ModuleType) -> None:
    tail = job()
    tail.done = ["compress", "segment:a", "mask_convert"]
    built = canvas.build(tail, plan(tail, Queue.cpu))
    assert [s.task for s in built.tasks] == ["vor.merge", "vor.erase", "vor.publish"]
    assert canvas.build(tail, Plan()) is None


WINDOWS = [(0, 24), (18, 42), (36, 60), (54, 62)]


def test_a_long_video_runs_per_window() -> None:
    text = job("segment", engine="svor", classes=[{"label": "a", "text": "a"}])
    text.windows = WINDOWS
    head, lanes, tail = plan(text, Queue.io).phases
    assert [s.key for lane in lanes.lanes for s in lane] == [f"segment:a:w{k}" for k in range(4)]
    assert len(lanes.lanes) == 4, "a text prompt segments every window side by side"
    assert [s.key for s in tail.lanes[0]] == ["stitch", "publish"]

    boxes = job(engine="svor", classes=[{"label": "b", "boxes": [[0, 0, 1, 1]], "frame_index": 40}])
    boxes.windows = WINDOWS
    head, lanes, middle, erases, tail = plan(boxes, Queue.io).phases
    assert [[s.key for s in lane] for lane in lanes.lanes] == [
        ["segment:b:w1", "segment:b:w2", "segment:b:w3", "segment:b:w0"]
    ], "boxes go outward from the annotation frame's window, one window after another"
    assert [s.key for s in middle.lanes[0]] == ["stitch", "mask_convert", "merge"]
    assert erases.side_by_side and [s.key for (s,) in erases.lanes] == [
        f"erase:w{k}" for k in range(4)
    ]
    assert {s.queue for (s,) in erases.lanes} == {Queue.io}
    assert [s.key for s in tail.lanes[0]] == ["blend", "publish"]


def test_windows_done_are_left_out() -> None:
    long = job(engine="svor", classes=[{"label": "a", "text": "a"}], targets={"a": [1]})
    long.windows = WINDOWS
    long.done = ["compress", "segment:a:w0", "segment:a:w2", "stitch", "mask_convert"]
    keys = [s.key for s in plan(long, Queue.io).steps()]
    assert keys[:2] == ["segment:a:w1", "segment:a:w3"]
    assert "segment:a:w0" not in keys and "stitch" not in keys
    long.done += ["segment:a:w1", "segment:a:w3", "merge", "erase:w0", "erase:w3"]
    assert [s.key for s in plan(long, Queue.io).steps()] == [
        "erase:w1",
        "erase:w2",
        "blend",
        "publish",
    ]


def test_a_long_videos_canvas_nests_the_erase_chord(canvas: ModuleType) -> None:
    long = job(engine="svor", classes=[{"label": "a", "boxes": [[0, 0, 1, 1]]}])
    long.windows = WINDOWS[:2]
    built = canvas.build(long, plan(long, Queue.io))
    compress, segments = built.tasks
    assert [(s.task, s.kwargs) for s in segments.tasks[0].tasks] == [
        ("vor.segment", {"window": 0}),
        ("vor.segment", {"window": 1}),
    ]
    stitch, convert, merge, erases = segments.body.tasks
    assert [s.task for s in (stitch, convert, merge)] == ["vor.stitch", "vor.mask_convert",
                                                          "vor.merge"]  # fmt: skip
    assert [(s.task, s.kwargs) for s in erases.tasks] == [
        ("vor.erase", {"window": 0}),
        ("vor.erase", {"window": 1}),
    ]
    assert [s.task for s in erases.body.tasks] == ["vor.blend", "vor.publish"]
