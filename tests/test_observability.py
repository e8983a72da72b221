"""What operators see: /metrics, JSON log lines, and a job's server-sent events.

One local-engine job with a webhook (whose receiver fails the first delivery)
runs through the real service while a client follows its event stream; the
tests then read what the service reported about it. The collector, the event
stream's keep-alives and the client's fallback are checked on their own, with
a real Redis.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.routes.events import is_newer, job_stream
from services import logs, metrics
from services.cli.client import VorClient
from services.cli.embedded import EmbeddedService
from services.engines.svor.client import SEG_PATH
from services.engines.svor.engine import engine_from_settings
from services.errors import UpstreamFailed
from services.jobs.store import JobStore, new_job_id
from services.media.synthetic import SyntheticClip
from services.models import Job, JobSpec, Status
from services.settings import Settings
from tests.conftest import API_KEYS, SVOR_KEY, api_client
from tests.helpers import accepted
from tests.support.receiver import Receiver
from workers import broker

pytestmark = pytest.mark.timeout(120)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
STAGES = ("compress", "segment", "mask_convert", "merge", "erase", "publish")


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def job_events(body: str) -> list[dict[str, Any]]:
    """The data of every ``event: job`` in a raw event-stream body."""
    found = []
    for block in body.split("\n\n"):
        lines = block.splitlines()
        if "event: job" in lines:
            data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
            found.append(json.loads("\n".join(data)))
    return found


@dataclass(frozen=True)
class Watched:
    job_id: str
    events: list[dict[str, Any]]
    before: Samples
    after: Samples


@pytest.fixture(scope="module")
def watched(service: EmbeddedService, clip: SyntheticClip) -> Iterator[Watched]:
    """A job with a webhook, followed over SSE from submission to its end."""
    with Receiver(fail_first=1) as receiver, api_client(service) as acme:
        before = scrape(service.url)
        spec = {"classes": [{"label": "disc", "boxes": [clip.box(0)]}], "webhook_url": receiver.url}
        job_id = accepted(acme, spec, clip.path)["id"]
        with acme.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = job_events(response.read().decode())
        receiver.wait_for(2, timeout=30)
        deadline = time.monotonic() + 15
        while True:
            after = scrape(service.url)
            delivered = value(
                after, "vor_webhook_deliveries_total", event="job.succeeded", outcome="ok"
            )
            ok_before = value(
                before, "vor_webhook_deliveries_total", event="job.succeeded", outcome="ok"
            )
            if delivered > ok_before or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        yield Watched(job_id, events, before, after)


def test_the_event_stream_follows_a_job_to_its_end_and_closes(watched: Watched) -> None:
    events = watched.events
    assert events[-1]["status"] == "succeeded" and events[-1]["progress"] == 1.0
    assert [e for e in events if e["status"] in ("succeeded", "failed", "canceled")] == events[-1:]
    assert any(e["status"] in ("queued", "running") for e in events[:-1]), events
    assert all(e["id"] == watched.job_id for e in events)
    rank = {"queued": 0, "running": 1, "succeeded": 2}
    assert [rank[e["status"]] for e in events] == sorted(rank[e["status"]] for e in events)
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)
    assert {"compress", "erase"} <= {e["stage"] for e in events}


def test_the_client_follows_the_event_stream(watched: Watched, service: EmbeddedService) -> None:
    """What ``vor remove --server`` reads: the stream's states, not polled job bodies."""
    client = VorClient(service.url, api_key=API_KEYS["acme"])
    states = list(client.follow(watched.job_id, timeout=10))
    end = {"id": watched.job_id, "status": "succeeded", "stage": None, "progress": 1.0}
    assert states == [end]


def test_metrics_count_jobs_stages_queues_and_webhooks(watched: Watched) -> None:
    before, after = watched.before, watched.after
    assert value(after, "vor_metrics_redis_up") == 1
    assert (
        value(after, "vor_jobs", status="succeeded")
        >= value(before, "vor_jobs", status="succeeded") + 1
    )
    for status in Status:
        assert ("vor_jobs", frozenset({("status", status.value)})) in after
    for stage in STAGES:
        labels = {"stage": stage, "engine": "local"}
        count = value(after, "vor_stage_duration_seconds_count", **labels)
        assert count >= value(before, "vor_stage_duration_seconds_count", **labels) + 1, stage
        assert value(after, "vor_stage_duration_seconds_sum", **labels) > 0
        assert value(after, "vor_stage_duration_seconds_bucket", le="+Inf", **labels) == count
        buckets = [
            v
            for (name, labelset), v in after.items()
            if name == "vor_stage_duration_seconds_bucket" and set(labels.items()) <= labelset
        ]
        assert buckets == sorted(buckets) and len(buckets) == len(metrics.STAGE_SECONDS.buckets) + 1
    for queue in ("cpu", "io"):
        assert ("vor_queue_depth", frozenset({("queue", queue)})) in after
    assert value(after, "vor_queue_unacked") >= 0
    for outcome in ("retry", "ok"):
        labels = {"event": "job.succeeded", "outcome": outcome}
        assert value(after, "vor_webhook_deliveries_total", **labels) >= (
            value(before, "vor_webhook_deliveries_total", **labels) + 1
        ), outcome


def test_a_jobs_log_lines_are_json_with_its_id_tenant_and_stage(
    watched: Watched, service: EmbeddedService
) -> None:
    lines = [
        line
        for path in sorted((service.data_dir / "logs").glob("*.log"))
        for line in path.read_text(errors="replace").splitlines()
        if watched.job_id in line
    ]
    entries = [json.loads(line) for line in lines]
    assert entries, "the job left no log lines"
    for entry in entries:
        assert {"ts", "level", "logger", "message"} <= set(entry), entry
        assert entry["job_id"] == watched.job_id and entry["tenant"] == "acme", entry
        assert "stage" in entry
    stages = {e["stage"] for e in entries}
    assert {*STAGES, "webhook"} <= stages, stages
    assert any(e["logger"] == "vor.api" and "accepted" in e["message"] for e in entries)


def test_another_tenant_gets_404_on_the_events_of_a_job(
    watched: Watched, globex: httpx.Client, service: EmbeddedService
) -> None:
    response = globex.get(f"/v1/jobs/{watched.job_id}/events")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    anonymous = httpx.get(f"{service.url}/v1/jobs/{watched.job_id}/events", timeout=10)
    assert anonymous.status_code == 401


def test_upstream_requests_and_retries_are_counted_by_status(
    service: EmbeddedService, svor_server: str, redis_url: str
) -> None:
    """The svor engine as workers build it, with one injected 429 before a 404."""
    before = scrape(service.url)
    settings = Settings(svor_base_url=svor_server, svor_api_key=SVOR_KEY, redis_url=redis_url)
    engine = engine_from_settings(settings, redis_client=redis.Redis.from_url(redis_url))
    faults = {"burst_429": 1, "only": "sam3_prompt_seg/status"}
    httpx.post(f"{svor_server}/_faults", json=faults).raise_for_status()
    try:
        with pytest.raises(UpstreamFailed, match="404"):
            engine.client.request("GET", f"{SEG_PATH}/status/no-such-task")
    finally:
        httpx.post(f"{svor_server}/_faults", json={}).raise_for_status()
    after = scrape(service.url)
    for name, status in (
        ("vor_upstream_requests_total", "429"),
        ("vor_upstream_requests_total", "404"),
        ("vor_upstream_retries_total", "429"),
    ):
        assert value(after, name, status=status) == value(before, name, status=status) + 1


def test_the_collector_renders_what_workers_recorded(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    prefix = f"obs-{secrets.token_hex(4)}"
    for seconds in (0.3, 0.3, 7.0):
        metrics.observe(
            client, metrics.STAGE_SECONDS, seconds, prefix=prefix, stage="erase", engine="svor"
        )
    metrics.inc(client, metrics.UPSTREAM_RETRIES, 2, prefix=prefix, status="502")
    store = JobStore(client, prefix=prefix)
    kept, gone = (store.create(_job())[0] for _ in range(2))
    store.finish(kept.id, Status.succeeded)
    store.delete(gone)
    queue = f"{prefix}-queue"
    client.rpush(queue, "a", "b")
    client.rpush(broker.queue_keys(queue)[-1], "c")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        metrics.RedisCollector(
            lambda: client, lambda: broker.depths(client, [queue]), prefix=prefix
        )
    )
    try:
        text = generate_latest(registry).decode()
    finally:
        client.delete(queue, *broker.queue_keys(queue), *client.scan_iter(f"{prefix}:*"))
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    erase = {"stage": "erase", "engine": "svor"}
    assert value(samples, "vor_stage_duration_seconds_bucket", le="0.25", **erase) == 0
    assert value(samples, "vor_stage_duration_seconds_bucket", le="0.5", **erase) == 2
    assert value(samples, "vor_stage_duration_seconds_bucket", le="5.0", **erase) == 2
    assert value(samples, "vor_stage_duration_seconds_bucket", le="10.0", **erase) == 3
    assert value(samples, "vor_stage_duration_seconds_bucket", le="+Inf", **erase) == 3
    assert value(samples, "vor_stage_duration_seconds_sum", **erase) == pytest.approx(7.6)
    assert value(samples, "vor_upstream_retries_total", status="502") == 2
    assert value(samples, "vor_jobs", status="succeeded") == 1
    assert value(samples, "vor_jobs", status="queued") == 0
    assert value(samples, "vor_queue_depth", queue=queue) == 3


def _job() -> Job:
    spec = JobSpec.model_validate({"classes": [{"label": "x", "boxes": [[0.1, 0.1, 0.2, 0.2]]}]})
    return Job(id=new_job_id(), tenant="acme", mode="remove", engine="local", spec=spec)


def test_the_stream_keeps_alive_and_ends_at_a_terminal_status(redis_url: str) -> None:
    store = JobStore(redis.Redis.from_url(redis_url), prefix=f"obs-{secrets.token_hex(4)}")
    job, _ = store.create(_job())

    async def follow() -> list[str]:
        chunks: list[str] = []
        async for chunk in job_stream(store, job.id, redis_url, keepalive_s=0.2):
            chunks.append(chunk)
            if len(chunks) == 1:
                await asyncio.to_thread(store.set_progress, job.id, 0.5)
            elif chunk.startswith(":"):
                await asyncio.to_thread(store.finish, job.id, Status.failed)
        return chunks

    try:
        chunks = asyncio.run(asyncio.wait_for(follow(), timeout=10))
    finally:
        store.redis.delete(*store.redis.scan_iter(f"{store.prefix}:*"))
    assert chunks[2] == ": keep-alive\n\n"
    assert [e["status"] for e in job_events("".join(chunks))] == ["queued", "queued", "failed"]
    assert [e["progress"] for e in job_events("".join(chunks))] == [0.0, 0.5, 0.5]


def test_a_change_that_arrives_late_is_not_sent() -> None:
    running = {"status": "running", "stage": "erase", "progress": 0.6}
    assert not is_newer({"status": "running", "stage": "segment", "progress": 0.3}, running)
    assert not is_newer({"status": "queued", "stage": None, "progress": 0.0}, running)
    assert not is_newer(dict(running), running)
    assert is_newer({"status": "running", "stage": "publish", "progress": 0.6}, running)
    assert is_newer({"status": "canceled", "stage": "erase", "progress": 0.6}, running)


def test_follow_goes_on_by_polling_when_the_stream_breaks_off() -> None:
    """A stream that ends before the job does (an API restarted) is not the end."""
    job_id = "job_0123"
    polls: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            body = f'event: job\ndata: {{"id": "{job_id}", "status": "running", '
            body += '"stage": "erase", "progress": 0.6}\n\n: keep-alive\n\n'
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        polls.append(request.url.path)
        return httpx.Response(200, json={"id": job_id, "status": "succeeded", "progress": 1.0})

    client = VorClient("http://vor.test")
    client.http = httpx.Client(base_url="http://vor.test", transport=httpx.MockTransport(server))
    states = list(client.follow(job_id, timeout=10))
    assert [s["status"] for s in states] == ["running", "succeeded"]
    assert polls == [f"/v1/jobs/{job_id}"]


def test_the_log_formats() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("vor.test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logs.begin(job_id="job_1", stage="erase")
        logs.bind(tenant="acme")
        logger.warning("hello %s", "there")
        logs.end()
        logger.warning("no job")
        handler.setFormatter(logs.TextFormatter())
        with logs.context(job_id="job_2", tenant="globex"):
            logger.warning("plain")
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
        logs.end()
    first, second, third, fourth = stream.getvalue().splitlines()
    entry = json.loads(first)
    assert entry["message"] == "hello there" and entry["level"] == "WARNING"
    assert (entry["job_id"], entry["tenant"], entry["stage"]) == ("job_1", "acme", "erase")
    assert json.loads(second)["logger"] == "vor.test.logs" and "job_id" not in json.loads(second)
    assert third.endswith("plain [job_id=job_2 tenant=globex]")
    assert fourth.endswith("after")
