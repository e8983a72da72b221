"""Throughput against worker processes when the upstream is slow: completed jobs/min.

    .venv/bin/python bench/scaling.py [--workers 1,2,4] [--threads 2] [--latency 2] [--jobs 40]

A "worker process" here is one ``vor worker --queues io --pool threads
--concurrency THREADS`` process: the svor engine's segment and erase stages
wait on the upstream there, which is what a slow upstream makes the
bottleneck. The CPU stages (compress, mask_convert, merge, publish) run in
one ``vor worker --queues cpu --pool prefork`` of ``--cpu`` processes, the
same in every run (the machine's cores do not grow with the I/O workers).
vor's own limits on calls to the upstream (``VOR_SVOR_RATE_LIMIT_PER_S``,
``VOR_SVOR_MAX_CONCURRENCY``) are lifted, since they would cap the
throughput by design; the upstream is ``vor svor-server --engine boxes
--task-latency-s LATENCY``.

For each worker count, a fresh service gets ``max(--jobs, 10 x threads x
workers)`` jobs at once (ten rounds or more, so the first and last rounds
weigh little); the rate is all jobs over first submit to last finish, and is
compared with the one-worker rate times the worker count. (A window over the
finish times would mislead here: the I/O queue is FIFO, so every job's
segment runs before the first erase and the finishes bunch in the second
half of the run.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import start_upstream  # noqa: E402
from services.cli.client import VorClient  # noqa: E402
from services.cli.embedded import EmbeddedService, free_port  # noqa: E402
from services.media.synthetic import make_clip  # noqa: E402

TERMINAL = {"succeeded", "failed", "canceled"}


def run_once(
    folder: Path, upstream: str, clip: Path, spec: dict[str, Any], args: argparse.Namespace, n: int
) -> dict[str, Any]:
    env = {
        "VOR_SVOR_BASE_URL": upstream,
        "VOR_SVOR_RATE_LIMIT_PER_S": "0",
        "VOR_SVOR_MAX_CONCURRENCY": "0",
    }
    jobs = max(args.jobs, 10 * args.threads * n)
    with EmbeddedService(folder / f"vor-{n}", workers=args.cpu, io_threads=args.threads,
                         env=env) as service:  # fmt: skip
        for extra in range(1, n):
            service._spawn(
                "worker", "--queues", "io", "--pool", "threads",
                "--concurrency", str(args.threads), name=f"worker-io-{extra}",
            )  # fmt: skip
        time.sleep(3)  # the extra workers connect to the broker
        client = VorClient(service.url)
        began = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(lambda _: client.submit(spec, clip)["id"], range(jobs)))
        submitted = time.monotonic() - began
        finished = wait_all(client, ids, timeout=args.timeout)
    done = [j for j in finished if j["status"] == "succeeded"]
    ends = sorted(datetime.fromisoformat(j["finished_at"]).timestamp() for j in done)
    starts = [datetime.fromisoformat(j["created_at"]).timestamp() for j in finished]
    overall = len(done) / (max(ends) - min(starts)) * 60 if done else float("nan")
    return {"n": n, "jobs": jobs, "ok": len(done), "rate": overall,
            "submit_s": submitted, "wall_s": ends[-1] - min(starts) if done else float("nan"),
            "timings": [j["timings"] for j in done]}  # fmt: skip


def wait_all(client: VorClient, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    jobs: dict[str, dict[str, Any]] = {}
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        still = []
        for job_id in pending:
            job = client.get(job_id)
            if job["status"] in TERMINAL:
                jobs[job_id] = job
            else:
                still.append(job_id)
        pending = still
        if pending:
            time.sleep(1.0)
    if pending:
        raise SystemExit(f"{len(pending)} jobs still not done after {timeout:g} s")
    return list(jobs.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="I/O worker process counts")
    parser.add_argument("--threads", type=int, default=2, help="threads per I/O worker process")
    parser.add_argument("--cpu", type=int, default=2, help="CPU worker processes (every run)")
    parser.add_argument("--latency", type=float, default=2.0, help="upstream seconds per task")
    parser.add_argument("--jobs", type=int, default=40, help="least jobs per run")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vor-scaling-"))
    clip = make_clip(folder / "clip.mp4", width=96, height=64, frames=8, fps=8)
    spec = {"engine": "svor", "classes": [{"label": "disc", "boxes": [clip.box(0)]}]}
    port = free_port()
    upstream_url = f"http://127.0.0.1:{port}"
    upstream = start_upstream(port, args.latency, folder / "svor.log")
    results = []
    try:
        for n in [int(x) for x in args.workers.split(",")]:
            httpx.delete(f"{upstream_url}/_stats")
            results.append(run_once(folder, upstream_url, clip.path, spec, args, n))
    finally:
        upstream.terminate()
    report(args, results)


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    print(
        f"svor engine, upstream `svor-server --engine boxes --task-latency-s {args.latency:g}`; "
        f"I/O worker processes x {args.threads} threads; CPU pool of {args.cpu} processes"
    )
    head = (
        f"{'io workers':>10} {'threads':>7} {'jobs':>5} {'ok':>4} {'jobs/min':>9} "
        f"{'linear':>7} {'of linear':>9} {'wall s':>7} "
        f"{'segment s':>9} {'erase s':>7}"
    )
    print(head)
    print("-" * len(head))
    base = results[0]["rate"] / results[0]["n"]
    for r in results:
        linear = base * r["n"]
        seg = sum(t.get("segment", 0) for t in r["timings"]) / max(1, len(r["timings"]))
        erase = sum(t.get("erase", 0) for t in r["timings"]) / max(1, len(r["timings"]))
        print(
            f"{r['n']:10d} {r['n'] * args.threads:7d} {r['jobs']:5d} {r['ok']:4d} "
            f"{r['rate']:9.1f} {linear:7.1f} {r['rate'] / linear:9.2f} "
            f"{r['wall_s']:7.1f} {seg:9.2f} {erase:7.2f}"
        )
    worst = min(r["rate"] / (base * r["n"]) for r in results)
    print(
        f"jobs/min = succeeded jobs / (last finish - first submit); segment s, erase s: mean "
        f"stage time. Target >= 0.8 of linear: "
        f"{'met' if worst >= 0.8 else 'MISSED'} (worst {worst:.2f})"
    )


if __name__ == "__main__":
    main()
