"""One running copy of a stage at a time, and a heartbeat while it runs.

A stage holds a lease in Redis (``SET NX`` with a TTL) that a background
thread renews; the same thread touches the job so the sweeper knows its worker
is alive. A second copy of the message (a redelivery after the visibility
timeout, or an ETA retry held past it) finds the lease taken and stands down.
"""

from __future__ import annotations

import logging
import secrets
import threading
from types import TracebackType

from services.jobs.store import JobStore

log = logging.getLogger("vor.lease")


def ttl_s(heartbeat_s: float) -> float:
    """How long a lease lives unrenewed: three heartbeats, so one late beat loses nothing."""
    return heartbeat_s * 3


class StageLease:
    def __init__(self, store: JobStore, job_id: str, key: str, *, heartbeat_s: float) -> None:
        self.store = store
        self.job_id = job_id
        self.name = f"{job_id}:{key}"
        self.token = secrets.token_hex(8)
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s(heartbeat_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self.store.acquire_lease(self.name, self.token, self.ttl_s):
            return False
        self.store.touch(self.job_id)
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.store.renew_lease(self.name, self.token, self.ttl_s):
                    log.warning("lease %s was lost", self.name)
                self.store.touch(self.job_id)
            except Exception:
                log.warning("heartbeat of %s failed; retrying", self.name, exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 1)
        try:
            self.store.release_lease(self.name, self.token)
        except Exception:
            log.warning("could not release lease %s; it expires by itself", self.name)

    def __enter__(self) -> StageLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
