"""Helpers that start vor's processes for tests (the process-tree tools are
``services.cli.processes``; the stand-in's starter is ``services.standin.process``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def start_api(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``vor api`` alone on ``port`` as a real process, returned once /readyz answers 200."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"vor api did not start; see {log}")


def user_env() -> dict[str, str]:
    """This process's environment without vor's own settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("VOR_", "SVOR_"))}
