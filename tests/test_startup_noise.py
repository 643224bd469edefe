"""Start-up noise (issue #13 item 8): two servers that list each other link once, quietly; no "MOTD File is
missing" when none is configured; a user's modes are announced once, after 001."""
from __future__ import annotations

from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.s2s_support import LogCapture, Node, keys, settle, start_node, wait_for
from tests.support import asynctest, sleep, start_server
from tests.test_sasl import authenticate, finish, new_credential, open_negotiation


class SimultaneousDialTests(unittest.TestCase):
    """A and B each dial the other at the same moment (both list the other as a peer)."""

    timeout = 40

    async def pair(self, n: int) -> tuple[Node, Node, Any, Any]:
        """Servers a<n> and b<n> allowing each other, alice<n> on one and bob<n> on the other, both in #x."""
        (ka, ida), (kb, idb) = keys(2)
        a = await start_node(self, f"a{n}.test", allowed=[idb], key=ka)
        b = await start_node(self, f"b{n}.test", allowed=[ida], key=kb)
        alice = await a.client(f"alice{n}")
        bob = await b.client(f"bob{n}")
        alice.send("JOIN #x")
        bob.send("JOIN #x")
        await alice.expect("366")
        await bob.expect("366")
        return a, b, alice, bob

    @asynctest
    async def test_both_dial_one_link_no_netsplit(self) -> None:
        """The two dials resolve to one link without a netsplit: no "S2S netsplit" or "duplicate link" line, and no
        client sees a QUIT. Three pairs at once: on a busy machine any one of them may dial in either order."""
        logs = LogCapture(self)
        pairs = [await self.pair(n) for n in range(3)]
        for a, b, _alice, _bob in pairs:
            a.link_to(b)
            b.link_to(a)
        for n, (a, b, alice, bob) in enumerate(pairs):
            await wait_for(lambda: a.linked(b) and b.linked(a), what=f"link a{n}-b{n}")
            await bob.expect(lambda l: l.command == "JOIN" and (l.source or "").startswith(f"alice{n}!"), timeout=10)
        nodes = [node for a, b, _alice, _bob in pairs for node in (a, b)]
        await settle(*nodes)
        await sleep(1.5)  # a late duplicate would replace a link within this (both dials were at once)
        await settle(*nodes)
        self.assertEqual(logs.find("netsplit"), [])
        self.assertEqual(logs.find("duplicate link"), [])
        for a, b, alice, bob in pairs:
            self.assertTrue(a.linked(b) and b.linked(a))
            self.assertEqual(len([l for l in a.federation.links.values() if l.state == "open"]), 1)
            await alice.expect_not("QUIT")
            await bob.expect_not("QUIT")


class WelcomeBurstTests(unittest.TestCase):
    """What a registering client is told: no alarming MOTD text, its modes once."""

    @asynctest
    async def test_no_motd_configured_is_quiet(self) -> None:
        """Without --motd/--motd-file the burst ends with 422 (clients rely on it), not "MOTD File is missing",
        and nothing is logged about it; MOTD answers the same."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        srv = await start_server(self)
        c = await srv.connect()
        c.send("NICK quiet")
        c.send("USER quiet 0 * :Quiet")
        burst = await c.collect_until(lambda l: l.command in ("376", "422"))
        self.assertEqual(burst[-1].command, "422")
        self.assertEqual(burst[-1].params, ["quiet", "There is no message of the day"])
        c.send("MOTD")
        again = await c.expect(lambda l: l.command in ("375", "422"))
        self.assertEqual(again.params[-1], "There is no message of the day")
        lines = [formatEvent(e) for e in observer]
        self.assertEqual([t for t in lines if "MOTD" in t or "motd" in t], [])

    @asynctest
    async def test_oper_did_mode_once_after_001(self) -> None:
        """A DID operator authenticating before registration sees exactly one MODE for itself (+o), after 001."""
        cred = new_credential()
        srv = await start_server(self, oper_dids=(cred.did,))
        c = await open_negotiation(srv, "boss")
        self.assertEqual((await authenticate(c, cred)).command, "903")
        await finish(c)
        await c.sync()
        commands = [l.command for l in c.lines]
        modes = [l for l in c.lines if l.command == "MODE" and l.params[:1] == ["boss"]]
        self.assertEqual([m.params for m in modes], [["boss", "+o"]])
        self.assertLess(commands.index("001"), commands.index("MODE"))
