"""Uploaded files, saved to a private folder before a submission or a probe reads them."""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import UploadFile

from services.errors import PayloadTooLarge
from services.settings import Settings


def save_upload(upload: UploadFile, folder: Path, name: str, limit: int) -> Path:
    """Copy ``upload`` to ``folder/name``, refusing it (413) once it passes ``limit`` bytes."""
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


def upload_dir(settings: Settings) -> Path:
    """Where private folders of uploads go: ``<data-dir>/uploads``."""
    path = settings.data_dir.resolve() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path
