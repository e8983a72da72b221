"""Compositing the erased working copy back into the full-size original."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from services.errors import VorError
from services.media.compose import Blend, _bgr_frames, _planar_frames, composite, pad_even
from services.media.synthetic import SyntheticClip, make_clip
from services.media.video import probe, read_frames, run_ffmpeg, write_video

pytestmark = pytest.mark.timeout(60)

FULL_W, FULL_H, WORK_W, WORK_H, N = 192, 128, 96, 64, 10
GREY = 128


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticClip:
    folder = tmp_path_factory.mktemp("compose")
    return make_clip(folder / "orig.mp4", width=FULL_W, height=FULL_H, frames=N, audio=True)


@pytest.fixture(scope="module")
def working(clip: SyntheticClip) -> tuple[Path, Path]:
    """A flat grey "erased" video and the binary mask, both at half size."""
    folder = clip.path.parent
    erased = write_video(
        folder / "erased.mp4", [np.full((WORK_H, WORK_W, 3), GREY, np.uint8)] * N, clip.fps
    )
    small = [
        cv2.resize(
            (m > 0).astype(np.uint8) * 255, (WORK_W, WORK_H), interpolation=cv2.INTER_NEAREST
        )
        for m in clip.masks
    ]
    return erased, write_video(folder / "mask.mkv", small, clip.fps, codec="ffv1")


def stack(path: Path) -> np.ndarray:
    return np.stack(list(read_frames(path))).astype(np.int16)


def test_output_keeps_size_rate_count_and_audio(
    clip: SyntheticClip, working: tuple[Path, Path], tmp_path: Path
) -> None:
    seen: list[float] = []
    out = composite(clip.path, *working, tmp_path / "out.mp4", dilation=2, progress=seen.append)
    info, source = probe(out), probe(clip.path)
    assert (info.width, info.height, info.fps, info.frames) == (FULL_W, FULL_H, clip.fps, N)
    assert info.audio and source.audio
    assert seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    assert not list(tmp_path.glob(".*")), "the video-only intermediate is removed"
    assert _audio_packets(out) == _audio_packets(clip.path), "audio is copied, not re-encoded"


def test_pixels_outside_the_mask_are_the_original(
    clip: SyntheticClip, working: tuple[Path, Path], tmp_path: Path
) -> None:
    out = stack(composite(clip.path, *working, tmp_path / "out.mp4", dilation=2))
    original = stack(clip.path)
    kernel = np.ones((19, 19), np.uint8)
    far = np.stack([cv2.dilate((m > 0).astype(np.uint8), kernel) == 0 for m in clip.masks])
    inner = np.stack([cv2.erode((m > 0).astype(np.uint8), np.ones((5, 5))) > 0 for m in clip.masks])
    assert np.abs(out - original)[far].mean() < 3.0
    assert np.abs(out[inner] - GREY).mean() < 8.0
    assert np.abs(original[inner] - GREY).mean() > 40, "the objects differ from the fill"


def test_erased_shorter_than_original_is_an_error(clip: SyntheticClip, tmp_path: Path) -> None:
    short = write_video(tmp_path / "short.mp4", [np.zeros((WORK_H, WORK_W, 3), np.uint8)] * 3, 12)
    mask = write_video(
        tmp_path / "m.mkv", [np.zeros((WORK_H, WORK_W), np.uint8)] * N, 12, codec="ffv1"
    )
    with pytest.raises(VorError, match="erased video has 3 frames; the original has 10"):
        composite(clip.path, short, mask, tmp_path / "out.mp4", dilation=0)


def test_longer_mask_and_odd_size_without_audio(tmp_path: Path) -> None:
    """An odd-sized original is padded by one replicated row/column; extra frames are ignored."""
    frames = [np.full((33, 47, 3), 40 + 10 * t, np.uint8) for t in range(4)]
    original = write_video(tmp_path / "odd.mp4", frames, 10, pix_fmt="yuv444p")
    mask_frames = [np.zeros((33, 47), np.uint8) for _ in range(6)]
    mask_frames[1][5:15, 5:15] = 255
    mask = write_video(tmp_path / "m.mkv", mask_frames, 10, codec="ffv1")
    erased = write_video(
        tmp_path / "e.mkv",
        [np.full((33, 47, 3), 250, np.uint8)] * 6,
        10,
        codec="ffv1",
        pix_fmt="bgr0",
    )
    out = composite(original, erased, mask, tmp_path / "out.mp4", dilation=0)
    info = probe(out)
    assert (info.width, info.height, info.frames, info.audio) == (48, 34, 4, False)
    result = stack(out)
    assert abs(result[1, 10, 10].mean() - 250) < 6
    assert abs(result[0, 10, 10].mean() - 40) < 6


def test_half_height_odd_planes(tmp_path: Path) -> None:
    """yuv420p with an odd number of chroma rows (a 70-row frame, a 34-row working copy)."""
    original = write_video(tmp_path / "o.mp4", [np.full((70, 96, 3), 60, np.uint8)] * 3, 10)
    erased = write_video(tmp_path / "e.mp4", [np.full((34, 48, 3), 220, np.uint8)] * 3, 10)
    small = np.zeros((34, 48), np.uint8)
    small[10:24, 10:30] = 255
    mask = write_video(tmp_path / "m.mkv", [small] * 3, 10, codec="ffv1")
    result = stack(composite(original, erased, mask, tmp_path / "out.mp4", dilation=0))
    assert result.shape == (3, 70, 96, 3)
    assert abs(result[1, 34, 40].mean() - 220) < 8 and abs(result[1, 5, 90].mean() - 60) < 8


def test_rotation_is_kept(tmp_path: Path) -> None:
    source = make_clip(tmp_path / "c.mp4", width=64, height=48, frames=4)
    rotated = tmp_path / "rotated.mp4"
    run_ffmpeg(["-display_rotation", "90", "-i", str(source.path), "-c", "copy", str(rotated)])
    mask = write_video(tmp_path / "m.mkv", [np.zeros((48, 64), np.uint8)] * 4, 12, codec="ffv1")
    out = composite(rotated, source.path, mask, tmp_path / "out.mp4", dilation=0)
    with av.open(str(out)) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height, frame.rotation) == (64, 48, 90)


def test_blend_changes_nothing_outside_the_grown_mask() -> None:
    original = np.full((40, 40, 3), 10, np.uint8)
    erased = np.full((40, 40, 3), 200, np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[15:25, 15:25] = 255
    out = Blend.for_scale(dilation=3, feather=2, scale=1.0).apply(original, erased, mask)
    distance = cv2.distanceTransform((mask == 0).view(np.uint8), cv2.DIST_L2, 5)
    assert (out[distance > 3.05] == 10).all()
    assert (out[mask > 0] == 200).all(), "the feather stays inside the dilation"
    assert (out[distance <= 1] == 200).all()
    ring = out[(distance > 1.5) & (distance <= 3)][:, 0]
    assert ((ring > 10) & (ring < 200)).all(), "the edge is blended"
    assert out[15, 11, 0] < out[15, 13, 0], "the blend fades outwards"


def test_blend_scales_with_the_working_size() -> None:
    blend = Blend.for_scale(dilation=4, feather=2, scale=2.5)
    assert (blend.grow, blend.ramp) == (10, 5)
    assert Blend.for_scale(dilation=1, feather=5, scale=1.0).ramp == 1


@pytest.mark.parametrize("scale", [2, 1])
def test_planar_blend_matches_the_bgr_one(
    clip: SyntheticClip, working: tuple[Path, Path], tmp_path: Path, scale: int
) -> None:
    """The yuv420p path (even sizes) gives the picture the BGR path gives, frame by frame,
    with the working copy smaller than the original or as large."""
    erased, mask = working
    if scale == 1:
        grey = np.full((FULL_H, FULL_W, 3), GREY, np.uint8)
        erased = write_video(tmp_path / "e.mp4", [grey] * N, clip.fps)
        binary = [(m > 0).astype(np.uint8) * 255 for m in clip.masks]
        mask = write_video(tmp_path / "m.mkv", binary, clip.fps, codec="ffv1")
    blend = Blend.for_scale(dilation=2, feather=2, scale=float(scale))
    size = (FULL_W, FULL_H)
    planar = _planar_frames(clip.path, erased, mask, 0, blend, size)
    bgr = _bgr_frames(clip.path, erased, mask, 0, blend, size)
    for index, (yuv, expected) in enumerate(zip(planar, bgr, strict=True)):
        got = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420).astype(np.int16)
        reference = cv2.cvtColor(
            cv2.cvtColor(expected, cv2.COLOR_BGR2YUV_I420), cv2.COLOR_YUV2BGR_I420
        ).astype(np.int16)
        difference = np.abs(got - reference)
        assert difference.mean() < 1.5, index
        # Chroma is blended per 2x2 block with the block's mean alpha: at the feather's edge,
        # where the original's colour changes within a block, a few pixels differ.
        assert (difference.max(axis=2) > 20).mean() < 0.01, index


def test_pad_even() -> None:
    image = np.arange(15, dtype=np.uint8).reshape(3, 5)
    padded = pad_even(image)
    assert padded.shape == (4, 6)
    assert (padded[3, :5] == image[2]).all() and (padded[:3, 5] == image[:, 4]).all()
    assert pad_even(padded) is padded


def _audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(audio=0) if p.size]
