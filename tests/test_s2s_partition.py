"""Partition and heal: both sides change state while split; after relinking they agree, nothing resurrects."""
from __future__ import annotations

from twisted.trial import unittest

from tests.s2s_support import Node, channel_view, settle, start_line, wait_for
from tests.support import asynctest


view = channel_view


class PartitionTests(unittest.TestCase):
    """A and B split (both sides hold the link), change state, then heal."""

    timeout = 40

    async def split(self, a: Node, b: Node) -> None:
        a.bridge.hold_peer(b.id)
        b.bridge.hold_peer(a.id)
        await wait_for(lambda: not a.linked(b) and not b.linked(a), what="split")

    async def heal(self, a: Node, b: Node) -> None:
        b.bridge.release_peer(a.id)
        a.bridge.release_peer(b.id)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="relink")
        await settle(a, b)

    @asynctest
    async def test_concurrent_changes_converge_without_resurrection(self) -> None:
        """Topic (last writer wins), bans (a removal is not undone), kicks and parts all converge."""
        a, b = await start_line(self, "a.test", "b.test")
        alice = await a.client("alice")
        dave = await a.client("dave")
        bob = await b.client("bob")
        alice.send("JOIN #p")
        await alice.expect("366")
        await wait_for(lambda: "#p" in b.server.channels, what="#p on B")
        for c in (dave, bob):
            c.send("JOIN #p")
            await c.expect("366")
        await alice.expect(r":bob!\S+ JOIN #p")
        alice.send("MODE #p +o bob")
        alice.send("MODE #p +bb old!*@* kept!*@*")
        await wait_for(lambda: len(b.server.channels["#p"].lists["b"]) == 2, what="bans on B")
        await bob.expect(r"MODE #p \+o bob")
        await self.split(a, b)
        await alice.expect(r":bob!\S+ QUIT :\*\.net \*\.split")
        # Side A: kick dave, add a ban, set a topic first.
        alice.send("TOPIC #p :topic from A")
        alice.send("KICK #p dave :bye")
        alice.send("MODE #p +b newA!*@*")
        await alice.expect(r"MODE #p \+b newA")
        # Side B (later): remove a pre-split ban, set +m, set the topic last.
        bob.send("MODE #p -b old!*@*")
        bob.send("MODE #p +m")
        await bob.expect(r"MODE #p \+m")
        bob.send("TOPIC #p :topic from B")
        await bob.expect("TOPIC")
        await self.heal(a, b)
        va, vb = view(a, "#p"), view(b, "#p")
        self.assertEqual(va, vb)
        self.assertEqual(va["topic"], "topic from B")
        self.assertEqual(va["lists"]["b"], ["kept!*@*", "newA!*@*"])  # old!*@* stays removed
        self.assertIn("m", va["modes"])
        self.assertNotIn("dave", [n for n, _ in va["members"]])  # the kick is not undone
        self.assertEqual(dict(va["members"]), {"alice": 2, "bob": 2})
        # Flap the link again: nothing changes, nothing is announced twice.
        alice.skip()
        await self.split(a, b)
        await self.heal(a, b)
        self.assertEqual(view(a, "#p"), va)
        self.assertEqual(view(b, "#p"), va)
        await alice.expect(r":bob!\S+ JOIN #p")  # bob rejoins after the flap, with his status
        await alice.expect(r"MODE #p \+o bob")
        # bob's message comes over the same link after B's burst: anything it caused would arrive before it.
        bob.send("PRIVMSG #p :after the flap")
        await alice.expect_not(r"TOPIC|KICK|MODE #p [+-][^o]", until="PRIVMSG #p :after the flap")

    @asynctest
    async def test_same_channel_created_on_both_sides(self) -> None:
        """Created on both sides during a split: after healing, only the earlier creator keeps operator status."""
        a, b = await start_line(self, "a.test", "b.test")
        await self.split(a, b)
        alice = await a.client("alice")
        bob = await b.client("bob")
        alice.send("JOIN #race")
        await alice.expect("366")
        bob.send("JOIN #race")
        await bob.expect("366")
        bob.send("MODE #race +s")
        await bob.expect("MODE")
        await self.heal(a, b)
        await wait_for(lambda: view(a, "#race") == view(b, "#race"), what="agreement")
        # The earlier creation (by hybrid logical clock) wins; the other creator is de-opped where it lives.
        winner = a.federation.crdts["#race"].creator
        self.assertEqual(winner, b.federation.crdts["#race"].creator)
        alice_won = winner[1] == a.federation.uid(a.server.users["alice"])
        self.assertEqual(dict(view(a, "#race")["members"]), {"alice": 2, "bob": 0} if alice_won
                         else {"alice": 0, "bob": 2})
        loser, name = (bob, "bob") if alice_won else (alice, "alice")
        await loser.expect(rf"MODE #race -o {name}")
        self.assertIn("s", view(a, "#race")["modes"])  # modes merged from both sides

    @asynctest
    async def test_users_behind_a_split_quit_and_return(self) -> None:
        """Local clients see *.net *.split for remote users and a JOIN when they return (no duplicates)."""
        a, b = await start_line(self, "a.test", "b.test")
        alice = await a.client("alice")
        bob = await b.client("bob")
        for c in (alice, bob):
            c.send("JOIN #q")
            await c.expect("366")
        await wait_for(lambda: len(a.server.channels["#q"].members) == 2, what="both on A")
        await self.split(a, b)
        line = await alice.expect("QUIT")
        self.assertEqual(line.params, ["*.net *.split"])
        bob.send("NICK bobby")  # changes during the split are picked up by the burst
        await bob.expect("NICK")
        await self.heal(a, b)
        line = await alice.expect("JOIN")
        self.assertTrue(line.source.startswith("bobby!"))
        alice.send("NAMES #q")
        names = (await alice.expect("353")).params[-1].split()
        self.assertEqual(sorted(n.lstrip("@") for n in names), ["alice", "bobby"])
        self.assertFalse(a.knows("bob"))
