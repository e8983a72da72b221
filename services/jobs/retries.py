"""When a stage is tried again: vor's retry policy for stages, in one place.

- A stage that hit a ``TransientError`` (storage down, an injected fault) is
  retried after a full-jitter backoff (uniform up to ``min(60, 2 * 2**n)`` s), never
  sooner than the error's ``retry_after``, at most ``VOR_STAGE_MAX_RETRIES`` times;
  on the last attempt the error fails the job instead.
- A stage whose lease another copy holds looks again once that lease could have
  expired (``lease.ttl_s``); that wait is not counted against its retries.

Webhook deliveries follow Standard Webhooks' schedule (``webhooks.backoff_s``, up to
``VOR_WEBHOOK_MAX_ATTEMPTS``), and the SVOR client retries each upstream call itself
(``engines/svor/client.py``): those are retries of one request, not of a stage.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from services.errors import TransientError
from services.jobs.lease import ttl_s
from services.settings import Settings

BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 60.0


def transient_delay(
    exc: TransientError, retries: int, *, rng: Callable[[float, float], float] = random.uniform
) -> float:
    """Seconds before retry ``retries + 1`` of a stage that raised ``exc``."""
    backoff = rng(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**retries))
    return max(backoff, exc.retry_after or 0.0)


def busy_delay(settings: Settings) -> float:
    """Seconds before a copy that found the stage's lease taken looks again."""
    return ttl_s(settings.heartbeat_s)


def is_final_attempt(retries: int, settings: Settings) -> bool:
    """Whether attempt ``retries + 1`` is the last a transient error may have."""
    return retries >= settings.stage_max_retries
