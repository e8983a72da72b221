"""What the API gained for the console, tested as any client would use it.

The spec and a signed ``input_url`` on every job, the tenant's live feed of job
changes (``GET /v1/events``), ``POST /v1/probe``, a segment job that re-prompts
a class of an earlier one (``from_job``), and the console's static files.
"""

from __future__ import annotations

import fnmatch
import json
import queue
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli.embedded import EmbeddedService
from services.media.synthetic import SyntheticClip
from tests.conftest import api_client
from tests.helpers import accepted, error_of, submit, wait

pytestmark = pytest.mark.timeout(120)


def disc_spec(clip: SyntheticClip, **extra: Any) -> dict[str, Any]:
    return {"classes": [{"label": "disc", "boxes": [clip.box(0)]}], **extra}


def test_a_job_shows_its_spec_and_a_signed_url_of_its_input(
    acme: httpx.Client, clip: SyntheticClip
) -> None:
    spec = disc_spec(clip, mode="segment")
    job = accepted(acme, spec, clip.path)
    assert job["spec"]["mode"] == "segment"
    assert job["spec"]["classes"][0]["boxes"] == [list(clip.box(0))]
    assert job["spec"]["classes"][0]["label"] == "disc"
    assert "input_url" not in job["result"], "result holds what the job made"
    before = httpx.get(job["input_url"])
    assert before.status_code == 200
    assert before.content == clip.path.read_bytes()
    assert httpx.get(job["input_url"] + "x").status_code == 401


@contextmanager
def feed(service: EmbeddedService, tenant: str) -> Iterator[queue.Queue[tuple[str, Any]]]:
    """The tenant's ``/v1/events`` read on a thread; yields once the stream is subscribed."""
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    ready = threading.Event()
    client = api_client(service, tenant)

    def read() -> None:
        try:
            with client.stream("GET", "/v1/events", timeout=httpx.Timeout(30, read=60)) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                name = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        name = line.removeprefix("event: ")
                    elif line.startswith("data: "):
                        if name == "ready":
                            ready.set()
                        else:
                            events.put((str(name), json.loads(line.removeprefix("data: "))))
        except httpx.HTTPError:
            pass  # closed by the test

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert ready.wait(10), "no 'ready' event"
    try:
        yield events
    finally:
        client.close()


def drain_until(events: queue.Queue[tuple[str, Any]], done: Any, timeout: float = 60) -> list:
    seen: list[tuple[str, Any]] = []
    while True:
        event = events.get(timeout=timeout)
        seen.append(event)
        if done(event):
            return seen


def test_the_tenant_feed_shows_new_changed_and_deleted_jobs(
    service: EmbeddedService, acme: httpx.Client, globex: httpx.Client, clip: SyntheticClip
) -> None:
    with feed(service, "acme") as events:
        other = accepted(globex, disc_spec(clip), clip.path)
        job = accepted(acme, disc_spec(clip), clip.path)
        done = {"id": job["id"], "status": "succeeded"}
        seen = drain_until(events, lambda e: done.items() <= e[1].items())
        assert other["id"] not in {data["id"] for _, data in seen}, "another tenant's job"
        mine = [data for _, data in seen if data["id"] == job["id"]]
        assert mine[0] == {"id": job["id"], "status": "queued", "stage": None, "progress": 0}
        assert {"compress", "segment", "erase", "publish"} <= {data["stage"] for data in mine}
        assert acme.delete(f"/v1/jobs/{job['id']}").status_code == 204
        gone = drain_until(events, lambda e: e[0] == "deleted" and e[1]["id"] == job["id"])
        assert gone[-1] == ("deleted", {"id": job["id"]})
    wait(globex, other["id"])
    assert httpx.get(f"{service.url}/v1/events").status_code == 401


def test_probe_reads_a_video_and_refuses_what_is_not_one(
    acme: httpx.Client, clip: SyntheticClip, tmp_path: Path
) -> None:
    response = acme.post("/v1/probe", files={"video": ("disc.mp4", clip.path.read_bytes())})
    assert response.status_code == 200, response.text
    assert response.json()["input"] | {"size_bytes": None} == {
        "duration_s": pytest.approx(16 / 12, abs=0.01), "width": 96, "height": 64,
        "fps": 12.0, "frames": 16, "audio": True, "codec": "h264", "rotation": 0,
        "size_bytes": None,
    }  # fmt: skip
    text = acme.post("/v1/probe", files={"video": ("notes.mp4", b"not a video at all\n" * 50)})
    assert text.status_code == 422
    assert error_of(text)["code"] == "invalid_input"
    assert error_of(text)["field"] == "video"
    assert "video" in error_of(text)["message"]
    engine = acme.post(
        "/v1/probe", data={"engine": "gpu"}, files={"video": ("d.mp4", clip.path.read_bytes())}
    )
    assert error_of(engine)["field"] == "engine"
    empty = acme.post(
        "/v1/probe", data={"engine": ""}, files={"video": ("d.mp4", clip.path.read_bytes())}
    )
    assert empty.status_code == 422 and error_of(empty)["field"] == "engine"
    extra = acme.post(
        "/v1/probe", data={"colour": "red"}, files={"video": ("d.mp4", clip.path.read_bytes())}
    )
    assert extra.status_code == 422 and error_of(extra)["field"] == "colour"
    missing = acme.post("/v1/probe", data={"engine": "local"})
    assert missing.status_code == 422 and error_of(missing)["field"] == "video"
    assert httpx.post(acme.base_url.join("/v1/probe"), files={"video": b"x"}).status_code == 401


def test_a_segment_job_reprompts_one_class_and_reuses_the_other(
    acme: httpx.Client, clip2: SyntheticClip, tmp_path: Path
) -> None:
    top = {"label": "top", "boxes": [list(clip2.box(0, 1))]}
    x, y, w, h = clip2.box(0, 2)
    bottom = {"label": "bottom", "points": [[x + w / 2, y + h / 2]], "point_labels": [1]}
    spec = {"mode": "segment", "classes": [top, bottom]}
    first = wait(acme, accepted(acme, spec, clip2.path)["id"])
    assert first["status"] == "succeeded", first

    bottom_again = {"label": "bottom", "boxes": [[x, y, w, h]]}
    spec = {"mode": "segment", "from_job": first["id"], "classes": [top, bottom_again]}
    again = wait(acme, accepted(acme, spec)["id"])
    assert again["status"] == "succeeded", again
    assert "compress" not in again["runs"] and "segment:top" not in again["runs"]
    assert again["runs"]["segment:bottom"] == 1
    assert again["segments"]["top"] == first["segments"]["top"]
    assert again["segments"]["bottom"]["objects"][0]["box"] == pytest.approx([x, y, w, h], abs=0.08)
    assert {"preview_url", "preview_url_bottom", "overlay_url_bottom"} <= set(again["result"])
    assert httpx.get(again["input_url"]).content == clip2.path.read_bytes()

    removed = wait(
        acme,
        accepted(
            acme,
            {"from_job": again["id"], "classes": [bottom_again], "targets": {"bottom": [1]}},
        )["id"],
    )
    assert removed["status"] == "succeeded", removed

    unknown = submit(acme, {"mode": "segment", "from_job": "job_nope", "classes": [top]})
    assert unknown.status_code == 422 and error_of(unknown)["field"] == "from_job"
    with_video = submit(acme, spec, clip2.path)
    assert with_video.status_code == 422 and error_of(with_video)["field"] == "from_job"


def test_the_console_is_served_with_its_assets(service: EmbeddedService) -> None:
    root = httpx.get(f"{service.url}/ui")
    assert root.status_code == 307 and root.headers["location"] == "ui/"
    page = httpx.get(f"{service.url}/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="app.js">' in page.text
    script = httpx.get(f"{service.url}/ui/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    for name in ("nope.js", "..", "index.py", "%2e%2e%2fapp.py"):
        assert httpx.get(f"{service.url}/ui/{name}").status_code == 404, name
    assert "/ui/" not in httpx.get(f"{service.url}/openapi.json").json()["paths"]


def test_every_console_file_ships_in_the_package() -> None:
    """``pip install .`` takes package data by the globs in pyproject.toml: each file matches."""
    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["api"]
    files = [p.relative_to(root / "api") for p in (root / "api" / "ui").iterdir()]
    assert files
    for name in files:
        assert any(fnmatch.fnmatch(str(name), glob) for glob in globs), name
