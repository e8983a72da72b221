"""The job lifecycle called directly: real Redis and file storage, no Celery, no HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from standardwebhooks.webhooks import Webhook

from services import metrics
from services.errors import Conflict, InvalidInput, StageCrashed, UpstreamAuth
from services.jobs import notifications
from services.jobs.lifecycle import Lifecycle, job_error
from services.jobs.submission import Submission
from services.media.synthetic import SyntheticClip
from services.models import JobSpec, Stage, Status
from services.netpolicy import guarded_client
from tests.support.jobs import WEBHOOK_SECRET, make_lifecycle, recording
from tests.support.receiver import Receiver


@pytest.fixture
def jobs(redis_url: str, tmp_path: Path) -> Lifecycle:
    return make_lifecycle(redis_url, tmp_path)


def submit(jobs: Lifecycle, clip: SyntheticClip, webhook_url: str | None = None) -> str:
    spec = JobSpec.model_validate(
        {"classes": [{"label": "disc", "boxes": [clip.box(0)]}], "webhook_url": webhook_url}
    )
    job, created = jobs.submit(Submission(tenant="acme", spec=spec, video=clip.path))
    assert created
    return job.id


def failures(client: redis.Redis, code: str, stage: str) -> int:
    key = f"{metrics.PREFIX}:metrics:{metrics.JOB_FAILURES.name}"
    raw = client.hget(key, json.dumps([code, stage]))
    return int(raw or 0)


def test_submit_stores_the_video_and_enqueues_once(jobs: Lifecycle, clip: SyntheticClip) -> None:
    spec = JobSpec.model_validate({"classes": [{"label": "disc", "boxes": [clip.box(0)]}]})
    sub = Submission(tenant="acme", spec=spec, video=clip.path, idempotency_key="k1")
    job, created = jobs.submit(sub)
    again, created_again = jobs.submit(sub)
    assert (created, created_again) == (True, False) and again.id == job.id
    assert [j.id for j in recording(jobs).enqueued] == [job.id]
    assert jobs.storage.exists(job.artifacts["input"])
    assert job.status is Status.queued and job.input is not None


def test_a_refused_submission_stores_and_enqueues_nothing(jobs: Lifecycle, tmp_path: Path) -> None:
    bad = tmp_path / "not-a-video.mp4"
    bad.write_bytes(b"hello")
    spec = JobSpec.model_validate({"classes": [{"label": "a", "boxes": [[0, 0, 0.5, 0.5]]}]})
    with pytest.raises(InvalidInput):
        jobs.submit(Submission(tenant="acme", spec=spec, video=bad))
    assert recording(jobs).enqueued == []
    assert jobs.store.list_jobs("acme") == ([], None)


def test_cancel_ends_cleans_up_and_notifies(jobs: Lifecycle, clip: SyntheticClip) -> None:
    job_id = submit(jobs, clip, "http://127.0.0.1:9/hook")
    scratch = jobs.settings.work_dir / job_id / "compress-1"
    scratch.mkdir(parents=True)
    canceled = jobs.cancel(jobs.store.require(job_id))
    assert canceled.status is Status.canceled and canceled.finished_at is not None
    assert not scratch.parent.exists()
    assert recording(jobs).events(job_id) == ["job.canceled"]
    with pytest.raises(Conflict, match="already canceled"):
        jobs.cancel(canceled)


def test_delete_of_a_running_job_cancels_it_first(jobs: Lifecycle, clip: SyntheticClip) -> None:
    job_id = submit(jobs, clip, "http://127.0.0.1:9/hook")
    running = jobs.store.start_stage(job_id, Stage.compress)
    (jobs.settings.work_dir / job_id).mkdir(parents=True)
    jobs.delete(running)
    assert jobs.store.get(job_id) is None
    assert not (jobs.settings.work_dir / job_id).exists()
    assert not jobs.storage.exists(running.artifacts["input"])
    ((notified, event, snapshot),) = recording(jobs).notified
    assert (notified, event) == (job_id, "job.canceled")
    assert snapshot is not None and snapshot.status is Status.canceled


def test_delete_of_an_ended_job_sends_nothing(jobs: Lifecycle, clip: SyntheticClip) -> None:
    job_id = submit(jobs, clip, "http://127.0.0.1:9/hook")
    jobs.fail(job_id, Stage.compress, InvalidInput("bad"))
    recording(jobs).notified.clear()
    jobs.delete(jobs.store.require(job_id))
    assert jobs.store.get(job_id) is None and recording(jobs).notified == []


def test_fail_is_the_one_way_to_fail(jobs: Lifecycle, clip: SyntheticClip) -> None:
    job_id = submit(jobs, clip, "http://127.0.0.1:9/hook")
    (jobs.settings.work_dir / job_id).mkdir(parents=True)
    before = failures(jobs.store.redis, "worker_crashed", "segment")
    failed = jobs.fail(job_id, Stage.segment, StageCrashed("died thrice"))
    assert failed is not None and failed.status is Status.failed
    assert failed.error is not None
    assert (failed.error.code, failed.error.stage) == ("worker_crashed", "segment")
    assert not (jobs.settings.work_dir / job_id).exists()
    assert failures(jobs.store.redis, "worker_crashed", "segment") == before + 1
    assert jobs.fail(job_id, Stage.erase, UpstreamAuth("again")) is None, "the first end stands"
    assert jobs.store.require(job_id).error == failed.error
    assert recording(jobs).events(job_id) == ["job.failed"]


def test_job_error_of_a_crash_says_where_and_what_to_do() -> None:
    error = job_error(ZeroDivisionError("division by zero"), Stage.erase)
    assert (error.code, error.stage) == ("internal_error", "erase")
    assert "ZeroDivisionError" in error.message and "report the job id" in error.message
    queued = job_error(StageCrashed("x", stage="merge"), None)
    assert (queued.code, queued.stage) == ("worker_crashed", "merge")


def test_succeed_marks_the_stage_and_notifies_once(jobs: Lifecycle, clip: SyntheticClip) -> None:
    job_id = submit(jobs, clip, "http://127.0.0.1:9/hook")
    jobs.store.start_stage(job_id, Stage.publish)
    done = jobs.succeed(job_id, "publish", 0.5)
    assert done is not None and done.status is Status.succeeded and done.progress == 1.0
    assert "publish" in done.done and done.stage is None
    assert jobs.succeed(job_id, "publish", 0.5) is not None
    jobs.fail(job_id, Stage.publish, InvalidInput("late"))
    assert jobs.store.require(job_id).status is Status.succeeded


def test_redeliver_needs_an_ended_job_with_a_webhook(jobs: Lifecycle, clip: SyntheticClip) -> None:
    quiet = submit(jobs, clip)
    loud = submit(jobs, clip, "http://127.0.0.1:9/hook")
    with pytest.raises(Conflict, match="nothing to redeliver yet"):
        jobs.redeliver(jobs.store.require(loud))
    jobs.fail(quiet, None, InvalidInput("x"))
    with pytest.raises(Conflict, match="no webhook_url"):
        jobs.redeliver(jobs.store.require(quiet))
    jobs.fail(loud, None, InvalidInput("x"))
    recording(jobs).notified.clear()
    assert jobs.redeliver(jobs.store.require(loud)) == "job.failed"
    assert recording(jobs).events(loud) == ["job.failed"]


def test_requeue_makes_old_messages_stale(jobs: Lifecycle, clip: SyntheticClip) -> None:
    job_id = submit(jobs, clip)
    requeued = jobs.requeue(job_id)
    assert requeued.generation == 1
    assert [j.generation for j in recording(jobs).enqueued] == [0, 1]


def test_view_signs_result_and_input_urls(jobs: Lifecycle, clip: SyntheticClip) -> None:
    job_id = submit(jobs, clip)
    jobs.store.update(job_id, lambda j: j.artifacts.__setitem__("result:video_url", "jobs/x/r.mp4"))
    view = jobs.view(jobs.store.require(job_id))
    assert view["result"]["video_url"].startswith("http://vor.test/v1/files/jobs/x/r.mp4?")
    assert view["input_url"].startswith(f"http://vor.test/v1/files/jobs/{job_id}/input.mp4?")


def test_notify_only_what_the_job_asked_for(jobs: Lifecycle, clip: SyntheticClip) -> None:
    quiet = submit(jobs, clip)
    loud = submit(jobs, clip, "http://127.0.0.1:9/hook")
    for job_id in (quiet, loud):
        jobs.notify(job_id, "job.progress")
        jobs.notify(job_id, "job.succeeded")
    assert [(j, e) for j, e, _ in recording(jobs).notified] == [(loud, "job.succeeded")]
    job = jobs.store.require(loud)
    assert notifications.wants(job, "job.failed") and not notifications.wants(job, "job.progress")


def test_deliver_sends_a_signed_event_and_logs_it(jobs: Lifecycle, clip: SyntheticClip) -> None:
    with Receiver() as receiver:
        job_id = submit(jobs, clip, receiver.url)
        jobs.fail(job_id, Stage.erase, InvalidInput("the mask is empty"))
        client = guarded_client(jobs.settings.allowed_networks(), timeout=5)
        assert (
            jobs.deliver(job_id, "job.failed", attempt=1, client=client, secret=WEBHOOK_SECRET)
            is None
        )
        (hook,) = receiver.wait_for(1)
    payload = Webhook(WEBHOOK_SECRET).verify(hook.body, dict(hook.headers))
    assert payload["type"] == "job.failed" and payload["data"]["error"]["code"] == "invalid_input"
    job = jobs.store.require(job_id)
    assert job.webhook_state == {"job.failed": "delivered"}
    assert [(w.event, w.attempt, w.ok) for w in job.webhooks] == [("job.failed", 1, True)]


def test_deliver_asks_for_a_retry_of_terminal_events_only(
    jobs: Lifecycle, clip: SyntheticClip
) -> None:
    with Receiver(status=503) as receiver:
        job_id = submit(jobs, clip, receiver.url)
        jobs.store.update(job_id, lambda j: j.spec.webhook_events.append("job.progress"))
        client = guarded_client(jobs.settings.allowed_networks(), timeout=5)

        def attempt(event: str, number: int) -> float | None:
            return jobs.deliver(job_id, event, attempt=number, client=client, secret=WEBHOOK_SECRET)

        assert attempt("job.progress", 1) is None
        jobs.fail(job_id, None, InvalidInput("x"))
        first, last = attempt("job.failed", 1), attempt("job.failed", 6)
    assert first == jobs.settings.webhook_backoff_base_s and last is None
    assert jobs.store.require(job_id).webhook_state == {"job.failed": "failed"}


def test_deliver_of_a_deleted_job_goes_from_its_snapshot(
    jobs: Lifecycle, clip: SyntheticClip
) -> None:
    with Receiver() as receiver:
        job_id = submit(jobs, clip, receiver.url)
        jobs.delete(jobs.store.require(job_id))
        ((_, event, snapshot),) = recording(jobs).notified
        client = guarded_client(jobs.settings.allowed_networks(), timeout=5)
        jobs.deliver(
            job_id, event, attempt=1, client=client, secret=WEBHOOK_SECRET, snapshot=snapshot
        )
        (hook,) = receiver.wait_for(1)
    body = json.loads(hook.body)
    assert (body["type"], body["data"]["id"], body["data"]["status"]) == (
        "job.canceled",
        job_id,
        "canceled",
    )
    assert jobs.store.get(job_id) is None
