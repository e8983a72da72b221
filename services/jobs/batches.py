"""Batches: many items submitted at once, each made into a job of its own in the background.

``submit`` stores the batch and its items as sent and answers at once. ``advance``
(run by a queued task, ``Dispatcher.advance_batch``) then makes ``VOR_BATCH_CHUNK``
items at a time into jobs through ``Lifecycle.submit``, the path of every job, so
each item is checked, queued, scheduled, retried and ended like any other. Each
step is a message of its own, so the queue serves other work between a batch's
steps. An item that cannot be a job (a bad spec, a refused URL) is settled as
failed with an error naming its field, and the others go on.

Expanding is resumable: ``expanded`` moves after each chunk, and each item's
job carries an idempotency key of its own (``batch_store.item_key``), so a chunk
expanded again after its worker died finds the jobs it made instead of making
more. The sweeper restarts a batch whose expansion stalled (``sweep``).

An item's end is counted by the job store in the transaction that ends the job;
``Lifecycle.complete_batch`` then sends ``batch.completed`` once, when every
item has ended.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx

from services import metrics
from services.errors import Conflict, TransientError, VorError
from services.jobs import notifications, webhooks
from services.jobs.batch_spec import BatchRequest, item_ref, item_spec
from services.jobs.batch_store import (
    BatchItemView,
    BatchRecord,
    BatchStore,
    BatchView,
    ItemError,
    item_key,
    new_batch_id,
)
from services.jobs.lifecycle import Lifecycle
from services.jobs.submission import Submission, check_url
from services.models import Job, WebhookAttempt, utcnow

MAX_PAGE = 500
BUSY_RETRY_S = 1.0
"""How soon a step that found another step holding its batch tries again."""


class Step(StrEnum):
    """What ``Batches.advance`` left to do."""

    done = "done"
    more = "more"
    busy = "busy"


log = logging.getLogger("vor.batches")


@dataclass
class Batches:
    """The batch service: what the API and the workers do to a batch."""

    jobs: Lifecycle
    store: BatchStore = field(init=False)

    def __post_init__(self) -> None:
        self.store = BatchStore(self.jobs.store)

    def submit(
        self, tenant: str, request: BatchRequest, idempotency_key: str | None = None
    ) -> tuple[BatchRecord, bool]:
        """Store a batch and queue its expansion; the batch and whether it is new.

        As for jobs, the request is checked before its ``Idempotency-Key`` is looked
        up, and a key used for another request is a conflict.
        """
        if request.webhook_url:
            check_url(request.webhook_url, "webhook_url", self.jobs.settings)
        fingerprint = request.fingerprint()
        record = BatchRecord(
            id=new_batch_id(),
            tenant=tenant,
            total=len(request.items),
            spec=request.spec,
            webhook_url=request.webhook_url,
            webhook_events=request.webhook_events,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
        if idempotency_key:
            existing = self.store.by_idempotency_key(tenant, idempotency_key)
            if existing is not None:
                return _replayed(existing, fingerprint), False
        record, created = self.store.create(record, request.items)
        if not created:
            return _replayed(record, fingerprint), False
        self.jobs.dispatcher.advance_batch(record.id)
        log.info("batch %s accepted: %d items", record.id, record.total)
        return record, True

    def cancel(self, record: BatchRecord) -> BatchView:
        """Cancel every item not ended yet, those not made into jobs included."""
        if self.store.state(record.id).get("completed_at"):
            raise Conflict(f"batch {record.id} has already completed", field="id")
        if self.store.ask_cancel(record.id):
            log.info("batch %s canceled", record.id)
        self.jobs.dispatcher.advance_batch(record.id)
        return self.view(record)

    def advance(self, batch_id: str) -> Step:
        """Expand the batch's next chunk (or, once canceled, cancel its items): ``more``
        when more is left to do (the caller queues another ``advance``), ``busy`` when
        another step holds the batch (the caller tries again shortly: a cancel asked
        meanwhile must not wait for the sweeper)."""
        record = self.store.get(batch_id)
        if record is None:
            return Step.done
        token, lease = secrets.token_hex(8), f"batch:{batch_id}"
        if not self.jobs.store.acquire_lease(lease, token, self._lease_s()):
            return Step.busy
        try:
            state = self.store.state(batch_id)
            if state.get("cancel"):
                self._cancel_items(record, int(state["expanded"]))
                return Step.done
            start = int(state["expanded"])
            stop = min(record.total, start + self.jobs.settings.batch_chunk)
            if start < stop:
                time.sleep(self.jobs.settings.stage_delays().get("batch", 0.0))
                self._expand(record, start, stop)
            self.jobs.complete_batch(batch_id)
            return Step.more if stop < record.total else Step.done
        finally:
            self.jobs.store.release_lease(lease, token)

    def _lease_s(self) -> float:
        return max(self.jobs.settings.stall_timeout_s, 1.0)

    def _expand(self, record: BatchRecord, start: int, stop: int) -> None:
        """Make items ``start`` .. ``stop - 1`` into jobs and move ``expanded`` past them.

        A transient refusal (Redis, storage, or the tenant's queue full: 429 for a
        client) keeps what was made, marks the batch as waiting until its
        ``retry_after`` (so the sweeper leaves it alone meanwhile) and is raised for
        the task to retry the rest later.
        """
        made: dict[int, str] = {}
        index = start
        try:
            for index, item in enumerate(self.store.items(record.id, start, stop), start):
                job_id = self._make_job(record, index, item)
                if job_id is not None:
                    made[index] = job_id
            index = stop
        except TransientError as exc:
            self.store.record_jobs(record.id, made)
            self.store.set_expanded(record.id, index, wait_s=exc.retry_after or 0.0)
            log.info("batch %s waits at item %d: %s", record.id, index, exc.message)
            raise
        self.store.record_jobs(record.id, made)
        self.store.set_expanded(record.id, index)

    def _make_job(self, record: BatchRecord, index: int, item: Any) -> str | None:
        """Item ``index`` as a job; None when it is invalid (settled as failed)."""
        try:
            spec = item_spec(record.spec, item, index)
            job, _ = self.jobs.submit(
                Submission(
                    tenant=record.tenant,
                    spec=spec,
                    idempotency_key=item_key(record.id, index),
                    batch_id=record.id,
                    batch_index=index,
                )
            )
        except VorError as exc:
            if isinstance(exc, TransientError):
                raise
            where = f"items[{index}]"
            name = exc.field or ""
            name = name if name.startswith(where) else f"{where}.{name}".rstrip(".")
            message = exc.message if exc.message.startswith(where) else f"{name}: {exc.message}"
            self.store.settle(
                record.id, index, error=ItemError(code=exc.code, message=message, field=name)
            )
            return None
        return job.id

    def _cancel_items(self, record: BatchRecord, expanded: int) -> None:
        """Settle the items never made into jobs as canceled, then cancel the jobs not ended.

        An item past ``expanded`` may still have a job, made by a chunk whose worker
        died before it moved ``expanded``: its idempotency key finds it.
        """
        for start in range(expanded, record.total, 1000):
            indexes = range(start, min(record.total, start + 1000))
            found = self.store.job_ids_by_item_key(record, indexes)
            self.store.record_jobs(record.id, found)
            for index in indexes:
                if index not in found:
                    self.store.settle(record.id, index)
        self.store.set_expanded(record.id, record.total)
        for chunk in self.store.scan_results(record.id, record.total):
            for job in self.jobs.store.get_many(list(chunk.values())):
                if job is not None and not job.status.is_terminal():
                    with contextlib.suppress(Conflict):
                        self.jobs.cancel(job)
            self.store.touch(record.id)
        self.jobs.complete_batch(record.id)

    def view(
        self, record: BatchRecord, *, offset: int | None = None, limit: int = 100
    ) -> BatchView:
        """The batch's counts and progress; with ``offset``, one page of its items."""
        view = self.store.summary(record)
        if offset is None:
            return view
        stop = min(record.total, offset + min(limit, MAX_PAGE))
        view.items = self._items(record, offset, stop)
        view.next_offset = stop if stop < record.total else None
        return view

    def _items(self, record: BatchRecord, start: int, stop: int) -> list[BatchItemView]:
        raw_items = self.store.items(record.id, start, stop)
        outcomes = self.store.outcomes(record.id, start, stop)
        job_ids = [o["job"] for o in outcomes if o is not None and "job" in o]
        jobs = {j.id: j for j in self.jobs.store.get_many(job_ids) if j is not None}
        return [
            _item_view(
                index,
                item,
                outcome,
                jobs.get(outcome["job"]) if outcome and "job" in outcome else None,
                self.jobs.result_urls,
            )
            for index, item, outcome in zip(range(start, stop), raw_items, outcomes, strict=True)
        ]

    def deliver(
        self, batch_id: str, event: str, *, attempt: int, client: httpx.Client, secret: str
    ) -> float | None:
        """One attempt at the batch's ``event`` webhook; seconds until the next, or None."""
        record = self.store.get(batch_id)
        if record is None or not record.webhook_url or event not in record.webhook_events:
            return None
        settings = self.jobs.settings
        msg_id = webhooks.webhook_id(batch_id, event)
        body = webhooks.event_body(event, self.store.summary(record).model_dump(mode="json"))
        outcome = webhooks.deliver(
            client, record.webhook_url, secret=secret, msg_id=msg_id, body=body,
            timeout=settings.webhook_timeout_s,
        )  # fmt: skip
        last = attempt >= settings.webhook_max_attempts
        self.store.log_webhook(
            batch_id,
            WebhookAttempt(
                event=event, webhook_id=msg_id, attempt=attempt, at=utcnow(),
                status_code=outcome.status_code, error=outcome.error, ok=outcome.ok,
            ),
        )  # fmt: skip
        self.store.set_webhook_state(batch_id, notifications.delivery_state(outcome, last))
        again = outcome.retryable and not last
        metrics.webhook_delivered(
            self.jobs.store.redis, event, notifications.metric_outcome(outcome, again)
        )
        return webhooks.backoff_s(attempt, base=settings.webhook_backoff_base_s) if again else None

    def sweep(self) -> list[str]:
        """Restart batches whose expansion or cancellation stalled (its worker died), and
        complete those whose last item's ending was not followed by the check."""
        restarted = []
        for batch_id in self.store.open_ids(older_than_s=self.jobs.settings.stall_timeout_s):
            state = self.store.state(batch_id)
            if not state:
                continue
            self.store.touch(batch_id)
            if int(state["expanded"]) < int(state["total"]) or (
                state.get("cancel") and not state.get("completed_at")
            ):
                log.warning("batch %s stalled at item %s: its next step is queued again",
                            batch_id, state["expanded"])  # fmt: skip
                self.jobs.dispatcher.advance_batch(batch_id)
                restarted.append(batch_id)
            self.jobs.complete_batch(batch_id)
        return restarted


def _replayed(existing: BatchRecord, fingerprint: str) -> BatchRecord:
    if existing.fingerprint != fingerprint:
        raise Conflict(
            f"this Idempotency-Key was used for batch {existing.id}, with another request; "
            "use a new key for a new batch",
            field="Idempotency-Key",
        )
    return existing


def _item_view(
    index: int,
    item: Any,
    outcome: dict[str, Any] | None,
    job: Job | None,
    result_urls: Callable[[Job], dict[str, str]],
) -> BatchItemView:
    video_url = item.get("video_url") if isinstance(item, dict) else None
    view = BatchItemView(
        index=index,
        ref=item_ref(item),
        video_url=video_url if isinstance(video_url, str) else None,
        status="pending",
        job_id=None,
        progress=0.0,
        error=None,
    )
    if job is not None:
        view.status = job.status.value
        view.job_id = job.id
        view.progress = round(job.progress, 4)
        view.error = ItemError.model_validate(job.error.model_dump()) if job.error else None
        view.result = result_urls(job)
    elif outcome is not None and "error" in outcome:
        view.status = "failed"
        view.error = ItemError.model_validate(outcome["error"])
    elif outcome is not None:
        view.status = "canceled"
    return view
