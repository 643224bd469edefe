"""Trusted WebIRC gateways (issue #13 item 5): the config file's ``[[webirc]]`` blocks, and the pure checks
of the ``WEBIRC`` command (https://ircv3.net/specs/extensions/webirc).

A block names one gateway: ``name``, its ``password`` (or ``password-file``) and the ``hosts`` (IP addresses
or CIDRs) it connects from::

    [[webirc]]
    name = "kiwiirc"
    password-file = "/etc/freeq/webirc-kiwi.secret"
    hosts = ["192.0.2.10", "2001:db8:10::/64"]

The password may be plain text (the gateway has to send it as is; keep it in a ``password-file`` readable by
the server only) or an scrypt hash made by ``freeq-admin hash-password`` (``scrypt$...``). Plain text is
compared with :func:`hmac.compare_digest`; a hash is checked once per distinct password and the success
remembered (:class:`WebircGateway.password_ok`), so a busy gateway does not pay scrypt for every client.

Pure: no I/O beyond reading a ``password-file`` while parsing; nothing here touches a connection.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import re
from typing import Any, Iterable, Optional, Union

from freeq.config import ConfigError, block_tables, named_block
from freeq.configfile import read_secret_file
from freeq.state.masks import ip_of

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: At most this many [[webirc]] blocks, and hosts per block.
MAX_GATEWAYS = 64
MAX_HOSTS = 64
#: The longest password (plain or hash) and password file read.
MAX_PASSWORD = 512
#: Keys a [[webirc]] block may hold.
KEYS = frozenset({"name", "password", "password-file", "hosts"})
#: The longest hostname the WEBIRC command may set (a DNS name is at most 253 characters).
MAX_HOSTNAME = 253
#: A DNS name: dot-separated labels of letters, digits and inner hyphens (no wildcard, no trailing dot).
_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
#: The most options of one WEBIRC command read, and the longest option text.
MAX_OPTIONS = 16
MAX_OPTIONS_TEXT = 1024


@dataclasses.dataclass(frozen=True)
class WebircGateway:
    """One trusted gateway: who it is, the password it sends, and where it may connect from."""

    name: str
    password: str = dataclasses.field(repr=False)  # plain text or an scrypt hash; never shown
    hosts: tuple[Network, ...]
    #: sha256 digests of passwords the hash already accepted (a reload parses the blocks anew and forgets them).
    _verified: set[bytes] = dataclasses.field(default_factory=set, repr=False, compare=False)

    @property
    def hashed(self) -> bool:
        """Whether :attr:`password` is an scrypt hash rather than the password itself."""
        return self.password.startswith("scrypt$")

    def allows(self, ip: str) -> bool:
        """Whether a connection whose real peer address is ``ip`` may speak for this gateway."""
        addr = ip_of(ip)
        return addr is not None and any(addr.version == net.version and addr in net for net in self.hosts)

    def password_ok(self, given: str) -> bool:
        """Whether ``given`` is this gateway's password (constant-time; a hash through freeq.opers)."""
        data = given.encode("utf-8", "replace")
        if not self.hashed:
            return hmac.compare_digest(data, self.password.encode("utf-8"))
        digest = hashlib.sha256(data).digest()
        if digest in self._verified:
            return True
        from freeq.opers import verify_password  # the [[oper]] accounts' scrypt check and bounds

        if not verify_password(given, self.password):
            return False
        if len(self._verified) < 16:
            self._verified.add(digest)
        return True


def is_gateway_host(gateways: Iterable[WebircGateway], ip: str) -> bool:
    """Whether ``ip`` is one of the hosts of any gateway (its connections are counted per client, not per host)."""
    return any(g.allows(ip) for g in gateways)


def check_webirc(gateways: Iterable[WebircGateway], peer_ip: str, password: str) -> tuple[Optional[WebircGateway], str]:
    """The gateway a ``WEBIRC`` from ``peer_ip`` with ``password`` speaks for, or ``(None, why)``.

    The hosts are checked first: an address that is no gateway's learns nothing about any password (and never
    costs a hash check). The gateway name the command carries is informational only (the spec's ``gateway``
    parameter); the block is found by address and password.
    """
    listed = [g for g in gateways if g.allows(peer_ip)]
    if not listed:
        return None, "not a WebIRC gateway address"
    for gateway in listed:
        if gateway.password_ok(password):
            return gateway, ""
    return None, "wrong WebIRC password"


def clean_ip(text: str) -> Optional[str]:
    """The client address a gateway sent, canonical (``None`` when it is not an IP address).

    Unspecified, multicast and IPv4-mapped forms are normalised or refused: the result keys per-IP limits,
    bans and cloaks, so it must be one real unicast address.
    """
    if len(text) > 64:
        return None
    addr = ip_of(text)
    if addr is None or addr.is_unspecified or addr.is_multicast:
        return None
    return str(addr)


def clean_hostname(text: str, ip: str) -> str:
    """The client's hostname as a gateway sent it, if it is a plausible DNS name; else ``ip`` (the spec sends
    the IP as the hostname when reverse DNS failed). A name must hold a letter (``1.2.3.4`` as a hostname is
    not one, and may not differ from the IP) and may not start with ``:`` or carry anything outside DNS labels,
    so it is safe on the wire."""
    if text == ip or not text or len(text) > MAX_HOSTNAME or text.startswith(":"):
        return ip
    labels = text.split(".")
    if len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels):
        return ip
    if not any(ch.isalpha() for ch in labels[-1]):
        return ip  # an all-numeric top label: an address pretending to be a name
    return text.lower()


def believe_secure(options: dict[str, str], leg_secure: bool, peer_ip: str) -> bool:
    """Whether a WebIRC client's connection counts as secure: the gateway said so (option ``secure``) and its
    own connection here is secure too (TLS, or from loopback). Over a plaintext network leg the claim (and the
    password beside it) travelled in the clear: it is not believed."""
    if "secure" not in options:
        return False
    if leg_secure:
        return True
    addr = ip_of(peer_ip)
    return addr is not None and addr.is_loopback


def parse_options(text: str) -> dict[str, str]:
    """The options parameter of WEBIRC (space-separated ``name[=value]``, values escaped like tag values),
    bounded: at most :data:`MAX_OPTIONS` options of :data:`MAX_OPTIONS_TEXT` characters in all."""
    out: dict[str, str] = {}
    for item in text[:MAX_OPTIONS_TEXT].split(" "):
        if not item:
            continue
        name, _, value = item.partition("=")
        if name and len(out) < MAX_OPTIONS:
            out[name.lower()] = value
    return out


# ----------------------------------------------------------------------------------------------------------
# The config file's [[webirc]] blocks
# ----------------------------------------------------------------------------------------------------------
def _password(where: str, block: dict[str, Any]) -> str:
    if ("password" in block) == ("password-file" in block):
        raise ConfigError(f"{where}: give password or password-file (one of them)")
    if "password" in block:
        value = block["password"]
        if not isinstance(value, str):
            raise ConfigError(f"{where}: password must be a string")
    else:
        value = read_secret_file(where, "password-file", block["password-file"])
    # Never echo the value in a message: it is a secret.
    if not 8 <= len(value) <= MAX_PASSWORD or any(ch <= " " or ch == "\x7f" for ch in value):
        raise ConfigError(f"{where}: the password must be 8 to {MAX_PASSWORD} characters without spaces or "
                          "control characters (WEBIRC sends it as one word)")
    if value.startswith("scrypt$"):
        from freeq.opers import parse_hash

        try:
            parse_hash(value)
        except ValueError as e:
            raise ConfigError(f"{where}: password: {e}") from None
    return value


def _hosts(where: str, block: dict[str, Any]) -> tuple[Network, ...]:
    hosts = block.get("hosts")
    if isinstance(hosts, str):
        hosts = [hosts]
    if not isinstance(hosts, list) or not hosts:
        raise ConfigError(f"{where}: hosts must list the gateway's IP addresses or CIDRs")
    if len(hosts) > MAX_HOSTS:
        raise ConfigError(f"{where}: more than {MAX_HOSTS} hosts")
    out = []
    for host in hosts:
        if not isinstance(host, str):
            raise ConfigError(f"{where}: hosts must be strings")
        try:
            net = ipaddress.ip_network(host.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"{where}: hosts: {host[:60]!r} is not an IP address or CIDR") from None
        if net.prefixlen < (8 if net.version == 4 else 32):
            raise ConfigError(f"{where}: hosts: {net} is too wide for a gateway (at most a /8 or an IPv6 /32)")
        out.append(net)
    return tuple(out)


def parse_webirc_blocks(blocks: Any) -> tuple[WebircGateway, ...]:
    """The config file's ``[[webirc]]`` tables as :class:`WebircGateway` values (``Config.webirc``).

    Raises :class:`ConfigError` with one line (naming the block, never the password) on anything amiss.
    """
    out: list[WebircGateway] = []
    seen: set[str] = set()
    for i, block in enumerate(block_tables("webirc", blocks, MAX_GATEWAYS), 1):
        where = named_block("webirc", i, block, KEYS, seen)
        out.append(WebircGateway(block["name"], _password(where, block), _hosts(where, block)))
    return tuple(out)
