"""The composition root: the shared resources of one process, built once from settings.

Redis, the job store, storage, the webhook secret and the ``Dispatcher`` are built
lazily and cached, so API routes, Celery tasks and the CLI all see the same
objects; tests reset them with ``reset()``.

This is the one place that names the queue vor runs on: ``get_dispatcher`` imports
``VOR_DISPATCHER`` (by default ``workers.dispatch:CeleryDispatcher``) by name, so
neither ``services/`` nor ``api/`` imports ``workers/``, and the API process loads
Celery only when it starts, never when ``api`` is imported.
"""

from __future__ import annotations

import importlib
import logging
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import redis

from services.errors import NotConfigured
from services.jobs.lifecycle import Dispatcher, Lifecycle
from services.jobs.store import JobStore
from services.settings import Settings, get_settings, served, served_file
from services.storage import Storage, storage_from_settings

log = logging.getLogger("vor.runtime")


def redis_url(settings: Settings | None = None) -> str:
    """The job store: ``VOR_REDIS_URL``, else the Redis of a ``vor serve`` on the data dir."""
    settings = settings or get_settings()
    url = settings.redis_url or served(settings).get("redis_url")
    if not url:
        raise NotConfigured(
            "VOR_REDIS_URL is not set and no `vor serve` runs on VOR_DATA_DIR "
            f"({served_file(settings.data_dir)} is missing): run `vor serve` (it starts an "
            "embedded Redis), set VOR_DATA_DIR to its data directory, or point VOR_REDIS_URL "
            "at a Redis server"
        )
    return url


def broker_url(settings: Settings | None = None) -> str:
    """The Celery broker: ``VOR_BROKER_URL``, the job store's Redis, or a ``vor serve``'s broker."""
    settings = settings or get_settings()
    if settings.broker_url or settings.redis_url:
        return settings.broker_url or str(settings.redis_url)
    return served(settings).get("broker_url") or redis_url(settings)


@lru_cache
def get_broker_redis() -> redis.Redis:
    return redis.Redis.from_url(broker_url(), socket_timeout=10, socket_connect_timeout=5)


@lru_cache
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(
        redis_url(), socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
    )


@lru_cache
def get_store() -> JobStore:
    return JobStore(get_redis())


@lru_cache
def webhook_secret() -> str:
    """``VOR_WEBHOOK_SECRET``, or the one every process of this deployment shares through
    Redis (made by whoever comes first)."""
    configured = get_settings().webhook_secret
    if configured:
        return configured
    from services.jobs.webhooks import generate_secret

    return get_store().shared_secret("webhook", generate_secret)


@lru_cache
def get_storage() -> Storage:
    return storage_from_settings(get_settings(), webhook_secret=webhook_secret())


@lru_cache
def get_dispatcher() -> Dispatcher:
    """The ``Dispatcher`` named by ``VOR_DISPATCHER`` (``module:factory``), imported by name."""
    path = get_settings().dispatcher
    module, _, name = path.partition(":")
    if not module or not name:
        raise NotConfigured(f"VOR_DISPATCHER {path!r} is not 'module:factory'")
    factory = getattr(importlib.import_module(module), name)
    dispatcher: Dispatcher = factory()
    return dispatcher


def lifecycle(dispatcher: Dispatcher | None = None) -> Lifecycle:
    """The job service of this process, with ``dispatcher`` (default: ``get_dispatcher()``)."""
    return Lifecycle(get_store(), get_storage(), get_settings(), dispatcher or get_dispatcher())


def warm_up(dispatcher: Dispatcher | None = None) -> None:
    """Pay at start-up for what a first submission touches: PyAV's demuxer and decoder,
    the job store's and storage's connections, the queue's producer and queues.

    Under a burst that cost would be paid by many requests at once (``bench/load.py``
    at 50 submissions/s shows it as slow submissions in the first second). A part that
    fails (Redis not up yet) is left to the first request.
    """
    began = time.perf_counter()
    steps = (
        ("media", _probe_a_clip),
        ("redis", _connect),
        ("queue", lambda: (dispatcher or get_dispatcher()).warm_up()),
    )
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - warming is best effort
            log.warning("warm-up of %s skipped: %s", name, exc)
    log.info("warmed up in %.0f ms", (time.perf_counter() - began) * 1000)


def _probe_a_clip() -> None:
    from services.media.synthetic import make_clip
    from services.media.video import probe

    with tempfile.TemporaryDirectory(prefix="vor-warm-") as folder:
        probe(make_clip(Path(folder) / "warm.mp4", frames=4).path)


def _connect() -> None:
    get_store().ping()
    get_storage()


def reset() -> None:
    for cached in (
        get_redis,
        get_broker_redis,
        get_store,
        webhook_secret,
        get_storage,
        get_dispatcher,
        get_settings,
    ):
        cached.cache_clear()
