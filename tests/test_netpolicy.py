"""The URL policy: spellings of internal addresses, and the connect-time guard."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.errors import UrlNotAllowed
from services.netpolicy import IPAddress, Resolver, check_url, guarded_client, refusal
from tests.support.receiver import Receiver

LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
LINK_LOCAL = [ipaddress.ip_network("169.254.0.0/16")]


def fixed(*addresses: str) -> Resolver:
    """A resolver that answers every name with ``addresses``."""
    return lambda host, port: [ipaddress.ip_address(a) for a in addresses]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rx:
        yield rx


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://127.1/",
        "http://localhost:8000/",
        "http://0.0.0.0/",
    ],
)
def test_loopback_spellings_refused_unless_allowed(url: str) -> None:
    with pytest.raises(UrlNotAllowed, match="not a public address") as caught:
        check_url(url, [], field="webhook_url")
    assert caught.value.field == "webhook_url"
    if "0.0.0.0" not in url:
        check_url(url, LOOPBACK)


@pytest.mark.parametrize(
    "address",
    ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.1.1", "100.64.0.1", "224.0.0.1",
     "240.0.0.1", "fc00::1", "fe80::1", "ff02::1", "fec0::1", "::ffff:10.0.0.1",
     "2002:a00:1::"],
)  # fmt: skip
def test_internal_addresses_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), []) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), []) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./",
    ],
)
def test_metadata_refused_even_when_allowed(url: str) -> None:
    everything = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    with pytest.raises(UrlNotAllowed, match="metadata"):
        check_url(url, LINK_LOCAL + everything)


def test_every_resolved_address_must_pass() -> None:
    mixed = fixed("93.184.216.34", "10.0.0.7")
    with pytest.raises(UrlNotAllowed, match="10.0.0.7"):
        check_url("https://example.test/", [], resolver=mixed)
    check_url("https://example.test/", [], resolver=fixed("93.184.216.34"))


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://x/", "http:///nohost"]
)
def test_non_http_urls_refused(url: str) -> None:
    with pytest.raises(UrlNotAllowed):
        check_url(url, [])


def test_unresolvable_host_refused() -> None:
    with pytest.raises(UrlNotAllowed, match="does not resolve"):
        check_url("http://no-such-host.invalid/", [])


def test_trusted_origin_skips_the_check() -> None:
    upstream = "http://127.0.0.1:9000/"
    check_url("http://127.0.0.1:9000/result.mp4", [], trusted_origins=[upstream])
    check_url("HTTP://127.0.0.1:9000", [], trusted_origins=[upstream])
    with pytest.raises(UrlNotAllowed):
        check_url("http://127.0.0.1:9001/x", [], trusted_origins=[upstream])


SVOR = "https://mipixgen-pre.ai.mioffice.cn"


@pytest.mark.parametrize(
    "url",
    [
        f"{SVOR}@127.0.0.1:18080/v.mp4",
        f"{SVOR}:pw@127.0.0.1/v.mp4",
        f"{SVOR}.evil.example/v.mp4",
        f"{SVOR}:8443/v.mp4",
        "http://mipixgen-pre.ai.mioffice.cn/v.mp4",
    ],
)
def test_trust_compares_scheme_host_and_port_never_a_prefix(url: str) -> None:
    """Each starts with the trusted base URL as text, but goes somewhere else."""
    with pytest.raises(UrlNotAllowed):
        check_url(url, [], trusted_origins=[SVOR], resolver=fixed("10.0.0.7"))


@pytest.mark.parametrize("url", ["http://127.0.0.1:65536/", "http://127.0.0.1:383010/x"])
def test_a_port_past_65535_is_refused(url: str) -> None:
    with pytest.raises(UrlNotAllowed, match="not a TCP port"):
        check_url(url, LOOPBACK)


def test_trusted_origin_with_default_port_spelled_out() -> None:
    """Trusted without a lookup: the resolver's private answer would be refused."""
    private = fixed("10.0.0.7")
    check_url(f"{SVOR}:443/v.mp4", [], trusted_origins=[SVOR], resolver=private)
    check_url(f"{SVOR}/v.mp4", [], trusted_origins=[f"{SVOR}:443/api"], resolver=private)


def test_guarded_client_refuses_loopback_unless_allowed(receiver: Receiver) -> None:
    with (
        guarded_client([], timeout=5) as client,
        pytest.raises(UrlNotAllowed, match="127.0.0.1"),
    ):
        client.get(receiver.url)
    assert receiver.requests == []
    with guarded_client(LOOPBACK, timeout=5) as client:
        assert client.get(receiver.url).status_code == 200
    assert len(receiver.requests) == 1


def test_guarded_client_connects_to_the_checked_address(receiver: Receiver) -> None:
    """The name never reaches the system resolver: the socket goes to the checked IP,
    and the Host header (and SNI, for https) still carries the name."""
    resolver = fixed("127.0.0.1")
    with guarded_client(LOOPBACK, timeout=5, resolver=resolver) as client:
        assert client.get(f"http://receiver.test:{receiver.port}/x").status_code == 200
    assert receiver.requests[0].host == f"receiver.test:{receiver.port}"


def test_guarded_client_catches_dns_rebinding(receiver: Receiver) -> None:
    answers: list[list[IPAddress]] = [
        [ipaddress.ip_address("93.184.216.34")],
        [ipaddress.ip_address("127.0.0.1")],
    ]

    def rebinding(host: str, port: int) -> list[IPAddress]:
        return answers.pop(0)

    url = f"http://rebind.test:{receiver.port}/"
    check_url(url, [], resolver=rebinding)
    with (
        guarded_client([], timeout=5, resolver=rebinding) as client,
        pytest.raises(UrlNotAllowed),
    ):
        client.get(url)
    assert receiver.requests == []


def test_guarded_client_does_not_follow_redirects(receiver: Receiver) -> None:
    receiver.redirect_to = "http://169.254.169.254/latest/meta-data/"
    with guarded_client(LOOPBACK, timeout=5) as client:
        answer = client.get(receiver.url)
    assert answer.status_code == 302
    assert len(receiver.requests) == 1


def test_followed_redirects_are_checked_per_hop(receiver: Receiver) -> None:
    receiver.redirect_to = "http://127.0.0.2:1/internal"
    only_receiver = [ipaddress.ip_network("127.0.0.1/32")]
    with (
        guarded_client(only_receiver, timeout=5, follow_redirects=True) as client,
        pytest.raises(UrlNotAllowed, match="127.0.0.2"),
    ):
        client.get(receiver.url)


def test_connection_refused_is_a_transport_error() -> None:
    with Receiver() as rx:
        port = rx.port
    with guarded_client(LOOPBACK, timeout=5) as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}/")


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_uses_the_host_name_not_the_address(tmp_path: Path) -> None:
    """Connected to the checked IP, the client still sends the name as SNI and
    verifies the certificate against the name."""
    cert, key = _self_signed(tmp_path, "receiver.test")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    names: list[str | None] = []

    def record_sni(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        names.append(name)

    server_tls.sni_callback = record_sni
    trust = ssl.create_default_context(cafile=str(cert))
    with (
        Receiver(tls=server_tls) as rx,
        guarded_client(LOOPBACK, timeout=5, resolver=fixed("127.0.0.1"), ssl_context=trust) as c,
    ):
        assert c.get(f"https://receiver.test:{rx.port}/").status_code == 200
        with pytest.raises(httpx.ConnectError, match="certificate"):
            c.get(f"https://impostor.test:{rx.port}/")
    assert names[0] == "receiver.test"
