"""The job store: the single truth about every job, kept in Redis.

Celery's result backend is never read for a job's state. Each job is one JSON
value; changes go through ``update`` (optimistic, WATCH/MULTI) so concurrent
stages (parallel segmentation) never overwrite each other. Every change is
published on ``{prefix}:events:{id}`` for clients that follow a job live, and on
``{prefix}:tenant-events:{tenant}`` (with creations and deletions) for a live job list.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import cast

import redis

from services import metrics
from services.errors import Conflict, InvalidInput, NotFound, Stale
from services.jobs.plan import stage_key
from services.models import Job, Stage, Status, WebhookAttempt, utcnow


def new_job_id() -> str:
    return "job_" + secrets.token_hex(10)


class JobStore:
    def __init__(self, client: redis.Redis, *, prefix: str = "vor") -> None:
        self.redis = client
        self.prefix = prefix
        self._renew = client.register_script(_RENEW_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _get(self, key: str) -> bytes | None:
        # redis-py types its commands for both clients (sync | Awaitable); ours is sync.
        return cast("bytes | None", self.redis.get(key))

    def ping(self) -> None:
        self.redis.ping()

    def create(self, job: Job) -> tuple[Job, bool]:
        """Save a new job; with an idempotency key already used, return that job instead."""
        if job.idempotency_key:
            idem = self._key("idem", job.tenant, job.idempotency_key)
            if not self.redis.set(idem, job.id, nx=True, ex=24 * 3600):
                existing = self.by_idempotency_key(job.tenant, job.idempotency_key)
                if existing is not None:
                    return existing, False
                self.redis.set(idem, job.id, ex=24 * 3600)
        score = job.created_at.timestamp()
        pipe = self.redis.pipeline()
        pipe.set(self._key("job", job.id), job.model_dump_json())
        pipe.zadd(self._key("tenant", job.tenant), {job.id: score})
        pipe.zadd(self._key("active"), {job.id: time.time()})
        metrics.count_transition(pipe, None, job.status, prefix=self.prefix)
        self._count_in_batch(pipe, job, None)
        pipe.publish(self.tenant_channel(job.tenant), _event(job, with_id=True))
        pipe.execute()
        return job, True

    def batch_key(self, batch_id: str) -> str:
        """The hash of a batch's state, where its items are counted by status."""
        return self._key("batch", batch_id)

    def _count_in_batch(self, pipe: redis.client.Pipeline, job: Job, before: Status | None) -> None:
        """Move the job's count in its batch from ``before`` to its status, in the same
        transaction as the change itself: every item is counted once, in one status."""
        if job.batch_id is None or before is job.status:
            return
        key = self.batch_key(job.batch_id)
        if before is not None:
            pipe.hincrby(key, f"n:{before.value}", -1)
        pipe.hincrby(key, f"n:{job.status.value}", 1)

    def ids_by_idempotency_keys(self, tenant: str, keys: list[str]) -> list[str | None]:
        """The job each key names (None where none), in one round trip."""
        if not keys:
            return []
        raws = cast(
            "list[bytes | None]", self.redis.mget([self._key("idem", tenant, k) for k in keys])
        )
        return [raw.decode() if raw else None for raw in raws]

    def by_idempotency_key(self, tenant: str, key: str) -> Job | None:
        job_id = self._get(self._key("idem", tenant, key))
        return self.get(job_id.decode()) if job_id else None

    def get(self, job_id: str) -> Job | None:
        raw = self._get(self._key("job", job_id))
        return Job.model_validate_json(raw) if raw else None

    def get_many(self, job_ids: list[str]) -> list[Job | None]:
        """Several jobs in one round trip, in order (None where one does not exist)."""
        if not job_ids:
            return []
        raws = cast("list[bytes | None]", self.redis.mget([self._key("job", j) for j in job_ids]))
        return [Job.model_validate_json(raw) if raw else None for raw in raws]

    def require(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        return job

    def get_for(self, tenant: str, job_id: str) -> Job:
        """The job, if it belongs to ``tenant``; another tenant's job does not exist."""
        job = self.get(job_id)
        if job is None or job.tenant != tenant:
            raise NotFound(f"job {job_id} does not exist", field="id")
        return job

    def update(self, job_id: str, change: Callable[[Job], None]) -> Job:
        """Apply ``change`` to the stored job atomically and save it."""
        key = self._key("job", job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    # Watching, the pipeline runs commands at once: a value, not a queue.
                    raw = cast("bytes | None", pipe.get(key))
                    if raw is None:
                        raise NotFound(f"job {job_id} does not exist")
                    job = Job.model_validate_json(raw)
                    before = job.status
                    change(job)
                    job.updated_at = utcnow()
                    pipe.multi()
                    pipe.set(key, job.model_dump_json())
                    metrics.count_transition(pipe, before, job.status, prefix=self.prefix)
                    self._count_in_batch(pipe, job, before)
                    if job.status.is_terminal():
                        pipe.zrem(self._key("active"), job_id)
                    else:
                        pipe.zadd(self._key("active"), {job_id: time.time()})
                    pipe.publish(self._key("events", job_id), _event(job))
                    pipe.publish(self.tenant_channel(job.tenant), _event(job, with_id=True))
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue

    def start_stage(
        self,
        job_id: str,
        stage: Stage,
        label: str | None = None,
        *,
        generation: int = 0,
        window: int | None = None,
    ) -> Job:
        """Mark ``stage`` as running and count the run.

        Raises ``Conflict`` when the job already ended, and ``Stale`` when this
        message belongs to an older generation of the job or the stage is done.
        """
        key = stage_key(stage, label, window)

        def change(job: Job) -> None:
            if job.status.is_terminal():
                raise Conflict(f"job {job_id} is {job.status.value}")
            if generation != job.generation or key in job.done:
                raise Stale(f"{key} of job {job_id} (generation {generation}) is not due")
            if job.status is Status.queued:
                job.status = Status.running
                job.started_at = utcnow()
            job.stage = stage
            job.stage_started_at = utcnow()
            job.runs[key] = job.runs.get(key, 0) + 1

        return self.update(job_id, change)

    def complete_stage(self, job_id: str, key: str, seconds: float) -> Job:
        def change(job: Job) -> None:
            if key not in job.done:
                job.done.append(key)
            name = key.split(":")[0]
            job.timings[name] = max(job.timings.get(name, 0.0), seconds)

        return self.update(job_id, change)

    def bump_generation(self, job_id: str) -> Job:
        """Make every queued message of the job stale; the caller enqueues afresh."""

        def change(job: Job) -> None:
            job.generation += 1

        return self.update(job_id, change)

    def touch(self, job_id: str) -> None:
        """A heartbeat: the job's worker is alive."""
        self.redis.zadd(self._key("active"), {job_id: time.time()}, xx=True)

    def touch_many(self, job_ids: list[str]) -> None:
        """Heartbeats of many jobs in one round trip (jobs waiting for a slot)."""
        if job_ids:
            now = time.time()
            self.redis.zadd(self._key("active"), dict.fromkeys(job_ids, now), xx=True)

    def acquire_lease(self, name: str, token: str, ttl_s: float) -> bool:
        return bool(self.redis.set(self._key("lease", name), token, nx=True, px=int(ttl_s * 1000)))

    def renew_lease(self, name: str, token: str, ttl_s: float) -> bool:
        renewed = self._renew(keys=[self._key("lease", name)], args=[token, int(ttl_s * 1000)])
        return bool(renewed)

    def release_lease(self, name: str, token: str) -> None:
        self._release(keys=[self._key("lease", name)], args=[token])

    def set_progress(self, job_id: str, progress: float) -> Job:
        def change(job: Job) -> None:
            if not job.status.is_terminal():
                job.progress = max(job.progress, min(1.0, progress))

        return self.update(job_id, change)

    def finish(self, job_id: str, status: Status, **fields: object) -> Job:
        """Move a job to a terminal status; a job already terminal is left as it is."""

        def change(job: Job) -> None:
            if job.status.is_terminal():
                return
            job.status = status
            job.finished_at = utcnow()
            if status is Status.succeeded:
                job.progress = 1.0
            for name, value in fields.items():
                setattr(job, name, value)

        return self.update(job_id, change)

    def set_webhook_state(self, job_id: str, event: str, state: str) -> Job:
        return self.update(job_id, lambda job: job.webhook_state.__setitem__(event, state))

    def log_webhook(self, job_id: str, attempt: WebhookAttempt) -> Job:
        return self.update(job_id, lambda job: job.webhooks.append(attempt))

    def delete(self, job: Job) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self._key("job", job.id))
        pipe.zrem(self._key("tenant", job.tenant), job.id)
        pipe.zrem(self._key("active"), job.id)
        metrics.count_transition(pipe, job.status, None, prefix=self.prefix)
        if job.idempotency_key:
            pipe.delete(self._key("idem", job.tenant, job.idempotency_key))
        pipe.publish(self.tenant_channel(job.tenant), json.dumps({"id": job.id, "deleted": True}))
        pipe.execute()

    def list_jobs(
        self,
        tenant: str,
        *,
        status: Status | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """A tenant's jobs, newest first, ``limit`` at a time; returns the next cursor."""
        key = self._key("tenant", tenant)
        max_score: float | str = "+inf"
        skip_ids: set[str] = set()
        if cursor:
            max_score, skip_ids = _decode_cursor(cursor)
        found: list[Job] = []
        seen_at_score: set[str] = set()
        last_score: float | None = None
        for job_id, score in self._scan_newest(key, max_score):
            if score == max_score and job_id in skip_ids:
                continue
            if score != last_score:
                seen_at_score = skip_ids if score == max_score else set()
                seen_at_score = set(seen_at_score)
                last_score = score
            seen_at_score.add(job_id)
            job = self.get(job_id)
            if job is None or (status is not None and job.status is not status):
                continue
            found.append(job)
            if len(found) == limit:
                return found, _encode_cursor(score, seen_at_score)
        return found, None

    def _scan_newest(self, key: str, max_score: float | str) -> Iterator[tuple[str, float]]:
        batch = 100
        offset = 0
        while True:
            rows = cast(
                "list[tuple[bytes, float]]",
                self.redis.zrevrangebyscore(
                    key, max_score, "-inf", start=offset, num=batch, withscores=True
                ),
            )
            for member, score in rows:
                yield member.decode(), float(score)
            if len(rows) < batch:
                return
            offset += batch

    def active_ids(self, older_than_s: float = 0.0) -> list[str]:
        """Non-terminal jobs whose last change is older than ``older_than_s``."""
        cutoff = time.time() - older_than_s
        members = cast("list[bytes]", self.redis.zrangebyscore(self._key("active"), "-inf", cutoff))
        return [m.decode() for m in members]

    def forget_active(self, job_id: str) -> None:
        self.redis.zrem(self._key("active"), job_id)

    def has_live_lease(self, job_id: str) -> bool:
        return any(True for _ in self.redis.scan_iter(match=self._key("lease", job_id, "*")))

    def shared_secret(self, name: str, make: Callable[[], str]) -> str:
        """A secret every process of this deployment shares, made once by whoever comes first."""
        key = self._key("secret", name)
        self.redis.set(key, make(), nx=True)
        value = self._get(key)
        assert value is not None
        return value.decode()

    def events_channel(self, job_id: str) -> str:
        return self._key("events", job_id)

    def tenant_channel(self, tenant: str) -> str:
        """Where every change of a tenant's jobs is published: new, changed, deleted."""
        return self._key("tenant-events", tenant)


_RENEW_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def _event(job: Job, *, with_id: bool = False) -> str:
    state = {
        "status": job.status.value,
        "stage": job.stage.value if job.stage else None,
        "progress": round(job.progress, 4),
        **job.windows_state(),
    }
    return json.dumps({"id": job.id, **state} if with_id else state)


def _encode_cursor(score: float, ids: set[str]) -> str:
    raw = json.dumps({"s": score, "i": sorted(ids)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, set[str]]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        score = float(data["s"])
        if score != score:
            raise ValueError("a NaN score is no position (Redis refuses it)")
        return score, set(data["i"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput("cursor is not one this API returned", field="cursor") from exc
