"""The FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi

from api import errors, spec_parser
from api.limits import RequestLimits
from api.routes import batches, events, feed, files, health, jobs, metrics, probe, ui
from api.schemas import Error, JobEvent
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
        spec_parser.shutdown()

    app = FastAPI(
        lifespan=lifespan,
        title="vor",
        version="1.0",
        description="Video object removal: submit a video and what to remove; get a job id at "
        "once, a signed webhook when it is done.",
        generate_unique_id_function=lambda route: route.name,
    )
    errors.install(app)
    app.add_middleware(logs.ContextMiddleware)
    app.add_middleware(RequestLimits)
    routers = (
        jobs.router,
        batches.router,
        events.router,
        files.router,
        health.router,
        metrics.router,
        feed.router,
        probe.router,
        ui.router,
    )
    for router in routers:
        app.include_router(router)
    errors.record_routes(app, [*app.router.routes, *(r for x in routers for r in x.routes)])
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    if not get_settings().tenants_by_key():
        log.warning("VOR_API_KEYS is not set: the API accepts every request as tenant 'default'")
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema, plus the job spec that the submit body refers to.

    Without API keys (VOR_API_KEYS unset) the API asks for none, and the schema
    says so: it declares the Bearer scheme only where it is enforced.
    """
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (JobSpec, Error, JobEvent, *batches.EXTRA_SCHEMAS):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    if not get_settings().tenants_by_key():
        schema["components"].pop("securitySchemes", None)
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation.pop("security", None)
                operation.get("responses", {}).pop("401", None)
    app.openapi_schema = schema
    return schema


app = create_app()
