"""Engines by name. Each lives in its own package, speaks ``base.Engine`` and declares
its ``base.Capabilities`` in its package's ``capabilities`` (cheap to import: the API
checks submissions against it without loading the engine)."""

from __future__ import annotations

import redis

from services.engines import local, svor
from services.engines.base import Capabilities, Engine
from services.settings import Settings

NAMES = ("local", "svor")


def capabilities(name: str, settings: Settings) -> Capabilities:
    """What the engine called ``name`` can do."""
    if name == "local":
        return local.capabilities(settings.local_window_s)
    if name == "svor":
        return svor.capabilities(settings.svor_max_duration_s)
    raise ValueError(f"unknown engine {name!r}")


def get_engine(name: str, settings: Settings, *, redis_client: redis.Redis | None = None) -> Engine:
    """The engine as configured; ``redis_client`` carries limits shared by all workers."""
    if name == "local":
        from services.engines.local.engine import LocalEngine

        return LocalEngine(window_s=settings.local_window_s)
    if name == "svor":
        from services.engines.svor.engine import engine_from_settings

        return engine_from_settings(settings, redis_client=redis_client)
    raise ValueError(f"unknown engine {name!r}")
