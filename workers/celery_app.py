"""The Celery application: broker, routing and the reliability settings.

Late acks with ``reject_on_worker_lost`` put a message back when its worker
dies; every stage is idempotent, so running it again is safe. The visibility
timeout is longer than the longest stage plus its longest retry countdown, set
for the broker and the result backend alike, so nothing is redelivered while
it still runs.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task, signals
from celery.backends.redis import RedisBackend

from services import logs
from services.models import Queue, Stage
from services.runtime import broker_url
from services.settings import get_settings

WEBHOOK_TASK = "vor.webhook"
BATCH_TASK = "vor.batch"


def task_name(stage: Stage) -> str:
    """The task that runs ``stage``: ``vor.compress``, ``vor.segment``, ..."""
    return f"vor.{stage.value}"


class UnwatchedRedisBackend(RedisBackend):
    """Celery's Redis result backend without waiting on results.

    Celery's Redis backend subscribes whoever sends a task (and whoever
    freezes a chord's group) to that task's result channel, so that a
    ``get()`` could wait on it. vor never waits on a Celery result (the job
    store holds the truth), so each submission would only pay for the
    subscriptions and keep them: the API would end up subscribed to every
    task it ever sent. Chords still join: the worker counts header results
    in Redis. Without a subscriber to guard, one instance (and its connection
    pool) serves every thread (``result_backend_thread_safe``); Celery would
    otherwise make one per thread, each first paying an entry-point scan.
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        return None

    def add_pending_result(
        self, result: Any, weak: bool = False, start_drainer: bool = True
    ) -> Any:
        return result

    def add_pending_results(self, results: Any, weak: bool = False) -> Any:
        return results


def _backend(url: str) -> str:
    """The result backend as Celery reads ``module:Class+url``; a broker URL's own
    prefix (``redis+socket://``) is dropped, as Celery drops it from a backend URL."""
    scheme, _, rest = url.partition("://")
    if "+" in scheme:
        url = f"{scheme.split('+', 1)[1]}://{rest}"
    return f"{__name__}:{UnwatchedRedisBackend.__name__}+{url}"


def _connections() -> dict[str, str]:
    url = broker_url(get_settings())
    return {"broker_url": url, "result_backend": _backend(url)}


def make_app() -> Celery:
    """The app, with its broker found when Celery first reads its configuration.

    Importing this module needs no Redis URL: ``celery -A workers.celery_app ...``
    finds the broker of a running ``vor serve`` through ``VOR_DATA_DIR`` (its
    ``vor.json``) when ``VOR_REDIS_URL`` is not set, and says how to fix it when
    neither is there.
    """
    settings = get_settings()
    app = Celery("vor", include=["workers.tasks"])
    app.add_defaults(_connections)
    transport = {"visibility_timeout": settings.visibility_timeout_s}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=settings.soft_shutdown_s,
        worker_enable_soft_shutdown_on_idle=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        result_backend_thread_safe=True,
        result_expires=24 * 3600,
        task_default_queue=Queue.cpu.value,
        task_time_limit=settings.stage_time_limit_s + 60,
        task_soft_time_limit=settings.stage_time_limit_s,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_track_started=False,
    )
    return app


app = make_app()


@signals.setup_logging.connect
def _setup_logging(loglevel: int | None = None, **_: Any) -> None:
    """Celery's own lines in vor's format too; with this receiver Celery sets up no logging."""
    logs.setup(get_settings().log_format, level=loglevel or logging.INFO)


@signals.task_prerun.connect
def _enter_task(task_id: str, task: Task, args: tuple[Any, ...] = (), **_: Any) -> None:
    """Every line a task logs names its job (the first argument) and stage (the task)."""
    job_id = args[0] if args and isinstance(args[0], str) and args[0].startswith("job_") else None
    stage = task.name.removeprefix("vor.") if job_id else None
    logs.begin(job_id=job_id, stage=stage, task_id=task_id)


@signals.task_postrun.connect
def _leave_task(**_: Any) -> None:
    logs.end()
