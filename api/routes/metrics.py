"""GET /metrics: Prometheus metrics of the whole deployment, read from Redis."""

from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.metrics import RedisCollector
from services.runtime import get_broker_redis, get_redis

router = APIRouter(tags=["health"])


@lru_cache
def registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(get_redis, get_broker_redis))
    return registry


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                     "description": "Prometheus text format"}},
)  # fmt: skip
def metrics() -> Response:
    """Jobs by status, stage durations, queue depths, upstream calls, webhook deliveries."""
    return Response(generate_latest(registry()), media_type=CONTENT_TYPE_LATEST)
