"""What the stand-in breaks on purpose, and the dice and counters that decide each time.

``Faults`` is set at start (``vor svor-server --burst-429 3 ...``) and replaced at
runtime with ``POST /_faults``; counted faults are used up one request at a time,
``rate_429`` is a seeded die, ``rate_limit_per_s`` a token bucket. The gate in
front of the SVOR routes (``gate.py``) asks the ``Injector`` before each request.
"""

from __future__ import annotations

import random
import threading
import time

from pydantic import BaseModel, ConfigDict, Field


class Faults(BaseModel):
    """What to break. Counters (``burst_429``, ``fail_502``, ...) are used up one per request."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    rate_429: float = Field(
        default=0.0, ge=0, le=1, description="share of requests answered 429, at random"
    )
    burst_429: int = Field(default=0, ge=0, description="answer the next N requests with 429")
    retry_after: float | None = Field(
        default=None, ge=0, description="Retry-After seconds sent with a 429"
    )
    fail_502: int = Field(default=0, ge=0, description="answer the next N requests with 502")
    fail_504: int = Field(default=0, ge=0, description="answer the next N requests with 504")
    latency_s: float = Field(default=0.0, ge=0, description="added before answering every request")
    task_latency_s: float = Field(default=0.0, ge=0, description="how long each task stays running")
    hang_s: float = Field(
        default=0.0, ge=0, description="hang this long before answering (read timeouts)"
    )
    hang_requests: int = Field(default=1, ge=0, description="how many requests hang_s applies to")
    never_complete: bool = Field(default=False, description="new tasks stay running forever")
    malformed_json: int = Field(
        default=0, ge=0, description="answer the next N JSON requests with junk"
    )
    fail_status: int = Field(default=0, ge=0, description="the next N tasks end failed")
    rate_limit_per_s: float = Field(
        default=0.0, ge=0, description="token bucket: more requests per second get 429 (0 = off)"
    )
    only: str | None = Field(
        default=None,
        description="counted faults hit only this endpoint: sam3_prompt_seg, "
        "sam3_prompt_seg/status, mieraser, mieraser/status or files",
    )
    max_body_bytes: int | None = Field(
        default=None, gt=0, description="request bodies over this get 413 (default 1000 KB)"
    )
    seed: int | None = Field(default=None, description="seed for rate_429's dice")


class Injector:
    """The faults in force and their state, shared by the event loop and the task threads."""

    def __init__(self, faults: Faults) -> None:
        self.lock = threading.Lock()
        self.set(faults)

    def set(self, faults: Faults) -> None:
        with self.lock:
            self.faults = faults.model_copy()
            self.rng = random.Random(faults.seed)
            self.tokens = max(1.0, faults.rate_limit_per_s)
            self.tokens_at = time.monotonic()

    def take(self, counter: str, endpoint: str) -> bool:
        """Use up one of a counted fault, if any is left and it applies to ``endpoint``."""
        with self.lock:
            left = getattr(self.faults, counter)
            if left <= 0 or (self.faults.only and self.faults.only != endpoint):
                return False
            setattr(self.faults, counter, left - 1)
            return True

    def dice_429(self) -> bool:
        with self.lock:
            return self.faults.rate_429 > 0 and self.rng.random() < self.faults.rate_429

    def throttle(self) -> float | None:
        """Token bucket; None when the request may pass, else the seconds until it could."""
        with self.lock:
            rate = self.faults.rate_limit_per_s
            if rate <= 0:
                return None
            now = time.monotonic()
            self.tokens = min(max(1.0, rate), self.tokens + (now - self.tokens_at) * rate)
            self.tokens_at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return None
            return (1 - self.tokens) / rate
