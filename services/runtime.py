"""The shared resources of one process: Redis, the job store, storage, secrets.

Built lazily from settings and cached, so API routes, Celery tasks and the CLI
all see the same objects; tests reset them with ``reset()``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import redis

from services.settings import Settings, get_settings
from services.store import JobStore


class NotConfigured(RuntimeError):
    pass


SERVED_FILE = "vor.json"
"""What a running ``vor serve`` writes into its data directory: its API, Redis and broker URLs."""


def served_file(data_dir: Path) -> Path:
    return data_dir.resolve() / SERVED_FILE


def served(settings: Settings) -> dict[str, str]:
    """The URLs a ``vor serve`` on ``VOR_DATA_DIR`` wrote down; empty when none runs there.

    This is how a process started by hand (``celery -A workers.celery_app inspect
    ping``, Flower, one more ``vor worker``) finds the embedded Redis, whose port
    is picked at random.
    """
    try:
        data = json.loads(served_file(settings.data_dir).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


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
def resolved_settings() -> Settings:
    """Settings with the webhook secret filled in: configured, or shared through Redis."""
    settings = get_settings()
    if settings.webhook_secret:
        return settings
    from services.webhooks import generate_secret

    secret = get_store().shared_secret("webhook", generate_secret)
    return settings.model_copy(update={"webhook_secret": secret})


@lru_cache
def get_storage():
    from services.storage import storage_from_settings

    return storage_from_settings(resolved_settings())


def reset() -> None:
    for cached in (
        get_redis,
        get_broker_redis,
        get_store,
        resolved_settings,
        get_storage,
        get_settings,
    ):
        cached.cache_clear()
