"""/openapi.json tells the truth, checked by tools nobody here wrote.

- Schemathesis (its ``st run`` command line, as a user runs it) against a real
  ``vor api`` process: every check, every phase (examples, coverage, fuzzing,
  stateful sequences through the links it infers from ``Location`` and the
  schema), two tenants (its object-level authorization check reads one
  tenant's jobs as the other), and a hook that puts a real small video in each
  generated upload. Bounded by ``ST_SECONDS``; any failed check, or any 5xx,
  fails the test. Its configuration (``tests/support/schemathesis.toml``) says
  which 422s a schema cannot rule out, and why.
- openapi-python-client generates a client from the live /openapi.json; the
  generated code submits a job, reads it back as a typed ``Job``, and reads a
  422 and a 404 as typed ``Error`` values.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from services.cli.embedded import EmbeddedService, free_port
from services.media.synthetic import SyntheticClip, make_clip
from tests.conftest import API_KEYS, service_env
from tests.helpers import wait
from tests.support.processes import ROOT, start_api, user_env

SUPPORT = ROOT / "tests" / "support"
ST_SECONDS = 90
"""Schemathesis's time budget: fuzzing and stateful testing repeat until it is spent."""


@pytest.fixture(scope="module")
def api_alone(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    """``vor api`` without workers, on a Redis database of its own: what Schemathesis
    creates stays queued, and no worker of the session spends minutes on it."""
    base, _, db = redis_url.rpartition("/")
    own_db = f"{base}/{int(db) + 2}"
    redis.Redis.from_url(own_db).flushdb()
    folder = tmp_path_factory.mktemp("contract")
    port = free_port()
    env = service_env(own_db, "http://127.0.0.1:9", VOR_DATA_DIR=str(folder / "data"),
                      VOR_LOG_FORMAT="text")  # fmt: skip
    proc = start_api(port, {**user_env(), **env}, folder / "api.log")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(15)
    redis.Redis.from_url(own_db).flushdb()


@pytest.mark.timeout(ST_SECONDS + 120)
def test_schemathesis_finds_nothing(api_alone: str, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "upload.mp4", frames=8)
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"schemaVersion": "1.0", "auth": [
        {"name": tenant, "fixedHeaders": [{"name": "Authorization", "value": f"Bearer {key}"}]}
        for tenant, key in API_KEYS.items()
    ]}))  # fmt: skip
    env = {**user_env(), "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
           "VOR_ST_VIDEO": str(clip.path), "PYTHONPATH": str(ROOT)}  # fmt: skip
    report = tmp_path / "report.json"
    run = subprocess.run(
        [st_command(), "--config-file", str(SUPPORT / "schemathesis.toml"), "--no-color", "run",
         f"{api_alone}/openapi.json", "--auth-wfc", str(auth), "--checks", "all",
         "--phases", "examples,coverage,fuzzing,stateful", "--max-time", str(ST_SECONDS),
         "--max-examples", "25", "--workers", "1", "--request-timeout", "20",
         "--report", "ndjson", "--report-ndjson-path", str(report)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=ST_SECONDS + 100,
    )  # fmt: skip
    (tmp_path / "st.out").write_text(run.stdout + run.stderr)
    summary = run.stdout[run.stdout.find("SUMMARY") :]
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts and counts[1] == counts[2], summary
    statuses = server_statuses(report)
    assert statuses, "Schemathesis sent nothing"
    assert not [s for s in statuses if s >= 500], f"5xx answers: {sorted(set(statuses))}"
    assert {202, 200, 204, 401, 404, 422} <= set(statuses), sorted(set(statuses))


def st_command() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    assert found, "Schemathesis's `st` is not installed (pip install -e '.[dev]')"
    return found


def server_statuses(report: Path) -> list[int]:
    """Every HTTP status the API answered, from Schemathesis's NDJSON event log."""
    found: list[int] = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            response = value.get("response")
            if isinstance(response, dict) and isinstance(response.get("status_code"), int):
                found.append(response["status_code"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for line in report.read_text().splitlines():
        walk(json.loads(line))
    return found


# ---------------------------------------------------------------- a generated client


@pytest.fixture(scope="module")
def generated_client(service: EmbeddedService, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """openapi-python-client's package for vor, generated from the live schema."""
    folder = tmp_path_factory.mktemp("client")
    schema = folder / "openapi.json"
    schema.write_text(httpx.get(f"{service.url}/openapi.json", timeout=10).text)
    tool = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert tool, "openapi-python-client is not installed (pip install -e '.[dev]')"
    run = subprocess.run(
        [tool, "generate", "--path", str(schema), "--output-path", str(folder / "vor_client"),
         "--meta", "none"],
        capture_output=True, text=True, timeout=120, cwd=folder,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Warning" not in run.stdout + run.stderr, run.stdout + run.stderr
    return folder


CLIENT_SCRIPT = """
import json, sys, time
from pathlib import Path
from vor_client import AuthenticatedClient
from vor_client.api.jobs import create_job, get_job
from vor_client.models import CreateJobFilesBody as Body, Error, Job, JobSpec, Status
from vor_client.types import File

url, key, video = sys.argv[1:4]
client = AuthenticatedClient(base_url=url, token=key, raise_on_unexpected_status=True)
spec = JobSpec.from_dict({"classes": [{"label": "disc", "boxes": [json.loads(sys.argv[4])]}]})
with open(video, "rb") as handle:
    body = Body(video=File(payload=handle, file_name="clip.mp4", mime_type="video/mp4"), spec=spec)
    answer = create_job.sync_detailed(client=client, body=body)
assert answer.status_code == 202, answer
job = answer.parsed
assert isinstance(job, Job), type(job)
assert job.status in (Status.QUEUED, Status.RUNNING), job.status
while True:
    job = get_job.sync(client=client, id=job.id)
    assert isinstance(job, Job), type(job)
    if job.status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELED):
        break
    time.sleep(0.2)
print("job", job.id, job.status.value, job.input_.width, job.input_.frames,
      sorted(job.result.additional_properties))

bad = JobSpec.from_dict({"classes": [{"label": "disc", "boxes": [[0.5, 0.5, 0.9, 0.2]]}]})
with open(video, "rb") as handle:
    body = Body(video=File(payload=handle, file_name="clip.mp4", mime_type="video/mp4"), spec=bad)
    refused = create_job.sync_detailed(client=client, body=body)
assert refused.status_code == 422 and isinstance(refused.parsed, Error), refused
print("422", refused.parsed.error.code, refused.parsed.error.field)

missing = get_job.sync_detailed(client=client, id="job_00000000000000000000")
assert missing.status_code == 404 and isinstance(missing.parsed, Error), missing
print("404", missing.parsed.error.code, missing.parsed.error.field)
"""


@pytest.mark.timeout(180)
def test_a_generated_client_submits_reads_and_understands_errors(
    service: EmbeddedService, generated_client: Path, clip: SyntheticClip, tmp_path: Path
) -> None:
    script = tmp_path / "use_client.py"
    script.write_text(CLIENT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(generated_client)}
    run = subprocess.run(
        [sys.executable, str(script), service.url, API_KEYS["acme"], str(clip.path),
         json.dumps(clip.box(0))],
        env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    job_id = lines[0].split()[1]
    assert lines[0] == (f"job {job_id} succeeded 96 16 ['mask_url', 'preview_url', 'video_url']"), (
        lines[0]
    )
    assert lines[1] == "422 invalid_spec spec.classes[0].boxes"
    assert lines[2] == "404 not_found id"
    with httpx.Client(base_url=service.url, headers={"Authorization": "Bearer key-acme"}) as c:
        assert wait(c, job_id)["status"] == "succeeded"
