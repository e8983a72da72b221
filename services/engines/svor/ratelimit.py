"""A limit on calls to one upstream, shared by every worker (process or machine) through Redis.

Two checks run in one atomic Lua script, so that no worker holds one while it
waits for the other: a token bucket (``rate_per_s``, up to ``burst`` at once)
and a semaphore of calls in flight whose slots are leases, so that a worker
killed mid-call gives its slot back after ``lease_s``. ``pause`` holds every
worker back until a given time, as an upstream's ``Retry-After`` asks; after a
pause one call goes first and the others follow at the rate, instead of a
burst.

Time is Redis's own clock, the same for every machine, unless a ``clock`` is
given (tests hand a fake one). When Redis cannot be reached the limiter lets
calls through and logs it: it protects the upstream, it is not worth failing
jobs for.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from types import TracebackType

import redis

log = logging.getLogger("vor.ratelimit")

SLOT_POLL_S = 0.05
"""How often a worker waiting for a free slot looks again (a release sends no signal)."""
KEY_TTL_S = 60.0
"""How long a bucket outlives its last use (a refilled bucket needs no state)."""
WARN_EVERY_S = 60.0

_ACQUIRE = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local limit, lease = tonumber(ARGV[4]), tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'paused_until')
local paused = tonumber(state[3]) or 0
if paused > now then
  return {0, string.format('%.6f', paused - now), 'paused'}
end
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', string.format('%.6f', now))
  if redis.call('ZCARD', KEYS[2]) >= limit then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    local wait = math.min(tonumber(ARGV[7]), tonumber(first[2]) - now)
    return {0, string.format('%.6f', wait), 'slots'}
  end
end
if rate > 0 then
  local tokens = tonumber(state[1]) or burst
  local ts = tonumber(state[2]) or now
  if now > ts then
    tokens = math.min(burst, tokens + (now - ts) * rate)
    ts = now
  end
  if tokens < 1 then
    return {0, string.format('%.6f', (1 - tokens) / rate + (ts - now)), 'rate'}
  end
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens - 1),
             'ts', string.format('%.6f', ts))
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst / rate + ARGV[8]) * 1000))
end
if limit > 0 then
  redis.call('ZADD', KEYS[2], string.format('%.6f', now + lease), ARGV[6])
  redis.call('PEXPIRE', KEYS[2], math.ceil((lease + ARGV[8]) * 1000))
end
return {1, '0', 'granted'}
"""

_PAUSE = """
local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local until_ = now + tonumber(ARGV[2])
local paused = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
if until_ > paused then
  redis.call('HSET', KEYS[1], 'paused_until', string.format('%.6f', until_),
             'tokens', '1', 'ts', string.format('%.6f', until_))
  redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ARGV[2]) + ARGV[3]) * 1000))
  paused = until_
end
return string.format('%.6f', paused - now)
"""


class LimiterWaitTooLong(Exception):
    """The limiter would keep the caller waiting longer than it allowed."""

    def __init__(self, message: str, *, waited_s: float, reason: str) -> None:
        super().__init__(message)
        self.waited_s = waited_s
        self.reason = reason


class Lease:
    """The right to make one call; ``release`` (or leaving the ``with``) gives its slot back."""

    def __init__(self, limiter: UpstreamLimiter | None, token: str | None, waited_s: float = 0.0):
        self._limiter = limiter
        self._token = token
        self.waited_s = waited_s

    def release(self) -> None:
        if self._limiter is not None and self._token is not None:
            self._limiter._release(self._token)
        self._token = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class UpstreamLimiter:
    """The calls to upstream ``name``, limited for all workers that share ``client``'s Redis."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        *,
        rate_per_s: float = 0.0,
        burst: float | None = None,
        max_concurrency: int = 0,
        lease_s: float = 120.0,
        clock: Callable[[], float] | None = None,
        key_prefix: str = "vor:limit:",
    ) -> None:
        if rate_per_s < 0 or max_concurrency < 0 or lease_s <= 0:
            raise ValueError("rate_per_s and max_concurrency must be >= 0, lease_s > 0")
        self.redis = client
        self.name = name
        self.rate_per_s = rate_per_s
        self.burst = max(1.0, burst if burst is not None else math.ceil(rate_per_s))
        self.max_concurrency = max_concurrency
        self.lease_s = lease_s
        self.clock = clock
        self.bucket_key = f"{key_prefix}{name}:bucket"
        self.slots_key = f"{key_prefix}{name}:slots"
        self._acquire = client.register_script(_ACQUIRE)
        self._pause = client.register_script(_PAUSE)
        self._warned_at = -math.inf

    def _now(self) -> str:
        return "" if self.clock is None else repr(self.clock())

    def try_acquire(self) -> tuple[Lease | None, float, str]:
        """A lease now, or None with the seconds worth waiting and why (paused, slots, rate)."""
        token = uuid.uuid4().hex if self.max_concurrency else None
        args: list[str | float] = [
            self._now(), self.rate_per_s, self.burst, self.max_concurrency, self.lease_s,
            token or "", SLOT_POLL_S, KEY_TTL_S,
        ]  # fmt: skip
        try:
            granted, wait, reason = self._acquire(keys=[self.bucket_key, self.slots_key], args=args)
        except redis.RedisError as exc:
            self._warn(exc)
            return Lease(None, None), 0.0, "redis_unavailable"
        if int(granted):
            return Lease(self, token), 0.0, "granted"
        return None, max(0.0, float(wait)), _text(reason)

    def acquire(
        self, sleep: Callable[[float], None] = time.sleep, *, max_wait_s: float = math.inf
    ) -> Lease:
        """Wait (with ``sleep``) for a lease; ``LimiterWaitTooLong`` past ``max_wait_s``."""
        waited = 0.0
        while True:
            lease, wait, reason = self.try_acquire()
            if lease is not None:
                lease.waited_s = waited
                return lease
            if waited + wait > max_wait_s:
                raise LimiterWaitTooLong(
                    f"the shared limit on {self.name} ({reason}) would hold this call "
                    f"{waited + wait:.1f} s, over the {max_wait_s:g} s allowed",
                    waited_s=waited,
                    reason=reason,
                )
            sleep(wait)
            waited += wait

    def pause(self, seconds: float) -> float:
        """Hold every worker back for ``seconds`` (never shortens a longer pause); seconds left."""
        try:
            left = self._pause(keys=[self.bucket_key], args=[self._now(), seconds, KEY_TTL_S])
        except redis.RedisError as exc:
            self._warn(exc)
            return 0.0
        return float(left)

    def _release(self, token: str) -> None:
        try:
            self.redis.zrem(self.slots_key, token)
        except redis.RedisError as exc:
            self._warn(exc)

    def _warn(self, exc: redis.RedisError) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("upstream limiter %s: Redis unavailable, calls go unlimited (%s)",
                        self.name, exc)  # fmt: skip


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
