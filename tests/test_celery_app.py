"""The Celery app's result backend is vor's own, whatever form the Redis URL takes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
from celery.app.backends import by_url
from workers.celery_app import app
backend, url = by_url(app.conf.result_backend)
print(backend.__name__, url, app.conf.result_backend_thread_safe)
"""


@pytest.mark.parametrize(
    ("redis_url", "backend_url"),
    [
        ("redis://127.0.0.1:6379/3", "redis://127.0.0.1:6379/3"),
        ("rediss://cache.internal:6380/0", "rediss://cache.internal:6380/0"),
        ("redis+socket:///run/redis.sock", "socket:///run/redis.sock"),
    ],
)
def test_result_backend_reads_every_redis_url(redis_url: str, backend_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOR_")}
    env["VOR_REDIS_URL"] = redis_url
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["UnwatchedRedisBackend", backend_url, "True"]
