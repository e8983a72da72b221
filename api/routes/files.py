"""Files of local (file://) storage, served under signed, expiring URLs."""

from __future__ import annotations

import mimetypes
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from api.deps import StorageDep
from services.errors import NotFound

router = APIRouter(tags=["files"])


@router.get("/v1/files/{key:path}")
def get_file(
    key: str,
    storage: StorageDep,
    expires: Annotated[int, Query()],
    sig: Annotated[str, Query(max_length=128)],
) -> FileResponse:
    """A stored file, if the URL's signature and expiry hold."""
    resolve = getattr(storage, "resolve", None)
    if resolve is None:
        raise NotFound("files are served by the object store, not by this API")
    path = resolve(key, expires, sig)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, filename=path.name)
