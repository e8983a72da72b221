"""Engines by name. Each lives in its own module and speaks ``base.Engine``."""

from __future__ import annotations

from services.engines.base import Engine
from services.settings import Settings


def get_engine(name: str, settings: Settings) -> Engine:
    if name == "local":
        from services.engines.local.engine import LocalEngine

        return LocalEngine()
    if name == "svor":
        from services.engines.svor.engine import engine_from_settings

        return engine_from_settings(settings)
    raise ValueError(f"unknown engine {name!r}")
