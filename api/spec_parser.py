"""Parsing a client's spec without holding up the event loop.

A small spec parses in well under a millisecond, so it is parsed where it is.
The largest the API accepts (``VOR_MAX_JSON_BYTES``, 1 MiB of numbers) takes
50-100 ms of CPU, and a thread does not help: ``json.loads`` and pydantic's
validation hold the GIL for most of that time, so with a few such requests
in flight every other request (``/healthz`` included) waits its turn for the
GIL (``bench/front_door.py`` measured ``/healthz`` at p50 270 ms, p99 489 ms
that way, with four clients sending 1 MiB specs). A large spec is parsed in
a process of its own instead, one at a time, started at the first large spec
and niced, so that on a busy machine the event loop gets the CPU first; a
``ValidationError`` or ``InvalidSpec`` raised there comes back pickled, as if
raised here.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from typing import TypeVar

from services.errors import TransientError
from services.jobs.batch_spec import BatchRequest, parse_batch
from services.jobs.spec_json import parse_spec
from services.models import JobSpec

T = TypeVar("T")
INLINE_BYTES = 64 * 1024
"""Specs up to this size are parsed on the event loop: a few milliseconds at most."""
PARSER_NICENESS = 10
"""On a busy machine the parser yields the CPU to the API's own process."""


@lru_cache
def _pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_parser,
        initargs=(os.getpid(),),
    )


def _start_parser(api_pid: int) -> None:
    """In the parser process: yield the CPU to the API, and end with it.

    A pool's worker holds both ends of its task queue, so it never sees the API
    go; an API killed outright (SIGKILL, out of memory) would leave it waiting
    for good. A thread checks every second that the API is still its parent.
    """
    os.nice(PARSER_NICENESS)

    def watch() -> None:
        while os.getppid() == api_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="vor-parser-watch", daemon=True).start()


async def parse(raw: str | bytes, field: str) -> JobSpec:
    if len(raw) <= INLINE_BYTES:
        return parse_spec(raw, field)
    return await _in_parser(parse_spec, raw, field, field=field)


async def parse_batch_request(raw: bytes) -> BatchRequest:
    """A batch (up to ``VOR_MAX_BATCH_BYTES``), parsed as a large spec is."""
    if len(raw) <= INLINE_BYTES:
        return parse_batch(raw)
    return await _in_parser(parse_batch, raw, field="body")


async def _in_parser(parse: Callable[..., T], *args: str | bytes, field: str) -> T:
    try:
        return await asyncio.get_running_loop().run_in_executor(_pool(), parse, *args)
    except BrokenProcessPool:
        _pool.cache_clear()
        raise TransientError(
            "the spec parser stopped; send the request again", retry_after=1, field=field
        ) from None


def shutdown() -> None:
    """Stop the parser process (after the parse it may be in: at most a fraction of a
    second). Without waiting, the API could exit before the process was told to."""
    if _pool.cache_info().currsize:
        _pool().shutdown(wait=True, cancel_futures=True)
        _pool.cache_clear()
