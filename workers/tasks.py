"""Thin Celery tasks: unpack arguments, call ``services``, translate the outcome.

``TransientError`` becomes a Celery retry (honouring its ``retry_after``); a
stage that failed or found its job ended raises ``Ignore`` so the rest of the
chain (or the chord body) does not run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import httpx
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.signals import worker_ready, worker_shutdown

from services import runtime
from services.errors import TransientError
from services.jobs import pipeline, retries, sweeper
from services.jobs.batch_spec import BATCH_EVENTS
from services.jobs.batches import BUSY_RETRY_S, Batches, Step
from services.jobs.lifecycle import Lifecycle
from services.jobs.plan import BATCH_QUEUE, WEBHOOK_QUEUE
from services.models import Job, Stage
from services.netpolicy import guarded_client
from services.settings import get_settings
from workers.celery_app import BATCH_TASK, WEBHOOK_TASK, app, task_name
from workers.dispatch import CeleryDispatcher

log = logging.getLogger("vor.worker")


@lru_cache
def jobs() -> Lifecycle:
    return runtime.lifecycle(CeleryDispatcher())


@lru_cache
def batches() -> Batches:
    return Batches(jobs())


@lru_cache
def resources() -> pipeline.Resources:
    return pipeline.Resources(jobs=jobs(), time_limit_errors=(SoftTimeLimitExceeded,))


@worker_ready.connect
def start_sweeper(sender: Any = None, **_: Any) -> None:
    """Every worker sweeps for stalled jobs; a Redis lock lets one do it at a time.
    Each also reports its slots to the scheduler (its capacity) every sweep interval,
    and releases the jobs that may start now that it is here."""
    stopping = threading.Event()
    worker_shutdown.connect(lambda **_: stopping.set(), weak=False)
    beat = _slot_report(sender)
    try:
        beat()
        jobs().dispatch()
    except Exception:  # noqa: BLE001 - the sweeper tries again every interval
        log.warning("could not report this worker's slots yet", exc_info=True)
    thread = threading.Thread(
        target=sweeper.sweep_forever,
        args=(jobs(), stopping.is_set, batches().sweep),
        kwargs={"beat": beat},
        name="vor-sweeper",
        daemon=True,
    )
    thread.start()


def _slot_report(consumer: Any) -> Callable[[], None]:
    """How this worker tells the scheduler its queues and slots (for a few sweeps)."""
    name = consumer.hostname
    queues = list(consumer.app.amqp.queues.consume_from)
    slots = int(consumer.controller.concurrency or 1)
    ttl = 3 * get_settings().sweep_interval_s

    def beat() -> None:
        jobs().scheduler.report_worker(name, queues, slots, ttl)

    return beat


def _run(
    task: Task,
    stage: Stage,
    job_id: str,
    generation: int,
    label: str | None = None,
    window: int | None = None,
) -> str:
    attempt, settings = task.request.retries, get_settings()
    try:
        outcome = pipeline.run_stage(
            stage,
            job_id,
            resources(),
            label=label,
            window=window,
            generation=generation,
            final_attempt=retries.is_final_attempt(attempt, settings),
        )
    except TransientError as exc:
        raise task.retry(exc=exc, countdown=retries.transient_delay(exc, attempt)) from exc
    if outcome is pipeline.StageOutcome.busy:
        raise task.retry(countdown=retries.busy_delay(settings), max_retries=attempt + 1)
    if outcome is not pipeline.StageOutcome.done:
        raise Ignore()
    return job_id


STAGE_OPTIONS: dict[str, Any] = {
    "bind": True,
    "max_retries": get_settings().stage_max_retries,
    "acks_late": True,
}
"""``VOR_STAGE_MAX_RETRIES``: Celery retries of a stage after a transient error; the
last attempt fails the job instead (``retries.is_final_attempt``)."""


@app.task(name=task_name(Stage.compress), **STAGE_OPTIONS)
def compress(self: Task, job_id: str, generation: int = 0) -> str:
    return _run(self, Stage.compress, job_id, generation)


@app.task(name=task_name(Stage.segment), **STAGE_OPTIONS)
def segment(self: Task, job_id: str, generation: int, label: str, window: int | None = None) -> str:
    return _run(self, Stage.segment, job_id, generation, label, window)


@app.task(name=task_name(Stage.stitch), **STAGE_OPTIONS)
def stitch(self: Task, job_id: str, generation: int = 0) -> str:
    return _run(self, Stage.stitch, job_id, generation)


@app.task(name=task_name(Stage.mask_convert), **STAGE_OPTIONS)
def mask_convert(self: Task, job_id: str, generation: int = 0) -> str:
    return _run(self, Stage.mask_convert, job_id, generation)


@app.task(name=task_name(Stage.merge), **STAGE_OPTIONS)
def merge(self: Task, job_id: str, generation: int = 0) -> str:
    return _run(self, Stage.merge, job_id, generation)


@app.task(name=task_name(Stage.erase), **STAGE_OPTIONS)
def erase(self: Task, job_id: str, generation: int = 0, window: int | None = None) -> str:
    return _run(self, Stage.erase, job_id, generation, window=window)


@app.task(name=task_name(Stage.blend), **STAGE_OPTIONS)
def blend(self: Task, job_id: str, generation: int = 0) -> str:
    return _run(self, Stage.blend, job_id, generation)


@app.task(name=task_name(Stage.publish), **STAGE_OPTIONS)
def publish(self: Task, job_id: str, generation: int = 0) -> str:
    return _run(self, Stage.publish, job_id, generation)


@lru_cache
def _webhook_client() -> httpx.Client:
    settings = get_settings()
    return guarded_client(settings.allowed_networks(), timeout=settings.webhook_timeout_s)


@app.task(name=WEBHOOK_TASK, bind=True, max_retries=None, acks_late=True, queue=WEBHOOK_QUEUE.value)
def send_webhook(
    self: Task,
    job_id: str,
    event: str,
    seq: str | None = None,
    snapshot: dict[str, Any] | None = None,
) -> None:
    """One delivery attempt; a Celery retry resends the same message (same ``seq``);
    ``snapshot`` is the job as it was when it was deleted. A batch's events name the batch."""
    attempt, secret = self.request.retries + 1, runtime.webhook_secret()
    if event in BATCH_EVENTS:
        retry_in = batches().deliver(
            job_id, event, attempt=attempt, client=_webhook_client(), secret=secret
        )
        if retry_in is not None:
            raise self.retry(countdown=retry_in)
        return
    retry_in = jobs().deliver(
        job_id,
        event,
        attempt=attempt,
        client=_webhook_client(),
        secret=secret,
        seq=seq,
        snapshot=Job.model_validate(snapshot) if snapshot else None,
    )
    if retry_in is not None:
        raise self.retry(countdown=retry_in)


@app.task(name=BATCH_TASK, bind=True, acks_late=True, queue=BATCH_QUEUE.value, max_retries=None)
def advance_batch(self: Task, batch_id: str) -> None:
    """One step of a batch (a chunk of items made into jobs, or its cancellation); the
    next step is a message of its own, so other work runs between a batch's chunks. A
    transient refusal (the tenant's queue full, Redis away) is retried after its
    ``retry_after``, as long as it takes: the items wait, none is lost."""
    try:
        step = batches().advance(batch_id)
    except TransientError as exc:
        countdown = retries.transient_delay(exc, self.request.retries)
        raise self.retry(exc=exc, countdown=countdown) from exc
    if step is Step.busy:
        raise self.retry(countdown=BUSY_RETRY_S)
    if step is Step.more:
        jobs().dispatcher.advance_batch(batch_id)
