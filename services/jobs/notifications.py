"""Webhook events of a job: which to send, and one delivery attempt of each.

Terminal events are retried by the caller (``Lifecycle.deliver``, run by a
Celery task) on the schedule of ``webhooks.backoff_s``; progress events are best
effort, sent once. Every attempt is logged on the job, and a 410 from the
receiver stops all further deliveries for that job.

A message's ``webhook-id`` is what a receiver deduplicates by. A terminal event
happens once per job, so its id follows from the job and the event (a
redelivery asked for later keeps it). A job sends ``job.progress`` many times
with different bodies: each of those messages gets a sequence of its own when
it is queued (``new_message``), and only retries of that message share it.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from urllib.parse import urlsplit

import httpx

from services.errors import NotFound
from services.jobs import webhooks
from services.jobs.store import JobStore
from services.models import Job, WebhookAttempt, utcnow

TERMINAL_EVENTS = {"job.succeeded", "job.failed", "job.canceled"}
log = logging.getLogger("vor.webhooks")


def wants(job: Job, event: str) -> bool:
    if not job.spec.webhook_url or event not in job.spec.webhook_events:
        return False
    return not any(w.error == "gone" for w in job.webhooks)


def new_message(event: str) -> str | None:
    """The sequence that tells this message of ``event`` apart from the job's others."""
    return None if event in TERMINAL_EVENTS else secrets.token_hex(8)


def delivery_state(outcome: webhooks.DeliveryResult, last_attempt: bool) -> str:
    if outcome.ok:
        return "delivered"
    if outcome.gone:
        return "gone"
    return "retrying" if outcome.retryable and not last_attempt else "failed"


def metric_outcome(outcome: webhooks.DeliveryResult, retrying: bool) -> str:
    """How ``vor_webhook_deliveries_total`` counts an attempt: ok, retry, failed or gone."""
    if outcome.ok:
        return "ok"
    if outcome.gone:
        return "gone"
    return "retry" if retrying else "failed"


def deliver_event(
    job: Job,
    event: str,
    *,
    attempt: int,
    store: JobStore,
    secret: str,
    timeout_s: float,
    client: httpx.Client,
    result: dict[str, str],
    last_attempt: bool = True,
    seq: str | None = None,
) -> webhooks.DeliveryResult | None:
    """Send ``event`` for a job once and log the attempt; None when nothing is to be sent.

    The job's ``webhook_state[event]`` says where delivery stands: ``delivered``,
    ``retrying``, ``failed`` (retries ran out, or the URL is refused) or ``gone`` (410).
    A job deleted meanwhile (its delivery sent from a snapshot) keeps no log.
    """
    if not wants(job, event):
        return None
    assert job.spec.webhook_url
    msg_id = webhooks.webhook_id(job.id, event, seq)
    body = webhooks.event_body(event, job.public(result))
    outcome = webhooks.deliver(
        client, job.spec.webhook_url, secret=secret, msg_id=msg_id, body=body, timeout=timeout_s
    )
    attempt_log = WebhookAttempt(
        event=event,
        webhook_id=msg_id,
        attempt=attempt,
        at=utcnow(),
        status_code=outcome.status_code,
        error="gone" if outcome.gone else outcome.error,
        ok=outcome.ok,
    )
    with contextlib.suppress(NotFound):
        store.log_webhook(job.id, attempt_log)
        if event in TERMINAL_EVENTS:
            store.set_webhook_state(job.id, event, delivery_state(outcome, last_attempt))
    host = urlsplit(job.spec.webhook_url).netloc
    detail = f"delivered ({outcome.status_code})" if outcome.ok else outcome.error
    level = logging.INFO if outcome.ok else logging.WARNING
    log.log(level, "%s to %s, attempt %d: %s", event, host, attempt, detail)
    return outcome
