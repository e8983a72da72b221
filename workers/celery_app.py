"""The Celery application: broker, routing and the reliability settings.

Late acks with ``reject_on_worker_lost`` put a message back when its worker
dies; every stage is idempotent, so running it again is safe. The visibility
timeout is longer than the longest stage plus its longest retry countdown, set
for the broker and the result backend alike, so nothing is redelivered while
it still runs.
"""

from __future__ import annotations

from celery import Celery

from services.runtime import redis_url
from services.settings import get_settings

CPU_QUEUE = "cpu"
IO_QUEUE = "io"


def make_app() -> Celery:
    settings = get_settings()
    url = redis_url(settings)
    app = Celery("vor", broker=url, backend=url, include=["workers.tasks"])
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
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        result_expires=24 * 3600,
        task_default_queue=CPU_QUEUE,
        task_time_limit=settings.stage_time_limit_s + 60,
        task_soft_time_limit=settings.stage_time_limit_s,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_track_started=False,
    )
    return app


app = make_app()
