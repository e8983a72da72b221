"""Files of local (file://) storage, served under signed, expiring URLs."""

from __future__ import annotations

import mimetypes
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from api.deps import StorageDep
from api.schemas import errors
from services.errors import NotFound
from services.storage import MAX_EXPIRES

router = APIRouter(tags=["files"])

FILE_TYPES = (
    "video/mp4",
    "video/x-matroska",
    "video/webm",
    "image/png",
    "application/octet-stream",
)
"""What vor stores and serves: results, masks, previews (and, by name, anything else)."""

FILE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file; its type follows its name (video/mp4, video/x-matroska, "
        "image/png, ...).",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}} for media in FILE_TYPES
        },
    },
    **errors(401, 404, 422, 503),
}


@router.get("/v1/files/{key:path}", response_class=FileResponse, responses=FILE_DOC)
def get_file(
    key: str,
    storage: StorageDep,
    expires: Annotated[int, Query(ge=0, le=MAX_EXPIRES, description="Unix time, signed")],
    sig: Annotated[str, Query(max_length=128)],
) -> FileResponse:
    """A stored file, if the URL's signature and expiry hold."""
    resolve = getattr(storage, "resolve", None)
    if resolve is None:
        raise NotFound("files are served by the object store, not by this API")
    path = resolve(key, expires, sig)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, filename=path.name)
