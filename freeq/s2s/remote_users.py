"""Users of other servers as seen here: their records, nick collisions, renames and departures."""
from __future__ import annotations

import hashlib
from typing import Any, Optional

from twisted.logger import Logger

from freeq.auth.did import valid_handle
from freeq.irc.names import fold, valid_nick
from freeq.irc.parser import build, build_text
from freeq.s2s import protocol as P
from freeq.s2s.peers import RemoteSession, discard_bytes
from freeq.s2s.proof_keeping import ProofKeeping
from freeq.s2s.protocol import ProtocolError
from freeq.state.user import User

log = Logger()


class RemoteUsers(ProofKeeping):
    """Applies the user records of other servers to the local model (as :class:`~freeq.state.user.User` objects
    whose ``conn`` is a :class:`~freeq.s2s.peers.RemoteSession`), and resolves nick collisions."""

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
            user = User(RemoteSession(rec["origin"], rec["uid"]), discard_bytes, "", self.clock.seconds(), info.name)
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
            setname = build_text(user.hostmask, "SETNAME", user.realname)
            server.broadcast(server.co_members(user), setname, cap="setname")
            server.monitor_extended(user, setname, "setname")
        if rec["away"] != user.away:
            user.away = rec["away"]
            data = (build_text(user.hostmask, "AWAY", user.away) if user.away is not None
                    else build(user.hostmask, "AWAY"))
            server.broadcast(server.co_members(user), data, cap="away-notify")
            server.monitor_extended(user, data, "away-notify")
        user.handle = rec["handle"]
        user.modes = set(rec["modes"])
        if rec["account"] != user.account:
            server.set_account(user, rec["account"])
            if self._has_did_authority(user):
                for chan in list(user.channels.values()):
                    server.apply_did_status(chan, user)

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
