"""Issue #12 item 6 over real loopback sockets: NAMES with several channels, and an INVITE that lets the
invitee past ``+l`` as it passes ``+i``."""
from __future__ import annotations

from twisted.trial import unittest

from tests.support import asynctest, start_server
from tests.test_channels import join, mode_line, setup_channel


class NamesSeveralChannelsTests(unittest.TestCase):
    """``NAMES #a,#b`` answers with a 353/366 set for each channel, in order."""

    @asynctest
    async def test_each_channel_gets_its_own_names_and_end(self) -> None:
        """Two channels and an unknown one: 353+366 for each existing one, a bare 366 for the unknown."""
        srv = await start_server(self, flood_rate=0)
        alice, bob = await setup_channel(srv, "#a", "alice", "bob")
        await join(alice, "#b")
        alice.skip()
        alice.send("NAMES #a,#none,#b")
        lines = await alice.collect_until(lambda l: l.command == "366" and l.params[1] == "#b")
        got = [(l.command, l.params[-2] if l.command == "353" else l.params[1]) for l in lines]
        self.assertEqual(got, [("353", "#a"), ("366", "#a"), ("366", "#none"), ("353", "#b"), ("366", "#b")])
        names_a = sorted(n.lstrip("@+") for n in lines[0].params[-1].split())
        self.assertEqual(names_a, ["alice", "bob"])
        self.assertEqual(lines[3].params[-1], "@alice")

    @asynctest
    async def test_targmax_advertises_the_names_limit(self) -> None:
        """ISUPPORT TARGMAX gives NAMES the --max-targets limit, and NAMES stops there."""
        srv = await start_server(self, flood_rate=0, max_targets=2)
        c = await srv.connect()
        c.send("NICK t")
        c.send("USER t 0 * :T")
        isupport = await c.expect(lambda l: l.command == "005" and any(p.startswith("TARGMAX=") for p in l.params))
        targmax = next(p for p in isupport.params if p.startswith("TARGMAX="))
        self.assertIn("NAMES:2", targmax.split("=", 1)[1].split(","))
        await c.expect("376|422")
        c.skip()
        c.send("NAMES #x,#y,#z")
        c.send("PING :done")
        lines = await c.collect_until("PONG")
        self.assertEqual([l.params[1] for l in lines if l.command == "366"], ["#x", "#y"])


class InvitePassesLimitTests(unittest.TestCase):
    """An invited user joins a channel whose ``+l`` is reached; others still get 471."""

    @asynctest
    async def test_invite_lets_the_invitee_past_the_limit_once(self) -> None:
        """+l 1 is full: carol gets 471; after INVITE she joins; the invite is used up by the join."""
        srv = await start_server(self, flood_rate=0)
        (alice,) = await setup_channel(srv, "#full", "alice")
        alice.send("MODE #full +l 1")
        await alice.expect(mode_line("#full", "+l", "1"))
        carol = await srv.client("carol")
        dave = await srv.client("dave")
        carol.send("JOIN #full")
        self.assertEqual((await carol.expect("471")).params[1], "#full")
        alice.send("INVITE carol #full")
        await alice.expect("341")
        await carol.expect("INVITE")
        await join(carol, "#full")
        dave.send("JOIN #full")
        self.assertEqual((await dave.expect("471")).params[1], "#full")
        carol.send("PART #full")
        await carol.expect("PART")
        carol.send("JOIN #full")
        self.assertEqual((await carol.expect("471")).params[1], "#full")
