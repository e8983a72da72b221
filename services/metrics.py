"""Prometheus metrics that every vor process adds to and the API serves.

Workers run as prefork children, as threads and on other machines, so no
process keeps a metric in memory: each observation is one pipelined write to
Redis hashes under ``vor:metrics:``, and ``RedisCollector`` turns those hashes
(plus the job store's status counts and the broker's queue lengths) into
Prometheus families when ``/metrics`` is scraped.

Writing a metric never raises: a lost observation must not fail a job.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from services.models import Status

log = logging.getLogger("vor.metrics")

PREFIX = "vor"
RedisSource = Callable[[], redis.Redis]


@dataclass(frozen=True)
class Counter:
    name: str
    help: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Histogram:
    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]
    """Upper bounds, ascending; +Inf is implied."""


STAGE_SECONDS = Histogram(
    "vor_stage_duration_seconds",
    "Time a pipeline stage took to finish, by stage and engine.",
    ("stage", "engine"),
    (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
UPSTREAM_REQUESTS = Counter(
    "vor_upstream_requests_total",
    "Requests to the SVOR API by answer: the HTTP status, or the transport error "
    "(connect, read_timeout, timeout, transport).",
    ("status",),
)
UPSTREAM_RETRIES = Counter(
    "vor_upstream_retries_total",
    "Retries of SVOR requests by cause: the HTTP status, a transport error or malformed_json.",
    ("status",),
)
WEBHOOK_DELIVERIES = Counter(
    "vor_webhook_deliveries_total",
    "Webhook delivery attempts by event and outcome: ok, retry (another attempt is scheduled), "
    "failed (no more attempts) or gone (the receiver answered 410).",
    ("event", "outcome"),
)
JOB_FAILURES = Counter(
    "vor_job_failures_total",
    "Jobs that failed, by error code and the stage they failed in (none: before any stage).",
    ("code", "stage"),
)
COUNTERS = (UPSTREAM_REQUESTS, UPSTREAM_RETRIES, WEBHOOK_DELIVERIES, JOB_FAILURES)
HISTOGRAMS = (STAGE_SECONDS,)
STORED: tuple[Counter | Histogram, ...] = (*COUNTERS, *HISTOGRAMS)


def _key(prefix: str, *parts: str) -> str:
    return ":".join((prefix, "metrics", *parts))


def _labels(metric: Counter | Histogram, labels: dict[str, str]) -> str:
    if set(labels) != set(metric.labels):
        raise ValueError(f"{metric.name} takes labels {metric.labels}, got {sorted(labels)}")
    return json.dumps([str(labels[name]) for name in metric.labels])


def inc(
    client: redis.Redis, counter: Counter, amount: int = 1, *, prefix: str = PREFIX, **labels: str
) -> None:
    """Add ``amount`` to ``counter`` for these label values."""
    field = _labels(counter, labels)
    try:
        client.hincrby(_key(prefix, counter.name), field, amount)
    except redis.RedisError as exc:
        log.warning("metric %s not recorded: %s", counter.name, exc)


def observe(
    client: redis.Redis, histogram: Histogram, value: float, *, prefix: str = PREFIX, **labels: str
) -> None:
    """Count ``value`` in its bucket and in the sum and count, in one round trip."""
    field = _labels(histogram, labels)
    bucket = bisect_left(histogram.buckets, value)
    key = _key(prefix, histogram.name)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(key, f"{field}|{bucket}", 1)
        pipe.hincrbyfloat(key, f"{field}|sum", value)
        pipe.hincrby(key, f"{field}|count", 1)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("metric %s not recorded: %s", histogram.name, exc)


def stage_done(client: redis.Redis, stage: str, engine: str, seconds: float) -> None:
    observe(client, STAGE_SECONDS, seconds, stage=stage, engine=engine)


def job_failed(client: redis.Redis, code: str, stage: str) -> None:
    inc(client, JOB_FAILURES, code=code, stage=stage)


def count_transition(
    pipe: Any, before: Status | None, after: Status | None, *, prefix: str = PREFIX
) -> None:
    """Queue on ``pipe`` the moves of one job between the per-status counts.

    The job store calls this inside the transaction that changes the job, so
    the counts move exactly when the status does. ``None`` is "no job": a new
    job comes from it, a deleted one goes to it.
    """
    if before == after:
        return
    key = _key(prefix, "jobs")
    if before is not None:
        pipe.hincrby(key, before.value, -1)
    if after is not None:
        pipe.hincrby(key, after.value, 1)


def webhook_delivered(client: redis.Redis, event: str, outcome: str) -> None:
    """Count one delivery attempt: ``ok``, ``retry``, ``failed`` or ``gone``."""
    inc(client, WEBHOOK_DELIVERIES, event=event, outcome=outcome)


def upstream_observer(client: redis.Redis, *, prefix: str = PREFIX) -> Callable[[str, str], None]:
    """The ``observe`` hook of ``SvorClient``: called with ``("request" | "retry", status)``."""

    def record(kind: str, status: str) -> None:
        counter = UPSTREAM_RETRIES if kind == "retry" else UPSTREAM_REQUESTS
        inc(client, counter, prefix=prefix, status=status)

    return record


@dataclass(frozen=True)
class QueueDepths:
    """What waits in the queues: messages per queue, and those a worker holds unacked."""

    waiting: dict[str, int]
    unacked: int


@dataclass(frozen=True)
class AdmissionDepths:
    """Per pool: jobs waiting for a slot, jobs released to the workers, and the capacity."""

    waiting: dict[str, int]
    released: dict[str, int]
    capacity: dict[str, int]


class RedisCollector(Collector):
    """Prometheus families read at scrape time: the stored ones from the job store's
    Redis in one round trip, the queues' depths from ``queues`` (the ``Dispatcher``'s,
    which knows where its queue keeps them) and admission's from ``admission``."""

    def __init__(
        self,
        store: RedisSource,
        queues: Callable[[], QueueDepths],
        *,
        prefix: str = PREFIX,
        admission: Callable[[], AdmissionDepths] | None = None,
    ) -> None:
        self.store = store
        self.queues = queues
        self.prefix = prefix
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("vor_metrics_redis_up", "1 when Redis answered this scrape.")
        try:
            families = [*self._stored(), *_queue_families(self.queues())]
            if self.admission is not None:
                families += _admission_families(self.admission())
        except redis.RedisError as exc:
            log.warning("metrics scrape failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _stored(self) -> list[Metric]:
        pipe = self.store().pipeline(transaction=False)
        pipe.hgetall(_key(self.prefix, "jobs"))
        for metric in STORED:
            pipe.hgetall(_key(self.prefix, metric.name))
        jobs, *stored = pipe.execute()
        families: list[Metric] = [_jobs_family(jobs)]
        for metric, raw in zip(STORED, stored, strict=True):
            if isinstance(metric, Counter):
                families.append(_counter_family(metric, raw))
            else:
                families.append(_histogram_family(metric, raw))
        return families


def _queue_families(depths: QueueDepths) -> list[Metric]:
    depth = GaugeMetricFamily(
        "vor_queue_depth", "Messages waiting in a queue (all priorities).", labels=["queue"]
    )
    for queue, waiting in depths.waiting.items():
        depth.add_metric([queue], waiting)
    in_flight = GaugeMetricFamily(
        "vor_queue_unacked",
        "Messages delivered to a worker and not yet acknowledged (running, or waiting "
        "for a retry countdown).",
    )
    in_flight.add_metric([], depths.unacked)
    return [depth, in_flight]


def _admission_families(depths: AdmissionDepths) -> list[Metric]:
    found: list[Metric] = []
    for name, help_text, values in (
        ("vor_admission_waiting", "Jobs waiting for a worker slot, per pool.", depths.waiting),
        ("vor_admission_released", "Jobs released to the workers, not ended.", depths.released),
        ("vor_admission_capacity", "Jobs the pool may have released at once.", depths.capacity),
    ):
        family = GaugeMetricFamily(name, help_text, labels=["pool"])
        for pool, value in values.items():
            family.add_metric([pool], value)
        found.append(family)
    return found


def _jobs_family(raw: dict[bytes, bytes]) -> GaugeMetricFamily:
    family = GaugeMetricFamily("vor_jobs", "Jobs in the store by status.", labels=["status"])
    counts = {k.decode(): int(v) for k, v in raw.items()}
    for status in Status:
        family.add_metric([status.value], max(0, counts.get(status.value, 0)))
    return family


def _counter_family(metric: Counter, raw: dict[bytes, bytes]) -> CounterMetricFamily:
    family = CounterMetricFamily(metric.name, metric.help, labels=list(metric.labels))
    for field, value in sorted(raw.items()):
        family.add_metric(json.loads(field), int(value))
    return family


def _histogram_family(metric: Histogram, raw: dict[bytes, bytes]) -> HistogramMetricFamily:
    """Stored per-bucket counts made cumulative, as Prometheus wants them."""
    series: dict[str, dict[str, float]] = {}
    for field, value in raw.items():
        labels, _, part = field.decode().rpartition("|")
        series.setdefault(labels, {})[part] = float(value)
    family = HistogramMetricFamily(metric.name, metric.help, labels=list(metric.labels))
    bounds = [*(floatToGoString(b) for b in metric.buckets), "+Inf"]  # type: ignore[no-untyped-call]
    for labels, parts in sorted(series.items()):
        running = 0.0
        buckets: list[tuple[str, float]] = []
        for index, bound in enumerate(bounds):
            running += parts.get(str(index), 0.0)
            buckets.append((bound, running))
        family.add_metric(json.loads(labels), buckets, parts.get("sum", 0.0))
    return family
