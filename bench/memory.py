"""Memory of vor's processes at steady state, and whether it grows over many jobs.

    .venv/bin/python bench/memory.py [--jobs 500] [--every 50] [--inflight 4]

Starts vor (embedded Redis, API, a prefork CPU worker, a threaded I/O worker)
and ``vor svor-server --engine boxes`` at zero latency as real processes, then
runs ``--jobs`` svor-engine remove jobs on a tiny clip in batches of
``--every`` (``--inflight`` at a time). After each batch, with the service
idle, it reads the resident set size (VmRSS in /proc) of every vor process
and of their children (the prefork pool's processes), and prints them at
each sample, with the growth from the first sample past the warm-up to the
last.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import start_upstream  # noqa: E402
from services.cli.client import VorClient  # noqa: E402
from services.cli.embedded import EmbeddedService, free_port  # noqa: E402
from services.media.synthetic import make_clip  # noqa: E402


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, from each process's parent id in /proc/*/stat."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def sample(service: EmbeddedService) -> dict[str, tuple[int, int]]:
    """{role: (pid, RSS kB)} for the named processes, their children and Redis."""
    out: dict[str, tuple[int, int]] = {}
    named = dict(service.processes)
    if service.redis is not None:
        named["redis"] = service.redis
    for name, proc in named.items():
        rss = rss_kb(proc.pid)
        if rss is not None:
            out[name] = (proc.pid, rss)
        for index, child in enumerate(children(proc.pid), start=1):
            rss = rss_kb(child)
            if rss is not None:
                out[f"{name} child {index}"] = (child, rss)
    return out


def run_job(client: VorClient, spec: dict[str, Any], clip: Path) -> str:
    job = client.submit(spec, clip)
    return str(client.wait(job["id"], poll_s=0.05)["status"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--every", type=int, default=50, help="sample after every N jobs")
    parser.add_argument("--inflight", type=int, default=4, help="jobs running at once")
    parser.add_argument("--workers", type=int, default=2, help="CPU worker processes")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vor-memory-"))
    clip = make_clip(folder / "clip.mp4", width=96, height=64, frames=8, fps=8)
    spec = {"engine": "svor", "classes": [{"label": "disc", "boxes": [clip.box(0)]}]}
    port = free_port()
    upstream = start_upstream(port, 0.0, folder / "svor.log")
    env = {"VOR_SVOR_BASE_URL": f"http://127.0.0.1:{port}"}
    samples: list[tuple[int, float, dict[str, tuple[int, int]]]] = []
    statuses: dict[str, int] = {}
    try:
        with EmbeddedService(folder / "vor", workers=args.workers, env=env) as service:
            client = VorClient(service.url)
            samples.append((0, 0.0, sample(service)))
            began = time.monotonic()
            done = 0
            with ThreadPoolExecutor(args.inflight) as pool:
                while done < args.jobs:
                    batch = min(args.every, args.jobs - done)
                    for status in pool.map(lambda _: run_job(client, spec, clip.path),
                                           range(batch)):  # fmt: skip
                        statuses[status] = statuses.get(status, 0) + 1
                    done += batch
                    time.sleep(1.0)  # let the last job's bookkeeping settle
                    samples.append((done, time.monotonic() - began, sample(service)))
    finally:
        upstream.terminate()
    report(args, samples, statuses)


def report(args: argparse.Namespace, samples: list, statuses: dict[str, int]) -> None:
    roles = sorted({role for _, _, s in samples for role in s})
    print(
        f"{args.jobs} svor-engine jobs on a 96x64x8 clip, upstream `svor-server --engine boxes`,"
        f" {args.inflight} in flight, CPU pool of {args.workers}; statuses: {statuses}"
    )
    head = f"{'process':24} " + " ".join(f"{'job ' + str(n):>9}" for n, _, _ in samples)
    head += f" {'growth':>9} {'pid same':>8}"
    print("RSS in MB after each batch")
    print(head)
    print("-" * len(head))
    first = 1 if len(samples) > 1 else 0
    for role in roles:
        values = [s.get(role) for _, _, s in samples]
        cells = " ".join(f"{v[1] / 1024:9.1f}" if v else f"{'-':>9}" for v in values)
        start, end = values[first], values[-1]
        growth = f"{(end[1] - start[1]) / 1024:+9.1f}" if start and end else f"{'-':>9}"
        same = "yes" if start and end and start[0] == end[0] else "no"
        print(f"{role:24} {cells} {growth} {same:>8}")
    totals = [sum(v[1] for v in s.values()) / 1024 for _, _, s in samples]
    print(f"{'total':24} " + " ".join(f"{t:9.1f}" for t in totals)
          + f" {totals[-1] - totals[first]:+9.1f}")  # fmt: skip
    print("elapsed s: " + ", ".join(f"job {n}: {t:.0f}" for n, t, _ in samples[1:]))
    print(f"growth = last sample - sample at job {samples[first][0]}")


if __name__ == "__main__":
    main()
