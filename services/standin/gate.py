"""The gate in front of the SVOR routes: body limit, API key, injected faults, counters."""

from __future__ import annotations

import asyncio
import hmac
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse, Response

from services.engines.svor.client import ERASE_PATH, SEG_PATH
from services.standin.state import State

JSON_ENDPOINTS = frozenset(
    {"sam3_prompt_seg", "sam3_prompt_seg/status", "mieraser", "mieraser/status"}
)
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
BAD_REQUEST = "请求参数错误"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def endpoint_of(path: str) -> str:
    for base, name in ((SEG_PATH, "sam3_prompt_seg"), (ERASE_PATH, "mieraser")):
        if path == base:
            return name
        if path.startswith(base + "/status/"):
            return f"{name}/status"
    return "files" if path.startswith("/files/") else "other"


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status, headers=headers)


def _seconds(value: float) -> str:
    return str(max(1, math.ceil(value))) if value > 0 else "0"


class Gate:
    """ASGI middleware in front of the SVOR routes: body limit, auth, faults, counters.

    The body is read in full first (SVOR bodies are about 1 MB), so a 413 is
    answered after the upload like a real gateway, and the route reads it again.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], state: State):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/_") or endpoint_of(path) == "other":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_of(path)
        answered = {"status": 500}

        async def tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = message["status"]
            await send(message)

        try:
            body, size = await _read_body(receive, self.state.max_body_bytes)
            if scope["method"] == "POST":
                self.state.record_upload(endpoint, size)
            refusal = await self._refusal(scope, endpoint, size)
            if refusal is not None:
                await refusal(scope, receive, tracked)
                return
            await self.app(scope, _replay(body, receive), tracked)
        finally:
            self.state.count(endpoint, answered["status"])

    async def _refusal(self, scope: Scope, endpoint: str, size: int) -> Response | None:
        state, faults = self.state, self.state.faults
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        if faults.hang_s and state.injector.take("hang_requests", endpoint):
            await asyncio.sleep(faults.hang_s)
        if size > state.max_body_bytes:
            return error_response(413, f"request body over {state.max_body_bytes} bytes")
        if state.api_key and endpoint != "files":
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if not auth.startswith("Bearer "):
                return error_response(401, "missing Bearer token")
            given = auth.removeprefix("Bearer ").strip().encode()
            if not hmac.compare_digest(given, state.api_key.encode()):
                return error_response(403, "invalid API key")
        wait = state.injector.throttle()
        if wait is not None:
            return error_response(429, "rate limit exceeded", {"Retry-After": _seconds(wait)})
        if state.injector.dice_429() or state.injector.take("burst_429", endpoint):
            headers = (
                {} if faults.retry_after is None else {"Retry-After": f"{faults.retry_after:g}"}
            )
            return error_response(429, "too many requests (injected)", headers)
        if state.injector.take("fail_502", endpoint):
            return error_response(502, "bad gateway (injected)")
        if state.injector.take("fail_504", endpoint):
            return error_response(504, "gateway timeout (injected)")
        if endpoint in JSON_ENDPOINTS and state.injector.take("malformed_json", endpoint):
            return Response('{"code": 0, "task_id": "', media_type="application/json")
        return None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, int]:
    """The whole request body (kept up to ``limit`` bytes, the rest drained) and its size."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        if not message.get("more_body") or size > DRAIN_LIMIT_BYTES:
            break
    return b"".join(chunks), size


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def bad_request(message: str) -> JSONResponse:
    """SVOR's answer to a request it cannot take: 400 请求参数错误, and what is wrong."""
    return error_response(400, f"{BAD_REQUEST}: {message}")
