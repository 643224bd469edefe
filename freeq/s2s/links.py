"""Links: handshake (``hello``), frame dispatch, the envelope checks and routing of events, keepalive, and the
operator's view and control of links (LINKS, SQUIT, CONNECT)."""
from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from freeq.logs import security_event
from freeq.s2s import protocol as P
from freeq.s2s.base import SPLIT_REASON
from freeq.s2s.burst import BurstExchange
from freeq.s2s.peers import EventContext, PeerLink, ServerInfo
from freeq.s2s.protocol import ProtocolError
from freeq.state.links import HeldPeer, LinkControl, LinkView
from freeq.state.user import User

log = Logger()


class LinkManagement(BurstExchange):
    """The links as federation sees them (from the bridge, in the reactor thread)."""

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

    def _on_hello(self, link: PeerLink, msg: dict[str, Any]) -> None:
        try:
            hello = P.check_hello(msg, link.peer_id)
        except ProtocolError as e:
            self._count("handshake_failed", "s2s_rejected")
            peer_ip = getattr(self.transport, "peer_ip", None)
            security_event(log, "s2s_rejected", peer_ip(link.link_id) if peer_ip is not None else "unknown",
                           "rejected S2S peer from {ip}: S2S handshake with {peer} failed: {error}", peer=link.peer_id,
                           error=str(e))
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

    def _on_event(self, link: PeerLink, ev: dict[str, Any], payload: bytes) -> None:
        """An event from ``link``: rate limit, envelope (signed by its origin, behind this link, in sequence),
        trust; then routed on (``to`` another server) or applied here and flooded to the other links."""
        now = self.clock.seconds()
        if not self._within_rate(link, now):
            return
        kind = ev["type"]
        origin = self._signed_origin(link, ev)
        if origin is None or not self._in_sequence(link, ev, origin, now):
            return
        if kind not in P.TRUST_ALLOWS[link.trust]:
            self._warn_rejected(link, f"{kind} event", f"trust: not allowed from a {link.trust} peer")
            return
        to = ev.get("to")
        if to is not None and to != self.me:
            nxt = self._link_of_origin(to)
            if nxt is not None and nxt.state == "open" and nxt is not link:
                self.transport.send(nxt.link_id, P.encode_frame(payload))
            return
        try:  # the envelope's clock only advances ours; state ops inside carry (and check) their own stamps
            self.hlc.observe(self.hlc.check(ev.get("hlc")))
        except ProtocolError:
            log.debug("S2S event from {origin} has an unusable clock stamp", origin=origin)
        ctx = EventContext(link, origin, ev)
        accepted = getattr(self, "_ev_" + kind)(ctx)
        if not accepted:
            return
        self._count("applied:" + kind)
        if to is None:
            frame = P.encode_frame(payload)
            for other in self.open_links():
                if other is not link:
                    self.transport.send(other.link_id, frame)

    def _within_rate(self, link: PeerLink, now: float) -> bool:
        """Whether ``link``'s token bucket lets one more event in (excess dropped, warned every 5 s)."""
        if link.bucket.take(now):
            return True
        link.dropped += 1
        self._count("dropped", "s2s_dropped")
        if now - link.last_drop_warn >= 5.0:
            link.last_drop_warn = now
            log.warn("S2S rate limit exceeded for peer {peer} ({rate:g} events/s): dropped {count} event(s)",
                     peer=link.peer_id, rate=self.rate, count=link.dropped)
            link.dropped = 0
        return False

    def _signed_origin(self, link: PeerLink, ev: dict[str, Any]) -> Optional[str]:
        """The origin of an event with a well-formed envelope, signed by that origin, which is another server
        behind ``link``; ``None``: rejected (logged). A malformed envelope raises :class:`ProtocolError`."""
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
            return None
        if origin == self.me:
            self._warn_rejected(link, f"{kind} event", "replay: our own event came back", seq=seq)
            return None
        info = self.servers.get(origin)
        if info is None or info.link_id != link.link_id:
            self._warn_rejected(link, f"{kind} event", "forged: origin is not behind this link", origin=origin)
            return None
        return origin

    def _in_sequence(self, link: PeerLink, ev: dict[str, Any], origin: str, now: float) -> bool:
        """Whether the event is the next of its origin's stream (``to``, or ``*`` when flooded) and not a replay;
        a gap is accepted, and a resync asked of ``link`` (at most every 10 s)."""
        stream = ev.get("to") or "*"
        epoch, seq = ev["epoch"], ev["seq"]
        verdict = self.marks.check(origin, stream, epoch, seq)
        if verdict in (P.REPLAY, P.STALE):
            mark = self.marks.marks.get((origin, stream))
            self._warn_rejected(link, f"{ev['type']} event", f"replay: replayed or out-of-order ({verdict})",
                                origin=P.short_id(origin), seq=seq, high=mark[1] if mark else 0)
            return False
        self.marks.record(origin, stream, epoch, seq)
        if verdict == P.GAP:
            self._count("gaps")
            log.info("S2S gap in events of {origin} via {peer} (now at {seq}); asking for a resync",
                     origin=P.short_id(origin), peer=link.peer_id, seq=seq)
            if now - link.resync_asked >= 10.0:
                link.resync_asked = now
                self._send(link, {"type": "resync"})
        return True

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
