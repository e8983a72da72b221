"""Batches: submit time, dispatch overhead per item, completion rate, another tenant's wait.

    .venv/bin/python bench/batches.py [--items 2000] [--run-items 200] [--workers 1,2,4]
                                      [--threads 2] [--latency 0.3] [--parts dispatch,completion]

Every item is a ``video_url`` job of the svor engine on a small clip served on
loopback, against ``vor svor-server --engine boxes --task-latency-s LATENCY``.

1. **Dispatch** (``--items``, 2,000): one service whose CPU worker is stopped, so
   nothing runs and the machine's two cores serve the API, Redis and the I/O
   worker that expands the batch. One batch of N items: the time its POST
   takes (submit), and from the POST until every item is a queued job
   (expansion, per item). Then the same N jobs one by one, ``POST /v1/jobs``
   from 8 threads of this process: the time per job, and the ratio. Last, a
   second batch's POST (the API's parser process, started by the first large
   body, is warm then), canceled at once.
2. **Completion** (``--run-items`` per run; the machine's 2 cores cannot run
   2,000 items three times in a bench's time): for each I/O worker count, a
   fresh service (one CPU worker of 2 processes, N I/O workers x THREADS) runs
   a batch of tenant A's; items/s is the batch's items over its POST to its
   ``completed_at``. While it runs, tenant B submits one job: B's wait is its
   ``started_at - created_at``, and whether it finished before A's batch.
"""

from __future__ import annotations

import argparse
import statistics
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
from services.cli.batch import Source, served  # noqa: E402
from services.cli.client import VorClient  # noqa: E402
from services.cli.embedded import EmbeddedService, free_port, worker_args  # noqa: E402
from services.media.synthetic import make_clip  # noqa: E402

KEYS = {"a": "key-tenant-a", "b": "key-tenant-b"}


def service_env(upstream: str) -> dict[str, str]:
    return {
        "VOR_SVOR_BASE_URL": upstream,
        "VOR_SVOR_RATE_LIMIT_PER_S": "0",
        "VOR_SVOR_MAX_CONCURRENCY": "0",
        "VOR_ALLOWED_URL_NETWORKS": "127.0.0.0/8",
        "VOR_API_KEYS": ",".join(f"{t}:{k}" for t, k in KEYS.items()),
        "VOR_LOG_FORMAT": "text",
    }


def stamp(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def wait_batch(client: VorClient, batch_id: str, until: set[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (batch := client.batch(batch_id))["status"] not in until:
        if time.monotonic() > deadline:
            raise SystemExit(f"batch {batch_id} still {batch['status']}: {batch['counts']}")
        time.sleep(0.1)
    return batch


def dispatch(folder: Path, upstream: str, body: dict[str, Any], n: int) -> dict[str, float]:
    env = service_env(upstream)
    with EmbeddedService(folder / "dispatch", workers=1, io_threads=2, env=env) as service:
        cpu = service.processes["worker-cpu"]
        cpu.terminate()
        cpu.wait(30)
        client = VorClient(service.url, api_key=KEYS["a"])
        began = time.perf_counter()
        batch = client.submit_batch({**body, "items": body["items"][:n]})
        submit_s = time.perf_counter() - began
        wait_batch(client, batch["id"], {"running", "completed"}, timeout=600)
        expand_s = time.perf_counter() - began
        one = {**body["spec"], "video_url": body["items"][0]["video_url"]}
        began = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: client.submit(one)["id"], range(n)))
        single_s = time.perf_counter() - began
        began = time.perf_counter()
        again = client.submit_batch({**body, "items": body["items"][:n]})
        warm_s = time.perf_counter() - began
        client.http.post(f"/v1/batches/{again['id']}/cancel")
    return {
        "n": n, "submit_s": submit_s, "warm_s": warm_s, "expand_s": expand_s, "single_s": single_s
    }  # fmt: skip


def completion(
    folder: Path, upstream: str, body: dict[str, Any], args: argparse.Namespace, workers: int
) -> dict[str, Any]:
    env = service_env(upstream)
    with EmbeddedService(folder / f"run-{workers}", workers=2, io_threads=args.threads,
                         env=env) as service:  # fmt: skip
        for extra in range(1, workers):
            argv = worker_args("io", "threads", args.threads)
            service._spawn("workers", *argv, name=f"worker-io-{extra}")
        time.sleep(3)  # the extra workers connect to the broker
        a = VorClient(service.url, api_key=KEYS["a"])
        b = VorClient(service.url, api_key=KEYS["b"])
        batch = a.submit_batch({**body, "items": body["items"][: args.run_items]})
        wait_batch(a, batch["id"], {"running", "completed"}, timeout=args.timeout)
        one = {**body["spec"], "video_url": body["items"][0]["video_url"]}
        b_job = b.wait(b.submit(one)["id"], timeout=args.timeout, poll_s=0.2)
        final = wait_batch(a, batch["id"], {"completed"}, timeout=args.timeout)
    rate = args.run_items / (stamp(final["completed_at"]) - stamp(final["created_at"]))
    return {
        "workers": workers,
        "ok": final["counts"]["succeeded"],
        "rate": rate,
        "b_wait": stamp(b_job["started_at"]) - stamp(b_job["created_at"]),
        "b_before_a": stamp(b_job["finished_at"]) < stamp(final["completed_at"]),
        "b_status": b_job["status"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--run-items", type=int, default=200)
    parser.add_argument("--workers", default="1,2,4", help="I/O worker process counts")
    parser.add_argument("--threads", type=int, default=2, help="threads per I/O worker process")
    parser.add_argument("--latency", type=float, default=0.3, help="upstream seconds per task")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--parts", default="dispatch,completion")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vor-batches-"))
    clip = make_clip(folder / "clip.mp4", width=96, height=64, frames=8, fps=8)
    spec = {"engine": "svor", "classes": [{"label": "disc", "boxes": [clip.box(0)]}]}
    port = free_port()
    upstream = start_upstream(port, args.latency, folder / "svor.log")
    try:
        with served([Source(ref="clip", path=clip.path)], "127.0.0.1") as urls:
            items = [{"video_url": urls["clip"], "ref": f"{i:05d}"} for i in range(args.items)]
            body = {"spec": spec, "items": items}
            if "dispatch" in args.parts:
                report_dispatch(dispatch(folder, f"http://127.0.0.1:{port}", body, args.items))
            if "completion" in args.parts:
                runs = []
                for n in [int(x) for x in args.workers.split(",")]:
                    httpx.delete(f"http://127.0.0.1:{port}/_stats")
                    runs.append(completion(folder, f"http://127.0.0.1:{port}", body, args, n))
                report_completion(args, runs)
    finally:
        upstream.terminate()


def report_dispatch(d: dict[str, float]) -> None:
    n = d["n"]
    per_item, per_job = d["expand_s"] / n * 1000, d["single_s"] / n * 1000
    print(f"dispatch of {n:.0f} items (CPU worker stopped: nothing runs)")
    print(f"  batch POST answered in            {d['submit_s'] * 1000:8.1f} ms (first: starts "
          "the API's parser process)")  # fmt: skip
    print(f"  a second batch POST answered in   {d['warm_s'] * 1000:8.1f} ms")
    print(f"  every item a queued job after     {d['expand_s']:8.2f} s  ({per_item:.2f} ms/item)")
    print(f"  the same jobs one by one (8 thr.) {d['single_s']:8.2f} s  ({per_job:.2f} ms/job)")
    print(f"  batch / one by one                {per_item / per_job:8.2f}")


def report_completion(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    print(
        f"completion: {args.run_items} items per run, upstream boxes at {args.latency:g} s per "
        f"task, I/O workers x {args.threads} threads, CPU pool of 2 processes"
    )
    head = f"{'io workers':>10} {'ok':>5} {'items/s':>8} {'B wait s':>9} {'B before A':>10}"
    print(head)
    print("-" * len(head))
    for r in runs:
        print(
            f"{r['workers']:10d} {r['ok']:5d} {r['rate']:8.2f} {r['b_wait']:9.2f} "
            f"{'yes' if r['b_before_a'] else 'no':>10}"
        )
    print(f"mean B wait {statistics.mean(r['b_wait'] for r in runs):.2f} s")


if __name__ == "__main__":
    main()
