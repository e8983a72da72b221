"""Hostile uploads: files that point elsewhere, declare far more than they hold, or
carry names that are paths.

Each is refused at submit with a 4xx naming the field, and nothing it names is
touched: its URLs point at a loopback server of the test and its paths at a FIFO,
so a request or a reader on the FIFO would show. Decode bombs are measured by the
API process's peak memory.
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import httpx
import numpy as np
import pytest

from services.cli.embedded import EmbeddedService
from services.errors import InputTooLarge, InvalidInput
from services.media.synthetic import SyntheticClip
from services.media.video import (
    JPEG_MAGIC,
    PNG_MAGIC,
    image_size,
    probe,
    read_frames,
    run_ffmpeg,
    video_size,
)
from tests.helpers import error_of, submit, wait
from tests.support.receiver import Receiver

pytestmark = pytest.mark.timeout(120)


@dataclass
class Canary:
    """Where a hostile file's references lead: a loopback HTTP server and a FIFO."""

    receiver: Receiver
    fifo: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.receiver.port}"

    def fifo_has_reader(self) -> bool:
        """Whether anyone holds the FIFO open for reading (opening it blocks until a writer)."""
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            assert exc.errno == errno.ENXIO, exc
            return False
        os.close(fd)
        return True

    def assert_untouched(self) -> None:
        assert [r.path for r in self.receiver.requests] == []
        assert not self.fifo_has_reader()


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[Canary]:
    fifo = tmp_path / "outside" / "secret.ts"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    with Receiver() as receiver:
        yield Canary(receiver, fifo)


def hls(c: Canary) -> bytes:
    return (
        f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{c.url}/seg0.ts\n"
        f"#EXTINF:1,\n{c.fifo}\n#EXTINF:1,\nfile://{c.fifo}\n#EXT-X-ENDLIST\n"
    ).encode()


def hls_master(c: Canary) -> bytes:
    return f"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\n{c.url}/low.m3u8\n".encode()


def concat(c: Canary) -> bytes:
    return f"ffconcat version 1.0\nfile '{c.fifo}'\nfile '{c.url}/part.mp4'\n".encode()


def dash(c: Canary) -> bytes:
    return (
        '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        'mediaPresentationDuration="PT10S" minBufferTime="PT1S">'
        f'<BaseURL>{c.url}/</BaseURL><Period><AdaptationSet mimeType="video/mp4">'
        '<Representation id="1" bandwidth="1000" width="64" height="64" codecs="avc1.42c00a">'
        '<SegmentTemplate initialization="init.mp4" media="seg$Number$.m4s" duration="1"/>'
        "</Representation></AdaptationSet></Period></MPD>\n"
    ).encode()


def sdp(c: Canary) -> bytes:
    port = c.receiver.port
    return (
        f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=clip\nu={c.url}/sdp\nc=IN IP4 127.0.0.1\nt=0 0\n"
        f"m=video {port} RTP/AVP 96\na=rtpmap:96 H264/90000\na=control:{c.url}/track\n"
    ).encode()


def mp4_header_then_playlist(c: Canary) -> bytes:
    return b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + hls(c)


def _chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)


def _strl(kind: bytes, handler: bytes, strf: bytes) -> bytes:
    strh = (
        kind
        + handler
        + struct.pack("<IHHIIIIIIII4h", 0, 0, 0, 0, 1, 25, 0, 1, 0, 0, 0, 0, 0, 64, 64)
    )
    return _chunk(b"LIST", b"strl" + _chunk(b"strh", strh) + _chunk(b"strf", strf))


def avi_with_playlist(c: Canary) -> bytes:
    """An AVI whose subtitle stream holds a GAB2 file that is an HLS playlist (the
    old "HLS in AVI" exploit: the demuxer used to probe and open the embedded file)."""
    name = "playlist.m3u8".encode("utf-16-le")
    body = hls(c)
    gab2 = b"GAB2\0" + struct.pack("<HI", 2, len(name)) + name + struct.pack("<HI", 4, len(body))
    bitmap = struct.pack("<IiiHH4sIiiII", 40, 64, 64, 1, 24, b"MJPG", 64 * 64 * 3, 0, 0, 0, 0)
    avih = struct.pack("<14I", 40000, 0, 0, 0, 1, 0, 2, 0, 64, 64, 0, 0, 0, 0)
    hdrl = _chunk(b"avih", avih) + _strl(b"vids", b"MJPG", bitmap) + _strl(b"txts", b"\0" * 4, b"")
    movi = _chunk(b"00dc", b"\xff\xd8\xff\xe0not a jpeg") + _chunk(b"01tx", gab2 + body)
    riff = b"AVI " + _chunk(b"LIST", b"hdrl" + hdrl) + _chunk(b"LIST", b"movi" + movi)
    return b"RIFF" + struct.pack("<I", len(riff)) + riff


REFERRING: dict[str, Callable[[Canary], bytes]] = {
    "hls": hls,
    "hls_master": hls_master,
    "concat": concat,
    "dash": dash,
    "sdp": sdp,
    "mp4_header_then_playlist": mp4_header_then_playlist,
    "avi_with_playlist": avi_with_playlist,
}


def box_spec(clip: SyntheticClip) -> dict[str, object]:
    return {"classes": [{"label": "disc", "boxes": [clip.box(0)]}]}


def post_video(
    client: httpx.Client, spec: dict[str, object], content: bytes, name: str = "clip.mp4"
) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        data={"spec": json.dumps(spec)},
        files={"video": (name, content, "video/mp4")},
        timeout=20,
    )


@pytest.mark.parametrize("name", sorted(REFERRING))
@pytest.mark.parametrize("filename", ["clip.mp4", "clip.m3u8"])
def test_file_that_refers_elsewhere_is_refused_and_nothing_is_read(
    acme: httpx.Client, clip: SyntheticClip, canary: Canary, name: str, filename: str
) -> None:
    response = post_video(acme, box_spec(clip), REFERRING[name](canary), filename)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert (error["code"], error["field"]) == ("invalid_input", "video"), error
    canary.assert_untouched()


@pytest.mark.parametrize("name", sorted(REFERRING))
def test_probe_of_a_playlist_named_as_one_reads_nothing(
    tmp_path: Path, canary: Canary, name: str
) -> None:
    """In process, with the extension that makes ffmpeg's own guessing take a playlist."""
    path = tmp_path / "upload.m3u8"
    path.write_bytes(REFERRING[name](canary))
    with pytest.raises(InvalidInput) as refused:
        probe(path)
    assert refused.value.field == "video"
    canary.assert_untouched()


def test_referring_text_is_named_in_the_message(
    acme: httpx.Client, clip: SyntheticClip, canary: Canary
) -> None:
    response = post_video(acme, box_spec(clip), hls(canary))
    assert "HLS playlist, not a video" in error_of(response)["message"]
    response = post_video(acme, box_spec(clip), concat(canary))
    assert "concat script" in error_of(response)["message"]


def test_run_ffmpeg_whitelists_every_input(
    tmp_path: Path, clip: SyntheticClip, canary: Canary
) -> None:
    """ffmpeg's input options hold for the next ``-i`` only: the second input is checked too."""
    playlist = tmp_path / "second.m3u8"
    playlist.write_bytes(hls(canary))
    out = tmp_path / "out.mp4"
    args = ["-i", str(clip.path), "-i", str(playlist), "-map", "0:v", "-map", "1", "-c", "copy"]
    with pytest.raises(RuntimeError, match="ffmpeg failed"):
        run_ffmpeg([*args, str(out)])
    canary.assert_untouched()
    run_ffmpeg(["-i", str(clip.path), "-map", "0:v", "-c", "copy", str(out)])
    assert video_size(out)[:2] == (clip.width, clip.height)


def test_not_a_video_is_refused(acme: httpx.Client, clip: SyntheticClip) -> None:
    ok, png = cv2.imencode(".png", np.zeros((64, 96, 3), np.uint8))
    assert ok
    for content in [
        np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        png.tobytes(),
        b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",
        b"RIFF\x04\x00\x00\x00AVI ",
        b"\x1a\x45\xdf\xa3" + b"\x00" * 64,
    ]:
        response = post_video(acme, box_spec(clip), content)
        assert response.status_code == 422, (content[:16], response.text)
        assert error_of(response)["field"] == "video"


# Decode bombs and files that declare far more than they hold.


def png_image(width: int, height: int) -> bytes:
    """A gray PNG of zeros, deflated row by row: a few hundred KB that inflate to width*height."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    deflate = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return PNG_MAGIC + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_in_mov(path: Path, side: int) -> Path:
    """One PNG-coded frame of side x side in a MOV: decoding it takes side² bytes."""
    with av.open(str(path), "w", format="mov") as container:
        stream = container.add_stream("png", rate=1)
        stream.width = stream.height = side
        stream.pix_fmt = "gray"
        packet = av.Packet(png_image(side, side))
        packet.stream = stream
        packet.pts = packet.dts = 0
        packet.time_base = Fraction(1, 1000)
        container.mux(packet)
    return path


def h264_frame(path: Path, side: int) -> Path:
    """A real one-frame H.264 stream of side x side: a flat frame compresses to nothing."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "51"}
        frame = av.VideoFrame(side, side, "yuv420p")
        for plane, value in zip(frame.planes, (16, 128, 128), strict=True):
            np.frombuffer(plane, np.uint8)[:] = value
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return path


def frames_at(path: Path, times: list[int], rate: Fraction, codec: str = "libx264") -> Path:
    """A 64x64 clip with one frame at each of ``times`` (in units of 1/rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for pts in times:
            frame = av.VideoFrame(64, 64, stream.pix_fmt)
            for plane in frame.planes:
                np.frombuffer(plane, np.uint8)[:] = 128
            frame.pts, frame.time_base = pts, 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def many_streams(path: Path, count: int) -> Path:
    with av.open(str(path), "w") as container:
        streams = [container.add_stream("ffv1", rate=12) for _ in range(count)]
        for stream in streams:
            stream.width = stream.height = 16
            stream.pix_fmt = "gray"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16), np.uint8), format="gray")
        for packet in [*streams[0].encode(frame), *streams[0].encode()]:
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    return {
        "png_12000": png_in_mov(folder / "png12000.mp4", 12000),
        "h264_8192": h264_frame(folder / "h264_8192.mp4", 8192),
    }


def api_pid(service: EmbeddedService) -> int:
    return service.children[0].pid


def reset_peak_memory(pid: int) -> int:
    """Reset the process's peak resident size; its resident size now, in KiB."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"the peak memory of a process cannot be reset here: {exc}")
    return memory_kib(pid, "VmRSS")


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.parametrize(
    ("bomb", "size"), [("png_12000", "12000x12000"), ("h264_8192", "8192x8192")]
)
def test_huge_frames_are_refused_from_the_header(
    service: EmbeddedService,
    acme: httpx.Client,
    clip: SyntheticClip,
    bombs: dict[str, Path],
    bomb: str,
    size: str,
) -> None:
    content = bombs[bomb].read_bytes()
    assert len(content) < 300_000
    pid = api_pid(service)
    before = reset_peak_memory(pid)
    response = post_video(acme, box_spec(clip), content)
    grew_mib = (memory_kib(pid, "VmHWM") - before) / 1024
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert (error["code"], error["field"]) == ("input_too_large", "video")
    assert f"the video is {size}; the limit is 1920x1080" in error["message"]
    assert grew_mib < 48, f"the API grew by {grew_mib:.0f} MiB refusing a {size} frame"


def test_probe_without_limits_still_caps_decoding(bombs: dict[str, Path]) -> None:
    before = reset_peak_memory(os.getpid())
    with pytest.raises(InputTooLarge, match="12000x12000"):
        probe(bombs["png_12000"])
    assert (memory_kib(os.getpid(), "VmHWM") - before) / 1024 < 48


def annexb(width: int, height: int, frames: int) -> bytes:
    """Raw H.264 (Annex B) of flat frames, each starting its own coded video sequence."""
    out = io.BytesIO()
    with av.open(out, "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "51", "bf": "0"}
        for _ in range(frames):
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane in frame.planes:
                np.frombuffer(plane, np.uint8)[:] = 128
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def test_frames_never_outgrow_the_declared_size(tmp_path: Path) -> None:
    """Eight 96x64 frames, then one of 1024x1024 in the same stream: probe sees 96x64
    (the big frame comes after its look-ahead), and decoding refuses the big frame."""
    raw = annexb(96, 64, 8) + annexb(1024, 1024, 1)
    path = tmp_path / "grows.ts"
    with av.open(io.BytesIO(raw), format="h264") as source, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        packets = [p for p in source.demux(source.streams.video[0]) if p.size]
        for index, packet in enumerate(packets):
            packet.stream, packet.time_base = stream, Fraction(1, 90000)
            packet.pts = packet.dts = index * 90000
            out.mux(packet)
    info = probe(path, max_width=1920, max_height=1080, max_duration_s=20)
    assert (info.width, info.height, info.frames) == (96, 64, 9)
    shapes = {frame.shape for frame in read_frames(path)}
    assert shapes == {(64, 96, 3)}


def test_ten_hours_in_a_few_kilobytes_is_refused(
    acme: httpx.Client, clip: SyntheticClip, tmp_path: Path
) -> None:
    files = {
        "three frames five hours apart (MKV)": frames_at(
            tmp_path / "apart.mkv", [0, 18_000, 36_000], Fraction(1)
        ),
        "a still every hour (AVI at 1/3600 fps)": frames_at(
            tmp_path / "still.avi", list(range(10)), Fraction(1, 3600), "mjpeg"
        ),
    }
    for what, path in files.items():
        assert path.stat().st_size < 20_000, what
        response = post_video(acme, box_spec(clip), path.read_bytes(), path.name)
        assert response.status_code == 422, (what, response.text)
        error = error_of(response)
        assert (error["code"], error["field"]) == ("input_too_large", "video"), what
        assert "the limit is 20 s" in error["message"], (what, error)


def test_a_thousand_streams_are_refused(
    acme: httpx.Client, clip: SyntheticClip, tmp_path: Path
) -> None:
    path = many_streams(tmp_path / "many.mkv", 1000)
    response = post_video(acme, box_spec(clip), path.read_bytes(), "many.mkv")
    assert response.status_code == 422, response.text
    assert error_of(response)["field"] == "video"
    assert "more than 16 streams" in error_of(response)["message"]


def test_mask_image_bomb_is_refused_from_its_header(
    service: EmbeddedService, acme: httpx.Client, clip: SyntheticClip, tmp_path: Path
) -> None:
    mask = tmp_path / "mask.png"
    mask.write_bytes(png_image(12000, 12000))
    assert mask.stat().st_size < 300_000
    pid = api_pid(service)
    before = reset_peak_memory(pid)
    response = submit(acme, {"mode": "remove"}, clip.path, mask=mask)
    grew_mib = (memory_kib(pid, "VmHWM") - before) / 1024
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert (error["code"], error["field"]) == ("input_too_large", "mask")
    assert "12000x12000" in error["message"]
    assert grew_mib < 48, f"the API grew by {grew_mib:.0f} MiB refusing a mask bomb"


def test_mask_in_another_image_format_is_refused_at_submit(
    acme: httpx.Client, clip: SyntheticClip, tmp_path: Path
) -> None:
    """The pipeline reads PNG and JPEG masks only; a BMP fails at submit, not in the job."""
    mask = tmp_path / "mask.bmp"
    ok, data = cv2.imencode(".bmp", np.full((clip.height, clip.width), 255, np.uint8))
    assert ok
    mask.write_bytes(data.tobytes())
    response = submit(acme, {"mode": "remove"}, clip.path, mask=mask)
    assert response.status_code == 422, response.text
    assert error_of(response)["field"] == "mask"
    assert "PNG/JPEG" in error_of(response)["message"]


def test_image_size_reads_headers_only(tmp_path: Path) -> None:
    for ext in (".png", ".jpg"):
        ok, data = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
        assert ok
        path = tmp_path / f"image{ext}"
        path.write_bytes(data.tobytes())
        assert image_size(path) == (53, 37)
    claim = tmp_path / "claim.jpg"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, 30000, 40000, 1) + b"\x01\x11\x00"
    claim.write_bytes(JPEG_MAGIC[:2] + b"\xff\xe0\x00\x04ab" + sof + b"\xff\xd9")
    assert image_size(claim) == (40000, 30000)
    claim.write_bytes(b"GIF89a")
    assert image_size(claim) is None


# Upload names: never a path, never in a key.


def multipart(fields: list[tuple[str, bytes | None, bytes]]) -> tuple[bytes, str]:
    """A multipart body written by hand, so a filename goes out byte for byte."""
    boundary = "vorhostileboundary7"
    parts = []
    for name, filename, content in fields:
        disposition = f'form-data; name="{name}"'.encode()
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        parts.append(
            f"--{boundary}\r\n".encode()
            + b"Content-Disposition: "
            + disposition
            + b"\r\nContent-Type: application/octet-stream\r\n\r\n"
            + content
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


HOSTILE_NAMES = [
    b"../../etc/passwd.mp4",
    b"..\\..\\windows\\clip.mp4",
    b"/etc/passwd",
    b"clip\x00.sh.mp4",
    b"a" * 5000 + b".mp4",
    "vidéo 📹 ünï.MP4".encode(),
    b"CON",
    b"nul.mp4",
    b"clip.mp4/../../x.mkv",
    b"%2e%2e%2fclip.mp4",
    b".mp4",
    b"clip.mp4\xff\xfe",
    b"clip.mp4\rX-Injected: 1",
]
PARSER_MAY_REFUSE = {b"a" * 5000 + b".mp4", b"clip.mp4\rX-Injected: 1"}
"""A header line this long, or a bare CR in it, is malformed multipart: a 400 is fine."""


def data_dir_of(service: EmbeddedService) -> Path:
    return Path(service.env["VOR_DATA_DIR"]).resolve()


def storage_of(service: EmbeddedService) -> Path:
    url = service.env.get("VOR_STORAGE_URL") or ""
    if url and not url.startswith("file://"):
        pytest.skip("the service stores in S3 here")
    return Path(url.removeprefix("file://")) if url else data_dir_of(service) / "storage"


def test_upload_names_never_reach_the_filesystem(
    service: EmbeddedService, acme: httpx.Client, clip: SyntheticClip
) -> None:
    storage = storage_of(service)
    spec = json.dumps(box_spec(clip)).encode()
    accepted: list[str] = []
    for filename in HOSTILE_NAMES:
        body, content_type = multipart(
            [("spec", None, spec), ("video", filename, clip.path.read_bytes())]
        )
        response = acme.post("/v1/jobs", content=body, headers={"content-type": content_type})
        if response.status_code != 202:
            assert filename in PARSER_MAY_REFUSE, (filename[:40], response.text)
            assert response.status_code == 400
            assert set(error_of(response)) == {"code", "message", "field"}
            continue
        job_id = response.json()["id"]
        accepted.append(job_id)
        stored = sorted(p.name for p in (storage / "jobs" / job_id).iterdir())
        assert stored[0] in {"input.mp4", "input.mkv"}, (filename[:40], stored)
    near = [data_dir_of(service), data_dir_of(service) / "uploads", storage, storage / "jobs"]
    names = [p.name for folder in near if folder.is_dir() for p in folder.iterdir()]
    assert not [n for n in names if "passwd" in n or "windows" in n or "Injected" in n]
    assert not Path("/etc/passwd.mp4").exists()
    assert wait(acme, accepted[0])["status"] == "succeeded"
    for job_id in accepted[1:]:
        assert acme.delete(f"/v1/jobs/{job_id}").status_code == 204


def test_mask_upload_name_is_not_a_path(
    service: EmbeddedService, acme: httpx.Client, clip: SyntheticClip
) -> None:
    ok, mask = cv2.imencode(".png", np.full((clip.height, clip.width), 255, np.uint8))
    assert ok
    body, content_type = multipart(
        [
            ("spec", None, b'{"mode": "remove"}'),
            ("video", b"../clip.mp4", clip.path.read_bytes()),
            ("mask", b"../../../../tmp/evil.png", mask.tobytes()),
        ]
    )
    response = acme.post("/v1/jobs", content=body, headers={"content-type": content_type})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    folder = storage_of(service) / "jobs" / job_id
    assert {p.name for p in folder.iterdir()} >= {"input.mp4", "mask_upload.png"}
    assert not Path("/tmp/evil.png").exists()
    assert acme.delete(f"/v1/jobs/{job_id}").status_code == 204
