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
from api.deps import CurrentJob, JobsDep, TenantDep
from api.routes.events import wait_for_end
from api.schemas import JOB_ERRORS, Job, JobList, Redelivery, errors
from api.uploads import save_upload, upload_dir
from services import logs
from services.errors import InvalidInput, InvalidSpec
from services.jobs.lifecycle import Lifecycle
from services.jobs.submission import Submission
from services.models import Job as StoredJob
from services.models import JobSpec, Status
from services.runtime import redis_url

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
    "Preference-Applied": {
        "description": "`wait=N` when the request's `Prefer: wait=N` was honoured",
        "schema": {"type": "string"},
    },
}
MAX_WAIT_S = 60
"""``Prefer: wait=N`` holds a submission this long at most."""
PREFER_DOC = (
    "RFC 7240: `wait=N` holds the request up to N seconds (at most 60) and answers 200 "
    "with the job if it has ended by then, else 202; other preferences are ignored"
)


def preferred_wait(prefer: str | None) -> int | None:
    """The seconds of a ``Prefer: wait=N`` (RFC 7240), capped; None when absent or invalid."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.split(";")[0].partition("=")
        if name.strip().lower() == "wait":
            value = value.strip().strip('"')
            return min(int(value), MAX_WAIT_S) if value.isascii() and value.isdigit() else None
    return None


async def _form_spec(raw: str | None) -> JobSpec:
    if raw is None:
        raise InvalidSpec("the multipart form needs a 'spec' field with the job spec", field="spec")
    return await spec_parser.parse(raw, "spec")


@router.post(
    "",
    status_code=202,
    openapi_extra=SUBMIT_BODY,
    response_model=Job,
    responses={
        200: {
            "model": Job,
            "description": "The job ended within the `Prefer: wait=N` seconds",
            "headers": SUBMITTED_HEADERS,
        },
        202: {"headers": SUBMITTED_HEADERS},
        **errors(400, 401, 408, 409, 413, 422, 429, 503),
    },
)
async def create_job(
    request: Request,
    tenant: TenantDep,
    jobs: JobsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    prefer: Annotated[str | None, Header(max_length=200, description=PREFER_DOC)] = None,
) -> JSONResponse:
    """Submit a job: multipart (video, spec, optional mask) or JSON with video_url.
    With ``Prefer: wait=N``, answer 200 with the ended job if it ends within N s."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        limit = jobs.settings.max_json_bytes
        form = await request.form(max_files=2, max_fields=8, max_part_size=limit)
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
        job, created = await run_in_threadpool(_submit_uploads, jobs, submission, uploads)
    elif content_type.startswith("application/json"):
        spec = await spec_parser.parse(await request.body(), "body")
        submission = Submission(tenant=tenant, spec=spec, idempotency_key=idempotency_key)
        job, created = await run_in_threadpool(jobs.submit, submission)
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
    wait = preferred_wait(prefer)
    if wait is None:
        return JSONResponse(jobs.view(job), status_code=202, headers=headers)
    headers["Preference-Applied"] = f"wait={wait}"
    ended = await wait_for_end(jobs.store, job.id, redis_url(jobs.settings), wait)
    if ended is None:
        return JSONResponse(jobs.view(job), status_code=202, headers=headers)
    return JSONResponse(jobs.view(ended), status_code=200, headers=headers)


def _submit_uploads(
    jobs: Lifecycle, submission: Submission, uploads: dict[str, UploadFile]
) -> tuple[StoredJob, bool]:
    """Save the uploaded parts to a private folder, submit, and remove the folder.

    Runs in a worker thread: every file operation of a submission stays off the
    event loop, which keeps serving other requests meanwhile.
    """
    settings = jobs.settings
    with tempfile.TemporaryDirectory(
        prefix="upload-", dir=upload_dir(settings), ignore_cleanup_errors=True
    ) as folder:

        def save(name: str) -> Path | None:
            upload = uploads.get(name)
            if upload is None:
                return None
            return save_upload(upload, Path(folder), name, settings.max_upload_bytes)

        return jobs.submit(replace(submission, video=save("video"), mask=save("mask")))


@router.get("/{id}", response_model=Job, responses=JOB_ERRORS)
def get_job(job: CurrentJob, jobs: JobsDep) -> dict[str, Any]:
    """One job: status, stage, progress, result URLs or error."""
    return jobs.view(job)


@router.get("", response_model=JobList, responses=errors(401, 422, 503))
def list_jobs(
    tenant: TenantDep,
    jobs: JobsDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> dict[str, Any]:
    """The tenant's jobs, newest first; pass ``next_cursor`` back as ``cursor`` for more."""
    found, next_cursor = jobs.store.list_jobs(tenant, status=status, limit=limit, cursor=cursor)
    return {"jobs": [jobs.view(job) for job in found], "next_cursor": next_cursor}


@router.post("/{id}/cancel", response_model=Job, responses={**JOB_ERRORS, **errors(409)})
def cancel_job(job: CurrentJob, jobs: JobsDep) -> dict[str, Any]:
    """Stop a queued or running job; its running stage stops at its next progress check."""
    return jobs.view(jobs.cancel(job))


@router.delete("/{id}", status_code=204, response_class=Response, responses=JOB_ERRORS)
def delete_job(job: CurrentJob, jobs: JobsDep) -> Response:
    """Delete a job and every file it stored (a running job is canceled first)."""
    jobs.delete(job)
    return Response(status_code=204)


@router.post(
    "/{id}/webhooks/redeliver",
    status_code=202,
    response_model=Redelivery,
    responses={**JOB_ERRORS, **errors(409)},
)
def redeliver_webhook(job: CurrentJob, jobs: JobsDep) -> dict[str, Any]:
    """Send the job's terminal webhook again (after the receiver was down)."""
    return {"job_id": job.id, "event": jobs.redeliver(job), "queued": True}
