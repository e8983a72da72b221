"""GET /v1/events: every change of the tenant's jobs, live, as server-sent events.

A job list (the console's, an operator's dashboard) follows this one stream
instead of polling the list or opening a stream per job.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
from fastapi import APIRouter

from api.deps import JobStoreDep, SettingsDep, TenantDep
from api.routes.events import EventStream
from api.schemas import errors
from services.runtime import redis_url

router = APIRouter(tags=["jobs"])

KEEPALIVE_S = 15.0

FEED_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`event: ready` once subscribed (read the list after it, and no change "
        "falls in between); then `event: job` with `{id, status, stage, progress}` for each "
        "new or changed job of the tenant, and `event: deleted` with `{id}`; a `: keep-alive` "
        "comment every 15 s. The stream stays open until the client leaves.",
        "content": {
            "text/event-stream": {
                "schema": {
                    "description": "one event of the stream",
                    "type": "object",
                    "required": ["event", "data"],
                    "properties": {
                        "event": {"enum": ["ready", "job", "deleted"]},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                    },
                },
            }
        },
    },
    **errors(401, 503),
}


@router.get("/v1/events", response_class=EventStream, responses=FEED_DOC)
async def tenant_events(tenant: TenantDep, store: JobStoreDep, settings: SettingsDep) -> Any:
    """Server-sent events of every new, changed or deleted job of the tenant."""
    return EventStream(
        tenant_stream(store.tenant_channel(tenant), redis_url(settings)),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def tenant_stream(
    channel: str, url: str, *, keepalive_s: float = KEEPALIVE_S
) -> AsyncIterator[str]:
    async with redis.asyncio.Redis.from_url(url) as client, client.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        await pubsub.get_message(timeout=5.0)
        yield "event: ready\ndata: {}\n\n"
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=keepalive_s)
            if message is None:
                yield ": keep-alive\n\n"
                continue
            data = json.loads(message["data"])
            if data.get("deleted"):
                yield f"event: deleted\ndata: {json.dumps({'id': data['id']})}\n\n"
            else:
                yield f"event: job\ndata: {json.dumps(data)}\n\n"
