"""Peers' events coming in: each ``_ev_<kind>`` checks one event against the local view (with the link's
trust as the actor's authority) and applies it to the model; ``True`` means accepted (and forwarded)."""
from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from freeq.core.metadata import changes_problem
from freeq.irc.names import fold, valid_channel, valid_nick
from freeq.irc.parser import build, build_text
from freeq.s2s import protocol as P
from freeq.s2s.bans import receive_ban, receive_unban
from freeq.s2s.base import ORIGIN_TAG
from freeq.s2s.outbound import LocalObservers
from freeq.s2s.peers import EventContext
from freeq.s2s.proofs import STATUS_BITS
from freeq.s2s.protocol import ProtocolError
from freeq.s2s.state import ChannelCRDT, materialize, merge_ops
from freeq.state.channel import OP, VOICE, Channel
from freeq.state.multiline import body_problem
from freeq.state.redaction import ACTION_TAGS
from freeq.state.rules import (
    NOT_ON_CHANNEL, channel_history_key, consume_invite, dm_history_key, grant_invite, invite_refusal, is_did_op,
    join_refusal, kick_refusal, mode_refusal, send_refusal, status_recipients, status_target, topic_refusal,
)
from freeq.state.user import User

log = Logger()

#: Why a peer's JOIN is refused here, by the mode that refuses it (freeq.state.rules.join_refusal).
_JOIN_REASON = {"k": "+k (bad key)", "l": "+l (channel full)", "b": "+b (banned)", "i": "+i (not invited)"}

#: Rejection reasons for freeq.state.rules.send_refusal's reasons.
_SEND_REASON = {"n": "sender is not on the channel (+n)", "m": "channel is moderated (+m)", "b": "sender is banned"}

#: How far past our clock a peer's read marker may be (clock skew between servers), in ms.
MARKER_SKEW_MS = 120_000

_MSGID_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_")


class InboundEvents(LocalObservers):
    """Applies the live events of peers (users, channels, messages, server-operator actions)."""

    def _actor(self, ctx: EventContext, key: str = "uid") -> Optional[User]:
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

    def _ev_user(self, ctx: EventContext) -> bool:
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

    def _ev_nick(self, ctx: EventContext) -> bool:
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

    def _ev_quit(self, ctx: EventContext) -> bool:
        user = self._actor(ctx)
        if user is None:
            return False
        self._remove_remote_user(user, P.text(ctx.ev, "reason", 400))
        return True

    # -- channels -------------------------------------------------------------------------------
    def _channel(self, ctx: EventContext) -> tuple[str, Optional[Channel]]:
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
        server.after_join(user, chan)  # hook point (freeq.core.server): e.g. the joiner's metadata to subscribers

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

    def _ev_join(self, ctx: EventContext) -> bool:
        user = self._actor(ctx)
        if user is None:
            return False
        name, chan = self._channel(ctx)
        status = P.get(ctx.ev, "status", str)
        if status not in STATUS_BITS:
            raise ProtocolError("bad status")
        key = P.get(ctx.ev, "key", str, optional=True)
        ops = ctx.ev.get("ops") or []
        if not isinstance(ops, list) or len(ops) > 50:
            raise ProtocolError("bad ops")
        if chan is not None and user in chan.members:
            self._remember_join(self.uid(user), chan.folded, ctx.ev, chan.members[user])  # its latest join
            return True
        bits = STATUS_BITS[status]
        uid = self.uid(user)
        allowed, creation = self._creation_ops(ctx, user, uid, ops)
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
                won = self._creation_race(chan, uid, creation)
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
        consume_invite(chan, user)
        self._add_member(chan, user, bits, source=self.server.name)
        self._remember_join(uid, chan.folded, ctx.ev, bits)
        self._admitting_invite(uid, chan, user)
        if allowed:
            self.server.channel_changed(chan)
        return True

    def _creation_ops(self, ctx: EventContext, user: User, uid: str, ops: list[Any]) -> tuple[
            list[Any], Optional[list[Any]]]:
        """The creation ops of a join (modes, founder, the creator) that are believed: only those for the
        joiner's own identity; and its ``created`` op, if any."""
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
        return allowed, creation

    def _creation_race(self, chan: Channel, uid: str, creation: list[Any]) -> bool:
        """Both sides created ``chan`` while unaware of each other: the earlier creation wins everywhere
        (first-writer-wins "creator"), and the later creator loses its creation op. Whether ``uid``'s won."""
        crdt = self._crdt(chan)
        before = crdt.creator
        crdt.apply(creation, self.hlc)
        won = crdt.creator is not None and crdt.creator[1] == uid and before != crdt.creator
        if won and before is not None:
            self._demote_creator(chan, before[1])
        return won

    def _demote_creator(self, chan: Channel, creator_uid: str) -> None:
        """Our creator lost a creation race: it keeps membership but not the operator status of creating."""
        user = self.user_by_uid(creator_uid)
        if user is None or user not in chan.members or not chan.members[user] & OP:
            return
        if is_did_op(chan, user):
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

    def _ev_part(self, ctx: EventContext) -> bool:
        user = self._actor(ctx)
        if user is None:
            return False
        _name, chan = self._channel(ctx)
        reason = P.text(ctx.ev, "reason", 400)
        if chan is None or user not in chan.members:
            return True
        self._remote_part(user, chan, reason)
        return True

    def _ev_refuse(self, ctx: EventContext) -> bool:
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

    def _oper_override(self, ctx: EventContext, actor: User, chan: Channel, what: str) -> bool:
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

    def _ev_kill(self, ctx: EventContext) -> bool:
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

    def _ev_ban(self, ctx: EventContext) -> bool:
        """An operator of the origin set a K-line or D-line (routed here; ``full`` links only: the trust check)."""
        return receive_ban(self, ctx)

    def _ev_unban(self, ctx: EventContext) -> bool:
        """An operator of the origin lifted a K-line or D-line (routed here; ``full`` links only)."""
        return receive_unban(self, ctx)

    def _ev_marker(self, ctx: EventContext) -> bool:
        """A user of the origin moved its account's read marker (routed here: the account has a user here too).
        Only a server hosting a user of the account may move its marker: the actor must be the origin's,
        logged in, and its account claim believed (a ``full`` link: :meth:`_has_did_authority`); the marker then
        only moves forward (freeq.core.markers)."""
        actor = self._actor(ctx)
        if actor is None:
            return False
        if ctx.ev.get("to") != self.me:
            raise ProtocolError("marker event not routed")
        did = actor.account
        if not did:
            self._warn_rejected(ctx.link, "marker", "unauthorized: the user has no account", nick=actor.nick)
            return False
        if not self._has_did_authority(actor):
            # A relay or readonly peer's account claims are shown, never obeyed: it may not move the account's
            # read markers here (they are the account's, across all its devices).
            self._warn_rejected(ctx.link, "marker", "unauthorized: account claim over a link not trusted full",
                                nick=actor.nick)
            return False
        target = P.get(ctx.ev, "target", str)
        cfg = self.server.config
        if target != fold(target) or not (valid_channel(target, cfg.channel_len) if target[:1] in "#&"
                                          else valid_nick(target, cfg.nick_len)):
            raise ProtocolError("bad marker target")
        read_ms = P.get(ctx.ev, "read_ms", int)
        if not 0 <= read_ms <= int(self.clock.seconds() * 1000) + MARKER_SKEW_MS:
            raise ProtocolError("marker time out of range")
        self.server.apply_remote_marker(did, target, read_ms)
        return True

    def _ev_metadata(self, ctx: EventContext) -> bool:
        """draft/metadata-2 keys changed on the origin: without ``channel`` the actor's own (only its home server,
        the origin, may say so: :meth:`_actor`); with ``channel`` that channel's, only over a ``full`` link and
        from an operator of the channel here (freeq.state.rules.mode_refusal, or a server operator's override).
        A user's may carry ``account``, its account's own values (freeq.core.metadata): applied to the account
        here only when the account claim is believed (a ``full`` link: :meth:`_has_did_authority`)."""
        actor = self._actor(ctx)
        if actor is None:
            return False
        changes = ctx.ev.get("keys")
        problem = changes_problem(changes)
        if problem is not None:
            raise ProtocolError(f"bad metadata: {problem}")
        if "channel" not in ctx.ev:
            account = ctx.ev.get("account")
            if account is not None and (changes_problem(account) is not None or not set(account) <= set(changes or ())):
                raise ProtocolError("bad metadata: account values")
            self.server.apply_remote_metadata(actor, None, changes)
            if account is not None:
                if actor.account is None or not self._has_did_authority(actor):
                    self._warn_rejected(ctx.link, "metadata", "unauthorized: account metadata without a believed "
                                        "account", nick=actor.nick)
                else:
                    self.server.apply_account_metadata(actor.account, account)
            return True
        _name, chan = self._channel(ctx)
        if chan is None:
            return True  # no such channel here: nothing to keep
        if ctx.link.trust != "full":
            self._warn_rejected(ctx.link, "metadata", "unauthorized: channel metadata over a relay link",
                                nick=actor.nick, channel=chan.name)
            return False
        if mode_refusal(chan, actor) and not self._oper_override(ctx, actor, chan, "sets metadata"):
            self._warn_rejected(ctx.link, "metadata", "unauthorized: setter is not a channel operator",
                                nick=actor.nick, channel=chan.name)
            return False
        self.server.apply_remote_metadata(actor, chan, changes)
        return True

    def _ev_kick(self, ctx: EventContext) -> bool:
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

    def _ev_topic(self, ctx: EventContext) -> bool:
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

    def _ev_mode(self, ctx: EventContext) -> bool:
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

    def _ev_invite(self, ctx: EventContext) -> bool:
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
    def _ev_msg(self, ctx: EventContext) -> bool:
        actor = self._actor(ctx)
        if actor is None:
            return False
        ev = ctx.ev
        command = P.get(ev, "cmd", str)
        if command not in ("PRIVMSG", "NOTICE", "TAGMSG"):
            raise ProtocolError("bad command")
        if ev.get("multiline") is True and command != "TAGMSG":  # draft/multiline: up to max-bytes
            text = P.get(ev, "text", str)
            problem = body_problem(text)
            if problem is not None:
                raise ProtocolError(f"text: {problem}")
            send = self.server.deliver_multiline
        else:
            text = P.text(ev, "text", 4096) if command != "TAGMSG" else ""
            send = self.server.deliver
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
            if not ACTION_TAGS.isdisjoint(tags) and server.apply_remote_action(  # edits, deletes, reactions
                    actor, command, dm_history_key("PRIVMSG", actor, target), None, target.nick, text, tags, msgid,
                    server.group(target), self.clock.seconds()):
                return True
            send(actor, command, target.nick, text, tags, server.group(target), msgid=msgid)
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
        if not ACTION_TAGS.isdisjoint(tags) and server.apply_remote_action(  # edits, deletes, reactions: same rules
                actor, command, channel_history_key(chan, "PRIVMSG", status_min), chan, display, text, tags, msgid,
                local, self.clock.seconds()):
            return True
        send(actor, command, display, text, tags, local, msgid=msgid)
        key = channel_history_key(chan, command, status_min)
        if server.store is not None and key is not None:
            server.store.append_message(key, msgid, self.clock.seconds(), command, actor.hostmask,
                                        actor.account, chan.name, text, tags)
        return True
