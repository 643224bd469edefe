"""A server that refuses a remote join (+b/+i/+k/+l in its view) makes the joiner's home server take the
user out of the channel, so every server agrees; forged or untrusted refusals are ignored and logged."""
from __future__ import annotations

import time
from typing import Any, Optional

from twisted.trial import unittest

from tests.s2s_support import (
    LogCapture,
    Node,
    RawPeer,
    channel_view,
    link_raw_peer,
    settle,
    start_line,
    wait_for,
)
from tests.support import asynctest


def members(node: Node, name: str) -> list[str]:
    chan = node.server.channels.get(name)
    return sorted(u.nick for u in chan.members) if chan is not None else []


class RefusalTests(unittest.TestCase):
    timeout = 40

    @asynctest
    async def test_banned_remote_join_is_undone_everywhere(self) -> None:
        """A-B-C: carol (on A) joins #fed, which C's view bans: A and B take her out again, with a KICK
        from c.test on A and a PART elsewhere; nothing comes back on relink."""
        logs = LogCapture(self)
        a, b, c = await start_line(self, "a.test", "b.test", "c.test")
        alice = await a.client("alice")
        bob = await b.client("bob")
        dave = await c.client("dave")
        alice.send("JOIN #fed")
        await alice.expect("366")
        await wait_for(lambda: "#fed" in c.server.channels, what="#fed on C")
        for client in (bob, dave):
            client.send("JOIN #fed")
            await client.expect("366")
        await wait_for(lambda: members(a, "#fed") == members(c, "#fed") == ["alice", "bob", "dave"],
                       what="everyone in #fed")
        # C's view diverges (as after a race or a partition): a ban A and B do not know about.
        c.server.channels["#fed"].list_add("b", "carol!*@*", "c.test", time.time(), 100)
        carol = await a.client("carol")
        await wait_for(lambda: c.knows("carol"), what="carol on C")
        carol.send("JOIN #fed")
        await carol.expect("366")  # A's view allows it
        kick = await carol.expect("KICK")
        self.assertTrue(kick.raw.startswith(":c.test KICK "), kick.raw)
        self.assertEqual(kick.params, ["#fed", "carol", "Cannot join channel (+b) on c.test"])
        line = await alice.expect("KICK")
        self.assertEqual(line.params, kick.params)
        part = await bob.expect(r":carol!\S+ PART #fed")
        self.assertEqual(part.params, ["#fed", "Cannot join channel (+b) on c.test"])
        # Everything A and B sent about carol (sent before alice saw the KICK) passes B before alice's message.
        alice.send("PRIVMSG #fed :after the refusal")
        await dave.expect_not(r"carol", until="PRIVMSG #fed :after the refusal")
        for node in (a, b, c):
            await wait_for(lambda n=node: members(n, "#fed") == ["alice", "bob", "dave"], what=f"carol out on {node.name}")
        await logs.wait("join from peer", "unauthorized: +b (banned)", "#fed")
        await logs.wait("join of carol to #fed refused by c.test (+b)")
        self.assertEqual(a.federation.sent_joins.get((a.federation.uid(a.server.users["carol"]), "#fed")), None)
        # Relink: nothing resurrects carol's membership.
        a.bridge.hold_peer(b.id)
        b.bridge.hold_peer(a.id)
        await wait_for(lambda: not a.linked(b) and not b.linked(a), what="split")
        b.bridge.release_peer(a.id)
        a.bridge.release_peer(b.id)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="relink")
        await settle(a, b, c)
        for node in (a, b, c):
            self.assertEqual(members(node, "#fed"), ["alice", "bob", "dave"])
        self.assertEqual(channel_view(a, "#fed")["members"], channel_view(b, "#fed")["members"])
        # A legitimate rejoin after the ban is lifted on C works (the refusal is not sticky).
        c.server.channels["#fed"].list_remove("b", "carol!*@*")
        carol.send("JOIN #fed")
        await dave.expect(r":carol!\S+ JOIN #fed")
        # A refusal from C (sent before C showed dave the JOIN) comes ahead of dave's later message.
        dave.send("PRIVMSG #fed :welcome back")
        await carol.expect_not("KICK", until="PRIVMSG #fed :welcome back")


class ForgedRefusalTests(unittest.TestCase):
    timeout = 30

    async def linked(self, trust: Optional[str] = None) -> tuple[Node, RawPeer, Any]:
        """Server A (alice in #chan) linked to mallory, a scripted peer that saw alice's join."""
        self.logs = LogCapture(self)
        return await link_raw_peer(self, "a.test", "alice", trust)

    async def join_of(self, mallory: RawPeer, a: Node, nick: str) -> dict[str, Any]:
        uid = a.federation.uid(a.server.users[nick])
        return await wait_for(lambda: next((f for f in mallory.frames if f.get("type") == "join"
                                            and f.get("uid") == uid), None), what=f"{nick}'s join at mallory")

    def refuse(self, mallory: RawPeer, a: Node, uid: str, sig: str, to: Optional[str] = "A",
               channel: str = "#chan") -> None:
        mallory.send(mallory.event("refuse", {"uid": uid, "channel": channel, "reason": "+b", "join": sig},
                                   to=a.id if to == "A" else to))

    @asynctest
    async def test_forged_refusals_are_ignored_and_logged(self) -> None:
        """A refusal quoting no real join, for a user not in the channel, or flooded, changes nothing;
        a refusal of the join mallory really received does remove alice."""
        a, mallory, alice = await self.linked()
        join = await self.join_of(mallory, a, "alice")
        carol = await a.client("carol")
        carol_uid = a.federation.uid(a.server.users["carol"])
        # 1. a join signature mallory never saw
        self.refuse(mallory, a, join["uid"], "A" * 86)
        await self.logs.wait("refusal from peer", "not for a current join of our user", join["uid"])
        # 2. a user who is not in the channel (with a real join signature of someone else)
        self.refuse(mallory, a, carol_uid, join["sig"])
        await self.logs.wait("refusal from peer", "not for a current join of our user", carol_uid)
        # 3. flooded instead of routed to the user's home server
        self.refuse(mallory, a, join["uid"], join["sig"], to=None)
        await wait_for(lambda: len(self.logs.find("refusal from peer", "not for a current join")) >= 3,
                       what="third rejection")
        # 4. a user of another server (mallory's own uid)
        self.refuse(mallory, a, mallory.uid(1), join["sig"])
        await wait_for(lambda: len(self.logs.find("refusal from peer", "not for a current join")) >= 4,
                       what="fourth rejection")
        self.assertEqual(members(a, "#chan"), ["alice"])
        await alice.expect_not("KICK")  # A logged its verdict on the last frame: nothing is in flight
        await carol.expect_not("KICK")
        # The real thing: mallory refuses the join it received.
        self.refuse(mallory, a, join["uid"], join["sig"])
        line = await alice.expect("KICK")
        self.assertEqual(line.params, ["#chan", "alice", "Cannot join channel (+b) on mallory"])
        part = await wait_for(lambda: next((f for f in mallory.frames if f.get("type") == "part"
                                            and f.get("uid") == join["uid"]), None), what="part at mallory")
        self.assertEqual(part["reason"], "Cannot join channel (+b) on mallory")
        self.assertEqual(members(a, "#chan"), [])
        # A stale refusal (replayed with a new seq) after a rejoin does not undo the new join.
        alice.send("JOIN #chan")
        await alice.expect("366")
        self.refuse(mallory, a, join["uid"], join["sig"])
        await wait_for(lambda: len(self.logs.find("refusal from peer", "not for a current join")) >= 5,
                       what="stale refusal rejected")
        self.assertEqual(members(a, "#chan"), ["alice"])

    @asynctest
    async def test_refusal_from_readonly_or_relay_peer_is_ignored(self) -> None:
        """Only a ``full`` peer may take our users out of a channel."""
        for trust in ("readonly", "relay"):
            a, mallory, alice = await self.linked(trust)
            join = await self.join_of(mallory, a, "alice")
            self.refuse(mallory, a, join["uid"], join["sig"])
            await self.logs.wait("refuse event from peer", f"trust: not allowed from a {trust} peer")
            self.assertEqual(members(a, "#chan"), ["alice"])
            await alice.expect_not("KICK")  # as above
