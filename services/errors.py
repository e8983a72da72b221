"""Every failure vor knows, each with a stable ``code``.

``TransientError`` means "try again later"; everything else under ``VorError``
is permanent and fails the job (or the request). Only ``api/`` maps these to
HTTP status codes.
"""

from __future__ import annotations


class VorError(Exception):
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, stage: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.stage = stage

    def as_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "stage": self.stage}


class InvalidInput(VorError):
    code = "invalid_input"


class InvalidSpec(VorError):
    code = "invalid_spec"


class UnsupportedPrompt(VorError):
    code = "unsupported_prompt"


class InputTooLarge(VorError):
    code = "input_too_large"


class PayloadTooLarge(VorError):
    """The upload itself is over the configured byte limit (HTTP 413)."""

    code = "payload_too_large"


class RequestTimedOut(VorError):
    """The client sent its request too slowly (HTTP 408)."""

    code = "request_timeout"


class NotFound(VorError):
    code = "not_found"


class Conflict(VorError):
    code = "conflict"


class Unauthorized(VorError):
    code = "unauthorized"


class UrlNotAllowed(VorError):
    code = "url_not_allowed"


class StageTimedOut(VorError):
    code = "stage_timeout"


class Stale(VorError):
    """A message for a stage that is already done, or for an older generation of the job."""

    code = "stale"


class StageCrashed(VorError):
    """A stage's worker died too many times: the input is poison."""

    code = "worker_crashed"


class Canceled(VorError):
    code = "canceled"


class UpstreamError(VorError):
    """The SVOR upstream refused the work for good."""

    code = "upstream_error"


class UpstreamBadRequest(UpstreamError):
    code = "upstream_bad_request"


class UpstreamAuth(UpstreamError):
    code = "upstream_auth"


class UpstreamFailed(UpstreamError):
    code = "upstream_failed"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    """429s went on after every retry the client allows."""

    code = "upstream_rate_limited"


class UpstreamUnavailable(UpstreamError):
    """502/504, refused connections or read timeouts outlasted the client's retries."""

    code = "upstream_unavailable"


class UpstreamTooLarge(UpstreamError):
    """413: the caller should compress harder and try again."""

    code = "upstream_too_large"


class TransientError(VorError):
    """A failure worth retrying; ``retry_after`` is the earliest sensible delay."""

    code = "transient"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: str | None):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class TenantQueueFull(TransientError):
    """The tenant has as many jobs waiting as ``VOR_TENANT_MAX_QUEUED`` allows (429)."""

    code = "tenant_queue_full"


class StorageUnavailable(TransientError):
    code = "storage_unavailable"


class NotConfigured(RuntimeError):
    """The process lacks a setting it cannot run without (no Redis URL, a bad
    ``VOR_DISPATCHER``); the message says what to set."""
