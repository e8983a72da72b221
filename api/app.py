"""The FastAPI application."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from api import errors
from api.routes import files, health, jobs
from services.settings import get_settings

log = logging.getLogger("vor.api")


def create_app() -> FastAPI:
    app = FastAPI(
        title="vor",
        version="1.0",
        description="Video object removal: submit a video and what to remove; get a job id at "
        "once, a signed webhook when it is done.",
    )
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(files.router)
    app.include_router(health.router)
    if not get_settings().tenants_by_key():
        log.warning("VOR_API_KEYS is not set: the API accepts every request as tenant 'default'")
    return app


app = create_app()
