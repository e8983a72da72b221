"""The web console (/ui) in a real browser, against a real ``vor serve``.

Debian's Chromium, driven by Selenium, does what a person does: upload a clip,
scrub, draw with the mouse and the keyboard, segment, pick objects on the
preview, remove them, and watch the job list. The results the page links to
are downloaded and decoded. A screenshot of every step goes to the artifacts
folder (``VOR_TEST_ARTIFACTS``, else ``<pytest tmp>/console``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from services.cli.embedded import EmbeddedService, free_port
from services.media.synthetic import SyntheticClip, make_clip
from services.media.video import read_frames, run_ffmpeg
from tests.conftest import API_KEYS
from tests.helpers import accepted
from tests.support import browser
from tests.support.receiver import Receiver

if why := browser.missing():
    pytest.skip(f"the console's browser tests need Chromium: {why}", allow_module_level=True)

from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("VOR_TEST_ARTIFACTS")
    folder = Path(given) / "console" if given else tmp_path_factory.getbasetemp() / "console"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def vor_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``vor serve`` as a user starts it: embedded Redis, no API keys."""
    data = tmp_path_factory.mktemp("vor-serve")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOR_", "SVOR_"))}
    env |= {
        "VOR_DATA_DIR": str(data),
        "VOR_LOG_FORMAT": "text",
        "VOR_ALLOWED_URL_NETWORKS": "127.0.0.0/8",
        "VOR_WEBHOOK_BACKOFF_BASE_S": "0.05",
    }
    port = free_port()
    log = (data / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while not ready(url):
            assert proc.poll() is None, (data / "serve.log").read_text()
            assert time.monotonic() < deadline, "vor serve did not become ready"
            time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    with browser.chromium() as d:
        yield d


@pytest.fixture
def page(
    driver: Any, vor_serve: str, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[browser.Page]:
    page = browser.Page(driver, vor_serve, artifacts, request.node.name)
    yield page
    assert not page.js_errors(), "the page's scripts logged errors"


@pytest.fixture
def client(vor_serve: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=vor_serve, timeout=30) as c:
        yield c


TERMINAL = ("succeeded", "failed", "canceled")


def upload(page: browser.Page, path: Path) -> None:
    page.css("#video-file").send_keys(str(path))
    page.wait(lambda _: "frames at" in page.css("#video-facts").text, what="the video's facts")


def shown(page: browser.Page, frame: int) -> None:
    page.wait(
        lambda _: page.css("#frame").get_attribute("data-frame") == str(frame),
        what=f"frame {frame} on the canvas",
    )


def canvas_frame_index(page: browser.Page, clip: SyntheticClip) -> int:
    """Which frame of the clip the canvas shows, by pixels (the decoder's frame k is k)."""
    data = page.driver.execute_script("return document.getElementById('frame').toDataURL()")
    png = np.frombuffer(base64.b64decode(data.split(",", 1)[1]), np.uint8)
    image = cv2.resize(
        cv2.imdecode(png, cv2.IMREAD_COLOR), (clip.width, clip.height), cv2.INTER_AREA
    )
    errors = [np.abs(image.astype(int) - f).mean() for f in read_frames(clip.path)]
    return int(np.argmin(errors))


def finished(page: browser.Page, client: httpx.Client, after: str | None = None) -> dict[str, Any]:
    """The job the page went to (not ``after``), once the page shows it ended."""

    def job_id(driver: Any) -> str | bool:
        _, _, found = driver.current_url.partition("#job=")
        return found if found and found != after else False

    found = str(page.wait(job_id, what="the page to open a new job"))
    page.wait(
        lambda _: page.css("#job").get_attribute("data-status") in TERMINAL,
        timeout=90,
        what=f"job {found} to end on the page",
    )
    return dict(client.get(f"/v1/jobs/{found}").json())


def choose(page: browser.Page, label: str, obj: dict[str, Any]) -> None:
    """Click an object on its class's preview, where its box is."""
    image = page.css(f'.preview-wrap[data-label="{label}"] img')
    page.wait(lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 0)
    x, y, w, h = obj["box"]
    page.click_at(image, x + w / 2, y + h / 2)


def removed_in_every_frame(result: Path, clip: SyntheticClip, object_id: int = 1) -> None:
    frames = list(read_frames(result))
    original = list(read_frames(clip.path))
    assert len(frames) == len(original)
    for index, (after, before) in enumerate(zip(frames, original, strict=True)):
        region = clip.masks[index] == object_id
        left = np.abs(after.astype(int) - clip.background)[region].mean()
        there = np.abs(before.astype(int) - clip.background)[region].mean()
        assert left < 25 and left < there / 3, f"frame {index}: {left:.1f} vs {there:.1f}"


def test_draw_a_box_segment_pick_object_1_and_remove_it(
    page: browser.Page, client: httpx.Client, clip: SyntheticClip, tmp_path: Path
) -> None:
    page.open("#new")
    page.shot("new-job")
    upload(page, clip.path)
    assert page.css("#video-facts").text.endswith("96×64, 16 frames at 12 fps")
    shown(page, 0)
    assert canvas_frame_index(page, clip) == 0
    slider = page.css("#frame-index")
    for _ in range(5):
        slider.send_keys(Keys.ARROW_RIGHT)
    shown(page, 5)
    assert canvas_frame_index(page, clip) == 5, "the canvas shows the frame the spec will name"

    x, y, w, h = clip.box(5)
    page.drag(page.css("#frame"), (x - 0.03, y - 0.04), (x + w + 0.03, y + h + 0.04))
    assert "box at" in page.text_of('[data-field="classes[0].boxes"] li')
    page.shot("box-drawn")
    page.css("#submit-segment").click()

    segment = finished(page, client)
    assert segment["status"] == "succeeded", segment
    assert int(page.css("#job").get_attribute("data-events")) >= 1, "followed live"
    prompt = segment["spec"]["classes"][0]
    assert prompt["frame_index"] == 5 and len(prompt["boxes"]) == 1
    assert prompt["boxes"][0] == pytest.approx([x - 0.03, y - 0.04, w + 0.06, h + 0.08], abs=0.03)
    found = segment["segments"]["object"]
    assert page.text_of(".suggestion") == f"Suggestion: {found['suggestion']}"
    overlay = page.css("video.overlay").get_attribute("src")
    assert overlay.split("?")[0] == segment["result"]["overlay_url"].split("?")[0], "signed anew"
    page.shot("review")
    assert found["objects"][0]["id"] == 1
    choose(page, "object", found["objects"][0])
    assert page.css('.objects input[value="1"]').is_selected()
    assert "chosen: object: 1" in page.text_of(".review .remove-bar span")
    page.shot("object-1-chosen")
    page.css("#remove-chosen").click()

    removal = finished(page, client, after=segment["id"])
    assert removal["status"] == "succeeded", removal
    assert removal["spec"]["from_job"] == segment["id"]
    assert removal["spec"]["targets"] == {"object": [1]}
    for video in ("#before-video", "#after-video"):
        page.wait(
            lambda d, v=video: (
                d.execute_script(f"return document.querySelector('{v}').readyState") >= 2
            )
        )
    split = page.css("#compare-split")
    split.send_keys(Keys.END)
    assert "100%" in page.css(".compare video.over").get_attribute("style")
    split.send_keys(Keys.HOME)
    assert "inset(0px 0px 0px 0%)" in page.css(".compare video.over").get_attribute("style")
    split.send_keys(*[Keys.PAGE_UP] * 5)
    page.shot("before-and-after")
    links = {
        a.get_attribute("data-name"): a.get_attribute("href")
        for a in page.all("#downloads a[data-name]")
    }
    assert {"video_url", "mask_url", "preview_url", "input_url", "overlay_url"} <= set(links)
    result = tmp_path / "result.mp4"
    result.write_bytes(httpx.get(links["video_url"]).content)
    removed_in_every_frame(result, clip)


def test_points_with_a_negative_label_from_mouse_and_keyboard(
    page: browser.Page, client: httpx.Client, clip: SyntheticClip
) -> None:
    page.open("#new")
    upload(page, clip.path)
    shown(page, 0)
    label = page.css("#class-0-label")
    label.clear()
    label.send_keys("a disc!")
    canvas = page.css("#frame")
    x, y, w, h = clip.box(0)
    centre = (x + w / 2, y + h / 2)
    canvas.send_keys("p")
    page.click_at(canvas, *centre)
    canvas.send_keys("n", *[Keys.ARROW_RIGHT] * 40, Keys.ENTER)
    prompts = [li.text for li in page.all('[data-field="classes[0].boxes"] li')]
    assert [p.split(" at ")[0] for p in prompts] == ["positive point", "negative point"]
    page.shot("points")
    page.css("#submit-segment").click()

    slot = '[data-field="classes[0].label"] .field-error'
    said = page.text_of(slot)
    spec = {"mode": "segment", "classes": [{"label": "a disc!", "points": [list(centre)]}]}
    answer = client.post("/v1/jobs", files={"video": ("d.mp4", clip.path.read_bytes())},
                         data={"spec": json.dumps(spec)}).json()["error"]  # fmt: skip
    assert said == f"{answer['code']}: {answer['message']}", "the API's own words"
    assert answer["field"] == "spec.classes[0].label"
    assert label.get_attribute("aria-invalid") == "true"
    page.shot("error-next-to-label")
    label.clear()
    label.send_keys("disc")
    page.css("#submit-segment").click()

    job = finished(page, client)
    assert job["status"] == "succeeded", job
    prompt = job["spec"]["classes"][0]
    assert prompt["point_labels"] == [1, 0]
    assert prompt["points"][0] == pytest.approx(centre, abs=0.02)
    assert prompt["points"][1] == pytest.approx((centre[0] + 0.4, centre[1]), abs=0.02)
    objects = job["segments"]["disc"]["objects"]
    assert len(objects) == 1
    assert objects[0]["box"] == pytest.approx(clip.box(0), abs=0.06)
    page.shot("segmented")


def test_two_classes_then_one_prompted_again(
    page: browser.Page, client: httpx.Client, clip2: SyntheticClip, tmp_path: Path
) -> None:
    page.open("#new")
    upload(page, clip2.path)
    shown(page, 0)
    canvas = page.css("#frame")
    page.css("#class-0-label").clear()
    page.css("#class-0-label").send_keys("top")
    x, y, w, h = clip2.box(0, 1)
    page.drag(canvas, (x - 0.03, y - 0.04), (x + w + 0.03, y + h + 0.04))
    page.css("#add-class").click()
    page.css("#class-1-label").clear()
    page.css("#class-1-label").send_keys("bottom")
    page.css('input[name="tool"][value="positive"]').click()
    x, y, w, h = clip2.box(0, 2)
    page.click_at(canvas, x + w / 4, y + h / 2)
    page.shot("two-classes")
    page.css("#submit-segment").click()

    first = finished(page, client)
    assert first["status"] == "succeeded", first
    assert [c["label"] for c in first["spec"]["classes"]] == ["top", "bottom"]
    assert len(page.all(".class-review")) == 2
    page.wait(
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('video.overlay')].every(v => v.readyState >= 2)"
        ),
        what="the overlay videos to load",
    )
    page.shot("review-two-classes")
    page.css('.class-review[data-field="targets.bottom"] a.button').click()

    page.wait(lambda _: page.css("#submit-segment").text == "Segment again")
    shown(page, 0)
    page.css('.class-card[data-index="1"] input[name="active-class"]').click()
    page.css('.class-card[data-index="1"] .prompts button').click()
    page.css('input[name="tool"][value="box"]').click()
    page.drag(canvas, (x - 0.03, y - 0.04), (x + w + 0.03, y + h + 0.04))
    page.shot("prompted-again")
    page.css("#submit-segment").click()

    again = finished(page, client, after=first["id"])
    assert again["status"] == "succeeded", again
    assert again["spec"]["from_job"] == first["id"]
    assert "segment:top" not in again["runs"], "the unchanged class was not segmented again"
    assert again["runs"]["segment:bottom"] == 1
    assert again["segments"]["bottom"]["objects"][0]["box"] == pytest.approx(
        clip2.box(0, 2), abs=0.06
    )
    choose(page, "bottom", again["segments"]["bottom"]["objects"][0])
    page.css('.class-review[data-field="targets.bottom"] button.cutout').click()
    cutout = finished(page, client, after=again["id"])
    assert cutout["status"] == "succeeded", cutout
    assert cutout["spec"]["options"]["cutout"] == [1]
    assert cutout["runs"] == {"publish": 1}, "the segmentation was reused"
    names = {a.get_attribute("data-name") for a in page.all("#downloads a[data-name]")}
    assert {"cutout_url", "cutout_alpha_url", "overlay_url", "mask_url"} <= names
    page.shot("cut-out")
    page.driver.back()
    page.wait(lambda _: page.css("#job").get_attribute("data-status") == "succeeded")
    for label in ("top", "bottom"):
        choose(page, label, again["segments"][label]["objects"][0])
    page.shot("both-chosen")
    page.css("#remove-chosen").click()
    removal = finished(page, client, after=again["id"])
    assert removal["status"] == "succeeded", removal
    assert removal["spec"]["targets"] == {"top": [1], "bottom": [1]}
    result = tmp_path / "result.mp4"
    result.write_bytes(
        httpx.get(page.css('a[data-name="video_url"]').get_attribute("href")).content
    )
    removed_in_every_frame(result, clip2, 1)
    removed_in_every_frame(result, clip2, 2)
    page.shot("both-removed")


def row_of(page: browser.Page, job_id: str, what: str = "status") -> Any:
    """A field of a job's row, read afresh (rows are replaced as jobs change)."""
    script = {
        "status": "return r && r.dataset.status",
        "error": "return r && r.querySelector('td.error').textContent",
    }[what]
    return page.driver.execute_script(
        f"const r = document.querySelector('#jobs-table tr[data-id=\"{job_id}\"]'); {script}"
    )


def row_status(page: browser.Page, job_id: str, status: str, timeout: float = 60) -> None:
    page.wait(lambda _: row_of(page, job_id) == status, timeout, f"{job_id} {status} in the list")


def click_in_row(page: browser.Page, job_id: str, selector: str) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(5):
        try:
            button = page.css(f'#jobs-table tr[data-id="{job_id}"] {selector}')
            button.click()
            return button
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"{selector} of {job_id} kept changing under the pointer")


def test_the_job_list_updates_live(
    page: browser.Page, client: httpx.Client, vor_serve: str, tmp_path: Path
) -> None:
    long = make_clip(tmp_path / "long.mp4", width=320, height=192, frames=48)
    spec = {"classes": [{"label": "disc", "boxes": [list(long.box(0))]}]}
    page.open("#jobs")
    page.wait(lambda _: page.css("#view-jobs").get_attribute("data-live") == "1")
    with Receiver() as receiver:
        kept = accepted(client, spec | {"webhook_url": receiver.url}, long.path)
        dropped = accepted(client, spec, long.path)
        broken = accepted(client, spec | {"video_url": f"{vor_serve}/nothing-here.mp4"})
        for job in (kept, dropped, broken):
            page.visible(f'#jobs-table tr[data-id="{job["id"]}"]')
        page.shot("three-new-jobs")
        click_in_row(page, dropped["id"], "button.cancel")
        row_status(page, dropped["id"], "canceled")
        row_status(page, kept["id"], "running")
        row_status(page, broken["id"], "failed")
        error = client.get(f"/v1/jobs/{broken['id']}").json()["error"]
        assert "404" in error["message"]
        said = row_of(page, broken["id"], "error")
        assert said == f"{error['message']} ({error['code']}, {error['stage']})"
        row_status(page, kept["id"], "succeeded", timeout=120)
        page.shot("ended")

        Select(page.css("#status-filter")).select_by_visible_text("failed")
        page.wait(
            lambda _: (
                [r.get_attribute("data-id") for r in page.all("#jobs-table tbody tr")]
                == [broken["id"]]
            )
        )
        page.shot("failed-only")
        Select(page.css("#status-filter")).select_by_visible_text("all")
        row_status(page, kept["id"], "succeeded")

        receiver.wait_for(1, timeout=30)
        click_in_row(page, kept["id"], "button.redeliver")
        again = receiver.wait_for(2, timeout=30)
        assert [json.loads(r.body)["type"] for r in again] == ["job.succeeded"] * 2
        assert again[0].headers["webhook-id"] == again[1].headers["webhook-id"]

    burst = [accepted(client, spec | {"video_url": f"{vor_serve}/n{i}.mp4"}) for i in range(15)]
    for job in burst:
        row_status(page, job["id"], "failed")
    page.shot("a-burst")

    delete = click_in_row(page, kept["id"], "button.delete")
    assert delete.text == "Really delete?"
    delete.click()
    page.wait(lambda _: not page.all(f'#jobs-table tr[data-id="{kept["id"]}"]'))
    assert client.get(f"/v1/jobs/{kept['id']}").status_code == 404
    page.shot("deleted")


def test_a_webm_is_measured_by_the_server_and_scrubbed_to_the_frame(
    page: browser.Page, clip: SyntheticClip, tmp_path: Path
) -> None:
    """No MP4 header to read the frame rate from: the page asks POST /v1/probe."""
    webm = tmp_path / "disc.webm"
    run_ffmpeg(["-i", str(clip.path), "-an", "-c:v", "libvpx-vp9", "-crf", "20",
                      "-b:v", "0", str(webm)])  # fmt: skip
    page.open("#new")
    upload(page, webm)
    assert page.css("#video-facts").text.endswith("96×64, 16 frames at 12 fps")
    page.css("#frame-index").send_keys(Keys.END)
    shown(page, 15)
    assert canvas_frame_index(page, clip) == 15
    page.shot("webm-last-frame")


def test_a_file_that_is_not_a_video_shows_the_api_error_at_the_video(
    page: browser.Page, client: httpx.Client
) -> None:
    page.open("#new")
    text = "these are notes, not a video\n" * 40
    page.driver.execute_script(
        """
        const data = new DataTransfer();
        data.items.add(new File([arguments[0]], "notes.mp4", {type: "video/mp4"}));
        const drop = document.getElementById("drop");
        for (const type of ["dragover", "drop"]) {
          const init = {dataTransfer: data, bubbles: true, cancelable: true};
          drop.dispatchEvent(new DragEvent(type, init));
        }
        """,
        text,
    )
    said = page.text_of("#drop .field-error")
    answer = client.post("/v1/probe", files={"video": ("notes.mp4", text.encode())}).json()
    assert said == f"{answer['error']['code']}: {answer['error']['message']}"
    assert answer["error"]["field"] == "video"
    assert not page.css("#editor").is_displayed()
    page.shot("not-a-video")


def test_the_api_key_is_typed_once_and_kept_for_the_tab(
    driver: Any, service: EmbeddedService, artifacts: Path, request: pytest.FixtureRequest,
    clip: SyntheticClip,
) -> None:  # fmt: skip
    """A server with VOR_API_KEYS: the page asks for the key, keeps it; svor, removed at once."""
    page = browser.Page(driver, service.url, artifacts, request.node.name)
    page.open("#new")
    assert page.text_of("#auth .field-error") == (
        "unauthorized: send 'Authorization: Bearer <api key>'"
    )
    assert driver.switch_to.active_element.get_attribute("id") == "api-key"
    page.shot("key-needed")
    page.css("#api-key").send_keys("not-the-key", Keys.ENTER)
    page.wait(lambda _: "not valid" in page.css("#auth .field-error").text)
    assert page.css("#auth .field-error").text == "unauthorized: the API key is not valid"
    key = page.css("#api-key")
    key.clear()
    key.send_keys(API_KEYS["acme"], Keys.ENTER)
    assert page.text_of("#auth-state") == "key accepted, kept for this tab"

    upload(page, clip.path)
    shown(page, 0)
    x, y, w, h = clip.box(0)
    page.drag(page.css("#frame"), (x - 0.03, y - 0.04), (x + w + 0.03, y + h + 0.04))
    Select(page.css("#engine")).select_by_value("svor")
    page.css("#class-0-text").send_keys("disc")
    page.css("#class-0-remove_prompt").send_keys("remove the disc")
    page.css("#submit-remove").click()
    headers = {"Authorization": f"Bearer {API_KEYS['acme']}"}
    with httpx.Client(base_url=service.url, headers=headers, timeout=30) as acme:
        job = finished(page, acme)
        assert job["status"] == "succeeded" and job["mode"] == "remove", job
        assert job["engine"] == "svor", "through the stand-in SVOR server"
        prompt = job["spec"]["classes"][0]
        assert (prompt["text"], prompt["remove_prompt"]) == ("disc", "remove the disc")
        assert prompt["frame_index"] == 0 and len(prompt["boxes"]) == 1
        page.shot("removed-at-once")

        page.open("#jobs")
        page.wait(lambda _: page.css("#view-jobs").get_attribute("data-live") == "1")
        assert page.text_of("#auth-state") == "key accepted, kept for this tab"
        assert row_of(page, job["id"]) == "succeeded"
        page.shot("key-kept")
    assert not page.js_errors()
