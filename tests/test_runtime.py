"""The composition root: resources built from settings, the Dispatcher found by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services import runtime
from services.errors import NotConfigured
from services.jobs.lifecycle import Lifecycle
from services.storage import FileStorage
from tests.support.jobs import Recording


def make_recording() -> Recording:
    """A ``module:factory`` target for ``VOR_DISPATCHER``."""
    return Recording()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> Iterator[None]:
    for name in ("VOR_WEBHOOK_SECRET", "VOR_SIGNING_KEY", "VOR_STORAGE_URL", "VOR_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VOR_REDIS_URL", redis_url)
    monkeypatch.setenv("VOR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VOR_DISPATCHER", "tests.test_runtime:make_recording")
    runtime.reset()
    yield
    runtime.reset()


def test_the_dispatcher_is_imported_by_its_name(env: None) -> None:
    dispatcher = runtime.get_dispatcher()
    assert isinstance(dispatcher, Recording) and runtime.get_dispatcher() is dispatcher
    jobs = runtime.lifecycle()
    assert isinstance(jobs, Lifecycle) and jobs.dispatcher is dispatcher
    assert isinstance(jobs.storage, FileStorage)


def test_a_dispatcher_name_without_a_factory_is_refused(
    env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOR_DISPATCHER", "workers.dispatch")
    runtime.reset()
    with pytest.raises(NotConfigured, match="module:factory"):
        runtime.get_dispatcher()


def test_without_redis_the_message_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOR_REDIS_URL", raising=False)
    runtime.reset()
    try:
        with pytest.raises(NotConfigured, match="run `vor serve`"):
            runtime.redis_url()
    finally:
        runtime.reset()


def test_the_webhook_secret_is_shared_through_redis(env: None) -> None:
    first = runtime.webhook_secret()
    runtime.reset()
    assert first.startswith("whsec_") and runtime.webhook_secret() == first


def test_warm_up_reaches_the_dispatcher_and_survives_what_fails(
    env: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    recording = Recording()
    runtime.warm_up(recording)
    assert recording.warmed == 1
    monkeypatch.setenv("VOR_REDIS_URL", "redis://127.0.0.1:1/0")
    runtime.reset()
    caplog.set_level("WARNING", logger="vor.runtime")
    runtime.warm_up(recording)
    assert recording.warmed == 2 and "warm-up of redis skipped" in caplog.text
