"""The shared resources of one process: Redis, the job store, storage, secrets.

Built lazily from settings and cached, so API routes, Celery tasks and the CLI
all see the same objects; tests reset them with ``reset()``.
"""

from __future__ import annotations

from functools import lru_cache

import redis

from services.jobs.store import JobStore
from services.settings import Settings, get_settings


class NotConfigured(RuntimeError):
    pass


def redis_url(settings: Settings | None = None) -> str:
    settings = settings or get_settings()
    if not settings.redis_url:
        raise NotConfigured(
            "VOR_REDIS_URL is not set: run `vor serve` (it starts an embedded Redis) or point "
            "VOR_REDIS_URL at a Redis server"
        )
    return settings.redis_url


def broker_url(settings: Settings | None = None) -> str:
    """The Celery broker: ``VOR_BROKER_URL``, or the job store's Redis."""
    settings = settings or get_settings()
    return settings.broker_url or redis_url(settings)


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
    from services.jobs.webhooks import generate_secret

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
