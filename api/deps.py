"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services import logs
from services.errors import Unauthorized
from services.jobs.batch_store import BatchRecord
from services.jobs.batches import Batches
from services.jobs.lifecycle import Lifecycle
from services.jobs.store import JobStore
from services.models import Job
from services.runtime import get_storage, get_store
from services.settings import Settings, get_settings
from services.storage import Storage

DEFAULT_TENANT = "default"


# The dependencies a submission needs are async: run as plain functions they would
# each take a hop through the thread pool on every request. Building storage can
# reach Redis (the shared webhook secret), so until it is cached (the API builds
# it while it warms up) that first build still runs in a thread.


async def _settings() -> Settings:
    return get_settings()


async def _store() -> JobStore:
    return get_store()


async def _storage() -> Storage:
    if get_storage.cache_info().currsize:
        return get_storage()
    return await run_in_threadpool(get_storage)


SettingsDep = Annotated[Settings, Depends(_settings)]
JobStoreDep = Annotated[JobStore, Depends(_store)]
StorageDep = Annotated[Storage, Depends(_storage)]


async def _jobs(
    request: Request, store: JobStoreDep, storage: StorageDep, settings: SettingsDep
) -> Lifecycle:
    """The job service, with the ``Dispatcher`` the app was given at start-up."""
    return Lifecycle(store, storage, settings, request.app.state.dispatcher)


JobsDep = Annotated[Lifecycle, Depends(_jobs)]


BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API key from VOR_API_KEYS: `Authorization: Bearer <key>`.",
)
"""Declares the scheme in /openapi.json; vor checks the key itself, with its own errors."""


async def _tenant(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
) -> str:
    keys = settings.tenants_by_key()
    if not keys:
        logs.bind(tenant=DEFAULT_TENANT)
        return DEFAULT_TENANT
    token = credentials.credentials.strip() if credentials else ""
    if not token:
        raise Unauthorized("send 'Authorization: Bearer <api key>'", field="Authorization")
    for key, tenant in keys.items():
        if hmac.compare_digest(key.encode(), token.encode("utf-8", "replace")):
            logs.bind(tenant=tenant)
            return tenant
    raise Unauthorized("the API key is not valid", field="Authorization")


TenantDep = Annotated[str, Depends(_tenant)]


def _current_job(
    job_id: Annotated[str, Path(alias="id", max_length=64)], tenant: TenantDep, store: JobStoreDep
) -> Job:
    job = store.get_for(tenant, job_id)
    logs.bind(job_id=job.id)
    return job


CurrentJob = Annotated[Job, Depends(_current_job)]


async def _batches(jobs: JobsDep) -> Batches:
    return Batches(jobs)


BatchesDep = Annotated[Batches, Depends(_batches)]


def _current_batch(
    batch_id: Annotated[str, Path(alias="id", max_length=64)],
    tenant: TenantDep,
    batches: BatchesDep,
) -> BatchRecord:
    record = batches.store.get_for(tenant, batch_id)
    logs.bind(batch_id=record.id)
    return record


CurrentBatch = Annotated[BatchRecord, Depends(_current_batch)]
