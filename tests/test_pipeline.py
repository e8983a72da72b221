"""The stages called directly, as the workers call them, without Celery: real Redis,
file storage, the local engine and a short clip."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.errors import TransientError
from services.jobs import pipeline
from services.jobs.lease import StageLease
from services.jobs.lifecycle import Lifecycle
from services.jobs.submission import Submission
from services.media.synthetic import SyntheticClip
from services.media.video import probe
from services.models import JobSpec, Stage, Status
from tests.support.jobs import make_lifecycle, recording, run_plan


class TimeLimit(Exception):
    """What a runner raises inside a stage past its time limit (Celery's soft limit)."""


@pytest.fixture
def jobs(redis_url: str, tmp_path: Path) -> Lifecycle:
    return make_lifecycle(redis_url, tmp_path, heartbeat_s=0.5)


@pytest.fixture
def res(jobs: Lifecycle) -> pipeline.Resources:
    return pipeline.Resources(jobs=jobs, time_limit_errors=(TimeLimit,))


def submit(jobs: Lifecycle, clip: SyntheticClip, mode: str = "remove") -> str:
    spec = JobSpec.model_validate(
        {
            "mode": mode,
            "classes": [{"label": "disc", "boxes": [clip.box(0)]}],
            "webhook_url": "http://127.0.0.1:9/hook",
        }
    )
    return jobs.submit(Submission(tenant="acme", spec=spec, video=clip.path))[0].id


def test_a_remove_job_runs_stage_by_stage(
    res: pipeline.Resources, clip: SyntheticClip, tmp_path: Path
) -> None:
    job_id = submit(res.jobs, clip)
    job = run_plan(res, job_id)
    assert job.status is Status.succeeded, job.error
    assert job.done == ["compress", "segment:disc", "mask_convert", "merge", "erase", "publish"]
    assert job.progress == 1.0 and set(job.timings) >= {"compress", "erase", "publish"}
    result = Path(res.settings.data_dir.parent / "storage" / job.artifacts["result:video_url"])
    assert probe(result).frames == len(clip.masks)
    assert recording(res.jobs).events(job_id) == ["job.succeeded"]
    assert not (res.settings.work_dir / job_id).exists(), "scratch files are cleaned up"


def test_a_segment_job_publishes_masks_and_previews(
    res: pipeline.Resources, clip: SyntheticClip
) -> None:
    job = run_plan(res, submit(res.jobs, clip, mode="segment"))
    assert job.status is Status.succeeded, job.error
    assert {"result:mask_url", "result:preview_url", "result:overlay_url"} <= set(job.artifacts)
    assert [o.id for o in job.segments["disc"].objects] == [1]


def test_a_stale_or_ended_message_is_skipped(res: pipeline.Resources, clip: SyntheticClip) -> None:
    job_id = submit(res.jobs, clip)
    stale = pipeline.run_stage(Stage.compress, job_id, res, generation=1)
    assert stale is pipeline.StageOutcome.skipped
    res.jobs.cancel(res.store.require(job_id))
    assert pipeline.run_stage(Stage.compress, job_id, res) is pipeline.StageOutcome.skipped


def test_a_stage_whose_lease_is_held_is_busy(res: pipeline.Resources, clip: SyntheticClip) -> None:
    job_id = submit(res.jobs, clip)
    with StageLease(res.store, job_id, "compress", heartbeat_s=0.5) as other:
        assert other.acquire()
        assert pipeline.run_stage(Stage.compress, job_id, res) is pipeline.StageOutcome.busy
    assert pipeline.run_stage(Stage.compress, job_id, res) is pipeline.StageOutcome.done


def test_poison_input_fails_after_the_last_allowed_run(
    res: pipeline.Resources, clip: SyntheticClip
) -> None:
    job_id = submit(res.jobs, clip)
    for _ in range(res.settings.stage_max_runs):
        res.store.start_stage(job_id, Stage.compress)
    outcome = pipeline.run_stage(Stage.compress, job_id, res)
    job = res.store.require(job_id)
    assert outcome is pipeline.StageOutcome.failed and job.status is Status.failed
    assert job.error is not None and job.error.code == "worker_crashed"
    assert recording(res.jobs).events(job_id) == ["job.failed"]


def test_a_crash_fails_the_job_with_what_happened(
    res: pipeline.Resources, clip: SyntheticClip, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(run: pipeline.StageRun) -> None:
        raise KeyError("no such thing")

    monkeypatch.setitem(pipeline.STAGES, Stage.compress, crash)
    job_id = submit(res.jobs, clip)
    assert pipeline.run_stage(Stage.compress, job_id, res) is pipeline.StageOutcome.failed
    error = res.store.require(job_id).error
    assert error is not None and (error.code, error.stage) == ("internal_error", "compress")
    assert "KeyError" in error.message


def test_a_stage_past_its_time_limit_fails_as_such(
    res: pipeline.Resources, clip: SyntheticClip, monkeypatch: pytest.MonkeyPatch
) -> None:
    def too_slow(run: pipeline.StageRun) -> None:
        raise TimeLimit()

    monkeypatch.setitem(pipeline.STAGES, Stage.compress, too_slow)
    job_id = submit(res.jobs, clip)
    assert pipeline.run_stage(Stage.compress, job_id, res) is pipeline.StageOutcome.failed
    error = res.store.require(job_id).error
    assert error is not None and error.code == "stage_timeout"


def test_a_transient_error_goes_back_to_the_caller_until_the_last_attempt(
    res: pipeline.Resources, clip: SyntheticClip, monkeypatch: pytest.MonkeyPatch
) -> None:
    def flaky(run: pipeline.StageRun) -> None:
        raise TransientError("storage is down", retry_after=3)

    monkeypatch.setitem(pipeline.STAGES, Stage.compress, flaky)
    job_id = submit(res.jobs, clip)
    with pytest.raises(TransientError):
        pipeline.run_stage(Stage.compress, job_id, res, final_attempt=False)
    assert res.store.require(job_id).status is Status.running
    assert pipeline.run_stage(Stage.compress, job_id, res) is pipeline.StageOutcome.failed
    error = res.store.require(job_id).error
    assert error is not None and error.code == "transient"


def test_a_job_canceled_mid_stage_stops_at_its_next_progress(
    res: pipeline.Resources, clip: SyntheticClip, monkeypatch: pytest.MonkeyPatch
) -> None:
    def canceled_meanwhile(run: pipeline.StageRun) -> None:
        res.jobs.cancel(run.job)
        time.sleep(0.6)
        run.progress(0.5)

    monkeypatch.setitem(pipeline.STAGES, Stage.compress, canceled_meanwhile)
    job_id = submit(res.jobs, clip)
    assert pipeline.run_stage(Stage.compress, job_id, res) is pipeline.StageOutcome.skipped
    assert res.store.require(job_id).status is Status.canceled
    assert not (res.settings.work_dir / job_id).exists()
