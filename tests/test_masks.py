"""Mask operations, pixel-exact on tiny object-id masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from services.errors import InvalidInput, VorError
from services.media.masks import (
    dilate,
    dilate_video,
    frame_count,
    ids_present,
    load_user_mask,
    select_ids,
    select_union,
    union,
)
from services.media.video import read_frames, write_video

pytestmark = pytest.mark.timeout(30)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

W, H, N = 24, 16, 5


def id_frames() -> list[np.ndarray]:
    """Ids 1 and 3 moving right, id 7 appearing on frame 2."""
    frames = []
    for t in range(N):
        frame = np.zeros((H, W), np.uint8)
        frame[2:6, 1 + t : 5 + t] = 1
        frame[8:14, 10:13] = 3
        if t >= 2:
            frame[10:12, 18:22] = 7
        frames.append(frame)
    return frames


def read_all(path: Path) -> np.ndarray:
    return np.stack(list(read_frames(path, "gray")))


@pytest.fixture
def ids_mkv(tmp_path: Path) -> Path:
    return write_video(tmp_path / "ids.mkv", id_frames(), 12.0, codec="ffv1")


def test_select_ids_keeps_only_the_chosen_ids(ids_mkv: Path, tmp_path: Path) -> None:
    out = read_all(select_ids(ids_mkv, [1, 7], tmp_path / "sel.mkv"))
    truth = np.stack([np.isin(f, [1, 7]) * 255 for f in id_frames()]).astype(np.uint8)
    assert out.shape == (N, H, W)
    np.testing.assert_array_equal(out, truth)


def test_select_ids_none_means_every_object(ids_mkv: Path, tmp_path: Path) -> None:
    out = read_all(select_ids(ids_mkv, None, tmp_path / "all.mkv"))
    np.testing.assert_array_equal(out, (np.stack(id_frames()) > 0) * 255)


def test_union_is_the_per_pixel_max(ids_mkv: Path, tmp_path: Path) -> None:
    a = select_ids(ids_mkv, [1], tmp_path / "a.mkv")
    b = select_ids(ids_mkv, [3], tmp_path / "b.mkv")
    merged = read_all(union([a, b], tmp_path / "u.mkv"))
    np.testing.assert_array_equal(merged, np.maximum(read_all(a), read_all(b)))
    assert set(np.unique(merged)) == {0, 255}
    assert merged[0, 3, 2] == 255 and merged[0, 10, 11] == 255 and merged[3, 10, 19] == 0


def test_select_union_equals_select_then_union(ids_mkv: Path, tmp_path: Path) -> None:
    other = write_video(
        tmp_path / "other.mkv", [np.full((H, W), 2, np.uint8)] * N, 12.0, codec="ffv1"
    )
    two_stage = union(
        [select_ids(ids_mkv, [3], tmp_path / "a.mkv"), select_ids(other, [9], tmp_path / "b.mkv")],
        tmp_path / "u.mkv",
    )
    one_pass = select_union([(ids_mkv, [3]), (other, [9])], tmp_path / "one.mkv")
    np.testing.assert_array_equal(read_all(one_pass), read_all(two_stage))


def test_union_of_one_mask_is_a_copy(ids_mkv: Path, tmp_path: Path) -> None:
    out = union([ids_mkv], tmp_path / "copy.mkv")
    assert out.read_bytes() == ids_mkv.read_bytes()


def test_union_refuses_masks_of_different_sizes(ids_mkv: Path, tmp_path: Path) -> None:
    small = write_video(tmp_path / "s.mkv", [np.zeros((8, 8), np.uint8)] * N, 12.0, codec="ffv1")
    with pytest.raises(VorError, match="different sizes"):
        union([ids_mkv, small], tmp_path / "u.mkv")


def test_union_refuses_masks_of_different_lengths(ids_mkv: Path, tmp_path: Path) -> None:
    short = write_video(tmp_path / "s.mkv", [np.zeros((H, W), np.uint8)] * 3, 12.0, codec="ffv1")
    with pytest.raises(VorError, match="frame counts"):
        union([ids_mkv, short], tmp_path / "u.mkv")


def test_dilate_grows_a_point_into_a_disc() -> None:
    mask = np.zeros((21, 21), np.uint8)
    mask[10, 10] = 255
    grown = dilate(mask, 3)
    assert grown[10, 7] == 255 and grown[7, 10] == 255 and grown[10, 6] == 0
    assert grown[7, 7] == 0, "an elliptical kernel leaves the square's corners out"
    assert dilate(mask, 0) is mask


def test_dilate_video(ids_mkv: Path, tmp_path: Path) -> None:
    binary = select_ids(ids_mkv, [3], tmp_path / "b.mkv")
    grown = read_all(dilate_video(binary, 1, tmp_path / "d.mkv"))
    assert grown.shape == (N, H, W)
    assert grown[0, 7, 11] == 255 and grown[0, 6, 11] == 0


def test_ids_present_gives_first_seen_boxes(ids_mkv: Path) -> None:
    found = ids_present(ids_mkv)
    assert list(found) == [1, 3, 7]
    assert found[1] == pytest.approx((1 / W, 2 / H, 4 / W, 4 / H))
    assert found[7] == pytest.approx((18 / W, 10 / H, 4 / W, 2 / H))


def test_frame_count(ids_mkv: Path) -> None:
    assert frame_count(ids_mkv) == N


def test_user_mask_video_with_targets(ids_mkv: Path, tmp_path: Path) -> None:
    out = load_user_mask(
        ids_mkv, frames=N, width=W * 2, height=H * 2, targets=[3], out=tmp_path / "m.mkv"
    )
    mask = read_all(out)
    assert mask.shape == (N, H * 2, W * 2)
    small = np.stack([(f == 3) * 255 for f in id_frames()]).astype(np.uint8)
    np.testing.assert_array_equal(mask[:, ::2, ::2], small)


def test_lossy_user_mask_is_thresholded(tmp_path: Path) -> None:
    frames = [np.where(f > 0, 240, 10).astype(np.uint8) for f in id_frames()]
    noisy = write_video(tmp_path / "noisy.mkv", frames, 12.0, codec="ffv1")
    mask = read_all(
        load_user_mask(noisy, frames=N, width=W, height=H, targets=None, out=tmp_path / "m.mkv")
    )
    np.testing.assert_array_equal(mask, (np.stack(id_frames()) > 0) * 255)


def test_single_image_is_used_for_every_frame(tmp_path: Path) -> None:
    image = np.zeros((H // 2, W // 2, 3), np.uint8)
    image[1:3, 2:5] = (0, 0, 255)
    png = tmp_path / "m.png"
    cv2.imwrite(str(png), image)
    mask = read_all(
        load_user_mask(png, frames=N, width=W, height=H, targets=None, out=tmp_path / "m.mkv")
    )
    assert mask.shape == (N, H, W)
    expected = np.zeros((H, W), np.uint8)
    expected[2:6, 4:10] = 255
    for frame in mask:
        np.testing.assert_array_equal(frame, expected)


def test_wrong_frame_count_is_refused(ids_mkv: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="the mask has 5 frames; the video has 16") as err:
        load_user_mask(ids_mkv, frames=16, width=W, height=H, targets=None, out=tmp_path / "m.mkv")
    assert err.value.field == "mask"
    assert not (tmp_path / "m.mkv").exists()


def test_an_empty_mask_is_refused(tmp_path: Path) -> None:
    png = tmp_path / "black.png"
    cv2.imwrite(str(png), np.zeros((H, W), np.uint8))
    with pytest.raises(InvalidInput, match="nothing to remove") as err:
        load_user_mask(png, frames=N, width=W, height=H, targets=None, out=tmp_path / "m.mkv")
    assert err.value.field == "mask"
    assert not (tmp_path / "m.mkv").exists()


def test_ids_without_targets_get_a_hint(ids_mkv: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="name the ids in targets"):
        load_user_mask(ids_mkv, frames=N, width=W, height=H, targets=None, out=tmp_path / "m.mkv")


@pytest.mark.parametrize("content", [b"not a video at all" * 10, b""])
def test_garbage_is_refused(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "mask.bin"
    bad.write_bytes(content)
    with pytest.raises(InvalidInput) as err:
        load_user_mask(bad, frames=N, width=W, height=H, targets=None, out=tmp_path / "m.mkv")
    assert err.value.field == "mask"


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    png = tmp_path / "m.png"
    cv2.imwrite(str(png), np.full((H, W), 255, np.uint8))
    png.write_bytes(png.read_bytes()[:30])
    with pytest.raises(InvalidInput, match="could not be decoded") as err:
        load_user_mask(png, frames=N, width=W, height=H, targets=None, out=tmp_path / "m.mkv")
    assert err.value.field == "mask"


@pytest.mark.skipif(not (DATA / "bmx-trees").exists(), reason="shared data not present")
def test_real_masks_as_client_masks(tmp_path: Path) -> None:
    """bmx-trees' FFV1 0/255 mask video and running-car's PNG of squares, resized."""
    bmx = load_user_mask(
        DATA / "bmx-trees" / "bmx-trees_mask.mkv",
        frames=80,
        width=216,
        height=120,
        targets=None,
        out=tmp_path / "bmx.mkv",
    )
    assert frame_count(bmx) == 80
    assert list(ids_present(bmx)) == [255]
    square = load_user_mask(
        DATA / "running-car" / "mask_square.png",
        frames=3,
        width=486,
        height=270,
        targets=None,
        out=tmp_path / "sq.mkv",
    )
    frames = read_all(square)
    assert frames.shape == (3, 270, 486)
    source = cv2.imread(str(DATA / "running-car" / "mask_square.png"), cv2.IMREAD_GRAYSCALE)
    assert source is not None
    expected = cv2.resize(source, (486, 270), interpolation=cv2.INTER_NEAREST) > 127
    assert expected.any()
    for frame in frames:
        np.testing.assert_array_equal(frame, expected * 255)
