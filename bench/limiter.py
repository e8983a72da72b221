"""Upstream 429s with the shared limiter off and on: 8 workers against a rate-limited SVOR.

    .venv/bin/python bench/limiter.py [--rate 5] [--workers 8] [--calls 4] [--share 0.9]

Starts an embedded Redis and ``vor svor-server --rate-limit-per-s RATE`` (its
token bucket answers 429 with ``Retry-After`` past RATE requests per second),
makes a tiny clip, then runs WORKERS processes at once, each with its own
``SvorClient`` and ``httpx.Client`` like Celery workers, each doing CALLS
segment calls (submit, poll to the end, download the mask). Once with no
limiter, once with the shared Redis limiter at SHARE x RATE per second (burst
one second's worth, at most 8 calls in flight). Prints one row per mode: the
calls made and completed, the 429s the upstream sent, the client's retries,
HTTP requests, wall time and completed calls per second.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.cli.embedded import free_port, start_redis  # noqa: E402
from services.engines.svor.client import SvorClient, SvorPrompt  # noqa: E402
from services.engines.svor.ratelimit import UpstreamLimiter  # noqa: E402
from services.errors import VorError  # noqa: E402
from services.media.synthetic import make_clip  # noqa: E402
from services.standin.process import start_standin  # noqa: E402

GO_KEY = "bench:go"


def worker(job: dict[str, Any], results: Any) -> None:
    """One Celery-worker stand-in: its own clients, ``calls`` segment calls once told to go."""
    r = redis.Redis.from_url(job["redis_url"])
    limiter = None
    if job["limit_per_s"]:
        limiter = UpstreamLimiter(
            r, "svor:bench", rate_per_s=job["limit_per_s"], max_concurrency=8, lease_s=90
        )
    client = SvorClient(
        httpx.Client(timeout=30),
        base_url=job["svor_url"],
        api_key=None,
        max_retries=job["max_retries"],
        limiter=limiter,
    )
    prompt = SvorPrompt(boxes=[tuple(job["box"])])
    out = Path(job["folder"])
    while not r.exists(GO_KEY):
        time.sleep(0.002)
    ok, failed = 0, dict[str, int]()
    for call in range(job["calls"]):
        try:
            result = client.segment(Path(job["clip"]), prompt)
            client.download(result.video_url, out / f"w{job['index']}-{call}.mkv")
            ok += 1
        except VorError as exc:
            failed[exc.code] = failed.get(exc.code, 0) + 1
    results.put(
        {
            "ok": ok,
            "failed": failed,
            "retries": client.stats["retries"],
            "requests": client.stats["requests"],
            "limiter_wait_s": client.stats["limiter_wait_s"],
            "done_at": time.time(),
        }
    )


def run_mode(args: argparse.Namespace, common: dict[str, Any], limit_per_s: float) -> dict:
    svor_url = common["svor_url"]
    r = redis.Redis.from_url(common["redis_url"])
    r.flushdb()
    httpx.post(f"{svor_url}/_faults", json={"rate_limit_per_s": args.rate}).raise_for_status()
    httpx.delete(f"{svor_url}/_stats").raise_for_status()
    time.sleep(1.0)  # let the upstream's bucket fill up
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=worker,
            args=({**common, "index": i, "limit_per_s": limit_per_s}, results),
        )
        for i in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    time.sleep(3.0)  # imports in every worker
    started = time.time()
    r.set(GO_KEY, 1)
    rows = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(30)
    stats = httpx.get(f"{svor_url}/_stats").json()["requests"]
    retries: dict[str, int] = {}
    failed: dict[str, int] = {}
    for row in rows:
        for cause, n in row["retries"].items():
            retries[cause] = retries.get(cause, 0) + n
        for code, n in row["failed"].items():
            failed[code] = failed.get(code, 0) + n
    wall = max(row["done_at"] for row in rows) - started
    ok = sum(row["ok"] for row in rows)
    return {
        "mode": f"on ({limit_per_s:g}/s)" if limit_per_s else "off",
        "calls": args.workers * args.calls,
        "ok": ok,
        "failed": failed,
        "429s": sum(by.get("429", 0) for by in stats.values()),
        "retries": retries,
        "requests": sum(row["requests"] for row in rows),
        "limiter_wait_s": sum(row["limiter_wait_s"] for row in rows),
        "wall_s": wall,
        "per_s": ok / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=5.0, help="the upstream's limit, per s")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--calls", type=int, default=4, help="segment calls per worker")
    parser.add_argument("--share", type=float, default=0.9, help="our limit, times --rate")
    parser.add_argument("--max-retries", type=int, default=5, help="the client's, per request")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vor-bench-limiter-"))
    clip = make_clip(folder / "clip.mp4")
    redis_port, svor_port = free_port(), free_port()
    redis_proc = start_redis(folder / "redis", redis_port)
    svor = start_standin(svor_port, folder / "svor.log", "--rate-limit-per-s", str(args.rate))
    common = {
        "redis_url": f"redis://127.0.0.1:{redis_port}/0",
        "svor_url": f"http://127.0.0.1:{svor_port}",
        "clip": str(clip.path),
        "box": list(clip.box(0)),
        "folder": str(folder),
        "calls": args.calls,
        "max_retries": args.max_retries,
    }
    try:
        rows = [run_mode(args, common, 0.0), run_mode(args, common, args.share * args.rate)]
    finally:
        svor.terminate()
        redis_proc.terminate()
    print(
        f"upstream limit {args.rate:g} req/s (429 + Retry-After past it); {args.workers} worker "
        f"processes x {args.calls} segment calls (submit, poll, download); "
        f"client max_retries {args.max_retries}"
    )
    head = (
        f"{'limiter':<14} {'calls':>5} {'ok':>4} {'429s':>5} {'retries':>7} {'requests':>8} "
        f"{'wait s':>7} {'wall s':>7} {'ok/s':>6}  failed, retries by cause"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        print(
            f"{row['mode']:<14} {row['calls']:>5} {row['ok']:>4} {row['429s']:>5} "
            f"{sum(row['retries'].values()):>7} {row['requests']:>8} "
            f"{row['limiter_wait_s']:>7.1f} {row['wall_s']:>7.2f} {row['per_s']:>6.2f}  "
            f"{row['failed'] or '-'}, {row['retries'] or '-'}"
        )
    print("wait s: time all workers together spent waiting for the shared limiter")


if __name__ == "__main__":
    main()
