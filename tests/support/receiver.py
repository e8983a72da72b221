"""A webhook receiver on loopback that records every request it gets.

    with Receiver(fail_first=2) as rx:
        deliver(client, rx.url, ...)       # answered 500, 500, then 200
        [first, *_] = rx.wait_for(1, timeout=5)

Its knobs are plain attributes, so a test may change them between requests:
``status`` (answer code once ``fail_first`` is spent), ``fail_first`` (answer
500 to that many requests first), ``delay_s`` (wait before answering, to make
the sender time out) and ``redirect_to`` (answer 302 with this ``Location``).
Given a server-side ``tls`` context it speaks HTTPS.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def host(self) -> str:
        return self.headers.get("host", "")


class Receiver:
    def __init__(
        self,
        *,
        status: int = 200,
        fail_first: int = 0,
        delay_s: float = 0.0,
        redirect_to: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.status = status
        self.fail_first = fail_first
        self.delay_s = delay_s
        self.redirect_to = redirect_to
        self.host = host
        self.requests: list[ReceivedRequest] = []
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._server = _QuietServer((host, port), _handler_for(self))
        self.scheme = "http"
        if tls is not None:
            self.scheme = "https"
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The receiver's base URL; any path under it is accepted."""
        return f"{self.scheme}://{self.host}:{self.port}/hook"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        """The first ``n`` requests, once that many arrived; AssertionError on timeout."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= n, timeout):
                raise AssertionError(
                    f"receiver got {len(self.requests)} requests in {timeout}s, expected {n}"
                )
            return self.requests[:n]

    def _record(self, request: ReceivedRequest) -> tuple[int, dict[str, str]]:
        """Store ``request`` and decide the answer: (status, extra headers)."""
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()
            count = len(self.requests)
        if count <= self.fail_first:
            return 500, {}
        if self.redirect_to is not None:
            return 302, {"Location": self.redirect_to}
        return self.status, {}

    def _pause(self) -> None:
        if self.delay_s > 0:
            self._stopping.wait(self.delay_s)


class _QuietServer(ThreadingHTTPServer):
    """Handler threads are daemons and dropped connections are not reported:
    a sender that times out and hangs up is what some tests want."""

    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def _handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            status, extra = receiver._record(
                ReceivedRequest(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    at=time.time(),
                )
            )
            receiver._pause()
            try:
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()
            except OSError:
                self.close_connection = True

        do_POST = do_GET = do_PUT = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
