"""A hostile or broken peer can do no more than its trust allows: each case asserts the outcome,
the log line, and that local clients are unaffected."""
from __future__ import annotations

import struct
from typing import Any, Optional

from twisted.trial import unittest

from freeq.s2s.protocol import EventSigner
from tests.s2s_support import LogCapture, Node, RawPeer, keys, link_raw_peer, start_node, start_raw_peer, wait_for
from tests.support import asynctest


class HostileBase(unittest.TestCase):
    timeout = 30

    async def linked(self, trust: Optional[str] = None, rate: float = 100.0) -> tuple[Node, RawPeer, Any]:
        """Server B (bob is op of #chan) linked to mallory, a scripted peer; returns (b, mallory, bob)."""
        self.logs = LogCapture(self)
        return await link_raw_peer(self, "b.test", "bob", trust, rate)

    async def intro(self, mallory: RawPeer, b: Node, n: int = 1, nick: str = "mal", channel: Optional[str] = "#chan",
                    **extra: Any) -> str:
        """Introduce mallory's user ``n`` (and join it to ``channel``); return its uid."""
        mallory.send(mallory.user(n, nick, **extra))
        if channel:
            mallory.send(mallory.event("join", {"uid": mallory.uid(n), "channel": channel, "status": "", "ops": []}))
        await wait_for(lambda: b.knows(nick), what=f"{nick} on B")
        return mallory.uid(n)

    def msg(self, mallory: RawPeer, text: str, n: int = 1, target: str = "#chan", **kw: Any) -> dict[str, Any]:
        return mallory.event("msg", {"uid": mallory.uid(n), "cmd": "PRIVMSG", "target": target, "text": text,
                                     "tags": {}, "msgid": f"M{abs(hash(text)) % 10**12}"}, **kw)

    async def assert_alive(self, b: Node, bob: Any) -> None:
        """Local clients are unaffected: bob still talks to a fresh local client."""
        carol = await b.client("carol")
        carol.send("JOIN #chan")
        await carol.expect("366")
        bob.send("PRIVMSG #chan :still here")
        self.assertEqual((await carol.expect("PRIVMSG")).params[-1], "still here")


class AdmissionTests(HostileBase):
    """Who may link at all."""

    @asynctest
    async def test_peer_not_in_allowlist_is_refused(self) -> None:
        """An endpoint outside --s2s-allowed-peers is refused before any data is read, and logged."""
        logs = LogCapture(self)
        (ka, ida), (km, idm) = keys(2)
        b = await start_node(self, "b.test", allowed=[ida])
        mallory = await start_raw_peer(self, key=km)
        mallory.bridge.add_peer(b.address())
        line = await logs.wait("Rejecting S2S connection", idm)
        self.assertIn("not in --s2s-allowed-peers", line)
        await wait_for(lambda: mallory.down, what="mallory's link closed")
        self.assertIn("not authorized", mallory.down[0][1])
        self.assertEqual(b.federation.links, {})
        self.assertGreaterEqual(b.server.metrics.s2s_rejected, 1)
        bob = await b.client("bob")
        bob.send("JOIN #chan")
        await bob.expect("366")
        await self.assert_alive(b, bob)

    @asynctest
    async def test_closed_by_default(self) -> None:
        """With --iroh and no allowlist every incoming peer is refused (closed federation)."""
        logs = LogCapture(self)
        b = await start_node(self, "b.test", allowed=[])
        mallory = await start_raw_peer(self)
        mallory.bridge.add_peer(b.address())
        line = await logs.wait("Rejecting S2S connection", mallory.id)
        self.assertIn("federation is closed", line)

    @asynctest
    async def test_open_federation_is_explicit(self) -> None:
        """--s2s-open-federation accepts an unknown peer (and says so at start-up)."""
        logs = LogCapture(self)
        b = await start_node(self, "b.test", open_federation=True)
        self.assertTrue(logs.find("S2S open federation"))
        mallory = await start_raw_peer(self)
        mallory.bridge.add_peer(b.address())
        await wait_for(lambda: mallory.links, what="link")
        mallory.hello()
        await wait_for(lambda: b.federation.open_links(), what="open link")

    @asynctest
    async def test_outgoing_only_to_allowed_peers(self) -> None:
        """The bridge refuses to dial a peer that is not allowed."""
        (ka, ida), (km, idm) = keys(2)
        b = await start_node(self, "b.test", allowed=[ida])
        mallory = await start_raw_peer(self, key=km)
        self.assertRaises(ValueError, b.link_to, Node("m", b.fixture, b.federation, mallory.bridge, km))

    @asynctest
    async def test_hello_for_another_identity(self) -> None:
        """A hello whose id is not the QUIC-authenticated peer ends the link (handshake failed)."""
        self.logs = LogCapture(self)
        (kb, idb), (km, idm), (_k, other) = keys(3)
        b = await start_node(self, "b.test", allowed=[idm], key=kb)
        mallory = await start_raw_peer(self, key=km)
        mallory.bridge.add_peer(b.address())
        await wait_for(lambda: mallory.links, what="link")
        mallory.send({"type": "hello", "protocol": "freeq-s2s", "min_version": 1, "max_version": 1, "id": other,
                      "name": "x", "network": "freeq", "epoch": 1})
        await self.logs.wait("S2S handshake with", idm, "hello id does not match")
        await wait_for(lambda: mallory.down, what="closed")

    @asynctest
    async def test_incompatible_version(self) -> None:
        """A peer speaking only a future protocol version is refused at the handshake."""
        self.logs = LogCapture(self)
        (kb, idb), (km, idm) = keys(2)
        b = await start_node(self, "b.test", allowed=[idm], key=kb)
        mallory = await start_raw_peer(self, key=km)
        mallory.bridge.add_peer(b.address())
        await wait_for(lambda: mallory.links, what="link")
        mallory.send({"type": "hello", "protocol": "freeq-s2s", "min_version": 7, "max_version": 9, "id": idm,
                      "name": "x", "network": "freeq", "epoch": 1})
        await self.logs.wait("no common protocol version")
        await wait_for(lambda: mallory.down, what="closed")


class EnvelopeTests(HostileBase):
    """Origin, signature and ordering of events."""

    @asynctest
    async def test_forged_origin_signature(self) -> None:
        """An event claiming another server's origin, signed with the wrong key, is dropped and logged."""
        b, mallory, bob = await self.linked()
        await self.intro(mallory, b)
        forger = EventSigner(keys(1)[0][0])
        ev = self.msg(mallory, "forged", signer=forger)
        mallory.send(ev)
        await self.logs.wait("rejected", "forged: bad signature", mallory.id)
        await bob.expect_not("PRIVMSG")  # B logged its verdict on mallory's last frame: nothing is in flight
        self.assertGreaterEqual(b.server.metrics.s2s_events_rejected, 1)
        await self.assert_alive(b, bob)

    @asynctest
    async def test_user_of_another_origin(self) -> None:
        """Mallory cannot speak for a user id that belongs to another server."""
        b, mallory, bob = await self.linked()
        ev = mallory.event("user", {"uid": "0123456789abcdef.x.1", "nick": "spoof", "nick_ts": 1, "user": "~s",
                                    "host": "h", "real": "r", "account": None, "handle": None, "away": None,
                                    "modes": "", "signon": 1, "owns": False})
        mallory.send(ev)
        await self.logs.wait("malformed frame", "uid does not belong to its origin")
        self.assertNotIn("spoof", b.server.users)

    @asynctest
    async def test_relayed_origin_not_behind_link(self) -> None:
        """A genuine event of server A, replayed by mallory (not on A's side of the tree), is refused."""
        self.logs = LogCapture(self)
        (ka, ida), (kb, idb), (km, idm) = keys(3)
        a = await start_node(self, "a.test", allowed=[idb], key=ka)
        b = await start_node(self, "b.test", allowed=[ida, idm], key=kb)
        a.link_to(b)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="A-B")
        alice = await a.client("alice")
        alice.send("JOIN #chan")
        await alice.expect("366")
        await wait_for(lambda: b.knows("alice"), what="alice on B")
        mallory = await start_raw_peer(self, key=km)
        mallory.bridge.add_peer(b.address())
        await wait_for(lambda: mallory.links, what="link")
        mallory.hello()
        await wait_for(lambda: len(b.federation.open_links()) == 2, what="mallory's link open")
        alice.send("PRIVMSG #chan :genuine")
        await wait_for(lambda: any(f.get("type") == "msg" for f in mallory.frames), what="relayed event")
        genuine = next(f for f in mallory.frames if f.get("type") == "msg")
        self.assertEqual(genuine["origin"], a.id)
        mallory.send(genuine)
        await self.logs.wait("rejected", "origin is not behind this link", mallory.id)

    @asynctest
    async def test_replayed_and_out_of_order_events(self) -> None:
        """A duplicate and an event older than the stream's high-water mark are dropped (and logged)."""
        b, mallory, bob = await self.linked()
        await self.intro(mallory, b)
        first = self.msg(mallory, "one")
        mallory.send(first)
        self.assertEqual((await bob.expect("PRIVMSG")).params[-1], "one")
        mallory.send(first)
        await self.logs.wait("rejected", "replay", mallory.id)
        later = self.msg(mallory, "five", seq=mallory.seq + 3)
        earlier = self.msg(mallory, "four", seq=mallory.seq + 2)
        mallory.send(later)
        mallory.send(earlier)
        self.assertEqual((await bob.expect("PRIVMSG")).params[-1], "five")
        await self.logs.wait("replayed or out-of-order", "seq=")
        await bob.expect_not("PRIVMSG")  # B logged its verdict on mallory's last frame: nothing is in flight
        self.assertEqual(b.federation.stats.get("gaps"), 1)
        await self.assert_alive(b, bob)


class AuthorizationTests(HostileBase):
    """Operations are checked against the local view of the channel."""

    @asynctest
    async def test_unauthorized_mode_kick_topic_ban(self) -> None:
        """A non-op remote user cannot op itself, kick, change a +t topic or set a ban."""
        b, mallory, bob = await self.linked()
        uid = await self.intro(mallory, b)
        bob.send("TOPIC #chan :bob's topic")
        await bob.expect("TOPIC")
        chan = b.server.channels["#chan"]
        bob_uid = b.federation.uid(b.server.users["bob"])
        stamp = [2**41, 0, mallory.id[:16]]
        mallory.send(mallory.event("mode", {"uid": uid, "channel": "#chan", "ops": [],
                                            "status": [["+", "o", uid]]}))
        await self.logs.wait("mode from peer", "unauthorized: setter is not a channel operator")
        mallory.send(mallory.event("kick", {"uid": uid, "channel": "#chan", "target": bob_uid, "reason": "x"}))
        await self.logs.wait("kick from peer", "unauthorized")
        mallory.send(mallory.event("topic", {"uid": uid, "channel": "#chan",
                                             "ops": [["set", "topic", ["pwned", "mal", 1], stamp]]}))
        await self.logs.wait("topic from peer", "unauthorized: channel is +t")
        mallory.send(mallory.event("mode", {"uid": uid, "channel": "#chan", "status": [],
                                            "ops": [["add", "b", "*!*@*", "t1", "mal", 1]]}))
        await wait_for(lambda: len(self.logs.find("mode from peer", "unauthorized")) >= 2, what="second refusal")
        self.assertEqual((chan.topic, chan.lists["b"], chan.is_op(b.server.users["mal"])), ("bob's topic", [], False))
        self.assertTrue(chan.is_op(b.server.users["bob"]))
        await bob.expect_not(r"KICK|MODE|TOPIC")  # B logged its verdict on mallory's last frame: nothing is in flight
        await self.assert_alive(b, bob)

    @asynctest
    async def test_joins_checked_against_i_b_k_l(self) -> None:
        """A remote join is refused into +i, +b, +k (wrong key) and a full +l channel; a right key works."""
        b, mallory, bob = await self.linked()
        await self.intro(mallory, b, channel=None)
        for name, modes in (("#inv", "+i"), ("#ban", "+b mal!*@*"), ("#key", "+k sesame"), ("#lim", "+l 1")):
            bob.send(f"JOIN {name}")
            await bob.expect("366")
            bob.send(f"MODE {name} {modes}")
            await bob.expect("MODE")
        for name, reason in (("#inv", "+i"), ("#ban", "+b"), ("#key", "+k"), ("#lim", "+l")):
            mallory.send(mallory.event("join", {"uid": mallory.uid(1), "channel": name, "status": "o", "ops": []}))
            await self.logs.wait("join from peer", f"unauthorized: {reason}", name)
            self.assertEqual([u.nick for u in b.server.channels[name].members], ["bob"])
        mallory.send(mallory.event("join", {"uid": mallory.uid(1), "channel": "#key", "status": "o", "ops": [],
                                            "key": "sesame"}))
        await bob.expect(r":mal!\S+ JOIN #key")
        self.assertFalse(b.server.channels["#key"].is_op(b.server.users["mal"]))  # no ops in an existing channel
        await bob.expect_not("MODE")  # B showed the JOIN while applying the last frame: nothing is in flight

    @asynctest
    async def test_founder_claim_for_another_did(self) -> None:
        """Creating a channel with a founder DID that is not the joiner's account is ignored."""
        b, mallory, bob = await self.linked()
        await self.intro(mallory, b, channel=None)
        stamp = [1, 0, mallory.id[:16]]
        mallory.send(mallory.event("join", {"uid": mallory.uid(1), "channel": "#new", "status": "o",
                                            "ops": [["found", "did:plc:victim", stamp]]}))
        await self.logs.wait("founder claim for another DID")
        await wait_for(lambda: "#new" in b.server.channels, what="#new")
        self.assertIsNone(b.server.channels["#new"].founder)

    @asynctest
    async def test_injection_through_fields_is_malformed(self) -> None:
        """CR/LF or spaces smuggled into nicks, texts or channel names never reach a client."""
        b, mallory, bob = await self.linked()
        uid = await self.intro(mallory, b)
        mallory.send(mallory.user(2, "x PRIVMSG #chan :pwned"))
        mallory.send(mallory.event("msg", {"uid": uid, "cmd": "PRIVMSG", "target": "#chan",
                                           "text": "hi\r\nQUIT :pwned", "tags": {}, "msgid": "X1"}))
        mallory.send(mallory.event("msg", {"uid": uid, "cmd": "PRIVMSG", "target": "#chan", "text": "hi",
                                           "tags": {"+x": "a\nb"}, "msgid": "X2"}))
        await wait_for(lambda: len(self.logs.find("malformed frame")) >= 1, what="malformed")
        await wait_for(lambda: b.federation.stats.get("malformed", 0) >= 3, what="three malformed")
        await bob.expect_not("PRIVMSG|QUIT")  # B logged its verdict on mallory's last frame: nothing is in flight
        await self.assert_alive(b, bob)


class TrustTests(HostileBase):
    """Trust levels come from local configuration only."""

    @asynctest
    async def test_readonly_changes_nothing(self) -> None:
        """A readonly peer's users and messages are dropped; it still receives our state."""
        b, mallory, bob = await self.linked(trust="readonly")
        mallory.send(mallory.user(1, "mal"))
        await self.logs.wait("user event from peer", "trust: not allowed from a readonly peer")
        self.assertNotIn("mal", b.server.users)
        await wait_for(lambda: any(f.get("type") == "join" for f in mallory.frames), what="our events reach it")

    @asynctest
    async def test_relay_only_relays_messages(self) -> None:
        """A relay peer's users may talk, but its topic/mode/kick events are dropped."""
        b, mallory, bob = await self.linked(trust="relay")
        uid = await self.intro(mallory, b)
        mallory.send(self.msg(mallory, "relayed hello"))
        self.assertEqual((await bob.expect("PRIVMSG")).params[-1], "relayed hello")
        mallory.send(mallory.event("topic", {"uid": uid, "channel": "#chan",
                                             "ops": [["set", "topic", ["t", "m", 1], [1, 0, "x"]]]}))
        await self.logs.wait("topic event from peer", "not allowed from a relay peer")


    @asynctest
    async def test_relay_peer_account_claims_confer_no_authority(self) -> None:
        """A relay peer's user claiming the founder's DID does not pass +i or get operator status."""
        b, mallory, bob = await self.linked(trust="relay")
        b.server.channels["#chan"].founder = "did:plc:founder12345"
        bob.send("MODE #chan +i")
        await bob.expect("MODE")
        await self.intro(mallory, b, channel=None, account="did:plc:founder12345")
        mallory.send(mallory.event("join", {"uid": mallory.uid(1), "channel": "#chan", "status": "o", "ops": []}))
        await self.logs.wait("join from peer", "unauthorized: +i")
        self.assertEqual([u.nick for u in b.server.channels["#chan"].members], ["bob"])


class LimitTests(HostileBase):
    """Floods, oversized and malformed frames."""

    @asynctest
    async def test_flood_above_rate_limit(self) -> None:
        """300 events at once: about 100 (the bucket) get through, the rest are dropped, warned and counted."""
        b, mallory, bob = await self.linked()
        await self.intro(mallory, b)
        for i in range(300):
            mallory.send(self.msg(mallory, f"flood {i}"))
        await self.logs.wait("S2S rate limit exceeded", mallory.id)
        await wait_for(lambda: b.federation.stats.get("dropped", 0) + b.federation.stats.get("applied:msg", 0) >= 300,
                       what="all processed")
        got = b.federation.stats.get("applied:msg", 0)
        self.assertTrue(95 <= got <= 150, got)
        self.assertEqual(b.server.metrics.s2s_dropped, 300 - got)
        self.assertEqual(len(self.logs.find("S2S rate limit exceeded")), 1)  # warnings are rate limited too
        await self.assert_alive(b, bob)

    @asynctest
    async def test_oversized_frame_closes_link(self) -> None:
        """A frame header announcing more than the maximum ends the link before the payload is buffered."""
        b, mallory, bob = await self.linked()
        await self.intro(mallory, b)
        mallory.send_raw(struct.pack(">I", 10 * 1024 * 1024) + b"{")
        await self.logs.wait("exceeds the maximum")
        await wait_for(lambda: mallory.down, what="link closed")
        self.assertIn("exceeds the maximum", mallory.down[0][1])
        await wait_for(lambda: not b.knows("mal"), what="mal split off")
        await self.assert_alive(b, bob)

    @asynctest
    async def test_malformed_frames_are_dropped(self) -> None:
        """Bad JSON, unknown types and wrong shapes are logged and dropped; the link stays up."""
        b, mallory, bob = await self.linked()
        await self.intro(mallory, b)
        mallory.send_raw(struct.pack(">I", 9) + b"not json!")
        mallory.send({"type": "nonsense"})
        mallory.send({"type": "msg", "origin": "zz"})
        await wait_for(lambda: b.federation.stats.get("malformed", 0) >= 3, what="three malformed")
        self.assertTrue(self.logs.find("S2S malformed frame from peer", mallory.id))
        mallory.send(self.msg(mallory, "still linked"))
        self.assertEqual((await bob.expect("PRIVMSG")).params[-1], "still linked")
