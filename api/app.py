"""The FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi

from api import errors
from api.routes import events, feed, files, health, jobs, metrics, probe, ui
from services import logs, runtime
from services.jobs.lifecycle import Dispatcher
from services.models import JobSpec
from services.settings import get_settings

log = logging.getLogger("vor.api")


def create_app(dispatcher: Dispatcher | None = None) -> FastAPI:
    """The API; ``dispatcher`` queues jobs and webhooks (default: ``VOR_DISPATCHER``'s,
    imported when the app starts, so importing ``api`` loads no queue or pipeline)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.dispatcher = dispatcher or runtime.get_dispatcher()
        await run_in_threadpool(runtime.warm_up, app.state.dispatcher)
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="vor",
        version="1.0",
        description="Video object removal: submit a video and what to remove; get a job id at "
        "once, a signed webhook when it is done.",
    )
    errors.install(app)
    app.add_middleware(logs.ContextMiddleware)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(files.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(feed.router)
    app.include_router(probe.router)
    app.include_router(ui.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    if not get_settings().tenants_by_key():
        log.warning("VOR_API_KEYS is not set: the API accepts every request as tenant 'default'")
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema, plus the job spec that the submit body refers to."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    spec = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(spec.pop("$defs", {}))
    components["JobSpec"] = spec
    app.openapi_schema = schema
    return schema


app = create_app()
