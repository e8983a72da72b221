"""Submission checks called directly: everything refused before a job is queued."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis

from services.engines import capabilities
from services.errors import InvalidInput, InvalidSpec, UnsupportedPrompt, VorError
from services.jobs import spec_json, submission
from services.jobs.store import JobStore
from services.media.synthetic import SyntheticClip, make_clip
from services.media.video import write_video
from services.models import JobSpec, SegmentInfo, SegmentObject, Status
from services.settings import Settings
from services.storage import FileStorage, UrlSigner
from tests.support.jobs import make_lifecycle

BOX = {"label": "a", "boxes": [[0.1, 0.1, 0.3, 0.3]]}


@pytest.fixture
def store(redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url), prefix="t-submission")


def accept(store: JobStore, spec: dict[str, object], **sub: object) -> object:
    return submission.accept(
        submission.Submission(tenant="acme", spec=JobSpec.model_validate(spec), **sub),  # type: ignore[arg-type]
        store=store,
        settings=Settings(),
    )


def refusal(store: JobStore, spec: dict[str, object], **sub: object) -> VorError:
    with pytest.raises(VorError) as info:
        accept(store, spec, **sub)
    return info.value


def test_a_good_submission_becomes_a_queued_job(store: JobStore, clip: SyntheticClip) -> None:
    job = submission.accept(
        submission.Submission(
            tenant="acme", spec=JobSpec.model_validate({"classes": [BOX]}), video=clip.path
        ),
        store=store,
        settings=Settings(),
    )
    assert job.status is Status.queued and job.engine == "local"
    assert job.input is not None and job.input.frames == len(clip.masks)


def test_a_clip_longer_than_one_svor_upload_runs_as_windows(
    store: JobStore, tmp_path: Path
) -> None:
    long = make_clip(tmp_path / "long.mp4", frames=48, fps=12).path
    job = accept(store, {"engine": "svor", "classes": [BOX]}, video=long)
    assert job.windows == [(0, 36), (28, 48)]  # type: ignore[attr-defined]
    local = accept(store, {"engine": "local", "classes": [BOX]}, video=long)
    assert local.windows == []  # type: ignore[attr-defined]
    assert capabilities("svor", Settings(svor_max_duration_s=5)).window_s == 5


def test_a_text_prompt_needs_an_engine_that_reads_text(
    store: JobStore, clip: SyntheticClip
) -> None:
    spec = {"classes": [{"label": "car", "text": "car"}], "targets": {"car": [1]}}
    error = refusal(store, spec, video=clip.path)
    assert (type(error), error.field) == (UnsupportedPrompt, "classes[0].text")
    assert accept(store, {**spec, "engine": "svor"}, video=clip.path)


def test_frame_index_is_checked_against_the_video(store: JobStore, clip: SyntheticClip) -> None:
    error = refusal(store, {"classes": [{**BOX, "frame_index": 99}]}, video=clip.path)
    assert (type(error), error.field) == (InvalidSpec, "classes[0].frame_index")
    assert f"has {len(clip.masks)} frames" in error.message


def test_a_mask_must_match_the_video(store: JobStore, clip: SyntheticClip, tmp_path: Path) -> None:
    mask = write_video(tmp_path / "mask.mkv", [np.zeros((64, 96), np.uint8)] * 3, 12, codec="ffv1")
    error = refusal(store, {"mode": "remove"}, video=clip.path, mask=mask)
    assert (type(error), error.field) == (InvalidInput, "mask")
    error = refusal(store, {"classes": [BOX]}, video=clip.path, mask=mask)
    assert error.field == "mask" and "not both" in error.message


def test_a_video_comes_from_one_place(store: JobStore, clip: SyntheticClip) -> None:
    assert refusal(store, {"classes": [BOX]}).field == "video"
    both = {"classes": [BOX], "video_url": "https://example.com/v.mp4"}
    assert refusal(store, both, video=clip.path).field == "video_url"


def test_from_job_reuses_a_finished_segment_job(
    redis_url: str, tmp_path: Path, clip: SyntheticClip
) -> None:
    jobs = make_lifecycle(redis_url, tmp_path)
    spec = JobSpec.model_validate({"mode": "segment", "classes": [BOX]})
    source, _ = jobs.submit(submission.Submission(tenant="acme", spec=spec, video=clip.path))
    ask = {"from_job": source.id, "targets": {"a": [1]}}
    with pytest.raises(InvalidSpec, match="must have succeeded first"):
        submission.accept(
            submission.Submission(tenant="acme", spec=JobSpec.model_validate(ask)),
            store=jobs.store,
            settings=jobs.settings,
        )
    jobs.store.update(source.id, lambda j: j.artifacts.update({"work": "jobs/x/work.mp4"}))
    found = SegmentInfo(objects=[SegmentObject(id=1, box=(0.1, 0.1, 0.3, 0.3))])
    jobs.store.update(source.id, lambda j: j.segments.update({"a": found}))
    jobs.store.finish(source.id, Status.succeeded)
    job = submission.accept(
        submission.Submission(tenant="acme", spec=JobSpec.model_validate(ask)),
        store=jobs.store,
        settings=jobs.settings,
    )
    assert set(job.artifacts) == {"input", "work"} and list(job.segments) == ["a"]
    for tenant, wrong, message in (
        ("acme", {"from_job": source.id, "targets": {"a": [7]}}, r"names ids \[7\]"),
        ("globex", ask, "does not exist"),
    ):
        with pytest.raises(InvalidSpec, match=message):
            submission.accept(
                submission.Submission(tenant=tenant, spec=JobSpec.model_validate(wrong)),
                store=jobs.store,
                settings=jobs.settings,
            )


def test_store_files_puts_the_uploads_under_the_job(clip: SyntheticClip, tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, UrlSigner(b"k"), "http://vor.test")
    sub = submission.Submission(
        tenant="acme",
        spec=JobSpec.model_validate({"mode": "remove"}),
        video=clip.path,
        video_name="holiday.MOV",
        mask=clip.path,
        mask_name="../../etc/passwd",
    )
    job = submission.accept(sub, store=None, settings=Settings())  # type: ignore[arg-type]
    submission.store_files(job, sub, storage)
    assert job.artifacts == {
        "input": f"jobs/{job.id}/input.mov",
        "mask_upload": f"jobs/{job.id}/mask_upload.bin",
    }
    assert storage.exists(job.artifacts["input"]) and storage.exists(job.artifacts["mask_upload"])


def test_client_json_is_refused_with_its_field() -> None:
    with pytest.raises(InvalidSpec, match="spec is not JSON") as info:
        spec_json.parse_client_json("{", "spec")
    assert info.value.field == "spec"
    with pytest.raises(InvalidSpec, match="NaN is not a JSON number"):
        spec_json.parse_client_json('{"a": NaN}', "body")
