"""File storage on a temporary directory, S3 storage against a real moto server."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from services.errors import InvalidInput, NotFound, StorageUnavailable, Unauthorized
from services.settings import Settings
from services.storage import (
    FileStorage,
    S3Storage,
    UrlSigner,
    s3_client,
    signing_secret,
    storage_from_settings,
)
from tests.support.s3 import s3_server  # noqa: F401

BAD_KEYS = ["", "/etc/passwd", "../x", "a/../b", "a/./b", ".hidden", "a//b", "a/", "a b", "a\\b"]


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def files(tmp_path: Path, clock: Clock) -> FileStorage:
    return FileStorage(tmp_path / "store", UrlSigner(b"k" * 32), "http://vor.test/", clock=clock)


def _signed(url: str) -> tuple[str, int, str, dict[str, list[str]]]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    key = unquote(parts.path.removeprefix("/v1/files/"))
    return key, int(query["expires"][0]), query["sig"][0], query


def test_file_put_get_exists(files: FileStorage, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(b"video bytes")
    files.put_file("jobs/j1/input.mp4", source)
    files.put_bytes("jobs/j1/meta.json", b"{}")
    assert files.exists("jobs/j1/input.mp4")
    assert not files.exists("jobs/j1/nothing")
    out = files.get_file("jobs/j1/input.mp4", tmp_path / "out.bin")
    assert out.read_bytes() == b"video bytes"
    files.put_bytes("jobs/j1/meta.json", b'{"v": 2}')
    assert (files.root / "jobs/j1/meta.json").read_bytes() == b'{"v": 2}'
    assert [p.name for p in (files.root / "jobs/j1").iterdir() if p.name.startswith(".")] == []
    with pytest.raises(NotFound):
        files.get_file("jobs/j1/missing", tmp_path / "x")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_file_refuses_bad_keys(files: FileStorage, key: str) -> None:
    with pytest.raises(InvalidInput):
        files.put_bytes(key, b"x")
    with pytest.raises(InvalidInput):
        files.url(key)


def test_file_url_resolves_until_it_expires(files: FileStorage, clock: Clock) -> None:
    files.put_bytes("jobs/j1/result.mp4", b"result")
    url = files.url("jobs/j1/result.mp4", expires_s=60, filename="my clip.mp4")
    assert url.startswith("http://vor.test/v1/files/jobs/j1/result.mp4?")
    key, expires, sig, query = _signed(url)
    assert expires == int(clock.now) + 60
    assert query["filename"] == ["my_clip.mp4"]
    assert files.resolve(key, expires, sig).read_bytes() == b"result"
    clock.now += 61
    with pytest.raises(Unauthorized, match="expired"):
        files.resolve(key, expires, sig)


def test_file_url_default_expiry_is_seven_days(files: FileStorage, clock: Clock) -> None:
    _, expires, _, _ = _signed(files.url("a.mp4"))
    assert expires == int(clock.now) + 7 * 24 * 3600


def test_signature_is_bound_to_key_and_expiry(files: FileStorage) -> None:
    files.put_bytes("jobs/j1/result.mp4", b"mine")
    files.put_bytes("jobs/j2/result.mp4", b"someone else's")
    key, expires, sig, _ = _signed(files.url("jobs/j1/result.mp4", expires_s=60))
    with pytest.raises(Unauthorized, match="signature"):
        files.resolve("jobs/j2/result.mp4", expires, sig)
    with pytest.raises(Unauthorized, match="signature"):
        files.resolve(key, expires + 3600, sig)
    with pytest.raises(Unauthorized, match="signature"):
        files.resolve(key, expires, "0" * 64)
    with pytest.raises(Unauthorized, match="signature"):
        files.resolve(key, expires, "é")
    other = FileStorage(files.root, UrlSigner(b"other"), "http://vor.test")
    with pytest.raises(Unauthorized, match="signature"):
        other.resolve(key, expires, sig)


def test_resolve_missing_file_is_not_found(files: FileStorage) -> None:
    key, expires, sig, _ = _signed(files.url("jobs/j1/gone.mp4"))
    with pytest.raises(NotFound):
        files.resolve(key, expires, sig)


def test_signer_verify(clock: Clock) -> None:
    signer = UrlSigner(b"secret")
    sig = signer.sign("a/b.mp4", 100)
    assert signer.verify("a/b.mp4", 100, sig, now=99)
    assert not signer.verify("a/b.mp4", 100, sig, now=101)
    assert not signer.verify("a/c.mp4", 100, sig, now=99)


def test_file_delete_prefix(files: FileStorage) -> None:
    for key in ["jobs/j1/a", "jobs/j1/sub/b", "jobs/j10/c", "jobs/j2/d"]:
        files.put_bytes(key, b"x")
    assert files.delete_prefix("jobs/j1/") == 2
    assert not (files.root / "jobs/j1").exists()
    assert files.exists("jobs/j10/c") and files.exists("jobs/j2/d")
    assert files.delete_prefix("jobs/j") == 2
    assert files.delete_prefix("jobs/nothing/") == 0
    with pytest.raises(InvalidInput):
        files.delete_prefix("")
    with pytest.raises(InvalidInput):
        files.delete_prefix("../")


def test_file_ping(files: FileStorage, tmp_path: Path) -> None:
    files.ping()
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    broken = FileStorage(blocker / "store", UrlSigner(b"k"), "http://vor.test")
    with pytest.raises(StorageUnavailable):
        broken.ping()


def test_storage_from_settings(tmp_path: Path) -> None:
    store = storage_from_settings(
        Settings(storage_url=f"file://{tmp_path}", webhook_secret="whsec_abc")
    )
    assert isinstance(store, FileStorage) and store.root == tmp_path.resolve()
    assert signing_secret(Settings(signing_key="s")) == b"s"
    derived = signing_secret(Settings(webhook_secret="whsec_abc"))
    assert derived not in (b"whsec_abc", signing_secret(Settings(webhook_secret="whsec_abd")))
    with pytest.raises(ValueError, match="VOR_SIGNING_KEY"):
        storage_from_settings(Settings(storage_url=f"file://{tmp_path}"))
    with pytest.raises(ValueError, match="not supported"):
        storage_from_settings(Settings(storage_url="ftp://x/y", signing_key="s"))
    s3 = storage_from_settings(Settings(storage_url="s3://bucket/some/prefix/"))
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")


@pytest.fixture
def s3(s3_server: tuple[str, str], request: pytest.FixtureRequest) -> S3Storage:  # noqa: F811
    endpoint, bucket = s3_server
    return S3Storage(bucket, f"t/{request.node.name}", s3_client(endpoint_url=endpoint))


def test_s3_put_get_exists_delete(s3: S3Storage, tmp_path: Path) -> None:
    source = tmp_path / "in.mp4"
    source.write_bytes(b"\x00video" * 1000)
    s3.put_file("jobs/j1/input.mp4", source)
    s3.put_bytes("jobs/j1/sub/mask.png", b"png")
    s3.put_bytes("jobs/j10/other", b"o")
    assert s3.exists("jobs/j1/input.mp4") and not s3.exists("jobs/j1/none")
    head = s3.client.head_object(Bucket=s3.bucket, Key=f"{s3.prefix}/jobs/j1/input.mp4")
    assert head["ContentType"] == "video/mp4"
    assert s3.get_file("jobs/j1/input.mp4", tmp_path / "out").read_bytes() == source.read_bytes()
    with pytest.raises(NotFound):
        s3.get_file("jobs/j1/none", tmp_path / "none")
    assert not (tmp_path / "none").exists()
    assert s3.delete_prefix("jobs/j1/") == 2
    assert not s3.exists("jobs/j1/sub/mask.png") and s3.exists("jobs/j10/other")
    with pytest.raises(InvalidInput):
        s3.put_bytes("../escape", b"x")
    s3.ping()


def test_s3_presigned_url_serves_the_bytes(s3: S3Storage) -> None:
    s3.put_bytes("jobs/j1/result.mp4", b"the result")
    url = s3.url("jobs/j1/result.mp4", expires_s=600, filename="result.mp4")
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200 and answer.content == b"the result"
    assert answer.headers["content-disposition"] == 'attachment; filename="result.mp4"'
    query = parse_qs(urlsplit(s3.url("jobs/j1/result.mp4", expires_s=10**9)).query)
    assert query["X-Amz-Expires"] == ["604800"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_s3_unreachable_is_transient_and_quick(
    s3_server: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    _, bucket = s3_server
    down = S3Storage(bucket, "", s3_client(endpoint_url=f"http://127.0.0.1:{_closed_port()}"))
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="could not be reached"):
        down.put_bytes("a", b"x")
    with pytest.raises(StorageUnavailable):
        down.ping()
    assert time.monotonic() - started < 10


def test_s3_missing_bucket_is_permanent(s3_server: tuple[str, str]) -> None:  # noqa: F811
    endpoint, _ = s3_server
    missing = S3Storage("no-such-bucket-vor", "", s3_client(endpoint_url=endpoint))
    with pytest.raises(Exception, match="NoSuchBucket") as caught:
        missing.put_bytes("a", b"x")
    assert not isinstance(caught.value, StorageUnavailable)
    with pytest.raises(StorageUnavailable):
        missing.ping()


@pytest.mark.parametrize("expires", [-(10**30), 10**30, -1, 253_402_300_800])
def test_resolve_refuses_an_expiry_that_is_not_a_time(files: FileStorage, expires: int) -> None:
    """Even correctly signed (by whoever holds the key), such a link is refused, not a crash."""
    files.put_bytes("a/b.txt", b"x")
    with pytest.raises(Unauthorized, match="expiry is not a time"):
        files.resolve("a/b.txt", expires, files.signer.sign("a/b.txt", expires))
