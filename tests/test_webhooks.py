"""Standard Webhooks signing, checked by the reference library; delivery to a real receiver."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.jobs.webhooks import (
    DeliveryResult,
    backoff_s,
    deliver,
    event_body,
    generate_secret,
    sign,
    webhook_id,
)
from services.netpolicy import guarded_client
from tests.support.receiver import Receiver

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8")]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with guarded_client(LOOPBACK, timeout=5) as c:
        yield c


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        yield rx


@pytest.fixture
def secret() -> str:
    return generate_secret()


def _send(client: httpx.Client, url: str, secret: str, timeout: float = 5.0) -> DeliveryResult:
    body = event_body("job.succeeded", {"id": "job_1", "status": "succeeded"})
    msg_id = webhook_id("job_1", "job.succeeded")
    return deliver(client, url, secret=secret, msg_id=msg_id, body=body, timeout=timeout)


def test_generated_secret_shape(secret: str) -> None:
    assert secret.startswith("whsec_") and len(secret) == len("whsec_") + 32
    assert generate_secret() != secret


def test_signature_verifies_with_reference_library(secret: str) -> None:
    body = event_body("job.failed", {"id": "job_9", "error": {"code": "x"}})
    now = int(time.time())
    headers = sign(secret, "msg_abc", now, body)
    assert headers["webhook-id"] == "msg_abc"
    assert headers["webhook-timestamp"] == str(now)
    assert headers["content-type"] == "application/json"
    assert Webhook(secret).verify(body, headers)["data"]["id"] == "job_9"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"job_9", b"job_8"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(body, headers)


def test_unpadded_secret_signs_like_the_reference_library() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"[:-1]
    body = b'{"a":1}'
    headers = sign(secret, "msg_1", int(time.time()), body)
    Webhook(secret).verify(body, headers)


def test_bad_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        sign("whsec_!!!", "msg_1", 0, b"{}")


def test_event_body() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    payload = json.loads(event_body("job.succeeded", {"id": "job_1"}, now=when))
    assert payload == {
        "type": "job.succeeded",
        "timestamp": "2025-01-02T03:04:05+00:00",
        "data": {"id": "job_1"},
    }


def test_webhook_id_is_stable_per_event() -> None:
    first = webhook_id("job_1", "job.succeeded")
    assert first == webhook_id("job_1", "job.succeeded") and first.startswith("msg_")
    assert first != webhook_id("job_1", "job.failed")
    assert first != webhook_id("job_2", "job.succeeded")
    assert webhook_id("job_1", "job.progress", 1) != webhook_id("job_1", "job.progress", 2)


def test_delivery_ok_and_verifiable(client: httpx.Client, receiver: Receiver, secret: str) -> None:
    result = _send(client, receiver.url, secret)
    assert result == DeliveryResult(ok=True, status_code=200)
    [request] = receiver.wait_for(1)
    assert request.method == "POST"
    event = Webhook(secret).verify(request.body, request.headers)
    assert event["type"] == "job.succeeded" and event["data"]["id"] == "job_1"


def test_server_error_is_retryable_with_the_same_id(client: httpx.Client, secret: str) -> None:
    with Receiver(fail_first=2) as rx:
        results = [_send(client, rx.url, secret) for _ in range(3)]
        requests = rx.wait_for(3)
    assert [(r.ok, r.retryable, r.status_code) for r in results] == [
        (False, True, 500),
        (False, True, 500),
        (True, False, 200),
    ]
    assert results[0].error == "receiver answered HTTP 500"
    assert len({r.headers["webhook-id"] for r in requests}) == 1


def test_gone_is_not_retried(client: httpx.Client, secret: str) -> None:
    with Receiver(status=410) as rx:
        result = _send(client, rx.url, secret)
    assert (result.ok, result.gone, result.retryable, result.status_code) == (
        False, True, False, 410,
    )  # fmt: skip


def test_timeout_is_retryable(client: httpx.Client, secret: str) -> None:
    with Receiver(delay_s=2.0) as rx:
        started = time.monotonic()
        result = _send(client, rx.url, secret, timeout=0.2)
        elapsed = time.monotonic() - started
    assert (result.ok, result.retryable, result.status_code) == (False, True, None)
    assert result.error is not None and "timed out" in result.error
    assert elapsed < 1.5


def test_redirect_is_a_failure_not_followed(
    client: httpx.Client, receiver: Receiver, secret: str
) -> None:
    with Receiver() as target:
        receiver.redirect_to = target.url
        result = _send(client, receiver.url, secret)
        assert target.requests == []
    assert (result.ok, result.retryable, result.status_code) == (False, True, 302)
    assert result.error is not None and "not followed" in result.error


def test_refused_address_is_not_retried(receiver: Receiver, secret: str) -> None:
    with guarded_client([], timeout=5) as strict:
        result = _send(strict, receiver.url, secret)
    assert (result.ok, result.retryable, result.gone) == (False, False, False)
    assert result.error is not None and "127.0.0.1" in result.error
    assert receiver.requests == []


def test_unreachable_receiver_is_retryable(client: httpx.Client, secret: str) -> None:
    with Receiver() as rx:
        url = rx.url
    result = _send(client, url, secret)
    assert (result.ok, result.retryable, result.status_code) == (False, True, None)


def test_backoff_schedule() -> None:
    assert [backoff_s(n) for n in range(1, 8)] == [5, 30, 120, 600, 1800, 3600, 3600]
    assert backoff_s(2, base=0.01) == pytest.approx(0.06)
    assert backoff_s(0) == 5
