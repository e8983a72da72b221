"""Annotated frames, overlays, cutouts and before/after pictures."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from services.errors import InvalidInput
from services.media.preview import (
    before_after_png,
    cutout,
    id_colour,
    overlay_video,
    preview_png,
    tint,
)
from services.media.synthetic import SyntheticClip, make_clip
from services.media.video import probe, read_frames, write_video

pytestmark = pytest.mark.timeout(60)

W, H, N = 128, 96, 6


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    return make_clip(
        tmp_path_factory.mktemp("preview") / "clip.mp4", width=W, height=H, frames=N, objects=2
    )


@pytest.fixture(scope="module")
def half_ids(clip: SyntheticClip) -> Path:
    """The id mask at half size, as segmentation on a working copy would give it."""
    small = [cv2.resize(m, (W // 2, H // 2), interpolation=cv2.INTER_NEAREST) for m in clip.masks]
    return write_video(clip.path.parent / "ids.mkv", small, clip.fps, codec="ffv1")


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > 40


def test_colours_differ_between_ids() -> None:
    colours = {id_colour(i) for i in range(1, 9)}
    assert len(colours) == 8 and (0, 0, 0) not in colours


def test_preview_outlines_each_object_near_it(
    clip: SyntheticClip, half_ids: Path, tmp_path: Path
) -> None:
    out = preview_png(clip.path, half_ids, 2, tmp_path / "p.png")
    image = read_png(out)
    frame = list(read_frames(clip.path))[2]
    assert image.shape == (H, W, 3)
    drawn = changed(image, frame)
    for object_id in (1, 2):
        x, y, w, h = cv2.boundingRect((clip.masks[2] == object_id).astype(np.uint8))
        near = (slice(max(0, y - 3), y + h + 3), slice(max(0, x - 3), x + w + 3))
        assert drawn[near].sum() > 2 * (w + h), f"object {object_id} is outlined"
        in_its_colour = (image[near] == id_colour(object_id)).all(axis=2)
        assert in_its_colour.sum() > w + h, f"object {object_id} is drawn in its own colour"
    assert drawn[: H // 8, :].sum() < drawn.sum() / 4, "drawing stays near the objects"


def test_preview_frame_past_the_end(clip: SyntheticClip, half_ids: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="the video has 6 frames") as err:
        preview_png(clip.path, half_ids, 6, tmp_path / "p.png")
    assert err.value.field == "frame_index"


def test_tint_colours_only_the_objects() -> None:
    image = np.full((20, 20, 3), 100, np.uint8)
    ids = np.zeros((20, 20), np.uint8)
    ids[5:15, 5:15] = 3
    out = tint(image, ids)
    assert (out[0:3] == 100).all()
    assert (out[8:12, 8:12] != 100).any(axis=2).all()
    assert (out[5, 5:15] == id_colour(3)).all(), "the edge is drawn in the object's colour"


def test_overlay_video(clip: SyntheticClip, half_ids: Path, tmp_path: Path) -> None:
    out = overlay_video(clip.path, half_ids, tmp_path / "o.mp4")
    info = probe(out)
    assert (info.width, info.height, info.frames) == (W, H, N)
    first = next(read_frames(out))
    inside = clip.masks[0] > 0
    diff = changed(first, next(read_frames(clip.path)))
    far = cv2.dilate(inside.astype(np.uint8), np.ones((7, 7))) == 0
    assert diff[inside].mean() > 0.5 and diff[far].mean() < 0.02


def test_cutout_black_and_alpha(clip: SyntheticClip, half_ids: Path, tmp_path: Path) -> None:
    mp4, webm = cutout(clip.path, half_ids, [2], tmp_path / "c.mp4", tmp_path / "c.webm")
    assert probe(mp4).frames == N and probe(webm).frames == N
    kept = clip.masks[3] == 2
    outside = ~cv2.dilate(kept.astype(np.uint8), np.ones((9, 9))).astype(bool)
    black = list(read_frames(mp4))[3]
    assert black[outside].mean() < 2 and np.percentile(black[outside], 99) < 10
    assert black[cv2.erode(kept.astype(np.uint8), np.ones((5, 5))) > 0].mean() > 60
    alpha = decode_alpha(webm)
    assert len(alpha) == N and alpha[3].shape == (H, W)
    inner = cv2.erode(kept.astype(np.uint8), np.ones((5, 5))) > 0
    assert (alpha[3][inner] > 240).all() and (alpha[3][outside] < 15).all()
    assert (alpha[3][clip.masks[3] == 1] < 15).all(), "an id not chosen is transparent"


def test_before_after(clip: SyntheticClip, half_ids: Path, tmp_path: Path) -> None:
    result = write_video(tmp_path / "r.mp4", [np.zeros((H // 2, W // 2, 3), np.uint8)] * N, 12)
    out = before_after_png(clip.path, result, 1, tmp_path / "ba.png", mask=half_ids)
    image = read_png(out)
    assert image.shape[0] == H and image.shape[1] > 2 * W
    after = image[:, -W:]
    assert (after.max(axis=2) > 128).any(), "the label is written on the after panel"
    assert np.median(after) < 10


def read_png(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"{path.name} is not a readable image"
    return image


def decode_alpha(webm: Path) -> list[np.ndarray]:
    """The alpha planes: ffmpeg's native vp9 decoder drops alpha, libvpx-vp9 keeps it."""
    decoder = av.CodecContext.create("libvpx-vp9", "r")
    planes = []
    with av.open(str(webm)) as container:
        for packet in container.demux(video=0):
            for frame in decoder.decode(packet):
                assert frame.format.name == "yuva420p"
                planes.append(frame.to_ndarray(format="bgra")[..., 3])
    return planes
