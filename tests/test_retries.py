"""The stage retry policy, called directly."""

from __future__ import annotations

from services.errors import StorageUnavailable
from services.jobs import retries
from services.settings import Settings


def test_transient_errors_back_off_with_jitter_but_never_before_retry_after() -> None:
    top = lambda low, high: high  # noqa: E731 - the largest draw of the jitter
    assert retries.transient_delay(StorageUnavailable("down"), 0, rng=top) == 2.0
    assert retries.transient_delay(StorageUnavailable("down"), 3, rng=top) == 16.0
    assert retries.transient_delay(StorageUnavailable("down"), 9, rng=top) == 60.0
    late = StorageUnavailable("down", retry_after=30)
    assert retries.transient_delay(late, 0, rng=lambda low, high: low) == 30.0


def test_the_last_attempt_and_the_busy_wait_follow_settings() -> None:
    settings = Settings(stage_max_retries=2, heartbeat_s=4)
    assert [retries.is_final_attempt(n, settings) for n in range(4)] == [
        False,
        False,
        True,
        True,
    ]
    assert retries.busy_delay(settings) == 12.0
