"""Small helpers for end-to-end tests: submit, wait, fetch."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "canceled"}


def submit(
    client: httpx.Client,
    spec: dict[str, Any],
    video: Path | None = None,
    *,
    mask: Path | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    files: dict[str, Any] = {}
    if video is not None:
        files["video"] = (video.name, video.read_bytes(), "video/mp4")
    if mask is not None:
        files["mask"] = (mask.name, mask.read_bytes(), "application/octet-stream")
    if not files:
        return client.post("/v1/jobs", json=spec, headers=headers or {})
    return client.post(
        "/v1/jobs", data={"spec": json.dumps(spec)}, files=files, headers=headers or {}
    )


def accepted(
    client: httpx.Client, spec: dict[str, Any], video: Path | None = None, **kwargs: Any
) -> dict[str, Any]:
    response = submit(client, spec, video, **kwargs)
    assert response.status_code == 202, response.text
    return dict(response.json())


def wait(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return dict(job)
        assert time.monotonic() < deadline, f"job {job_id} stuck: {job}"
        time.sleep(0.2)


def download(client: httpx.Client, url: str, dest: Path) -> Path:
    response = client.get(url)
    assert response.status_code == 200, response.text[:300]
    dest.write_bytes(response.content)
    return dest


def error_of(response: httpx.Response) -> dict[str, Any]:
    return dict(response.json()["error"])


def wait_for_stage(client: httpx.Client, job_id: str, stage: str, timeout: float = 60) -> None:
    """Wait until the job runs ``stage``; fail if it ends or never gets there."""
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/v1/jobs/{job_id}").json())["stage"] != stage:
        assert job["status"] not in TERMINAL, job
        assert time.monotonic() < deadline, f"never reached {stage}: {job}"
        time.sleep(0.05)
