"""``python -m workers [--queues cpu,io] [--pool prefork] [--concurrency N]``: a vor worker.

``vor worker`` becomes this process and ``vor serve``'s supervisor starts it, so the
command line never imports Celery. SIGTERM starts Celery's cold shutdown, which with
a soft-shutdown timeout first lets running stages finish for a while, then restores
their messages to the queue at once instead of leaving them invisible until the
visibility timeout.
"""

from __future__ import annotations

import argparse
import os
import sys

from services.errors import NotConfigured
from services.models import Queue
from services.settings import get_settings


def parser() -> argparse.ArgumentParser:
    found = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    queues = ",".join(Queue)
    found.add_argument("--queues", default=queues, help=f"comma-separated: {queues}")
    found.add_argument("--concurrency", type=int, default=None)
    found.add_argument("--pool", choices=["prefork", "threads", "solo"], default="prefork")
    found.add_argument("--loglevel", default="INFO")
    return found


def celery_argv(args: argparse.Namespace, pid: int) -> list[str]:
    """Celery's ``worker`` command line for vor's flags; the node is named by its queues
    and process id, so the workers of one machine never share a name."""
    argv = [
        "worker",
        "--queues",
        args.queues,
        "--pool",
        args.pool,
        "--loglevel",
        args.loglevel,
        "--hostname",
        f"{args.queues.replace(',', '-')}-{pid}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    if get_settings().log_format == "json":
        argv.insert(0, "--quiet")
    return argv


def main(argv: list[str]) -> int:
    argv_of_celery = celery_argv(parser().parse_args(argv), os.getpid())
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")  # read when Celery is imported
    from workers.celery_app import app

    try:
        app.worker_main(argv_of_celery)
    except NotConfigured as exc:
        print(f"vor: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
