"""Batches in Redis: the record, the items as sent, each item's outcome, the counts.

A batch is a hash (``{prefix}:batch:{id}``) holding its record (``meta``, JSON),
how many items have been expanded into jobs or errors (``expanded``), the
counts of its items by status (``n:queued`` ... ``n:canceled``; the job store
moves a job's count in the same transaction as the job's own change, so each
item is counted once, in one status), ``invalid``, ``cancel`` and, once,
``completed_at``. Beside it: the raw items (a list), each item's outcome (a
hash, index -> job id, error or canceled) and the batch webhook's attempts.

``complete`` sets ``completed_at`` in a script only when every item has ended,
and only once: whoever sees it set first sends ``batch.completed``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from services.errors import NotFound
from services.jobs.store import JobStore
from services.models import JobError, Status, WebhookAttempt, utcnow

ITEM_STATUSES = tuple(s.value for s in Status)
ENDED = ("succeeded", "failed", "canceled")
BatchStatus = Literal["accepting", "running", "canceling", "completed", "canceled"]
IDEMPOTENCY_TTL_S = 24 * 3600


def new_batch_id() -> str:
    return "bat_" + secrets.token_hex(10)


def item_key(batch_id: str, index: int) -> str:
    """The idempotency key of item ``index``'s job: a newline keeps clients from using it
    (a header cannot hold one), and expanding the item again finds the same job."""
    return f"batch\n{batch_id}\n{index}"


class BatchRecord(BaseModel):
    """What a batch was asked to do; fixed once it is stored."""

    id: str
    tenant: str
    created_at: datetime = Field(default_factory=utcnow)
    total: int
    spec: dict[str, Any]
    webhook_url: str | None = None
    webhook_events: list[str] = Field(default_factory=list)
    idempotency_key: str | None = None
    fingerprint: str = ""


class BatchCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pending: int = Field(description="items not yet made into jobs")
    queued: int
    running: int
    succeeded: int
    failed: int = Field(description="failed jobs, and items refused as invalid")
    canceled: int
    invalid: int = Field(description="of the failed: items refused before a job was made")


class ItemError(JobError):
    """Why an item failed: its job's error, or, for an item refused before a job was
    made, the error with ``field`` naming what is wrong (``items[3].spec.classes``)."""

    field: str | None = None


class BatchItemView(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    ref: str | None = Field(description="the client's name for the item, as sent")
    video_url: str | None
    status: Literal["pending", "queued", "running", "succeeded", "failed", "canceled"]
    job_id: str | None = Field(description="the item's job; null for an invalid item")
    progress: float = Field(ge=0.0, le=1.0)
    error: ItemError | None = Field(description="why the item failed (`field` for invalid ones)")
    result: dict[str, str] = Field(default_factory=dict, description="the job's result URLs")


class BatchView(BaseModel):
    """A batch as a client sees it (the API's answers and ``batch.completed``'s ``data``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(examples=["bat_3f2a9c0d1e4b5a6f7c8d"])
    status: BatchStatus
    total: int
    counts: BatchCounts
    progress: float = Field(ge=0.0, le=1.0, description="items ended / total")
    created_at: datetime
    completed_at: datetime | None
    webhook_url: str | None
    webhook_state: str | None = Field(description="batch.completed: delivered, retrying, ...")
    items: list[BatchItemView] | None = Field(
        default=None, description="one page of items (GET /v1/batches/{id})"
    )
    next_offset: int | None = Field(default=None, description="pass as `offset` for the next page")


class BatchStore:
    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.redis = jobs.redis
        self._complete = self.redis.register_script(_COMPLETE_LUA)
        self._settle = self.redis.register_script(_SETTLE_LUA)

    def _key(self, batch_id: str, *parts: str) -> str:
        return ":".join((self.jobs.batch_key(batch_id), *parts))

    def _open_key(self) -> str:
        return f"{self.jobs.prefix}:batches:open"

    def _idem_key(self, tenant: str, key: str) -> str:
        return f"{self.jobs.prefix}:batch-idem:{tenant}:{key}"

    def create(self, record: BatchRecord, items: list[Any]) -> tuple[BatchRecord, bool]:
        """Store a new batch and its items; with an idempotency key already used, the
        batch it named instead (and False)."""
        if record.idempotency_key:
            idem = self._idem_key(record.tenant, record.idempotency_key)
            if not self.redis.set(idem, record.id, nx=True, ex=IDEMPOTENCY_TTL_S):
                existing = self.by_idempotency_key(record.tenant, record.idempotency_key)
                if existing is not None:
                    return existing, False
                self.redis.set(idem, record.id, ex=IDEMPOTENCY_TTL_S)
        pipe = self.redis.pipeline(transaction=False)
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            pipe.rpush(self._key(record.id, "items"), *(json.dumps(i) for i in chunk))
        fields: dict[str, str | int] = {"meta": record.model_dump_json(), "total": record.total}
        fields.update({f"n:{s}": 0 for s in ITEM_STATUSES} | {"invalid": 0, "expanded": 0})
        pipe.hset(self.jobs.batch_key(record.id), mapping=fields)
        pipe.zadd(self._open_key(), {record.id: time.time()})
        pipe.execute()
        return record, True

    def by_idempotency_key(self, tenant: str, key: str) -> BatchRecord | None:
        batch_id = cast("bytes | None", self.redis.get(self._idem_key(tenant, key)))
        return self.get(batch_id.decode()) if batch_id else None

    def get(self, batch_id: str) -> BatchRecord | None:
        raw = cast("bytes | None", self.redis.hget(self.jobs.batch_key(batch_id), "meta"))
        return BatchRecord.model_validate_json(raw) if raw else None

    def get_for(self, tenant: str, batch_id: str) -> BatchRecord:
        """The batch, if it belongs to ``tenant``; another tenant's does not exist."""
        record = self.get(batch_id)
        if record is None or record.tenant != tenant:
            raise NotFound(f"batch {batch_id} does not exist", field="id")
        return record

    def summary(self, record: BatchRecord) -> BatchView:
        """The batch's status, counts and progress (no items)."""
        state = self.state(record.id)
        n = {s: max(0, int(state.get(f"n:{s}", 0))) for s in ITEM_STATUSES}
        ended = sum(n[s] for s in ENDED)
        completed_at = state.get("completed_at")
        canceled = bool(state.get("cancel"))
        status: BatchStatus
        if completed_at:
            status = "canceled" if canceled else "completed"
        elif canceled:
            status = "canceling"
        else:
            status = "accepting" if int(state.get("expanded", 0)) < record.total else "running"
        counts = BatchCounts(
            pending=max(0, record.total - sum(n.values())),
            invalid=int(state.get("invalid", 0)),
            **n,
        )
        return BatchView(
            id=record.id,
            status=status,
            total=record.total,
            counts=counts,
            progress=round(ended / record.total, 4) if record.total else 1.0,
            created_at=record.created_at,
            completed_at=datetime.fromisoformat(completed_at) if completed_at else None,
            webhook_url=record.webhook_url,
            webhook_state=state.get("webhook_state"),
        )

    def state(self, batch_id: str) -> dict[str, str]:
        raw = cast("dict[bytes, bytes]", self.redis.hgetall(self.jobs.batch_key(batch_id)))
        return {k.decode(): v.decode() for k, v in raw.items() if k != b"meta"}

    def items(self, batch_id: str, start: int, stop: int) -> list[Any]:
        """The raw items ``start`` .. ``stop - 1``, as sent."""
        if stop <= start:
            return []
        raws = cast("list[bytes]", self.redis.lrange(self._key(batch_id, "items"), start, stop - 1))
        return [json.loads(raw) for raw in raws]

    def outcomes(self, batch_id: str, start: int, stop: int) -> list[dict[str, Any] | None]:
        """Each item's outcome (``{"job": id}``, ``{"error": ...}``, ``{"canceled": true}``),
        None for an item not expanded yet."""
        if stop <= start:
            return []
        fields = [str(i) for i in range(start, stop)]
        raws = cast("list[bytes | None]", self.redis.hmget(self._key(batch_id, "results"), fields))
        return [json.loads(raw) if raw else None for raw in raws]

    def record_jobs(self, batch_id: str, job_ids: dict[int, str]) -> None:
        if job_ids:
            mapping = {str(i): json.dumps({"job": j}) for i, j in job_ids.items()}
            self.redis.hset(self._key(batch_id, "results"), mapping=mapping)

    def settle(self, batch_id: str, index: int, *, error: ItemError | None = None) -> bool:
        """End an item that has no job: invalid (``error``) or canceled before it was made.
        Counted once, however often it is settled; True the first time."""
        outcome = {"error": error.model_dump()} if error else {"canceled": True}
        counts = ("n:failed", "invalid") if error else ("n:canceled", "")
        keys = [self.jobs.batch_key(batch_id), self._key(batch_id, "results")]
        return bool(self._settle(keys=keys, args=[str(index), json.dumps(outcome), *counts]))

    def set_expanded(self, batch_id: str, count: int, *, wait_s: float = 0.0) -> None:
        """``count`` items are made into jobs (or settled); the batch's heartbeat, set
        ``wait_s`` into the future when its next step waits that long on purpose."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.jobs.batch_key(batch_id), key="expanded", value=str(count))
        pipe.zadd(self._open_key(), {batch_id: time.time() + wait_s}, xx=True)
        pipe.execute()

    def ask_cancel(self, batch_id: str) -> bool:
        """Mark the batch canceled; False when it already was."""
        return bool(self.redis.hsetnx(self.jobs.batch_key(batch_id), "cancel", "1"))

    def complete(self, batch_id: str) -> bool:
        """True once, for whoever first finds every item of the batch ended."""
        done = self._complete(keys=[self.jobs.batch_key(batch_id)], args=[utcnow().isoformat()])
        if done:
            self.redis.zrem(self._open_key(), batch_id)
        return bool(done)

    def open_ids(self, older_than_s: float = 0.0) -> list[str]:
        """Batches not completed whose expansion last moved more than ``older_than_s`` ago."""
        cutoff = time.time() - older_than_s
        members = cast("list[bytes]", self.redis.zrangebyscore(self._open_key(), "-inf", cutoff))
        return [m.decode() for m in members]

    def touch(self, batch_id: str) -> None:
        self.redis.zadd(self._open_key(), {batch_id: time.time()}, xx=True)

    def job_ids_by_item_key(self, batch: BatchRecord, indexes: range) -> dict[int, str]:
        """Jobs already made for items in ``indexes`` (found by their idempotency keys)."""
        keys = [item_key(batch.id, i) for i in indexes]
        found = self.jobs.ids_by_idempotency_keys(batch.tenant, keys)
        return {i: job_id for i, job_id in zip(indexes, found, strict=True) if job_id}

    def set_webhook_state(self, batch_id: str, state: str) -> None:
        self.redis.hset(self.jobs.batch_key(batch_id), key="webhook_state", value=state)

    def log_webhook(self, batch_id: str, attempt: WebhookAttempt) -> None:
        self.redis.rpush(self._key(batch_id, "webhooks"), attempt.model_dump_json())

    def webhook_log(self, batch_id: str) -> list[WebhookAttempt]:
        raws = cast("list[bytes]", self.redis.lrange(self._key(batch_id, "webhooks"), 0, -1))
        return [WebhookAttempt.model_validate_json(raw) for raw in raws]

    def scan_results(self, batch_id: str, upto: int, chunk: int = 500) -> Iterator[dict[int, str]]:
        """The job ids of items ``0 .. upto - 1``, ``chunk`` items at a time."""
        for start in range(0, upto, chunk):
            outcomes = self.outcomes(batch_id, start, min(upto, start + chunk))
            yield {
                start + n: o["job"] for n, o in enumerate(outcomes) if o is not None and "job" in o
            }


_SETTLE_LUA = """
if redis.call('hsetnx', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  redis.call('hincrby', KEYS[1], ARGV[3], 1)
  if ARGV[4] ~= '' then redis.call('hincrby', KEYS[1], ARGV[4], 1) end
  return 1
end
return 0
"""
_COMPLETE_LUA = """
local total = tonumber(redis.call('hget', KEYS[1], 'total') or '0')
local expanded = tonumber(redis.call('hget', KEYS[1], 'expanded') or '0')
if total == 0 or expanded < total then return 0 end
local ended = 0
for _, field in ipairs({'n:succeeded', 'n:failed', 'n:canceled'}) do
  ended = ended + tonumber(redis.call('hget', KEYS[1], field) or '0')
end
if ended < total then return 0 end
return redis.call('hsetnx', KEYS[1], 'completed_at', ARGV[1])
"""
