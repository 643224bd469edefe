"""Federation: the glue between one :class:`~freeq.core.server.IRCServer` and its S2S links.

Runs entirely in the reactor thread. The bridge (:mod:`freeq.s2s.bridge`) reports links and frames;
the server reports local changes through its ``s2s`` observer list (``local_*`` methods here).

* Local change -> signed event -> every open link (flooded through the federation tree; private
  messages are routed towards the server where the nick lives).
* Inbound frame -> rate limit -> envelope checks (signature by the origin, origin behind this link,
  per-origin sequence) -> trust level -> authorisation against the local view -> applied to the model
  (remote users are :class:`~freeq.state.user.User` objects whose ``conn`` is a
  :class:`RemoteSession`) -> forwarded to the other links.
* Link up -> ``hello`` both ways -> ``burst`` (this server's whole view) both ways -> live events.
  Link down -> the users behind it quit with ``*.net *.split`` -> the other links get a new burst.

Topology rule: the federation is a tree. A link that would close a cycle is refused ("loop"), as
classic IRC does; any tree shape (a line A-B-C, a star) works, with events relayed hop by hop.
See docs/federation.md.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any, Iterable, Optional

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.logger import Logger

from freeq.auth.did import valid_handle
from freeq.irc.names import fold, is_channel, valid_channel, valid_nick
from freeq.irc.parser import build, build_text
from freeq.s2s import protocol as P
from freeq.s2s.bridge import CLOSE_PROTOCOL, IrohBridgeService, PeerAddress
from freeq.s2s.protocol import EventSigner, FrameError, ProtocolError, SequenceTracker, TokenBucket
from freeq.s2s.state import ChannelCRDT, HybridClock, materialize, merge_ops
from freeq.state.channel import OP, VOICE, Channel
from freeq.state.links import HeldPeer, LinkControl, LinkView
from freeq.state.rules import (
    NOT_ON_CHANNEL, channel_history_key, dm_history_key, grant_invite, invite_refusal, is_did_op, join_refusal,
    kick_refusal, mode_refusal, needs_invite, send_refusal, status_recipients, status_target, topic_refusal,
)
from freeq.state.user import User

log = Logger()

#: Why a peer's JOIN is refused here, by the mode that refuses it (freeq.state.rules.join_refusal).
_JOIN_REASON = {"k": "+k (bad key)", "l": "+l (channel full)", "b": "+b (banned)", "i": "+i (not invited)"}
#: Rejection reasons for freeq.state.rules.send_refusal's reasons.
_SEND_REASON = {"n": "sender is not on the channel (+n)", "m": "channel is moderated (+m)", "b": "sender is banned"}

SPLIT_REASON = "*.net *.split"
ORIGIN_TAG = "+freeq.at/origin"
_MSGID_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_")
_STATUS = {"": 0, "v": VOICE, "o": OP, "ov": OP | VOICE}
#: Remote memberships remembered as accepted (their join signature and last status), across netsplits.
ACCEPTED_JOINS_MAX = 100000
#: Channels with no member here that bursts may create (state only: founder, bans, topic of empty channels).
MAX_MEMBERLESS_CHANNELS = 10000
#: The largest join event (canonical JSON bytes) carried as a membership's proof in bursts.
PROOF_MAX = 24000
#: The largest invite event (canonical JSON bytes) kept as the proof that admitted a member to a +i channel.
INVITE_PROOF_MAX = 2000
#: Signed invite events kept for pending invites (oldest forgotten first).
INVITES_MAX = 100000
#: The largest ``user`` or ``nick`` event (canonical JSON bytes) kept as the proof of a user record in bursts.
USER_PROOF_MAX = 4000
#: The fields of a user record (a burst entry, a ``user`` event), besides ``origin``.
_USER_FIELDS = ("uid", "nick", "nick_ts", "user", "host", "real", "account", "handle", "away", "modes", "signon",
                "owns")
#: The largest ``mode`` event (canonical JSON bytes) kept as the proof of a member's status (larger: not kept).
STATUS_PROOF_MAX = 4000


def _status_str(bits: int) -> str:
    return ("o" if bits & OP else "") + ("v" if bits & VOICE else "")


def _granted_bits(event: Any, uid: str) -> int:
    """The status bits a ``mode`` event leaves granted to ``uid`` (its last change of each bit for that uid
    is a ``+``); 0 for anything that is not such an event."""
    changes = event.get("status") if isinstance(event, dict) and event.get("type") == "mode" else None
    if not isinstance(changes, list):
        return 0
    bits = 0
    for item in changes[:50]:
        if (isinstance(item, list) and len(item) == 3 and item[2] == uid and item[0] in ("+", "-")
                and item[1] in ("o", "v")):
            bit = OP if item[1] == "o" else VOICE
            bits = bits | bit if item[0] == "+" else bits & ~bit
    return bits


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def _chunks(items: list[Any], budget: int = 40000) -> list[list[Any]]:
    """Split ``items`` into lists whose JSON stays well under the frame limit."""
    out: list[list[Any]] = []
    current: list[Any] = []
    size = 0
    for item in items:
        n = len(json.dumps(item, ensure_ascii=False).encode("utf-8")) + 1
        if current and size + n > budget:
            out.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        out.append(current)
    return out


def _discard(_data: bytes) -> None:
    """The byte sink of a remote user: what it must see travels as events to its home server."""


class RemoteSession:
    """The ``conn`` of a user who lives on another server (no transport here)."""

    __slots__ = ("origin", "uid", "ping_sent", "secure", "ip")

    def __init__(self, origin: str, uid: str) -> None:
        self.origin = origin
        self.uid = uid
        self.ping_sent = False
        self.secure = False
        self.ip = ""

    def close(self) -> None:
        """Remote users cannot be disconnected from here."""


class ServerInfo:
    """A server of the federation other than this one, and the link it is reached through.

    ``opers``: whether that server applies the actions of this server's operators (overrides of channel
    operator status, KILL), i.e. every server on the path trusts the one before it ``full`` (as its bursts
    state); until a burst says so, it does not.
    """

    __slots__ = ("server_id", "name", "epoch", "link_id", "hops", "opers")

    def __init__(self, server_id: str, name: str, epoch: int, link_id: int, hops: int, opers: bool = False) -> None:
        self.server_id = server_id
        self.name = name
        self.epoch = epoch
        self.link_id = link_id
        self.hops = hops
        self.opers = opers


class _Burst:
    """A burst being received (applied only when complete)."""

    __slots__ = ("servers", "marks", "users", "channels", "frames")

    def __init__(self) -> None:
        self.servers: list[dict[str, Any]] = []
        self.marks: list[Any] = []
        self.users: list[dict[str, Any]] = []
        self.channels: dict[str, dict[str, Any]] = {}
        self.frames = 0


class PeerLink:
    """One link as federation sees it."""

    __slots__ = ("link_id", "peer_id", "incoming", "trust", "state", "name", "bucket", "last_rx", "opened",
                 "burst", "dropped", "last_drop_warn", "rejected", "log_bucket", "malformed",
                 "last_resync", "resync_asked")

    def __init__(self, link_id: int, peer_id: str, incoming: bool, trust: str, now: float, rate: float) -> None:
        self.link_id = link_id
        self.peer_id = peer_id
        self.incoming = incoming
        self.trust = trust
        self.state = "hello"  # -> "open" once both hellos are exchanged and our burst is sent
        self.name = P.short_id(peer_id)
        self.bucket = TokenBucket(rate, now)
        self.last_rx = now
        self.opened = now
        self.burst: Optional[_Burst] = None
        self.dropped = 0
        self.last_drop_warn = -1e9
        self.rejected = 0
        self.log_bucket = TokenBucket(2.0, now, burst=20.0)
        self.malformed = 0
        self.last_resync = -1e9
        self.resync_asked = -1e9


class Federation:
    """Federates one IRC server over the links of a transport (the iroh bridge)."""

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
        # Persistence of the CRDTs (see load_state/persist): the store, channels whose state may have
        # changed since the last write, and a digest of what the store holds for each channel.
        self.store: Any = None
        self._dirty: set[str] = set()
        self._saved: dict[str, bytes] = {}
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

    # ==========================================================================================
    # Helpers
    # ==========================================================================================
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

    def _crdt(self, chan: Channel) -> ChannelCRDT:
        # Every change of a CRDT (local capture, merged event or burst) goes through here or
        # _fresh_crdt, so marking here is enough; persist() writes only states that really changed.
        self._dirty.add(chan.folded)
        crdt = self.crdts.get(chan.folded)
        if crdt is None:
            crdt = self.crdts[chan.folded] = ChannelCRDT.adopt(chan)
        return crdt

    def _forget_channel_if_gone(self, folded: str) -> None:
        # Removals (tombstones) are kept so a peer that missed them cannot resurrect a ban later.
        crdt = self.crdts.get(folded)
        if crdt is not None and folded not in self.server.channels and not any(crdt.tombs.values()):
            del self.crdts[folded]
            self._dirty.add(folded)  # persist() deletes its stored state

    def _send(self, link: PeerLink, obj: dict[str, Any]) -> None:
        try:
            frame = P.encode_message(obj, self.max_frame)
        except FrameError as e:
            log.error("S2S frame to {peer} not sent: {error}", peer=link.peer_id, error=str(e))
            return
        self.transport.send(link.link_id, frame)

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

    # -- membership proofs: the origin-signed join behind each membership -----------------------
    def _stand_in(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A signed event of ours that is never sent live (``seq`` 0 fails every envelope check): the proof,
        carried in bursts, of a local change whose event was not sent (no link, no hook) or is too large."""
        event: dict[str, Any] = {"type": kind, "origin": self.me, "epoch": self.epoch, "seq": 0, "to": None,
                                 "hlc": list(self.hlc.tick())}
        event.update(fields)
        return self.signer.sign(event)

    def _sign_proof(self, uid: str, chan: Channel, status: str, ops: list[Any], key: Optional[str]) -> dict[str, Any]:
        """A stand-in ``join`` event: the proof of a local membership whose join was not sent (no link, no
        hook) or is too large for a burst."""
        fields: dict[str, Any] = {"uid": uid, "channel": chan.name, "status": status, "ops": ops}
        if key is not None:
            fields["key"] = key
        return self._stand_in("join", fields)

    def _local_proof(self, user: User, chan: Channel) -> dict[str, Any]:
        """The proof of a local member's membership (signed now if it joined without the join hook)."""
        uid = self.uid(user)
        proof = self.member_joins.get((uid, chan.folded))
        if proof is None:
            crdt = self.crdts.get(chan.folded)
            ops: list[Any] = []
            if crdt is not None and crdt.creator is not None and crdt.creator[1] == uid:
                ops.append(["created", uid, list(crdt.creator[0])])
            proof = self._sign_proof(uid, chan, _status_str(chan.members.get(user, 0)), ops, chan.key)
            self.member_joins[(uid, chan.folded)] = proof
        return proof

    def _remember_join(self, uid: str, folded: str, proof: dict[str, Any], bits: int) -> None:
        """A remote membership was accepted here: keep its proof (for our bursts) and remember the join."""
        if len(P.canonical(proof)) <= PROOF_MAX:
            self.member_joins[(uid, folded)] = proof
        else:  # cannot travel in a burst frame: the membership is listed without proof
            self.member_joins.pop((uid, folded), None)
        key = (uid, folded)
        self.accepted_joins[key] = [proof["sig"], bits]
        self.accepted_joins.move_to_end(key)
        while len(self.accepted_joins) > ACCEPTED_JOINS_MAX:
            self.accepted_joins.popitem(last=False)

    def _forget_join(self, uid: str, folded: str) -> None:
        """A membership really ended (part, kick, quit): a later burst must not restore it unchecked."""
        self.member_joins.pop((uid, folded), None)
        self.member_invites.pop((uid, folded), None)
        self.member_status.pop((uid, folded), None)
        self.accepted_joins.pop((uid, folded), None)

    def _keep_invite(self, event: dict[str, Any]) -> None:
        """Keep the signed ``invite`` event of a pending invite (emitted here, or received and accepted)."""
        if len(P.canonical(event)) > INVITE_PROOF_MAX:
            return  # too large to travel in a burst entry: the invite only works where it is known
        key = (str(event["target"]), fold(str(event["channel"])))
        self.invite_events[key] = event
        self.invite_events.move_to_end(key)
        while len(self.invite_events) > INVITES_MAX:
            self.invite_events.popitem(last=False)

    def _needs_invite(self, chan: Channel, user: User) -> bool:
        """Whether joining ``chan`` takes an invite for ``user`` (+i, not passed by a DID op or an +I mask)."""
        return needs_invite(chan, user) and not self._is_did_op(chan, user)

    def _admitting_invite(self, uid: str, chan: Channel, user: User) -> None:
        """``user`` just joined ``chan``: if it took an invite, the invite event becomes the membership's
        second proof (carried in bursts next to the join); otherwise the membership has none."""
        event = self.invite_events.pop((uid, chan.folded), None)
        if event is not None and self._needs_invite(chan, user):
            self.member_invites[(uid, chan.folded)] = event
        else:
            self.member_invites.pop((uid, chan.folded), None)

    def _check_invite(self, invite: Any, user: User, chan: Channel, link: PeerLink,
                      authority: bool = True) -> Optional[str]:
        """Why ``invite`` (from a burst over ``link``) does not admit remote ``user`` to ``chan`` here (``None``:
        it does): it must be an ``invite`` event signed by its origin, for this channel and user, by an inviter
        known here who is a channel operator (or founder/DID operator) here, i.e. who could have invited the
        user here; a peer not trusted with invite events (``relay``) can only bring back our own. Without
        ``authority``, only the event itself is checked (not who the inviter is here)."""
        if not isinstance(invite, dict) or invite.get("type") != "invite":
            return "no invite event"
        if "invite" not in P.TRUST_ALLOWS[link.trust] and invite.get("origin") != self.me:
            return f"invite events are not accepted from a {link.trust} peer"
        if len(P.canonical(invite)) > INVITE_PROOF_MAX:
            return "invite event too large"
        name = invite.get("channel")
        if not isinstance(name, str) or fold(name) != chan.folded:
            return "invite event of another channel"
        if invite.get("target") != user.conn.uid:
            return "invite event for another user"
        if not P.verify_event(invite):
            return "bad signature on the invite event"
        return self._check_actor(invite, chan, authority, "inviter", "invite")

    def _check_actor(self, event: dict[str, Any], chan: Channel, authority: bool, role: str,
                     what: str) -> Optional[str]:
        """The shared tail of the invite and status proof checks, once ``event``'s signature is good: its
        actor (``uid``) belongs to its origin and, with ``authority``, is known here and a channel operator
        (or founder/DID operator) of ``chan`` here. ``role``/``what`` name them in the reason."""
        origin, actor_uid = str(event["origin"]), event.get("uid")
        if not isinstance(actor_uid, str) or actor_uid[:16] != origin[:16]:
            return f"{role} does not belong to the {what}'s origin"
        if not authority:
            return None
        actor = self.user_by_uid(actor_uid)
        if actor is None:
            return f"{role} unknown here"
        if (actor.conn.origin if self.is_remote(actor) else self.me) != origin:
            return f"{role} does not belong to the {what}'s origin"
        # A server operator's override counts too: the callers take such events only from ``full`` peers or us.
        if not (chan.is_op(actor) or self._is_did_op(chan, actor) or event.get("oper") is True):
            return f"{role} is not a channel operator here"
        return None

    def _check_proof(self, proof: Any, user: User, folded: str) -> Optional[str]:
        """Why ``proof`` is not ``user``'s join of channel ``folded`` signed by its origin (``None``: it is)."""
        if not isinstance(proof, dict):
            return "no join event"
        if proof.get("type") != "join" or proof.get("origin") != user.conn.origin or proof.get("uid") != user.conn.uid:
            return "join event of another user"
        name = proof.get("channel")
        if not isinstance(name, str) or fold(name) != folded:
            return "join event of another channel"
        if not isinstance(proof.get("key"), (str, type(None))) or not isinstance(proof.get("ops", []), list):
            return "malformed join event"
        if not P.verify_event(proof):
            return "bad signature on the join event"
        return None

    # -- status proofs: the origin-signed mode event behind each member's status -----------------
    def _keep_status(self, uid: str, folded: str, bits: int, event: Optional[dict[str, Any]] = None) -> None:
        """Member ``uid`` of channel ``folded`` now has status ``bits``, and ``event`` (if given) is a signed
        ``mode`` event that granted some of it. Keep as the membership's status proof the event that proves
        its operator status if any (else the latest grant), and forget one that no longer proves anything."""
        key = (uid, folded)
        old = self.member_status.get(key)
        covers = _granted_bits(event, uid) & bits
        if event is not None and covers and len(P.canonical(event)) <= STATUS_PROOF_MAX:
            if covers & OP or old is None or not _granted_bits(old, uid) & bits & OP:
                self.member_status[key] = event
                return
        if old is not None and not _granted_bits(old, uid) & bits:
            del self.member_status[key]

    def _check_status(self, proof: Any, user: User, chan: Channel, link: PeerLink,
                      authority: bool = True) -> Optional[str]:
        """Why ``proof`` (a burst entry's status proof, over ``link``) does not prove the status it grants remote
        ``user`` in ``chan`` (``None``: it does): it must be a ``mode`` event signed by its origin, for this
        channel, granting status to this user, by a granter known here who is a channel operator (or founder/
        DID operator) here, i.e. who could have given that status here; a peer not trusted with mode events
        (``relay``) can only bring back our own. Without ``authority``, only the event itself is checked."""
        if proof is None:
            return "no status proof"
        if not isinstance(proof, dict) or proof.get("type") != "mode":
            return "status proof is not a mode event"
        if "mode" not in P.TRUST_ALLOWS[link.trust] and proof.get("origin") != self.me:
            return f"status proofs are not accepted from a {link.trust} peer"
        if len(P.canonical(proof)) > STATUS_PROOF_MAX:
            return "status proof too large"
        name = proof.get("channel")
        if not isinstance(name, str) or fold(name) != chan.folded:
            return "status proof of another channel"
        if not _granted_bits(proof, user.conn.uid):
            return "status proof for another user"
        if not P.verify_event(proof):
            return "bad signature on the status proof"
        return self._check_actor(proof, chan, authority, "granter", "status proof")

    def _remember_status(self, link: PeerLink, chan: Channel, user: User, proof: Any) -> None:
        """Keep the status proof of a bursted membership for our own bursts if it is a proper signed grant of
        that member's current status (each server that needs it checks the granter against its own view)."""
        bits = chan.members.get(user, 0)
        if proof is not None and self._check_status(proof, user, chan, link, authority=False) is None:
            self._keep_status(user.conn.uid, chan.folded, bits, proof)
        else:
            self._keep_status(user.conn.uid, chan.folded, bits)

    # -- user proofs: the origin-signed user and nick events behind each user record -------------
    @staticmethod
    def _hlc_order(event: dict[str, Any]) -> tuple[int, int]:
        """Where an event stands on its origin's hybrid clock (which orders all events of one run of it)."""
        hlc = event.get("hlc")
        if (isinstance(hlc, list) and len(hlc) == 3 and isinstance(hlc[0], int) and isinstance(hlc[1], int)
                and not isinstance(hlc[0], bool) and not isinstance(hlc[1], bool)):
            return (hlc[0], hlc[1])
        return (-1, -1)

    def _newer(self, old: Optional[dict[str, Any]], new: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        """The later of two events of one origin (``old`` on a tie)."""
        if old is None or (new is not None and self._hlc_order(new) > self._hlc_order(old)):
            return new
        return old

    def _proven_record(self, proof: dict[str, Any], nick_proof: Optional[dict[str, Any]]) -> dict[str, Any]:
        """The user record that a ``user`` event states, with the nick of ``nick_proof`` if that is later."""
        rec = {key: proof.get(key) for key in _USER_FIELDS}
        rec["origin"] = proof.get("origin")
        if nick_proof is not None and self._hlc_order(nick_proof) > self._hlc_order(proof):
            rec["nick"], rec["nick_ts"] = nick_proof.get("nick"), nick_proof.get("nick_ts")
            rec["owns"] = bool(nick_proof.get("owns"))
        return rec

    def _keep_user_proof(self, event: dict[str, Any]) -> None:
        """Keep an accepted (or emitted) ``user`` or ``nick`` event as the proof of its user's record, unless
        an event of that kind stored already is later. Too large to travel in a burst: nothing is kept (a
        local user's proof is then signed anew when bursting; a relayed user is left out of bursts)."""
        store = self.user_proofs if event["type"] == "user" else self.nick_proofs
        uid = str(event["uid"])
        if len(P.canonical(event)) > USER_PROOF_MAX:
            store.pop(uid, None)
            return
        current = store.get(uid)
        if (current is not None and current.get("origin") == event.get("origin")
                and self._hlc_order(current) > self._hlc_order(event)):
            return
        store[uid] = event
        nick_proof = self.nick_proofs.get(uid)
        if event["type"] == "user" and nick_proof is not None and self._hlc_order(nick_proof) < self._hlc_order(event):
            del self.nick_proofs[uid]  # the user event states the current nick

    def _forget_user_proofs(self, uid: str) -> None:
        self.user_proofs.pop(uid, None)
        self.nick_proofs.pop(uid, None)

    def _emitted(self, kind: str, fields: dict[str, Any], event: Optional[dict[str, Any]]) -> None:
        """A ``user`` or ``nick`` event about a local user was emitted (``None``: not sent, no link): keep it,
        or a stand-in signed now, as the proof of the user's record."""
        self._keep_user_proof(event if event is not None else self._stand_in(kind, fields))

    def _local_user_proofs(self, rec: dict[str, Any]) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
        """The proofs of a local user's current record ``rec``: what we emitted, or a stand-in signed now if
        that no longer states the record (a change made without a hook) or was too large to keep."""
        uid = rec["uid"]
        proof, nick_proof = self.user_proofs.get(uid), self.nick_proofs.get(uid)
        if proof is None or self._proven_record(proof, nick_proof) != rec:
            proof = self._stand_in("user", {k: v for k, v in rec.items() if k != "origin"})
            self.nick_proofs.pop(uid, None)
            nick_proof = None
            self._keep_user_proof(proof)
        if nick_proof is not None and self._newer(proof, nick_proof) is proof:
            nick_proof = None
        return proof, nick_proof

    def _user_proof_problem(self, event: Any, kind: str, rec: dict[str, Any]) -> Optional[str]:
        """Why ``event`` is not a ``kind`` (``user``/``nick``) event about the user of ``rec`` signed by its
        origin (``None``: it is)."""
        if not isinstance(event, dict):
            return f"no {kind} event"
        if event.get("type") != kind or event.get("origin") != rec["origin"] or event.get("uid") != rec["uid"]:
            return f"{kind} event of another user"
        if len(P.canonical(event)) > USER_PROOF_MAX:
            return f"{kind} event too large"
        stored = (self.user_proofs if kind == "user" else self.nick_proofs).get(rec["uid"])
        if stored != event and not P.verify_event(event):  # one verified and kept already needs no new check
            return f"bad signature on the {kind} event"
        return None

    def _prove_user(self, link: PeerLink, raw: dict[str, Any], rec: dict[str, Any]) -> Optional[
            tuple[dict[str, Any], Optional[dict[str, Any]], Optional[dict[str, Any]]]]:
        """The record to apply for a burst user entry (``rec``, validated from ``raw``), with the proofs to keep
        for it: the peer's own users are vouched by the peer (their proofs, if sound, are kept for our own
        bursts); a user of a server behind the peer is what its origin-signed ``user`` event (``proof``) and
        later ``nick`` event (``nick_proof``), or newer ones kept here, state. ``None``: rejected (logged)."""
        proof, nick_proof = raw.get("proof"), raw.get("nick_proof")
        if rec["origin"] == link.peer_id:
            sound = self._user_proof_problem(proof, "user", rec) is None
            sound_nick = nick_proof is not None and self._user_proof_problem(nick_proof, "nick", rec) is None
            return rec, proof if sound else None, nick_proof if sound_nick else None
        problem = self._user_proof_problem(proof, "user", rec)
        if problem is None and nick_proof is not None:
            problem = self._user_proof_problem(nick_proof, "nick", rec)
        if problem is not None:
            self._warn_rejected(link, "user", f"forged: {problem}", uid=rec["uid"])
            return None
        assert isinstance(proof, dict)
        # A neighbour may present proofs older than some accepted here: the latest of each kind counts.
        kept, kept_nick = self.user_proofs.get(rec["uid"]), self.nick_proofs.get(rec["uid"])
        if kept is not None and kept.get("origin") == rec["origin"] and self._hlc_order(kept) > self._hlc_order(proof):
            proof = kept
        if kept_nick is not None and kept_nick.get("origin") == rec["origin"]:
            nick_proof = self._newer(kept_nick, nick_proof)
        try:
            proven = self._check_user_record(self._proven_record(proof, nick_proof))
        except ProtocolError as e:
            self._warn_rejected(link, "user", f"malformed: its signed events: {e}", uid=rec["uid"])
            return None
        return proven, proof, nick_proof

    # ==========================================================================================
    # Link events (from the bridge, in the reactor thread)
    # ==========================================================================================
    def link_up(self, link_id: int, peer_id: str, incoming: bool) -> None:
        """A link opened: say hello."""
        trust = self.trust.get(peer_id, "full")
        link = PeerLink(link_id, peer_id, incoming, trust, self.clock.seconds(), self.rate)
        self.links[link_id] = link
        self._send(link, P.make_hello(self.me, self.server.name, self.server.config.network_name, self.epoch))

    def link_rejected(self, peer_id: str, reason: str) -> None:
        """An incoming connection was refused by the allowlist."""
        self._count("connections_rejected", "s2s_rejected")

    def link_down(self, link_id: int, peer_id: str, reason: str) -> None:
        """A link ended: everyone behind it leaves with a netsplit QUIT."""
        link = self.links.pop(link_id, None)
        if link is None:
            return
        was_open = link.state == "open"
        link.state = "closed"
        behind = [sid for sid, info in self.servers.items() if info.link_id == link_id]
        for sid in behind:
            del self.servers[sid]
        gone = [u for u in self.remote.values() if u.conn.origin in behind]
        for user in gone:
            self._remove_remote_user(user, SPLIT_REASON, split=True)
        self._set_peer_gauge()
        if was_open:
            log.info("S2S netsplit: lost {servers} server(s) and {users} user(s) behind {peer} ({reason})",
                     servers=len(behind), users=len(gone), peer=peer_id, reason=reason)
            self._reburst()

    def link_frames(self, link_id: int, payloads: list[bytes]) -> None:
        """Frames from a link, in order."""
        for payload in payloads:
            link = self.links.get(link_id)
            if link is None or link.state == "closed":
                return
            link.last_rx = self.clock.seconds()
            try:
                self._frame(link, payload)
            except ProtocolError as e:
                self._malformed(link, str(e))
            except Exception:
                log.failure("S2S frame from {peer} failed", peer=link.peer_id)

    def _malformed(self, link: PeerLink, error: str) -> None:
        link.malformed += 1
        self._count("malformed", "s2s_events_rejected")
        if link.log_bucket.take(self.clock.seconds()):
            log.warn("S2S malformed frame from peer {peer} dropped: {error}", peer=link.peer_id, error=error)
        if link.malformed > 100:
            self._close(link, "too many malformed frames")

    def _close(self, link: PeerLink, reason: str) -> None:
        link.state = "closed"
        self.transport.close_link(link.link_id, reason, CLOSE_PROTOCOL)

    def _frame(self, link: PeerLink, payload: bytes) -> None:
        msg = P.decode_message(payload)
        kind = msg["type"]
        if link.state == "hello":
            self._on_hello(link, msg)
            return
        if kind in P.EVENT_KINDS:
            self._on_event(link, msg, payload)
        elif kind == "burst":
            self._on_burst(link, msg)
        elif kind == "ping":
            self._send(link, {"type": "pong"})
        elif kind == "pong":
            pass
        elif kind == "resync":
            now = self.clock.seconds()
            if now - link.last_resync >= 5.0:
                link.last_resync = now
                self._send_burst(link)
        elif kind == "hello":
            raise ProtocolError("second hello")

    # ==========================================================================================
    # Handshake and bursts
    # ==========================================================================================
    def _on_hello(self, link: PeerLink, msg: dict[str, Any]) -> None:
        try:
            hello = P.check_hello(msg, link.peer_id)
        except ProtocolError as e:
            self._count("handshake_failed", "s2s_rejected")
            log.warn("S2S handshake with {peer} failed: {error}", peer=link.peer_id, error=str(e))
            self._close(link, f"handshake failed: {e}")
            return
        known = self.servers.get(link.peer_id)
        old = self.links.get(known.link_id) if known is not None else None
        if old is not None and old.peer_id == link.peer_id:
            # The bridge replaced a duplicate link to this peer; forget the old one first.
            self.link_down(old.link_id, old.peer_id, "replaced by a new link")
            known = None
        if known is not None:
            via = self.links.get(known.link_id)
            log.warn("S2S link to {peer} refused: loop (already reachable via {via})", peer=link.peer_id,
                     via=via.peer_id if via else "?")
            self._close(link, "loop: server already linked")
            return
        link.name = hello.name
        link.state = "open"
        self.servers[link.peer_id] = ServerInfo(link.peer_id, hello.name, hello.epoch, link.link_id, 1)
        self._set_peer_gauge()
        log.info("S2S link to {name} ({peer}) open: protocol v{version}, trust {trust}", name=hello.name,
                 peer=link.peer_id, version=hello.version, trust=link.trust)
        self._send_burst(link)

    def _server_entries(self, exclude_link: int) -> list[dict[str, Any]]:
        """The servers part of a burst over link ``exclude_link``: every server not behind it. ``opers`` tells
        the receiver whether that server applies the actions of operators from its side: we do if we trust the
        link ``full``; a server behind another link does if it applies ours (its own bursts said so) and we
        pass such events on (we trust the receiving link ``full``)."""
        link = self.links.get(exclude_link)
        forward = link is not None and link.trust == "full"
        out = [{"id": self.me, "name": self.server.name, "epoch": self.epoch, "hops": 0, "opers": forward}]
        for info in self.servers.values():
            if info.link_id != exclude_link:
                out.append({"id": info.server_id, "name": info.name, "epoch": info.epoch, "hops": info.hops,
                            "opers": forward and info.opers})
        return out

    def _user_record(self, user: User) -> dict[str, Any]:
        remote = isinstance(user.conn, RemoteSession)
        owner = self.server.nick_owner(user.nick) if user.account else None
        return {
            "uid": self.uid(user), "origin": user.conn.origin if remote else self.me, "nick": user.nick,
            "nick_ts": self._nick_ts(user), "user": user.username, "host": user.host, "real": user.realname,
            "account": user.account, "handle": user.handle, "away": user.away,
            "modes": "".join(sorted(set(user.modes) & set("iB"))), "signon": int(user.signon),
            "owns": bool(owner and owner == user.account),
        }

    def _burst_records(self, users: list[User], link: PeerLink) -> tuple[list[dict[str, Any]], set[User]]:
        """The burst records of ``users`` with their proofs (``proof``: the origin-signed ``user`` event,
        ``nick_proof``: a later signed ``nick`` event or null), and the users they cover. A relayed user whose
        proof is not kept here (its event was too large) is left out: the receiver would refuse it."""
        records: list[dict[str, Any]] = []
        included: set[User] = set()
        left_out = 0
        for user in users:
            rec = self._user_record(user)
            nick_proof: Optional[dict[str, Any]]
            if self.is_remote(user):
                proof, nick_proof = self.user_proofs.get(rec["uid"]), self.nick_proofs.get(rec["uid"])
                if proof is None:
                    left_out += 1
                    continue
                if nick_proof is not None and self._newer(proof, nick_proof) is proof:
                    nick_proof = None
            else:
                proof, nick_proof = self._local_user_proofs(rec)
            rec["proof"], rec["nick_proof"] = proof, nick_proof
            records.append(rec)
            included.add(user)
        if left_out:
            log.info("S2S burst to {peer}: {count} user(s) of other servers left out (no proof of their record "
                     "kept here)", peer=link.peer_id, count=left_out)
        return records, included

    def _send_burst(self, link: PeerLink) -> None:
        """Send our whole view, except what lies behind ``link`` itself."""
        servers = self._server_entries(link.link_id)
        origins = {s["id"] for s in servers}
        marks = self.marks.export(origins - {self.me})
        for stream in ("*", link.peer_id):
            if stream in self.out_seq:
                marks.append([self.me, stream, self.epoch, self.out_seq[stream]])
        self._send(link, {"type": "burst", "part": "servers", "servers": servers, "marks": marks})
        users: list[User] = [u for u in self.server.users.values()
                             if u.registered and self._route_of_user(u) != link.link_id
                             and (not self.is_remote(u) or u.conn.origin in origins)]
        records, included = self._burst_records(users, link)
        for chunk in _chunks(records):
            self._send(link, {"type": "burst", "part": "users", "users": chunk})
        for chan in list(self.server.channels.values()):
            crdt = self._crdt(chan)
            crdt.capture(chan, self.hlc)  # local changes made without a hook (plugins, tools) are not lost
            members = [self._member_entry(u, st, chan) for u, st in chan.members.items() if u in included]
            if not members and crdt.is_trivial():
                continue
            for key, chunk in [("ops", c) for c in _chunks(crdt.dump())] + [("members", c) for c in _chunks(members)]:
                self._send(link, {"type": "burst", "part": "channel", "name": chan.name, "created": int(chan.created),
                                  key: chunk})
        self._send(link, {"type": "burst", "part": "end"})

    def _member_entry(self, user: User, bits: int, chan: Channel) -> list[Any]:
        """A burst member entry: ``[uid, status, join event, invite event, status proof]`` (the origin-signed
        join, when known; the signed invite that admitted the member, only when the membership relied on one,
        else null; the signed ``mode`` event that granted its status, only when it has one; trailing nulls
        are left out)."""
        uid = self.uid(user)
        proof = self.member_joins.get((uid, chan.folded)) if self.is_remote(user) else self._local_proof(user, chan)
        if proof is None:
            return [uid, _status_str(bits)]
        entry = [uid, _status_str(bits), proof, self.member_invites.get((uid, chan.folded)),
                 self.member_status.get((uid, chan.folded)) if bits else None]
        while entry[-1] is None:
            entry.pop()
        return entry

    def _reburst(self, except_link: Optional[int] = None) -> None:
        for link in self.open_links():
            if link.link_id != except_link:
                self._send_burst(link)

    def _on_burst(self, link: PeerLink, msg: dict[str, Any]) -> None:
        part = msg.get("part")
        acc = link.burst
        if acc is None:
            acc = link.burst = _Burst()
        acc.frames += 1
        if acc.frames > 200000:
            self._close(link, "burst too large")
            return
        if part == "servers":
            servers = P.get(msg, "servers", list)
            if len(servers) > 10000:
                raise ProtocolError("too many servers")
            acc.servers.extend(servers)
            acc.marks.extend(P.valid_marks(msg.get("marks") or []))
        elif part == "users":
            users = P.get(msg, "users", list)
            if len(users) > 1000 or len(acc.users) + len(users) > 500000:
                raise ProtocolError("too many users")
            acc.users.extend(users)
        elif part == "channel":
            name = P.get(msg, "name", str)
            if not valid_channel(name, self.server.config.channel_len):
                raise ProtocolError("bad channel name")
            entry = acc.channels.get(fold(name))
            if entry is None:
                if len(acc.channels) >= 50000:
                    raise ProtocolError("too many channels")
                entry = acc.channels[fold(name)] = {"name": name, "created": 0, "ops": [], "members": []}
            created = msg.get("created")
            if isinstance(created, int) and not isinstance(created, bool):
                entry["created"] = created
            ops, members = msg.get("ops") or [], msg.get("members") or []
            if not isinstance(ops, list) or not isinstance(members, list):
                raise ProtocolError("bad channel entry")
            entry["ops"].extend(ops)
            entry["members"].extend(members)
        elif part == "end":
            link.burst = None
            self._apply_burst(link, acc)
        else:
            raise ProtocolError("unknown burst part")

    def _apply_burst(self, link: PeerLink, acc: _Burst) -> None:
        if link.trust == "readonly":
            log.info("S2S burst from readonly peer {peer} ignored", peer=link.peer_id)
            return
        # 1. Servers: refuse loops before changing anything.
        burst_servers: dict[str, dict[str, Any]] = {}
        for entry in acc.servers:
            if not isinstance(entry, dict):
                raise ProtocolError("bad server entry")
            sid, name, epoch, hops = entry.get("id"), entry.get("name"), entry.get("epoch"), entry.get("hops")
            if (not P.is_endpoint_id(sid) or not isinstance(name, str) or not isinstance(epoch, int)
                    or not isinstance(hops, int) or not 0 <= hops < 1000 or len(name) > 63
                    or any(c in name for c in " \r\n\x00!@*")):
                raise ProtocolError("bad server entry")
            sid = str(sid)
            if sid == self.me:
                continue
            known = self.servers.get(sid)
            if known is not None and known.link_id != link.link_id:
                via = self.links.get(known.link_id)
                log.warn("S2S link to {peer} closed: loop ({server} is already reachable via {via})",
                         peer=link.peer_id, server=sid, via=via.peer_id if via else "?")
                self._close(link, "loop: server already linked")
                return
            burst_servers[sid] = entry
        if link.peer_id not in burst_servers:
            raise ProtocolError("burst does not list the peer itself")
        lost = [sid for sid, info in self.servers.items() if info.link_id == link.link_id and sid not in burst_servers]
        for sid, entry in burst_servers.items():
            old = self.servers.get(sid)
            self.servers[sid] = ServerInfo(sid, entry["name"], entry["epoch"], link.link_id, entry["hops"] + 1,
                                           opers=entry.get("opers") is True)
            if old is not None and old.epoch != entry["epoch"]:
                log.info("S2S server {server} restarted (epoch {epoch})", server=sid, epoch=entry["epoch"])
        for sid in lost:
            del self.servers[sid]
        for origin, stream, epoch, seq in acc.marks:
            if origin in burst_servers:
                self.marks.record(origin, stream, epoch, seq)
        # 2. Users: the burst is the complete set of users behind this link.
        records: list[dict[str, Any]] = []
        proofs: dict[str, tuple[Optional[dict[str, Any]], Optional[dict[str, Any]]]] = {}
        for raw in acc.users:
            try:
                rec = self._check_user_record(raw)
            except ProtocolError as e:
                self._warn_rejected(link, "burst user", f"malformed: {e}")
                continue
            if rec["origin"] not in burst_servers:
                self._warn_rejected(link, "burst user", "origin not behind this link", uid=rec["uid"])
                continue
            proven = self._prove_user(link, raw, rec)
            if proven is None:
                continue
            records.append(proven[0])
            proofs[rec["uid"]] = (proven[1], proven[2])
        seen = {rec["uid"] for rec in records}
        for uid, user in list(self.remote.items()):  # those gone first: their nicks and places are free
            route = self._route_of_user(user)
            if (route is None or route == link.link_id) and uid not in seen:
                self._remove_remote_user(user, SPLIT_REASON, split=True)
        count = self._users_behind(link.link_id)
        over = 0
        for rec in records:
            if rec["uid"] not in self.remote:
                if count >= self.max_remote_users:  # users already known here are kept
                    over += 1
                    seen.discard(rec["uid"])
                    continue
                count += 1
            self._upsert_user(rec, announce=True)
            for proof in proofs[rec["uid"]]:
                if proof is not None:
                    self._keep_user_proof(proof)
        if over:
            for _ in range(over - 1):
                self._count("rejected:limit", "s2s_events_rejected")
            self._warn_rejected(link, "user", f"limit: {over} user(s) of a burst over the cap of "
                                f"{self.max_remote_users} remote users behind this link")
        # 3. Channels: state (full trust) and the memberships of users behind this link.
        listed: set[str] = set()
        for folded, entry in acc.channels.items():
            listed.add(folded)
            try:
                self._apply_burst_channel(link, entry, seen)
            except ProtocolError as e:
                self._warn_rejected(link, "burst channel", f"malformed: {e}", channel=entry["name"])
        for chan in list(self.server.channels.values()):
            if chan.folded in listed:
                continue
            for member in [m for m in chan.members if self._route_of_user(m) == link.link_id]:
                self._remote_part(member, chan, "")
        self._count("bursts")
        self._reburst(except_link=link.link_id)

    def _apply_burst_channel(self, link: PeerLink, entry: dict[str, Any], seen: set[str]) -> None:
        server = self.server
        name = entry["name"]
        folded = fold(name)
        chan = server.channels.get(folded)
        # uid -> (status bits, the origin-signed join event, the signed invite that admitted the member, the
        # signed mode event that granted its status)
        members: dict[str, tuple[int, Any, Any, Any]] = {}
        for item in entry["members"]:
            if (not isinstance(item, list) or len(item) not in (2, 3, 4, 5) or not isinstance(item[0], str)
                    or item[1] not in _STATUS):
                raise ProtocolError("bad member")
            if item[0] in seen:
                members[item[0]] = (_STATUS[item[1]], item[2] if len(item) > 2 else None,
                                    item[3] if len(item) > 3 else None, item[4] if len(item) > 4 else None)
        ops = entry["ops"] if link.trust == "full" else []
        known = chan is not None  # a channel new here has no local state to check memberships against
        if chan is None:
            if not members and not ops:
                return
            if not members and len(server.channels) - server.channels.formed >= MAX_MEMBERLESS_CHANNELS:
                self._warn_rejected(link, "burst channel", f"limit: {MAX_MEMBERLESS_CHANNELS} channels without "
                                    f"members here already", channel=name)
                return
            chan = self._create_channel(name, entry.get("created") or int(self.clock.seconds()))
        fresh = not chan.members and chan.founder is None
        crdt = self._crdt(chan)
        creator = crdt.creator
        if ops:
            before = crdt.dump()
            merge_ops(crdt, ops, self.hlc)
            if crdt.dump() != before:
                self._show_state(chan, crdt, link.name)
        won = crdt.creator if crdt.creator != creator else None  # a creation race decided by this burst
        for member in [m for m in chan.members if self._route_of_user(m) == link.link_id]:
            if self.uid(member) not in members:
                self._remote_part(member, chan, "")
        # Memberships that rely on an invite come last: their inviter's own membership (and operator
        # status) in this burst must be in place to check the invite against. Status beyond what this
        # server has (or grants by itself) waits for its proof, checked once the granters listed before it
        # are in place (see _prove_status).
        pending: dict[User, list[Any]] = {}  # member -> [status bits not granted yet, status proof, reason]
        for by_invite in (False, True):
            for uid, (bits, proof, invite, status) in members.items():
                user = self.remote.get(uid)
                if user is None or (invite is not None) != by_invite:
                    continue
                if user in chan.members:
                    have = chan.members[user]
                    if have & ~bits:  # its home server's view: status no longer listed is taken away
                        self._set_status(chan, user, have & bits, link.name)
                        self._keep_status(uid, folded, have & bits)
                    extra = bits & ~have  # never raised on the neighbour's word: proven below, or not at all
                    stored = self.member_joins.get((uid, folded))
                    if (isinstance(proof, dict) and (stored is None or stored.get("sig") != proof.get("sig"))
                            and self._check_proof(proof, user, folded) is None):
                        self._remember_join(uid, folded, proof, chan.members[user])
                        self._remember_invite(link, uid, chan, user, invite)
                else:
                    extra = self._burst_join(link, chan, user, bits, proof, invite, known, fresh, won)
                if extra:
                    pending[user] = [extra, status, "no status proof"]
                elif user in chan.members:
                    self._remember_status(link, chan, user, status)
            self._prove_status(link, chan, pending)
        for user, (extra, _status, reason) in pending.items():
            self._warn_rejected(link, "burst membership", f"unauthorized: status +{_status_str(extra)} not proven: "
                                f"{reason}", nick=user.nick, channel=chan.name)
        if creator is not None and crdt.creator != creator:
            self._demote_creator(chan, creator[1])
        if not chan.members and not chan.has_state():  # e.g. every membership refused: keep no empty shell
            server.channels.pop(folded, None)
            self._forget_channel_if_gone(folded)
        if folded in server.channels:
            server.channel_changed(chan)

    def _prove_status(self, link: PeerLink, chan: Channel, pending: dict[User, list[Any]]) -> None:
        """Grant bursted members of ``chan`` the status in ``pending`` (member -> [bits beyond what this server
        gave it, its status proof, reason]) that their status proofs prove (see :meth:`_check_status`).
        Repeated while something is granted, since a granter may owe its own operator status to a proof of
        the same burst. What is left in ``pending`` is not proven, with the reason why."""
        progress = True
        while progress:
            progress = False
            for user, (extra, status, _reason) in list(pending.items()):
                if user not in chan.members:
                    del pending[user]
                    continue
                reason = self._check_status(status, user, chan, link)
                if reason is None:
                    proven = _granted_bits(status, user.conn.uid) & extra
                    if proven:
                        bits = chan.members[user] | proven
                        self._set_status(chan, user, bits, link.name)
                        self._keep_status(user.conn.uid, chan.folded, bits, status)
                        progress = True
                        extra &= ~proven
                    reason = "the status proof grants other status"
                if extra:
                    pending[user] = [extra, status, reason]
                else:
                    del pending[user]

    def _remember_invite(self, link: PeerLink, uid: str, chan: Channel, user: User, invite: Any) -> None:
        """Keep the invite of a bursted membership for our own bursts if it is a proper signed invite of that
        member (each server that needs it checks the inviter against its own view); else forget it."""
        if invite is not None and self._check_invite(invite, user, chan, link, authority=False) is None:
            self.member_invites[(uid, chan.folded)] = invite
        else:
            self.member_invites.pop((uid, chan.folded), None)

    def _burst_join(self, link: PeerLink, chan: Channel, user: User, bits: int, proof: Any, invite: Any,
                    check: bool, fresh: bool, won: Optional[tuple[Any, str]]) -> int:
        """A membership new here, from a burst. Its join event must be signed by the user's origin; unless
        this very join was accepted here before (a relink), it is checked like a live join (refused ones
        are undone at the home server). When +i is the only obstacle, the signed invite that admitted the
        member on its side (``invite``) can stand for an invite given here, if its inviter could have invited
        here (see :meth:`_check_invite`). The member gets the status it had here under that very join (a
        relink), or that the live-join rules give (operator status: channel new here, a creation race won
        by that join, founder/DID op; voice: carried by the join itself); returns the status bits of
        ``bits`` beyond that (0 if none, or if the membership is refused), which need a status proof."""
        uid = user.conn.uid
        problem = self._check_proof(proof, user, chan.folded)
        if problem is not None:
            self._warn_rejected(link, "burst membership", f"forged: {problem}", nick=user.nick, channel=chan.name)
            return 0
        accepted = self.accepted_joins.get((uid, chan.folded))
        known_bits = accepted[1] if accepted is not None and accepted[0] == proof["sig"] else None
        by_invite = False
        if known_bits is None and (check or len(user.channels) >= self.server.config.max_channels_per_user):
            # A channel new here has no state to check against, but CHANLIMIT still holds.
            reason = self._join_refusal(chan, user, proof.get("key"))
            if reason is not None and reason.startswith("+i ") and invite is not None:
                # +k, +l and +b are checked first: +i is the only reason left, which an invite answers.
                invalid = self._check_invite(invite, user, chan, link)
                if invalid is None:
                    log.debug("S2S burst membership of {nick} in {channel} accepted by the invite of {inviter}",
                              nick=user.nick, channel=chan.name, inviter=invite["uid"])
                    reason = None
                    by_invite = True
                else:
                    reason = f"{reason} and its invite event is refused: {invalid}"
            if reason is not None:
                self._warn_rejected(link, "burst membership", f"unauthorized: {reason}", nick=user.nick,
                                    channel=chan.name)
                self._emit("refuse", {"uid": uid, "channel": chan.name, "reason": reason.split()[0],
                                      "join": proof["sig"]}, to=user.conn.origin)
                return 0
        allowed = known_bits or 0
        if (fresh or self._is_did_op(chan, user)
                or (won is not None and won[1] == uid and ["created", uid, list(won[0])] in proof.get("ops", []))):
            allowed |= OP
        if proof.get("status") in ("v", "ov"):  # as a live join would give it
            allowed |= VOICE
        extra, bits = bits & ~allowed, bits & allowed
        if known_bits is None:
            user.invites.discard(chan.folded)
            if user.account is not None:
                chan.invited_accounts.discard(user.account)
        self._add_member(chan, user, bits, source=link.name)
        self._remember_join(uid, chan.folded, proof, bits)
        if by_invite:
            self.member_invites[(uid, chan.folded)] = invite
        else:
            self._remember_invite(link, uid, chan, user, invite)
        return extra

    # ==========================================================================================
    # Events
    # ==========================================================================================
    def _on_event(self, link: PeerLink, ev: dict[str, Any], payload: bytes) -> None:
        now = self.clock.seconds()
        if not link.bucket.take(now):
            link.dropped += 1
            self._count("dropped", "s2s_dropped")
            if now - link.last_drop_warn >= 5.0:
                link.last_drop_warn = now
                log.warn("S2S rate limit exceeded for peer {peer} ({rate:g} events/s): dropped {count} event(s)",
                         peer=link.peer_id, rate=self.rate, count=link.dropped)
                link.dropped = 0
            return
        kind = ev["type"]
        origin = ev.get("origin")
        epoch, seq, to = ev.get("epoch"), ev.get("seq"), ev.get("to")
        if (not P.is_endpoint_id(origin) or not isinstance(epoch, int) or isinstance(epoch, bool) or epoch <= 0
                or not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0
                or not (to is None or P.is_endpoint_id(to))):
            raise ProtocolError("bad envelope")
        origin = str(origin)
        if not P.verify_event(ev):
            self._warn_rejected(link, f"{kind} event", "forged: bad signature for its origin", origin=origin)
            return
        if origin == self.me:
            self._warn_rejected(link, f"{kind} event", "replay: our own event came back", seq=seq)
            return
        info = self.servers.get(origin)
        if info is None or info.link_id != link.link_id:
            self._warn_rejected(link, f"{kind} event", "forged: origin is not behind this link", origin=origin)
            return
        stream = to or "*"
        verdict = self.marks.check(origin, stream, epoch, seq)
        if verdict in (P.REPLAY, P.STALE):
            mark = self.marks.marks.get((origin, stream))
            self._warn_rejected(link, f"{kind} event", f"replay: replayed or out-of-order ({verdict})",
                                origin=P.short_id(origin), seq=seq, high=mark[1] if mark else 0)
            return
        self.marks.record(origin, stream, epoch, seq)
        if verdict == P.GAP:
            self._count("gaps")
            log.info("S2S gap in events of {origin} via {peer} (now at {seq}); asking for a resync",
                     origin=P.short_id(origin), peer=link.peer_id, seq=seq)
            if now - link.resync_asked >= 10.0:
                link.resync_asked = now
                self._send(link, {"type": "resync"})
        if kind not in P.TRUST_ALLOWS[link.trust]:
            self._warn_rejected(link, f"{kind} event", f"trust: not allowed from a {link.trust} peer")
            return
        if to is not None and to != self.me:
            nxt = self._link_of_origin(to)
            if nxt is not None and nxt.state == "open" and nxt is not link:
                self.transport.send(nxt.link_id, P.encode_frame(payload))
            return
        try:  # the envelope's clock only advances ours; state ops inside carry (and check) their own stamps
            self.hlc.observe(self.hlc.check(ev.get("hlc")))
        except ProtocolError:
            log.debug("S2S event from {origin} has an unusable clock stamp", origin=origin)
        ctx = _Ctx(link, origin, ev)
        accepted = getattr(self, "_ev_" + kind)(ctx)
        if not accepted:
            return
        self._count("applied:" + kind)
        if to is None:
            frame = P.encode_frame(payload)
            for other in self.open_links():
                if other is not link:
                    self.transport.send(other.link_id, frame)

    # -- users --------------------------------------------------------------------------------
    def _check_user_record(self, rec: Any) -> dict[str, Any]:
        if not isinstance(rec, dict):
            raise ProtocolError("bad user")
        origin = rec.get("origin")
        if not P.is_endpoint_id(origin):
            raise ProtocolError("bad origin")
        origin = str(origin)
        uid = P.uid(rec, "uid")
        if uid[:16] != origin[:16]:
            raise ProtocolError("uid does not belong to its origin")
        nick = P.get(rec, "nick", str)
        if not valid_nick(nick, self.server.config.nick_len):
            raise ProtocolError("bad nick")
        nick_ts = P.get(rec, "nick_ts", int)
        modes = P.get(rec, "modes", str)
        if len(modes) > 2 or set(modes) - set("iB"):
            raise ProtocolError("bad modes")
        handle = P.get(rec, "handle", str, optional=True)
        if handle is not None:
            if not P.is_word(handle):
                raise ProtocolError("bad handle")
            # A word that is not an atproto handle is dropped, not fatal: the handle is cosmetic (WHOIS),
            # the DID is the identity, and a peer's looser check must not cost the whole burst.
            handle = valid_handle(handle)
        return {
            "uid": uid, "origin": origin, "nick": nick, "nick_ts": nick_ts, "user": P.word(rec, "user"),
            "host": P.host(rec, "host"), "real": P.text(rec, "real", 400), "account": P.did(rec, "account"),
            "handle": handle, "away": P.text(rec, "away", 400, optional=True), "modes": modes,
            "signon": P.get(rec, "signon", int), "owns": bool(rec.get("owns")),
        }

    def _upsert_user(self, rec: dict[str, Any], announce: bool) -> User:
        server = self.server
        user = self.remote.get(rec["uid"])
        if user is None:
            if rec["uid"] in self.local_by_uid:
                raise ProtocolError("uid of a local user")
            info = self.servers[rec["origin"]]
            user = User(RemoteSession(rec["origin"], rec["uid"]), _discard, "", self.clock.seconds(), info.name)
            user.registered = user.nick_given = user.user_given = True
            user.signon = rec["signon"]
            user.username, user.host = rec["user"], rec["host"]
            user.realname = rec["real"]
            user.account = rec["account"]
            user.handle = rec["handle"]
            user.away = rec["away"]
            user.modes = set(rec["modes"])
            self.nick_ts[self.uid(user)] = rec["nick_ts"]
            nick = self._claim_nick(rec["nick"], user, rec["nick_ts"], rec["account"], rec["origin"])
            user.set_nick(nick)
            server.users[user.folded] = user
            self.remote[rec["uid"]] = user
            self.users_by_origin[rec["origin"]] = self.users_by_origin.get(rec["origin"], 0) + 1
            server.monitor_notify(user.folded, user)
            self._adopt_ownership(user, rec["owns"])
            return user
        if user.conn.origin != rec["origin"]:
            raise ProtocolError("uid belongs to another origin")
        if fold(rec["nick"]) != user.folded or rec["nick"] != user.nick:
            self._remote_nick(user, rec["nick"], rec["nick_ts"])
        self.nick_ts[self.uid(user)] = rec["nick_ts"]
        self._update_user(user, rec)
        self._adopt_ownership(user, rec["owns"])
        return user

    def _update_user(self, user: User, rec: dict[str, Any]) -> None:
        server = self.server
        if (rec["user"], rec["host"]) != (user.username, user.host):
            server.change_host(user, rec["user"], rec["host"])
        if rec["real"] != user.realname:
            user.realname = rec["real"]
            server.broadcast(server.co_members(user), build_text(user.hostmask, "SETNAME", user.realname),
                             cap="setname")
        if rec["away"] != user.away:
            user.away = rec["away"]
            data = (build_text(user.hostmask, "AWAY", user.away) if user.away is not None
                    else build(user.hostmask, "AWAY"))
            server.broadcast(server.co_members(user), data, cap="away-notify")
        user.handle = rec["handle"]
        user.modes = set(rec["modes"])
        if rec["account"] != user.account:
            server.set_account(user, rec["account"])
            if self._has_did_authority(user):
                for chan in list(user.channels.values()):
                    server.apply_did_status(chan, user)

    def _has_did_authority(self, user: User) -> bool:
        """Whether ``user``'s DID may confer channel authority here: local users, and users behind a
        ``full`` link (a relay or readonly peer's account claims are shown, never obeyed)."""
        if not isinstance(user.conn, RemoteSession):
            return True
        link = self._link_of_origin(user.conn.origin)
        return link is not None and link.trust == "full"

    def _is_did_op(self, chan: Channel, user: User) -> bool:
        return is_did_op(chan, user) and self._has_did_authority(user)

    def _adopt_ownership(self, user: User, owns: bool) -> None:
        if owns and user.account and self.server.nick_owner(user.nick) is None:
            self.server.bind_nick(user, user.account)

    def _rank(self, nick: str, account: Optional[str], nick_ts: int, origin: str) -> tuple[int, int, str]:
        owner = self.server.nick_owner(nick)
        return (0 if owner is not None and owner == account else 1, nick_ts, origin)

    def collision_nick(self, nick: str, uid: str) -> str:
        """The deterministic nick a collision loser gets (the same on every server)."""
        digest = hashlib.sha256(uid.encode()).hexdigest()
        limit = self.server.config.nick_len
        for size in (6, 10, 16, 32):
            candidate = f"{nick[: max(1, limit - size - 1)]}-{digest[:size]}"
            holder = self.server.users.get(fold(candidate))
            if holder is None:
                return candidate
        return f"u{digest[:limit - 1]}"

    def _claim_nick(self, nick: str, user: User, nick_ts: int, account: Optional[str], origin: str) -> str:
        """Resolve a collision for ``user`` wanting ``nick``; returns the nick it gets (maybe renaming the holder)."""
        holder = self.server.users.get(fold(nick))
        if holder is None or holder is user:
            return nick
        if isinstance(holder.conn, RemoteSession):
            holder_rank = self._rank(nick, holder.account, self._nick_ts(holder), holder.conn.origin)
        elif not holder.registered:
            holder_rank = (2, 0, "")  # an unregistered local connection always yields
        else:
            holder_rank = self._rank(nick, holder.account, self._nick_ts(holder), self.me)
        mine = self._rank(nick, account, nick_ts, origin)
        uid = self.uid(user)
        if mine < holder_rank:
            loser_uid = self.uid(holder) if holder.registered else f"unregistered.{id(holder)}"
            new = self.collision_nick(nick, loser_uid)
            log.info("S2S nick collision on {nick}: {loser} renamed to {new}", nick=nick, loser=loser_uid, new=new)
            self._count("nick_collisions")
            self._rename(holder, new, collision=True)
            return nick
        new = self.collision_nick(nick, uid)
        log.info("S2S nick collision on {nick}: {loser} renamed to {new}", nick=nick, loser=uid, new=new)
        self._count("nick_collisions")
        return new

    def _rename(self, user: User, new: str, collision: bool = False) -> None:
        """Change a user's nick as seen here (local users are told; remote ones are renamed by their server too)."""
        server = self.server
        old_folded, old_mask, old_nick = user.folded, user.hostmask, user.nick
        if new == old_nick:
            return
        if user.registered:
            data = build_text(old_mask, "NICK", new)
            if not self.is_remote(user):
                user.write(data)
            server.broadcast(server.co_members(user), data)
            server.whowas.append((user.nick, user.username, user.host, user.realname, self.clock.seconds()))
        if server.users.get(old_folded) is user:
            del server.users[old_folded]
        user.set_nick(new)
        server.users[user.folded] = user
        if old_folded != user.folded:
            server.monitor_notify(old_folded, None)
            if user.registered:
                server.monitor_notify(user.folded, user)
        if collision and not self.is_remote(user) and user.registered:
            self.nick_ts[self.uid(user)] = self.hlc.tick()[0]
            user.write(build_text(server.name, "NOTICE", new,
                                  f"Nick {old_nick} is in use on another server of the network; you are now {new}"))
            fields = {"uid": self.uid(user), "nick": new, "nick_ts": self.nick_ts[self.uid(user)], "owns": False}
            self._emitted("nick", fields, self._emit("nick", fields))

    def _remote_nick(self, user: User, nick: str, nick_ts: int) -> None:
        if nick == user.nick:
            self.nick_ts[self.uid(user)] = nick_ts
            return
        holder = self.server.users.get(fold(nick))
        if holder is user:
            self._rename(user, nick)
        else:
            final = self._claim_nick(nick, user, nick_ts, user.account, user.conn.origin)
            self._rename(user, final)
        self.nick_ts[self.uid(user)] = nick_ts

    def _remove_remote_user(self, user: User, reason: str, split: bool = False) -> None:
        """``user`` quit (``split``: is no longer reachable; its accepted joins and statuses are kept, so
        the memberships a relink brings back are not checked again)."""
        server = self.server
        uid = user.conn.uid
        if self.remote.get(uid) is not user:
            return
        del self.remote[uid]
        origin = user.conn.origin
        left = self.users_by_origin.get(origin, 0) - 1
        if left > 0:
            self.users_by_origin[origin] = left
        else:
            self.users_by_origin.pop(origin, None)
        server.broadcast(server.co_members(user), build_text(user.hostmask, "QUIT", reason))
        server.whowas.append((user.nick, user.username, user.host, user.realname, self.clock.seconds()))
        for chan in list(user.channels.values()):
            accepted = self.accepted_joins.get((uid, chan.folded))
            if split and accepted is not None:
                accepted[1] = chan.members.get(user, 0)  # the status it had, for a relink
                self.member_joins.pop((uid, chan.folded), None)
                self.member_invites.pop((uid, chan.folded), None)
                self.member_status.pop((uid, chan.folded), None)
            else:
                self._forget_join(uid, chan.folded)
            server.part_channel(chan, user)
            self._forget_channel_if_gone(chan.folded)
        if server.users.get(user.folded) is user:
            del server.users[user.folded]
            server.monitor_notify(user.folded, None)
        self.nick_ts.pop(self.uid(user), None)
        self._forget_user_proofs(uid)
        user.registered = False

    def _actor(self, ctx: "_Ctx", key: str = "uid") -> Optional[User]:
        """The user an event is about, who must belong to the event's origin."""
        uid = P.uid(ctx.ev, key)
        if uid[:16] != ctx.origin[:16]:
            self._warn_rejected(ctx.link, f"{ctx.kind} event", "forged: user does not belong to the origin", uid=uid)
            return None
        user = self.remote.get(uid)
        if user is None or user.conn.origin != ctx.origin:
            self._count("unknown_user")
            log.debug("S2S {kind} for unknown user {uid} dropped", kind=ctx.kind, uid=uid)
            return None
        return user

    def _ev_user(self, ctx: "_Ctx") -> bool:
        rec = dict(ctx.ev)
        rec["origin"] = ctx.origin
        rec = self._check_user_record(rec)
        if rec["uid"] not in self.remote and self._users_behind(ctx.link.link_id) >= self.max_remote_users:
            self._warn_rejected(ctx.link, "user", f"limit: over the cap of {self.max_remote_users} remote users "
                                "behind this link", uid=rec["uid"])
            return False
        self._upsert_user(rec, announce=True)
        self._keep_user_proof(ctx.ev)  # carried with the user's record in our bursts
        return True

    def _ev_nick(self, ctx: "_Ctx") -> bool:
        user = self._actor(ctx)
        if user is None:
            return False
        nick = P.get(ctx.ev, "nick", str)
        if not valid_nick(nick, self.server.config.nick_len):
            raise ProtocolError("bad nick")
        self._remote_nick(user, nick, P.get(ctx.ev, "nick_ts", int))
        self._adopt_ownership(user, bool(ctx.ev.get("owns")))
        self._keep_user_proof(ctx.ev)
        return True

    def _ev_quit(self, ctx: "_Ctx") -> bool:
        user = self._actor(ctx)
        if user is None:
            return False
        self._remove_remote_user(user, P.text(ctx.ev, "reason", 400))
        return True

    # -- channels -------------------------------------------------------------------------------
    def _channel(self, ctx: "_Ctx") -> tuple[str, Optional[Channel]]:
        name = P.get(ctx.ev, "channel", str)
        if not valid_channel(name, self.server.config.channel_len):
            raise ProtocolError("bad channel name")
        return name, self.server.channels.get(fold(name))

    def _create_channel(self, name: str, created: int) -> Channel:
        chan = Channel(name, self.clock.seconds())
        chan.created = created
        chan.modes.update("nt")
        self.server.channels[chan.folded] = chan
        self.crdts[chan.folded] = self._fresh_crdt(chan.folded, ChannelCRDT.defaults())
        return chan

    def _fresh_crdt(self, folded: str, crdt: ChannelCRDT) -> ChannelCRDT:
        """A new channel's state, keeping the removals remembered from an earlier channel of that name."""
        old = self.crdts.get(folded)
        if old is not None:
            crdt.tombs = old.tombs
        self._dirty.add(folded)
        return crdt

    def _add_member(self, chan: Channel, user: User, bits: int, source: str) -> None:
        server = self.server
        chan.add(user, bits)
        self.member_status.pop((self.uid(user), chan.folded), None)  # a new membership: no grant yet
        plain = build(user.hostmask, "JOIN", chan.name)
        extended = build_text(user.hostmask, "JOIN", chan.name, user.account or "*", user.realname)
        local = [m for m in chan.members if not self.is_remote(m)]
        server.broadcast(local, extended, cap="extended-join", fallback=plain)
        if user.away is not None:
            server.broadcast(local, build_text(user.hostmask, "AWAY", user.away), cap="away-notify")
        prefix = "".join(ch for ch, bit in (("o", OP), ("v", VOICE)) if bits & bit)
        if prefix and local:
            server.broadcast(local, build(source, "MODE", chan.name, "+" + prefix, *([user.nick] * len(prefix))))

    def _set_status(self, chan: Channel, user: User, bits: int, source: str) -> None:
        old = chan.members.get(user, 0)
        chan.members[user] = bits
        changes: list[tuple[str, str, Optional[str]]] = []
        for ch, bit in (("o", OP), ("v", VOICE)):
            if bits & bit and not old & bit:
                changes.append(("+", ch, user.nick))
            elif old & bit and not bits & bit:
                changes.append(("-", ch, user.nick))
        if changes:
            self.server.broadcast_modes(source, chan, changes)

    def _remote_part(self, user: User, chan: Channel, reason: str) -> None:
        if user not in chan.members:
            return
        data = build_text(user.hostmask, "PART", chan.name, reason) if reason else build(user.hostmask, "PART", chan.name)
        self.server.broadcast(chan.members, data)
        self.server.part_channel(chan, user)
        self._forget_join(self.uid(user), chan.folded)
        self._forget_channel_if_gone(chan.folded)

    def _show_state(self, chan: Channel, crdt: ChannelCRDT, source: str) -> None:
        """Materialise merged state into the channel and tell local members what changed."""
        changes, topic_changed = materialize(crdt, chan)
        if changes:
            self.server.broadcast_modes(source, chan, changes)
        if topic_changed:
            self.server.broadcast(chan.members, build_text(source, "TOPIC", chan.name, chan.topic))

    def _join_refusal(self, chan: Channel, user: User, key: Optional[str]) -> Optional[str]:
        """Why ``user`` may not join ``chan`` in the local view (the same rules as a local JOIN).

        A remote user is also held to this server's CHANLIMIT (``--max-channels-per-user``), which
        with ``--s2s-max-remote-users`` bounds the channels a peer can make here by joining."""
        limit = self.server.config.max_channels_per_user
        if len(user.channels) >= limit:
            return f"limit (in {limit} channels already)"
        if self._is_did_op(chan, user):
            return None
        refused = join_refusal(chan, user, key)
        return None if refused is None else _JOIN_REASON[refused]

    def _ev_join(self, ctx: "_Ctx") -> bool:
        user = self._actor(ctx)
        if user is None:
            return False
        name, chan = self._channel(ctx)
        status = P.get(ctx.ev, "status", str)
        if status not in _STATUS:
            raise ProtocolError("bad status")
        key = P.get(ctx.ev, "key", str, optional=True)
        ops = ctx.ev.get("ops") or []
        if not isinstance(ops, list) or len(ops) > 50:
            raise ProtocolError("bad ops")
        if chan is not None and user in chan.members:
            self._remember_join(self.uid(user), chan.folded, ctx.ev, chan.members[user])  # its latest join
            return True
        bits = _STATUS[status]
        uid = self.uid(user)
        # Creation ops (modes, founder, the creator) are only believed for the joiner's own identity.
        allowed: list[Any] = []
        creation = None
        for op in ops:
            if not isinstance(op, list) or not op or not isinstance(op[0], str):
                raise ProtocolError("bad op")
            if op[0] == "found" and (len(op) < 2 or op[1] != user.account):
                self._warn_rejected(ctx.link, "join", "unauthorized: founder claim for another DID", nick=user.nick)
                continue
            if op[0] == "add" and len(op) > 2 and op[1] == "ops" and op[2] != user.account:
                continue
            if op[0] == "created":
                if len(op) < 2 or op[1] != uid:
                    continue
                creation = op
            allowed.append(op)
        fresh = chan is None or (not chan.members and chan.founder is None)
        won = False
        if chan is not None:
            reason = self._join_refusal(chan, user, key)
            if reason is not None:
                self._warn_rejected(ctx.link, "join", f"unauthorized: {reason}", nick=user.nick, channel=chan.name)
                # Tell the user's home server, which takes the user out everywhere (see _ev_refuse).
                self._emit("refuse", {"uid": uid, "channel": chan.name, "reason": reason.split()[0],
                                      "join": ctx.ev["sig"]}, to=ctx.origin)
                return False
            if not fresh and creation is not None and ctx.link.trust == "full":
                # Both sides created the channel while unaware of each other: the earlier creation wins
                # everywhere (first-writer-wins "creator"), and the later creator loses its creation op.
                crdt = self._crdt(chan)
                before = crdt.creator
                crdt.apply(creation, self.hlc)
                won = crdt.creator is not None and crdt.creator[1] == uid and before != crdt.creator
                if won and before is not None:
                    self._demote_creator(chan, before[1])
        else:
            if len(user.channels) >= self.server.config.max_channels_per_user:
                reason = f"limit (in {self.server.config.max_channels_per_user} channels already)"
                self._warn_rejected(ctx.link, "join", f"unauthorized: {reason}", nick=user.nick, channel=name)
                self._emit("refuse", {"uid": uid, "channel": name, "reason": "limit", "join": ctx.ev["sig"]},
                           to=ctx.origin)
                return False
            chan = self._create_channel(name, int(self.clock.seconds()))
        if bits & OP and not (fresh or won) and not self._is_did_op(chan, user):
            log.info("S2S join of {nick} to {channel}: operator status not granted here (channel not new)",
                     nick=user.nick, channel=chan.name)
            bits &= ~OP
        if allowed and (fresh or won) and ctx.link.trust == "full":
            crdt = self._crdt(chan)
            merge_ops(crdt, allowed, self.hlc)
            self._show_state(chan, crdt, self.server.name)
        user.invites.discard(chan.folded)
        if user.account is not None:
            chan.invited_accounts.discard(user.account)
        self._add_member(chan, user, bits, source=self.server.name)
        self._remember_join(uid, chan.folded, ctx.ev, bits)
        self._admitting_invite(uid, chan, user)
        if allowed:
            self.server.channel_changed(chan)
        return True

    def _demote_creator(self, chan: Channel, creator_uid: str) -> None:
        """Our creator lost a creation race: it keeps membership but not the operator status of creating."""
        user = self.user_by_uid(creator_uid)
        if user is None or user not in chan.members or not chan.members[user] & OP:
            return
        if user.account and (user.account == chan.founder or user.account in chan.did_ops):
            return
        log.info("S2S {channel} was created earlier elsewhere: {nick} loses creation operator status",
                 channel=chan.name, nick=user.nick)
        bits = chan.members[user] & ~OP
        for device in self.server.group(user):
            if device in chan.members:
                chan.members[device] = bits
        self._keep_status(creator_uid, chan.folded, bits)
        self.server.broadcast_modes(self.server.name, chan, [("-", "o", user.nick)])
        if not self.is_remote(user):  # tell the others (they may have believed our creator's status)
            self._emit("mode", {"uid": creator_uid, "channel": chan.name, "ops": [],
                                "status": [["-", "o", creator_uid]]})

    def _ev_part(self, ctx: "_Ctx") -> bool:
        user = self._actor(ctx)
        if user is None:
            return False
        _name, chan = self._channel(ctx)
        reason = P.text(ctx.ev, "reason", 400)
        if chan is None or user not in chan.members:
            return True
        self._remote_part(user, chan, reason)
        return True

    def _ev_refuse(self, ctx: "_Ctx") -> bool:
        """A server refused the join of one of our users (+b/+i/+k/+l in its view): the user leaves the
        channel here (local clients see a KICK from that server) and a ``part`` tells everyone else.

        Only believed when routed to us, for a local user who is still in the channel, quoting the
        signature of our latest join event for that user and channel (so the refuser really received
        that join, and a stale refusal cannot undo a later rejoin). ``full`` links only (trust check)."""
        uid = P.uid(ctx.ev, "uid")
        name, chan = self._channel(ctx)
        code = P.get(ctx.ev, "reason", str)
        join_sig = P.get(ctx.ev, "join", str)
        if code not in ("+b", "+i", "+k", "+l", "limit"):
            raise ProtocolError("bad refusal reason")
        user = self.local_user_by_uid(uid) if ctx.ev.get("to") == self.me else None
        if (user is None or chan is None or user not in chan.members
                or join_sig not in (self.sent_joins.get((uid, chan.folded)),
                                    self.member_joins.get((uid, chan.folded), {}).get("sig"))):
            self._warn_rejected(ctx.link, "refusal", "unauthorized: not for a current join of our user",
                                origin=P.short_id(ctx.origin), uid=uid, channel=name)
            return False
        info = self.servers.get(ctx.origin)
        where = info.name if info is not None else P.short_id(ctx.origin)
        text = f"Cannot join channel ({code}) on {where}"
        log.info("S2S join of {nick} to {channel} refused by {server} ({code}): removed here too",
                 nick=user.nick, channel=chan.name, server=where, code=code)
        self.server.broadcast(chan.members, build_text(where, "KICK", chan.name, user.nick, text))
        for device in self.server.group(user):
            if device in chan.members:
                self.server.part_channel(chan, device)
        self.local_part(user, chan, text)  # the rest of the network sees an ordinary part
        return True

    def _is_chanop(self, chan: Channel, user: User) -> bool:
        return chan.is_op(user)

    def _oper_override(self, ctx: "_Ctx", actor: User, chan: Channel, what: str) -> bool:
        """Whether ``actor``'s event may act on ``chan`` although ``actor`` lacks the channel status for it here:
        its home server (the event's origin, which signed it) asserts that the actor is a server operator
        (``"oper": true``) and this link is trusted ``full``. Logged and counted when it is used."""
        if ctx.ev.get("oper") is not True or ctx.link.trust != "full":
            return False
        self._count("oper_overrides", "s2s_oper_applied")
        info = self.servers.get(ctx.origin)
        log.info("S2S server-operator override: {nick} (operator of {server}) {what} on {channel}", nick=actor.nick,
                 server=info.name if info is not None else P.short_id(ctx.origin), what=what, channel=chan.name)
        return True

    def _ev_kill(self, ctx: "_Ctx") -> bool:
        """A server operator of the origin killed one of our users (``kill`` is routed here, ``full`` links only:
        the trust check). The user is disconnected as by a local KILL; its QUIT then tells everyone."""
        actor = self._actor(ctx)
        if actor is None:
            return False
        target_uid = P.uid(ctx.ev, "target")
        reason = P.text(ctx.ev, "reason", 400)
        if ctx.ev.get("to") != self.me:
            raise ProtocolError("kill event not routed")
        info = self.servers.get(ctx.origin)
        where = info.name if info is not None else P.short_id(ctx.origin)
        victim = self.local_user_by_uid(target_uid)
        if ctx.ev.get("oper") is not True or ctx.link.trust != "full":
            self._warn_rejected(ctx.link, "kill", "unauthorized: killer is not a server operator",
                                nick=actor.nick, target=target_uid)
            return False
        if victim is None:
            log.info("S2S KILL by {oper} of {server} for {uid}: no such user here (gone already)", oper=actor.nick,
                     server=where, uid=target_uid)
            return True
        self._count("oper_kills", "s2s_oper_applied")
        log.info("S2S {oper} ({account}) of {server} killed {nick}: {reason}", oper=actor.nick,
                 account=actor.account or "no account", server=where, nick=victim.nick, reason=reason)
        text = f"Killed ({actor.nick} ({reason}))"
        for device in list(self.server.group(victim)):
            device.write(build_text(actor.hostmask, "KILL", device.nick, reason))
            self.server.close(device, text)
        return True

    def _ev_kick(self, ctx: "_Ctx") -> bool:
        actor = self._actor(ctx)
        if actor is None:
            return False
        _name, chan = self._channel(ctx)
        target = self.user_by_uid(P.uid(ctx.ev, "target"))
        reason = P.text(ctx.ev, "reason", 400)
        if chan is None or target is None or target not in chan.members:
            return True  # nothing to do here (already gone)
        if kick_refusal(chan, actor) and not self._oper_override(ctx, actor, chan, f"kicks {target.nick}"):
            self._warn_rejected(ctx.link, "kick", "unauthorized: kicker is not a channel operator",
                                nick=actor.nick, channel=chan.name)
            return False
        self.server.broadcast(chan.members, build_text(actor.hostmask, "KICK", chan.name, target.nick, reason))
        self.server.part_channel(chan, target)
        self._forget_join(self.uid(target), chan.folded)
        self._forget_channel_if_gone(chan.folded)
        return True

    def _ev_topic(self, ctx: "_Ctx") -> bool:
        actor = self._actor(ctx)
        if actor is None:
            return False
        _name, chan = self._channel(ctx)
        ops = P.get(ctx.ev, "ops", list)
        if any(not isinstance(op, list) or op[:2] != ["set", "topic"] for op in ops) or len(ops) > 4:
            raise ProtocolError("topic event with other ops")
        if chan is None:
            self._warn_rejected(ctx.link, "topic", "unauthorized: setter is not on the channel", nick=actor.nick)
            return False
        refusal = topic_refusal(chan, actor)
        if refusal and not self._oper_override(ctx, actor, chan, "sets the topic"):
            self._warn_rejected(ctx.link, "topic", "unauthorized: setter is not on the channel"
                                if refusal == NOT_ON_CHANNEL else
                                "unauthorized: channel is +t and setter is not an operator",
                                nick=actor.nick, channel=chan.name)
            return False
        crdt = self._crdt(chan)
        merge_ops(crdt, ops, self.hlc)
        self._show_state(chan, crdt, actor.hostmask)
        self.server.channel_changed(chan)
        return True

    def _ev_mode(self, ctx: "_Ctx") -> bool:
        actor = self._actor(ctx)
        if actor is None:
            return False
        _name, chan = self._channel(ctx)
        ops = P.get(ctx.ev, "ops", list)
        status = P.get(ctx.ev, "status", list)
        if len(ops) > 200 or len(status) > 50:
            raise ProtocolError("too many changes")
        if chan is None:
            return True
        if mode_refusal(chan, actor) and not self._oper_override(ctx, actor, chan, "changes modes"):
            self._warn_rejected(ctx.link, "mode", "unauthorized: setter is not a channel operator",
                                nick=actor.nick, channel=chan.name)
            return False
        for op in ops:
            if not isinstance(op, list) or not op:
                raise ProtocolError("bad op")
            if op[0] == "found" or (op[0] == "set" and len(op) > 1 and op[1] == "topic"):
                self._warn_rejected(ctx.link, "mode", "unauthorized: founder or topic change inside MODE")
                return False
            if op[0] == "rem" and len(op) == 3 and op[1] == "ops" and chan.founder:
                crdt = self._crdt(chan)
                if set(op[2] if isinstance(op[2], list) else []) & set(crdt.live_tags("ops", chan.founder)):
                    self._warn_rejected(ctx.link, "mode", "unauthorized: cannot remove the founder's operator status")
                    return False
        crdt = self._crdt(chan)
        merge_ops(crdt, ops, self.hlc)
        self._show_state(chan, crdt, actor.hostmask)
        changes: list[tuple[str, str, Optional[str]]] = []
        for item in status:
            if (not isinstance(item, list) or len(item) != 3 or item[0] not in ("+", "-")
                    or item[1] not in ("o", "v") or not isinstance(item[2], str)):
                raise ProtocolError("bad status change")
            target = self.user_by_uid(item[2])
            if target is None or target not in chan.members:
                continue
            bit = OP if item[1] == "o" else VOICE
            old = chan.members[target]
            new = old | bit if item[0] == "+" else old & ~bit
            if new != old:
                chan.members[target] = new
                changes.append((item[0], item[1], target.nick))
                # This signed event is the proof of the status it granted, for bursts to servers that miss it.
                self._keep_status(self.uid(target), chan.folded, new, ctx.ev if new & ~old else None)
        if changes:
            self.server.broadcast_modes(actor.hostmask, chan, changes)
        if ops:
            self.server.channel_changed(chan)
        return True

    def _ev_invite(self, ctx: "_Ctx") -> bool:
        actor = self._actor(ctx)
        if actor is None:
            return False
        _name, chan = self._channel(ctx)
        target = self.user_by_uid(P.uid(ctx.ev, "target"))
        if chan is None or target is None:
            return True
        if invite_refusal(chan, actor) and not self._oper_override(ctx, actor, chan, f"invites {target.nick}"):
            self._warn_rejected(ctx.link, "invite", "unauthorized: inviter is not allowed to invite",
                                nick=actor.nick, channel=chan.name)
            return False
        grant_invite(chan, target, self.server.config.max_invites_per_user)
        self._keep_invite(ctx.ev)  # the proof, should the target's join reach a server that missed this
        line = build(actor.hostmask, "INVITE", target.nick, chan.name)
        if not self.is_remote(target):
            target.write(line)
        for member, st in chan.members.items():
            if st & OP and "invite-notify" in member.caps and member is not target:
                member.write(line)
        return True

    # -- messages -------------------------------------------------------------------------------
    def _ev_msg(self, ctx: "_Ctx") -> bool:
        actor = self._actor(ctx)
        if actor is None:
            return False
        ev = ctx.ev
        command = P.get(ev, "cmd", str)
        if command not in ("PRIVMSG", "NOTICE", "TAGMSG"):
            raise ProtocolError("bad command")
        text = P.text(ev, "text", 4096) if command != "TAGMSG" else ""
        tags = P.tags(ev, "tags")
        msgid = P.get(ev, "msgid", str)
        if not 1 <= len(msgid) <= 64 or set(msgid) - _MSGID_CHARS:
            raise ProtocolError("bad msgid")
        info = self.servers.get(ctx.origin)
        tags[ORIGIN_TAG] = info.name if info is not None else P.short_id(ctx.origin)
        server = self.server
        if ev.get("to") is not None:
            target = self.local_user_by_uid(P.uid(ev, "target"))
            if target is None or not target.registered:
                return True
            server.deliver(actor, command, target.nick, text, tags, server.group(target), msgid=msgid)
            key = dm_history_key(command, actor, target)
            if server.store is not None and key is not None:
                server.store.append_message(key, msgid, self.clock.seconds(), command, actor.hostmask, actor.account,
                                            target.nick, text, tags)
            return True
        target_name = P.get(ev, "target", str)
        status_min, name = status_target(target_name)
        if not valid_channel(name, server.config.channel_len):
            raise ProtocolError("bad target")
        chan = server.channels.get(fold(name))
        if chan is None:
            return True
        blocked = send_refusal(chan, actor)
        if blocked is not None:
            self._warn_rejected(ctx.link, "message", f"unauthorized: {_SEND_REASON[blocked]}", nick=actor.nick,
                                channel=chan.name)
            return False
        display = (target_name[0] + chan.name) if status_min else chan.name
        local = [m for m in status_recipients(chan, status_min) if not self.is_remote(m)]
        server.deliver(actor, command, display, text, tags, local, msgid=msgid)
        key = channel_history_key(chan, command, status_min)
        if server.store is not None and key is not None:
            server.store.append_message(key, msgid, self.clock.seconds(), command, actor.hostmask,
                                        actor.account, chan.name, text, tags)
        return True

    # ==========================================================================================
    # Local changes (called by IRCServer.s2s_notify)
    # ==========================================================================================
    def _local(self, user: Optional[User]) -> bool:
        return user is not None and not isinstance(user.conn, RemoteSession)

    @staticmethod
    def _oper_field(user: User) -> dict[str, Any]:
        """``{"oper": True}`` for a server operator's channel events (peers trusting us ``full`` then apply them
        even where the operator is not a channel operator), else nothing."""
        return {"oper": True} if user.is_oper else {}

    def local_register(self, user: User) -> None:
        """A local user completed registration."""
        if not self._local(user) or not self.server.is_primary(user):
            return  # another device of a connected identity is not a new user
        self.uid(user)
        self.nick_ts[self.uid(user)] = self.hlc.tick()[0]
        fields = self._event_user(user)
        self._emitted("user", fields, self._emit("user", fields))

    def _event_user(self, user: User) -> dict[str, Any]:
        rec = self._user_record(user)
        del rec["origin"]
        return rec

    def local_user(self, user: User) -> None:
        """A local user's account, host, away state or real name changed (sent once per reactor turn)."""
        if not self._local(user) or not user.registered:
            return
        self._pending_users.add(user)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush_users)

    def _flush_users(self) -> None:
        self._flush_call = None
        pending, self._pending_users = self._pending_users, set()
        for user in pending:
            if user.registered and user in self.local_uid:
                fields = self._event_user(user)
                self._emitted("user", fields, self._emit("user", fields))

    def local_nick(self, user: User, old_nick: str) -> None:
        """A registered local user changed nick."""
        if not self._local(user):
            return
        self.nick_ts[self.uid(user)] = self.hlc.tick()[0]
        owner = self.server.nick_owner(user.nick) if user.account else None
        fields = {"uid": self.uid(user), "nick": user.nick, "nick_ts": self.nick_ts[self.uid(user)],
                  "owns": bool(owner and owner == user.account)}
        self._emitted("nick", fields, self._emit("nick", fields))

    def local_quit(self, user: User, reason: str) -> None:
        """A registered local user disconnected."""
        if not self._local(user):
            return
        uid = self.local_uid.pop(user, None)
        self._pending_users.discard(user)
        if uid is None:
            return
        self.nick_ts.pop(uid, None)
        self._forget_user_proofs(uid)
        for device in [d for d, u in self.local_uid.items() if u == uid]:
            del self.local_uid[device]
        self.local_by_uid.pop(uid, None)
        self._emit("quit", {"uid": uid, "reason": reason[:400]})

    def local_channel_created(self, chan: Channel) -> None:
        """A local JOIN created ``chan``: its creation modes (and creator) are sent with the join."""
        self.crdts[chan.folded] = self._fresh_crdt(chan.folded, ChannelCRDT())
        self._creating = chan.folded

    def local_join(self, user: User, chan: Channel, key: Optional[str] = None) -> None:
        """A local user joined ``chan``."""
        if not self._local(user) or user not in chan.members:
            return
        crdt = self._crdt(chan)
        ops = crdt.capture(chan, self.hlc)
        if self._creating == chan.folded:
            self._creating = None
            created = ["created", self.uid(user), list(self.hlc.tick())]
            crdt.apply(created, self.hlc)
            ops.append(created)
        fields: dict[str, Any] = {"uid": self.uid(user), "channel": chan.name,
                                  "status": _status_str(chan.members[user]), "ops": ops}
        if key is not None and chan.key is not None:
            fields["key"] = key
        event = self._emit("join", fields)
        if event is not None:
            self.sent_joins[(fields["uid"], chan.folded)] = event["sig"]
        if event is None or len(P.canonical(event)) > PROOF_MAX:
            # Not sent (no link) or too large for a burst: a proof of its own (a creation decides races).
            event = self._sign_proof(fields["uid"], chan, fields["status"], [op for op in ops if op[0] == "created"],
                                     fields.get("key"))
        self.member_joins[(fields["uid"], chan.folded)] = event
        self.member_status.pop((fields["uid"], chan.folded), None)  # a status it joined with is in the join
        self._admitting_invite(fields["uid"], chan, user)

    def local_part(self, user: User, chan: Channel, reason: str = "") -> None:
        """A local user left ``chan``."""
        if not self._local(user):
            return
        self._emit("part", {"uid": self.uid(user), "channel": chan.name, "reason": reason[:400]})
        self.sent_joins.pop((self.uid(user), chan.folded), None)
        self.member_joins.pop((self.uid(user), chan.folded), None)
        self.member_invites.pop((self.uid(user), chan.folded), None)
        self.member_status.pop((self.uid(user), chan.folded), None)
        self._forget_channel_if_gone(chan.folded)

    def local_kick(self, user: User, chan: Channel, victim: User, reason: str) -> None:
        """A local operator kicked ``victim`` (local or remote) from ``chan``."""
        if not self._local(user):
            return
        self._emit("kick", {"uid": self.uid(user), "channel": chan.name, "target": self.uid(victim),
                            "reason": reason[:400], **self._oper_field(user)})
        self._forget_join(self.uid(victim), chan.folded)
        self._forget_channel_if_gone(chan.folded)

    def local_topic(self, user: User, chan: Channel) -> None:
        """A local user set the topic of ``chan``."""
        if not self._local(user):
            return
        ops = [op for op in self._crdt(chan).capture(chan, self.hlc)]
        topic_ops = [op for op in ops if op[:2] == ["set", "topic"]]
        if topic_ops:
            self._emit("topic", {"uid": self.uid(user), "channel": chan.name, "ops": topic_ops, **self._oper_field(user)})
        other = [op for op in ops if op[:2] != ["set", "topic"]]
        if other:
            self._emit("mode", {"uid": self.uid(user), "channel": chan.name, "ops": other, "status": [],
                                **self._oper_field(user)})

    def local_mode(self, user: User, chan: Channel, applied: Iterable[tuple[str, str, Optional[str]]]) -> None:
        """A local user changed modes of ``chan`` (``applied`` as the MODE handler lists them)."""
        if not self._local(user):
            return
        ops = self._crdt(chan).capture(chan, self.hlc)
        status = []
        targets: list[User] = []
        for sign, ch, arg in applied:
            if ch in ("o", "v") and arg is not None:
                target = self.server.users.get(fold(arg))
                if target is not None:
                    status.append([sign, ch, self.uid(target)])
                    targets.append(target)
        event = None
        if ops or status:
            event = self._emit("mode", {"uid": self.uid(user), "channel": chan.name, "ops": ops, "status": status,
                                        **self._oper_field(user)})
        if any(item[0] == "+" for item in status):
            # The grant's signed event is the members' status proof in bursts; without a link (or when it is
            # too large to carry) a stand-in carrying only the status changes is signed for the purpose.
            if event is None or len(P.canonical(event)) > STATUS_PROOF_MAX:
                event = self._stand_in("mode", {"uid": self.uid(user), "channel": chan.name, "ops": [],
                                                "status": status, **self._oper_field(user)})
        for target in targets:
            self._keep_status(self.uid(target), chan.folded, chan.members.get(target, 0), event)

    def local_invite(self, user: User, target: User, chan: Channel) -> None:
        """A local user invited ``target`` to ``chan`` (every server learns it, for +i checks)."""
        if not self._local(user):
            return
        fields = {"uid": self.uid(user), "channel": chan.name, "target": self.uid(target), **self._oper_field(user)}
        event = self._emit("invite", fields)
        if event is None:  # no link now: a signed invite of its own (seq 0), the proof should the target join
            event = self._stand_in("invite", fields)
        self._keep_invite(event)

    def local_message(self, user: User, command: str, target: str, chan: Channel, text: str,
                      tags: dict[str, str], msgid: str) -> None:
        """A local user sent PRIVMSG/NOTICE/TAGMSG to a channel."""
        if not self._local(user) or not self.links:
            return
        self._emit("msg", {"uid": self.uid(user), "cmd": command, "target": target, "text": text,
                           "tags": {k: v for k, v in tags.items() if k != ORIGIN_TAG}, "msgid": msgid})

    def local_dm(self, user: User, command: str, other: User, text: str, tags: dict[str, str], msgid: str) -> None:
        """A local user sent a private message; if the recipient is remote it goes to its server only."""
        if not self._local(user) or not isinstance(other.conn, RemoteSession):
            return
        self._emit("msg", {"uid": self.uid(user), "cmd": command, "target": other.conn.uid, "text": text,
                           "tags": {k: v for k, v in tags.items() if k != ORIGIN_TAG}, "msgid": msgid},
                   to=other.conn.origin)

    # ==========================================================================================
    # Server-operator actions beyond this server (overrides on shared channels, KILL of remote users)
    # ==========================================================================================
    def _refuser(self, origins: Iterable[str]) -> Optional[str]:
        """The name of the first of the servers ``origins`` that would not apply our operators' actions."""
        for origin in sorted(set(origins)):
            info = self.servers.get(origin)
            if info is None or not info.opers:
                return info.name if info is not None else P.short_id(origin)
        return None

    def override_refuser(self, chan: Channel) -> Optional[str]:
        """The server that shares ``chan`` (has members in it) but would not apply a server operator's override
        from here (a channel operator's power used by an operator who is not one), or ``None``: the action may
        go ahead, every server with members will apply it. Applying it here alone would split the channel."""
        return self._refuser(m.conn.origin for m in chan.members if isinstance(m.conn, RemoteSession))

    def remote_kill(self, oper: User, victim: User, reason: str) -> "LinkControl":
        """A local operator's KILL of a remote user: a signed ``kill`` event routed to the user's home server,
        which disconnects the user (its QUIT then reaches everyone), if it applies our operators' actions; if
        not (or no link), nothing is sent and the outcome says why. Logged either way."""
        origin = victim.conn.origin
        info = self.servers.get(origin)
        where = info.name if info is not None else P.short_id(origin)
        if self._refuser([origin]) is not None:
            log.warn("KILL of {nick} (a user of {server}) by operator {oper} ({account}) refused: {server} does not "
                     "accept server-operator actions from this server", nick=victim.nick, server=where, oper=oper.nick,
                     account=oper.account or "no account")
            self._count("oper_refused", "s2s_oper_refused")
            return LinkControl(False, f"Permission Denied- Cannot kill {victim.nick}, a user of {where}: not "
                                      "permitted by that server")
        event = self._emit("kill", {"uid": self.uid(oper), "target": victim.conn.uid, "reason": reason[:400],
                                    "oper": True}, to=origin)
        if event is None:
            log.warn("KILL of {nick} (a user of {server}) by operator {oper} not sent: no link to {server}",
                     nick=victim.nick, server=where, oper=oper.nick)
            return LinkControl(False, f"Cannot kill {victim.nick}, a user of {where}: no link to that server now")
        log.info("KILL of {nick} (a user of {server}) by operator {oper} ({account}) sent to {server}: {reason}",
                 nick=victim.nick, server=where, oper=oper.nick, account=oper.account or "no account", reason=reason)
        return LinkControl(True, f"KILL for {victim.nick} sent to {where}, its home server")

    # ==========================================================================================
    # Operator control (LINKS, SQUIT, CONNECT): plain values in and out; the IRC layer words replies
    # ==========================================================================================
    def links_view(self) -> list["LinkView"]:
        """Every server of the federation as seen from here: this one first, then nearest first.

        ``uplink`` is this server for direct links; further away it is the neighbour the server is
        reached through (bursts carry hop counts, not parents, so in a tree deeper than two hops this
        is the first hop of the path, not necessarily the server's own uplink).
        """
        out = [LinkView(self.server.name, self.me, self.server.name, 0, None)]
        for info in sorted(self.servers.values(), key=lambda i: (i.hops, i.name.lower(), i.server_id)):
            link = self.links.get(info.link_id)
            if link is not None and link.peer_id == info.server_id:
                out.append(LinkView(info.name, info.server_id, self.server.name, info.hops, link.trust))
                continue
            via = self.servers.get(link.peer_id) if link is not None else None
            out.append(LinkView(info.name, info.server_id, via.name if via is not None else "*", info.hops, None))
        return out

    def held_view(self) -> list["HeldPeer"]:
        """The peers held by an operator, oldest first."""
        return sorted(self.held.values(), key=lambda h: h.since)

    def _direct_peers(self) -> dict[str, str]:
        """Endpoint id -> name of every peer SQUIT can act on: configured, held or linked (any state)."""
        peers = {pid: P.short_id(pid) for pid in getattr(self.transport, "peers", {})}
        peers.update((pid, h.name) for pid, h in self.held.items())
        for link in self.links.values():
            if link.state != "closed":
                info = self.servers.get(link.peer_id)
                peers[link.peer_id] = info.name if info is not None else link.name
        return peers

    @staticmethod
    def _match(target: str, candidates: dict[str, str]) -> list[str]:
        """Ids in ``candidates`` (id -> name) that ``target`` names: the id, the name, or a unique id prefix."""
        wanted = target.lower()
        if wanted in candidates:
            return [wanted]
        found = [pid for pid, name in candidates.items() if name.lower() == wanted]
        if found or len(wanted) < 8 or any(c not in "0123456789abcdef" for c in wanted):
            return found
        return [pid for pid in candidates if pid.startswith(wanted)]

    def _is_me(self, target: str) -> bool:
        return target.lower() in (self.me, self.server.name.lower())

    def hold(self, target: str, reason: str, by: User) -> "LinkControl":
        """An operator's SQUIT: drop the direct link to ``target`` (server name or endpoint id) and
        neither dial nor accept that peer until :meth:`release`. Only direct neighbours can be held."""
        if self._is_me(target):
            return LinkControl(False, f"{self.server.name} is this server: SQUIT drops the link to a neighbour")
        direct = self._direct_peers()
        matches = self._match(target, direct)
        if not matches:
            far = self._match(target, {sid: info.name for sid, info in self.servers.items()})
            if not far:
                return LinkControl(False, "No such server", no_such_server=True)
            info = self.servers[far[0]]
            link = self.links.get(info.link_id)
            via = direct.get(link.peer_id, link.name) if link is not None else "?"
            return LinkControl(False, f"{info.name} is not linked directly to {self.server.name} (it is {info.hops} "
                                      f"hops away, through {via}); SQUIT only applies to direct links")
        if len(matches) > 1:
            return LinkControl(False, f"{target} names several peers ({', '.join(sorted(matches))}): "
                                      "give the endpoint id")
        peer_id = matches[0]
        name = direct[peer_id]
        if peer_id in self.held:
            return LinkControl(False, f"The link to {name} ({peer_id}) is already held: CONNECT {name} releases it")
        linked = any(link.peer_id == peer_id and link.state != "closed" for link in self.links.values())
        self.held[peer_id] = HeldPeer(peer_id, name, reason, by.nick, self.clock.seconds())
        # The bridge hands this to its own loop thread; the link's end comes back as link_down (netsplit).
        self.transport.hold_peer(peer_id, f"link held: {reason}")
        log.info("S2S link to {name} ({peer}) held by operator {nick} ({account}): {reason}", name=name,
                 peer=peer_id, nick=by.nick, account=by.account or "no account", reason=reason)
        done = "dropped and held" if linked else "held (it was not linked)"
        return LinkControl(True, f"Link to {name} ({peer_id}) {done}: it is neither dialled nor accepted "
                                 f"until CONNECT {name}")

    def release(self, target: str, by: User) -> "LinkControl":
        """An operator's CONNECT: release a peer held by :meth:`hold`, so the link can come back (the bridge
        dials it at once if it is in ``--s2s-peers``; otherwise it is accepted when it dials here)."""
        configured = getattr(self.transport, "peers", {})
        matches = self._match(target, {pid: h.name for pid, h in self.held.items()})
        if len(matches) > 1:
            return LinkControl(False, f"{target} names several held peers ({', '.join(sorted(matches))}): "
                                      "give the endpoint id")
        if matches:
            entry = self.held.pop(matches[0])
            self.transport.release_peer(entry.peer_id)
            log.info("S2S link to {name} ({peer}) released by operator {nick} ({account})", name=entry.name,
                     peer=entry.peer_id, nick=by.nick, account=by.account or "no account")
            how = ("dialling it now" if entry.peer_id in configured else
                   "it is not in --s2s-peers, so the link comes back when it dials this server")
            return LinkControl(True, f"Link to {entry.name} ({entry.peer_id}) released: {how}")
        if self._is_me(target):
            return LinkControl(False, f"{self.server.name} is this server")
        known = self._direct_peers()
        known.update((sid, info.name) for sid, info in self.servers.items())
        found = self._match(target, known)
        if not found:
            return LinkControl(False, "No such server", no_such_server=True)
        peer_id = found[0]
        name = known[peer_id]
        if peer_id in self.servers:
            return LinkControl(False, f"{name} ({peer_id}) is not held: it is linked")
        if peer_id in configured:
            self.transport.release_peer(peer_id)  # not held: this only cuts the dialling back-off short
            return LinkControl(False, f"{name} ({peer_id}) is not held; dialling it now")
        return LinkControl(False, f"{name} ({peer_id}) is not held")

    # ==========================================================================================
    # Persistence of the channel CRDTs (table channel_crdt; docs/federation.md, "Restarts")
    # ==========================================================================================
    def load_state(self, store: Any) -> None:
        """Start-up: use the channel states saved in ``store`` instead of re-adopting the channels.

        Each row is validated like peer input; a corrupt one is logged and ignored (that channel is
        adopted from its persisted record, as without saved state). A persisted channel that differs
        from its saved state (changed while federation was off, or a crash lost the last state write)
        gets the differences captured with fresh stamps, so they still reach the peers. The clock is
        moved past every loaded stamp first, so it never goes backwards across a restart.
        """
        self.store = store
        if store is None:
            return
        try:
            rows = store.load_channel_crdts()
        except Exception:
            log.failure("S2S saved channel states could not be read; channels are adopted from their records")
            return
        loaded: dict[str, ChannelCRDT] = {}
        for folded, text in rows.items():
            try:
                if not isinstance(folded, str) or not is_channel(folded) or fold(folded) != folded:
                    raise ProtocolError("bad channel name")
                loaded[folded] = ChannelCRDT.deserialize(text, self.hlc)
            except ProtocolError as e:
                log.warn("S2S saved state of channel {channel} is unusable ({error}); adopting the persisted "
                         "channel instead", channel=str(folded)[:64], error=str(e))
                self._saved[folded] = b""  # replaced (or deleted) by the next persist()
                self._dirty.add(folded)
                continue
            self._saved[folded] = hashlib.sha256(text.encode("utf-8")).digest()
        for crdt in loaded.values():
            self.hlc.observe(crdt.max_stamp())
        recaptured = 0
        for folded, crdt in loaded.items():
            self.crdts[folded] = crdt
            chan = self.server.channels.get(folded)
            if chan is not None and crdt.capture(chan, self.hlc):
                recaptured += 1
                self._dirty.add(folded)
        for folded in self._dirty:  # corrupt rows of persisted channels: adopt now (and save)
            chan = self.server.channels.get(folded)
            if chan is not None and folded not in self.crdts:
                self.crdts[folded] = ChannelCRDT.adopt(chan)
        log.info("S2S restored the saved state of {n} channel(s) ({changed} changed since, re-stamped)",
                 n=len(loaded), changed=recaptured)

    def persist(self) -> None:
        """Periodic (once per store flush interval): queue the states of changed channels for the store.

        Channels are marked dirty when their state may have changed; only states that really differ
        from what the store holds are written, and the state of a forgotten channel is deleted.
        """
        dirty, self._dirty = self._dirty, set()
        store = self.store
        if store is None:
            return
        for folded in dirty:
            try:
                crdt = self.crdts.get(folded)
                if crdt is None:
                    if self._saved.pop(folded, None) is not None:
                        store.delete_channel_crdt(folded)
                    continue
                text = crdt.serialize()
                digest = hashlib.sha256(text.encode("utf-8")).digest()
                if self._saved.get(folded) != digest:
                    store.save_channel_crdt(folded, text)
                    self._saved[folded] = digest
            except Exception:
                log.failure("S2S state of channel {channel} not saved", channel=folded)

    # ==========================================================================================
    # Keepalive
    # ==========================================================================================
    def _prune_joins(self) -> None:
        """Forget the joins of memberships that ended by a path without a hook (kept: users split away)."""
        channels = self.server.channels
        for uid, folded in list(self.member_joins):
            user = self.user_by_uid(uid)
            chan = channels.get(folded)
            if user is None or chan is None or user not in chan.members:
                del self.member_joins[(uid, folded)]
        for uid, folded in list(self.accepted_joins):
            user = self.remote.get(uid)
            if user is not None and ((chan := channels.get(folded)) is None or user not in chan.members):
                del self.accepted_joins[(uid, folded)]
        for key in [k for k in self.member_invites if k not in self.member_joins]:
            del self.member_invites[key]
        for uid, folded in list(self.member_status):  # statuses of memberships that ended without a hook
            user = self.user_by_uid(uid)
            chan = channels.get(folded)
            if user is None or chan is None or not chan.members.get(user, 0):
                del self.member_status[(uid, folded)]
        for uid, folded in list(self.invite_events):  # invites whose target or channel is gone
            if folded not in channels or self.user_by_uid(uid) is None:
                del self.invite_events[(uid, folded)]

    def tick(self) -> None:
        """Periodic: ping open links, drop silent or stuck ones, forget the state of vanished channels."""
        now = self.clock.seconds()
        for folded in list(self.crdts):
            self._forget_channel_if_gone(folded)
        for uid, folded in list(self.sent_joins):  # joins whose user has left (kicked, quit) since
            user = self.local_user_by_uid(uid)
            chan = self.server.channels.get(folded)
            if user is None or chan is None or user not in chan.members:
                del self.sent_joins[(uid, folded)]
        try:
            self._prune_joins()
        except Exception:
            log.failure("S2S pruning of membership joins failed")
        for store in (self.user_proofs, self.nick_proofs):  # users gone by a path without a hook
            for uid in [u for u in store if self.user_by_uid(u) is None]:
                del store[uid]
        for link in list(self.links.values()):
            try:
                if link.state == "hello" and now - link.opened > self.ping_timeout:
                    log.warn("S2S link to {peer}: no hello in time", peer=link.peer_id)
                    self._close(link, "handshake timeout")
                elif link.state == "open":
                    if now - link.last_rx > self.ping_timeout:
                        log.warn("S2S link to {peer}: ping timeout", peer=link.peer_id)
                        self._close(link, "ping timeout")
                    else:
                        self._send(link, {"type": "ping"})
            except Exception:
                log.failure("S2S keepalive failed for {peer}", peer=link.peer_id)


class _Ctx:
    """An inbound event being applied."""

    __slots__ = ("link", "origin", "ev", "kind")

    def __init__(self, link: PeerLink, origin: str, ev: dict[str, Any]) -> None:
        self.link = link
        self.origin = origin
        self.ev = ev
        self.kind = ev["type"]


# ==============================================================================================
# Wiring
# ==============================================================================================
class FederationService(service.MultiService):
    """The bridge, the keepalive timer and the state writer, started and stopped with the server."""

    def __init__(self, federation: Federation, bridge: IrohBridgeService, clock: Any,
                 persist_interval: float = 0.2) -> None:
        super().__init__()
        self.federation = federation
        self.bridge = bridge
        bridge.setServiceParent(self)
        timer = TimerService(federation.ping_interval, federation.tick)
        timer.clock = clock
        timer.setServiceParent(self)
        writer = TimerService(persist_interval, federation.persist)
        writer.clock = clock
        writer.setServiceParent(self)

    def stopService(self) -> Any:
        """Queue the last changed channel states first: the store (stopped after us) flushes them."""
        try:
            self.federation.persist()
        except Exception:
            log.failure("S2S channel states not saved at shutdown")
        return super().stopService()


def make_federation(config: Any, server: Any, reactor: Any, secret_key: bytes, *, clock: Any = None,
                    backoff_min: float = 1.0, ping_interval: float = 15.0,
                    max_remote_users: Optional[int] = None) -> FederationService:
    """Build the S2S bridge and federation for ``server`` from a validated config."""
    clock = clock if clock is not None else reactor
    if max_remote_users is None:
        max_remote_users = config.s2s_max_remote_users
    signer = EventSigner(secret_key)
    if config.s2s_open_federation:
        allowed: Optional[frozenset[str]] = None
    else:
        allowed = frozenset(config.s2s_allowed_peers)
    peers = tuple(PeerAddress(pid, host, port) for pid, host, port in config.s2s_peers)
    bridge = IrohBridgeService(reactor, secret_key, peers=peers, allowed=allowed, bind_host=config.iroh_host,
                               port=config.iroh_port, relay_mode=config.iroh_relay_mode, backoff_min=backoff_min)
    federation = Federation(server, bridge, signer, clock, trust=dict(config.s2s_peer_trust), rate=config.s2s_rate,
                            ping_interval=ping_interval, ping_timeout=ping_interval * 3,
                            max_remote_users=max_remote_users)
    bridge.listener = federation
    federation.load_state(getattr(server, "store", None))
    server.s2s.append(federation)
    server.federation = federation  # LINKS, SQUIT and CONNECT call through it
    if allowed is not None and not allowed:
        log.warn("S2S federation is closed: no --s2s-allowed-peers, so every incoming peer is refused "
                 "(give --s2s-allowed-peers, or --s2s-open-federation to accept anyone)")
    elif allowed is None:
        log.warn("S2S open federation: any iroh endpoint may link to this server (--s2s-open-federation)")
    return FederationService(federation, bridge, clock,
                             persist_interval=getattr(federation.store, "flush_interval", 0.2))
