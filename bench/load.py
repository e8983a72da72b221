"""Sustained load with faults: is every accepted job finished, and how fast is submit?

    python bench/load.py [--rate 50] [--jobs 1000] [--workers 2] [--no-faults]

Starts vor as real processes (embedded Redis with AOF, the API, CPU and I/O
workers) and ``vor svor-server --engine boxes`` (an upstream that answers with
realistic latency but costs no pixels), runs ``--warmup`` jobs to the end (a
service under sustained load has long finished starting), then submits
``--jobs`` svor-engine jobs at ``--rate`` per second from concurrent clients. While it runs it
injects the faults of the reliability issue: the CPU worker is killed with
SIGKILL (and restarted), Redis is restarted, and the upstream answers bursts
of 429 (with Retry-After) and 502/504 storms. It then waits until every
accepted job is terminal and prints: accepted submissions/s, p50/p99 submit
latency, completed jobs/min, and the final status of every accepted job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.cli.embedded import EmbeddedService, free_port  # noqa: E402
from services.cli.processes import kill_tree  # noqa: E402
from services.media.synthetic import make_clip  # noqa: E402
from services.standin.process import start_standin  # noqa: E402


def start_upstream(port: int, latency_s: float, log: Path) -> subprocess.Popen[bytes]:
    """The stand-in upstream, niced: in production it runs on other machines."""
    return start_standin(
        port, log, "--engine", "boxes", "--task-latency-s", str(latency_s), niceness=10
    )


async def submit_all(url: str, clip: Path, spec: dict, jobs: int, rate: float) -> tuple[list, list]:
    """Submit at a steady rate; returns (accepted ids with latency, refusals)."""
    payload = clip.read_bytes()
    accepted: list[tuple[str, float]] = []
    refused: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=30,
                                 limits=httpx.Limits(max_connections=64)) as client:  # fmt: skip

        async def one(index: int) -> None:
            began = time.perf_counter()
            try:
                response = await client.post(
                    "/v1/jobs",
                    data={"spec": json.dumps(spec)},
                    files={"video": ("clip.mp4", payload, "video/mp4")},
                    headers={"Idempotency-Key": f"load-{index}"},
                )
            except httpx.HTTPError:
                refused.append(0)
                return
            latency = time.perf_counter() - began
            if response.status_code == 202:
                accepted.append((response.json()["id"], latency, began - start))
            else:
                refused.append(response.status_code)

        start = time.perf_counter()
        tasks = []
        for index in range(jobs):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    return accepted, refused


def warm_up(url: str, clip: Path, spec: dict, count: int, finish: bool) -> None:
    """Jobs before the measured run, so it sees a service that has finished starting
    (the workers' imports and first jobs), as sustained load does."""
    with httpx.Client(base_url=url, timeout=30) as client:
        ids = [
            client.post(
                "/v1/jobs",
                data={"spec": json.dumps(spec)},
                files={"video": ("clip.mp4", clip.read_bytes(), "video/mp4")},
            ).json()["id"]
            for _ in range(count)
        ]
    if finish:
        wait_all(url, ids, timeout=300)


def chaos(service: EmbeddedService, upstream: str, duration: float, log: list[str]) -> None:
    """Break things at fixed points of the run."""
    plan = [
        (0.2, "upstream: 20x 429 with Retry-After 1",
         lambda: httpx.post(f"{upstream}/_faults", json={"burst_429": 20, "retry_after": 1})),
        (0.35, "kill -9 of the CPU worker, then restart it", lambda: _kill_worker(service)),
        (0.5, "upstream: 10x 502 and 10x 504",
         lambda: httpx.post(f"{upstream}/_faults", json={"fail_502": 10, "fail_504": 10})),
        (0.65, "Redis restart (AOF)", lambda: service.restart_redis(down_s=1.0)),
    ]  # fmt: skip
    began = time.monotonic()
    for at, what, act in plan:
        time.sleep(max(0.0, began + at * duration - time.monotonic()))
        log.append(f"t={time.monotonic() - began:5.1f}s {what}")
        act()


def _kill_worker(service: EmbeddedService) -> None:
    worker = service.processes["worker-cpu"]
    kill_tree(worker.pid)
    worker.wait(10)
    service.restart("worker-cpu")


def wait_all(url: str, ids: list[str], timeout: float) -> dict[str, str]:
    status: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=30) as client:
        pending = list(ids)
        while pending and time.monotonic() < deadline:
            still = []
            for job_id in pending:
                try:
                    job = client.get(f"/v1/jobs/{job_id}").json()
                except (httpx.HTTPError, ValueError):
                    still.append(job_id)
                    continue
                status[job_id] = job.get("status", "unknown")
                if status[job_id] not in {"succeeded", "failed", "canceled"}:
                    still.append(job_id)
            pending = still
            if pending:
                time.sleep(1)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.5, help="upstream seconds per task")
    parser.add_argument("--no-faults", action="store_true")
    parser.add_argument(
        "--upstream-rate",
        type=float,
        default=200,
        help="shared limiter: upstream calls/s (the stand-in has no limit)",
    )
    parser.add_argument("--upstream-concurrency", type=int, default=32)
    parser.add_argument("--api-processes", type=int, default=1)
    parser.add_argument(
        "--api-only",
        action="store_true",
        help="stop the workers first: submit latency of the API alone",
    )
    parser.add_argument("--drain-timeout", type=float, default=1800)
    parser.add_argument(
        "--warmup", type=int, default=4, help="jobs run to the end before the measured run"
    )
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vor-load-"))
    clip = make_clip(folder / "clip.mp4", width=96, height=64, frames=8, fps=8)
    spec = {"engine": "svor", "classes": [{"label": "disc", "boxes": [clip.box(0)]}]}
    port = free_port()
    upstream_url = f"http://127.0.0.1:{port}"
    upstream = start_upstream(port, args.latency, folder / "svor.log")
    env = {"VOR_SVOR_BASE_URL": upstream_url, "VOR_STALL_TIMEOUT_S": "10",
           "VOR_HEARTBEAT_S": "2", "VOR_SWEEP_INTERVAL_S": "2",
           "VOR_SVOR_RATE_LIMIT_PER_S": str(args.upstream_rate),
           "VOR_SVOR_MAX_CONCURRENCY": str(args.upstream_concurrency)}  # fmt: skip
    events: list[str] = []
    try:
        with EmbeddedService(folder / "vor", workers=args.workers, io_threads=16,
                             api_processes=args.api_processes, env=env) as service:  # fmt: skip
            duration = args.jobs / args.rate
            warm_up(service.url, clip.path, spec, args.warmup, finish=not args.api_only)
            if args.api_only:
                for name in ("worker-cpu", "worker-io"):
                    service.processes[name].terminate()
                    service.processes[name].wait(60)
            elif not args.no_faults:
                threading.Thread(target=chaos, args=(service, upstream_url, duration, events),
                                 daemon=True).start()  # fmt: skip
            began = time.monotonic()
            accepted, refused = asyncio.run(
                submit_all(service.url, clip.path, spec, args.jobs, args.rate)
            )
            submitted_s = time.monotonic() - began
            ids = [] if args.api_only else [a[0] for a in accepted]
            status = wait_all(service.url, ids, args.drain_timeout)
            done_s = time.monotonic() - began
    finally:
        upstream.terminate()
    report(args, accepted, refused, status, submitted_s, done_s, events)


def report(args, accepted, refused, status, submitted_s, done_s, events) -> None:  # noqa: ANN001
    latencies = sorted(latency for _, latency, _ in accepted)
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else float("nan")
    unique = len({job_id for job_id, _, _ in accepted})
    counts = Counter(status.values())
    terminal = sum(counts[s] for s in ("succeeded", "failed", "canceled"))
    print(
        f"target rate {args.rate:g}/s, {args.jobs} submissions, {args.workers} CPU worker(s), "
        f"upstream latency {args.latency:g} s, faults {'off' if args.no_faults else 'on'}, "
        f"after {args.warmup} warm-up jobs"
    )
    for line in events:
        print(f"  fault {line}")
    print(
        f"accepted            {len(accepted)} ({unique} distinct jobs), refused {len(refused)} "
        f"{dict(Counter(refused))}"
    )
    print(f"accepted/s          {len(accepted) / submitted_s:.1f}")
    print(f"submit latency      p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    slowest: dict[int, float] = {}
    for _, latency, at in accepted:
        slowest[int(at)] = max(slowest.get(int(at), 0.0), latency * 1000)
    slow = [f"{second} s: {ms:.0f} ms" for second, ms in sorted(slowest.items()) if ms > 100]
    print(f"seconds over 100 ms {', '.join(slow) or 'none'} (slowest submission in that second)")
    if args.api_only:
        print("jobs                not run: --api-only stops the workers before submitting")
        return
    print(
        f"completed jobs/min  {counts['succeeded'] / done_s * 60:.1f} "
        f"(all terminal after {done_s:.0f} s)"
    )
    print(
        f"final status        {dict(counts)}; terminal {terminal}/{unique}; "
        f"lost {unique - terminal}"
    )


if __name__ == "__main__":
    main()
