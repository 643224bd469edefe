"""Identity across servers: nick collisions resolved the same way everywhere, DIDs, founders and DID ops."""
from __future__ import annotations

from twisted.trial import unittest

from tests.s2s_support import settle, start_line, wait_for
from tests.support import asynctest


class CollisionTests(unittest.TestCase):
    """The same nick on two servers."""

    timeout = 30

    @asynctest
    async def test_split_collision_older_nick_wins(self) -> None:
        """Both sides have an 'ann' after a split; on heal the newer one is renamed, the same on every server."""
        a, b = await start_line(self, "a.test", "b.test")
        a.bridge.hold_peer(b.id)
        b.bridge.hold_peer(a.id)
        await wait_for(lambda: not a.linked(b) and not b.linked(a), what="split")
        ann_a = await a.client("ann")
        ann_b = await b.client("ann")
        for c in (ann_a, ann_b):
            c.send("JOIN #c")
            await c.expect("366")
        # The rule: the older nick (hybrid clock at the time it was taken) wins, then the lower server id.
        rank_a = (a.federation.nick_ts[a.federation.uid(a.server.users["ann"])], a.id)
        rank_b = (b.federation.nick_ts[b.federation.uid(b.server.users["ann"])], b.id)
        (winner, win_client), (loser, lose_client) = sorted([(rank_a, ann_a), (rank_b, ann_b)])
        win_node, lose_node = (a, b) if win_client is ann_a else (b, a)
        b.bridge.release_peer(a.id)
        a.bridge.release_peer(b.id)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="relink")
        await settle(a, b)
        line = await lose_client.expect(lambda l: l.command == "NICK" and l.source.startswith("ann!"))
        new = line.params[0]
        self.assertTrue(new.startswith("ann-"), new)
        self.assertIn("in use on another server", (await lose_client.expect("NOTICE")).params[-1])
        await wait_for(lambda: win_node.knows(new) and lose_node.knows("ann"), what="the same rename everywhere")
        self.assertFalse(win_node.knows("ann"))  # the winner keeps its nick, locally
        for node in (a, b):
            self.assertEqual(sorted(u.nick for u in node.server.channels["#c"].members), sorted(["ann", new]))
        win_client.send(f"PRIVMSG {new} :which one are you?")
        self.assertEqual((await lose_client.expect("PRIVMSG")).params, [new, "which one are you?"])

    @asynctest
    async def test_local_nick_taken_by_remote_is_refused(self) -> None:
        """A local NICK to a nick that lives on another server is 433."""
        a, b = await start_line(self, "a.test", "b.test")
        await a.client("zed")
        bob = await b.client("bob")
        await wait_for(lambda: b.knows("zed"), what="zed on B")
        bob.send("NICK zed")
        await bob.expect("433")


class DIDTests(unittest.TestCase):
    """Founders and DID operators follow the identity across servers."""

    timeout = 30

    @asynctest
    async def test_founder_and_did_ops_federate(self) -> None:
        """A DID-authenticated creator founds the channel on every server; +o on a DID user is kept by DID."""
        a, b = await start_line(self, "a.test", "b.test")
        alice = await a.client("alice", caps=("account-tag", "message-tags"))
        a.server.set_account(a.server.users["alice"], "did:plc:alice1234567")
        bob = await b.client("bob", caps=("account-tag", "message-tags"))
        b.server.set_account(b.server.users["bob"], "did:plc:bob123456789")
        await wait_for(lambda: a.knows("bob") and a.server.users["bob"].account == "did:plc:bob123456789",
                       what="bob's account on A")
        alice.send("JOIN #did")
        await alice.expect("366")
        await wait_for(lambda: "#did" in b.server.channels, what="#did on B")
        self.assertEqual(b.server.channels["#did"].founder, "did:plc:alice1234567")
        bob.send("JOIN #did")
        await alice.expect(r":bob!\S+ JOIN #did")
        alice.send("MODE #did +o bob")
        await bob.expect(r"MODE #did \+o bob")
        await wait_for(lambda: "did:plc:bob123456789" in b.server.channels["#did"].did_ops, what="DID op on B")
        self.assertEqual(sorted(a.server.channels["#did"].did_ops), sorted(b.server.channels["#did"].did_ops))
        alice.send("PRIVMSG #did :signed by my DID")
        line = await bob.expect("PRIVMSG")
        self.assertEqual(line.tags.get("account"), "did:plc:alice1234567")
        self.assertEqual(line.tags.get("+freeq.at/origin"), "a.test")
        # The founder cannot be de-opped from another server by a DID op.
        bob.send("MODE #did -o alice")
        await bob.expect("482")
