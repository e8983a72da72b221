"""/ui: the web console, static files shipped inside the package (no build step).

The page calls the same REST API with the same Bearer key as any client;
serving it needs no key, as it holds no data.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from services.errors import NotFound

router = APIRouter(include_in_schema=False)

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
HEADERS = {
    # Media comes from this API's signed URLs or the object store's presigned ones.
    "Content-Security-Policy": "default-src 'self'; img-src * data: blob:; "
    "media-src * blob:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@router.get("/ui")
def console_root() -> RedirectResponse:
    return RedirectResponse("ui/", status_code=307)


@router.get("/ui/")
def console() -> FileResponse:
    return asset("index.html")


@router.get("/ui/{name}")
def asset(name: str) -> FileResponse:
    """One of the console's files; nothing outside its folder."""
    path = UI_DIR / name
    media_type = MEDIA_TYPES.get(path.suffix)
    if media_type is None or "/" in name or not path.is_file():
        raise NotFound(f"the console has no file {name!r}", field="name")
    return FileResponse(path, media_type=media_type, headers=HEADERS)
