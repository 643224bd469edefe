"""Server-operator actions on federated channels and users (issue #10 item 15).

An operator (user mode +o) may act on a channel where it is not a channel operator (override) and KILL any
user. On a channel shared by two servers such an action must be applied by both or refused up front; a KILL
of a user of another server must reach that server or be refused: never a split, never a false log line.
Two real servers linked by iroh on 127.0.0.1 (relays off).
"""
from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from tests.s2s_support import (
    LogCapture, Node, channel_view, keys, link_raw_peer, settle, start_node, start_pair, wait_for,
)
from tests.support import asynctest
from tests.test_s2s_oper import make_oper


async def names(client: Any, channel: str) -> list[str]:
    """The sorted NAMES of ``channel`` as ``client`` sees them."""
    client.send(f"NAMES {channel}")
    return sorted((await client.expect("353")).params[-1].split())


class FullTrustTests(unittest.TestCase):
    """A and B trust each other ``full``: an operator's override and KILL cross the link."""

    timeout = 40

    @asynctest
    async def test_override_mode_and_kick_are_applied_on_both_servers(self) -> None:
        """carol, an operator on A who is not even in #fed, sets +m and the (+t) topic and kicks bob (of B): B
        applies all three, so the channel's modes, topic and NAMES agree on A and B."""
        logs = LogCapture(self)
        a, b, alice, bob = await start_pair(self, oper_password="pw")
        carol = await a.client("carol")
        await make_oper(carol)

        carol.send("MODE #fed +m")
        line = await bob.expect(r"MODE #fed \+m")
        self.assertTrue(line.source.startswith("carol!"))
        await alice.expect(r"MODE #fed \+m")
        self.assertIn("m", b.server.channels["#fed"].modes)
        self.assertEqual(channel_view(a, "#fed")["modes"], channel_view(b, "#fed")["modes"])
        await logs.wait("S2S server-operator override: carol (operator of a.test) changes modes on #fed")

        carol.send("TOPIC #fed :set by an operator")  # +t, and carol is not a member
        line = await bob.expect(r"TOPIC #fed")
        self.assertEqual(line.params[-1], "set by an operator")
        self.assertEqual(b.server.channels["#fed"].topic, "set by an operator")

        carol.send("KICK #fed bob :behave")
        line = await bob.expect(r"KICK #fed bob")
        self.assertEqual(line.params[-1], "behave")
        await alice.expect(r"KICK #fed bob")
        await wait_for(lambda: "bob" not in [u.nick for u in b.server.channels["#fed"].members], what="kick on B")
        self.assertEqual(await names(alice, "#fed"), ["@alice"])
        self.assertEqual(channel_view(a, "#fed"), channel_view(b, "#fed"))
        await logs.wait("S2S server-operator override: carol (operator of a.test) kicks bob on #fed")
        self.assertFalse(logs.find("rejected"))
        self.assertEqual(b.server.metrics.s2s_oper_applied, 3)

    @asynctest
    async def test_kill_of_a_remote_user_disconnects_it_at_home(self) -> None:
        """carol on A kills bob of B: B disconnects bob with "Killed (carol (reason))" and bob is gone on A;
        A logs that it sent the KILL, B that it killed bob; A never claims to have killed bob itself."""
        logs = LogCapture(self)
        a, b, alice, bob = await start_pair(self, oper_password="pw")
        carol = await a.client("carol")
        await make_oper(carol)

        carol.send("KILL bob :spamming")
        line = await carol.expect("NOTICE")
        self.assertEqual(line.params[-1], "KILL for bob sent to b.test, its home server")
        line = await bob.expect("KILL")
        self.assertTrue(line.source.startswith("carol!"))
        self.assertEqual(line.params, ["bob", "spamming"])
        line = await bob.expect("ERROR")
        self.assertIn("Killed (carol (spamming))", line.params[-1])
        await bob.closed
        line = await alice.expect(r":bob!\S+ QUIT")
        self.assertEqual(line.params, ["Killed (carol (spamming))"])
        await wait_for(lambda: not a.knows("bob") and "bob" not in b.server.users, what="bob gone on A and B")
        self.assertEqual(await names(alice, "#fed"), ["@alice"])
        await logs.wait("KILL of bob (a user of b.test) by operator carol (no account) sent to b.test: spamming")
        await logs.wait("S2S carol (no account) of a.test killed bob: spamming")
        self.assertFalse(logs.find("carol killed bob"))


class UntrustedPeerTests(unittest.TestCase):
    """B trusts A only as ``relay``: A's operators have no power on B, so A refuses their actions up front."""

    timeout = 40

    async def relay_pair(self) -> tuple[Node, Node, Any, Any, Any]:
        """A (trusts B full) and B (trusts A relay) linked; alice on A and bob on B in #fed; carol an operator on A."""
        (ka, ida), (kb, idb) = keys(2)
        a = await start_node(self, "a.test", allowed=[idb], key=ka, oper_password="pw")
        b = await start_node(self, "b.test", allowed=[ida], key=kb, trust={ida: "relay"}, oper_password="pw")
        a.link_to(b)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="link")
        await settle(a, b)
        alice = await a.client("alice")
        bob = await b.client("bob")
        alice.send("JOIN #fed")
        await alice.expect("366")
        await wait_for(lambda: "#fed" in b.server.channels, what="#fed on B")
        bob.send("JOIN #fed")
        await bob.expect("366")
        await alice.expect(r":bob!\S+ JOIN #fed")
        carol = await a.client("carol")
        await make_oper(carol)
        return a, b, alice, bob, carol

    @asynctest
    async def test_override_refused_when_the_peer_would_not_apply_it(self) -> None:
        """MODE +m, KICK and TOPIC by carol on #fed (shared with B) get 482 naming b.test; nothing changes on A
        or B.
        On a channel with no member on B the override still works."""
        logs = LogCapture(self)
        a, b, alice, bob, carol = await self.relay_pair()
        before = channel_view(a, "#fed")

        carol.send("MODE #fed +m")
        line = await carol.expect("482")
        self.assertEqual(line.params[1:], ["#fed", "You're not channel operator, and b.test (which shares the "
                                                   "channel) does not accept server-operator overrides from a.test"])
        carol.send("KICK #fed bob :behave")
        line = await carol.expect("482")
        self.assertIn("b.test (which shares the channel) does not accept server-operator overrides", line.params[-1])
        carol.send("TOPIC #fed :set by an operator")
        line = await carol.expect("482")
        self.assertIn("b.test (which shares the channel)", line.params[-1])
        await alice.expect_not(r"MODE #fed|KICK #fed|TOPIC #fed", after=(carol,))
        # bob is on B: anything A sent for carol's commands comes over the link before alice's later message.
        alice.send("PRIVMSG #fed :after the refusals")
        await bob.expect_not(r"MODE #fed|KICK #fed|TOPIC #fed", until="PRIVMSG #fed :after the refusals")
        self.assertEqual(channel_view(a, "#fed"), before)
        self.assertNotIn("m", b.server.channels["#fed"].modes)
        self.assertEqual(await names(alice, "#fed"), ["@alice", "bob"])
        self.assertEqual(await names(bob, "#fed"), ["@alice", "bob"])
        await logs.wait("MODE on #fed by operator carol (no account) refused: b.test shares the channel")
        await logs.wait("KICK on #fed by operator carol (no account) refused: b.test shares the channel")
        await logs.wait("TOPIC on #fed by operator carol (no account) refused: b.test shares the channel")
        self.assertEqual(a.server.metrics.s2s_oper_refused, 3)

        dave = await a.client("dave")
        dave.send("JOIN #solo")
        await dave.expect("366")
        carol.send("MODE #solo +m")
        await dave.expect(r"MODE #solo \+m")

    @asynctest
    async def test_kill_refused_when_the_home_server_would_not_apply_it(self) -> None:
        """KILL of bob (of B) by carol gets 481 saying B does not permit it; bob stays connected on B and known
        on A; A logs the refusal, and no line claims bob was killed."""
        logs = LogCapture(self)
        a, b, alice, bob, carol = await self.relay_pair()
        carol.send("KILL bob :spamming")
        line = await carol.expect("481")
        self.assertEqual(line.params[-1], "Permission Denied- Cannot kill bob, a user of b.test: not permitted by "
                                          "that server")
        await logs.wait("KILL of bob (a user of b.test) by operator carol (no account) refused: b.test does not "
                        "accept server-operator actions from this server")
        # A kill event for carol's KILL would come over the link before alice's later message.
        alice.send("PRIVMSG #fed :still there?")
        await bob.expect_not(r"KILL|ERROR", until="PRIVMSG #fed :still there")
        self.assertFalse(bob.is_closed)
        self.assertTrue(a.knows("bob"))
        self.assertFalse(logs.find("killed bob"))


class LineTests(unittest.TestCase):
    """A-B-C in a line: an operator's action reaches C through B only if every hop trusts the one before it."""

    timeout = 40

    async def line(self, c_trusts_b: str) -> tuple[Node, Node, Node, Any, Any, Any]:
        """A-B-C (C trusts B ``c_trusts_b``, every other hop ``full``); alice on A and dave on C in #fed; carol an
        operator on A."""
        (ka, ida), (kb, idb), (kc, idc) = keys(3)
        a = await start_node(self, "a.test", allowed=[idb], key=ka, oper_password="pw")
        b = await start_node(self, "b.test", allowed=[ida, idc], key=kb, oper_password="pw")
        c = await start_node(self, "c.test", allowed=[idb], key=kc, trust={idb: c_trusts_b}, oper_password="pw")
        a.link_to(b)
        b.link_to(c)
        await wait_for(lambda: a.linked(b) and b.linked(c), what="links")
        await settle(a, b, c)
        alice = await a.client("alice")
        dave = await c.client("dave")
        alice.send("JOIN #fed")
        await alice.expect("366")
        await wait_for(lambda: "#fed" in c.server.channels, what="#fed on C")
        dave.send("JOIN #fed")
        await dave.expect("366")
        await alice.expect(r":dave!\S+ JOIN #fed")
        carol = await a.client("carol")
        await make_oper(carol)
        return a, b, c, alice, dave, carol

    @asynctest
    async def test_override_and_kill_cross_two_hops(self) -> None:
        """With full trust everywhere, carol's +m is applied on C (and B), and her KILL of dave reaches C."""
        a, b, c, alice, dave, carol = await self.line("full")
        carol.send("MODE #fed +m")
        await dave.expect(r"MODE #fed \+m")
        await wait_for(lambda: "m" in b.server.channels["#fed"].modes, what="+m on B")
        self.assertEqual(channel_view(a, "#fed"), channel_view(c, "#fed"))
        carol.send("KILL dave :bye")
        await dave.expect("KILL")
        line = await alice.expect(r":dave!\S+ QUIT")
        self.assertEqual(line.params, ["Killed (carol (bye))"])
        await wait_for(lambda: not a.knows("dave") and not b.knows("dave"), what="dave gone")

    @asynctest
    async def test_refused_when_a_later_hop_does_not_trust_the_previous(self) -> None:
        """C trusts B only as relay: A refuses carol's override on #fed (482 naming c.test) and her KILL of dave."""
        a, b, c, alice, dave, carol = await self.line("relay")
        carol.send("MODE #fed +m")
        line = await carol.expect("482")
        self.assertIn("c.test (which shares the channel)", line.params[-1])
        carol.send("KILL dave :bye")
        line = await carol.expect("481")
        self.assertIn("a user of c.test: not permitted", line.params[-1])
        # dave is on C: anything A sent for carol's commands passes B before carol's later message.
        carol.send("PRIVMSG dave :after the refusals")
        await dave.expect_not(r"MODE|KILL", until="PRIVMSG dave :after the refusals")
        self.assertNotIn("m", a.server.channels["#fed"].modes)
        self.assertTrue(a.knows("dave"))


class ScriptedPeerTests(unittest.TestCase):
    """A scripted peer (mallory) sends ``kill`` events for a local user: only a ``full`` link with the signed
    ``oper`` flag may disconnect it."""

    timeout = 30

    @asynctest
    async def test_kill_from_a_relay_peer_is_refused(self) -> None:
        """A relay peer's kill (even flagged oper) is dropped at the trust step; alice stays connected."""
        logs = LogCapture(self)
        node, mallory, alice = await link_raw_peer(self, "a.test", "alice", trust="relay")
        mallory.send(mallory.user(1, "mop"))
        await wait_for(lambda: node.knows("mop"), what="mop on A")
        target = node.federation.uid(node.server.users["alice"])
        mallory.send(mallory.event("kill", {"uid": mallory.uid(1), "target": target, "reason": "x", "oper": True},
                                   to=node.id))
        await logs.wait("S2S kill event from peer " + mallory.id, "rejected: trust: not allowed from a relay peer")
        await alice.expect_not(r"KILL|ERROR")  # A logged its verdict on the last frame: nothing is in flight
        self.assertFalse(alice.is_closed)

    @asynctest
    async def test_kill_from_a_full_peer_needs_the_oper_flag(self) -> None:
        """Without ``oper`` the kill is refused (logged); with it, alice is killed and her QUIT goes out."""
        logs = LogCapture(self)
        node, mallory, alice = await link_raw_peer(self, "a.test", "alice")
        mallory.send(mallory.user(1, "mop"))
        await wait_for(lambda: node.knows("mop"), what="mop on A")
        target = node.federation.uid(node.server.users["alice"])
        mallory.send(mallory.event("kill", {"uid": mallory.uid(1), "target": target, "reason": "x"}, to=node.id))
        await logs.wait("S2S kill from peer " + mallory.id, "rejected: unauthorized: killer is not a server operator")
        await alice.expect_not(r"KILL|ERROR")  # as above
        mallory.send(mallory.event("kill", {"uid": mallory.uid(1), "target": target, "reason": "bye", "oper": True},
                                   to=node.id))
        line = await alice.expect("KILL")
        self.assertEqual((line.source.split("!")[0], line.params), ("mop", ["alice", "bye"]))
        await alice.closed
        await logs.wait("S2S mop (no account) of mallory killed alice: bye")
        await wait_for(lambda: any(f.get("type") == "quit" and f.get("uid") == target
                                   and f.get("reason") == "Killed (mop (bye))" for f in mallory.frames),
                       what="alice's quit sent to mallory")
