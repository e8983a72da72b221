"""/v1/batches: submit many items at once, follow them, cancel them."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api import spec_parser
from api.deps import BatchesDep, CurrentBatch, TenantDep
from api.schemas import Batch, errors
from services import logs
from services.errors import InvalidInput
from services.jobs.batch_spec import MAX_ITEMS, BatchItem, BatchRequest
from services.jobs.batches import MAX_PAGE
from services.models import URL_PATTERN

router = APIRouter(prefix="/v1/batches", tags=["batches"])
log = logging.getLogger("vor.api")

ITEM_SCHEMA: dict[str, Any] = {
    "description": "an item, as `BatchItem` describes it; an item that is not one is still "
    "accepted and fails alone, its error naming its field (`items[3].video_url`)",
    "anyOf": [{"$ref": "#/components/schemas/BatchItem"}, {}],
}
SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["items"],
                    "properties": {
                        "spec": {
                            "type": "object",
                            "description": BatchRequest.model_fields["spec"].description,
                        },
                        "items": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_ITEMS,
                            "items": ITEM_SCHEMA,
                        },
                        "webhook_url": {
                            "anyOf": [
                                {
                                    "type": "string",
                                    "maxLength": 2048,
                                    "pattern": f"^{URL_PATTERN.pattern}$",
                                },
                                {"type": "null"},
                            ],
                            "description": "where `batch.completed` is sent",
                        },
                        "webhook_events": {
                            "type": "array",
                            "items": {"type": "string", "enum": ["batch.completed"]},
                        },
                    },
                },
                "example": {
                    "spec": {
                        "mode": "remove",
                        "classes": [{"label": "logo", "boxes": [[0.8, 0.05, 0.15, 0.1]]}],
                    },
                    "items": [
                        {"video_url": "https://example.com/clips/0001.mp4", "ref": "0001"},
                        {
                            "video_url": "https://example.com/clips/0002.mp4",
                            "spec": {"options": {"mask_dilation": 8}},
                        },
                    ],
                    "webhook_url": "https://example.com/hooks/vor",
                },  # fmt: skip
            }
        },
    }
}
SUBMITTED_HEADERS = {
    "Location": {"description": "the batch's URL", "schema": {"type": "string"}},
    "Idempotent-Replayed": {
        "description": "`true` when the Idempotency-Key named an earlier batch, which is returned",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
BATCH_ERRORS = errors(401, 404, 422, 503)
EXTRA_SCHEMAS = (BatchItem,)
"""Models the submit body refers to, added to the components by ``api.app``."""


@router.post(
    "",
    status_code=202,
    openapi_extra=SUBMIT_BODY,
    response_model=Batch,
    responses={202: {"headers": SUBMITTED_HEADERS}, **errors(401, 408, 409, 413, 422, 503)},
)
async def create_batch(
    request: Request,
    tenant: TenantDep,
    batches: BatchesDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JSONResponse:
    """Submit up to 10,000 items; they are checked and queued in the background."""
    if not request.headers.get("content-type", "").lower().startswith("application/json"):
        raise InvalidInput("send the batch as application/json", field="content-type")
    batch = await spec_parser.parse_batch_request(await request.body())
    record, created = await run_in_threadpool(batches.submit, tenant, batch, idempotency_key)
    logs.bind(batch_id=record.id)
    log.info("batch %s (%d items)", "accepted" if created else "replayed", record.total)
    headers = {"Location": f"/v1/batches/{record.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    view = await run_in_threadpool(batches.view, record)
    return JSONResponse(view.model_dump(mode="json"), status_code=202, headers=headers)


@router.get("/{id}", response_model=Batch, responses=BATCH_ERRORS)
def get_batch(
    batch: CurrentBatch,
    batches: BatchesDep,
    offset: Annotated[int, Query(ge=0, le=MAX_ITEMS)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> dict[str, Any]:
    """Counts by status, progress, and one page of items (``offset``, ``limit``)."""
    return batches.view(batch, offset=offset, limit=limit).model_dump(mode="json")


@router.post("/{id}/cancel", response_model=Batch, responses={**BATCH_ERRORS, **errors(409)})
def cancel_batch(batch: CurrentBatch, batches: BatchesDep) -> dict[str, Any]:
    """Cancel every item that has not ended (those not yet queued included)."""
    return batches.cancel(batch).model_dump(mode="json")
