"""Log lines as JSON objects (or plain text), each naming the job it concerns.

A context (a ``contextvars`` variable) holds ``job_id``, ``tenant``, ``stage``
and ``task_id`` for the work under way; ``ContextFilter`` copies it onto every
record and ``JsonFormatter`` writes one object per line. The worker opens a
fresh context per Celery task (``workers/celery_app.py``), the API one per
request (``ContextMiddleware``); code inside adds what it learns with ``bind``.

``bind`` changes the current context in place rather than setting a new one:
FastAPI runs sync dependencies and routes in worker threads, each with a copy
of the request's context, and only in-place changes reach the route from its
dependencies.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

FIELDS = ("job_id", "tenant", "stage", "task_id")
JOB_FIELDS = ("job_id", "tenant", "stage")
"""Present on every line with a job id (null when not known), so log queries can rely on them."""

LogFormat = Literal["json", "text"]

_context: ContextVar[dict[str, str] | None] = ContextVar("vor_log_context", default=None)


def current() -> dict[str, str]:
    return dict(_context.get() or {})


def begin(**fields: str | None) -> None:
    """Start a fresh context (a Celery task); fields that are None are left out."""
    _context.set({k: str(v) for k, v in fields.items() if v is not None})


def end() -> None:
    _context.set(None)


def bind(**fields: str | None) -> None:
    """Add fields to the current context, in place; starts one when there is none."""
    values = {k: str(v) for k, v in fields.items() if v is not None}
    scope = _context.get()
    if scope is None:
        _context.set(values)
    else:
        scope.update(values)


@contextmanager
def context(**fields: str | None) -> Iterator[None]:
    """A nested context for a block: the outer fields plus these."""
    token = _context.set({**current(), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the context onto each record; a field given in ``extra=`` wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    found = {name: getattr(record, name, None) for name in FIELDS}
    if found["job_id"] is None:
        return {k: v for k, v in found.items() if v is not None}
    return {k: v for k, v in found.items() if v is not None or k in JOB_FIELDS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the context, and exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For people at a terminal: the usual line, then the context in brackets."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {k: v for k, v in _fields(record).items() if v is not None}
        if not fields:
            return line
        head, sep, rest = line.partition("\n")
        context = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{head} [{context}]{sep}{rest}"


def setup(
    fmt: LogFormat = "json", level: int | str = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Send every logger's records to one handler on the root logger, in ``fmt``.

    Safe to call again (Celery calls it in each prefork child): the handlers the
    root logger had are replaced, not added to.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    return handler


ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class ContextMiddleware:
    """Gives every HTTP request a log context of its own for the routes to ``bind`` into."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _context.set({})
        try:
            await self.app(scope, receive, send)
        finally:
            _context.reset(token)
