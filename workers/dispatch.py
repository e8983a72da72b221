"""The Celery ``Dispatcher``: how the job lifecycle's stages and webhooks reach the queue.

``services.runtime.get_dispatcher`` imports this by name (``VOR_DISPATCHER``), so the
API gets it without importing ``workers``; the workers use it directly.
"""

from __future__ import annotations

from services.engines import capabilities
from services.jobs.plan import WEBHOOK_QUEUE, plan
from services.models import Job, JobSpec
from services.settings import get_settings
from workers import canvas
from workers.celery_app import WEBHOOK_TASK, app


class CeleryDispatcher:
    """Stages as a canvas (``workers.canvas``), webhooks as ``vor.webhook`` messages."""

    def enqueue(self, job: Job) -> None:
        engine = capabilities(job.engine, get_settings())
        built = canvas.build(job, plan(job, engine.queue))
        if built is not None:
            built.apply_async()

    def notify(self, job_id: str, event: str, *, snapshot: Job | None = None) -> None:
        kwargs = {"snapshot": snapshot.model_dump(mode="json")} if snapshot else {}
        app.send_task(WEBHOOK_TASK, args=(job_id, event), kwargs=kwargs, queue=WEBHOOK_QUEUE.value)

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
