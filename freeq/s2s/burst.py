"""Bursts: this server's whole view, sent when a link opens (and again when the federation changes shape), and
a peer's burst, received in parts and applied when complete (servers, then users, then channels)."""
from __future__ import annotations

import json
from typing import Any, Optional

from twisted.logger import Logger

from freeq.core.metadata import changes_problem
from freeq.irc.names import fold, valid_channel
from freeq.s2s import protocol as P
from freeq.s2s.bans import apply_burst_bans, burst_ban_frames, collect_bans  # network bans (issue #13)
from freeq.s2s.base import SPLIT_REASON
from freeq.s2s.rename import RENAME_CHAIN, ChannelRenames
from freeq.s2s.peers import BurstParts, PeerLink, ServerInfo
from freeq.s2s.proofs import STATUS_BITS, granted_bits, hlc_order, newer, proven_record, status_str
from freeq.s2s.protocol import ProtocolError
from freeq.s2s.state import merge_ops
from freeq.state.channel import OP, VOICE, Channel
from freeq.state.rules import consume_invite
from freeq.state.user import User

log = Logger()

#: Channels with no member here that bursts may create (state only: founder, bans, topic of empty channels).
MAX_MEMBERLESS_CHANNELS = 10000


def chunks(items: list[Any], budget: int = 40000) -> list[list[Any]]:
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


def member_entry(uid: str, bits: int, proof: Optional[dict[str, Any]], invite: Optional[dict[str, Any]],
                 status: Optional[dict[str, Any]]) -> list[Any]:
    """A burst member entry: ``[uid, status, join event, invite event, status proof]`` (the origin-signed join,
    when known; the signed invite that admitted the member, only when the membership relied on one, else null;
    the signed ``mode`` event that granted its status, only when it has status; trailing nulls are left out,
    and without a join event nothing follows the status)."""
    if proof is None:
        return [uid, status_str(bits)]
    entry = [uid, status_str(bits), proof, invite, status if bits else None]
    while entry[-1] is None:
        entry.pop()
    return entry


def burst_members(items: list[Any], seen: set[str]) -> dict[str, tuple[int, Any, Any, Any]]:
    """The member entries of a bursted channel (see :func:`member_entry`) of the users in ``seen`` (the users
    the burst brought): uid -> (status bits, join event, invite event, status proof), missing ones ``None``.
    Raises :class:`ProtocolError` on a malformed entry (of any user)."""
    members: dict[str, tuple[int, Any, Any, Any]] = {}
    for item in items:
        if (not isinstance(item, list) or len(item) not in (2, 3, 4, 5) or not isinstance(item[0], str)
                or item[1] not in STATUS_BITS):
            raise ProtocolError("bad member")
        if item[0] in seen:
            members[item[0]] = (STATUS_BITS[item[1]], item[2] if len(item) > 2 else None,
                                item[3] if len(item) > 3 else None, item[4] if len(item) > 4 else None)
    return members


def checked_server_entry(entry: Any) -> str:
    """The server id of a burst's server entry (``{id, name, epoch, hops, opers}``), once it is well-formed;
    raises :class:`ProtocolError` if not."""
    if not isinstance(entry, dict):
        raise ProtocolError("bad server entry")
    sid, name, epoch, hops = entry.get("id"), entry.get("name"), entry.get("epoch"), entry.get("hops")
    if (not P.is_endpoint_id(sid) or not isinstance(name, str) or not isinstance(epoch, int)
            or not isinstance(hops, int) or not 0 <= hops < 1000 or len(name) > 63
            or any(c in name for c in " \r\n\x00!@*")):
        raise ProtocolError("bad server entry")
    return str(sid)


def collect_part(acc: BurstParts, msg: dict[str, Any], channel_len: int) -> bool:
    """Add one ``burst`` frame to the burst being received (``True``: it was the ``end``, the burst is
    complete). Raises :class:`ProtocolError` on a malformed part or one over the limits of a burst."""
    part = msg.get("part")
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
        _collect_channel(acc, msg, channel_len)
    elif part == "metadata":
        entries = P.get(msg, "users", list)
        if len(entries) > 1000 or len(acc.metadata) + len(entries) > 500000:
            raise ProtocolError("too many metadata entries")
        acc.metadata.extend(entries)
    elif part == "bans":
        collect_bans(acc, msg)
    elif part == "end":
        return True
    else:
        raise ProtocolError("unknown burst part")
    return False


def _collect_channel(acc: BurstParts, msg: dict[str, Any], channel_len: int) -> None:
    """A ``channel`` part: its state ops and members join those of earlier parts for that channel."""
    name = P.get(msg, "name", str)
    if not valid_channel(name, channel_len):
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
    renames = msg.get("renames")  # the signed renames that gave the channel its name (freeq.s2s.rename)
    if renames is not None:
        if not isinstance(renames, list) or len(entry.get("renames", ())) + len(renames) > RENAME_CHAIN:
            raise ProtocolError("bad renames")
        entry.setdefault("renames", []).extend(renames)


class BurstExchange(ChannelRenames):
    """Sends and applies bursts."""

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
                if nick_proof is not None and newer(proof, nick_proof) is proof:
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
        for chunk in chunks(records):
            self._send(link, {"type": "burst", "part": "users", "users": chunk})
        for chunk in chunks(self._burst_metadata(included)):
            self._send(link, {"type": "burst", "part": "metadata", "users": chunk})
        for chan in list(self.server.channels.values()):
            crdt = self._crdt(chan)
            crdt.capture(chan, self.hlc)  # local changes made without a hook (plugins, tools) are not lost
            members = [self._member_entry(u, st, chan) for u, st in chan.members.items() if u in included]
            if not members and crdt.is_trivial():
                continue
            renames = self._rename_chain(chan)
            if renames:  # first: the receiver checks the proofs below against the former names
                self._send(link, {"type": "burst", "part": "channel", "name": chan.name, "created": int(chan.created),
                                  "renames": renames})
            for key, chunk in [("ops", c) for c in chunks(crdt.dump())] + [("members", c) for c in chunks(members)]:
                self._send(link, {"type": "burst", "part": "channel", "name": chan.name, "created": int(chan.created),
                                  key: chunk})
        for frame in burst_ban_frames(self, link, {s["name"] for s in servers}):  # over a full link only
            self._send(link, frame)
        self._send(link, {"type": "burst", "part": "end"})

    def _burst_metadata(self, included: set[User]) -> list[Any]:
        """``[uid, {key: value}]`` for each of our own users in the burst with draft/metadata-2 values (a peer
        takes these from their home server only, as it takes their records; other servers' users' metadata
        and channels' are not carried: docs/federation.md)."""
        out: list[Any] = []
        for user in included:
            if not self.is_remote(user):
                values = self.server.user_metadata(user)
                if values:
                    out.append([self.uid(user), values])
        return out

    def _apply_burst_metadata(self, link: PeerLink, entries: list[Any]) -> None:
        """The metadata part of a burst: each entry replaces what is shown of a user of the peer itself."""
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str):
                self._warn_rejected(link, "burst metadata", "malformed: bad entry")
                continue
            uid, values = entry
            user = self.remote.get(uid)
            if user is None or user.conn.origin != link.peer_id:
                self._warn_rejected(link, "burst metadata", "forged: not a user of the peer itself", uid=uid[:40])
                continue
            problem = changes_problem(values)
            if problem is not None:
                self._warn_rejected(link, "burst metadata", f"malformed: {problem}", uid=uid)
                continue
            shown = self.server.user_metadata(user)
            changes: dict[str, Optional[str]] = {key: None for key in shown if key not in values}
            changes.update(values)
            self.server.apply_remote_metadata(user, None, changes)

    def _member_entry(self, user: User, bits: int, chan: Channel) -> list[Any]:
        """The burst member entry (:func:`member_entry`) of ``user``, a member of ``chan`` with status ``bits``."""
        uid = self.uid(user)
        key = (uid, chan.folded)
        proof = self.member_joins.get(key) if self.is_remote(user) else self._local_proof(user, chan)
        return member_entry(uid, bits, proof, self.member_invites.get(key), self.member_status.get(key))

    def _reburst(self, except_link: Optional[int] = None) -> None:
        for link in self.open_links():
            if link.link_id != except_link:
                self._send_burst(link)

    def _on_burst(self, link: PeerLink, msg: dict[str, Any]) -> None:
        acc = link.burst
        if acc is None:
            acc = link.burst = BurstParts()
        acc.frames += 1
        if acc.frames > 200000:
            self._close(link, "burst too large")
            return
        if collect_part(acc, msg, self.server.config.channel_len):
            link.burst = None
            self._apply_burst(link, acc)

    def _apply_burst(self, link: PeerLink, acc: BurstParts) -> None:
        """A complete burst from ``link``: its servers (loops refused before anything changes), then its users
        (the complete set of users behind this link), then its channels; the other links then hear of it."""
        if link.trust == "readonly":
            log.info("S2S burst from readonly peer {peer} ignored", peer=link.peer_id)
            return
        burst_servers = self._burst_servers(link, acc.servers)
        if burst_servers is None:
            return
        self._adopt_servers(link, burst_servers, acc.marks)
        records, proofs = self._proven_users(link, acc.users, burst_servers)
        seen = {rec["uid"] for rec in records}
        self._drop_users_gone(link, seen)
        self._add_burst_users(link, records, proofs, seen)
        missed = self._apply_burst_renames(link, acc.channels)  # renames first (freeq.s2s.rename)
        self._apply_burst_channels(link, acc.channels, seen)
        self._apply_burst_metadata(link, acc.metadata)
        apply_burst_bans(self, link, acc.bans, burst_servers)  # K-/D-lines of its servers (freeq.s2s.bans)
        self._count("bursts")
        self._reburst(except_link=link.link_id)
        if missed:  # the peer's burst listed channels under names they no longer have: it hears the new ones
            self._send_burst(link)

    def _burst_servers(self, link: PeerLink, entries: list[Any]) -> Optional[dict[str, dict[str, Any]]]:
        """The servers a burst over ``link`` lists (id -> entry, without this one), or ``None`` once the link
        is closed because one of them is reachable through another link already (a loop)."""
        burst_servers: dict[str, dict[str, Any]] = {}
        for entry in entries:
            sid = checked_server_entry(entry)
            if sid == self.me:
                continue
            known = self.servers.get(sid)
            if known is not None and known.link_id != link.link_id:
                via = self.links.get(known.link_id)
                log.warn("S2S link to {peer} closed: loop ({server} is already reachable via {via})",
                         peer=link.peer_id, server=sid, via=via.peer_id if via else "?")
                self._close(link, "loop: server already linked")
                return None
            burst_servers[sid] = entry
        if link.peer_id not in burst_servers:
            raise ProtocolError("burst does not list the peer itself")
        return burst_servers

    def _adopt_servers(self, link: PeerLink, burst_servers: dict[str, dict[str, Any]], marks: list[Any]) -> None:
        """The servers behind ``link`` are now those of its burst, and their sequence marks are recorded."""
        lost = [sid for sid, info in self.servers.items() if info.link_id == link.link_id and sid not in burst_servers]
        for sid, entry in burst_servers.items():
            old = self.servers.get(sid)
            self.servers[sid] = ServerInfo(sid, entry["name"], entry["epoch"], link.link_id, entry["hops"] + 1,
                                           opers=entry.get("opers") is True)
            if old is not None and old.epoch != entry["epoch"]:
                log.info("S2S server {server} restarted (epoch {epoch})", server=sid, epoch=entry["epoch"])
        for sid in lost:
            del self.servers[sid]
        for origin, stream, epoch, seq in marks:
            if origin in burst_servers:
                self.marks.record(origin, stream, epoch, seq)

    def _proven_users(self, link: PeerLink, raws: list[Any], burst_servers: dict[str, dict[str, Any]]) -> tuple[
            list[dict[str, Any]], dict[str, tuple[Optional[dict[str, Any]], Optional[dict[str, Any]]]]]:
        """The user records of a burst that are well-formed, of a server behind ``link`` and proven (see
        :meth:`_prove_user`), with the proofs to keep for each (uid -> (user event, nick event)); the rest
        is rejected (logged)."""
        records: list[dict[str, Any]] = []
        proofs: dict[str, tuple[Optional[dict[str, Any]], Optional[dict[str, Any]]]] = {}
        for raw in raws:
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
        return records, proofs

    def _drop_users_gone(self, link: PeerLink, seen: set[str]) -> None:
        """Users behind ``link`` that its burst no longer lists quit (first: their nicks and places are free)."""
        for uid, user in list(self.remote.items()):
            route = self._route_of_user(user)
            if (route is None or route == link.link_id) and uid not in seen:
                self._remove_remote_user(user, SPLIT_REASON, split=True)

    def _add_burst_users(self, link: PeerLink, records: list[dict[str, Any]],
                         proofs: dict[str, tuple[Optional[dict[str, Any]], Optional[dict[str, Any]]]],
                         seen: set[str]) -> None:
        """Apply the proven user records of a burst, up to the cap of remote users behind one link (users known
        here already are kept; the others over the cap are refused and taken out of ``seen``)."""
        count = self._users_behind(link.link_id)
        over = 0
        for rec in records:
            if rec["uid"] not in self.remote:
                if count >= self.max_remote_users:
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

    def _apply_burst_channels(self, link: PeerLink, channels: dict[str, dict[str, Any]], seen: set[str]) -> None:
        """The channels of a burst: their state (``full`` trust) and the memberships of the users behind ``link``;
        its members in a channel the burst does not list leave it."""
        for entry in channels.values():
            try:
                self._apply_burst_channel(link, entry, seen)
            except ProtocolError as e:
                self._warn_rejected(link, "burst channel", f"malformed: {e}", channel=entry["name"])
        for chan in list(self.server.channels.values()):
            if chan.folded in channels:
                continue
            for member in [m for m in chan.members if self._route_of_user(m) == link.link_id]:
                self._remote_part(member, chan, "")

    def _apply_burst_channel(self, link: PeerLink, entry: dict[str, Any], seen: set[str]) -> None:
        server = self.server
        name = entry["name"]
        folded = fold(name)
        chan = server.channels.get(folded)
        members = burst_members(entry["members"], seen)
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
                    extra = self._burst_member_again(link, chan, user, bits, proof, invite)
                else:
                    extra = self._burst_join(link, chan, user, bits, proof, invite, known, fresh, won)
                if extra:
                    pending[user] = [extra, status, "no status proof"]
                elif user in chan.members:
                    self._remember_status(link, chan, user, status)
            self._prove_status(link, chan, pending)
        for user, (extra, _status, reason) in pending.items():
            self._warn_rejected(link, "burst membership", f"unauthorized: status +{status_str(extra)} not proven: "
                                f"{reason}", nick=user.nick, channel=chan.name)
        if creator is not None and crdt.creator != creator:
            self._demote_creator(chan, creator[1])
        if not chan.members and not chan.has_state():  # e.g. every membership refused: keep no empty shell
            server.forget_channel(chan)
            self._forget_channel_if_gone(folded)
        if folded in server.channels:
            server.channel_changed(chan)

    def _burst_member_again(self, link: PeerLink, chan: Channel, user: User, bits: int, proof: Any,
                            invite: Any) -> int:
        """A bursted membership already known here: status its home server no longer lists is taken away, and a
        new signed join (with its invite) is kept as its proof; returns the status bits of ``bits`` beyond what
        the member has here, which need a status proof (never raised on the neighbour's word)."""
        uid, folded = user.conn.uid, chan.folded
        have = chan.members[user]
        if have & ~bits:
            self._set_status(chan, user, have & bits, link.name)
            self._keep_status(uid, folded, have & bits)
        stored = self.member_joins.get((uid, folded))
        if (isinstance(proof, dict) and (stored is None or stored.get("sig") != proof.get("sig"))
                and self._check_proof(proof, user, folded) is None):
            self._remember_join(uid, folded, proof, chan.members[user])
            self._remember_invite(link, uid, chan, user, invite)
        return bits & ~have

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
                    proven = granted_bits(status, user.conn.uid) & extra
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
            consume_invite(chan, user)
        self._add_member(chan, user, bits, source=link.name)
        self._remember_join(uid, chan.folded, proof, bits)
        if by_invite:
            self.member_invites[(uid, chan.folded)] = invite
        else:
            self._remember_invite(link, uid, chan, user, invite)
        return extra

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
        if kept is not None and kept.get("origin") == rec["origin"] and hlc_order(kept) > hlc_order(proof):
            proof = kept
        if kept_nick is not None and kept_nick.get("origin") == rec["origin"]:
            nick_proof = newer(kept_nick, nick_proof)
        try:
            proven = self._check_user_record(proven_record(proof, nick_proof))
        except ProtocolError as e:
            self._warn_rejected(link, "user", f"malformed: its signed events: {e}", uid=rec["uid"])
            return None
        return proven, proof, nick_proof
