"""The REST API against real processes: validation, auth, tenants, idempotency, listing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from services.cli.embedded import EmbeddedService
from services.media.synthetic import SyntheticClip
from tests.helpers import accepted, error_of, submit, wait

pytestmark = pytest.mark.timeout(120)


def box_spec(clip: SyntheticClip, **extra: object) -> dict[str, object]:
    return {"classes": [{"label": "disc", "boxes": [clip.box(0)]}], **extra}


def test_health_and_openapi(service: EmbeddedService) -> None:
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{service.url}/readyz").json()
    assert ready["checks"] == {"redis": "ok", "storage": "ok"}
    spec = httpx.get(f"{service.url}/openapi.json").json()
    post = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(post)
    assert "JobSpec" in spec["components"]["schemas"]


def test_auth_required(service: EmbeddedService, clip: SyntheticClip) -> None:
    response = submit(httpx.Client(base_url=service.url), box_spec(clip), clip.path)
    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"
    wrong = httpx.get(f"{service.url}/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_submit_answers_at_once_with_location(acme: httpx.Client, clip: SyntheticClip) -> None:
    response = submit(acme, box_spec(clip), clip.path)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] in {"queued", "running"}
    assert job["input"] == {
        "duration_s": pytest.approx(16 / 12, abs=0.01), "width": 96, "height": 64,
        "fps": 12.0, "frames": 16, "audio": True, "codec": "h264", "rotation": 0,
        "size_bytes": clip.path.stat().st_size,
    }  # fmt: skip


def test_tenant_isolation(acme: httpx.Client, globex: httpx.Client, clip: SyntheticClip) -> None:
    job = accepted(acme, box_spec(clip), clip.path)
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("DELETE", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/webhooks/redeliver"),
    ]:
        response = globex.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
    listed = globex.get("/v1/jobs").json()["jobs"]
    assert job["id"] not in {j["id"] for j in listed}
    reuse = submit(globex, {"mode": "remove", "from_job": job["id"]})
    assert reuse.status_code == 422
    assert error_of(reuse)["field"] == "from_job"
    assert acme.get(f"/v1/jobs/{job['id']}").status_code == 200


def test_idempotency_key_returns_the_same_job(
    acme: httpx.Client, globex: httpx.Client, clip: SyntheticClip
) -> None:
    headers = {"Idempotency-Key": "batch-42-clip-7"}
    first = submit(acme, box_spec(clip), clip.path, headers=headers)
    again = submit(acme, box_spec(clip), clip.path, headers=headers)
    other_tenant = submit(globex, box_spec(clip), clip.path, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert other_tenant.json()["id"] != first.json()["id"]


def test_a_reused_idempotency_key_is_checked_like_a_new_request(
    acme: httpx.Client, clip: SyntheticClip
) -> None:
    headers = {"Idempotency-Key": "batch-42-clip-8"}
    first = submit(acme, box_spec(clip), clip.path, headers=headers)
    assert first.status_code == 202, first.text
    no_video = acme.post(
        "/v1/jobs", files={"spec": (None, json.dumps(box_spec(clip)))}, headers=headers
    )
    assert no_video.status_code == 422, no_video.text
    assert error_of(no_video)["field"] == "video"
    other_spec = submit(acme, {**box_spec(clip), "mode": "segment"}, clip.path, headers=headers)
    assert other_spec.status_code == 409, other_spec.text
    assert error_of(other_spec)["field"] == "Idempotency-Key"
    assert first.json()["id"] in error_of(other_spec)["message"]
    wait(acme, first.json()["id"])


def test_list_filters_and_pages(acme: httpx.Client, clip: SyntheticClip) -> None:
    ids = [accepted(acme, box_spec(clip), clip.path)["id"] for _ in range(3)]
    seen: list[str] = []
    cursor = None
    for _ in range(50):
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = acme.get("/v1/jobs", params=params).json()
        assert len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen))
    assert set(ids) <= set(seen)
    assert seen.index(ids[2]) < seen.index(ids[0])
    for job_id in ids:
        wait(acme, job_id)
    done = acme.get("/v1/jobs", params={"status": "succeeded", "limit": 100}).json()["jobs"]
    assert set(ids) <= {j["id"] for j in done}
    assert all(j["status"] == "succeeded" for j in done)
    bad = acme.get("/v1/jobs", params={"status": "nope"})
    assert bad.status_code == 422 and error_of(bad)["field"] == "status"
    assert acme.get("/v1/jobs", params={"cursor": "garbage!"}).status_code == 422


def test_cancel_then_delete(acme: httpx.Client, clip: SyntheticClip, tmp_path: Path) -> None:
    job = accepted(acme, box_spec(clip), clip.path)
    canceled = acme.post(f"/v1/jobs/{job['id']}/cancel")
    if canceled.status_code == 409:
        pytest.skip("the job finished before it could be canceled")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    final = wait(acme, job["id"])
    assert final["status"] == "canceled" and final["result"] == {}
    assert acme.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409
    assert acme.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert acme.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_delete_removes_stored_files(acme: httpx.Client, clip: SyntheticClip) -> None:
    job = wait(acme, accepted(acme, box_spec(clip), clip.path)["id"])
    assert job["status"] == "succeeded", job
    url = job["result"]["video_url"]
    assert acme.get(url).status_code == 200
    assert acme.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert acme.get(url).status_code == 404


@pytest.mark.parametrize(
    ("spec", "field", "code"),
    [
        ({"classes": [{"label": "a", "boxes": [[0.5, 0.5, 0.6, 0.2]]}]}, "spec.classes[0].boxes",
         "invalid_spec"),
        ({"classes": [{"label": "car\n", "boxes": [[0.1, 0.1, 0.2, 0.2]]}]},
         "spec.classes[0].label", "invalid_spec"),
        ({"classes": [{"label": "car\r\n", "boxes": [[0.1, 0.1, 0.2, 0.2]]}]},
         "spec.classes[0].label", "invalid_spec"),
        ({"classes": [{"label": "a", "boxes": [[0.1, 0.1, 0.2, 0.2]]}],
          "webhook_url": "https://example.com/hook\n"}, "spec.webhook_url", "invalid_spec"),
        ({"classes": [{"label": "a", "boxes": [[-0.1, 0.5, 0.2, 0.2]]}]},
         "spec.classes[0].boxes[0][0]",
         "invalid_spec"),
        ({"classes": [{"label": "a", "boxes": [[0.1, 0.1, 0.2, 0.2]], "frame_index": 99}]},
         "classes[0].frame_index", "invalid_spec"),
        ({"classes": [{"label": "a", "boxes": [[0.1, 0.1, 0.2, 0.2]]}], "targets": {"b": [1]}},
         "spec.targets", "invalid_spec"),
        ({"classes": [{"label": "a", "text": "a person"}], "mode": "segment"},
         "classes[0].text", "unsupported_prompt"),
        ({"classes": [{"label": "a", "boxes": [[0.1, 0.1, 0.2, 0.2]]}],
          "webhook_url": "ftp://example.com/x"}, "spec.webhook_url", "invalid_spec"),
        ({"classes": [{"label": "a", "boxes": [[0.1, 0.1, 0.2, 0.2]]}],
          "webhook_url": "http://169.254.169.254/latest"}, "webhook_url", "url_not_allowed"),
        ({"classes": []}, "classes", "invalid_spec"),
        ({"classes": [{"label": "a", "boxes": [[0.1, 0.1, 0.2, 0.2]]}], "surprise": 1},
         "spec.surprise", "invalid_spec"),
        ({"classes": [{"label": "a", "boxes": [[0.1, 0.1, 0.2, 0.2]]}], "engine": "svor"},
         "video", "input_too_large"),
    ],
)  # fmt: skip
def test_bad_spec_is_refused_with_its_field(
    acme: httpx.Client,
    tmp_path: Path,
    spec: dict[str, object],
    field: str,
    code: str,
    clip: SyntheticClip,
) -> None:
    video = clip.path
    if spec.get("engine") == "svor":
        from services.media.synthetic import make_clip

        # longer than VOR_MAX_DURATION_S (20 s here); the svor engine takes any length under it
        video = make_clip(tmp_path / "long.mp4", frames=22 * 4, fps=4).path
    before = acme.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
    response = submit(acme, spec, video)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert (error["field"], error["code"]) == (field, code), error
    after = acme.get("/v1/jobs", params={"limit": 100}).json()["jobs"]
    assert len(after) == len(before)


@pytest.mark.parametrize(
    "spelling",
    ["{svor}@10.0.0.1/v.mp4", "{svor}:pw@169.254.169.254/latest", "{svor}0/v.mp4",
     "{svor}.evil.example/v.mp4", "{svor}@[::1]:1/v.mp4"],
)  # fmt: skip
def test_a_video_url_that_merely_starts_with_the_svor_base_url_is_checked(
    acme: httpx.Client, svor_server: str, spelling: str
) -> None:
    """Only the SVOR origin itself (scheme, host and port) skips the check; these start
    with its URL as text and go elsewhere, or nowhere."""
    url = spelling.format(svor=svor_server)
    response = acme.post("/v1/jobs", json={**box_spec_any(), "video_url": url})
    assert response.status_code == 422, response.text
    assert (error_of(response)["code"], error_of(response)["field"]) == (
        "url_not_allowed", "video_url",
    )  # fmt: skip


def box_spec_any() -> dict[str, object]:
    return {"classes": [{"label": "a", "boxes": [[0.1, 0.1, 0.2, 0.2]]}]}


def test_spec_that_is_not_json(acme: httpx.Client, clip: SyntheticClip) -> None:
    response = acme.post(
        "/v1/jobs", data={"spec": "{not json"}, files={"video": ("a.mp4", clip.path.read_bytes())}
    )
    assert response.status_code == 422
    assert error_of(response)["field"] == "spec"
    assert "not JSON" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"this is a text file, not a video" * 20, "not a readable video"),
        (b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://127.0.0.1:1/a.ts\n", "video"),
    ],
)
def test_bad_video_is_refused(
    acme: httpx.Client, clip: SyntheticClip, content: bytes, message: str
) -> None:
    response = acme.post(
        "/v1/jobs",
        data={"spec": json.dumps(box_spec(clip))},
        files={"video": ("clip.mp4", content, "video/mp4")},
    )
    assert response.status_code == 422, response.text
    assert error_of(response)["field"] == "video"
    assert message in error_of(response)["message"]


def test_truncated_video_is_refused(acme: httpx.Client, clip: SyntheticClip) -> None:
    data = clip.path.read_bytes()
    response = acme.post(
        "/v1/jobs",
        data={"spec": json.dumps(box_spec(clip))},
        files={"video": ("clip.mp4", data[: len(data) // 3], "video/mp4")},
    )
    assert response.status_code == 422
    assert error_of(response)["field"] == "video"


def test_missing_video_and_wrong_content_type(acme: httpx.Client, clip: SyntheticClip) -> None:
    no_video = acme.post("/v1/jobs", json=box_spec(clip))
    assert no_video.status_code == 422 and error_of(no_video)["field"] == "video"
    text = acme.post("/v1/jobs", content=b"hello", headers={"content-type": "text/plain"})
    assert text.status_code == 422 and error_of(text)["field"] == "content-type"


def test_unknown_job_is_404(acme: httpx.Client) -> None:
    response = acme.get("/v1/jobs/job_doesnotexist")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_limits_are_enforced_at_submit(
    acme: httpx.Client, tmp_path: Path, clip: SyntheticClip
) -> None:
    from services.media.synthetic import make_clip

    spec = box_spec(clip)
    long = make_clip(tmp_path / "long.mp4", frames=25, fps=1)
    response = submit(acme, spec, long.path)
    assert response.status_code == 422
    assert error_of(response)["code"] == "input_too_large"
    assert "lasts 25.0" in error_of(response)["message"]
    assert "limit is 20 s" in error_of(response)["message"]

    wide = make_clip(tmp_path / "wide.mp4", width=2000, height=64, frames=2)
    response = submit(acme, spec, wide.path)
    assert response.status_code == 422
    assert "2000x64" in error_of(response)["message"]
    assert error_of(response)["field"] == "video"

    huge = tmp_path / "huge.mp4"
    huge.write_bytes(b"\0" * (5 * 1024 * 1024 + 1))
    response = submit(acme, spec, huge)
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"


def test_file_with_no_video_stream_is_refused(
    acme: httpx.Client, tmp_path: Path, clip: SyntheticClip
) -> None:
    import av
    import numpy as np

    audio_only = tmp_path / "sound.mp4"
    with av.open(str(audio_only), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    response = submit(acme, box_spec(clip), audio_only)
    assert response.status_code == 422
    assert error_of(response)["field"] == "video"
    assert "no video stream" in error_of(response)["message"]


def test_from_job_must_be_a_finished_segment_job(acme: httpx.Client, clip: SyntheticClip) -> None:
    segment = accepted(acme, {"mode": "segment", **box_spec(clip)}, clip.path)
    early = submit(acme, {"from_job": segment["id"]})
    if early.status_code == 422:
        assert error_of(early)["field"] == "from_job"
        assert "must have succeeded" in error_of(early)["message"]
    remove = wait(acme, accepted(acme, box_spec(clip), clip.path)["id"])
    response = submit(acme, {"from_job": remove["id"]})
    assert response.status_code == 422
    assert "not a segment job" in error_of(response)["message"]
    assert submit(acme, {"from_job": "job_nope"}).status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("PUT", "/v1/jobs/job_x", 405, "GET, DELETE, OPTIONS"),
        ("OPTIONS", "/v1/jobs/job_x", 204, "GET, DELETE, OPTIONS"),
        ("OPTIONS", "/v1/jobs", 204, "GET, POST, OPTIONS"),
        ("DELETE", "/v1/jobs", 405, "GET, POST, OPTIONS"),
        ("GET", "/v1/jobs/job_x/cancel", 405, "POST, OPTIONS"),
        ("POST", "/healthz", 405, "GET, OPTIONS"),
    ],
)
def test_allow_names_every_method_of_the_path(
    acme: httpx.Client, method: str, path: str, status: int, allow: str
) -> None:
    """GET and DELETE of /v1/jobs/{id} are two routes; Starlette's 405 named one."""
    response = acme.request(method, path)
    assert (response.status_code, response.headers.get("allow")) == (status, allow)
    if status == 405:
        assert error_of(response)["code"] == "method_not_allowed"


def test_an_unknown_form_part_is_refused(acme: httpx.Client, clip: SyntheticClip) -> None:
    response = acme.post(
        "/v1/jobs",
        data={"spec": json.dumps(box_spec(clip)), "priority": "high"},
        files={"video": ("clip.mp4", clip.path.read_bytes(), "video/mp4")},
    )
    assert response.status_code == 422, response.text
    assert error_of(response)["field"] == "priority"


def test_the_openapi_document_declares_what_the_api_answers(service: EmbeddedService) -> None:
    spec = httpx.get(f"{service.url}/openapi.json").json()
    paths = spec["paths"]
    submit = paths["/v1/jobs"]["post"]
    assert submit["responses"]["202"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Job"
    }
    assert set(submit["responses"]) == {
        *("200", "202", "400", "401", "408", "409", "413", "422", "429", "503")
    }
    assert submit["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Job"
    }
    assert "Retry-After" in submit["responses"]["429"]["headers"]
    error = {"$ref": "#/components/schemas/Error"}
    for path, operations in paths.items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    assert answer["content"]["application/json"]["schema"] == error, (path, method)
            assert "HTTPValidationError" not in json.dumps(operation)
            if path.startswith("/v1/jobs"):
                assert operation["security"] == [{"bearer": []}], (path, method)
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    events = paths["/v1/jobs/{id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    listed = paths["/v1/jobs"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listed["schema"] == {"$ref": "#/components/schemas/JobList"}
