"""What Celery keeps in its Redis broker, read straight from Redis.

kombu's Redis transport keeps each queue as one list per priority step and the
messages a worker took, not yet acknowledged, in the ``unacked`` hash (with the
time each was taken in ``unacked_index``). The metrics scrape and the sweeper read
them through the ``Dispatcher``, so only ``workers/`` knows this layout.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import cast

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from services.metrics import QueueDepths

JOB_ID = re.compile(rb"job_[0-9a-f]{20}")


def queue_keys(queue: str) -> list[str]:
    """The broker lists of one queue: kombu keeps one list per priority step."""
    return [f"{queue}{Channel.sep}{step}" if step else queue for step in PRIORITY_STEPS]


def depths(broker: redis.Redis, queues: Iterable[str]) -> QueueDepths:
    """Messages waiting in each queue (all priorities) and unacked ones, in one round trip."""
    names = tuple(queues)
    pipe = broker.pipeline(transaction=False)
    for queue in names:
        for key in queue_keys(queue):
            pipe.llen(key)
    pipe.hlen(Channel.unacked_key)
    *lengths, unacked = pipe.execute()
    steps = len(PRIORITY_STEPS)
    waiting = {q: sum(lengths[i * steps : (i + 1) * steps]) for i, q in enumerate(names)}
    return QueueDepths(waiting, int(unacked))


def jobs_with_messages(
    broker: redis.Redis, queues: Iterable[str], *, held_for_less_than_s: float
) -> set[str]:
    """Jobs with a message waiting in a queue, or delivered to a worker recently.

    A message a worker took long ago and never started (no stage lease) was most
    likely taken by a worker that died: it does not count.
    """
    found: set[str] = set()
    for queue in queues:
        for key in broker.scan_iter(match=f"{queue}*", count=100):
            if broker.type(key) == b"list":
                for message in cast("list[bytes]", broker.lrange(key, 0, -1)):
                    found.update(m.decode() for m in JOB_ID.findall(message))
    cutoff = time.time() - held_for_less_than_s
    # redis-py types its commands for both clients (sync | Awaitable); ours is sync.
    scored = cast(
        "list[tuple[bytes, float]]",
        broker.zrangebyscore(Channel.unacked_index_key, cutoff, "+inf", withscores=True),
    )
    recent = {tag for tag, _ in scored}
    for tag, message in broker.hscan_iter(Channel.unacked_key):
        if tag in recent:
            found.update(m.decode() for m in JOB_ID.findall(message))
    return found
