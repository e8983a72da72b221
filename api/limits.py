"""What a client may send, and how slowly: the API's bounds on requests.

- A body over its limit is refused with 413: at once when its declared
  ``Content-Length`` is over (nothing of it is read), and as soon as the bytes
  received pass the limit when it comes chunked or lies about its length. A
  multipart submission may hold ``VOR_MAX_UPLOAD_BYTES`` of files plus
  ``VOR_MAX_JSON_BYTES`` for the spec, a batch ``VOR_MAX_BATCH_BYTES``; any
  other body ``VOR_MAX_JSON_BYTES``.
- A body must bring ``MIN_PROGRESS_BYTES`` (or its end) within every
  ``VOR_BODY_IDLE_TIMEOUT_S``: a client that stalls or trickles (a slowloris
  at 1 byte/s) gets 408.
- The request line and headers must arrive within ``VOR_HEADER_TIMEOUT_S`` of
  the connection (or of the request's first byte on a kept-alive one), else
  the connection is answered 408 and closed (``HeaderTimeoutProtocol``, uvicorn's
  own protocol with that one deadline added: uvicorn has none).

A response that leaves part of the body unread closes the connection, so the
rest is never read either.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.errors import error_body
from services.errors import PayloadTooLarge, RequestTimedOut
from services.settings import Settings, get_settings

MIN_PROGRESS_BYTES = 64 * 1024
MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Room for a multipart form's boundaries and part headers."""
UPLOAD_PATHS = {"/v1/jobs", "/v1/probe"}
"""Where a multipart body may carry a video."""
BATCH_PATH = "/v1/batches"
"""Where a JSON body may hold ``VOR_MAX_BATCH_BYTES``."""


def body_limit(scope: Scope, settings: Settings) -> int:
    """The most bytes this request's body may hold."""
    if scope["method"] == "POST" and scope["path"].rstrip("/") == BATCH_PATH:
        return settings.max_batch_bytes
    if scope["method"] == "POST" and scope["path"].rstrip("/") in UPLOAD_PATHS:
        content_type = _header(scope, b"content-type") or ""
        if content_type.lower().startswith("multipart/form-data"):
            return settings.max_upload_bytes + settings.max_json_bytes + MULTIPART_OVERHEAD_BYTES
    return settings.max_json_bytes


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class BodyReader:
    """The app's ``receive``, counting bytes against the limit and the progress deadline."""

    def __init__(self, receive: Receive, *, limit: int, idle_s: float) -> None:
        self._receive = receive
        self.limit = limit
        self.idle_s = idle_s
        self.received = 0
        self.complete = False
        self._window_start = time.monotonic()
        self._window_bytes = 0

    async def __call__(self) -> Message:
        if self.complete:
            # The body is in; what is left to receive is the disconnect, which a
            # streaming response (server-sent events) waits for as long as it runs.
            return await self._receive()
        remaining = self._window_start + self.idle_s - time.monotonic()
        try:
            message = await asyncio.wait_for(self._receive(), timeout=max(remaining, 0.001))
        except TimeoutError:
            raise RequestTimedOut(
                f"the request body did not bring {MIN_PROGRESS_BYTES} bytes within "
                f"{self.idle_s:g} s; send it faster",
                field="body",
            ) from None
        if message["type"] != "http.request":
            return message
        size = len(message.get("body", b""))
        self.received += size
        if self.received > self.limit:
            raise PayloadTooLarge(
                f"the request body is over the limit of {self.limit} bytes", field="body"
            )
        self._window_bytes += size
        if self._window_bytes >= MIN_PROGRESS_BYTES:
            self._window_start, self._window_bytes = time.monotonic(), 0
        if not message.get("more_body", False):
            self.complete = True
        return message


class RequestLimits:
    """ASGI middleware: the body limits and the body's progress deadline."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Callable[[], Settings] = get_settings,
    ) -> None:
        self.app = app
        self._settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self._settings()
        limit = body_limit(scope, settings)
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            message = f"the request body declares {declared} bytes; the limit is {limit}"
            await _refuse(send, 413, "payload_too_large", message)
            return
        reader = BodyReader(receive, limit=limit, idle_s=settings.body_idle_timeout_s)
        bodyless = declared == 0 or (declared is None and not _header(scope, b"transfer-encoding"))

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and not (reader.complete or bodyless):
                message = {**message, "headers": [*message.get("headers", ()), *CLOSE]}
            await send(message)

        await self.app(scope, reader, send_closing)


CLOSE = [(b"connection", b"close")]


async def _refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(code, message, "body")).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *CLOSE],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on a request's line and headers.

    The deadline runs from the connection, or from a kept-alive connection's
    next request's first byte; uvicorn's keep-alive timeout covers the wait
    before it. Selected with ``uvicorn.run(http="api.limits:HeaderTimeoutProtocol")``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s = get_settings().header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self._header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            self.transport.close()
