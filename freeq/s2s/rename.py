"""``draft/channel-rename`` across the federation: the ``rename`` event, its refusal and undo, and the former names a
renamed channel's proofs may name (docs/federation.md, "Channel rename").

* A local RENAME (:mod:`freeq.core.rename`) floods a signed ``rename`` event ``{uid, channel (the old name), new,
  reason}`` (``"oper": true`` for a server operator's override). Its origin checked the new name against its own
  view, which holds every channel with members anywhere in the federation (joins flood, bursts carry channels),
  and refused the RENAME if a server sharing the channel would not apply channel changes from it.
* A receiver applies it through the core path of a local RENAME (``IRCServer.rename_channel``: its members see
  RENAME, or the PART/JOIN fallback) over a ``full`` link only (a ``STATE_KINDS`` event) and when the renamer is an
  operator of the old channel in the receiver's own view (:func:`freeq.state.rules.mode_refusal`, or a server
  operator's override), as for KICK, MODE and TOPIC.
* A receiver that refuses a rename (the new name is taken there, created while the rename was in flight; the
  renamer is no operator there; renamed too recently there) routes ``rename_refused`` to its origin, which renames
  the channel back and floods ``rename`` with ``undo`` (the signature of the rename it reverses); every server that
  applied it reverses it. A rename holds everywhere or nowhere; on a clash the name stays with the channel that
  had it.
* Proofs (signed joins, invites, status grants) name the channel they were signed for, and only their origin can
  sign them, so they are not re-issued: they are re-keyed to the new name, and the channel keeps the signed rename
  events that led to its name (at most :data:`RENAME_CHAIN`): a proof for a former name proves the same for the
  channel (:meth:`~freeq.s2s.proof_keeping.ProofKeeping._former_names`). Bursts carry that chain with the
  channel, so a server that restarted (and forgot the rename) still accepts the proofs, and one that missed the
  rename in a split and still has the old channel applies it first (:meth:`ChannelRenames._burst_renames`).
"""
from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from freeq.irc.names import fold, valid_channel
from freeq.s2s import protocol as P
from freeq.s2s.inbound import InboundEvents
from freeq.s2s.peers import EventContext, PeerLink
from freeq.s2s.proofs import hlc_order
from freeq.s2s.protocol import ProtocolError
from freeq.state.channel import OP, Channel
from freeq.state.rules import mode_refusal
from freeq.state.user import User

log = Logger()

#: The signed rename events kept per channel (its latest renames): proofs naming an older name are refused.
RENAME_CHAIN = 8
#: Renamed channels whose rename events are kept (the oldest forgotten first).
RENAMED_CHANNELS_MAX = 4096
#: The largest rename event (canonical JSON bytes) kept, and accepted in a burst: any valid one (a 400-byte reason
#: of control characters escaped in JSON is 2 400 bytes); a chain of RENAME_CHAIN fits one burst frame.
RENAME_EVENT_MAX = 4000
#: The longest reason carried (UTF-8 bytes), as for KICK.
REASON_MAX = 400
#: Seconds of RENAME_INTERVAL (freeq.core.rename) a peer's rename may be early by here (events' delays differ).
RENAME_SLACK = 10.0
#: Peers' renames applied here (live or missed ones from bursts): a burst of this many, then this many a minute.
#: Each costs a pass over the invites and accepted joins kept (up to 100 000 each) and, for members without the
#: cap, a PART/JOIN/NAMES each: a peer creating channels to rename them cannot make that a flood.
PEER_RENAMES_BURST = 20
PEER_RENAMES_PER_MINUTE = 30
#: Why a server refused a rename (``rename_refused``'s ``why``) -> the reason its origin gives when it undoes it.
REFUSALS = {
    "in-use": "{new} is in use on {server}",
    "not-operator": "the renamer is not an operator of {old} on {server}",
    "limit": "{old} was renamed too recently on {server}",
}
#: How much later than a rename (by its origin's clock, seconds) a channel may have been created here and still
#: be the channel that rename missed (clock skew between servers).
CREATION_SKEW = 120


def clip(text: str, max_bytes: int = REASON_MAX) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes, never inside a character."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def rename_event_problem(event: Any, channel_len: int) -> Optional[str]:
    """Why ``event`` (from a burst's chain) is not a well-formed ``rename`` event signed by its origin, by a user
    of that origin (``None``: it is)."""
    if not isinstance(event, dict) or event.get("type") != "rename" or "undo" in event:
        return "not a rename event"
    old, new, uid = event.get("channel"), event.get("new"), event.get("uid")
    if (not isinstance(old, str) or not isinstance(new, str) or not valid_channel(old, channel_len)
            or not valid_channel(new, channel_len) or old[0] != new[0]):
        return "bad channel names"
    if not isinstance(uid, str) or uid[:16] != str(event.get("origin"))[:16]:
        return "renamer does not belong to the rename's origin"
    if not isinstance(event.get("reason", ""), str) or len(P.canonical(event)) > RENAME_EVENT_MAX:
        return "malformed or too large"
    if not P.verify_event(event):
        return "bad signature on the rename event"
    return None


def chain_problem(chain: list[dict[str, Any]], folded: str) -> Optional[str]:
    """Why the rename events ``chain`` (each well-formed) do not lead, one after the other, to channel ``folded``."""
    for before, after in zip(chain, chain[1:]):
        if fold(before["new"]) != fold(after["channel"]):
            return "renames not in sequence"
    if fold(chain[-1]["new"]) != folded:
        return "renames lead to another channel"
    return None


class ChannelRenames(InboundEvents):
    """Federates RENAME: the local observer, the ``rename``/``rename_refused`` events and the renames in bursts."""

    # -- keeping the state of a renamed channel under its new name -------------------------------
    def _rekey_channel(self, old: str, new: str) -> None:
        """What federation keeps under channel ``old`` (folded) moves to ``new``: its CRDT state (saved anew, the old
        row deleted), the proofs of its memberships, invites and statuses, and the joins sent for it."""
        if old == new:
            return
        chan = self.server.channels.get(new)
        uids = {self.uid(member) for member in chan.members} if chan is not None else set()
        members: list[Any] = [self.member_joins, self.member_invites, self.member_status, self.sent_joins]
        for store in members:  # kept for current memberships only
            for uid in uids:
                if (uid, old) in store:
                    store[(uid, new)] = store.pop((uid, old))
        others: list[Any] = [self.accepted_joins, self.invite_events]  # also users split away, pending invites
        for store in others:
            for key in [k for k in store if k[1] == old]:
                store[(key[0], new)] = store.pop(key)
        crdt = self.crdts.pop(old, None)
        if crdt is not None:
            self.crdts[new] = crdt
        self.states.dirty.update((old, new))  # persist(): the old row goes, the new one is written

    def _record_rename(self, old: str, new: str, event: dict[str, Any]) -> None:
        """Channel ``old`` (folded) is now ``new``, by ``event``: it joins the channel's chain of renames."""
        chain = self.channel_renames.pop(old, [])
        # Never a chain with a gap (receivers refuse it): one too large to keep ends it.
        chain = chain + [event] if len(P.canonical(event)) <= RENAME_EVENT_MAX else []
        if chain:
            self.channel_renames[new] = chain[-RENAME_CHAIN:]
        self._bound_renames()

    def _bound_renames(self) -> None:
        """Keep at most RENAMED_CHANNELS_MAX chains: those of channels gone go first, then the oldest."""
        if len(self.channel_renames) <= RENAMED_CHANNELS_MAX:
            return
        for folded in [f for f in self.channel_renames if f not in self.server.channels]:
            del self.channel_renames[folded]
        while len(self.channel_renames) > RENAMED_CHANNELS_MAX:
            self.channel_renames.popitem(last=False)

    def _apply_rename(self, chan: Channel, new: str, reason: str, source: str, event: dict[str, Any]) -> None:
        """Rename ``chan`` here as a local RENAME does (members told by the core) and move its federation state."""
        old_name, old = chan.name, chan.folded
        self.server.rename_channel(chan, new, reason, source)
        self._rekey_channel(old, chan.folded)
        self._record_rename(old, chan.folded, event)
        log.info("S2S {channel} renamed to {new} by {source}", channel=old_name, new=chan.name, source=source)

    def _undo_rename(self, chan: Channel, reason: str, source: str) -> dict[str, Any]:
        """Give ``chan`` back the name its latest rename took from it; returns that rename event."""
        current = chan.folded
        chain = self.channel_renames.pop(current)
        event = chain.pop()
        self.server.rename_channel(chan, event["channel"], reason, source)
        self._rekey_channel(current, chan.folded)
        if chain:
            self.channel_renames[chan.folded] = chain
        log.info("S2S rename of {old} to {new} undone: {reason}", old=event["channel"], new=event["new"],
                 reason=reason)
        return event

    # -- local renames ---------------------------------------------------------------------------
    def local_rename(self, user: User, chan: Channel, old_name: str, reason: str) -> None:
        """A local user renamed channel ``old_name`` to ``chan.name`` (the core renamed it already)."""
        if not self._local(user):
            return
        old, new = fold(old_name), chan.folded
        self._rekey_channel(old, new)
        fields = {"uid": self.uid(user), "channel": old_name, "new": chan.name, "reason": clip(reason),
                  **self._oper_field(user)}
        event = self._emit("rename", fields)
        if event is None:  # no link now: a signed stand-in, carried in bursts with the channel
            event = self._stand_in("rename", fields)
        self._record_rename(old, new, event)

    # -- peers' renames --------------------------------------------------------------------------
    def _new_name(self, ctx: EventContext, name: str) -> str:
        """The ``new`` name of a rename event about channel ``name``: a valid channel name of the same type."""
        new = P.get(ctx.ev, "new", str)
        if not valid_channel(new, self.server.config.channel_len) or new[0] != name[0]:
            raise ProtocolError("bad new channel name")
        return str(new)

    def _ev_rename(self, ctx: EventContext) -> bool:
        """A user of the origin renamed a channel (or, with ``undo``, the origin reverses its own rename)."""
        if "undo" in ctx.ev:
            return self._ev_rename_undo(ctx)
        actor = self._actor(ctx)
        if actor is None:
            return False
        name, chan = self._channel(ctx)
        new = self._new_name(ctx, name)
        reason = P.text(ctx.ev, "reason", REASON_MAX)
        if chan is None:
            return True  # not known here: nothing to rename (servers further on are told all the same)
        why = self._rename_refusal(ctx, actor, chan, new)
        if why is not None:  # refused here: its origin undoes it, so that no server keeps it alone
            self._emit("rename_refused", {"channel": name, "new": new, "rename": ctx.ev["sig"], "why": why},
                       to=ctx.origin)
            return False
        self._apply_rename(chan, new, reason, actor.hostmask, ctx.ev)
        return True

    def _rename_refusal(self, ctx: EventContext, actor: User, chan: Channel, new: str) -> Optional[str]:
        """Why a peer's rename of ``chan`` to ``new`` by ``actor`` is refused here (a key of REFUSALS, logged and
        counted), or ``None``: the renamer is not a channel operator here (and no server operator's override
        applies), the new name is another channel's here, or the channel was renamed too recently here, or peers
        renamed too many channels lately."""
        if mode_refusal(chan, actor) and not self._oper_override(ctx, actor, chan, f"renames it to {new}"):
            self._warn_rejected(ctx.link, "rename", "unauthorized: renamer is not a channel operator",
                                nick=actor.nick, channel=chan.name)
            return "not-operator"
        other = self.server.channels.get(fold(new))
        if other is not None and other is not chan:
            self._warn_rejected(ctx.link, "rename", "conflict: the new name is in use here", channel=chan.name,
                                new=new)
            return "in-use"
        too_soon = self.server.rename_too_soon(chan, RENAME_SLACK)  # the origin holds its renames to it too
        if too_soon is None and not self._peer_rename_budget():
            too_soon = "too many renames from peers"
        if too_soon is not None:
            self._warn_rejected(ctx.link, "rename", f"limit: {too_soon}", channel=chan.name, new=new)
            return "limit"
        return None

    def _ev_rename_undo(self, ctx: EventContext) -> bool:
        """The origin of a rename reverses it (a server refused it, :meth:`_ev_rename_refused`): applied where the
        channel's latest rename is that very event of that origin; elsewhere there is nothing to undo."""
        name, chan = self._channel(ctx)
        back = self._new_name(ctx, name)
        sig = P.get(ctx.ev, "undo", str)
        reason = P.text(ctx.ev, "reason", REASON_MAX)
        chain = self.channel_renames.get(chan.folded) if chan is not None else None
        if chan is None or not chain or chain[-1].get("sig") != sig:
            return True  # never applied here (refused here, or unknown): nothing to undo
        latest = chain[-1]
        if latest.get("origin") != ctx.origin or fold(latest["channel"]) != fold(back):
            self._warn_rejected(ctx.link, "rename undo", "forged: only a rename's origin may undo it",
                                channel=chan.name)
            return False
        other = self.server.channels.get(fold(back))
        if other is not None and other is not chan:
            log.warn("S2S rename of {old} to {new} not undone here: {old} was taken meanwhile", old=back,
                     new=chan.name)
            return True
        self._undo_rename(chan, reason, self._server_name(ctx.origin))
        return True

    def _ev_rename_refused(self, ctx: EventContext) -> bool:
        """A server refused one of our renames (the new name is taken there): rename the channel back here and
        flood the undo. Only believed for the latest rename of a channel here, made by this server."""
        if ctx.ev.get("to") != self.me:
            raise ProtocolError("rename_refused not routed")
        name, _old_chan = self._channel(ctx)
        new = self._new_name(ctx, name)
        sig = P.get(ctx.ev, "rename", str)
        why = ctx.ev.get("why", "in-use")
        if why not in REFUSALS:
            raise ProtocolError("bad rename refusal reason")
        chan = self.server.channels.get(fold(new))
        chain = self.channel_renames.get(chan.folded) if chan is not None else None
        if (chan is None or not chain or chain[-1].get("sig") != sig or chain[-1].get("origin") != self.me
                or fold(chain[-1]["channel"]) != fold(name)):
            self._warn_rejected(ctx.link, "rename refusal", "stale: not for the latest rename of ours here",
                                channel=name, new=new)
            return False
        latest = chain[-1]
        where = self._server_name(ctx.origin)
        if fold(name) in self.server.channels:
            log.warn("S2S rename of {old} to {new} refused by {server}, but {old} was taken here meanwhile: "
                     "not undone", old=name, new=new, server=where)
            return True
        reason = REFUSALS[why].format(new=chan.name, old=name, server=where)
        self._undo_rename(chan, reason, self.server.name)
        self._emit("rename", {"channel": latest["new"], "new": chan.name, "reason": clip(reason), "undo": sig})
        return True

    def _peer_rename_budget(self) -> bool:
        """Whether one more peer's rename may be applied now (PEER_RENAMES_BURST, then PEER_RENAMES_PER_MINUTE)."""
        bucket = getattr(self, "_rename_bucket", None)
        now = self.clock.seconds()
        if bucket is None:
            bucket = self._rename_bucket = P.TokenBucket(PEER_RENAMES_PER_MINUTE / 60, now, PEER_RENAMES_BURST)
        return bucket.take(now)

    def _server_name(self, origin: str) -> str:
        info = self.servers.get(origin)
        return info.name if info is not None else P.short_id(origin)

    # -- bursts ----------------------------------------------------------------------------------
    def _rename_chain(self, chan: Channel) -> list[dict[str, Any]]:
        """The signed renames that gave ``chan`` its name (for its burst entry; empty when never renamed)."""
        return list(self.channel_renames.get(chan.folded, ()))

    def _apply_burst_renames(self, link: PeerLink, channels: dict[str, dict[str, Any]]) -> int:
        """The renames of a burst's channels (``channels``: folded name -> entry), before the channels are applied:
        each channel's chain is kept and a rename missed here applied (:meth:`_burst_renames`); then the entries of
        channels the peer still lists under a name that was renamed here are left out (the peer missed that rename:
        it applies it from our burst, and bursts the channel again under its new name). Returns how many renames
        this server missed and applied now (the peer's view of those channels is then stale: it is sent ours)."""
        missed = 0
        for entry in channels.values():
            try:
                missed += self._burst_renames(link, entry)
            except Exception:
                log.failure("S2S renames of burst channel {channel} from {peer} not applied", channel=entry["name"],
                            peer=link.peer_id)
        renamed_away: dict[str, tuple[Channel, dict[str, Any]]] = {}  # former name -> (channel, rename)
        for current, chain in self.channel_renames.items():
            chan = self.server.channels.get(current)
            if chan is not None:
                for event in chain:
                    renamed_away[fold(event["channel"])] = (chan, event)
        for folded in [f for f in channels if f in renamed_away and f not in self.server.channels]:
            chan, event = renamed_away[folded]
            entry = channels[folded]
            if isinstance(entry.get("created"), int) and entry["created"] > self._rename_time(event) + CREATION_SKEW:
                continue  # made after the rename: another channel of that name
            del channels[folded]
            log.info("S2S burst of {peer} lists {old}, renamed {new} here: left out (the peer learns the rename)",
                     peer=link.peer_id, old=entry["name"], new=chan.name)
        return missed

    @staticmethod
    def _rename_time(event: dict[str, Any]) -> float:
        """When a rename happened (seconds, by its origin's hybrid clock)."""
        return hlc_order(event)[0] / 1000

    def _burst_renames(self, link: PeerLink, entry: dict[str, Any]) -> int:
        """The renames a burst lists with a channel (``full`` links only): kept, so that proofs naming a former
        name are accepted; and if this server missed the latest of them (a split) and still has that old channel,
        while the new name is free here, the rename is applied now, before the channel's entry, if its renamer
        was an operator of the old channel here (kept across the split) and the old channel is not newer than the
        rename (a channel made later under the old name is another channel). Returns 1 if it applied one, else 0."""
        chain = entry.get("renames") or []
        if not chain or link.trust != "full":
            return 0
        name = entry["name"]
        folded = fold(name)
        cfg = self.server.config
        for event in chain:
            problem = rename_event_problem(event, cfg.channel_len)
            if problem is not None:
                self._warn_rejected(link, "burst renames", f"forged: {problem}", channel=name)
                return 0
        problem = chain_problem(chain, folded)
        if problem is not None:
            self._warn_rejected(link, "burst renames", f"malformed: {problem}", channel=name)
            return 0
        missed = 0
        if folded not in self.server.channels:
            missed = self._apply_missed_rename(link, name, chain)
        kept = self.channel_renames.get(folded, [])
        known = {event.get("sig") for event in kept}
        merged = [event for event in chain if event.get("sig") not in known] + kept  # older ones first
        self.channel_renames[folded] = merged[-RENAME_CHAIN:]
        self.channel_renames.move_to_end(folded)
        self._bound_renames()
        return missed

    def _apply_missed_rename(self, link: PeerLink, name: str, chain: list[dict[str, Any]]) -> int:
        """A burst lists channel ``name``, unknown here, with the renames that led to it: if this server still has
        a channel under one of its former names (the latest such), it missed the renames since; that channel takes
        the name now, if the rename away from that name may be applied (:meth:`_missed_rename_allowed`)."""
        for event in reversed(chain):
            old = self.server.channels.get(fold(event["channel"]))
            if old is None:
                continue
            if not self._peer_rename_budget():
                log.warn("S2S missed rename of {old} to {new} (burst of {peer}) not applied: too many renames from "
                         "peers", old=old.name, new=name, peer=link.peer_id)
                return 0
            if event["origin"] == self.me or not self._missed_rename_allowed(old, event):
                log.info("S2S missed rename of {old} to {new} (burst of {peer}) not applied: {old} is newer here, or "
                         "its renamer is not known as an operator of it here", old=old.name, new=name,
                         peer=link.peer_id)
                return 0
            actor = self.user_by_uid(event["uid"])
            self._apply_rename(old, name, clip(str(event.get("reason", ""))),
                               actor.hostmask if actor is not None else self._server_name(event["origin"]), event)
            return 1
        return 0

    def _missed_rename_allowed(self, chan: Channel, event: dict[str, Any]) -> bool:
        """Whether a rename of ``chan`` this server missed may be applied: ``chan`` existed then (created no later
        than the rename, allowing for clock skew), and the renamer is an operator of it here (a member now, or
        before the split, as the accepted join of its membership remembers), or a server operator."""
        if chan.created > self._rename_time(event) + CREATION_SKEW:
            return False
        if event.get("oper") is True:
            return True
        actor = self.user_by_uid(event["uid"])
        if actor is not None and chan.is_op(actor):
            return True
        accepted = self.accepted_joins.get((event["uid"], chan.folded))
        return accepted is not None and bool(accepted[1] & OP)
