"""The state every part of :class:`~freeq.s2s.federation.Federation` shares, and the helpers they all use.

Federation is built as a chain of classes, one module each, every one adding a concern to the one below it:
:class:`FederationBase` (this module: the state, uids, sending and signing events, counters) ->
:mod:`~freeq.s2s.proof_keeping` -> :mod:`~freeq.s2s.remote_users` -> :mod:`~freeq.s2s.outbound` ->
:mod:`~freeq.s2s.inbound` -> :mod:`~freeq.s2s.rename` -> :mod:`~freeq.s2s.burst` -> :mod:`~freeq.s2s.links` ->
:class:`~freeq.s2s.federation.Federation`, the one class other code uses. A part calls only what it or a
part below it defines, so each module type-checks on its own. Parts with state of their own are composed
instead: the persistence of channel states (:class:`~freeq.s2s.persistence.ChannelStates`); the checks of
proofs are pure functions (:mod:`freeq.s2s.proofs`); the records of peers and remote users are plain
objects (:mod:`freeq.s2s.peers`).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

from twisted.logger import Logger

from freeq.s2s import protocol as P
from freeq.s2s.bridge import CLOSE_PROTOCOL
from freeq.s2s.peers import PeerLink, RemoteSession, ServerInfo
from freeq.s2s.persistence import ChannelStates
from freeq.s2s.protocol import EventSigner, FrameError, SequenceTracker
from freeq.s2s.state import ChannelCRDT, HybridClock
from freeq.state.channel import Channel
from freeq.state.links import HeldPeer
from freeq.state.rules import is_did_op
from freeq.state.user import User

log = Logger()

#: The QUIT reason of the users behind a link that went down (or that a burst no longer lists).
SPLIT_REASON = "*.net *.split"
#: The message tag naming the server a relayed message came from (never forwarded as a client tag).
ORIGIN_TAG = "+freeq.at/origin"


def _b36(n: int) -> str:
    """``n`` in base 36 (lowercase): the compact parts of a local uid."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


class FederationBase:
    """Federates one IRC server over the links of a transport: the shared state and helpers."""

    def __init__(self, server: Any, transport: Any, signer: EventSigner, clock: Any, *,
                 trust: Optional[dict[str, str]] = None, rate: float = 100.0, max_frame: int = P.MAX_FRAME,
                 ping_interval: float = 15.0, ping_timeout: float = 45.0, max_remote_users: int = 10000) -> None:
        self.server = server
        self.transport = transport
        self.signer = signer
        self.clock = clock
        self.me = signer.server_id
        self.trust = dict(trust or {})
        self.rate = rate
        self.max_frame = max_frame
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_remote_users = max_remote_users  # users behind one link (excess refused)
        self.users_by_origin: dict[str, int] = {}  # origin -> how many of its users are known here
        # (uid, folded channel) -> the origin-signed ``join`` event behind a current membership (local and
        # remote users): bursts carry it, so every server can check a membership it did not see live.
        self.member_joins: dict[tuple[str, str], dict[str, Any]] = {}
        # (uid, folded channel) -> [join sig, status bits] of remote memberships accepted here. Kept across
        # netsplits (a relink re-bursts the same join, which is then not checked again, with the status
        # it had) and dropped when the membership really ends (part, kick, quit). Oldest evicted first.
        self.accepted_joins: OrderedDict[tuple[str, str], list[Any]] = OrderedDict()
        # (target uid, folded channel) -> the origin-signed ``invite`` event of a pending invite (emitted
        # here or received); a join that needs it moves it to ``member_invites``. Oldest evicted first.
        self.invite_events: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        # (uid, folded channel) -> the invite event that admitted a current member to a +i channel: bursts
        # carry it with the join, so a server that never saw the invite (a split, a restart) can check it.
        self.member_invites: dict[tuple[str, str], dict[str, Any]] = {}
        # (uid, folded channel) -> the origin-signed ``mode`` event that granted a current member its status
        # (absent when the status is empty or came with the join): bursts carry it, so a server that did not
        # see the grant (a split, a dropped event) can check it against its own operators.
        self.member_status: dict[tuple[str, str], dict[str, Any]] = {}
        # uid -> the latest origin-signed ``user`` event and the latest ``nick`` event of each user (local: what we
        # emitted, or a stand-in with seq 0; remote: accepted live or from a burst). Bursts carry them with the
        # records of users of other origins, so a neighbour cannot speak for the servers behind it.
        self.user_proofs: dict[str, dict[str, Any]] = {}
        self.nick_proofs: dict[str, dict[str, Any]] = {}
        # folded channel name -> the signed ``rename`` events that gave a renamed channel its name, oldest first
        # (a few): proofs signed before a rename name a former name (freeq.s2s.rename). Oldest channel evicted first.
        self.channel_renames: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.epoch = max(1, int(clock.seconds() * 1000))
        self.hlc = HybridClock(self.me[:16], clock.seconds)
        self.marks = SequenceTracker()
        self.out_seq: dict[str, int] = {}
        self.links: dict[int, PeerLink] = {}
        self.servers: dict[str, ServerInfo] = {}
        self.remote: dict[str, User] = {}  # uid -> remote user
        self.local_uid: dict[User, str] = {}
        self.local_by_uid: dict[str, User] = {}
        self.nick_ts: dict[str, int] = {}  # uid -> when it took its nick (ms, origin's clock)
        self.crdts: dict[str, ChannelCRDT] = {}
        # Persistence of the CRDTs (see load_state/persist): told of every channel whose state may change.
        self.states = ChannelStates()
        self.stats: dict[str, int] = {}
        self._uid_counter = 0
        self._pending_users: set[User] = set()
        self._flush_call: Any = None
        self._creating: Optional[str] = None
        # (uid, folded channel) -> signature of the last join event we emitted for that local user: a
        # ``refuse`` must quote it (only a server that really received that join knows it).
        self.sent_joins: dict[tuple[str, str], str] = {}
        # Peers an operator held with SQUIT (endpoint id -> entry): remembered by name too, since a
        # dropped link's name is otherwise forgotten and CONNECT <name> must still find it.
        self.held: dict[str, HeldPeer] = {}

    def is_remote(self, user: User) -> bool:
        """Whether ``user`` lives on another server."""
        return isinstance(user.conn, RemoteSession)

    def uid(self, user: User) -> str:
        """The federation-wide id of a user (assigned on first use for local users)."""
        if isinstance(user.conn, RemoteSession):
            return user.conn.uid
        uid = self.local_uid.get(user)
        if uid is None:
            if user.account:  # another device of the same identity already has one (multi-device)
                uid = next((self.local_uid[d] for d in self.server.group(user) if d in self.local_uid), None)
            if uid is None:
                self._uid_counter += 1
                uid = f"{self.me[:16]}.{_b36(self.epoch)}.{_b36(self._uid_counter)}"
            self.local_uid[user] = uid
            self.local_by_uid.setdefault(uid, user)
        return uid

    def local_user_by_uid(self, uid: str) -> Optional[User]:
        """The local connection that currently represents ``uid`` (its identity's primary device)."""
        user = self.local_by_uid.get(uid)
        if user is None:
            return None
        if self.server.users.get(user.folded) is not user:
            primary = self.server.primary_session(user.account) if user.account else None
            if primary is None:
                return user if user.registered else None
            self.local_by_uid[uid] = primary
            self.local_uid[primary] = uid
            return primary
        return user

    def _nick_ts(self, user: User) -> int:
        ts = self.nick_ts.get(self.uid(user))
        return ts if ts is not None else int(self.clock.seconds() * 1000)

    def user_by_uid(self, uid: str) -> Optional[User]:
        """A local or remote user by uid."""
        return self.remote.get(uid) or self.local_user_by_uid(uid)

    def _count(self, name: str, metric: Optional[str] = None) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1
        if metric:
            self.server.metric(metric)

    def _set_peer_gauge(self) -> None:
        metrics = getattr(self.server, "metrics", None)
        if metrics is not None:
            metrics.s2s_peers = sum(1 for link in self.links.values() if link.state == "open")

    def open_links(self) -> list[PeerLink]:
        """Links that completed the handshake."""
        return [link for link in self.links.values() if link.state == "open"]

    def _link_of_origin(self, origin: str) -> Optional[PeerLink]:
        info = self.servers.get(origin)
        return self.links.get(info.link_id) if info is not None else None

    def _route_of_user(self, user: User) -> Optional[int]:
        if not isinstance(user.conn, RemoteSession):
            return None
        info = self.servers.get(user.conn.origin)
        return info.link_id if info is not None else None

    def load_state(self, store: Any) -> None:
        """Start-up: use the channel states saved in ``store`` (see :meth:`ChannelStates.load`)."""
        self.states.load(store, self.crdts, self.hlc, self.server.channels)

    def persist(self) -> None:
        """Periodic (once per store flush interval): queue the states of changed channels for the store."""
        self.states.persist(self.crdts)

    def _crdt(self, chan: Channel) -> ChannelCRDT:
        # Every change of a CRDT (local capture, merged event or burst) goes through here or
        # _fresh_crdt, so marking here is enough; persist() writes only states that really changed.
        self.states.dirty.add(chan.folded)
        crdt = self.crdts.get(chan.folded)
        if crdt is None:
            crdt = self.crdts[chan.folded] = ChannelCRDT.adopt(chan)
        return crdt

    def _fresh_crdt(self, folded: str, crdt: ChannelCRDT) -> ChannelCRDT:
        """A new channel's state, keeping the removals remembered from an earlier channel of that name."""
        old = self.crdts.get(folded)
        if old is not None:
            crdt.tombs = old.tombs
        self.states.dirty.add(folded)
        return crdt

    def _forget_channel_if_gone(self, folded: str) -> None:
        # Removals (tombstones) are kept so a peer that missed them cannot resurrect a ban later.
        crdt = self.crdts.get(folded)
        if crdt is not None and folded not in self.server.channels and not any(crdt.tombs.values()):
            del self.crdts[folded]
            self.states.dirty.add(folded)  # persist() deletes its stored state

    def _send(self, link: PeerLink, obj: dict[str, Any]) -> None:
        try:
            frame = P.encode_message(obj, self.max_frame)
        except FrameError as e:
            log.error("S2S frame to {peer} not sent: {error}", peer=link.peer_id, error=str(e))
            return
        self.transport.send(link.link_id, frame)

    def _close(self, link: PeerLink, reason: str) -> None:
        link.state = "closed"
        self.transport.close_link(link.link_id, reason, CLOSE_PROTOCOL)

    def _emit(self, kind: str, fields: dict[str, Any], to: Optional[str] = None) -> Optional[dict[str, Any]]:
        """Sign and send one event originating here (returns it, or ``None`` when nothing was sent)."""
        if to is None:
            targets = self.open_links()
        else:
            link = self._link_of_origin(to)
            targets = [link] if link is not None and link.state == "open" else []
        if not targets:
            return None
        stream = to or "*"
        seq = self.out_seq[stream] = self.out_seq.get(stream, 0) + 1
        event = {"type": kind, "origin": self.me, "epoch": self.epoch, "seq": seq, "to": to,
                 "hlc": list(self.hlc.tick())}
        event.update(fields)
        self.signer.sign(event)
        try:
            frame = P.encode_message(event, self.max_frame)
        except FrameError as e:
            log.error("S2S {kind} event not sent: {error}", kind=kind, error=str(e))
            return None
        for link in targets:
            self.transport.send(link.link_id, frame)
        return event

    def _warn_rejected(self, link: PeerLink, what: str, reason: str, **kw: Any) -> None:
        """Log (a burst of 20, then 2 per second per link) and count a rejected event."""
        self._count("rejected:" + reason.split(":")[0], "s2s_events_rejected")
        if not link.log_bucket.take(self.clock.seconds()):
            link.rejected += 1
            return
        extra = "".join(f" {k}={v}" for k, v in kw.items())
        if link.rejected:
            extra += f" ({link.rejected} more rejection(s) not logged)"
            link.rejected = 0
        log.warn("S2S {what} from peer {peer} rejected: {reason}{extra}", what=what, peer=link.peer_id,
                 reason=reason, extra=extra)

    def _users_behind(self, link_id: int) -> int:
        """How many remote users live behind a link (on every server reached through it)."""
        return sum(n for origin, n in self.users_by_origin.items()
                   if (info := self.servers.get(origin)) is not None and info.link_id == link_id)

    def _has_did_authority(self, user: User) -> bool:
        """Whether ``user``'s DID may confer channel authority here: local users, and users behind a
        ``full`` link (a relay or readonly peer's account claims are shown, never obeyed)."""
        if not isinstance(user.conn, RemoteSession):
            return True
        link = self._link_of_origin(user.conn.origin)
        return link is not None and link.trust == "full"

    def _is_did_op(self, chan: Channel, user: User) -> bool:
        return is_did_op(chan, user) and self._has_did_authority(user)
