"""What fair admission costs per job, against a plain enqueue, in one process.

    .venv/bin/python bench/dispatch.py [--jobs 2000] [--tenants 4]

On an embedded Redis of its own (no workers: the messages stay in the broker),
it times, per job:

- ``enqueue``: the Celery dispatcher's ``enqueue`` alone (the canvas, one
  message to the broker), as every job was queued before admission;
- ``admit+release``: ``Lifecycle.admit`` with room in the pool: the admit and
  release scripts, the job read again, its heartbeat, then the same enqueue;
- ``admit (pool full)``: ``Lifecycle.admit`` while the pool is full: the job
  only waits (the admit script and a release that finds no slot);
- ``end -> next``: giving a slot back and releasing the next waiting job
  (``done``, the release script, the job read, its enqueue), as every ending does.

Each figure is the mean over ``--jobs`` jobs spread over ``--tenants`` tenants.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.cli.embedded import free_port, start_redis  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--tenants", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vor-bench-dispatch-") as folder:
        port = free_port()
        redis_proc = start_redis(Path(folder) / "redis", port)
        os.environ.update(
            VOR_REDIS_URL=f"redis://127.0.0.1:{port}/0",
            VOR_BROKER_URL=f"redis://127.0.0.1:{port}/1",
            VOR_DATA_DIR=folder,
            VOR_WEBHOOK_SECRET="whsec_" + "YmVuY2g=" * 4,
        )
        try:
            run(args.jobs, args.tenants)
        finally:
            redis_proc.terminate()
            redis_proc.wait(10)


SPEC = {"engine": "local", "classes": [{"label": "a", "boxes": [[0, 0, 0.5, 0.5]]}]}
ROWS = ("enqueue", "admit+release", "admit (pool full)", "end -> next")


def timed(batch: list[Any], step: Callable[[Any], object]) -> float:
    began = time.perf_counter()
    for item in batch:
        step(item)
    return time.perf_counter() - began


def run(count: int, tenants: int, rounds: int = 4) -> None:
    from services import runtime
    from services.jobs.lifecycle import Lifecycle
    from services.jobs.store import new_job_id
    from services.models import Job, JobSpec
    from services.settings import get_settings
    from workers.dispatch import CeleryDispatcher

    dispatcher = CeleryDispatcher()
    dispatcher.warm_up()
    spec = JobSpec.model_validate(SPEC)

    def jobs(n: int) -> list[Job]:
        made = [Job(id=new_job_id(), tenant=f"t{i % tenants}", mode="remove", engine="local",
                    spec=spec) for i in range(n)]  # fmt: skip
        for job in made:
            runtime.get_store().create(job)
        return made

    def lifecycle(capacity: int) -> Lifecycle:
        found = runtime.lifecycle(dispatcher)
        found.settings = get_settings().model_copy(update={"dispatch_capacity": capacity})
        found.__post_init__()
        return found

    totals = dict.fromkeys(ROWS, 0.0)
    size = count // rounds
    open_pool, full = lifecycle(10 * count), lifecycle(1)
    for _ in range(rounds):
        totals["enqueue"] += timed(jobs(size), dispatcher.enqueue)
        batch = jobs(size)
        totals["admit+release"] += timed(batch, open_pool.admit)
        timed(batch, lambda job: open_pool.scheduler.done(job.id))
        waiting = jobs(size + 1)
        full.admit(waiting[0])
        totals["admit (pool full)"] += timed(waiting[1:], full.admit)
        holding = [waiting[0].id]
        totals["end -> next"] += timed([holding] * size, lambda held: end_then_next(full, held))
        full.scheduler.done(holding[0])
    report(totals, size * rounds, rounds, tenants)


def end_then_next(jobs: Any, holding: list[str]) -> None:
    """The ending of the job holding the slot, and the release of the next one."""
    jobs.scheduler.done(holding[0])
    holding[0] = jobs.dispatch()[0]


def report(totals: dict[str, float], count: int, rounds: int, tenants: int) -> None:
    print(f"{count} jobs per row in {rounds} alternating rounds, {tenants} tenants, "
          "Redis on loopback, no workers")  # fmt: skip
    mean = {name: total / count * 1e6 for name, total in totals.items()}
    for name, value in mean.items():
        print(f"{name:<20} {value:8.0f} us/job   {value / mean['enqueue']:5.2f}x enqueue")
    print(f"admission adds {mean['admit+release'] - mean['enqueue']:.0f} us/job to a submission "
          f"with room; a waiting job costs {mean['admit (pool full)']:.0f} us at submission "
          f"and {mean['end -> next']:.0f} us (its enqueue included) when a slot frees")  # fmt: skip


if __name__ == "__main__":
    main()
