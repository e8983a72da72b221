"""``vor remove FOLDER`` and ``vor remove LIST``: many videos as one batch, one progress bar.

A batch's items are ``video_url``s that the workers fetch. A list file's lines
may be URLs, sent as they are, or local paths; a folder's videos are local
files. Local files are served to the workers for as long as the batch runs by a
small HTTP server of this command, on ``--serve-host`` (default 127.0.0.1) at a
path no one can guess: the embedded service (no ``--server``) is on this machine
and allowed to fetch from loopback; a ``--server`` elsewhere needs an address of
this machine that its workers reach and its ``VOR_ALLOWED_URL_NETWORKS`` admits,
or a list of URLs instead.
"""

from __future__ import annotations

import http.server
import json
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from services.cli.client import VorClient

VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}
LIST_SUFFIXES = {".txt", ".list", ".lst"}
ENDED = ("succeeded", "failed", "canceled")


class BatchInputError(RuntimeError):
    """The folder or list cannot be made into a batch; the message says why."""


@dataclass(frozen=True)
class Source:
    """One video of the batch: a local file, or a URL as given."""

    ref: str
    path: Path | None = None
    url: str | None = None


def is_batch_input(path: Path | None) -> bool:
    return path is not None and (path.is_dir() or path.suffix.lower() in LIST_SUFFIXES)


def sources_of(path: Path) -> list[Source]:
    """The videos of a folder (not its subfolders), or the lines of a list file."""
    if path.is_dir():
        videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        found = [Source(ref=p.name, path=p) for p in videos if p.is_file()]
    else:
        found = [_source_of_line(line, path.parent) for line in _lines(path)]
    if not found:
        raise BatchInputError(f"{path} holds no videos ({', '.join(sorted(VIDEO_SUFFIXES))})")
    return found


def _lines(path: Path) -> Iterator[str]:
    if not path.is_file():
        raise BatchInputError(f"{path} is not a file")
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            yield line.strip()


def _source_of_line(line: str, base: Path) -> Source:
    if line.startswith(("http://", "https://")):
        return Source(ref=line, url=line)
    video = (base / line).resolve() if not Path(line).is_absolute() else Path(line)
    if not video.is_file():
        raise BatchInputError(f"{line}: no such file (list lines are paths or http(s) URLs)")
    return Source(ref=line, path=video)


class _Files(http.server.ThreadingHTTPServer):
    daemon_threads = True


@contextmanager
def served(sources: list[Source], host: str) -> Iterator[dict[str, str]]:
    """Serve the local files among ``sources`` under a secret path; their URLs by ref."""
    token = secrets.token_urlsafe(16)
    files = {f"/{token}/{n}/{quote(s.path.name)}": s.path for n, s in enumerate(sources) if s.path}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = files.get(self.path)
            if path is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", "video/mp4")
            self.send_header("content-length", str(path.stat().st_size))
            self.end_headers()
            with path.open("rb") as source:
                while chunk := source.read(256 * 1024):
                    self.wfile.write(chunk)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _Files((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    by_path = {str(p): f"http://{host}:{port}{key}" for key, p in files.items()}
    try:
        yield {s.ref: by_path[str(s.path)] if s.path else str(s.url) for s in sources}
    finally:
        server.shutdown()
        server.server_close()


class BatchBar:
    """One line on stderr for the whole batch: a bar, items ended of all, the failures."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width

    def __call__(self, batch: dict[str, Any]) -> None:
        counts, total = batch["counts"], batch["total"]
        ended = sum(counts[s] for s in ENDED)
        filled = int(batch["progress"] * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(
            f"\r[{bar}] {ended}/{total} ended, {counts['running']} running, "
            f"{counts['failed']} failed  "
        )
        if batch["status"] in {"completed", "canceled"}:
            self.stream.write("\n")
        self.stream.flush()


def follow(
    client: VorClient,
    batch_id: str,
    on_update: Callable[[dict[str, Any]], None],
    *,
    poll_s: float = 0.5,
    timeout: float = 24 * 3600,
) -> dict[str, Any]:
    """Poll the batch until every item has ended; its last state."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batch(batch_id)
        on_update(batch)
        if batch["status"] in {"completed", "canceled"}:
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} still {batch['status']} at the timeout")
        time.sleep(poll_s)


def collect(client: VorClient, batch_id: str, out: Path, stream: TextIO = sys.stdout) -> int:
    """Download each succeeded item's result into ``out`` as ``<name>_removed.mp4``, write
    ``batch.json`` (every item's status and error) and name the failures; how many failed."""
    out.mkdir(parents=True, exist_ok=True)
    items, failed = client.batch_items(batch_id), 0
    for item in items:
        name = Path(item["ref"] or f"item{item['index']}").stem or f"item{item['index']}"
        if item["status"] == "succeeded":
            target = out / f"{name}_removed.mp4"
            client.download(item["result"]["video_url"], target)
            item["output"] = str(target)
            continue
        failed += 1
        error = item.get("error") or {}
        stream.write(f"{item['ref']}: {item['status']}: {error.get('message', '')}\n")
    (out / "batch.json").write_text(json.dumps({"batch": batch_id, "items": items}, indent=1))
    stream.write(f"results: {out} ({len(items) - failed} of {len(items)} succeeded)\n")
    return failed
