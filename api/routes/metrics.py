"""GET /metrics: Prometheus metrics of the whole deployment, read from Redis."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from services.jobs.scheduler import Scheduler
from services.metrics import AdmissionDepths, RedisCollector
from services.runtime import get_redis
from services.settings import get_settings

router = APIRouter(tags=["health"])


def admission_depths() -> AdmissionDepths:
    return Scheduler(get_redis(), get_settings()).depths()


def registry(request: Request) -> CollectorRegistry:
    """The app's registry: the job store's figures, and the queues' from its dispatcher."""
    state = request.app.state
    if getattr(state, "metrics_registry", None) is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(
            RedisCollector(get_redis, state.dispatcher.depths, admission=admission_depths)
        )
        state.metrics_registry = registry
    found: CollectorRegistry = state.metrics_registry
    return found


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                     "description": "Prometheus text format"}},
)  # fmt: skip
def metrics(request: Request) -> Response:
    """Jobs by status, stage durations, queue depths, admission (waiting, released,
    capacity per pool), upstream calls, webhook deliveries."""
    return Response(generate_latest(registry(request)), media_type=CONTENT_TYPE_LATEST)
