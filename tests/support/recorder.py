"""A loopback HTTP server that records every request and relays it to a real upstream.

Put between vor's svor engine and ``vor svor-server``, it shows what vor puts
on the wire: methods, paths, headers, and the multipart form fields as any
HTTP server would parse them (Python's ``email`` parser, nothing of vor's).
"""

from __future__ import annotations

import email.parser
import email.policy
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode()


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    answer: bytes = b""
    parts: dict[str, Part] = field(default_factory=dict)


def parse_multipart(content_type: str, body: bytes) -> dict[str, Part]:
    """The parts of a multipart/form-data body, by field name."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    parts: dict[str, Part] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        parts[str(name)] = Part(
            str(name), part.get_filename(), part.get_content_type(), bytes(data or b"")
        )
    return parts


class RecordingRelay:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                relay._relay(self)

            def do_POST(self) -> None:
                relay._relay(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http = httpx.Client(timeout=60)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def to(self, method: str, path_prefix: str) -> list[Exchange]:
        with self._lock:
            return [
                e for e in self.exchanges if e.method == method and e.path.startswith(path_prefix)
            ]

    def _relay(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in handler.headers.items()}
        exchange = Exchange(handler.command, handler.path, headers, body)
        if headers.get("content-type", "").startswith("multipart/form-data"):
            exchange.parts = parse_multipart(headers["content-type"], body)
        forwarded = {k: v for k, v in headers.items() if k not in HOP_HEADERS}
        reply = self.http.request(
            handler.command, self.target + handler.path, headers=forwarded, content=body
        )
        exchange.status, exchange.answer = reply.status_code, reply.content
        with self._lock:
            self.exchanges.append(exchange)
        handler.send_response(reply.status_code)
        for key, value in reply.headers.items():
            if key.lower() not in HOP_HEADERS | {"content-encoding"}:
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(reply.content)))
        handler.end_headers()
        handler.wfile.write(reply.content)

    def __enter__(self) -> RecordingRelay:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.http.close()
