"""Thin Celery tasks: unpack arguments, call ``services``, translate the outcome.

``TransientError`` becomes a Celery retry (honouring its ``retry_after``); a
stage that failed or found its job ended raises ``Ignore`` so the rest of the
chain (or the chord body) does not run.
"""

from __future__ import annotations

import random
import threading
from functools import lru_cache
from typing import Any

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.signals import worker_ready, worker_shutdown

from services import logs, metrics, notifications, pipeline, sweeper, webhooks
from services.errors import TransientError
from services.models import Stage
from services.runtime import get_broker_redis, get_storage, get_store, resolved_settings
from services.settings import get_settings
from workers.celery_app import IO_QUEUE, app


@worker_ready.connect
def start_sweeper(**_: Any) -> None:
    """Every worker sweeps for stalled jobs; a Redis lock lets one do it at a time."""
    from workers.canvas import enqueue

    stopping = threading.Event()
    worker_shutdown.connect(lambda **_: stopping.set(), weak=False)
    thread = threading.Thread(
        target=sweeper.sweep_forever,
        args=(resources(), get_broker_redis(), enqueue, stopping.is_set),
        name="vor-sweeper",
        daemon=True,
    )
    thread.start()


def enqueue_webhook(job_id: str, event: str) -> None:
    job = get_store().get(job_id)
    if job is not None and notifications.wants(job, event):
        send_webhook.apply_async((job_id, event, notifications.new_message(event)), queue=IO_QUEUE)


@lru_cache
def resources() -> pipeline.Resources:
    return pipeline.Resources(
        store=get_store(),
        storage=get_storage(),
        settings=resolved_settings(),
        notify=enqueue_webhook,
        time_limit_errors=(SoftTimeLimitExceeded,),
    )


def _countdown(exc: TransientError, retries: int) -> float:
    backoff = random.uniform(0, min(60.0, 2.0 * 2**retries))
    return max(backoff, exc.retry_after or 0.0)


def _run(task: Task, stage: Stage, job_id: str, generation: int, label: str | None = None) -> str:
    final = task.request.retries >= (task.max_retries or 0)
    try:
        outcome = pipeline.run_stage(
            stage, job_id, resources(), label=label, generation=generation, final_attempt=final
        )
    except TransientError as exc:
        raise task.retry(exc=exc, countdown=_countdown(exc, task.request.retries)) from exc
    if outcome == pipeline.StageOutcome.busy:
        lease_ttl = resources().settings.heartbeat_s * 3
        raise task.retry(countdown=lease_ttl, max_retries=task.request.retries + 1)
    if outcome != pipeline.StageOutcome.done:
        raise Ignore()
    return job_id


STAGE_OPTIONS: dict[str, Any] = {
    "bind": True,
    "max_retries": get_settings().stage_max_retries,
    "acks_late": True,
}
"""``VOR_STAGE_MAX_RETRIES``: Celery retries of a stage after a transient error; the
last attempt fails the job instead (``pipeline.run_stage``'s ``final_attempt``)."""


@app.task(name="vor.compress", **STAGE_OPTIONS)
def compress(self: Task, job_id: str, generation: int = 0) -> str:
    return _run(self, Stage.compress, job_id, generation)


@app.task(name="vor.segment", **STAGE_OPTIONS)
def segment(self: Task, job_id: str, generation: int, label: str) -> str:
    return _run(self, Stage.segment, job_id, generation, label)


@app.task(name="vor.mask_convert", **STAGE_OPTIONS)
def mask_convert(self: Task, job_id: str, generation: int = 0) -> str:
    return _run(self, Stage.mask_convert, job_id, generation)


@app.task(name="vor.merge", **STAGE_OPTIONS)
def merge(self: Task, job_id: str, generation: int = 0) -> str:
    return _run(self, Stage.merge, job_id, generation)


@app.task(name="vor.erase", **STAGE_OPTIONS)
def erase(self: Task, job_id: str, generation: int = 0) -> str:
    return _run(self, Stage.erase, job_id, generation)


@app.task(name="vor.publish", **STAGE_OPTIONS)
def publish(self: Task, job_id: str, generation: int = 0) -> str:
    return _run(self, Stage.publish, job_id, generation)


@lru_cache
def _webhook_client() -> Any:
    from services.netpolicy import guarded_client

    settings = resolved_settings()
    return guarded_client(settings.allowed_networks(), timeout=settings.webhook_timeout_s)


@app.task(name="vor.webhook", bind=True, max_retries=None, acks_late=True, queue=IO_QUEUE)
def send_webhook(self: Task, job_id: str, event: str, seq: str | None = None) -> None:
    """One delivery attempt; a Celery retry resends the same message (same ``seq``)."""
    settings = resolved_settings()
    res = resources()
    job = res.store.get(job_id)
    if job is None:
        return
    logs.bind(tenant=job.tenant)
    outcome = notifications.deliver_event(
        job_id,
        event,
        attempt=self.request.retries + 1,
        store=res.store,
        settings=settings,
        client=_webhook_client(),
        result=pipeline.result_urls(job, res.storage, settings.url_expiry_s),
        last_attempt=self.request.retries + 1 >= settings.webhook_max_attempts,
        seq=seq,
    )
    retry = outcome is not None and outcome.retryable and event in notifications.TERMINAL_EVENTS
    again = retry and self.request.retries + 1 < settings.webhook_max_attempts
    metrics.webhook_delivered(res.store.redis, event, outcome, retrying=again)
    if again:
        countdown = webhooks.backoff_s(
            self.request.retries + 1, base=settings.webhook_backoff_base_s
        )
        raise self.retry(countdown=countdown)
