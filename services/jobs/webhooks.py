"""Standard Webhooks (standardwebhooks.com): signing, one delivery attempt, backoff.

The retry loop and the attempt log live with the caller (a Celery task and the
job store); this module only knows how one attempt goes and how long to wait
before the next. Build an event's body once and resend the same bytes with the
same ``webhook-id`` on every retry, so that receivers can deduplicate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from services.errors import UrlNotAllowed

SECRET_PREFIX = "whsec_"
BACKOFF_STEPS = (1, 6, 24, 120, 360, 720)
"""Multiples of the base delay: with a 5 s base, 5 s, 30 s, 2 min, 10 min, 30 min, 1 h."""


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status_code: int | None = None
    error: str | None = None
    retryable: bool = False
    gone: bool = False
    """The receiver answered 410: send this job nothing more."""


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def _secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a webhook secret must be 'whsec_' followed by base64") from exc
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers that carry ``body``'s Standard Webhooks signature."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode("ascii"),
        "content-type": "application/json",
    }


def webhook_id(job_id: str, event: str, seq: int | str | None = None) -> str:
    """The id one event keeps across all its retries.

    ``seq`` tells apart events of one type that a job sends more than once
    (``job.progress``), which would otherwise look like duplicates.
    """
    name = f"{job_id}\n{event}" + ("" if seq is None else f"\n{seq}")
    return "msg_" + hashlib.sha256(name.encode()).hexdigest()[:26]


def event_body(
    event_type: str, job_public: dict[str, Any], *, now: datetime | None = None
) -> bytes:
    payload = {
        "type": event_type,
        "timestamp": (now or datetime.now(UTC)).isoformat(),
        "data": job_public,
    }
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


def deliver(
    client: httpx.Client,
    url: str,
    *,
    secret: str,
    msg_id: str,
    body: bytes,
    timeout: float = 15.0,
    timestamp: int | None = None,
) -> DeliveryResult:
    """One signed POST of ``body`` to ``url``; never raises for a failed delivery.

    2xx is success, 410 means the receiver wants no more, anything else
    (redirects included: they are not followed) is worth another try. An
    address the network policy refuses is not retried.
    """
    headers = sign(secret, msg_id, int(time.time()) if timestamp is None else timestamp, body)
    headers["user-agent"] = "vor-webhooks/1"
    try:
        with client.stream(
            "POST", url, content=body, headers=headers, timeout=timeout, follow_redirects=False
        ) as response:
            status = response.status_code
            location = response.headers.get("location")
    except UrlNotAllowed as exc:
        return DeliveryResult(ok=False, error=exc.message)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        return DeliveryResult(ok=False, error=f"bad webhook URL: {exc}")
    except httpx.TimeoutException as exc:
        return DeliveryResult(
            ok=False, error=f"timed out after {timeout:g}s ({exc})", retryable=True
        )
    except httpx.HTTPError as exc:
        return DeliveryResult(ok=False, error=f"{type(exc).__name__}: {exc}", retryable=True)
    if 200 <= status < 300:
        return DeliveryResult(ok=True, status_code=status)
    if status == 410:
        return DeliveryResult(
            ok=False, status_code=status, error="receiver answered 410 Gone", gone=True
        )
    if 300 <= status < 400:
        error = f"receiver answered {status} redirect to {location!r}; redirects are not followed"
    else:
        error = f"receiver answered HTTP {status}"
    return DeliveryResult(ok=False, status_code=status, error=error, retryable=True)


def backoff_s(attempt: int, *, base: float = 5.0) -> float:
    """How long to wait after failed attempt ``attempt`` (1-based) before the next."""
    step = BACKOFF_STEPS[min(max(attempt, 1), len(BACKOFF_STEPS)) - 1]
    return step * base
