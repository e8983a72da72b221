"""A worker process that dies mid-stage: its message is redelivered and the job finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from services.embedded import EmbeddedService
from services.synthetic import make_clip
from tests.helpers import accepted, wait

pytestmark = pytest.mark.timeout(240)


def pool_children(service: EmbeddedService, queue: str) -> list[int]:
    """The prefork pool processes of the worker consuming ``queue``."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True)
    workers = {proc.pid for proc in service.children}
    rows = [line.split(None, 2) for line in out.stdout.splitlines()]
    mains = [
        int(pid)
        for pid, ppid, args in rows
        if int(ppid) in workers and "--queues" in args and f"--queues {queue}" in args
    ]
    mains += [p for p in workers if f"--queues\x00{queue}\x00" in _cmdline(p)]
    return [int(pid) for pid, ppid, _ in rows if int(ppid) in mains]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


@pytest.mark.parametrize("stage", ["segment", "erase"])
def test_killed_worker_process_is_redelivered(
    acme: httpx.Client, service: EmbeddedService, tmp_path: Path, stage: str
) -> None:
    clip = make_clip(tmp_path / "long.mp4", width=320, height=192, frames=60, fps=24)
    spec = {"classes": [{"label": "disc", "boxes": [clip.box(0)]}]}
    job = accepted(acme, spec, clip.path)
    deadline = time.monotonic() + 60
    while acme.get(f"/v1/jobs/{job['id']}").json()["stage"] != stage:
        assert time.monotonic() < deadline, "the job never reached the stage"
        time.sleep(0.05)
    victims = pool_children(service, "cpu")
    assert victims, "found no pool process to kill"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    final = wait(acme, job["id"], timeout=180)
    assert final["status"] == "succeeded", final
    assert final["result"]["video_url"]
    key = "segment:disc" if stage == "segment" else stage
    assert final["runs"][key] == 2, final["runs"]
