"""HTTP/1.1 by hand over a socket, for requests no client library will send: a body
that lies about its length, a chunked body of gigabytes, a client at 1 byte/s.

    with RawRequest("127.0.0.1", port, "POST", "/v1/jobs", {"content-length": "2000000000"}) as r:
        answer = r.response(timeout=5)      # 413 before a byte of the body was sent
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool
    """The server closed the connection after this response."""


class RawRequest:
    def __init__(
        self,
        host: str,
        port: int,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        send_headers: bool = True,
    ) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        lines = [f"{method} {path} HTTP/1.1", f"host: {host}:{port}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.sent = 0
        """Body bytes the server took (into its socket buffers, at least)."""
        if send_headers:
            self.sock.sendall(self.head)

    def __enter__(self) -> RawRequest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.sock.close()

    def send(self, data: bytes) -> bool:
        """Send body bytes; False once the server stopped taking them (closed or answered)."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        self.sent += len(data)
        return True

    def send_chunk(self, data: bytes) -> bool:
        return self.send(b"%x\r\n%s\r\n" % (len(data), data))

    def stream_chunks(self, total: int, *, chunk: int = 256 * 1024, timeout: float = 60) -> int:
        """Send up to ``total`` bytes in chunks until the server stops reading; bytes sent.

        A server that answered without reading leaves our socket's send buffer full:
        a send that blocks for 2 s counts as stopped.
        """
        block = b"x" * chunk
        deadline = time.monotonic() + timeout
        self.sock.settimeout(2)
        while self.sent < total and time.monotonic() < deadline:
            if self.answered() or not self.send_chunk(block):
                break
        self.sock.settimeout(10)
        return self.sent

    def trickle(self, data: bytes, *, every_s: float, timeout: float) -> float:
        """Send ``data`` a byte at a time; seconds until the server cut us off (or ``timeout``)."""
        began = time.monotonic()
        for byte in data:
            if time.monotonic() - began > timeout or self.answered():
                break
            try:
                self.sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(every_s)
        return time.monotonic() - began

    def answered(self) -> bool:
        """Whether the server has written something (or closed) without our waiting."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(1, socket.MSG_PEEK) is not None
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            self.sock.setblocking(True)

    def response(self, timeout: float = 10) -> RawResponse:
        """Read one response (Content-Length framed) and whether the server then closed."""
        self.sock.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data:
            piece = self._recv()
            if not piece:
                raise AssertionError(f"connection closed before a response: {data!r}")
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            piece = self._recv()
            if not piece:
                break
            body += piece
        return RawResponse(int(status_line.split()[1]), headers, body[:length], self._closed())

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def _closed(self) -> bool:
        self.sock.settimeout(5)
        try:
            return self._recv() == b""
        except TimeoutError:
            return False


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def open_file_bytes(pid: int) -> int:
    """Bytes in the regular files ``pid`` holds open: its temporary files too, which
    have no name on disk (``O_TMPFILE``) and so cannot be found by listing a folder."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            stat = fd.stat()
        except OSError:
            continue
        if stat.st_mode & 0o170000 == 0o100000:
            total += stat.st_size
    return total
