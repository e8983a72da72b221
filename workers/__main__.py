"""``python -m workers <celery worker arguments>``: a Celery worker of vor.

``vor worker`` (and ``vor serve``'s supervisor) start workers this way, as a process,
so the command line never imports Celery. SIGTERM starts Celery's cold shutdown,
which with a soft-shutdown timeout first lets running stages finish for a while,
then restores their messages to the queue at once instead of leaving them
invisible until the visibility timeout.
"""

import os
import sys

os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")

from workers.celery_app import app  # noqa: E402 - Celery reads REMAP_SIGTERM at import

app.worker_main(sys.argv[1:])
