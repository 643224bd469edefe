"""``extended-monitor`` (https://ircv3.net/specs/extensions/extended-monitor) over real loopback sockets: a
client that MONITORs a nick gets its AWAY / ACCOUNT / CHGHOST / SETNAME lines as if they shared a channel,
only for the caps it negotiated too, and never twice when they do share one; also across federation."""
from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from tests.s2s_support import start_pair, wait_for
from tests.support import IRCClient, ServerFixture, asynctest, start_server
from tests.test_channels import join

DID = "did:plc:extmon0000000000000000000"


async def watch(srv: ServerFixture, nick: str, target: str, caps: tuple[str, ...]) -> IRCClient:
    """Register ``nick`` with ``caps`` and MONITOR ``target`` (online)."""
    c = await srv.client(nick, caps=caps)
    c.send(f"MONITOR + {target}")
    await c.expect("730")
    return c


def about(nick: str, command: str) -> Any:
    """A predicate for a ``command`` line whose source is ``nick``."""
    return lambda l: l.command == command and (l.source or "").split("!")[0] == nick


class ExtendedMonitorTests(unittest.TestCase):
    """One server: who gets the lines about a monitored nick."""

    @asynctest
    async def test_cap_is_advertised(self) -> None:
        """``extended-monitor`` is in CAP LS and can be requested."""
        srv = await start_server(self)
        c = await srv.client("asker", caps=("extended-monitor",))
        c.send("CAP LIST")
        self.assertIn("extended-monitor", (await c.expect("CAP")).params[-1].split())

    @asynctest
    async def test_away_reaches_a_watcher_without_a_shared_channel(self) -> None:
        """AWAY and back: a watcher with extended-monitor and away-notify sees both lines."""
        srv = await start_server(self, flood_rate=0)
        bob = await srv.client("bob")
        watcher = await watch(srv, "watcher", "bob", ("extended-monitor", "away-notify"))
        bob.send("AWAY :lunch")
        line = await watcher.expect(about("bob", "AWAY"))
        self.assertEqual(line.params, ["lunch"])
        bob.send("AWAY")
        line = await watcher.expect(about("bob", "AWAY"))
        self.assertEqual(line.params, [])

    @asynctest
    async def test_only_for_caps_the_watcher_negotiated(self) -> None:
        """Without extended-monitor nothing arrives; with it, only the lines of the caps also negotiated
        (setname here, not away-notify)."""
        srv = await start_server(self, flood_rate=0)
        bob = await srv.client("bob")
        plain = await watch(srv, "plain", "bob", ("away-notify", "setname"))
        partial = await watch(srv, "partial", "bob", ("extended-monitor", "setname"))
        bob.send("AWAY :gone")
        bob.send("SETNAME :Robert")
        line = await partial.expect(about("bob", "SETNAME"))
        self.assertEqual(line.params, ["Robert"])
        await partial.expect_not(about("bob", "AWAY"), after=[bob])
        await plain.expect_not(lambda l: l.command in ("AWAY", "SETNAME"), after=[bob])

    @asynctest
    async def test_a_shared_channel_does_not_double_the_line(self) -> None:
        """A watcher that also shares a channel gets the AWAY once."""
        srv = await start_server(self, flood_rate=0)
        bob = await srv.client("bob")
        watcher = await watch(srv, "watcher", "bob", ("extended-monitor", "away-notify"))
        await join(bob, "#both")
        await join(watcher, "#both")
        watcher.skip()
        bob.send("AWAY :once")
        await watcher.expect(about("bob", "AWAY"))
        await watcher.expect_not(about("bob", "AWAY"), after=[bob])

    @asynctest
    async def test_account_and_chghost(self) -> None:
        """A login (ACCOUNT) and a host change (CHGHOST) reach watchers with account-notify / chghost, and
        a watcher without chghost gets no QUIT/JOIN fallback (that is for channel members)."""
        srv = await start_server(self, flood_rate=0)
        bob = await srv.client("bob")
        watcher = await watch(srv, "watcher", "bob", ("extended-monitor", "account-notify", "chghost"))
        other = await watch(srv, "other", "bob", ("extended-monitor", "account-notify"))
        user = srv.server.users["bob"]
        srv.server.set_account(user, DID)
        self.assertEqual((await watcher.expect(about("bob", "ACCOUNT"))).params, [DID])
        self.assertEqual((await other.expect(about("bob", "ACCOUNT"))).params, [DID])
        srv.server.change_host(user, "~bob", "freeq/plc/extmon")
        self.assertEqual((await watcher.expect(about("bob", "CHGHOST"))).params, ["~bob", "freeq/plc/extmon"])
        await other.expect_not(lambda l: l.command in ("CHGHOST", "QUIT", "JOIN"), after=[bob])


class ExtendedMonitorFederationTests(unittest.TestCase):
    """A watcher on A of a nick on B sees B's user's AWAY and SETNAME."""

    timeout = 30

    @asynctest
    async def test_remote_away_and_setname(self) -> None:
        """carol on B (no channel shared with the watcher on A) goes away and changes her real name."""
        a, b, alice, bob = await start_pair(self)
        carol = await b.client("carol")
        await wait_for(lambda: a.knows("carol"), what="carol on A")
        watcher = await a.client("watcher", caps=("extended-monitor", "away-notify", "setname"))
        watcher.send("MONITOR + carol")
        await watcher.expect("730")
        carol.send("AWAY :far away")
        self.assertEqual((await watcher.expect(about("carol", "AWAY"), timeout=10)).params, ["far away"])
        carol.send("SETNAME :Caroline")
        self.assertEqual((await watcher.expect(about("carol", "SETNAME"), timeout=10)).params, ["Caroline"])
