"""Each usage example of the SVOR skill document (命令行用法, sections 1-7) as ``vor remove``.

Each command line is the document's, with ``python scripts/video_remove.py`` as
``vor remove`` and its video path as ours; ``--server`` and ``--tmp-dir`` are
added (the reference's temp directory is ``./temp``; here one of the test's).
Text prompts need the svor engine, so every example goes there: to ``vor
svor-server`` running the local engine, whose ``--text-box`` table names the
objects each text describes (it has no language model). The clip holds seven
balls; each example must find and remove (or keep) the ones it names.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.cli.embedded import EmbeddedService, free_port
from services.media.synthetic import SyntheticClip, make_clip_with
from services.media.video import read_frames
from services.standin.process import start_standin
from tests.conftest import API_KEYS, SVOR_KEY, service_env

pytestmark = pytest.mark.timeout(300)

BALLS = [
    (0.05, 0.05, 0.1, 0.15),
    (0.25, 0.05, 0.1, 0.15),
    (0.45, 0.05, 0.1, 0.15),
    (0.65, 0.05, 0.1, 0.15),
    (0.05, 0.35, 0.12, 0.15),
    (0.30, 0.35, 0.12, 0.15),
    (0.15, 0.70, 0.30, 0.25),
]
"""Balls 1..7 on frame 0; 7 sits in section 6's box and under section 7's point."""
STEP = 0.004
FRAMES = 24
TEXTS = {
    "text": [1, 2, 3],
    "sign": [1, 2, 3],
    "person": [1, 2, 3, 4],
    "car": [5, 6],
}
"""What each text prompt of the examples names (balls, in id order)."""


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    folder = tmp_path_factory.mktemp("examples")
    return make_clip_with(
        folder / "video.mp4", BALLS, width=320, height=192, frames=FRAMES, step=STEP
    )


def ball_box(ball: int, frame: int) -> tuple[float, float, float, float]:
    x, y, w, h = BALLS[ball - 1]
    return (round(x + STEP * frame, 4), y, w, h)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``vor svor-server`` on the local engine, told what the examples' texts name."""
    boxes = [f"{text}=" + ",".join(map(str, ball_box(b, 0))) for text, balls in TEXTS.items()
             for b in balls]  # fmt: skip
    boxes.append("girl in red=" + ",".join(map(str, ball_box(4, 16))))
    port = free_port()
    log = tmp_path_factory.mktemp("stand-in") / "svor.log"
    flags = [arg for box in boxes for arg in ("--text-box", box)]
    proc = start_standin(port, log, "--api-key", SVOR_KEY, *flags)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, stand_in: str) -> Iterator[str]:
    """vor with its own embedded Redis; its default engine is the local one."""
    env = service_env("", stand_in)
    env.pop("VOR_REDIS_URL")
    with EmbeddedService(tmp_path_factory.mktemp("vor"), env=env, io_threads=4) as service:
        yield service.url


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("temp")


def run(example: str, clip: SyntheticClip, server: str, tmp_dir: Path) -> str:
    """One command line of the document, as ``vor remove``; its standard output."""
    args = shlex.split(example.replace("\\\n", " "))
    assert args[:2] == ["python", "scripts/video_remove.py"]
    args = [clip.path.as_posix() if a == "path/to/video.mp4" else a for a in args[2:]]
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "remove", *args, "--server", server,
         "--tmp-dir", str(tmp_dir)],
        env={**_env(), "VOR_API_KEY": API_KEYS["acme"]}, capture_output=True, text=True,
        timeout=240, cwd=tmp_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("VOR_", "SVOR_"))}


def printed_objects(stdout: str, label: str) -> dict[int, list[float]]:
    """The ids and boxes ``--segment`` printed for one class."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{label}:"))
    found = {}
    for line in lines[start + 1 :]:
        if not line.startswith("  id "):
            break
        number, _, box = line.removeprefix("  id ").partition(": box ")
        found[int(number)] = json.loads(box)
    return found


def removed_and_kept(clip: SyntheticClip, result: Path) -> tuple[set[int], set[int]]:
    """Which balls the result erased (mostly background inside them) and which it kept."""
    frames = list(read_frames(result))
    original = list(read_frames(clip.path))
    assert len(frames) == len(original)
    removed, kept = set(), set()
    background = clip.background.astype(int)

    def error(images: list[np.ndarray], against: list[np.ndarray], ball: int) -> float:
        pairs = zip(images, against, clip.masks, strict=True)
        return float(np.mean([np.abs(i.astype(int) - a)[m == ball].mean() for i, a, m in pairs]))

    for ball in range(1, len(BALLS) + 1):
        to_background = error(frames, [background] * len(frames), ball)
        was = error(original, [background] * len(frames), ball)
        to_original = error(frames, [o.astype(int) for o in original], ball)
        if to_background < was / 3:
            removed.add(ball)
        elif to_original < 6:
            kept.add(ball)
    return removed, kept


def result_of(clip: SyntheticClip) -> Path:
    return clip.path.with_name(f"{clip.path.stem}_removed.mp4")


def svor_tasks(stand_in: str) -> int:
    return int(httpx.get(f"{stand_in}/_stats").json()["tasks"])


def assert_boxes(found: dict[int, list[float]], balls: list[int], frame: int = 0) -> None:
    assert sorted(found) == list(range(1, len(balls) + 1)), found
    for number, ball in enumerate(balls, start=1):
        assert np.allclose(found[number], ball_box(ball, frame), atol=0.03), (number, found)


def test_1_segment_then_2_remove_by_the_suggested_ids(
    clip: SyntheticClip, server: str, tmp_dir: Path, stand_in: str
) -> None:
    before = svor_tasks(stand_in)
    out = run('python scripts/video_remove.py --video "path/to/video.mp4" --segment '
              '--classes "label:text:remove_prompt"', clip, server, tmp_dir)  # fmt: skip
    assert_boxes(printed_objects(out, "label"), TEXTS["text"])
    assert "符合用户指令的有 obj_id 1、2、3" in out
    assert (tmp_dir / "video_mask_label_raw.mkv").exists(), "the segmentation is cached"
    assert svor_tasks(stand_in) == before + 1, "the text prompt went to the svor engine"

    run('python scripts/video_remove.py --video "path/to/video.mp4" --skip-segment '
        '--targets "label:1,2,3"', clip, server, tmp_dir)  # fmt: skip
    removed, kept = removed_and_kept(clip, result_of(clip))
    assert removed == {1, 2, 3} and kept == {4, 5, 6, 7}, (removed, kept)
    assert svor_tasks(stand_in) == before + 2, "no second segmentation: only the erasure"


def test_3_one_step(clip: SyntheticClip, server: str, tmp_dir: Path) -> None:
    example = """python scripts/video_remove.py --video "path/to/video.mp4" \\
--classes "sign:sign:remove the sign" --targets "sign:2,3\""""
    run(example, clip, server, tmp_dir)
    removed, kept = removed_and_kept(clip, result_of(clip))
    assert removed == {2, 3} and kept == {1, 4, 5, 6, 7}, (removed, kept)


def test_4_two_classes_segmented_then_removed(
    clip: SyntheticClip, server: str, tmp_dir: Path
) -> None:
    out = run(
        """python scripts/video_remove.py --video "path/to/video.mp4" --segment \\
--classes "person:person:remove pedestrians" "car:car:remove cars\"""",
        clip,
        server,
        tmp_dir,
    )
    assert_boxes(printed_objects(out, "person"), TEXTS["person"])
    assert_boxes(printed_objects(out, "car"), TEXTS["car"])

    run(
        """python scripts/video_remove.py --video "path/to/video.mp4" --skip-segment \\
--targets "person:1,3,4" "car:2\"""",
        clip,
        server,
        tmp_dir,
    )
    removed, kept = removed_and_kept(clip, result_of(clip))
    assert removed == {1, 3, 4, 6} and kept == {2, 5, 7}, (removed, kept)


def test_5_annotation_frame(clip: SyntheticClip, server: str, tmp_dir: Path) -> None:
    out = run(
        """python scripts/video_remove.py --video "path/to/video.mp4" --frame 16 --segment \\
--classes "girl:girl in red:remove the girl in red\"""",
        clip,
        server,
        tmp_dir,
    )
    found = printed_objects(out, "girl")
    assert list(found) == [1]
    assert np.allclose(found[1], ball_box(4, 16), atol=0.03), "ball 4 where it is on frame 16"


SECTION_6 = """python scripts/video_remove.py --video "path/to/video.mp4" --segment \\
--classes "obj:cup:remove the cup" --boxes "obj:0.15,0.7,0.3,0.25\""""
SECTION_7 = """python scripts/video_remove.py --video "path/to/video.mp4" --segment \\
--classes "obj:cup:remove the cup" --points "obj:0.25,0.75\""""


@pytest.mark.parametrize("example", [SECTION_6, SECTION_7], ids=["6_box", "7_point"])
def test_6_box_and_7_point(clip: SyntheticClip, server: str, tmp_dir: Path, example: str) -> None:
    """Both prompt ball 7: section 6's box is where it sits, section 7's point is on it."""
    found = printed_objects(run(example, clip, server, tmp_dir), "obj")
    assert list(found) == [1] and np.allclose(found[1], ball_box(7, 0), atol=0.04), found
