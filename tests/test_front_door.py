"""The API's front door as a hostile client meets it, over raw sockets against a real
``vor api`` process: bodies over their limits (declared, chunked, lying about their
length), clients at 1 byte/s in the headers or the body, and the memory and
temporary disk the API spends refusing them.

The API here runs with 2 s timeouts (``VOR_HEADER_TIMEOUT_S``,
``VOR_BODY_IDLE_TIMEOUT_S``; 15 s and 30 s by default) and the default JSON
limit (``VOR_MAX_JSON_BYTES``, 1 MiB); uploads are limited to 5 MiB.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from bench.support.bodies import largest_spec
from bench.support.rawhttp import RawRequest, open_file_bytes, rss_kib
from services.cli.embedded import free_port
from services.cli.processes import alive, descendants
from services.media.synthetic import SyntheticClip
from tests.conftest import API_KEYS, service_env
from tests.helpers import accepted, error_of
from tests.support.processes import start_api, user_env

pytestmark = pytest.mark.timeout(120)

TIMEOUT_S = 2.0
UPLOAD_LIMIT = 5 * 1024 * 1024
JSON_LIMIT = 1024 * 1024
MULTIPART_LIMIT = UPLOAD_LIMIT + JSON_LIMIT + 64 * 1024
TWO_GB = 2 * 1024**3
AUTH = {"authorization": f"Bearer {API_KEYS['acme']}"}
BOUNDARY = "vorboundary"


@dataclass
class Api:
    url: str
    port: int
    pid: int
    log: Path
    env: dict[str, str]

    def raw(self, method: str, path: str, headers: dict[str, str], **kw: bool) -> RawRequest:
        return RawRequest("127.0.0.1", self.port, method, path, headers, **kw)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Api]:
    """``vor api`` alone (no workers), on a Redis database of this module's own."""
    base, _, db = redis_url.rpartition("/")
    own_db = f"{base}/{int(db) + 1}"
    redis.Redis.from_url(own_db).flushdb()
    folder = tmp_path_factory.mktemp("front-door")
    port, log = free_port(), folder / "api.log"
    env = service_env(own_db, "http://127.0.0.1:9", VOR_DATA_DIR=str(folder / "data"),
                      VOR_HEADER_TIMEOUT_S=str(TIMEOUT_S), VOR_BODY_IDLE_TIMEOUT_S=str(TIMEOUT_S),
                      VOR_LOG_FORMAT="text")  # fmt: skip
    proc = start_api(port, {**user_env(), **env}, log)
    yield Api(f"http://127.0.0.1:{port}", port, proc.pid, log, env)
    proc.terminate()
    proc.wait(15)


def multipart_head(spec: dict[str, object]) -> bytes:
    """A multipart form up to the start of the video part's content."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="spec"\r\n\r\n{json.dumps(spec)}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="video"; filename="v.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()


SPEC = {"classes": [{"label": "disc", "boxes": [[0.1, 0.1, 0.2, 0.2]]}]}
JSON = {"content-type": "application/json", **AUTH}
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}", **AUTH}


class Sampler:
    """The API process's resident memory and open-file bytes, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss_before = rss_kib(pid)
        self.files_before = open_file_bytes(pid)
        self.rss_peak = self.rss_before
        self.files_peak = self.files_before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.rss_peak = max(self.rss_peak, rss_kib(self.pid))
            self.files_peak = max(self.files_peak, open_file_bytes(self.pid))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def rss_grew_mib(self) -> float:
        return (self.rss_peak - self.rss_before) / 1024

    @property
    def files_grew_mib(self) -> float:
        return (self.files_peak - self.files_before) / 1024**2


@pytest.mark.parametrize(("headers", "limit"), [(JSON, JSON_LIMIT), (MULTIPART, MULTIPART_LIMIT)])
def test_a_declared_length_over_the_limit_is_refused_before_the_body(
    api: Api, headers: dict[str, str], limit: int
) -> None:
    with api.raw("POST", "/v1/jobs", {**headers, "content-length": str(TWO_GB)}) as request:
        answer = request.response(timeout=5)
        assert request.sent == 0
    assert answer.status == 413, answer
    assert answer.closed, "the connection must close: the body is not read"
    error = json.loads(answer.body)["error"]
    assert (error["code"], error["field"]) == ("payload_too_large", "body")
    assert f"declares {TWO_GB} bytes; the limit is {limit}" in error["message"]


def test_a_declared_length_at_the_limit_is_read(api: Api) -> None:
    """Just under the JSON limit: read whole, then refused for what it says (a spec of 1 MiB
    of padding in a text prompt) rather than for its size."""
    spec = {**SPEC, "video_url": "http://10.0.0.1/v.mp4"}
    body = json.dumps({**spec, "classes": [{**SPEC["classes"][0], "text": ""}]}).encode()
    body = body.replace(b'"text": ""', b'"text": "' + b"a" * (JSON_LIMIT - len(body)) + b'"')
    assert len(body) == JSON_LIMIT
    with api.raw("POST", "/v1/jobs", {**JSON, "content-length": str(len(body))}) as request:
        request.send(body)
        answer = request.response()
    assert answer.status == 422, answer
    assert json.loads(answer.body)["error"]["code"] == "url_not_allowed"


@pytest.mark.parametrize(
    ("headers", "head", "limit"),
    [(JSON, b'{"classes": [{"label": "', JSON_LIMIT),
     (MULTIPART, multipart_head(SPEC), MULTIPART_LIMIT)],
    ids=["json", "multipart"],
)  # fmt: skip
def test_a_chunked_body_is_cut_off_once_past_the_limit(
    api: Api, headers: dict[str, str], head: bytes, limit: int
) -> None:
    """2 GB offered in chunks: the API stops reading just past the limit, answers 413 and
    closes; its memory and its temporary files stay within a few MiB of the limit."""
    with Sampler(api.pid) as sampler:
        with api.raw("POST", "/v1/jobs", {**headers, "transfer-encoding": "chunked"}) as request:
            request.send_chunk(head)
            sent = request.stream_chunks(TWO_GB)
            answer = request.response()
        time.sleep(0.3)
    assert answer.status == 413, answer
    assert answer.closed
    assert json.loads(answer.body)["error"]["message"] == (
        f"the request body is over the limit of {limit} bytes"
    )
    assert sent < limit + 8 * 1024**2, f"the API took {sent} bytes of a {limit}-byte limit"
    assert sampler.rss_grew_mib < 24, f"the API grew by {sampler.rss_grew_mib:.1f} MiB"
    assert sampler.files_grew_mib < limit / 1024**2 + 2, f"{sampler.files_grew_mib:.1f} MiB"
    assert open_file_bytes(api.pid) <= sampler.files_before, "temporary files were left open"


def test_a_length_that_never_comes_times_out(api: Api) -> None:
    """Content-Length says 1000; 10 bytes come, then nothing: 408 after the idle timeout."""
    with api.raw("POST", "/v1/jobs", {**JSON, "content-length": "1000"}) as request:
        began = time.monotonic()
        request.send(b'{"mode": "')
        answer = request.response(timeout=TIMEOUT_S + 5)
        waited = time.monotonic() - began
    assert answer.status == 408, answer
    assert answer.closed
    assert json.loads(answer.body)["error"]["code"] == "request_timeout"
    assert TIMEOUT_S - 0.2 < waited < TIMEOUT_S + 3


def test_a_body_at_one_byte_per_second_is_cut_off(api: Api) -> None:
    body = json.dumps(SPEC).encode()
    with api.raw("POST", "/v1/jobs", {**JSON, "content-length": str(len(body))}) as request:
        took = request.trickle(body, every_s=1.0, timeout=TIMEOUT_S + 8)
        answer = request.response(timeout=5)
    assert answer.status == 408, answer
    assert answer.closed
    assert took < TIMEOUT_S + 3


def test_headers_at_one_byte_per_second_are_cut_off(api: Api) -> None:
    with api.raw("GET", "/v1/jobs", AUTH, send_headers=False) as request:
        took = request.trickle(request.head, every_s=1.0, timeout=TIMEOUT_S + 8)
        answer = request.response(timeout=5)
    assert answer.status == 408, answer
    assert answer.closed
    assert took < TIMEOUT_S + 3


def test_a_connection_that_sends_nothing_is_closed(api: Api) -> None:
    with api.raw("GET", "/healthz", {}, send_headers=False) as request:
        began = time.monotonic()
        answer = request.response(timeout=TIMEOUT_S + 5)
        waited = time.monotonic() - began
    assert (answer.status, answer.closed) == (408, True)
    assert waited < TIMEOUT_S + 2


def test_kept_alive_requests_are_not_cut_off(api: Api) -> None:
    """The header deadline starts afresh with each request on a kept-alive connection."""
    with httpx.Client(base_url=api.url, headers=AUTH) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(TIMEOUT_S * 0.6)
        assert client.get("/v1/jobs").status_code == 200


def test_an_event_stream_outlives_the_body_timeout(api: Api, clip: SyntheticClip) -> None:
    """Once a request's body is in, the idle timeout no longer applies: a stream that
    waits for its client's disconnect runs as long as the job does (here: queued, as
    no worker runs)."""
    with httpx.Client(base_url=api.url, headers=AUTH, timeout=30) as client:
        job = accepted(client, SPEC, clip.path)
        with api.raw("GET", f"/v1/jobs/{job['id']}/events", AUTH) as request:
            first = b""
            while b"event: job" not in first:
                first += request.sock.recv(4096)
            assert b" 200 OK" in first.split(b"\r\n")[0]
            time.sleep(TIMEOUT_S * 2)
            assert not request.answered(), "the stream was cut off"
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204


def test_the_spec_part_has_the_json_limit(api: Api, clip: SyntheticClip) -> None:
    spec = {**SPEC, "classes": [{**SPEC["classes"][0], "text": "a" * JSON_LIMIT}]}
    with httpx.Client(base_url=api.url, headers=AUTH) as client:
        response = client.post(
            "/v1/jobs",
            data={"spec": json.dumps(spec)},
            files={"video": ("v.mp4", clip.path.read_bytes(), "video/mp4")},
        )
    assert response.status_code == 400, response.text
    assert "maximum size" in error_of(response)["message"]


def test_healthz_answers_while_the_largest_spec_is_parsed(api: Api) -> None:
    """Three clients send the largest spec the API accepts (1 MiB of numbers; refused for
    its video_url only after the full parse) back to back; /healthz keeps answering at
    once. Parsed on the event loop, or in threads contending for the GIL, its median
    was 200-300 ms (``bench/front_door.py`` prints the figures)."""
    body = largest_spec(JSON_LIMIT)
    stop = threading.Event()
    statuses: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=api.url, headers=JSON, timeout=60) as client:
            while not stop.is_set():
                statuses.append(client.post("/v1/jobs", content=body).status_code)

    senders = [threading.Thread(target=send) for _ in range(3)]
    for sender in senders:
        sender.start()
    took: list[float] = []
    try:
        with httpx.Client(base_url=api.url, timeout=10) as client:
            while len(statuses) < 3:
                time.sleep(0.05)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                began = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                took.append(time.perf_counter() - began)
                time.sleep(0.02)
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    took.sort()
    assert set(statuses) == {422}, "each parsed whole, then refused for its video_url"
    median, p90 = took[len(took) // 2], took[int(len(took) * 0.9)]
    assert median < 0.05 and p90 < 0.1, (
        f"/healthz took {median * 1000:.0f} ms (p50), {p90 * 1000:.0f} ms (p90)"
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_the_spec_parser_process_ends_with_its_api(api: Api, tmp_path: Path, sig: int) -> None:
    """Stopped or killed outright, an API leaves no parser process behind."""
    port = free_port()
    proc = start_api(port, {**user_env(), **api.env}, tmp_path / "api.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=JSON) as client:
            assert client.post("/v1/jobs", content=largest_spec(JSON_LIMIT)).status_code == 422
        children = descendants(proc.pid)
        assert children, "a large spec starts the parser process"
    finally:
        proc.send_signal(sig)
        proc.wait(20)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children):
        assert time.monotonic() < deadline, [pid for pid in children if alive(pid)]
        time.sleep(0.2)


def test_no_refusal_above_crashed_anything(api: Api) -> None:
    """Every refusal in this module is a 4xx; none left a traceback in the API's log."""
    text = api.log.read_text()
    assert "Traceback" not in text and "unhandled error" not in text, text[-3000:]
