"""Warm a fresh API process before it takes traffic.

The first submissions a process serves pay once for what a submission first
touches: PyAV's demuxer and decoder, the job store's and the broker's Redis
connections, Celery's producer. Under a burst that cost is paid by many
requests at once and queues up behind them (`bench/load.py` at 50
submissions/s shows it as slow submissions in the first second). The API pays it at
startup instead; a part that fails (Redis not up yet) is left to the first
request, as before.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from services.media.synthetic import make_clip
from services.media.video import probe
from services.models import Job, JobSpec
from services.runtime import get_storage, get_store
from workers import canvas
from workers.celery_app import app as celery_app

log = logging.getLogger("vor.api")


def warm_up() -> None:
    began = time.perf_counter()
    for name, step in (("media", _probe_a_clip), ("redis", _connect), ("celery", _prepare_celery)):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - warming is best effort
            log.warning("warm-up of %s skipped: %s", name, exc)
    log.info("warmed up in %.0f ms", (time.perf_counter() - began) * 1000)


def _probe_a_clip() -> None:
    with tempfile.TemporaryDirectory(prefix="vor-warm-") as folder:
        clip = make_clip(Path(folder) / "warm.mp4", frames=4)
        probe(clip.path)


def _connect() -> None:
    get_store().ping()
    get_storage()


def _prepare_celery() -> None:
    """Finalize the Celery app (its first canvas) and declare the queues a submission uses."""
    spec = JobSpec.model_validate(
        {"engine": "svor", "classes": [{"label": "warm", "boxes": [[0, 0, 1, 1]]}]}
    )
    canvas.build(Job(id="job_warmup", tenant="warmup", mode="remove", engine="svor", spec=spec))
    celery_app.backend.client.ping()
    with celery_app.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=1)
        for queue in celery_app.amqp.queues.values():
            producer.maybe_declare(queue)
