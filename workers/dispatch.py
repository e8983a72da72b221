"""The Celery ``Dispatcher``: how the job lifecycle's stages and webhooks reach the queue.

``services.runtime.get_dispatcher`` imports this by name (``VOR_DISPATCHER``), so the
API gets it without importing ``workers``; the workers use it directly.
"""

from __future__ import annotations

from collections.abc import Callable

import redis

from services import runtime
from services.engines import capabilities
from services.jobs import notifications
from services.jobs.plan import BATCH_QUEUE, WEBHOOK_QUEUE, plan
from services.metrics import QueueDepths
from services.models import Job, JobSpec, Queue
from services.settings import get_settings
from workers import broker, canvas
from workers.celery_app import BATCH_TASK, WEBHOOK_TASK, app

QUEUES = tuple(queue.value for queue in Queue)


class CeleryDispatcher:
    """Stages as a canvas (``workers.canvas``), webhooks as ``vor.webhook`` messages;
    what waits is read from the broker's Redis (``workers.broker``)."""

    def __init__(
        self, redis_of_broker: Callable[[], redis.Redis] = runtime.get_broker_redis
    ) -> None:
        self.broker = redis_of_broker

    def enqueue(self, job: Job) -> None:
        engine = capabilities(job.engine, get_settings())
        built = canvas.build(job, plan(job, engine.queue))
        if built is not None:
            built.apply_async()

    def notify(self, job_id: str, event: str, *, snapshot: Job | None = None) -> None:
        kwargs = {"snapshot": snapshot.model_dump(mode="json")} if snapshot else {}
        seq = notifications.new_message(event)
        app.send_task(
            WEBHOOK_TASK, args=(job_id, event, seq), kwargs=kwargs, queue=WEBHOOK_QUEUE.value
        )

    def advance_batch(self, batch_id: str) -> None:
        app.send_task(BATCH_TASK, args=(batch_id,), queue=BATCH_QUEUE.value)

    def queued_jobs(self, *, held_for_less_than_s: float) -> set[str]:
        return broker.jobs_with_messages(
            self.broker(), QUEUES, held_for_less_than_s=held_for_less_than_s
        )

    def depths(self) -> QueueDepths:
        return broker.depths(self.broker(), QUEUES)

    def warm_up(self) -> None:
        """Finalize the app (its first canvas), reach the result backend, declare the queues."""
        spec = JobSpec.model_validate(
            {"engine": "svor", "classes": [{"label": "warm", "boxes": [[0, 0, 1, 1]]}]}
        )
        job = Job(id="job_warmup", tenant="warmup", mode="remove", engine="svor", spec=spec)
        canvas.build(job, plan(job, capabilities(job.engine, get_settings()).queue))
        app.backend.client.ping()
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=1)
            for queue in app.amqp.queues.values():
                producer.maybe_declare(queue)
