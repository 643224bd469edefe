"""Who is really asking: the client address behind trusted reverse proxies.

``X-Forwarded-For`` and ``Forwarded`` (RFC 7239) are believed only when the direct TCP peer is
in ``--trusted-proxies``; from anyone else they are ignored, so a client cannot choose the IP
its per-IP limits are counted against. The chain is read from the right: each trusted proxy
appends the address it saw, so the rightmost address that is not itself a trusted proxy is the
client. ``Forwarded`` wins over ``X-Forwarded-For`` when a request carries both. An entry that
is not an IP address (``unknown``, obfuscated names) stops the walk and the direct peer is used.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Optional, Sequence, Union

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def _parse_ip(text: str) -> Optional[Address]:
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6] or [v6]:port
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _forwarded_for(header: str) -> list[str]:
    """The ``for=`` values of a ``Forwarded`` header, in order."""
    out: list[str] = []
    for element in header.split(","):
        for pair in element.split(";"):
            name, sep, value = pair.strip().partition("=")
            if sep and name.strip().lower() == "for":
                out.append(value.strip())
    return out


def _forwarded_proto(header: str) -> Optional[str]:
    """The last ``proto=`` value of a ``Forwarded`` header (the one our proxy set)."""
    proto = None
    for element in header.split(","):
        for pair in element.split(";"):
            name, sep, value = pair.strip().partition("=")
            if sep and name.strip().lower() == "proto":
                proto = value.strip().strip('"').lower()
    return proto


class ProxyPolicy:
    """Resolves the client address of an HTTP request from the peer and the trusted proxies."""

    def __init__(self, trusted: Iterable[str] = ()) -> None:
        self.networks = [ipaddress.ip_network(n.strip(), strict=False) for n in trusted]

    def is_trusted(self, ip: Union[str, Address, None]) -> bool:
        """Whether ``ip`` is one of the configured reverse proxies."""
        if not self.networks or ip is None:
            return False
        addr = _parse_ip(ip) if isinstance(ip, str) else ip
        if addr is None:
            return False
        return any(addr.version == net.version and addr in net for net in self.networks)

    def client_ip(self, peer: str, forwarded: Optional[str] = None, x_forwarded_for: Optional[str] = None) -> str:
        """The client address for a request from ``peer`` carrying these headers."""
        peer_addr = _parse_ip(peer)
        peer_text = str(peer_addr) if peer_addr is not None else peer
        if not self.is_trusted(peer_addr):
            return peer_text
        chain: Sequence[str]
        if forwarded:
            chain = _forwarded_for(forwarded)
        elif x_forwarded_for:
            chain = [x for x in x_forwarded_for.split(",") if x.strip()]
        else:
            return peer_text
        client = peer_text
        for entry in reversed(chain):
            addr = _parse_ip(entry)
            if addr is None:
                return peer_text
            client = str(addr)
            if not self.is_trusted(addr):
                return client
        return client  # every hop was a trusted proxy: the leftmost one

    def for_request(self, request: Any) -> str:
        """:meth:`client_ip` for a ``twisted.web`` request."""
        peer = getattr(request.getClientAddress(), "host", None) or "unknown"
        return self.client_ip(peer, _header(request, b"forwarded"), _header(request, b"x-forwarded-for"))

    def is_secure(self, request: Any) -> bool:
        """Whether the client reached us over TLS (directly, or per a trusted proxy's headers)."""
        if request.isSecure():
            return True
        peer = getattr(request.getClientAddress(), "host", None)
        if not self.is_trusted(peer):
            return False
        forwarded = _header(request, b"forwarded")
        if forwarded:
            return _forwarded_proto(forwarded) == "https"
        proto = _header(request, b"x-forwarded-proto")
        return proto is not None and proto.split(",")[-1].strip().lower() == "https"


def _header(request: Any, name: bytes) -> Optional[str]:
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return ",".join(v.decode("latin-1") for v in values)
