"""Hostile requests against the real service: fuzzed specs, ids, query strings and file
links, malformed bodies, bad keys and forged links.

Whatever comes in, the API answers below 500, and every error has the body
``{"error": {"code", "message", "field"}}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.cli.embedded import EmbeddedService
from services.media.synthetic import SyntheticClip
from services.settings import Settings
from services.storage import UrlSigner, signing_secret
from tests.conftest import WEBHOOK_SECRET, api_client
from tests.helpers import accepted, error_of, wait

pytestmark = pytest.mark.timeout(180)

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

HOSTILE_STRINGS = [
    "",
    "\x00",
    "\ud800",
    "\u202e",
    "../../etc/passwd",
    "a" * 3000,
    "NaN",
    "1e309",
    "job_" + "0" * 20,
    "%00",
    "{}",
]
HOSTILE_URLS = [
    "http://[::1",
    "http://[",
    "http://[fe80::1%25eth0]/x.mp4",
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.google.internal/",
    "http://10.0.0.1/x.mp4",
    "http://0x7f000001:1/",
    "http://user:pass@[::ffff:10.0.0.1]/",
    "https://xn--/",
    "http://\u0080/",
    "http://a..b/",
    "http://%zz/",
    "http://example.com:99999/",
    "http://example.com:-1/",
    "http://" + "a" * 300 + ".com/",
    "file:///etc/passwd",
    "gopher://x/",
]

leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(HOSTILE_STRINGS)
)
anything = st.recursive(
    leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
unit = st.floats(min_value=-0.5, max_value=1.5) | leaf
url = st.sampled_from(HOSTILE_URLS) | st.builds(
    str.__add__, st.sampled_from(["http://", "https://"]), st.text(max_size=30)
)
label = st.sampled_from(["disc", "a", "b-2"]) | st.text(max_size=70) | leaf
prompt = st.fixed_dictionaries(
    {},
    optional={
        "label": label,
        "text": st.text(max_size=40) | leaf,
        "remove_prompt": st.text(max_size=40) | leaf,
        "boxes": st.lists(st.lists(unit, max_size=5), max_size=3) | anything,
        "points": st.lists(st.lists(unit, max_size=3), max_size=3) | anything,
        "point_labels": st.lists(st.integers(-1, 2) | leaf, max_size=3),
        "frame_index": st.integers(-5, 2**40) | leaf,
        "surprise": leaf,
    },
)
spec = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.sampled_from(["remove", "segment"]) | leaf,
        "engine": st.sampled_from(["local", "svor"]) | leaf,
        "classes": st.lists(prompt, max_size=3) | anything,
        "targets": st.dictionaries(label, st.lists(st.integers(-1, 300), max_size=3), max_size=2)
        | anything,
        "from_job": st.sampled_from(["job_nope", "job_" + "f" * 20]) | st.text(max_size=70) | leaf,
        "options": st.fixed_dictionaries(
            {},
            optional={
                "mask_dilation": st.integers(-2, 100) | leaf,
                "cutout": st.lists(st.integers(-1, 300), max_size=3) | leaf,
            },
        )
        | anything,
        "webhook_url": url | leaf,
        "webhook_events": st.lists(st.sampled_from(["job.succeeded", "job.nope"]), max_size=3)
        | anything,
        "video_url": url | leaf,
    },
)
job_id = st.text(max_size=80) | st.sampled_from(HOSTILE_STRINGS + ["..", ".", "%2e%2e", "a/b"])


def assert_clean(response: httpx.Response) -> None:
    """Below 500, and an error body of the one documented shape."""
    request = f"{response.request.method} {response.request.url}"
    assert response.status_code < 500, f"{request} -> {response.status_code}: {response.text[:400]}"
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, (request, body)
    error = body["error"]
    assert set(error) == {"code", "message", "field"}, (request, body)
    assert isinstance(error["code"], str) and error["code"], (request, body)
    assert isinstance(error["message"], str) and error["message"], (request, body)
    assert error["field"] is None or isinstance(error["field"], str), (request, body)


@pytest.fixture(scope="module")
def client(service: EmbeddedService) -> Iterator[httpx.Client]:
    with api_client(service, "acme") as c:
        yield c


def discard(client: httpx.Client, response: httpx.Response) -> None:
    """A fuzzed submission that was accepted is deleted at once, so no worker spends on it."""
    if response.status_code == 202:
        assert client.delete(f"/v1/jobs/{response.json()['id']}").status_code == 204


@FUZZ
@given(body=spec | anything)
def test_fuzzed_json_spec(client: httpx.Client, body: Any) -> None:
    content = json.dumps(body, allow_nan=True)
    response = client.post(
        "/v1/jobs", content=content, headers={"content-type": "application/json"}
    )
    assert_clean(response)
    discard(client, response)


@FUZZ
@given(
    body=spec | anything,
    raw=st.none() | st.text(max_size=60),
    video=st.sampled_from([b"", b"x", b"\x00\x00\x00\x18ftypisom", None, "clip"]),
)
def test_fuzzed_multipart_spec(
    client: httpx.Client, clip: SyntheticClip, body: Any, raw: str | None, video: Any
) -> None:
    data = {"spec": raw if raw is not None else json.dumps(body, allow_nan=True)}
    content = clip.path.read_bytes() if video == "clip" else video
    files = {"video": ("clip.mp4", content, "video/mp4")} if content is not None else None
    response = client.post("/v1/jobs", data=data, files=files)
    assert_clean(response)
    discard(client, response)


@FUZZ
@given(
    job=job_id,
    route=st.sampled_from(
        [("GET", ""), ("POST", "/cancel"), ("DELETE", ""), ("POST", "/webhooks/redeliver")]
    ),
)
def test_fuzzed_job_ids(client: httpx.Client, job: str, route: tuple[str, str]) -> None:
    method, tail = route
    path = quote(job.encode("utf-8", "surrogatepass"), safe="").replace(".", "%2E")
    response = client.request(method, f"/v1/jobs/{path}{tail}")
    assert_clean(response)
    assert response.status_code != 200 or job.startswith("job_")


@FUZZ
@given(
    status=st.none() | st.sampled_from(["queued", "succeeded"]) | st.text(max_size=12),
    limit=st.none() | st.integers(-5, 10**20).map(str) | st.text(max_size=6),
    cursor=st.none()
    | st.text(max_size=40)
    | anything.map(lambda v: json.dumps(v, allow_nan=True).encode().hex())
    | st.builds(
        lambda s, i: _cursor({"s": s, "i": i}),
        st.floats() | st.text(max_size=5) | leaf,
        st.lists(leaf, max_size=3) | leaf,
    ),
)
def test_fuzzed_list_query(
    client: httpx.Client, status: str | None, limit: str | None, cursor: str | None
) -> None:
    params = {k: v for k, v in {"status": status, "limit": limit, "cursor": cursor}.items() if v}
    assert_clean(client.get("/v1/jobs", params=params))


def _cursor(value: Any) -> str:
    import base64

    raw = json.dumps(value, allow_nan=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@FUZZ
@given(
    key=st.text(max_size=60) | st.sampled_from(["jobs/x/result.mp4", "../../etc/passwd", "%2e"]),
    expires=st.none() | st.integers(-(2**70), 2**70).map(str) | st.text(max_size=12),
    sig=st.none() | st.text(max_size=80) | st.sampled_from(["0" * 64, "é" * 64]),
)
def test_fuzzed_file_links(
    service: EmbeddedService, key: str, expires: str | None, sig: str | None
) -> None:
    params = {k: v for k, v in {"expires": expires, "sig": sig}.items() if v is not None}
    response = httpx.get(f"{service.url}/v1/files/{quote(key)}", params=params, timeout=30)
    assert_clean(response)
    assert response.status_code != 200


latin1 = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
).filter(lambda value: value == value.strip())


@FUZZ
@given(
    authorization=(latin1 | st.builds("Bearer {}".format, latin1)).filter(
        lambda value: value == value.strip()
    ),
    idempotency_key=st.none() | latin1 | st.just("k" * 250),
)
def test_fuzzed_headers(
    service: EmbeddedService, authorization: str, idempotency_key: str | None
) -> None:
    headers = {"Authorization": authorization.encode("latin-1")}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key.encode("latin-1")
    with httpx.Client(base_url=service.url, timeout=30) as bare:
        for response in (
            bare.get("/v1/jobs", headers=headers),
            bare.post("/v1/jobs", json={"mode": "segment"}, headers=headers),
        ):
            assert_clean(response)
            assert response.status_code == 401 or authorization.strip().endswith("key-acme")


BOUNDARY = "fuzzboundary"
MALFORMED: dict[str, tuple[str, bytes]] = {
    "multipart without boundary": ("multipart/form-data", b"--x\r\n\r\n"),
    "multipart, wrong boundary": (
        f"multipart/form-data; boundary={BOUNDARY}",
        b'--other\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{}\r\n--other--\r\n',
    ),
    "multipart cut short": (
        f"multipart/form-data; boundary={BOUNDARY}",
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n'
        "\r\nabc".encode(),
    ),
    "multipart, too many fields": (
        f"multipart/form-data; boundary={BOUNDARY}",
        b"".join(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv\r\n'.encode()
            for i in range(20)
        )
        + f"--{BOUNDARY}--\r\n".encode(),
    ),
    "multipart, spec as a file and video as text": (
        f"multipart/form-data; boundary={BOUNDARY}",
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="spec"; filename="s.json"\r\n'
            f'\r\n{{"mode": "remove"}}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; '
            f'name="video"\r\n\r\nnot a file\r\n--{BOUNDARY}--\r\n'
        ).encode(),
    ),
    "multipart, three files": (
        f"multipart/form-data; boundary={BOUNDARY}",
        b"".join(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"; filename="f{i}"\r\n'
            f"\r\nx\r\n".encode()
            for i in range(3)
        )
        + f"--{BOUNDARY}--\r\n".encode(),
    ),
    "JSON that is not UTF-8": ("application/json", b'{"mode": "\xff\xfe"}'),
    "JSON nested 100000 deep": ("application/json", b"[" * 100_000 + b"]" * 100_000),
    "JSON array": ("application/json", b"[1, 2]"),
    "JSON null": ("application/json", b"null"),
    "JSON with NaN": (
        "application/json",
        b'{"classes": [{"label": "a", "boxes": [[NaN, 0, 1, 1]]}]}',
    ),
    "JSON with Infinity": ("application/json", b'{"options": {"mask_dilation": Infinity}}'),
    "JSON with a lone surrogate": (
        "application/json",
        b'{"classes": [{"label": "a", "text": "\\ud800", "boxes": [[0.1, 0.1, 0.2, 0.2]]}],'
        b' "video_url": "http://10.0.0.1/x.mp4"}',
    ),
    "JSON, duplicate keys": ("application/json", b'{"mode": "remove", "mode": "segment"}'),
    "form-urlencoded": ("application/x-www-form-urlencoded", b"spec=%7B%7D"),
    "no content type": ("", b"{}"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_body(client: httpx.Client, name: str) -> None:
    content_type, body = MALFORMED[name]
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/jobs", content=body, headers=headers)
    assert_clean(response)
    assert 400 <= response.status_code < 500, response.text


def test_json_vor_cannot_keep_is_refused_at_parse(
    client: httpx.Client, clip: SyntheticClip
) -> None:
    """Regressions: a lone surrogate parsed, then failed to serialise in the job store (500);
    deep nesting overflowed the parser (500). Both are now a 422 naming the part."""
    surrogate = (
        b'{"mode": "segment", "classes": [{"label": "a", "text": "\\ud83d", '
        b'"boxes": [[0.1, 0.1, 0.2, 0.2]]}], "video_url": "http://127.0.0.1:9/x.mp4"}'
    )
    for body, message in [
        (surrogate, "surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"options": {"mask_dilation": NaN}}', "NaN"),
    ]:
        response = client.post(
            "/v1/jobs", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert (error_of(response)["field"], error_of(response)["code"]) == ("body", "invalid_spec")
        assert message in error_of(response)["message"]
        response = client.post(
            "/v1/jobs",
            data={"spec": body.decode()},
            files={"video": ("clip.mp4", clip.path.read_bytes(), "video/mp4")},
        )
        assert response.status_code == 422, response.text
        assert error_of(response)["field"] == "spec"
        assert message in error_of(response)["message"]


@pytest.mark.parametrize("score", [float("nan"), "NaN"])
def test_list_cursor_with_a_nan_score_is_refused(client: httpx.Client, score: object) -> None:
    """Regression: a NaN position reached Redis, which refused it (500)."""
    response = client.get("/v1/jobs", params={"cursor": _cursor({"s": score, "i": []})})
    assert response.status_code == 422, response.text
    assert error_of(response)["field"] == "cursor"


# Keys and signed links.


@pytest.fixture(scope="module")
def acme_job(service: EmbeddedService, clip: SyntheticClip) -> dict[str, Any]:
    with api_client(service, "acme") as c:
        return accepted(c, {"classes": [{"label": "disc", "boxes": [clip.box(0)]}]}, clip.path)


BAD_AUTH = [
    None,
    "Bearer",
    "Bearer nope",
    "Bearer key-acmeX",
    "Bearer key-globe",
    "Basic a2V5LWFjbWU6",
    "key-acme",
    "Token key-acme",
]


@pytest.mark.parametrize("authorization", BAD_AUTH)
def test_every_route_needs_a_valid_key(
    service: EmbeddedService, acme_job: dict[str, Any], authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    job = acme_job["id"]
    with httpx.Client(base_url=service.url, headers=headers, timeout=30) as bare:
        for method, path in [
            ("GET", "/v1/jobs"),
            ("POST", "/v1/jobs"),
            ("GET", f"/v1/jobs/{job}"),
            ("POST", f"/v1/jobs/{job}/cancel"),
            ("DELETE", f"/v1/jobs/{job}"),
            ("POST", f"/v1/jobs/{job}/webhooks/redeliver"),
        ]:
            response = bare.request(method, path)
            assert response.status_code == 401, (method, path, response.text)
            assert error_of(response)["code"] == "unauthorized"
            assert error_of(response)["field"] == "Authorization"
    with api_client(service, "acme") as owner:
        assert owner.get(f"/v1/jobs/{job}").status_code == 200


def file_link(link: str) -> tuple[str, int, str]:
    """(key, expires, sig) of a ``/v1/files/`` link."""
    parts = urlsplit(link)
    query = parse_qs(parts.query)
    return parts.path.removeprefix("/v1/files/"), int(query["expires"][0]), query["sig"][0]


def test_signed_links_cannot_be_forged_moved_or_outlived(
    service: EmbeddedService, acme_job: dict[str, Any]
) -> None:
    with api_client(service, "acme") as owner:
        job = wait(owner, acme_job["id"])
    assert job["status"] == "succeeded", job["error"]
    video_key, expires, sig = file_link(job["result"]["video_url"])
    mask_key, mask_expires, mask_sig = file_link(job["result"]["mask_url"])

    def fetch(key: str, expires: int | str, sig: str) -> httpx.Response:
        response = httpx.get(
            f"{service.url}/v1/files/{key}", params={"expires": expires, "sig": sig}, timeout=30
        )
        assert_clean(response)
        return response

    assert fetch(video_key, expires, sig).content[4:8] == b"ftyp"
    assert fetch(mask_key, mask_expires, mask_sig).status_code == 200
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    for forged in [
        (video_key, expires, flipped),
        (video_key, expires, sig.upper()),
        (video_key, expires, ""),
        (video_key, expires + 1, sig),
        (video_key, 2**62, sig),
        (mask_key, expires, sig),
        (video_key.replace("result", "input"), expires, sig),
        (f"{video_key}/../input.mp4", expires, sig),
    ]:
        response = fetch(*forged)
        assert response.status_code in (401, 404, 422), (forged, response.text)
        assert b"ftyp" not in response.content[:16]

    signer = UrlSigner(signing_secret(Settings(webhook_secret=WEBHOOK_SECRET)))
    assert signer.sign(video_key, expires) == sig, "the test signs as the service does"
    past = int(time.time()) - 60
    expired = fetch(video_key, past, signer.sign(video_key, past))
    assert expired.status_code == 401
    assert "expired" in error_of(expired)["message"]
    later = int(time.time()) + 600
    for escape in ["../../../../etc/passwd", "jobs/../../etc/passwd", "/etc/passwd"]:
        response = fetch(quote(escape, safe=""), later, signer.sign(escape, later))
        assert response.status_code in (404, 422), (escape, response.text)
        assert b"root:" not in response.content
    missing = httpx.get(f"{service.url}/v1/files/{video_key}", params={"sig": sig}, timeout=30)
    assert missing.status_code == 422 and error_of(missing)["field"] == "expires"


@pytest.mark.parametrize(
    "expires",
    ["1e30", "-1e30", "nan", "NaN", "inf", "-inf", str(10**30), str(-(10**30)), "9" * 5000, "-1",
     "253402300800", "0x10"],
)  # fmt: skip
def test_absurd_expiries_end_in_a_4xx(service: EmbeddedService, expires: str) -> None:
    """Signed as the service signs (the test knows the key), so the signature holds and
    only the expiry is absurd: past the year 9999, before 1970, or not an integer."""
    key = "jobs/job_00000000000000000000/result.mp4"
    signer = UrlSigner(signing_secret(Settings(webhook_secret=WEBHOOK_SECRET)))
    try:
        sig = signer.sign(key, int(expires))
    except ValueError:
        sig = "0" * 64
    response = httpx.get(
        f"{service.url}/v1/files/{key}", params={"expires": expires, "sig": sig}, timeout=30
    )
    assert_clean(response)
    assert response.status_code == 422, response.text
    assert error_of(response)["field"] == "expires"
