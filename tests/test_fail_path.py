"""Every way a job fails goes through one function, ``Lifecycle.fail``: its state, the
``job.failed`` webhook, the clean-up of its scratch files and the failure metric.

First the function's two callers side by side, on a real Redis without Celery: a
stage that fails and the sweeper failing a stage that outlived its time limit.
Then the real processes: a worker frozen (SIGSTOP) mid-stage, whose job the
sweeper fails with its webhook, and ``VOR_STAGE_MAX_RETRIES=0`` failing a job at
its first transient error.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import cv2
import httpx
import pytest
import redis
from standardwebhooks.webhooks import Webhook

from services import metrics
from services.cli.embedded import EmbeddedService
from services.cli.processes import kill_tree
from services.errors import NotFound
from services.jobs import pipeline, sweeper
from services.jobs.lifecycle import Lifecycle
from services.jobs.store import JobStore, new_job_id
from services.media.synthetic import SyntheticClip, make_clip
from services.models import Job, JobSpec, Stage, Status, utcnow
from services.settings import Settings
from services.storage import FileStorage, UrlSigner
from tests.conftest import WEBHOOK_SECRET, api_client, service_env
from tests.helpers import accepted, wait, wait_for_stage
from tests.support.jobs import Recording
from tests.support.receiver import Receiver

TIME_LIMIT_S = 6
SPEC = JobSpec.model_validate(
    {
        "classes": [{"label": "a", "boxes": [[0.1, 0.1, 0.2, 0.2]]}],
        "webhook_url": "http://127.0.0.1:9/hook",
    }
)


@pytest.fixture
def own_redis(redis_url: str) -> redis.Redis:
    base, _, db = redis_url.rpartition("/")
    client = redis.Redis.from_url(f"{base}/{int(db) + 2}")
    client.flushdb()
    return client


@pytest.fixture
def resources(own_redis: redis.Redis, tmp_path: Path) -> tuple[pipeline.Resources, Recording]:
    """Resources as a worker has them, whose webhooks and enqueued jobs land in a list."""
    settings = Settings(
        data_dir=tmp_path / "data",
        stage_time_limit_s=TIME_LIMIT_S,
        stall_timeout_s=0,
        webhook_secret=WEBHOOK_SECRET,
    )
    storage = FileStorage(tmp_path / "storage", UrlSigner(b"k" * 32), "http://vor.test")
    queue = Recording()
    res = pipeline.Resources(jobs=Lifecycle(JobStore(own_redis), storage, settings, queue))
    return res, queue


def sent(queue: Recording) -> list[str]:
    return [f"{job_id} {event}" for job_id, event, _ in queue.notified]


def failures(client: redis.Redis) -> dict[str, int]:
    raw = client.hgetall(f"vor:metrics:{metrics.JOB_FAILURES.name}")
    return {json.loads(k)[0] + "@" + json.loads(k)[1]: int(v) for k, v in raw.items()}


def scratch_of(res: pipeline.Resources, job_id: str) -> Path:
    folder = res.settings.work_dir / job_id / "erase-1"
    folder.mkdir(parents=True)
    (folder / "frames.bin").write_bytes(b"\0" * 1000)
    return folder.parent


def test_a_failing_stage_and_a_timed_out_stage_fail_alike(
    resources: tuple[pipeline.Resources, Recording], own_redis: redis.Redis, tmp_path: Path
) -> None:
    res, queue = resources
    # A stage fails: the compress stage finds its input is not a video.
    broken = Job(id=new_job_id(), tenant="t", mode="remove", engine="local", spec=SPEC)
    res.storage.put_bytes(f"jobs/{broken.id}/input.mp4", b"not a video at all" * 100)
    broken.artifacts["input"] = f"jobs/{broken.id}/input.mp4"
    res.store.create(broken)
    stage_scratch = scratch_of(res, broken.id)
    outcome = pipeline.run_stage(Stage.compress, broken.id, res)
    # A stage outlives its time limit: started long ago, no heartbeat since.
    stuck = Job(id=new_job_id(), tenant="t", mode="remove", engine="local", spec=SPEC)
    res.store.create(stuck)
    res.store.start_stage(stuck.id, Stage.erase)
    long_ago = utcnow() - timedelta(seconds=TIME_LIMIT_S + 5)
    res.store.update(stuck.id, lambda job: setattr(job, "stage_started_at", long_ago))
    stuck_scratch = scratch_of(res, stuck.id)
    report = sweeper.sweep(res.jobs)

    assert queue.enqueued == [], "nothing to requeue"
    assert outcome == pipeline.StageOutcome.failed
    assert report.failed == [stuck.id]
    failed, timed_out = res.store.require(broken.id), res.store.require(stuck.id)
    assert (failed.status, failed.error and failed.error.code) == (Status.failed, "invalid_input")
    assert (timed_out.status, timed_out.error and timed_out.error.code) == (
        Status.failed, "stage_timeout",
    )  # fmt: skip
    assert timed_out.error and timed_out.error.stage == "erase"
    assert f"did not finish within {TIME_LIMIT_S} s" in timed_out.error.message
    assert sent(queue) == [f"{broken.id} job.failed", f"{stuck.id} job.failed"]
    assert not stage_scratch.exists() and not stuck_scratch.exists()
    assert failures(own_redis) == {"invalid_input@compress": 1, "stage_timeout@erase": 1}

    # A job already ended is left as it is: no second webhook, no second count.
    assert res.jobs.fail(stuck.id, Stage.erase, RuntimeError("late")) is None
    assert sweeper.sweep(res.jobs).failed == []
    assert len(sent(queue)) == 2 and failures(own_redis)["stage_timeout@erase"] == 1


def test_a_job_deleted_mid_stage_leaves_nothing(
    resources: tuple[pipeline.Resources, Recording],
) -> None:
    """DELETE while a stage runs: the stage's next store write finds no job; failing it
    removes its scratch and whatever it stored after the deletion, and tells no one."""
    res, queue = resources
    job = Job(id=new_job_id(), tenant="t", mode="remove", engine="local", spec=SPEC)
    res.store.create(job)
    scratch = scratch_of(res, job.id)
    res.store.delete(job)
    res.storage.put_bytes(f"jobs/{job.id}/work.mp4", b"stored after the delete")
    with pytest.raises(NotFound):
        res.store.set_progress(job.id, 0.5)
    assert res.jobs.fail(job.id, Stage.compress, NotFound("gone")) is None
    assert not scratch.exists()
    assert not res.storage.exists(f"jobs/{job.id}/work.mp4")
    assert sent(queue) == []


def test_stage_max_retries_is_each_stage_tasks_max_retries(tmp_path: Path) -> None:
    env = {**os.environ, "VOR_STAGE_MAX_RETRIES": "2", "VOR_REDIS_URL": "redis://127.0.0.1:9/0"}
    code = "from workers import tasks; print({t.max_retries for t in " \
        "(tasks.compress, tasks.segment, tasks.mask_convert, tasks.merge, tasks.erase, " \
        "tasks.publish)})"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "{2}", out.stderr


# ---------------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, svor_server: str) -> Iterator[EmbeddedService]:
    """A service with a short stage time limit, quick sweeps, no stage retries, a merge
    that fails once (transiently) and an erase that idles a minute."""
    env = service_env(
        "",
        svor_server,
        VOR_STAGE_TIME_LIMIT_S=str(TIME_LIMIT_S),
        VOR_STAGE_MAX_RETRIES="0",
        VOR_DEBUG_TRANSIENT_ONCE="merge:0.1",
        VOR_DEBUG_STAGE_DELAYS="erase:60",
        VOR_HEARTBEAT_S="0.5",
        VOR_STALL_TIMEOUT_S="2",
        VOR_SWEEP_INTERVAL_S="0.5",
    )
    env.pop("VOR_REDIS_URL")
    with EmbeddedService(tmp_path_factory.mktemp("strict"), env=env, io_threads=2) as service:
        yield service


@pytest.fixture
def client(strict: EmbeddedService) -> Iterator[httpx.Client]:
    with api_client(strict) as http:
        yield http


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    return make_clip(tmp_path_factory.mktemp("clips") / "small.mp4", frames=8)


@pytest.mark.timeout(120)
def test_no_retries_fail_a_job_at_its_first_transient_error(
    client: httpx.Client, small: SyntheticClip
) -> None:
    spec = {"classes": [{"label": "disc", "boxes": [small.box(0)]}]}
    job = wait(client, accepted(client, spec, small.path)["id"], timeout=100)
    assert job["status"] == "failed", job
    assert job["error"]["stage"] == "merge"
    assert "injected transient failure of merge" in job["error"]["message"]
    assert job["runs"]["merge"] == 1, "VOR_STAGE_MAX_RETRIES=0: no second run"


@pytest.mark.timeout(120)
def test_the_sweeper_fails_a_frozen_stage_with_its_webhook(
    strict: EmbeddedService, client: httpx.Client, small: SyntheticClip, tmp_path: Path
) -> None:
    mask = tmp_path / "mask.png"
    cv2.imwrite(str(mask), (small.masks[0] > 0).astype("uint8") * 255)
    with Receiver() as receiver:
        spec = {"webhook_url": receiver.url}
        files = {"video": ("v.mp4", small.path.read_bytes()), "mask": ("m.png", mask.read_bytes())}
        response = client.post("/v1/jobs", data={"spec": json.dumps(spec)}, files=files)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        wait_for_stage(client, job_id, "erase")
        worker = strict.processes["worker-cpu"]
        scratch = strict.data_dir / "work" / job_id
        assert scratch.exists()
        frozen = kill_tree(worker.pid, signal.SIGSTOP)
        try:
            job = wait(client, job_id, timeout=TIME_LIMIT_S + 30)
            [delivery] = receiver.wait_for(1, timeout=10)
        finally:
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert job["status"] == "failed", job
    assert (job["error"]["code"], job["error"]["stage"]) == ("stage_timeout", "erase")
    payload = Webhook(WEBHOOK_SECRET).verify(delivery.body, delivery.headers)
    assert payload["type"] == "job.failed" and payload["data"]["id"] == job_id
    assert not scratch.exists(), "the frozen stage's scratch files are left"
    text = client.get("/metrics").text
    assert 'vor_job_failures_total{code="stage_timeout",stage="erase"} 1.0' in text
