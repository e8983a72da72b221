"""Admission: which accepted job reaches the workers next, so tenants share them fairly.

Celery's Redis queues are FIFO lists (its priority steps are lists read in order):
they can order one tenant's work but cannot keep one tenant's backlog from
queueing another tenant's job behind it. So an accepted job first waits here,
in Redis, and is *released* to the queue only while its pool has a free slot:

- a job waits in ``{p}:sched:wait:{pool}:{tenant}``, a sorted set ordered by
  priority (high, normal, low), then by arrival;
- ``release`` (one Lua script, so atomic) takes jobs while the pool's released
  jobs (``{p}:sched:running:{pool}``) are fewer than its capacity and the
  tenant's are fewer than its running limit, choosing among the tenants that
  wait (``{p}:sched:ring:{pool}``) the one served least recently;
- ``done`` gives the slot back (or drops a job that still waited) when the job
  ends, whichever way it ends.

A job's *pool* is the queue of its engine's heavy stages (``cpu`` for the local
engine, ``io`` for svor). The capacity of a pool is ``VOR_DISPATCH_CAPACITY``, or
the slots that live workers consuming its queue report (``report_worker``), or
``FALLBACK_CAPACITY`` while none has reported.

Every script touches only ``{p}:sched:*`` keys and is idempotent for a job id,
so the lifecycle may call ``admit``, ``release`` and ``done`` again after a crash
between two steps; the sweeper calls ``release`` and ``reconcile`` every sweep.
The scripts build key names from the prefix, which suits a single Redis (as
Celery's own Redis transport does), not Redis Cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import cast

import redis

from services.engines import capabilities
from services.errors import TenantQueueFull
from services.metrics import AdmissionDepths
from services.models import Job, Queue
from services.settings import Settings

PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}
RANK_SPAN = 10**14
"""Scores are ``rank * RANK_SPAN + arrival``: exact in a double up to 9e15."""
FALLBACK_CAPACITY = 1
"""Released jobs per pool while no live worker has reported its slots (a worker
releases more as soon as it is ready)."""
QUEUE_FULL_RETRY_AFTER_S = 10
"""``Retry-After`` of a 429 for a full queue: a documented constant, not an estimate."""
MAX_RELEASE = 1000
"""Jobs one ``release`` call takes at most (the script stays short)."""

_ADMIT_LUA = """
local p, id, pool, tenant, rank = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local where = redis.call('hget', p .. ':sched:job', id)
if where then
  local w = cjson.decode(where)
  if redis.call('hexists', p .. ':sched:running:' .. w[1], id) == 1 then return 0 end
  return 2
end
local seq = redis.call('incr', p .. ':sched:clock')
local score = string.format('%.0f', rank * tonumber(ARGV[6]) + seq)
redis.call('zadd', p .. ':sched:wait:' .. pool .. ':' .. tenant, score, id)
redis.call('hset', p .. ':sched:job', id, cjson.encode({pool, tenant}))
local ring = p .. ':sched:ring:' .. pool
if not redis.call('zscore', ring, tenant) then
  local served = redis.call('hget', p .. ':sched:served:' .. pool, tenant) or '0'
  redis.call('zadd', ring, served, tenant)
end
return 1
"""

_RELEASE_LUA = """
local p, pool = ARGV[1], ARGV[2]
local capacity, default_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local limits, most = cjson.decode(ARGV[5]), tonumber(ARGV[6])
local running = p .. ':sched:running:' .. pool
local ring = p .. ':sched:ring:' .. pool
local counts = p .. ':sched:tenant-running'
local released = {}
while #released < most and redis.call('hlen', running) < capacity do
  local chosen = nil
  for _, tenant in ipairs(redis.call('zrange', ring, 0, -1)) do
    local limit = tonumber(limits[tenant] or default_limit)
    if limit <= 0 or tonumber(redis.call('hget', counts, tenant) or '0') < limit then
      chosen = tenant
      break
    end
  end
  if not chosen then break end
  local wait = p .. ':sched:wait:' .. pool .. ':' .. chosen
  local head = redis.call('zpopmin', wait)
  local clock = redis.call('incr', p .. ':sched:clock')
  if #head > 0 then
    redis.call('hset', running, head[1], chosen)
    redis.call('hincrby', counts, chosen, 1)
    table.insert(released, head[1])
  end
  if redis.call('zcard', wait) == 0 then
    redis.call('zrem', ring, chosen)
    redis.call('hset', p .. ':sched:served:' .. pool, chosen, clock)
  else
    redis.call('zadd', ring, clock, chosen)
  end
end
return released
"""

_DONE_LUA = """
local p, id = ARGV[1], ARGV[2]
local where = redis.call('hget', p .. ':sched:job', id)
if not where then return 0 end
local w = cjson.decode(where)
local pool, tenant = w[1], w[2]
redis.call('hdel', p .. ':sched:job', id)
if redis.call('hdel', p .. ':sched:running:' .. pool, id) == 1 then
  if redis.call('hincrby', p .. ':sched:tenant-running', tenant, -1) <= 0 then
    redis.call('hdel', p .. ':sched:tenant-running', tenant)
  end
  return 1
end
local wait = p .. ':sched:wait:' .. pool .. ':' .. tenant
redis.call('zrem', wait, id)
if redis.call('zcard', wait) == 0 then
  local ring = p .. ':sched:ring:' .. pool
  local score = redis.call('zscore', ring, tenant)
  if score then
    redis.call('zrem', ring, tenant)
    redis.call('hset', p .. ':sched:served:' .. pool, tenant, score)
  end
end
return 2
"""


def pool_of(job: Job, settings: Settings) -> str:
    """The queue of the job's engine stages: the slots its release takes."""
    return capabilities(job.engine, settings).queue.value


class Scheduler:
    """Fair admission of jobs to the workers, kept in Redis (see the module's doc)."""

    def __init__(self, client: redis.Redis, settings: Settings, *, prefix: str = "vor") -> None:
        self.redis = client
        self.settings = settings
        self.prefix = prefix
        self._admit = client.register_script(_ADMIT_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._done = client.register_script(_DONE_LUA)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, "sched", *parts))

    def limits(self, tenant: str) -> tuple[int, int]:
        """The tenant's (running, queued) limits; running 0 means only the capacity."""
        own = self.settings.tenant_limits.get(tenant)
        running = self.settings.tenant_max_running
        queued = self.settings.tenant_max_queued
        if own is not None:
            running = own.max_running if own.max_running is not None else running
            queued = own.max_queued if own.max_queued is not None else queued
        return running, queued

    def waiting(self, tenant: str) -> int:
        """The tenant's jobs waiting for a slot, in every pool."""
        pipe = self.redis.pipeline(transaction=False)
        for pool in Queue:
            pipe.zcard(self._key("wait", pool.value, tenant))
        return sum(int(n) for n in pipe.execute())

    def room(self, tenant: str) -> int:
        """How many more jobs the tenant may queue now."""
        return max(0, self.limits(tenant)[1] - self.waiting(tenant))

    def check_room(self, tenant: str) -> None:
        """Raise ``TenantQueueFull`` when the tenant's queue is at its limit.

        Checked before anything of a job is stored; two submissions racing each
        other may both pass, so a tenant can go over by the submissions in flight.
        """
        limit = self.limits(tenant)[1]
        if self.waiting(tenant) >= limit:
            raise TenantQueueFull(
                f"tenant {tenant!r} already has {limit} jobs queued (VOR_TENANT_MAX_QUEUED); "
                f"retry after {QUEUE_FULL_RETRY_AFTER_S} s or once some have started",
                retry_after=QUEUE_FULL_RETRY_AFTER_S,
                field="tenant",
            )

    def admit(self, job: Job) -> bool:
        """Put the job in its tenant's waiting set; False when it already holds a slot
        (a released job enqueued again after its worker died)."""
        rank = PRIORITY_RANK[job.spec.priority]
        pool = pool_of(job, self.settings)
        args: list[str | int] = [self.prefix, job.id, pool, job.tenant, rank, RANK_SPAN]
        return int(self._admit(args=args)) != 0

    def release(self, pools: Iterable[str] | None = None) -> list[str]:
        """Take the jobs that may start now, fairly, in ``pools`` (default: every pool);
        their ids."""
        overrides = {
            tenant: own.max_running
            for tenant, own in self.settings.tenant_limits.items()
            if own.max_running is not None
        }
        released: list[str] = []
        for pool in pools or [q.value for q in Queue]:
            args: list[str | int] = [
                self.prefix,
                pool,
                self.capacity(pool),
                self.settings.tenant_max_running,
                json.dumps(overrides) if overrides else "{}",
                MAX_RELEASE,
            ]
            ids = cast("list[bytes]", self._release(args=args))
            released.extend(i.decode() for i in ids)
        return released

    def done(self, job_id: str) -> bool:
        """Forget the job: give its slot back, or take it out of the waiting set.
        True when it held a slot (so another job may be released)."""
        return int(self._done(args=[self.prefix, job_id])) == 1

    def holds_slot(self, job_id: str) -> bool:
        return any(self.redis.hexists(self._key("running", q.value), job_id) for q in Queue)

    def waiting_among(self, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` that wait for a slot (known here, holding none)."""
        ids = list(job_ids)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hexists(self._key("job"), job_id)
            for pool in Queue:
                pipe.hexists(self._key("running", pool.value), job_id)
        answers = pipe.execute()
        step = 1 + len(Queue)
        return {
            job_id
            for i, job_id in enumerate(ids)
            if answers[i * step] and not any(answers[i * step + 1 : (i + 1) * step])
        }

    def released(self) -> dict[str, str]:
        """Every job holding a slot, with its tenant."""
        found: dict[str, str] = {}
        for pool in Queue:
            rows = cast("dict[bytes, bytes]", self.redis.hgetall(self._key("running", pool.value)))
            found.update({k.decode(): v.decode() for k, v in rows.items()})
        return found

    def depths(self) -> AdmissionDepths:
        """Waiting and released jobs and the capacity of every pool (for ``/metrics``)."""
        pools = [q.value for q in Queue]
        rings = [cast("list[bytes]", self.redis.zrange(self._key("ring", p), 0, -1)) for p in pools]
        pipe = self.redis.pipeline(transaction=False)
        for pool, tenants in zip(pools, rings, strict=True):
            pipe.hlen(self._key("running", pool))
            for tenant in tenants:
                pipe.zcard(self._key("wait", pool, tenant.decode()))
        answers = iter(pipe.execute())
        waiting, released = {}, {}
        for pool, tenants in zip(pools, rings, strict=True):
            released[pool] = int(next(answers))
            waiting[pool] = sum(int(next(answers)) for _ in tenants)
        return AdmissionDepths(waiting, released, {pool: self.capacity(pool) for pool in pools})

    def report_worker(self, name: str, queues: Iterable[str], slots: int, ttl_s: float) -> None:
        """A live worker's slots, counted in its queues' capacity for ``ttl_s``."""
        pipe = self.redis.pipeline()
        pipe.hset(self._key("worker-slots"), name, json.dumps([sorted(queues), slots]))
        pipe.zadd(self._key("workers"), {name: time.time() + ttl_s})
        pipe.execute()
        self.forget_dead_workers()

    def capacity(self, pool: str) -> int:
        """Jobs the pool may have released at once (see the module's doc)."""
        if self.settings.dispatch_capacity:
            return self.settings.dispatch_capacity
        now = time.time()
        live = cast("list[bytes]", self.redis.zrangebyscore(self._key("workers"), now, "+inf"))
        if not live:
            return FALLBACK_CAPACITY
        rows = cast("list[bytes | None]", self.redis.hmget(self._key("worker-slots"), live))
        slots = 0
        for row in rows:
            if row is not None:
                queues, count = json.loads(row)
                slots += int(count) if pool in queues else 0
        return slots or FALLBACK_CAPACITY

    def forget_dead_workers(self) -> None:
        found = cast(
            "list[bytes]", self.redis.zrangebyscore(self._key("workers"), "-inf", time.time())
        )
        dead = [name.decode() for name in found]
        if dead:
            pipe = self.redis.pipeline()
            pipe.zrem(self._key("workers"), *dead)
            pipe.hdel(self._key("worker-slots"), *dead)
            pipe.execute()
