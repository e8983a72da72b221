"""/v1/jobs: submit, read, list, cancel and delete jobs."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from api import spec_parser
from api.deps import CurrentJob, JobStoreDep, SettingsDep, StorageDep, TenantDep
from api.schemas import JOB_ERRORS, Job, JobList, Redelivery, errors
from services import logs
from services.errors import Conflict, InvalidInput, InvalidSpec, PayloadTooLarge
from services.models import Job as StoredJob
from services.models import JobSpec, Status
from services.pipeline import cleanup_job_files, input_url, result_urls
from services.settings import Settings
from services.store import JobStore
from services.submission import Submission, submit
from workers.canvas import enqueue
from workers.celery_app import IO_QUEUE
from workers.tasks import enqueue_webhook, send_webhook

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
log = logging.getLogger("vor.api")

SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["video", "spec"],
                    "properties": {
                        "video": {"type": "string", "format": "binary"},
                        "spec": {"$ref": "#/components/schemas/JobSpec"},
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "optional: a mask video (same frame count) or image",
                        },
                    },
                },
                "encoding": {"spec": {"contentType": "application/json"}},
            },
            "application/json": {
                "schema": {"$ref": "#/components/schemas/JobSpec"},
                "example": {
                    "mode": "remove",
                    "video_url": "https://example.com/clip.mp4",
                    "classes": [{"label": "car", "boxes": [[0.1, 0.5, 0.3, 0.3]]}],
                },
            },
        },
    }
}


FORM_PARTS = {"video", "spec", "mask"}
SUBMITTED_HEADERS = {
    "Location": {"description": "the job's URL", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true` when the Idempotency-Key named an earlier job, which is returned",
        "schema": {"type": "string", "enum": ["true"]},
    },
}


def render(job: StoredJob, storage: Any, settings: Settings) -> dict[str, Any]:
    return job.public(
        result_urls(job, storage, settings.url_expiry_s),
        input_url(job, storage, settings.url_expiry_s),
    )


async def _form_spec(raw: str | None) -> JobSpec:
    if raw is None:
        raise InvalidSpec("the multipart form needs a 'spec' field with the job spec", field="spec")
    return await spec_parser.parse(raw, "spec")


def _save_upload(upload: UploadFile, folder: Path, name: str, limit: int) -> Path:
    path = folder / name
    size = 0
    with path.open("wb") as out:
        while chunk := upload.file.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"the {name} upload is over the limit of {limit} bytes", field=name
                )
            out.write(chunk)
    return path


@router.post(
    "",
    status_code=202,
    openapi_extra=SUBMIT_BODY,
    response_model=Job,
    responses={202: {"headers": SUBMITTED_HEADERS}, **errors(400, 401, 408, 409, 413, 422, 503)},
)
async def create_job(
    request: Request,
    tenant: TenantDep,
    store: JobStoreDep,
    storage: StorageDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    """Submit a job: multipart (video, spec, optional mask) or JSON with video_url."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=2, max_fields=8, max_part_size=settings.max_json_bytes)
        unknown = sorted(set(form) - FORM_PARTS)
        if unknown:
            raise InvalidInput(
                f"unknown form field {unknown[0]!r}: send video, spec and (optionally) mask",
                field=unknown[0],
            )
        spec_field = form.get("spec")
        spec = await _form_spec(spec_field if isinstance(spec_field, str) else None)
        uploads: dict[str, UploadFile] = {}
        for name in ("video", "mask"):
            part = form.get(name)
            if part is not None and not isinstance(part, UploadFile):
                raise InvalidInput(f"'{name}' must be a file part", field=name)
            if part is not None:
                uploads[name] = part
        submission = Submission(
            tenant=tenant,
            spec=spec,
            video_name=uploads["video"].filename if "video" in uploads else None,
            mask_name=uploads["mask"].filename if "mask" in uploads else None,
            idempotency_key=idempotency_key,
        )
        job, created = await run_in_threadpool(
            _submit_uploads, submission, uploads, store, storage, settings
        )
    elif content_type.startswith("application/json"):
        spec = await spec_parser.parse(await request.body(), "body")
        submission = Submission(tenant=tenant, spec=spec, idempotency_key=idempotency_key)
        job, created = await run_in_threadpool(
            submit, submission, store=store, storage=storage, settings=settings, enqueue=enqueue
        )
    else:
        raise InvalidInput(
            "send multipart/form-data (video + spec) or application/json (with video_url)",
            field="content-type",
        )
    logs.bind(job_id=job.id)
    log.info("job %s (%s, %s engine)", "accepted" if created else "replayed", job.mode, job.engine)
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(render(job, storage, settings), status_code=202, headers=headers)


def _submit_uploads(
    submission: Submission,
    uploads: dict[str, UploadFile],
    store: JobStore,
    storage: Any,
    settings: Settings,
) -> tuple[StoredJob, bool]:
    """Save the uploaded parts to a private folder, submit, and remove the folder.

    Runs in a worker thread: every file operation of a submission stays off the
    event loop, which keeps serving other requests meanwhile.
    """
    with tempfile.TemporaryDirectory(
        prefix="upload-", dir=_upload_dir(settings), ignore_cleanup_errors=True
    ) as folder:

        def save(name: str) -> Path | None:
            upload = uploads.get(name)
            if upload is None:
                return None
            return _save_upload(upload, Path(folder), name, settings.max_upload_bytes)

        return submit(
            replace(submission, video=save("video"), mask=save("mask")),
            store=store,
            storage=storage,
            settings=settings,
            enqueue=enqueue,
        )


def _upload_dir(settings: Settings) -> Path:
    path = settings.data_dir.resolve() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


@router.get("/{id}", response_model=Job, responses=JOB_ERRORS)
def get_job(job: CurrentJob, storage: StorageDep, settings: SettingsDep) -> dict[str, Any]:
    """One job: status, stage, progress, result URLs or error."""
    return render(job, storage, settings)


@router.get("", response_model=JobList, responses=errors(401, 422, 503))
def list_jobs(
    tenant: TenantDep,
    store: JobStoreDep,
    storage: StorageDep,
    settings: SettingsDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    """The tenant's jobs, newest first; pass ``next_cursor`` back as ``cursor`` for more."""
    jobs, next_cursor = store.list_jobs(tenant, status=status, limit=limit, cursor=cursor)
    return {"jobs": [render(j, storage, settings) for j in jobs], "next_cursor": next_cursor}


@router.post("/{id}/cancel", response_model=Job, responses={**JOB_ERRORS, **errors(409)})
def cancel_job(
    job: CurrentJob, store: JobStoreDep, storage: StorageDep, settings: SettingsDep
) -> dict[str, Any]:
    """Stop a queued or running job; its running stage stops at its next progress check."""
    if job.status.is_terminal():
        raise Conflict(f"job {job.id} already {job.status.value}", field="id")
    job = store.finish(job.id, Status.canceled)
    if job.status is Status.canceled:
        log.info("job canceled")
        cleanup_job_files(settings, job.id)
        enqueue_webhook(job.id, "job.canceled")
    return render(job, storage, settings)


@router.delete("/{id}", status_code=204, response_class=Response, responses=JOB_ERRORS)
def delete_job(job: CurrentJob, store: JobStoreDep, storage: StorageDep) -> Response:
    """Delete a job and every file it stored (a running job is canceled first)."""
    if not job.status.is_terminal():
        job = store.finish(job.id, Status.canceled)
    storage.delete_prefix(f"jobs/{job.id}/")
    store.delete(job)
    log.info("job deleted")
    return Response(status_code=204)


@router.post(
    "/{id}/webhooks/redeliver",
    status_code=202,
    response_model=Redelivery,
    responses={**JOB_ERRORS, **errors(409)},
)
def redeliver_webhook(job: CurrentJob) -> dict[str, Any]:
    """Send the job's terminal webhook again (after the receiver was down)."""
    if not job.status.is_terminal():
        raise Conflict(f"job {job.id} is {job.status.value}; nothing to redeliver yet", field="id")
    if not job.spec.webhook_url:
        raise Conflict(f"job {job.id} has no webhook_url", field="webhook_url")
    event = f"job.{job.status.value}"
    send_webhook.apply_async((job.id, event), queue=IO_QUEUE)
    return {"job_id": job.id, "event": event, "queued": True}
