"""Reading, probing and writing video with PyAV, and the bundled ffmpeg binary.

Every open goes through ``open_input`` so that no file can make the demuxer
reach for other files or URLs (HLS, concat, DASH, SDP): only the ``file``
protocol is allowed, and libavformat refuses any container outside
``ALLOWED_FORMATS`` right after guessing it from the bytes, before the demuxer
reads a header that could name another file. ``max_pixels`` caps every decoder,
so a tiny file that declares huge frames is refused before a frame is allocated.
"""

from __future__ import annotations

import re
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
    {"mov", "mp4", "matroska", "webm", "avi", "mpegts", "mpeg", "flv", "ogg", "gif"}
)
"""Demuxer names vor reads; none of them opens other files or URLs."""

FORMAT_WHITELIST = ",".join(sorted(ALLOWED_FORMATS))
MAX_STREAMS = 16
DEFAULT_MAX_PIXELS = 8192 * 8192
"""The decoder's frame-size cap when the caller gives no limit of its own."""


def pixel_cap(width: int, height: int) -> int:
    """A decoder's ``max_pixels`` for frames of at most width x height.

    Decoders check the size of what they allocate, padded and with side tables
    (MPEG-4 part 2 asks twice the width), so the cap leaves room: a bomb is
    hundreds of times larger, never four.
    """
    return 4 * (width + 128) * (height + 128)


ACCEPTED = "send MP4, MOV, MKV, WebM, AVI or MPEG-TS"

_REFERRING_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"#EXTM3U", "an HLS playlist"),
    (b"#EXTINF", "a playlist"),
    (b"[playlist]", "a playlist"),
    (b"<asx", "a playlist"),
    (b"ffconcat version", "an ffmpeg concat script"),
    (b"file ", "an ffmpeg concat script"),
    (b"<MPD", "a DASH manifest"),
    (b"v=0", "an SDP session description"),
)
"""How text formats that name other media begin; only to word the refusal."""


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def run_ffmpeg(args: list[str]) -> None:
    """Run the bundled ffmpeg on local files only; raise with its last words on failure.

    ffmpeg's input options hold for the next ``-i`` only, so every input gets
    the protocol and format whitelists, and its path the ``file:`` protocol.
    """
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y"]
    rest = iter(args)
    for arg in rest:
        if arg == "-i":
            source = next(rest)
            cmd += ["-protocol_whitelist", "file", "-format_whitelist", FORMAT_WHITELIST]
            cmd += ["-i", source if source.startswith("file:") else f"file:{source}"]
        else:
            cmd.append(arg)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {proc.stderr.strip()[-800:]}")


def _options(max_pixels: int, **extra: str) -> dict[str, str]:
    """Demuxer and decoder options for a file from outside (PyAV passes them to both)."""
    return {
        "protocol_whitelist": "file",
        "format_whitelist": FORMAT_WHITELIST,
        "max_streams": str(MAX_STREAMS + 1),
        "enable_drefs": "0",
        "max_pixels": str(max_pixels),
        **extra,
    }


def open_input(path: Path | str, *, max_pixels: int | None = None) -> Any:
    """Open a media file for reading, refusing anything that is not a plain local video.

    ``max_pixels`` (default ``DEFAULT_MAX_PIXELS``) caps the frames that opening
    may decode; a stream whose frames are larger comes back with no frame size.
    """
    location = f"file:{Path(path).resolve()}"
    options = _options(max_pixels or DEFAULT_MAX_PIXELS)
    try:
        container = av.open(location, mode="r", options=options)
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise InvalidInput(_unreadable(Path(path), exc), field="video") from exc
    names = set(container.format.name.split(","))
    if not names & ALLOWED_FORMATS:
        container.close()
        raise InvalidInput(
            f"container format {container.format.name!r} is not accepted; {ACCEPTED}",
            field="video",
        )
    return container


def _unreadable(path: Path, exc: BaseException) -> str:
    kind = sniff_referring(path)
    if kind:
        return (
            f"the file is {kind}, not a video: vor reads no other files or URLs; upload the "
            f"video itself ({ACCEPTED})"
        )
    return f"the file is not a readable video in an accepted container ({_reason(exc)}); {ACCEPTED}"


def sniff_referring(path: Path) -> str | None:
    """The kind of playlist, manifest or script ``path`` is, if its first bytes say so."""
    try:
        with path.open("rb") as handle:
            head = handle.read(512)
    except OSError:
        return None
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"<?xml"):
        head = head.partition(b"?>")[2].lstrip()
    return next((kind for prefix, kind in _REFERRING_FORMATS if head.startswith(prefix)), None)


def _reason(exc: BaseException) -> str:
    """FFmpeg's words for a failure, without PyAV's errno number and file name."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc).strip())
    return text.split(": '")[0][:200] or type(exc).__name__


def _header_size(path: Path) -> tuple[int, int]:
    """The frame size the container header declares, read without opening any decoder."""
    try:
        container = av.open(
            f"file:{path.resolve()}", mode="r", options=_options(1, codec_whitelist="-")
        )
    except (av.FFmpegError, ValueError, OSError):
        return 0, 0
    try:
        if not container.streams.video:
            return 0, 0
        ctx = container.streams.video[0].codec_context
        return int(ctx.width or 0), int(ctx.height or 0)
    finally:
        container.close()


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
    Frames larger than ``max_width`` x ``max_height`` pixels are never decoded.
    """
    size = path.stat().st_size
    if size == 0:
        raise InvalidInput("the video file is empty (0 bytes)", field="video")
    if max_width and max_height:
        limit, cap = f"{max_width}x{max_height}", pixel_cap(max_width, max_height)
    else:
        limit, cap = f"{DEFAULT_MAX_PIXELS} pixels", DEFAULT_MAX_PIXELS
    container = open_input(path, max_pixels=cap)
    try:
        stream = _video_stream(container)
        ctx = stream.codec_context
        width, height = _frame_size(path, ctx, cap, limit)
        if (max_width and width > max_width) or (max_height and height > max_height):
            raise InputTooLarge(
                f"the video is {width}x{height}; the limit is {limit}", field="video"
            )
        ctx.options = {"max_pixels": str(pixel_cap(width, height))}
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        declared = float(container.duration / av.time_base) if container.duration else 0.0
        slack = 0.05 * (max_duration_s or 0.0) + 1.0
        _check_duration(declared, max_duration_s, slack=slack, digits=1)
        frames, span = _count_frames(container, stream, max_frames)
        duration = frames / fps
        _check_duration(max(duration, span), max_duration_s, slack=1e-6, digits=2)
        return InputInfo(
            duration_s=round(duration, 3),
            width=width,
            height=height,
            fps=round(fps, 3),
            frames=frames,
            audio=bool(container.streams.audio),
            codec=ctx.name,
            rotation=_rotation(stream),
            size_bytes=size,
        )
    except (av.FFmpegError, ValueError) as exc:
        raise InvalidInput(f"the video could not be read: {_reason(exc)}", field="video") from exc
    finally:
        container.close()


def _video_stream(container: Any) -> Any:
    """The first video stream, of a file with a reasonable number of streams."""
    if not container.streams.video:
        raise InvalidInput("the file has no video stream", field="video")
    if len(container.streams) > MAX_STREAMS:
        raise InvalidInput(
            f"the file has more than {MAX_STREAMS} streams; at most {MAX_STREAMS} are accepted",
            field="video",
        )
    return container.streams.video[0]


def _frame_size(path: Path, ctx: Any, cap: int, limit: str) -> tuple[int, int]:
    """The frame size the decoder reports; when it reports none (it refused frames over
    ``cap`` pixels), the header's, to say why."""
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width > 0 and height > 0:
        return width, height
    width, height = _header_size(path)
    if width * height > cap:
        raise InputTooLarge(f"the video is {width}x{height}; the limit is {limit}", field="video")
    raise InvalidInput(
        f"the video stream has no readable frame size (or frames over {cap} pixels)",
        field="video",
    )


def _check_duration(seconds: float, limit: float | None, *, slack: float, digits: int) -> None:
    """Refuse a video over ``limit`` by more than ``slack`` seconds."""
    if limit and seconds > limit + slack:
        raise InputTooLarge(
            f"the video lasts {seconds:.{digits}f} s; the limit is {limit:g} s", field="video"
        )


def _count_frames(container: Any, stream: Any, max_frames: int | None) -> tuple[int, float]:
    """(frames, seconds from the first to the last timestamp), decoding only the first frame."""
    frames = 0
    first_decoded = False
    low = high = None
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        frames += 1
        if max_frames and frames > max_frames:
            raise InputTooLarge(f"the video has more than {max_frames} frames", field="video")
        if packet.pts is not None and packet.time_base:
            at = float(packet.pts * packet.time_base)
            low = at if low is None else min(low, at)
            high = at if high is None else max(high, at)
        if not first_decoded:
            first_decoded = bool(packet.decode())
    if not first_decoded:
        for _ in container.decode(stream):
            first_decoded = True
            break
    if frames == 0 or not first_decoded:
        raise InvalidInput("no frame of the video could be decoded", field="video")
    return frames, (high - low) if low is not None and high is not None else 0.0


def _rotation(stream: Any) -> int:
    value = stream.metadata.get("rotate")
    if value is not None:
        try:
            return int(value) % 360
        except ValueError:
            return 0
    return 0


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) a PNG or JPEG declares in its header, read without decoding
    (so a decompression bomb is measured before it is inflated); None otherwise."""
    data = path.read_bytes()
    if data.startswith(PNG_MAGIC) and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20]), int.from_bytes(data[20:24])
    if not data.startswith(JPEG_MAGIC):
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:
            at += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:
            at += 2
            continue
        if marker in _JPEG_SOF and at + 9 <= len(data):
            return int.from_bytes(data[at + 7 : at + 9]), int.from_bytes(data[at + 5 : at + 7])
        at += 2 + int.from_bytes(data[at + 2 : at + 4])
    return None


PixelFormat = Literal["bgr24", "gray", "rgb24", "yuv420p"]


def read_frames(path: Path | str, pix_fmt: PixelFormat = "bgr24") -> Iterator[np.ndarray]:
    """Decode every frame as a numpy array (HxWx3 uint8, or HxW for gray)."""
    container = open_input(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = stream.codec_context.width, stream.codec_context.height
        if width and height:
            # A frame may not outgrow the size the stream declared (a mid-stream bomb).
            stream.codec_context.options = {"max_pixels": str(pixel_cap(width, height))}
        index = 0
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format=pix_fmt)
                index += 1
        except av.FFmpegError as exc:
            raise InvalidInput(
                f"frame {index} of {Path(path).name} could not be decoded ({_reason(exc)}): the "
                f"file is damaged, or its frames grow past the {width}x{height} it declares"
            ) from exc
    finally:
        container.close()


def video_format(path: Path | str) -> tuple[str, str, int, int]:
    """(codec, pixel format, width, height) of the first video stream, from its header."""
    container = open_input(path)
    try:
        ctx = container.streams.video[0].codec_context
        pix_fmt = ctx.format.name if ctx.format is not None else ""
        return ctx.name, pix_fmt, int(ctx.width), int(ctx.height)
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
        x264_params: str | None = None,
        container_options: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._container = av.open(str(path), mode="w", options=container_options or {})
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
            if x264_params:
                self._stream.options |= {"x264-params": x264_params}
            self._input_format = "gray" if self._stream.pix_fmt == "gray" else "bgr24"
        self.frames = 0

    def write(self, image: np.ndarray, pix_fmt: str | None = None) -> None:
        """Encode one frame: BGR (gray for gray streams), or planes in ``pix_fmt``
        (``"yuv420p"``: Y above U and V, as PyAV lays them out) when given."""
        frame = av.VideoFrame.from_ndarray(
            np.ascontiguousarray(image), format=pix_fmt or self._input_format
        )
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
