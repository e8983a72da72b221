"""The stand-in as a real process, for tests and benchmarks: ``python -m services.standin``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start_standin(port: int, log: Path, *args: str, niceness: int = 0) -> subprocess.Popen[bytes]:
    """The stand-in on ``port`` as a real process, returned once it answers.

    ``args`` are ``vor svor-server`` flags. Its output is appended to ``log``, so a
    server restarted on the same port keeps one log.
    """
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.standin", "--port", str(port), *args],
            stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_stats", timeout=1).raise_for_status()
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the SVOR stand-in did not start; see {log}")
