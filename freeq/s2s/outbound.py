"""Local changes going out: the ``local_*`` observers the core calls through ``IRCServer.s2s_notify``, and
the server-operator actions beyond this server (overrides on shared channels, KILL of remote users)."""
from __future__ import annotations

from typing import Any, Iterable, Optional

from twisted.logger import Logger

from freeq.irc.names import fold
from freeq.s2s import protocol as P
from freeq.s2s.bans import ban_fields, send_ban_event
from freeq.s2s.base import ORIGIN_TAG
from freeq.s2s.peers import RemoteSession
from freeq.s2s.proofs import PROOF_MAX, STATUS_PROOF_MAX, status_str
from freeq.s2s.remote_users import RemoteUsers
from freeq.s2s.state import ChannelCRDT
from freeq.state.channel import Channel
from freeq.state.links import LinkControl
from freeq.state.user import User

log = Logger()


class LocalObservers(RemoteUsers):
    """Turns local changes into signed events for the federation (and keeps their proofs)."""

    def _local(self, user: Optional[User]) -> bool:
        return user is not None and not isinstance(user.conn, RemoteSession)

    @staticmethod
    def _oper_field(user: User) -> dict[str, Any]:
        """``{"oper": True}`` for a server operator's channel events (peers trusting us ``full`` then apply them
        even where the operator is not a channel operator), else nothing."""
        return {"oper": True} if user.oper_holds("override") else {}

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
                                  "status": status_str(chan.members[user]), "ops": ops}
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

    def local_multiline_message(self, user: User, command: str, target: str, chan: Channel, text: str,
                                tags: dict[str, str], msgid: str) -> None:
        """A local user's ``draft/multiline`` message to a channel: one ``msg`` event whose ``text`` is the whole
        body (lines joined by ``\\n``), flagged ``multiline`` (freeq.core.multiline)."""
        if not self._local(user) or not self.links:
            return
        self._emit("msg", {"uid": self.uid(user), "cmd": command, "target": target, "text": text, "multiline": True,
                           "tags": {k: v for k, v in tags.items() if k != ORIGIN_TAG}, "msgid": msgid})

    def local_multiline_dm(self, user: User, command: str, other: User, text: str, tags: dict[str, str],
                           msgid: str) -> None:
        """A local user's ``draft/multiline`` private message: as :meth:`local_dm`, flagged ``multiline``."""
        if not self._local(user) or not isinstance(other.conn, RemoteSession):
            return
        self._emit("msg", {"uid": self.uid(user), "cmd": command, "target": other.conn.uid, "text": text,
                           "multiline": True, "tags": {k: v for k, v in tags.items() if k != ORIGIN_TAG},
                           "msgid": msgid}, to=other.conn.origin)

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

    def local_ban(self, ban: Any) -> None:
        """An operator here set a K-line or D-line (a freeq.state.bans.Ban): a ``ban`` event to the servers that
        apply our operators' actions over links we trust ``full`` (freeq.s2s.bans)."""
        send_ban_event(self, "ban", ban_fields(ban))

    def local_unban(self, kind: str, mask: str) -> None:
        """An operator here lifted the ban on ``(kind, mask)``: an ``unban`` event to the same servers."""
        send_ban_event(self, "unban", {"kind": kind, "mask": mask})

    def local_marker(self, user: User, target: str, read_ms: int) -> None:
        """A local account's read marker of ``target`` (folded) moved to ``read_ms``: a ``marker`` event routed to
        each server where the account also has a user (never flooded: where others read is nobody else's
        business). Finding them looks at every remote user, bounded by ``max_remote_users`` per link."""
        did = user.account
        if not self._local(user) or did is None:
            return
        primary = self.server.primary_session(did)
        if primary is None or primary not in self.local_uid:
            return  # not announced to the federation (yet)
        homes = {u.conn.origin for u in self.remote.values() if u.account == did}
        if not homes:
            return
        fields = {"uid": self.uid(primary), "target": target, "read_ms": int(read_ms)}
        for origin in sorted(homes):
            self._emit("marker", fields, to=origin)

    def local_metadata(self, by: User, target: Any, changes: dict[str, Optional[str]],
                       account: Optional[dict[str, Optional[str]]] = None) -> None:
        """``by`` changed draft/metadata-2 keys (``changes``: key -> value, ``None`` for unset) of ``target``: itself
        (its identity's, shown by its nick's connection) or a channel it operates. A ``metadata`` event,
        flooded; a user not announced yet (still registering) is sent later (freeq.core.metadata). ``account``:
        a logged-in user changed its account's own values (no profile defaults): carried for the account's
        other servers (``account`` field)."""
        if not self._local(by) or not self.links:
            return
        if isinstance(target, Channel):
            self._emit("metadata", {"uid": self.uid(by), "channel": target.name, "keys": changes,
                                    **self._oper_field(by)})
            return
        primary = self.server.primary_session(target.account) if target.account else target
        if primary is None or primary not in self.local_uid:
            return  # not announced to the federation (yet)
        fields: dict[str, Any] = {"uid": self.uid(primary), "keys": changes}
        if account and target.account:
            fields["account"] = account
        self._emit("metadata", fields)

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
