"""Network bans across the federation (issue #13 item 4): the ``ban`` and ``unban`` events and the ``bans`` part
of a burst.

A K-line or D-line set by an operator here goes, as a ``ban`` event, to every server that applies this server's
operators' actions (:attr:`freeq.s2s.peers.ServerInfo.opers`: every server on the way trusts the one before it
``full``) and is reached through a link this server trusts ``full`` itself (a ban names addresses: it is not told
to peers trusted less). Each event is *routed* to one server (``to``), so servers in between pass it on without
applying it and no server sees it twice; its ``id`` makes a ban heard again (in a burst) the same ban. ``ban`` and
``unban`` are operator kinds (:data:`freeq.s2s.protocol.OPER_KINDS`): a ``relay`` or ``readonly`` link cannot
deliver them, which the link layer refuses and logs before they get here. What arrives is validated as a local
ban is (:func:`freeq.state.bans.parse_mask`: the mask must be given normalised, the reason, times and setter
bounded) and then held, stored and enforced by the server (:meth:`freeq.core.bans.BanCommands.apply_remote_ban`).

Bursts: over a link this server trusts ``full``, a burst carries the bans it holds whose origin is a server of
that burst (not behind the receiving link), in ``bans`` parts of ``[id, kind, mask, reason, setter, set_at,
expires, origin name]`` entries, even none. The receiver, if it trusts the sender ``full``, takes the burst as
the complete list of bans of those origins: it adds the new ones and drops those it holds from those origins
that the burst no longer lists (lifted while it was split), never its own. Functions here take the federation
(a :class:`~freeq.s2s.base.FederationBase`) as their first argument, so the modules of the chain call them
without a mixin of their own.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.logger import Logger

from freeq.s2s import protocol as P
from freeq.s2s.peers import EventContext, PeerLink
from freeq.s2s.protocol import ProtocolError
from freeq.state.bans import KINDS, MAX_BANS, MAX_DURATION, MAX_SETTER, Ban, BanError, parse_mask, reason_problem

if TYPE_CHECKING:
    from freeq.s2s.base import FederationBase

log = Logger()

#: Longest ban id accepted from a peer (a ULID, ``@`` and a server name).
MAX_BAN_ID = 100
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@.-_:")
#: How far in the future a peer's ``set_at`` may be (clock skew between servers), in seconds.
CLOCK_SKEW = 86400


def ban_fields(ban: Ban) -> dict[str, Any]:
    """The fields of a ``ban`` event for ``ban``."""
    return {"id": ban.id, "kind": ban.kind, "mask": ban.mask, "reason": ban.reason, "setter": ban.setter,
            "set_at": int(ban.set_at), "expires": None if ban.expires is None else int(ban.expires)}


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise ProtocolError(f"ban {what}: expected a time")
    return float(value)


def _checked_mask(fields: dict[str, Any], what: str) -> tuple[str, str]:
    """The ``(kind, mask)`` of a peer's ``what`` (``ban`` or ``unban``); :class:`ProtocolError` unless the kind
    is known and the mask valid and given normalised (as :func:`freeq.state.bans.parse_mask` makes it)."""
    kind, mask = fields.get("kind"), fields.get("mask")
    if kind not in KINDS or not isinstance(mask, str):
        raise ProtocolError(f"{what} kind or mask: invalid")
    try:
        if parse_mask(kind, mask) != mask:
            raise ProtocolError(f"{what} mask: not normalised")
    except BanError as e:
        raise ProtocolError(f"{what} mask: {e}") from None
    return str(kind), mask


def checked_ban(fields: dict[str, Any], origin: str, now: float) -> Ban:
    """A ban from a peer's event or burst entry (``origin``: the name of the server where it was set), validated
    as a local one is; :class:`ProtocolError` if any part is not."""
    ban_id = fields.get("id")
    if not isinstance(ban_id, str) or not 0 < len(ban_id) <= MAX_BAN_ID or not set(ban_id) <= _ID_CHARS:
        raise ProtocolError("ban id: invalid")
    kind, mask = _checked_mask(fields, "ban")
    reason, setter = fields.get("reason"), fields.get("setter")
    problem = reason_problem(reason)
    if problem is not None:
        raise ProtocolError(f"ban {problem}")
    if not isinstance(setter, str) or len(setter) > MAX_SETTER or any(ord(ch) < 32 or ord(ch) == 127 for ch in setter):
        raise ProtocolError("ban setter: invalid")
    set_at = _number(fields.get("set_at"), "set_at")
    if set_at > now + CLOCK_SKEW:
        raise ProtocolError("ban set_at: in the future")
    raw_expires = fields.get("expires")
    expires = None if raw_expires is None else _number(raw_expires, "expires")
    if expires is not None and not set_at < expires <= set_at + MAX_DURATION + CLOCK_SKEW:
        raise ProtocolError("ban expires: out of range")
    return Ban(ban_id, kind, mask, str(reason), setter, set_at, expires, origin)


def checked_unban(fields: dict[str, Any]) -> tuple[str, str]:
    """The ``(kind, mask)`` of a peer's ``unban`` event; :class:`ProtocolError` unless the mask is normalised."""
    return _checked_mask(fields, "unban")


def ban_targets(fed: "FederationBase") -> list[str]:
    """The servers a ban set here goes to: those applying our operators' actions, reached over a link we trust
    ``full``."""
    out = []
    for sid, info in fed.servers.items():
        link = fed.links.get(info.link_id)
        if info.opers and link is not None and link.state == "open" and link.trust == "full":
            out.append(sid)
    return out


def send_ban_event(fed: "FederationBase", kind: str, fields: dict[str, Any]) -> int:
    """Route a ``ban`` or ``unban`` event to every :func:`ban_targets` server; how many it was sent to."""
    sent = 0
    for sid in ban_targets(fed):
        if fed._emit(kind, fields, to=sid) is not None:
            sent += 1
    log.info("S2S {kind} of {mask} sent to {count} server(s)", kind=kind, mask=fields.get("mask"), count=sent)
    return sent


def receive_ban(fed: "FederationBase", ctx: EventContext) -> bool:
    """A peer's ``ban`` event (routed here; the link's ``full`` trust was checked by the link layer)."""
    if ctx.ev.get("to") != fed.me:
        raise ProtocolError("ban event not routed")
    info = fed.servers.get(ctx.origin)
    origin = info.name if info is not None else P.short_id(ctx.origin)
    ban = checked_ban(ctx.ev, origin, fed.clock.seconds())
    fed.server.apply_remote_ban(ban)
    return True


def receive_unban(fed: "FederationBase", ctx: EventContext) -> bool:
    """A peer's ``unban`` event (routed here, from a ``full`` link)."""
    if ctx.ev.get("to") != fed.me:
        raise ProtocolError("unban event not routed")
    kind, mask = checked_unban(ctx.ev)
    info = fed.servers.get(ctx.origin)
    fed.server.apply_remote_unban(kind, mask, info.name if info is not None else P.short_id(ctx.origin))
    return True


def burst_ban_frames(fed: "FederationBase", link: PeerLink, origins: set[str]) -> list[dict[str, Any]]:
    """The ``bans`` parts of a burst over ``link`` (none unless we trust it ``full``): the bans held here whose
    origin (a server name) is in ``origins`` (the servers of the burst), at least one part, maybe empty."""
    if link.trust != "full":
        return []
    from freeq.s2s.burst import chunks

    now = fed.clock.seconds()
    entries = [[b.id, b.kind, b.mask, b.reason, b.setter, int(b.set_at), None if b.expires is None else int(b.expires),
                b.origin or fed.server.name] for b in fed.server.network_bans if b.origin in origins and not b.expired(now)]
    return [{"type": "burst", "part": "bans", "bans": chunk} for chunk in (chunks(entries) or [[]])]


def collect_bans(acc: Any, msg: dict[str, Any]) -> None:
    """Add a ``bans`` part to the burst being received (``acc.bans``; bounded)."""
    entries = P.get(msg, "bans", list)
    held: Optional[list[Any]] = acc.bans
    if held is None:
        held = acc.bans = []
    if len(entries) > 1000 or len(held) + len(entries) > MAX_BANS:
        raise ProtocolError("too many bans")
    held.extend(entries)


def apply_burst_bans(fed: "FederationBase", link: PeerLink, entries: Optional[list[Any]],
                     burst_servers: dict[str, dict[str, Any]]) -> None:
    """A complete burst's bans: the complete list of the bans of its servers' origins, if we trust the link
    ``full`` and it sent a ``bans`` part. Entries of other origins, or malformed, are refused (logged)."""
    if entries is None:
        return
    if link.trust != "full":
        if entries:
            fed._warn_rejected(link, "burst bans", f"trust: not allowed from a {link.trust} peer")
        return
    names = {str(entry.get("name")) for entry in burst_servers.values()}
    names.discard(fed.server.name)
    now = fed.clock.seconds()
    listed: list[Ban] = []
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != 8 or not isinstance(entry[7], str):
            fed._warn_rejected(link, "burst ban", "malformed: bad entry")
            continue
        if entry[7] not in names:
            fed._warn_rejected(link, "burst ban", "forged: origin is not behind this link", origin=entry[7][:64])
            continue
        fields = dict(zip(("id", "kind", "mask", "reason", "setter", "set_at", "expires"), entry[:7]))
        try:
            listed.append(checked_ban(fields, entry[7], now))
        except ProtocolError as e:
            fed._warn_rejected(link, "burst ban", f"malformed: {e}")
    fed.server.replace_remote_bans(names, listed)
