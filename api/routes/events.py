"""GET /v1/jobs/{id}/events: follow a job live, as server-sent events."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.deps import CurrentJob, JobStoreDep, SettingsDep
from api.schemas import JOB_ERRORS
from services.jobs.store import JobStore
from services.models import Job, Status
from services.runtime import redis_url

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

KEEPALIVE_S = 15.0
RECHECK_S = 5.0
"""``wait_for_end`` reads the job again at least this often."""
RANK = {Status.queued: 0, Status.running: 1}
"""Statuses only move forward: queued, running, then one terminal status (rank 2)."""


class EventStream(StreamingResponse):
    media_type = "text/event-stream"


EVENTS_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`event: job` with `{id, status, stage, progress}` as data: the state "
        "at once, then each change; a `: keep-alive` comment every 15 s; the stream ends "
        "after a terminal status.",
        "content": {
            "text/event-stream": {
                "schema": {
                    "description": "one event of the stream",
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {
                        "event": {"const": "job"},
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/JobEvent"},
                        },
                    },
                },
                "example": 'event: job\ndata: {"id": "job_3f2a9c0d1e4b5a6f7c8d", '
                '"status": "running", "stage": "erase", "progress": 0.62}\n\n',
            }
        },
    },
    **JOB_ERRORS,
}


@router.get("/{id}/events", response_class=EventStream, responses=EVENTS_DOC)
async def job_events(job: CurrentJob, store: JobStoreDep, settings: SettingsDep) -> Any:
    """Server-sent events of the job's status, stage and progress, until it ends."""
    return EventStream(
        job_stream(store, job.id, redis_url(settings)),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def job_stream(
    store: JobStore, job_id: str, url: str, *, keepalive_s: float = KEEPALIVE_S
) -> AsyncIterator[str]:
    """The job's state, then every change published on its channel, until a terminal status.

    It subscribes before it reads the state, so no change falls in between; a
    change that arrives out of order (older than what was sent) is dropped. At
    each keep-alive the job is read again, which makes up for a lost message and
    ends the stream when the job was deleted.
    """
    async with redis.asyncio.Redis.from_url(url) as client, client.pubsub() as pubsub:
        await pubsub.subscribe(store.events_channel(job_id))
        await pubsub.get_message(timeout=5.0)
        job = await run_in_threadpool(store.get, job_id)
        if job is None:
            return
        last = state_of(job)
        yield event(job_id, last)
        sent_at = time.monotonic()
        while not Status(last["status"]).is_terminal():
            wait = max(0.0, keepalive_s - (time.monotonic() - sent_at))
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            if message is not None:
                state = json.loads(message["data"])
            elif time.monotonic() - sent_at >= keepalive_s:
                yield ": keep-alive\n\n"
                sent_at = time.monotonic()
                job = await run_in_threadpool(store.get, job_id)
                if job is None:
                    return
                state = state_of(job)
            else:
                continue
            if is_newer(state, last):
                last = state
                yield event(job_id, state)
                sent_at = time.monotonic()


async def wait_for_end(store: JobStore, job_id: str, url: str, seconds: float) -> Job | None:
    """The job once it has ended, if it ends within ``seconds``; else None.

    Waits on the job's events channel (no thread is held meanwhile), subscribed
    before the first read so no ending falls in between; the job is read again
    on each terminal event and every few seconds, which makes up for a lost message.
    """
    deadline = time.monotonic() + seconds
    async with redis.asyncio.Redis.from_url(url) as client, client.pubsub() as pubsub:
        await pubsub.subscribe(store.events_channel(job_id))
        await pubsub.get_message(timeout=5.0)
        while True:
            job = await run_in_threadpool(store.get, job_id)
            if job is None or job.status.is_terminal():
                return job
            while (left := deadline - time.monotonic()) > 0:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=min(left, RECHECK_S)
                )
                if message is None or Status(json.loads(message["data"])["status"]).is_terminal():
                    break
            if left <= 0:
                return None


def state_of(job: Job) -> dict[str, Any]:
    return {
        "status": job.status.value,
        "stage": job.stage.value if job.stage else None,
        "progress": round(job.progress, 4),
        **job.windows_state(),
    }


def is_newer(state: dict[str, Any], last: dict[str, Any]) -> bool:
    """A change worth sending: not the same, and not behind in status or progress."""
    if state == last:
        return False
    rank, last_rank = RANK.get(Status(state["status"]), 2), RANK.get(Status(last["status"]), 2)
    if rank != last_rank:
        return rank > last_rank
    return bool(state["progress"] >= last["progress"])


def event(job_id: str, state: dict[str, Any]) -> str:
    return f"event: job\ndata: {json.dumps({'id': job_id, **state})}\n\n"
