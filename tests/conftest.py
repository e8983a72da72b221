"""Fixtures with real parts: Redis, vor's own processes, a stand-in SVOR, clips.

The service under test is started the way an operator starts it (``vor api``,
``vor worker``) against a real Redis: the one on 127.0.0.1:6379 when it answers
(on a database index of its own, flushed first), else an embedded one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.cli.embedded import EmbeddedService, free_port, start_redis
from services.media.synthetic import SyntheticClip, make_clip
from services.standin.process import start_standin

TEST_DB_BLOCKS = (0, 4, 8, 11)
"""A test session uses Redis databases base..base+3; four sessions may run side by side."""
LOCK_DB = 15
WEBHOOK_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXZvci10ZXN0cw=="
API_KEYS = {"acme": "key-acme", "globex": "key-globex"}
SVOR_KEY = "svor-test-key"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return pid > 0


def _claim_block() -> int:
    locks = redis.Redis.from_url(f"redis://127.0.0.1:6379/{LOCK_DB}")
    for base in TEST_DB_BLOCKS:
        key = f"vor-test-block:{base}"
        if locks.set(key, os.getpid(), nx=True, ex=3 * 3600):
            return base
        holder = int(locks.get(key) or 0)
        if not _pid_alive(holder):
            locks.set(key, os.getpid(), ex=3 * 3600)
            return base
    raise RuntimeError("every Redis database block for tests is taken by another test session")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if _answers(6379):
        base = _claim_block()
        url = f"redis://127.0.0.1:6379/{base}"
        redis.Redis.from_url(url).flushdb()
        yield url
        redis.Redis.from_url(f"redis://127.0.0.1:6379/{LOCK_DB}").delete(f"vor-test-block:{base}")
        return
    port = free_port()
    proc = start_redis(tmp_path_factory.mktemp("redis"), port)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def svor_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``vor svor-server`` as a real process, faults set per test through ``/_faults``."""
    port = free_port()
    log = tmp_path_factory.mktemp("svor") / "svor.log"
    proc = start_standin(port, log, "--api-key", SVOR_KEY)
    url = f"http://127.0.0.1:{port}"
    yield url
    proc.terminate()
    proc.wait(10)


def service_env(redis_url: str, svor_url: str, **extra: str) -> dict[str, str]:
    return {
        "VOR_REDIS_URL": redis_url,
        "VOR_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "VOR_API_KEYS": ",".join(f"{t}:{k}" for t, k in API_KEYS.items()),
        "VOR_ALLOWED_URL_NETWORKS": "127.0.0.0/8",
        "VOR_SVOR_BASE_URL": svor_url,
        "SVOR_API_KEY": SVOR_KEY,
        "VOR_WEBHOOK_BACKOFF_BASE_S": "0.05",
        "VOR_SVOR_POLL_DEADLINE_S": "60",
        "VOR_MAX_DURATION_S": "20",
        "VOR_MAX_UPLOAD_BYTES": str(5 * 1024 * 1024),
        "VOR_MAX_WIDTH": "1920",
        "VOR_MAX_HEIGHT": "1080",
        **extra,
    }


@pytest.fixture(scope="session")
def service(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, svor_server: str
) -> Iterator[EmbeddedService]:
    """The API and both workers, as real processes."""
    data_dir = tmp_path_factory.mktemp("vor")
    with EmbeddedService(data_dir, env=service_env(redis_url, svor_server), io_threads=4) as svc:
        yield svc


def api_client(service: EmbeddedService, tenant: str = "acme") -> httpx.Client:
    return httpx.Client(
        base_url=service.url,
        headers={"Authorization": f"Bearer {API_KEYS[tenant]}"},
        timeout=30,
    )


@pytest.fixture
def acme(service: EmbeddedService) -> Iterator[httpx.Client]:
    with api_client(service, "acme") as client:
        yield client


@pytest.fixture
def globex(service: EmbeddedService) -> Iterator[httpx.Client]:
    with api_client(service, "globex") as client:
        yield client


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    """96x64, 16 frames at 12 fps, one disc, with audio."""
    return make_clip(tmp_path_factory.mktemp("clips") / "disc.mp4", audio=True)


@pytest.fixture(scope="session")
def clip2(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    """128x80, 12 frames, two discs, no audio."""
    return make_clip(
        tmp_path_factory.mktemp("clips") / "two.mp4", width=128, height=80, frames=12, objects=2
    )


def shared_data() -> Path | None:
    return SHARED_DATA if SHARED_DATA.is_dir() else None
