"""POST /v1/probe: what vor reads in a video, checked as a submission would check it.

Nothing is stored and nothing is queued. The console asks it about a file the
browser cannot read itself (its frame rate, or whether it is a video at all);
any client may use it to check a file before it submits a job.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import SettingsDep, TenantDep
from api.schemas import Probe, errors
from api.uploads import save_upload, upload_dir
from services.errors import InvalidInput
from services.jobs.submission import probe_upload
from services.models import InputInfo
from services.settings import Settings

router = APIRouter(tags=["jobs"])
PROBE_PARTS = {"video", "engine"}

PROBE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video"],
                    "additionalProperties": False,
                    "properties": {
                        "video": {"type": "string", "format": "binary"},
                        "engine": {
                            "type": "string",
                            "enum": ["local", "svor"],
                            "description": "check the engine's own limits too (default: "
                            "VOR_ENGINE)",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/v1/probe",
    openapi_extra=PROBE_BODY,
    response_model=Probe,
    responses=errors(400, 401, 408, 413, 422, 503),
)
async def probe_video(request: Request, _: TenantDep, settings: SettingsDep) -> dict[str, Any]:
    """Probe a video (multipart field ``video``) without submitting it: ``{"input": {...}}``."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput("send multipart/form-data with the file as 'video'", field="video")
    form = await request.form(max_files=2, max_fields=8, max_part_size=settings.max_json_bytes)
    unknown = sorted(set(form) - PROBE_PARTS)
    if unknown:
        raise InvalidInput(
            f"unknown form field {unknown[0]!r}: send video and (optionally) engine",
            field=unknown[0],
        )
    video, engine = form.get("video"), form.get("engine", settings.engine)
    if not isinstance(video, UploadFile):
        raise InvalidInput("send the file as the multipart field 'video'", field="video")
    if engine not in ("local", "svor"):
        raise InvalidInput("engine must be 'local' or 'svor'", field="engine")
    info = await run_in_threadpool(_probe, video, engine, settings)
    return {"input": info.model_dump()}


def _probe(video: UploadFile, engine: str, settings: Settings) -> InputInfo:
    with tempfile.TemporaryDirectory(
        prefix="probe-", dir=upload_dir(settings), ignore_cleanup_errors=True
    ) as folder:
        path = save_upload(video, Path(folder), "video", settings.max_upload_bytes)
        return probe_upload(path, engine, settings)
