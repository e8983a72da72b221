"""Reading, probing and writing video with PyAV, and the bundled ffmpeg binary.

Every open goes through ``open_input`` so that no file can make the demuxer
reach for other files or URLs (HLS, concat, DASH): only the ``file`` protocol
and the container formats vor needs are allowed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import av
import numpy as np

from services.errors import InputTooLarge, InvalidInput
from services.models import InputInfo

ALLOWED_FORMATS = frozenset(
    {
        "mov",
        "mp4",
        "m4a",
        "3gp",
        "3g2",
        "mj2",
        "matroska",
        "webm",
        "avi",
        "mpegts",
        "mpeg",
        "flv",
        "ogg",
        "gif",
    }
)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def run_ffmpeg(args: list[str]) -> None:
    """Run the bundled ffmpeg on local files only; raise with its last words on failure."""
    cmd = [
        ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-y",
        "-protocol_whitelist",
        "file,pipe",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {proc.stderr.strip()[-800:]}")


def open_input(path: Path | str) -> Any:
    """Open a media file for reading, refusing anything that is not a plain local file."""
    try:
        container = av.open(str(path), mode="r", options={"protocol_whitelist": "file"})
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(
            f"the file is not a readable video ({_reason(exc)})", field="video"
        ) from exc
    names = set(container.format.name.split(","))
    if not names & ALLOWED_FORMATS:
        container.close()
        raise InvalidInput(
            f"container format {container.format.name!r} is not accepted; send MP4, MOV, MKV, "
            "WebM or AVI",
            field="video",
        )
    return container


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.split(": '")[0][:200] or type(exc).__name__


def probe(
    path: Path,
    *,
    max_duration_s: float | None = None,
    max_width: int | None = None,
    max_height: int | None = None,
    max_frames: int | None = None,
) -> InputInfo:
    """The ffprobe-level facts of a video, checked against the limits given.

    Demuxes every packet (cheap) to count frames and decodes the first frame, so
    a file that is truncated, empty or in a codec we cannot decode is refused here.
    """
    size = path.stat().st_size
    if size == 0:
        raise InvalidInput("the video file is empty (0 bytes)", field="video")
    container = open_input(path)
    try:
        if not container.streams.video:
            raise InvalidInput("the file has no video stream", field="video")
        if len(container.streams) > 16:
            raise InvalidInput(
                f"the file has {len(container.streams)} streams; at most 16 are accepted",
                field="video",
            )
        stream = container.streams.video[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise InvalidInput("the video stream has no frame size", field="video")
        if (max_width and width > max_width) or (max_height and height > max_height):
            raise InputTooLarge(
                f"the video is {width}x{height}; the limit is {max_width}x{max_height}",
                field="video",
            )
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        declared = float(container.duration / av.time_base) if container.duration else 0.0
        if max_duration_s and declared > max_duration_s * 1.05 + 1:
            raise InputTooLarge(
                f"the video lasts {declared:.1f} s; the limit is {max_duration_s:g} s",
                field="video",
            )
        frames = 0
        first_decoded = False
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            frames += 1
            if max_frames and frames > max_frames:
                raise InputTooLarge(f"the video has more than {max_frames} frames", field="video")
            if not first_decoded:
                first_decoded = bool(packet.decode())
        if not first_decoded:
            for _ in container.decode(stream):
                first_decoded = True
                break
        if frames == 0 or not first_decoded:
            raise InvalidInput("no frame of the video could be decoded", field="video")
        duration = frames / fps
        if max_duration_s and duration > max_duration_s + 1e-6:
            raise InputTooLarge(
                f"the video lasts {duration:.2f} s; the limit is {max_duration_s:g} s",
                field="video",
            )
        rotation = _rotation(stream)
        return InputInfo(
            duration_s=round(duration, 3),
            width=width,
            height=height,
            fps=round(fps, 3),
            frames=frames,
            audio=bool(container.streams.audio),
            codec=ctx.name,
            rotation=rotation,
            size_bytes=size,
        )
    except (av.FFmpegError, ValueError) as exc:
        raise InvalidInput(f"the video could not be read: {_reason(exc)}", field="video") from exc
    finally:
        container.close()


def _rotation(stream: Any) -> int:
    value = stream.metadata.get("rotate")
    if value is not None:
        try:
            return int(value) % 360
        except ValueError:
            return 0
    return 0


PixelFormat = Literal["bgr24", "gray", "rgb24"]


def read_frames(path: Path | str, pix_fmt: PixelFormat = "bgr24") -> Iterator[np.ndarray]:
    """Decode every frame as a numpy array (HxWx3 uint8, or HxW for gray)."""
    container = open_input(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format=pix_fmt)
    finally:
        container.close()


def video_size(path: Path | str) -> tuple[int, int, float, int]:
    """(width, height, fps, frame count) of a video vor wrote itself."""
    container = open_input(path)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        frames = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        return stream.codec_context.width, stream.codec_context.height, fps, frames
    finally:
        container.close()


class VideoWriter:
    """Write numpy frames to a file: H.264 (yuv420p) for results, FFV1 gray8 for masks."""

    def __init__(
        self,
        path: Path | str,
        width: int,
        height: int,
        fps: float,
        *,
        codec: Literal["libx264", "ffv1", "libvpx-vp9"] = "libx264",
        pix_fmt: str | None = None,
        crf: int = 18,
        preset: str = "veryfast",
    ) -> None:
        self.path = Path(path)
        self._container = av.open(str(path), mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        self._stream = self._container.add_stream(codec, rate=rate)
        self._stream.width = width
        self._stream.height = height
        if codec == "ffv1":
            self._stream.pix_fmt = pix_fmt or "gray"
            self._input_format = "gray" if self._stream.pix_fmt == "gray" else "bgr24"
        elif codec == "libvpx-vp9":
            self._stream.pix_fmt = pix_fmt or "yuva420p"
            self._stream.options = {"crf": str(crf), "b": "0", "deadline": "realtime"}
            self._input_format = "bgra" if "a" in self._stream.pix_fmt[3:] else "bgr24"
        else:
            self._stream.pix_fmt = pix_fmt or "yuv420p"
            self._stream.options = {"crf": str(crf), "preset": preset}
            self._input_format = "bgr24"
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=self._input_format)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_video(
    path: Path | str, frames: list[np.ndarray] | Iterator[np.ndarray], fps: float, **kwargs: Any
) -> Path:
    """Write frames (all one size) to ``path``; a convenience for tests and small clips."""
    writer: VideoWriter | None = None
    for image in frames:
        if writer is None:
            height, width = image.shape[:2]
            writer = VideoWriter(path, width, height, fps, **kwargs)
        writer.write(image)
    if writer is None:
        raise ValueError("no frames to write")
    writer.close()
    return Path(path)
