"""Where inputs, masks and results live: a local directory or an S3 bucket.

``VOR_STORAGE_URL`` picks one: ``file:///abs/path`` (files served by the API
under signed, expiring URLs) or ``s3://bucket/prefix`` (presigned URLs). Keys
are relative paths such as ``jobs/job_x/result.mp4``, checked the same way by
both, so a key that works on one machine works on a cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import mimetypes
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

import boto3
from boto3.exceptions import Boto3Error, S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from services.errors import InvalidInput, NotFound, StorageUnavailable, Unauthorized, VorError
from services.settings import Settings

MAX_PRESIGN_S = 7 * 24 * 3600
"""SigV4 presigned URLs live at most 7 days."""

MAX_EXPIRES = 253_402_300_799
"""The last second of 9999: a link's expiry beyond it is not a time (nor one vor signs)."""

_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9._\-]*"
_KEY = re.compile(rf"{_SEGMENT}(/{_SEGMENT})*")
_MAX_KEY = 512
_SIGNING_LABEL = b"vor/file-url-signing/v1"


class Storage(Protocol):
    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None: ...

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    def get_file(self, key: str, dest: Path) -> Path: ...

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; how many went."""
        ...

    def url(self, key: str, *, expires_s: int | None = None, filename: str | None = None) -> str:
        """A URL a client can GET without credentials, until it expires."""
        ...

    def ping(self) -> None:
        """Raise ``StorageUnavailable`` unless the store can be used now."""
        ...


def validate_key(key: str) -> str:
    """``key`` if it is a safe relative path (no ``..``, no leading ``/`` or ``.``)."""
    if len(key) > _MAX_KEY or not _KEY.fullmatch(key):
        raise InvalidInput(
            f"storage key {key[:80]!r} is not valid: use '/'-separated names of letters, "
            "digits, '.', '_' and '-', none starting with '.'"
        )
    return key


def validate_prefix(prefix: str) -> str:
    """A non-empty key prefix; a trailing ``/`` is kept (it means "this folder")."""
    body = prefix[:-1] if prefix.endswith("/") else prefix
    validate_key(body)
    return prefix


def safe_filename(filename: str) -> str:
    """``filename`` with anything but letters, digits, ``.``, ``_`` and ``-`` made ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9._\-]", "_", filename).lstrip(".")
    return cleaned[:200] or "download"


def content_disposition(filename: str) -> str:
    return f'attachment; filename="{safe_filename(filename)}"'


def guess_content_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


class UrlSigner:
    """HMAC-SHA256 over a key and its expiry, so a signature fits one file until one time."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("a URL signing secret must not be empty")
        self._secret = secret

    def sign(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def matches(self, key: str, expires: int, sig: str) -> bool:
        expected = self.sign(key, expires).encode()
        return hmac.compare_digest(expected, sig.encode("utf-8", "replace"))

    def verify(self, key: str, expires: int, sig: str, now: float | None = None) -> bool:
        current = time.time() if now is None else now
        return self.matches(key, expires, sig) and expires >= current


class FileStorage:
    """Objects as files under ``root``. Content types are not kept: whoever serves a
    file guesses it from the key's extension, as ``guess_content_type`` does."""

    def __init__(
        self,
        root: Path,
        signer: UrlSigner,
        public_url: str,
        *,
        default_expiry_s: int = MAX_PRESIGN_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root.resolve()
        self.signer = signer
        self.public_url = public_url.rstrip("/")
        self.default_expiry_s = default_expiry_s
        self._clock = clock

    def path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        with path.open("rb") as source:
            self._write(key, lambda out: shutil.copyfileobj(source, out, 1024 * 1024))

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._write(key, lambda out: out.write(data))

    def _write(self, key: str, write: Callable[[IO[bytes]], object]) -> None:
        """Write to a hidden temporary file beside the target, then rename it into place,
        so a reader sees the old file or the whole new one, never a part."""
        target = self.path(key)
        with _local_errors(f"writing {key}"):
            target.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(target, write)

    def get_file(self, key: str, dest: Path) -> Path:
        source = self.path(key)
        try:
            handle = source.open("rb")
        except FileNotFoundError as exc:
            raise NotFound(f"no stored file {key!r}") from exc
        with handle, _local_errors(f"reading {key}"):
            _atomic_write(dest, lambda out: shutil.copyfileobj(handle, out, 1024 * 1024))
        return dest

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete_prefix(self, prefix: str) -> int:
        prefix = validate_prefix(prefix)
        parent = prefix.rpartition("/")[0]
        base = self.root / parent if parent else self.root
        if not base.is_dir():
            return 0
        removed = 0
        with _local_errors(f"deleting {prefix}"):
            for entry in base.iterdir():
                if not entry.relative_to(self.root).as_posix().startswith(prefix):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    removed += sum(
                        1 for p in entry.rglob("*") if p.is_file() and not p.name.startswith(".")
                    )
                    shutil.rmtree(entry)
                else:
                    removed += not entry.name.startswith(".")
                    entry.unlink(missing_ok=True)
            if prefix.endswith("/") and base != self.root:
                with contextlib.suppress(OSError):
                    base.rmdir()
        return removed

    def url(self, key: str, *, expires_s: int | None = None, filename: str | None = None) -> str:
        """``{public_url}/v1/files/{key}?expires=&sig=``, for the API to check with ``resolve``.

        ``filename`` (a download name for ``Content-Disposition``) rides along
        unsigned: it changes nothing but the name the client saves under.
        """
        validate_key(key)
        expires = int(self._clock()) + (expires_s or self.default_expiry_s)
        query: dict[str, str | int] = {"expires": expires, "sig": self.signer.sign(key, expires)}
        if filename:
            query["filename"] = safe_filename(filename)
        return f"{self.public_url}/v1/files/{quote(key)}?{urlencode(query)}"

    def resolve(self, key: str, expires: int, sig: str) -> Path:
        """The file a signed URL names, once its signature and expiry check out."""
        if not 0 <= expires <= MAX_EXPIRES:
            raise Unauthorized("this file link's expiry is not a time vor signs")
        if not self.signer.matches(key, expires, sig):
            raise Unauthorized("this file link's signature is not valid for this file")
        if expires < self._clock():
            when = datetime.fromtimestamp(expires, UTC).isoformat()
            raise Unauthorized(f"this file link expired at {when}; ask the API for a fresh one")
        path = self.path(key)
        if not path.is_file():
            raise NotFound(f"no stored file {key!r}")
        return path

    def ping(self) -> None:
        with _local_errors(f"writing to {self.root}"):
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root, prefix=".ping."):
                pass


def _atomic_write(target: Path, write: Callable[[IO[bytes]], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _local_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StorageUnavailable(f"local storage failed {what}: {exc}") from exc


_TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
    }
)
_MISSING_S3_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def _s3_error(exc: BaseException, what: str) -> VorError:
    """The vor error for a boto3/botocore failure: transient, missing, or permanent."""
    if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
        return _s3_error(exc.__context__, what)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        detail = f"{code or status}: {error.get('Message', '')}".rstrip(": ")
        if code in _MISSING_S3_CODES:
            return NotFound(f"S3 has no such object ({what})")
        if status >= 500 or status == 429 or code in _TRANSIENT_S3_CODES:
            return StorageUnavailable(f"S3 is unavailable ({what}): {detail}")
        return VorError(f"S3 refused {what}: {detail}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return VorError(
            f"no usable AWS credentials for {what}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, a profile, or an instance role"
        )
    if isinstance(exc, BotoConnectionError | HTTPClientError | Boto3Error):
        return StorageUnavailable(f"S3 could not be reached ({what}): {exc}")
    return VorError(f"S3 failed {what}: {exc}")


@contextlib.contextmanager
def _s3_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (BotoCoreError, ClientError, Boto3Error) as exc:
        raise _s3_error(exc, what) from exc


def s3_client(
    *,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    max_attempts: int = 3,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
) -> Any:
    """A boto3 S3 client; credentials come from the usual AWS chain (env, profile, role).

    A custom endpoint (MinIO, R2, moto) gets path-style addressing, and
    checksums only where required, which S3-compatible stores accept.
    """
    config = Config(
        region_name=region,
        signature_version="s3v4",
        retries={"max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class S3Storage:
    """Objects in ``bucket`` under ``prefix``; downloads go straight to S3 by presigned URL."""

    def __init__(
        self, bucket: str, prefix: str, client: Any, *, default_expiry_s: int = MAX_PRESIGN_S
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.default_expiry_s = default_expiry_s

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        extra = {"ContentType": content_type or guess_content_type(key)}
        with _s3_errors(f"uploading {key}"):
            self.client.upload_file(str(path), self.bucket, self._key(key), ExtraArgs=extra)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        with _s3_errors(f"uploading {key}"):
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                ContentType=content_type or guess_content_type(key),
            )

    def get_file(self, key: str, dest: Path) -> Path:
        full = self._key(key)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        try:
            with _s3_errors(f"downloading {key}"):
                self.client.download_file(self.bucket, full, tmp)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return dest

    def exists(self, key: str) -> bool:
        try:
            with _s3_errors(f"looking up {key}"):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except NotFound:
            return False
        return True

    def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        full = self._key(prefix.rstrip("/")) + ("/" if prefix.endswith("/") else "")
        removed = 0
        with _s3_errors(f"deleting {prefix}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if not keys:
                    continue
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                )
                errors = answer.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise StorageUnavailable(
                        f"S3 kept {len(errors)} objects under {prefix!r}: "
                        f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}"
                    )
                removed += len(keys)
        return removed

    def url(self, key: str, *, expires_s: int | None = None, filename: str | None = None) -> str:
        """A presigned GET, valid ``expires_s`` (at most 7 days, SigV4's limit)."""
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        if filename:
            params["ResponseContentDisposition"] = content_disposition(filename)
        expires = min(expires_s or self.default_expiry_s, MAX_PRESIGN_S)
        with _s3_errors(f"presigning {key}"):
            url: str = self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires
            )
        return url

    def ping(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise StorageUnavailable(f"S3 bucket {self.bucket!r} is not usable: {exc}") from exc


def signing_secret(settings: Settings, webhook_secret: str | None = None) -> bytes:
    """``VOR_SIGNING_KEY``, or a key derived from the webhook secret under a fixed label
    (``webhook_secret``: the one shared through Redis when ``VOR_WEBHOOK_SECRET`` is unset).

    Every API and worker process must sign alike, so the key is never random.
    """
    if settings.signing_key:
        return settings.signing_key.encode()
    secret = webhook_secret or settings.webhook_secret
    if secret:
        return hmac.new(secret.encode(), _SIGNING_LABEL, hashlib.sha256).digest()
    raise ValueError(
        "file storage signs its download URLs: set VOR_SIGNING_KEY (or VOR_WEBHOOK_SECRET, "
        "from which a key is derived)"
    )


def storage_from_settings(settings: Settings, *, webhook_secret: str | None = None) -> Storage:
    url = settings.storage
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"VOR_STORAGE_URL {url!r}: a file URL needs an absolute path")
        return FileStorage(
            Path(parts.path),
            UrlSigner(signing_secret(settings, webhook_secret)),
            settings.public_url,
            default_expiry_s=settings.url_expiry_s,
        )
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"VOR_STORAGE_URL {url!r}: an S3 URL needs a bucket")
        client = s3_client(endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
        return S3Storage(parts.netloc, parts.path, client, default_expiry_s=settings.url_expiry_s)
    raise ValueError(
        f"VOR_STORAGE_URL {url!r} is not supported: use file:///abs/path or s3://bucket/prefix"
    )
