"""A small client of vor's REST API, used by ``vor remove`` and ``vor demo``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "canceled"}
STREAM_READ_TIMEOUT_S = 45.0
"""Three of the server's 15 s keep-alives: a stream silent for longer is dead."""


class ApiError(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        error = body.get("error") or {}
        field = f" (field {error['field']})" if error.get("field") else ""
        super().__init__(f"{status} {error.get('code', 'error')}: {error.get('message')}{field}")
        self.status = status
        self.body = body


class VorClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = {"error": {"code": "http_error", "message": response.text[:300]}}
        if response.status_code >= 400:
            raise ApiError(response.status_code, body)
        return dict(body)

    def submit(
        self,
        spec: dict[str, Any],
        video: Path | None = None,
        *,
        mask: Path | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if video is None:
            return self._json(self.http.post("/v1/jobs", json=spec, headers=headers))
        files: dict[str, Any] = {"video": (video.name, video.open("rb"), "video/mp4")}
        if mask is not None:
            files["mask"] = (mask.name, mask.open("rb"), "application/octet-stream")
        try:
            response = self.http.post(
                "/v1/jobs", data={"spec": json.dumps(spec)}, files=files, headers=headers
            )
        finally:
            for part in files.values():
                part[1].close()
        return self._json(response)

    def submit_batch(
        self, body: dict[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json(self.http.post("/v1/batches", json=body, headers=headers))

    def batch(self, batch_id: str, *, offset: int = 0, limit: int = 1) -> dict[str, Any]:
        params = {"offset": offset, "limit": limit}
        return self._json(self.http.get(f"/v1/batches/{batch_id}", params=params))

    def batch_items(self, batch_id: str) -> list[dict[str, Any]]:
        """Every item of the batch, a page of 500 at a time."""
        items: list[dict[str, Any]] = []
        offset: int | None = 0
        while offset is not None:
            page = self.batch(batch_id, offset=offset, limit=500)
            items += page["items"]
            offset = page["next_offset"]
        return items

    def get(self, job_id: str) -> dict[str, Any]:
        return self._json(self.http.get(f"/v1/jobs/{job_id}"))

    def wait(
        self,
        job_id: str,
        *,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        timeout: float = 3600,
        poll_s: float = 0.25,
    ) -> dict[str, Any]:
        """Follow the job until it ends, calling ``on_update`` with each state; the job."""
        for state in self.follow(job_id, timeout=timeout, poll_s=poll_s):
            if on_update:
                on_update(state)
        return self.get(job_id)

    def follow(
        self, job_id: str, *, timeout: float = 3600, poll_s: float = 0.25
    ) -> Iterator[dict[str, Any]]:
        """The job's state (status, stage, progress) at once and on each change, until it ends.

        Reads the job's server-sent events; when the stream cannot be opened or
        breaks off before the end, goes on by polling ``GET /v1/jobs/{id}``.
        """
        deadline = time.monotonic() + timeout
        try:
            for state in self._events(job_id, deadline):
                yield state
                if state["status"] in TERMINAL:
                    return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        yield from self._poll(job_id, deadline, poll_s)

    def _events(self, job_id: str, deadline: float) -> Iterator[dict[str, Any]]:
        timeout = httpx.Timeout(self.http.timeout.connect, read=STREAM_READ_TIMEOUT_S)
        url = f"/v1/jobs/{job_id}/events"
        headers = {"Accept": "text/event-stream"}
        with self.http.stream("GET", url, headers=headers, timeout=timeout) as response:
            kind = response.headers.get("content-type", "")
            if response.status_code != 200 or not kind.startswith("text/event-stream"):
                return
            for name, data in sse_events(_until(deadline, job_id, response.iter_lines())):
                if name == "job":
                    yield dict(json.loads(data))

    def _poll(self, job_id: str, deadline: float, poll_s: float) -> Iterator[dict[str, Any]]:
        while True:
            job = self.get(job_id)
            yield job
            if job["status"] in TERMINAL:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} at the timeout")
            time.sleep(poll_s)

    def download(self, url: str, dest: Path) -> Path:
        with self.http.stream("GET", url) as response:
            if response.status_code >= 400:
                response.read()
                self._json(response)
            with dest.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        return dest


def _until(deadline: float, job_id: str, lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not end within the timeout")
        yield line


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) of each server-sent event in a stream's lines; comments skipped."""
    name, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


class ProgressBar:
    """One line on stderr: a bar, the percentage, status and stage."""

    def __init__(self, stream: Any = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width

    def __call__(self, job: dict[str, Any]) -> None:
        filled = int(job.get("progress", 0) * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        where = job.get("stage") or job["status"]
        self.stream.write(f"\r[{bar}] {job.get('progress', 0) * 100:5.1f}% {where:<13}")
        if job["status"] in TERMINAL:
            self.stream.write("\n")
        self.stream.flush()
