"""What the API answers, as models, so that /openapi.json describes every answer.

The routes return these shapes (``Job.public()`` is built from ``JobView``);
the responses each route can give, error statuses included, are declared
here once and named by the routes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.jobs.batch_store import BatchView
from services.models import InputInfo, JobView, Stage, Status, WindowProgress


class Job(JobView):
    """A job: status, stage, progress, its input, and result URLs or error."""


class Batch(BatchView):
    """A batch: its status, counts of its items by status, progress, and a page of items."""


class JobList(BaseModel):
    """One page of a tenant's jobs, newest first."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[Job]
    next_cursor: str | None = Field(description="pass back as `cursor` for the next page")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(examples=["invalid_spec"], description="stable; see the README's table")
    message: str = Field(description="what went wrong and what to do")
    field: str | None = Field(description="the request field at fault, if one is")


class Error(BaseModel):
    """Every error vor answers: ``{"error": {"code", "message", "field"}}``."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class JobEvent(BaseModel):
    """The ``data`` of one server-sent ``job`` event (JSON)."""

    id: str
    status: Status
    stage: Stage | None
    progress: float = Field(ge=0.0, le=1.0)
    windows: WindowProgress | None = Field(
        default=None, description="a long video's windows done of total (svor engine)"
    )


class Redelivery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str
    event: str = Field(examples=["job.succeeded"])
    queued: bool


class Probe(BaseModel):
    """What vor reads in a video, checked as a submission would check it."""

    model_config = ConfigDict(extra="forbid")

    input: InputInfo


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    """What is down, never how to reach it: the answer needs no key."""

    status: Literal["ready", "not ready"]
    checks: dict[str, Literal["ok", "unreachable"]]


ERROR_WHEN = {
    400: "The multipart form could not be parsed.",
    401: "No API key, or one that is not valid.",
    404: "No such job or batch (or another tenant's).",
    408: "The request came too slowly (see VOR_HEADER_TIMEOUT_S, VOR_BODY_IDLE_TIMEOUT_S).",
    409: "The job or batch is not in a state that allows this (or an Idempotency-Key was "
    "reused for another request).",
    413: "The body is over VOR_MAX_UPLOAD_BYTES / VOR_MAX_JSON_BYTES / VOR_MAX_BATCH_BYTES.",
    422: "A parameter, the spec, the video or a URL is not acceptable; `field` says which.",
    429: "The tenant has as many jobs queued as VOR_TENANT_MAX_QUEUED allows; retry after "
    "`Retry-After` seconds.",
    503: "Redis or storage is unreachable for a moment; retry after `Retry-After` seconds.",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}}
WWW_AUTHENTICATE = {"WWW-Authenticate": {"schema": {"type": "string"}}}


ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of a route, each with the one error body (JSON, whatever the
    route's own media type; ``Error`` is added to the components by ``api.app``)."""
    answers: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        answer: dict[str, Any] = {"content": ERROR_CONTENT, "description": ERROR_WHEN[status]}
        if status in (429, 503):
            answer["headers"] = RETRY_AFTER
        if status == 401:
            answer["headers"] = WWW_AUTHENTICATE
        answers[status] = answer
    return answers


JOB_ERRORS = errors(401, 404, 422, 503)
"""The errors of every route under /v1/jobs/{id}."""
