"""Which addresses a client-supplied URL (``video_url``, ``webhook_url``) may reach.

Two checks share one policy. ``check_url`` refuses a bad URL early, when a job is
submitted. ``guarded_client`` repeats the check when each connection is opened,
against the very addresses it then connects to, so a name that resolved to a
public address at submit time and to ``127.0.0.1`` at send time (DNS rebinding),
or a redirect to an internal host, is still refused.

An address is allowed when it is public or inside one of the configured
networks (``VOR_ALLOWED_URL_NETWORKS``); cloud metadata endpoints never are.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import httpcore
import httpx

from services.errors import UrlNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[IPAddress]]

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, ...
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in resolver order, without repeats.

    ``getaddrinfo`` is what normalises the odd spellings (``0x7f000001``,
    ``2130706433``, ``127.1``) into the address a connection would really use.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[IPAddress, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen.setdefault(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]), None)
    return list(seen)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (6to4, Teredo, NAT64) and may reach."""
    found = []
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.append(address.teredo[1])
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _is_public(address: IPAddress) -> bool:
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


def refusal(address: IPAddress, allowed: Sequence[Network]) -> str | None:
    """Why ``address`` may not be reached, or ``None`` when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address"
    if any(address in net for net in allowed):
        return None
    if not _is_public(address):
        return f"{address} is not a public address"
    if isinstance(address, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(address):
            reason = refusal(inner, allowed)
            if reason:
                return f"{address} embeds {inner}, and {reason}"
    return None


def check_addresses(
    host: str,
    addresses: Iterable[IPAddress],
    allowed: Sequence[Network],
    *,
    field: str | None = None,
) -> None:
    """Raise ``UrlNotAllowed`` unless every address ``host`` resolved to is allowed."""
    for address in addresses:
        reason = refusal(address, allowed)
        if reason:
            raise UrlNotAllowed(
                f"host {host!r} resolves to {address}: {reason}; private networks can be "
                "allowed with VOR_ALLOWED_URL_NETWORKS",
                field=field,
            )


def _check_host_name(host: str, *, field: str | None) -> str:
    name = host.lower().rstrip(".")
    if not name:
        raise UrlNotAllowed("the URL has no host", field=field)
    if name in METADATA_HOSTS:
        raise UrlNotAllowed(f"host {host!r} is a cloud metadata endpoint", field=field)
    return name


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int] | None:
    """An http(s) URL's scheme, host and port (the default port filled in); None otherwise.

    Parsed, never compared as text: ``https://trusted.example@127.0.0.1/`` goes to
    127.0.0.1 and ``https://trusted.example.evil.example/`` to another host, though
    both start with ``https://trusted.example``.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return None
    if parsed.scheme not in DEFAULT_PORTS or not parsed.host:
        return None
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    return (parsed.scheme, parsed.host, port) if 0 < port < 65536 else None


def check_url(
    url: str,
    allowed: Sequence[Network],
    *,
    trusted_origins: Sequence[str] = (),
    field: str | None = None,
    resolver: Resolver = resolve,
) -> None:
    """Raise ``UrlNotAllowed`` unless ``url`` is http(s) and its host may be reached.

    A URL at a trusted origin (the configured SVOR upstream: same scheme, host
    and port exactly) skips the check. A host that does not resolve is refused:
    a URL nobody can fetch is no use.
    """
    trusted = {origin(t) for t in trusted_origins if t} - {None}
    if origin(url) in trusted:
        return
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UrlNotAllowed(f"not a valid URL: {exc}", field=field) from exc
    if parsed.scheme not in {"http", "https"}:
        raise UrlNotAllowed("only http:// and https:// URLs are allowed", field=field)
    host = _check_host_name(parsed.raw_host.decode("ascii"), field=field)
    port = parsed.port or DEFAULT_PORTS[parsed.scheme]
    if not 0 < port < 65536:
        raise UrlNotAllowed(f"port {port} is not a TCP port (1-65535)", field=field)
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise UrlNotAllowed(f"host {host!r} does not resolve: {exc}", field=field) from exc
    if not addresses:
        raise UrlNotAllowed(f"host {host!r} does not resolve", field=field)
    check_addresses(host, addresses, allowed, field=field)


class GuardedBackend(httpcore.NetworkBackend):
    """An httpcore backend that connects only to addresses the policy allows.

    It resolves the host itself, checks every address, then connects to the
    checked IP, so no second lookup can swap the address. TLS is unaffected:
    httpcore sends the URL's host name as SNI and verifies the certificate
    against it, whatever address the socket is connected to.
    """

    def __init__(
        self,
        allowed: Sequence[Network],
        *,
        field: str | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self._allowed = list(allowed)
        self._field = field
        self._resolver = resolver
        self._socket_backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        name = _check_host_name(host, field=self._field)
        try:
            addresses = self._resolver(name, port)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host!r}")
        check_addresses(host, addresses, self._allowed, field=self._field)
        error: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            try:
                return self._socket_backend.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not allowed for client-supplied URLs")


def guarded_transport(
    allowed: Sequence[Network],
    *,
    field: str | None = None,
    resolver: Resolver = resolve,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.HTTPTransport:
    """An ``HTTPTransport`` whose pool connects through ``GuardedBackend``.

    ``trust_env=False``: a proxy from the environment would make the proxy, not
    the checked address, the thing connected to.
    """
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ssl_context or httpx.create_ssl_context(),
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=5.0,
        network_backend=GuardedBackend(allowed, field=field, resolver=resolver),
    )
    return transport


def guarded_client(
    allowed: Sequence[Network],
    *,
    timeout: float,
    follow_redirects: bool = False,
    field: str | None = None,
    resolver: Resolver = resolve,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.Client:
    """An ``httpx.Client`` for client-supplied URLs; every connection is checked.

    A refused address raises ``UrlNotAllowed`` out of the request call. Redirects
    are off by default; where they are followed, each hop is checked the same way.
    """
    return httpx.Client(
        transport=guarded_transport(
            allowed, field=field, resolver=resolver, ssl_context=ssl_context
        ),
        timeout=timeout,
        follow_redirects=follow_redirects,
        trust_env=False,
    )
