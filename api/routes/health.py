"""Liveness and readiness."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.deps import JobStoreDep, StorageDep
from api.schemas import Health, Ready

router = APIRouter(tags=["health"])
log = logging.getLogger("vor.api")


@router.get("/healthz", response_model=Health)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Ready,
    responses={503: {"model": Ready, "description": "Not ready: the failing check says what."}},
)
async def readyz(store: JobStoreDep, storage: StorageDep) -> Any:
    """Redis and storage are reachable.

    The answer needs no key, so it names what is down and nothing more: the
    address and the error (which could help an attacker map the deployment) go
    to the log.
    """
    checks: dict[str, str] = {}
    for name, ping in (("redis", store.ping), ("storage", storage.ping)):
        try:
            await run_in_threadpool(ping)
            checks[name] = "ok"
        except Exception as exc:
            log.warning("readiness: %s is unreachable: %s: %s", name, type(exc).__name__, exc)
            checks[name] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "5"},
    )
