"""The SVOR contract from both ends, as the skill document defines it.

``points`` and ``bounding_boxes`` are normalised (0~1) JSON lists with label
lists beside them; ``object_boxes`` come back in pixels of the uploaded video.
First the reference CLI's documented requests (form fields and encodings as
the skill document's workflow sends them, its ffmpeg mask conversion
included) against ``vor svor-server``: the prompted object must really be
segmented and removed. Then vor's own svor engine through a recording relay,
to see what it puts on the wire.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from services.engines.base import no_progress
from services.engines.svor.engine import SvorClient, SvorEngine
from services.media.synthetic import SyntheticClip, make_clip_with
from services.media.video import ffmpeg_exe, probe, read_frames, video_size, write_video
from services.models import ClassPrompt
from tests.conftest import SVOR_KEY
from tests.support.recorder import RecordingRelay

pytestmark = pytest.mark.timeout(180)

API = "/customize/xiaomi-ev/video_obj_removal/customize/v1/videos"
SEG, ERASE = f"{API}/sam3_prompt_seg", f"{API}/mieraser"
AUTH = {"Authorization": f"Bearer {SVOR_KEY}"}
DOCUMENTED_BOX = [0.08, 0.35, 0.18, 0.3]
"""The skill document's style of box (``--boxes "obj:0.08,0.35,0.18,0.3"``)."""


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    """200x120, 24 frames: a ball that fills the documented box on frame 0, moving right."""
    return make_clip_with(tmp_path_factory.mktemp("contract") / "ball.mp4", [DOCUMENTED_BOX])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# ---------------------------------------------------------------- the reference's requests


def submit(url: str, path: str, files: dict[str, Any], data: dict[str, str] | None = None) -> str:
    answer = httpx.post(url + path, headers=AUTH, files=files, data=data or {}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["code"] == 0, body
    return str(body["task_id"])


def poll(url: str, path: str, task_id: str) -> dict[str, Any]:
    """The documented poll, every 0.2 s here instead of 3 s."""
    for _ in range(600):
        body = httpx.get(f"{url}{path}/status/{task_id}", headers=AUTH).json()
        if body["status"] == "completed":
            return dict(body)
        assert body["status"] != "failed", body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} never completed")


def reference_segment(url: str, video: Path, **fields: Any) -> dict[str, Any]:
    data = {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    with video.open("rb") as handle:
        task = submit(url, SEG, {"input_video": handle}, {"frame_index": "0", **data})
    return poll(url, SEG, task)


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def test_reference_box_request_segments_and_removes_the_ball(
    svor_server: str, clip: SyntheticClip, tmp_path: Path
) -> None:
    """--boxes "obj:0.08,0.35,0.18,0.3", then --targets "obj:1": segment, convert, erase."""
    done = reference_segment(
        svor_server, clip.path, text="ball", remove_prompt="remove the ball",
        bounding_boxes=[DOCUMENTED_BOX], bounding_box_labels=[1],
    )  # fmt: skip
    boxes = done["extra_info"]["object_boxes"]
    assert list(boxes) == ["1"]
    assert np.allclose(boxes["1"], [16, 42, 36, 36], atol=3), "pixels of the uploaded video"

    raw = tmp_path / "ball_mask_obj_raw.mkv"
    raw.write_bytes(httpx.get(done["video_path"]).content)
    ids = list(read_frames(raw, "gray"))
    assert len(ids) == len(clip.masks)
    overlaps = [iou(m == 1, t == 1) for m, t in zip(ids, clip.masks, strict=True)]
    assert np.mean(overlaps) > 0.6 and min(overlaps) > 0.3, overlaps

    final = tmp_path / "ball_mask_obj_final.mp4"
    ffmpeg("-i", str(raw), "-vf", "geq=lum='if(eq(lum(X,Y),1),255,0)'", "-pix_fmt", "gray",
           str(final))  # fmt: skip
    with clip.path.open("rb") as video, final.open("rb") as mask:
        task = submit(svor_server, ERASE, {"input_video": video, "input_mask": mask})
    erased = tmp_path / "ball_removed.mp4"
    erased.write_bytes(httpx.get(poll(svor_server, ERASE, task)["video_path"]).content)

    result = list(read_frames(erased))
    original = list(read_frames(clip.path))
    assert len(result) == len(original)
    inside = [m > 0 for m in clip.masks]
    before = np.mean([np.abs(o.astype(int) - clip.background)[m].mean()
                      for o, m in zip(original, inside, strict=True)])  # fmt: skip
    after = np.mean([np.abs(r.astype(int) - clip.background)[m].mean()
                     for r, m in zip(result, inside, strict=True)])  # fmt: skip
    assert after < before / 3, (before, after)


def test_reference_point_request_segments_the_ball(
    svor_server: str, clip: SyntheticClip, tmp_path: Path
) -> None:
    """--points "obj:x,y" at the ball's centre, with point_labels [1] beside it."""
    x, y, w, h = DOCUMENTED_BOX
    done = reference_segment(
        svor_server, clip.path, text="ball", points=[[x + w / 2, y + h / 2]], point_labels=[1]
    )
    assert list(done["extra_info"]["object_boxes"]) == ["1"]
    raw = tmp_path / "ball_mask_obj_raw.mkv"
    raw.write_bytes(httpx.get(done["video_path"]).content)
    first = next(read_frames(raw, "gray"))
    assert iou(first == 1, clip.masks[0] == 1) > 0.5


BAD_FIELDS = [
    ({"bounding_boxes": "[[16, 42, 36, 36]]"}, "bounding_boxes[0]", "outside 0~1"),
    ({"bounding_boxes": "[[0.5, 0.5, 0.7, 0.2]]"}, "bounding_boxes[0]", "runs past the frame"),
    ({"bounding_boxes": "[[0.1, 0.1, 0.2]]"}, "bounding_boxes[0]", "must be [x, y, w, h]"),
    ({"bounding_boxes": "[[0.1, 0.1, 0.2, 0.2]"}, "bounding_boxes", "not valid JSON"),
    ({"bounding_boxes": '{"x": 0.1}'}, "bounding_boxes", "must be a JSON list"),
    ({"bounding_boxes": '[["a", 0.1, 0.2, 0.2]]'}, "bounding_boxes[0]", "must be a number"),
    (
        {"bounding_boxes": "[[0.1, 0.1, 0.2, 0.2]]", "bounding_box_labels": "[1, 1]"},
        "bounding_box_labels",
        "2 labels for 1 bounding_boxes",
    ),  # fmt: skip
    ({"points": "[[0.5, 1.5]]"}, "points[0]", "y = 1.5 is outside 0~1"),
    ({"points": "[[-0.1, 0.5]]"}, "points[0]", "x = -0.1 is outside 0~1"),
    ({"points": "[[0.5, 0.5]]", "point_labels": "[1, 0]"}, "point_labels", "2 labels for 1"),
    ({"points": "[[0.5, 0.5]]", "point_labels": "[2]"}, "point_labels", "only 1 and 0"),
    ({"point_labels": "[1]"}, "point_labels", "1 labels for 0 points"),
    ({"points": "0.5"}, "points", "must be a JSON list"),
]


@pytest.mark.parametrize(("fields", "where", "why"), BAD_FIELDS)
def test_bad_coordinates_and_lists_get_400_saying_what_is_wrong(
    svor_server: str, clip: SyntheticClip, fields: dict[str, str], where: str, why: str
) -> None:
    with clip.path.open("rb") as handle:
        answer = httpx.post(
            svor_server + SEG, headers=AUTH, files={"input_video": handle},
            data={"frame_index": "0", **fields},
        )  # fmt: skip
    assert answer.status_code == 400, answer.text
    message = answer.json()["message"]
    assert message.startswith("请求参数错误: ") and where in message and why in message, message


# --------------------------------------------------------------------------- vor on the wire


def test_vor_sends_normalised_json_lists_and_reads_pixels_back(
    svor_server: str, clip: SyntheticClip, tmp_path: Path
) -> None:
    x, y, w, h = DOCUMENTED_BOX
    prompt = ClassPrompt(
        label="ball", text="ball", remove_prompt="remove the ball", boxes=[tuple(DOCUMENTED_BOX)],
        points=[(x + w / 2, y + h / 2), (0.9, 0.9)], point_labels=[1, 0], frame_index=2,
    )  # fmt: skip
    with RecordingRelay(svor_server) as relay:
        engine = SvorEngine(
            SvorClient(httpx.Client(timeout=30), base_url=relay.url, api_key=SVOR_KEY)
        )
        work = engine.prepare(clip.path, probe(clip.path), tmp_path, no_progress)
        seg = engine.segment(work, prompt, tmp_path, no_progress)
        erased = engine.erase(work, _binary(seg.mask_path, tmp_path), tmp_path, no_progress,
                              dilation=2)  # fmt: skip

    [sent] = relay.to("POST", SEG)
    fields = {name: part.text for name, part in sent.parts.items() if part.filename is None}
    assert fields == {
        "frame_index": "2",
        "text": "ball",
        "remove_prompt": "remove the ball",
        "bounding_boxes": json.dumps([DOCUMENTED_BOX]),
        "bounding_box_labels": "[1]",
        "points": json.dumps([[x + w / 2, y + h / 2], [0.9, 0.9]]),
        "point_labels": "[1, 0]",
    }
    assert json.loads(fields["bounding_boxes"]) == [DOCUMENTED_BOX], "normalised, not pixels"
    video = sent.parts["input_video"]
    assert video.content_type == "video/mp4" and video.data == work.read_bytes()
    assert sent.headers["authorization"] == f"Bearer {SVOR_KEY}"

    polls = relay.to("GET", SEG + "/status/")
    answer = json.loads(polls[-1].answer)
    assert answer["status"] == "completed"
    up_w, up_h, _, _ = video_size(work)
    px = answer["extra_info"]["object_boxes"]["1"]
    expected = (px[0] / up_w, px[1] / up_h, px[2] / up_w, px[3] / up_h)
    assert [o.id for o in seg.objects] == [1]
    assert np.allclose(seg.objects[0].box, expected, atol=1e-4), "pixels of the upload, mapped"
    assert np.allclose(seg.objects[0].box, clip.box(2), atol=0.03), "the ball on frame 2"

    [erase] = relay.to("POST", ERASE)
    assert set(erase.parts) == {"input_video", "input_mask"}
    assert erase.parts["input_video"].data == work.read_bytes()
    mask_upload = tmp_path / "sent_mask.mp4"
    mask_upload.write_bytes(erase.parts["input_mask"].data)
    sent_masks = list(read_frames(mask_upload, "gray"))
    assert len(sent_masks) == len(clip.masks) and sent_masks[0].shape == (up_h, up_w)
    assert set(np.unique(np.stack(sent_masks))) <= {0, 255}, "a lossless 0/255 mask"
    assert all(((m == 255) >= (t > 0)).mean() > 0.97 for m, t in zip(sent_masks, clip.masks,
                                                                      strict=True))  # fmt: skip
    assert video_size(erased)[3] == len(clip.masks)


def _binary(id_mask: Path, folder: Path) -> Path:
    frames = [np.where(m > 0, 255, 0).astype(np.uint8) for m in read_frames(id_mask, "gray")]
    return write_video(folder / "binary.mkv", frames, 12, codec="ffv1")
