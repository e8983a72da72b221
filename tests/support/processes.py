"""Process-tree helpers for tests that break vor's real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    parents: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = (int(v) for v in line.split())
        parents.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Signal a process and everything under it at once, as a container's death would."""
    victims = [pid, *descendants(pid)]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, sig)
    return victims


def start_svor_server(
    port: int, log: Path, *args: str, niceness: int = 0
) -> subprocess.Popen[bytes]:
    """``vor svor-server`` on ``port`` as a real process, returned once it answers.

    Its output is appended to ``log``, so a server restarted on the same port
    keeps one log.
    """
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "svor-server", "--port", str(port), *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
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
    raise RuntimeError(f"svor-server did not start; see {log}")


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
