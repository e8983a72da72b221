"""The stage plan as data, and its one translation into Celery's canvas (built, not sent)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

import pytest

from services.engines import capabilities
from services.jobs.plan import Plan, Step, plan, span, stage_key, stages
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
    assert svor.head == (Step(Stage.compress, Queue.cpu),)
    assert svor.segments == (Step(Stage.segment, Queue.io, "a"),)
    assert [s.queue for s in svor.tail] == [Queue.cpu, Queue.cpu, Queue.io, Queue.cpu]
    local = plan(job(), capabilities("local", settings).queue)
    assert {s.queue for s in local.steps()} == {Queue.cpu}


def test_done_stages_are_left_out() -> None:
    half = job(classes=[{"label": "a", "boxes": [[0, 0, 1, 1]]}, {"label": "b", "text": "b"}],
               targets={"b": [1]})  # fmt: skip
    half.done = ["compress", "segment:a"]
    left = plan(half, Queue.cpu)
    assert left.head == () and [s.key for s in left.segments] == ["segment:b"]
    half.done += ["segment:b", "mask_convert", "merge", "erase", "publish"]
    assert plan(half, Queue.cpu).empty


def test_segments_need_something_after_them() -> None:
    broken = job("segment")
    broken.done = ["publish"]
    with pytest.raises(ValueError, match="nothing after them"):
        plan(broken, Queue.cpu)


def test_spans_cover_the_job_in_order() -> None:
    for mode in ("remove", "segment"):
        before, labels, after = stages(job(mode))
        order = [*before, *([Stage.segment] if labels else []), *after]
        edges = [span(mode, s) for s in order]
        assert edges[0][0] == 0.0 and edges[-1][1] == 1.0
        assert all(a[1] == b[0] for a, b in zip(edges, edges[1:], strict=False))
    assert stage_key(Stage.segment, "a") == "segment:a" and stage_key(Stage.erase) == "erase"


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
