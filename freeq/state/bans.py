"""Network bans (issue #13 item 4): K-lines and D-lines as plain data, their validation and their matching.

Three shapes of mask, decided by :func:`parse_mask`:

* a **D-line** is an IP address or a CIDR network (``203.0.113.7``, ``2001:db8::/32``), matched against the
  address a connection comes from, at accept (before registration);
* a **K-line** is a ``user@host`` glob (``*@203.0.113.*``, ``~bot*@*``; the host part may also be a CIDR
  network), matched at registration against the username (with and without its ``~``) and against the
  connection's IP address and its visible host (freeq does no reverse DNS: the IP is the real host);
* a **DID K-line** is a DID (``did:plc:...``), matched exactly against the account the user logged in to
  with SASL (so only at registration completion, when SASL is over).

Everything is bounded: a mask's length and wildcards (:data:`freeq.state.masks.MAX_MASK_LENGTH`,
:data:`~freeq.state.masks.MAX_MASK_WILDCARDS`), a glob needs :data:`MIN_LITERAL` literal characters, a
network's prefix is at least :data:`MIN_PREFIX` long, a reason :data:`MAX_REASON_BYTES`, a duration
:data:`MAX_DURATION`, and the list :data:`MAX_BANS` entries. Globs are matched by the linear
:class:`freeq.state.masks.Glob`, never by a regex. D-lines are one dict look-up per distinct prefix length,
so a connection costs at most 33 (IPv4) or 129 (IPv6) look-ups however many bans there are; K-line globs are
scanned (a handful of ``str`` calls each, only at registration).

Pure: no clock (``now`` is passed in), no I/O. The core (:mod:`freeq.core.bans`) turns outcomes into numerics,
the store (:mod:`freeq.store.bans`) keeps them, federation (:mod:`freeq.s2s.inbound`) applies peers' ones.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Iterable, Optional, Union

from freeq.state.masks import MAX_MASK_LENGTH, Glob, fold_text, ip_of, mask_problem

#: The kinds of ban: ``K`` (user@host glob, or a DID) and ``D`` (IP address or network).
KLINE = "K"
DLINE = "D"
KINDS = (KLINE, DLINE)

#: Most bans held (set by operators and received from peers together); more are refused with a NOTICE.
MAX_BANS = 10000
#: Longest duration a ban may have, in seconds (a year); 0 or none means permanent.
MAX_DURATION = 365 * 86400
#: Longest reason, in UTF-8 bytes (longer ones are cut).
MAX_REASON_BYTES = 200
#: Longest setter text kept (who set the ban: the operator's nick and host, or a server's name).
MAX_SETTER = 100
#: Shortest network prefix a ban may cover, by IP version: a wider one would ban a sixteenth of the internet.
MIN_PREFIX = {4: 8, 6: 24}
#: Least number of literal characters (not ``*``, ``?``, ``.``, ``:``, ``@``) a user@host glob must have, so
#: ``*@*`` or ``*@*.*`` cannot ban everyone.
MIN_LITERAL = 4
#: Longest DID accepted as a ban mask.
MAX_DID = 200
#: The reason given when an operator gives none.
DEFAULT_REASON = "No reason given"

_DID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:%-")
_DID_METHOD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_GLOB_FORBIDDEN = frozenset(" ,!\x00\r\n\t")
_NOT_LITERAL = frozenset("*?.:@")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class BanError(ValueError):
    """A mask, duration or reason that cannot be a ban; the message says why (sent to the operator)."""


@dataclasses.dataclass(frozen=True)
class Ban:
    """One K-line or D-line.

    ``mask`` is normalised (:func:`parse_mask`): ``(kind, mask)`` identifies a ban, a second one replaces
    the first. ``expires`` is a Unix time, ``None`` for a permanent ban. ``origin`` names the server where it
    was set (``""``: here, never federated from elsewhere; ``"config"``: the config file). ``id`` is unique
    across the federation (a ULID and the origin), so a ban heard twice (live and in a burst) is one ban.
    """

    id: str
    kind: str
    mask: str
    reason: str
    setter: str
    set_at: float
    expires: Optional[float]
    origin: str = ""

    def expired(self, now: float) -> bool:
        """Whether the ban has run out at ``now``."""
        return self.expires is not None and self.expires <= now

    @property
    def is_did(self) -> bool:
        """Whether this is a DID K-line."""
        return self.mask.startswith("did:")


def valid_did(text: str) -> bool:
    """Whether ``text`` has the syntax of a DID (``did:<method>:<id>``), at most :data:`MAX_DID` characters."""
    if not text.startswith("did:") or len(text) > MAX_DID:
        return False
    parts = text.split(":", 2)
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return False
    method, ident = parts[1], parts[2]
    if not all(ch in _DID_METHOD_CHARS for ch in method):
        return False
    return all(ch in _DID_CHARS for ch in ident) and ident[-1] not in ":%"


def parse_network(text: str) -> Network:
    """The network of an IP address (a /32 or /128) or CIDR ``text``, host bits cleared; :class:`BanError`
    if it is neither or wider than :data:`MIN_PREFIX` allows."""
    if len(text) > 64 or not text or any(ch.isspace() for ch in text) or "%" in text:
        # "%": an IPv6 zone (fe80::1%eth0) names a link of this host, meaningless for a client's address
        raise BanError(f"{text[:64]!r} is not an IP address or CIDR network")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise BanError(f"{text[:64]!r} is not an IP address or CIDR network") from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None and net.prefixlen >= 96:
        net = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
    least = MIN_PREFIX[net.version]
    if net.prefixlen < least:
        raise BanError(f"/{net.prefixlen} is too wide: an IPv{net.version} ban covers at most a /{least}")
    return net


def network_text(net: Network) -> str:
    """The normal text of a ban network: the bare address for a single host, else ``address/prefix``."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _glob_problem(part: str, what: str) -> Optional[str]:
    if not part:
        return f"the {what} part is empty"
    if any(ch in _GLOB_FORBIDDEN or ord(ch) < 32 or ord(ch) == 127 for ch in part):
        return f"the {what} part has a character a mask cannot hold"
    return None


def _is_cidr(host: str) -> bool:
    """Whether a K-line's host part is a CIDR network (``address/prefix``) rather than a glob (a cloak such as
    ``freeq/guest`` has a ``/`` too)."""
    address, slash, prefix = host.partition("/")
    if not slash or not prefix.isascii() or not prefix.isdigit():
        return False
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def parse_mask(kind: str, mask: str) -> str:
    """The normalised mask of a ``kind`` ban (``K`` or ``D``) from an operator or a peer; :class:`BanError`
    (with the reason) when it is not one.

    D: an IP address or CIDR network (:func:`parse_network`). K: a DID (:func:`valid_did`), or ``user@host``
    (a bare host or address is ``*@host``) with bounded globs, at least :data:`MIN_LITERAL` literal
    characters, and a host that is a glob or a CIDR network.
    """
    if kind == DLINE:
        return network_text(parse_network(mask))
    if kind != KLINE:
        raise BanError(f"unknown ban kind {kind[:8]!r}")
    if mask.startswith("did:"):
        if not valid_did(mask):
            raise BanError(f"{mask[:64]!r} is not a valid DID")
        return mask
    if "@" not in mask:
        mask = "*@" + mask
    problem = mask_problem(mask)
    if problem is not None:
        raise BanError(f"mask is {problem}")
    user, _, host = mask.partition("@")
    for part, what in ((user, "user"), (host, "host")):
        problem = _glob_problem(part, what)
        if problem is not None:
            raise BanError(f"bad mask {mask[:64]!r}: {problem}")
    if "@" in host:
        raise BanError(f"bad mask {mask[:64]!r}: more than one @")
    if _is_cidr(host):
        try:
            host = network_text(parse_network(host))
        except BanError as e:
            raise BanError(f"bad mask {mask[:64]!r}: {e}") from None
        return fold_text(f"{user}@{host}")
    if sum(1 for ch in mask if ch not in _NOT_LITERAL) < MIN_LITERAL:
        raise BanError(f"mask {mask[:64]!r} is too wide: give at least {MIN_LITERAL} characters that are not "
                       "wildcards")
    return fold_text(mask)


def shape_of(mask: str) -> str:
    """The kind a config-file ban's mask has by its shape: ``K`` for a DID or ``user@host``, else ``D``."""
    return KLINE if mask.startswith("did:") or "@" in mask else DLINE


def config_ban_problem(mask: str) -> Optional[str]:
    """Why a config-file ban's mask (its kind by :func:`shape_of`) is refused, or ``None`` (the config loader
    refuses the file with this, so a reload with a bad ban keeps the running config)."""
    try:
        parse_mask(shape_of(mask), mask)
    except BanError as e:
        return str(e)
    return None


def clean_reason(text: str) -> str:
    """A reason safe on the wire: control characters made spaces, cut to :data:`MAX_REASON_BYTES` bytes,
    :data:`DEFAULT_REASON` when nothing is left."""
    text = "".join(" " if ord(ch) < 32 or ord(ch) == 127 else ch for ch in text[:MAX_REASON_BYTES]).strip()
    raw = text.encode("utf-8")
    if len(raw) > MAX_REASON_BYTES:
        text = raw[:MAX_REASON_BYTES].decode("utf-8", "ignore").strip()
    return text or DEFAULT_REASON


def reason_problem(text: object) -> Optional[str]:
    """Why a reason from a peer is refused (not text, too long, a control character), or ``None``."""
    if not isinstance(text, str) or not text:
        return "reason is not text"
    if len(text.encode("utf-8")) > MAX_REASON_BYTES:
        return "reason too long"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        return "reason has a control character"
    return None


def parse_duration(text: str) -> Optional[int]:
    """Minutes as given to KLINE/DLINE (``"0"``: permanent) in seconds, ``None`` for a permanent ban;
    :class:`BanError` if it is not a whole number of minutes up to :data:`MAX_DURATION`."""
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise BanError(f"{text[:16]!r} is not a duration in minutes")
    seconds = int(text) * 60
    if seconds > MAX_DURATION:
        raise BanError(f"a ban lasts at most {MAX_DURATION // 86400} days ({MAX_DURATION // 60} minutes)")
    return seconds or None


class _KGlob:
    """A compiled user@host K-line: user glob, and a host glob or network."""

    __slots__ = ("ban", "user", "host", "net")

    def __init__(self, ban: Ban) -> None:
        self.ban = ban
        user, _, host = ban.mask.partition("@")
        self.user = Glob(user)
        self.net: Optional[Network] = None
        self.host: Optional[Glob] = None
        if _is_cidr(host):
            self.net = ipaddress.ip_network(host)
        else:
            self.host = Glob(host)

    def matches(self, usernames: tuple[str, ...], hosts: tuple[str, ...], addr: Optional[Address]) -> bool:
        if not any(self.user.match(name) for name in usernames):
            return False
        if self.net is not None:
            return addr is not None and addr.version == self.net.version and addr in self.net
        host = self.host
        return host is not None and any(host.match(h) for h in hosts)


class BanList:
    """The K-lines and D-lines a server enforces, indexed for matching.

    :meth:`add` and :meth:`remove` keep the indexes; :meth:`dline_for` and :meth:`kline_for` answer a
    connection; an expired ban is never matched (and :meth:`expired` lists them so the caller can drop them).
    """

    def __init__(self, bans: Iterable[Ban] = ()) -> None:
        self.by_key: dict[tuple[str, str], Ban] = {}
        self.ids: set[str] = set()
        # D-lines: (IP version, prefix length) -> network -> ban. One look-up per distinct prefix length.
        self._nets: dict[tuple[int, int], dict[Network, Ban]] = {}
        self._dids: dict[str, Ban] = {}
        self._globs: dict[tuple[str, str], _KGlob] = {}
        for ban in bans:
            self.add(ban)

    def __len__(self) -> int:
        return len(self.by_key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self.by_key.values()))

    def get(self, kind: str, mask: str) -> Optional[Ban]:
        """The ban on ``(kind, mask)`` (normalised), if any."""
        return self.by_key.get((kind, mask))

    def add(self, ban: Ban) -> Optional[Ban]:
        """Add ``ban`` (its mask already normalised), replacing one on the same mask; return the replaced one."""
        old = self.remove(ban.kind, ban.mask)
        key = (ban.kind, ban.mask)
        self.by_key[key] = ban
        self.ids.add(ban.id)
        if ban.kind == DLINE:
            net = ipaddress.ip_network(ban.mask)
            self._nets.setdefault((net.version, net.prefixlen), {})[net] = ban
        elif ban.is_did:
            self._dids[ban.mask] = ban
        else:
            self._globs[key] = _KGlob(ban)
        return old

    def remove(self, kind: str, mask: str) -> Optional[Ban]:
        """Remove the ban on ``(kind, mask)``; return it (``None`` if there was none)."""
        key = (kind, mask)
        ban = self.by_key.pop(key, None)
        if ban is None:
            return None
        self.ids.discard(ban.id)
        if kind == DLINE:
            net = ipaddress.ip_network(mask)
            slot = (net.version, net.prefixlen)
            bucket = self._nets.get(slot)
            if bucket is not None:
                bucket.pop(net, None)
                if not bucket:
                    del self._nets[slot]
        elif ban.is_did:
            self._dids.pop(mask, None)
        else:
            self._globs.pop(key, None)
        return ban

    def expired(self, now: float) -> list[Ban]:
        """The bans that have run out at ``now`` (still held: the caller removes and unstores them)."""
        return [ban for ban in self.by_key.values() if ban.expired(now)]

    def dline_for(self, ip: str, now: float) -> Optional[Ban]:
        """The live D-line covering address ``ip``, if any."""
        if not self._nets:
            return None
        addr = ip_of(ip)
        if addr is None:
            return None
        return self._dline_for(addr, now)

    def _dline_for(self, addr: Address, now: float) -> Optional[Ban]:
        for (version, prefix), bucket in self._nets.items():
            if version != addr.version:
                continue
            make = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
            ban = bucket.get(make((addr, prefix), strict=False))
            if ban is not None and not ban.expired(now):
                return ban
        return None

    def kline_for(self, username: str, host: str, ip: str, account: Optional[str], now: float) -> Optional[Ban]:
        """The live K-line matching a user: its ``account`` (DID K-lines), or ``username`` (with and without its
        ``~``) at its IP address or its visible ``host`` (user@host K-lines)."""
        if account is not None:
            ban = self._dids.get(account)
            if ban is not None and not ban.expired(now):
                return ban
        if not self._globs:
            return None
        name = fold_text(username)
        usernames = (name, name[1:]) if name.startswith("~") else (name,)
        hosts = (fold_text(ip), fold_text(host))
        addr = ip_of(ip)
        for glob in self._globs.values():
            if glob.matches(usernames, hosts, addr) and not glob.ban.expired(now):
                return glob.ban
        return None


def compile_config_bans(pairs: Iterable[tuple[str, str]]) -> tuple[BanList, list[str]]:
    """The config file's bans (``(mask, reason)``; the kind by :func:`shape_of`) as a :class:`BanList` of
    permanent bans with origin ``"config"``, and a line for each one refused (bad mask)."""
    bans = BanList()
    problems: list[str] = []
    for mask, reason in pairs:
        kind = shape_of(mask)
        try:
            normal = parse_mask(kind, mask)
        except BanError as e:
            problems.append(f"config ban {mask[:MAX_MASK_LENGTH]!r} ignored: {e}")
            continue
        bans.add(Ban(f"config:{kind}:{normal}", kind, normal, clean_reason(reason), "config file", 0.0, None,
                     "config"))
    return bans, problems
