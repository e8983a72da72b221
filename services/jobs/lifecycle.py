"""A job's life in one place: submit, cancel, delete, redeliver, fail, succeed, clean up.

The states form one machine: ``queued -> running -> succeeded | failed | canceled``,
and a terminal state is final. The job store writes each transition atomically
(``start_stage`` moves a job to running, ``finish`` ends it and leaves an ended job
as it is); this module is the only one that ends a job, so every ending does the
same things: the state, the clean-up of the job's scratch files, the metrics and
the webhook. Every failure, whoever finds it (a stage's error, a crash, an input
that killed its worker too often, a stage the sweeper found past its time limit),
goes through ``fail``.

Stages and webhook deliveries reach the queue through a ``Dispatcher`` handed in
at start-up (``services.runtime`` names the Celery one), so nothing here knows
which queue runs them. A job reaches the dispatcher only once the ``Scheduler``
releases it (``dispatch``): an accepted job waits for a slot, and every ending
gives its slot back and releases the next job, so tenants share the workers.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from services import logs, metrics
from services.errors import Conflict, NotFound, VorError
from services.jobs import notifications, submission, webhooks
from services.jobs.scheduler import Scheduler, pool_of
from services.jobs.store import JobStore
from services.models import Job, JobError, Stage, Status
from services.settings import Settings
from services.storage import Storage

log = logging.getLogger("vor.jobs")


class Dispatcher(Protocol):
    """How jobs reach workers: the one interface between the job lifecycle and a queue."""

    def enqueue(self, job: Job) -> None:
        """Queue the stages ``job`` has still to run (``plan.plan``)."""
        ...

    def notify(self, job_id: str, event: str, *, snapshot: Job | None = None) -> None:
        """Queue one delivery of ``event``'s webhook; ``snapshot`` is the job as it was
        when it is about to be deleted, so the delivery does not need the store."""
        ...

    def warm_up(self) -> None:
        """Connect to the queue and declare what a submission uses (best effort)."""
        ...

    def queued_jobs(self, *, held_for_less_than_s: float) -> set[str]:
        """Jobs with a message waiting in a queue, or taken by a worker less than
        ``held_for_less_than_s`` ago (the sweeper leaves those alone)."""
        ...

    def depths(self) -> metrics.QueueDepths:
        """Messages waiting per queue, and those workers hold (for ``/metrics``)."""
        ...


def job_error(exc: BaseException, stage: Stage | None) -> JobError:
    """What a job's ``error`` says about ``exc``, raised in ``stage`` (None: in the queue)."""
    where = stage.value if stage else None
    if isinstance(exc, VorError):
        return JobError(code=exc.code, message=exc.message, stage=exc.stage or where)
    return JobError(
        code="internal_error",
        message=f"vor failed unexpectedly in {where or 'the queue'} "
        f"({type(exc).__name__}: {exc}); retrying will not help until this is fixed: "
        "report the job id",
        stage=where,
    )


@dataclass
class Lifecycle:
    """The job service: what the API and the workers do to a job, and nothing else does."""

    store: JobStore
    storage: Storage
    settings: Settings
    dispatcher: Dispatcher
    scheduler: Scheduler = field(init=False)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.store.redis, self.settings, prefix=self.store.prefix)

    def submit(self, sub: submission.Submission) -> tuple[Job, bool]:
        """Check, store and enqueue a job. Returns the job and whether it is new.

        A request is checked in full before its ``Idempotency-Key`` is looked up, so
        a retry is answered as the first request was: the same job when it was
        accepted, the same error when it was not. A key already used for another
        spec is a conflict, never that other job.
        """
        job = submission.accept(sub, store=self.store, settings=self.settings)
        if sub.idempotency_key:
            existing = self.store.by_idempotency_key(sub.tenant, sub.idempotency_key)
            if existing is not None:
                submission.check_replay(existing, sub.spec)
                return existing, False
        self.scheduler.check_room(sub.tenant)
        submission.store_files(job, sub, self.storage)
        job, created = self.store.create(job)
        if created:
            self.admit(job)
        return job, created

    def admit(self, job: Job) -> None:
        """Let the job wait for a slot, then release what may start. A job that holds a
        slot already (enqueued again after its worker died) goes to the queue at once."""
        if not self.scheduler.admit(job):
            self.dispatcher.enqueue(job)
        self.dispatch([pool_of(job, self.settings)])

    def dispatch(self, pools: list[str] | None = None) -> list[str]:
        """Hand the jobs the scheduler releases (in ``pools``, default all) to the
        dispatcher; their ids.

        A released job that ended meanwhile (canceled while it waited, or left by
        a crash) gives its slot back at once and the next one is taken. A crash
        between the release and the enqueue leaves a job with a slot and no
        message: the sweeper enqueues it again, as it does a job whose worker died.
        """
        sent: list[str] = []
        for _ in range(100):
            freed = False
            for job_id in self.scheduler.release(pools):
                job = self.store.get(job_id)
                if job is None or job.status.is_terminal():
                    freed = self.scheduler.done(job_id) or freed
                    continue
                self.store.touch(job_id)
                self.dispatcher.enqueue(job)
                sent.append(job_id)
            if not freed:
                break
        return sent

    def cancel(self, job: Job) -> Job:
        """Stop a queued or running job; its running stage stops at its next progress check."""
        if job.status.is_terminal():
            raise Conflict(f"job {job.id} already {job.status.value}", field="id")
        ended = self._end(job.id, Status.canceled)
        if ended is not None:
            log.info("job canceled")
            self.notify(job.id, "job.canceled")
            return ended
        return self.store.require(job.id)

    def delete(self, job: Job) -> None:
        """Forget a job and every file it stored; a job still running is canceled first,
        as ``cancel`` does (its ``job.canceled`` webhook goes out from a snapshot)."""
        ended = None if job.status.is_terminal() else self._end(job.id, Status.canceled)
        self.storage.delete_prefix(f"jobs/{job.id}/")
        self.store.delete(ended or self.store.get(job.id) or job)
        log.info("job deleted")
        if ended is not None:
            self.notify(job.id, "job.canceled", snapshot=ended)

    def redeliver(self, job: Job) -> str:
        """Queue the job's terminal webhook again (after its receiver was down); the event."""
        if not job.status.is_terminal():
            raise Conflict(
                f"job {job.id} is {job.status.value}; nothing to redeliver yet", field="id"
            )
        if not job.spec.webhook_url:
            raise Conflict(f"job {job.id} has no webhook_url", field="webhook_url")
        event = f"job.{job.status.value}"
        self.dispatcher.notify(job.id, event)
        return event

    def fail(self, job_id: str, stage: Stage | None, exc: BaseException) -> Job | None:
        """End a job as failed: the one way every failure goes, whoever finds it.

        Returns the failed job, or None when the job had already ended (then nothing
        else is done: the first ending stands).
        """
        error = job_error(exc, stage)
        job = self._end(job_id, Status.failed, error=error)
        if job is None or job.error != error:
            return None
        log.warning("job failed in %s: %s (%s)", error.stage, error.message, error.code)
        metrics.job_failed(self.store.redis, error.code, error.stage or "none")
        self.notify(job_id, "job.failed")
        return job

    def succeed(self, job_id: str, stage: str, seconds: float) -> Job | None:
        """Mark the last stage done and end the job as succeeded (after its results are
        stored); None when the job had already ended."""
        self.store.complete_stage(job_id, stage, seconds)
        job = self._end(job_id, Status.succeeded, stage=None)
        if job is not None:
            self.notify(job_id, "job.succeeded")
        return job

    def requeue(self, job_id: str) -> Job:
        """Enqueue a stalled job again from its first stage not done; older copies of its
        messages become stale (the generation goes up)."""
        job = self.store.bump_generation(job_id)
        self.store.touch(job_id)
        self.admit(job)
        return job

    def notify(self, job_id: str, event: str, *, snapshot: Job | None = None) -> None:
        """Queue ``event``'s webhook if the job asked for it."""
        job = snapshot or self.store.get(job_id)
        if job is not None and notifications.wants(job, event):
            self.dispatcher.notify(job_id, event, snapshot=snapshot)

    def deliver(
        self,
        job_id: str,
        event: str,
        *,
        attempt: int,
        client: httpx.Client,
        secret: str,
        seq: str | None = None,
        snapshot: Job | None = None,
    ) -> float | None:
        """One attempt at ``event``'s webhook (the ``attempt``-th); the seconds to wait
        before the next, or None when no other is due (delivered, gone, given up, or
        a progress event, which is best effort). ``seq`` tells one ``job.progress``
        message apart from the job's others (``notifications.new_message``)."""
        job = self.store.get(job_id) or snapshot
        if job is None:
            return None
        logs.bind(tenant=job.tenant)
        last = attempt >= self.settings.webhook_max_attempts
        outcome = notifications.deliver_event(
            job,
            event,
            attempt=attempt,
            store=self.store,
            secret=secret,
            timeout_s=self.settings.webhook_timeout_s,
            client=client,
            result=self.result_urls(job),
            last_attempt=last,
            seq=seq,
        )
        if outcome is None:
            return None
        again = outcome.retryable and event in notifications.TERMINAL_EVENTS and not last
        metrics.webhook_delivered(
            self.store.redis, event, notifications.metric_outcome(outcome, again)
        )
        return (
            webhooks.backoff_s(attempt, base=self.settings.webhook_backoff_base_s)
            if again
            else None
        )

    def cleanup(self, job_id: str) -> None:
        """Remove the job's scratch files on this machine (stored files stay)."""
        shutil.rmtree(self.settings.work_dir / job_id, ignore_errors=True)

    def result_urls(self, job: Job) -> dict[str, str]:
        """The client-facing URLs of a job's published files, signed afresh."""
        expires = self.settings.url_expiry_s
        return {
            name.removeprefix("result:"): self.storage.url(key, expires_s=expires)
            for name, key in job.artifacts.items()
            if name.startswith("result:")
        }

    def input_url(self, job: Job) -> str | None:
        """The video as the client sent it, signed afresh (for before/after views)."""
        key = job.artifacts.get("input")
        return self.storage.url(key, expires_s=self.settings.url_expiry_s) if key else None

    def view(self, job: Job) -> dict[str, Any]:
        """A job as clients see it: its public fields, result URLs and input URL."""
        return job.public(self.result_urls(job), self.input_url(job))

    def _end(self, job_id: str, status: Status, **fields: object) -> Job | None:
        """Move the job to ``status`` and clean up; the job, or None if it had ended."""
        try:
            job = self.store.finish(job_id, status, **fields)
        except NotFound:
            # Deleted while a stage ran: nothing to end, and nothing of it may stay,
            # including what the stage stored after the deletion.
            log.info("job %s was deleted while it ran; its files are removed", job_id)
            self.cleanup(job_id)
            self.storage.delete_prefix(f"jobs/{job_id}/")
            self._free(job_id)
            return None
        self.cleanup(job_id)
        self._free(job_id)
        return job if job.status is status else None

    def _free(self, job_id: str) -> None:
        """Give an ended job's slot back (or take it out of the waiting set) and release
        the next jobs; the sweeper's ``reconcile`` repeats this after a crash."""
        if self.scheduler.done(job_id):
            self.dispatch()
