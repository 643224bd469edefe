"""IRCv3 ``draft/read-marker`` (MARKREAD): the pure marker book, then real servers on loopback: guests keep
markers per connection, an account's markers are shared by its devices, sent on JOIN before the end of
NAMES, never move back, and survive a restart."""
from __future__ import annotations

import os
import time
from typing import Any, Optional

from twisted.internet import defer, reactor
from twisted.trial import unittest

from freeq.config import Config, Listen
from freeq.core.history import format_ms
from freeq.core.markers import MarkerBook, marker_target, markread_line
from freeq.store.db import Store
from tests.support import IRCClient, ServerFixture, asynctest, sleep, start_server, start_tree

DID = "did:plc:readmarkeraaaaaaaaaaaaaa"
#: The profile read after a did:plc login resolves the DID: point it at a loopback address, which the SSRF
#: guard refuses at once, so these tests never look up plc.directory.
NO_NETWORK = {"plc_directory_url": "http://127.0.0.1:9"}


def ts(ms: int) -> str:
    """The ``timestamp=`` parameter for Unix ms ``ms``."""
    return "timestamp=" + format_ms(ms)


def is_markread(target: str) -> Any:
    return lambda l: l.command == "MARKREAD" and l.params[:1] == [target]


async def web_token_login(srv: ServerFixture, nick: str, did: str = DID,
                          caps: str = "draft/read-marker") -> IRCClient:
    """A raw client logged in as ``did`` (SASL web-token minted by the server's token store), registered."""
    import base64
    import json

    token = srv.server.web_tokens.mint(did, None)
    response = base64.urlsafe_b64encode(json.dumps(
        {"did": "", "method": "web-token", "signature": token}).encode()).rstrip(b"=").decode()
    c = await srv.connect()
    c.nick = nick
    c.send("CAP LS 302")
    c.send(f"NICK {nick}")
    c.send(f"USER {nick} 0 * :Real {nick}")
    await c.expect(lambda l: l.command == "CAP" and l.params[1:2] == ["LS"])
    c.send("CAP REQ :" + ("sasl " + caps).strip())
    await c.expect(lambda l: l.command == "CAP" and "ACK" in l.params)
    c.send("AUTHENTICATE ATPROTO-CHALLENGE")
    await c.expect("AUTHENTICATE")
    c.send(f"AUTHENTICATE {response}")
    line = await c.expect(lambda l: l.command in ("903", "904"))
    assert line.command == "903", line
    c.send("CAP END")
    await c.expect(lambda l: l.command in ("376", "422"))
    c.skip()
    return c


class MarkerBookTests(unittest.TestCase):
    """The pure parts: markers only move forward, the oldest goes over the limit, targets are checked."""

    def test_never_moves_back(self) -> None:
        book = MarkerBook(10)
        self.assertEqual(book.advance("#a", 2000, 1.0), (2000, True, None))
        self.assertEqual(book.advance("#a", 1000, 2.0), (2000, False, None))
        self.assertEqual(book.advance("#a", 2000, 3.0), (2000, False, None))
        self.assertEqual(book.get("#a"), 2000)
        self.assertIsNone(book.get("#b"))

    def test_least_recently_moved_goes_over_the_limit(self) -> None:
        book = MarkerBook(2)
        book.advance("#a", 1, 1.0)
        book.advance("#b", 1, 2.0)
        book.advance("#a", 2, 3.0)
        self.assertEqual(book.advance("#c", 1, 4.0), (1, True, "#b"))
        self.assertEqual(sorted(book.entries), ["#a", "#c"])

    def test_targets(self) -> None:
        self.assertEqual(marker_target("#Chan", 50, 30), "#chan")
        self.assertEqual(marker_target("Bob", 50, 30), "bob")
        self.assertIsNone(marker_target("#", 50, 30))
        self.assertIsNone(marker_target("bad nick!", 50, 30))
        self.assertIsNone(marker_target("x" * 31, 50, 30))
        self.assertEqual(markread_line("srv", "#c", None), b":srv MARKREAD #c *\r\n")
        self.assertEqual(markread_line("srv", "#c", 1_700_000_000_123),
                         b":srv MARKREAD #c timestamp=2023-11-14T22:13:20.123Z\r\n")


class GuestMarkerTests(unittest.TestCase):
    """A guest's markers: per connection, forward only, bad input refused with FAIL."""

    @asynctest
    async def test_set_get_and_forward_only(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        c = await srv.client("guest", caps=("draft/read-marker",))
        c.send("MARKREAD #chan")
        self.assertEqual((await c.expect(is_markread("#chan"))).params, ["#chan", "*"])
        now = int(time.time() * 1000)
        c.send(f"MARKREAD #chan {ts(now - 5000)}")
        self.assertEqual((await c.expect(is_markread("#chan"))).params[1], ts(now - 5000))
        c.send(f"MARKREAD #CHAN {ts(now - 9000)}")  # older: the stored, newer one comes back
        self.assertEqual((await c.expect(is_markread("#CHAN"))).params[1], ts(now - 5000))
        c.send("MARKREAD #chan")
        self.assertEqual((await c.expect(is_markread("#chan"))).params[1], ts(now - 5000))
        other = await srv.client("other", caps=("draft/read-marker",))
        other.send("MARKREAD #chan")
        self.assertEqual((await other.expect(is_markread("#chan"))).params, ["#chan", "*"])

    @asynctest
    async def test_future_is_clamped_to_now(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        c = await srv.client("guest")
        before = int(time.time() * 1000)
        c.send(f"MARKREAD bob {ts(before + 3_600_000)}")
        line = await c.expect(is_markread("bob"))
        self.assertLessEqual(line.params[1], ts(int(time.time() * 1000)))
        self.assertGreaterEqual(line.params[1], ts(before))

    @asynctest
    async def test_bad_input_gets_fail(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        c = await srv.client("guest", caps=("draft/read-marker",))
        c.send("MARKREAD")
        self.assertEqual((await c.expect("FAIL")).params[:2], ["MARKREAD", "NEED_MORE_PARAMS"])
        for bad in ("timestamp=yesterday", "*", "timestamp=2024-13-01T00:00:00.000Z", "2024-01-01T00:00:00.000Z"):
            c.send(f"MARKREAD #chan {bad}")
            self.assertEqual((await c.expect("FAIL")).params[:3], ["MARKREAD", "INVALID_PARAMS", "#chan"])
        c.send("MARKREAD :#a b")
        self.assertEqual((await c.expect("FAIL")).params[:3], ["MARKREAD", "INVALID_PARAMS", "*"])
        c.send("MARKREAD #chan")
        self.assertEqual((await c.expect(is_markread("#chan"))).params, ["#chan", "*"])  # nothing was set

    @asynctest
    async def test_join_sends_marker_before_end_of_names(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        c = await srv.client("guest", caps=("draft/read-marker",))
        now = int(time.time() * 1000) - 1000
        c.send(f"MARKREAD #room {ts(now)}")
        await c.expect(is_markread("#room"))
        c.send("JOIN #room")
        lines = await c.collect_until(lambda l: l.command == "366")
        commands = [l.command for l in lines]
        self.assertIn("MARKREAD", commands)
        self.assertLess(commands.index("JOIN"), commands.index("MARKREAD"))
        self.assertEqual(lines[commands.index("MARKREAD")].params, ["#room", ts(now)])
        plain = await srv.client("plain")
        plain.send("JOIN #room")
        lines = await plain.collect_until(lambda l: l.command == "366")
        self.assertNotIn("MARKREAD", [l.command for l in lines])  # no cap, no unasked MARKREAD


class AccountMarkerTests(unittest.TestCase):
    """An account's markers: shared by its devices, told to the others, and stored."""

    @asynctest
    async def test_devices_share_and_are_told(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        a = await web_token_login(srv, "alice")
        b = await web_token_login(srv, "alice2")  # the second device adopts the identity's nick
        no_cap = await web_token_login(srv, "alice3", caps="")
        now = int(time.time() * 1000) - 1000
        a.send(f"MARKREAD #chan {ts(now)}")
        self.assertEqual((await a.expect(is_markread("#chan"))).params[1], ts(now))
        self.assertEqual((await b.expect(is_markread("#chan"))).params[1], ts(now))
        await no_cap.expect_not(lambda l: l.command == "MARKREAD", after=(a, b))
        b.send("MARKREAD #chan")
        self.assertEqual((await b.expect(is_markread("#chan"))).params[1], ts(now))
        a.send(f"MARKREAD #chan {ts(now - 10)}")  # does not move: nobody else is told
        await a.expect(is_markread("#chan"))
        await b.expect_not(is_markread("#chan"), after=(a,))
        # A guest (another identity) sees none of it.
        g = await srv.client("guest")
        g.send("MARKREAD #chan")
        self.assertEqual((await g.expect(is_markread("#chan"))).params[1], "*")

    @asynctest
    async def test_read_back_from_the_store(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        a = await web_token_login(srv, "alice")
        now = int(time.time() * 1000) - 1000
        a.send(f"MARKREAD Bob {ts(now)}")
        await a.expect(is_markread("Bob"))
        a.disconnect()
        srv.server.read_markers.accounts.clear()  # forgotten in memory: the next login reads the store
        b = await web_token_login(srv, "alice")
        b.send("MARKREAD bob")
        self.assertEqual((await b.expect(is_markread("bob"))).params[1], ts(now))

    @asynctest
    async def test_survives_a_restart_and_is_sent_on_join(self) -> None:
        data_dir = os.path.abspath(self.mktemp())
        config = Config(listen=Listen("127.0.0.1", 0), tls_listen=None, data_dir=data_dir, flood_rate=0,
                        plc_directory_url=NO_NETWORK["plc_directory_url"])
        top, port = start_tree(config)
        srv = ServerFixture(getattr(top, "irc_server"), port, None, [], [], reactor)
        try:
            a = await web_token_login(srv, "alice")
            now = int(time.time() * 1000) - 1000
            a.send(f"MARKREAD #Keep {ts(now)}")
            await a.expect(is_markread("#Keep"))
        finally:
            await top.stopService()
            await srv.stop()
        top, port = start_tree(config)
        srv = ServerFixture(getattr(top, "irc_server"), port, None, [], [], reactor)
        self.addCleanup(lambda: defer.ensureDeferred(_stop(top, srv)))
        b = await web_token_login(srv, "alice")
        for _ in range(200):  # the login started reading the markers on the DB thread
            if DID in srv.server.read_markers.accounts:
                break
            await sleep(0.01)
        b.send("JOIN #keep")
        lines = await b.collect_until(lambda l: l.command == "366")
        markers = [l for l in lines if l.command == "MARKREAD"]
        self.assertEqual([m.params for m in markers], [["#keep", ts(now)]])


async def _stop(top: Any, srv: ServerFixture) -> None:
    await top.stopService()
    await srv.stop()


class LateReadTests(unittest.TestCase):
    """A JOIN that comes before the account's markers are read gets ``*``, then the marker once read."""

    @asynctest
    async def test_marker_follows_when_read(self) -> None:
        srv = await start_server(self, **NO_NETWORK)
        a = await web_token_login(srv, "alice")
        now = int(time.time() * 1000) - 1000
        a.send(f"MARKREAD #late {ts(now)}")
        await a.expect(is_markread("#late"))
        srv.server.read_markers.accounts.clear()
        store = srv.server.store
        assert store is not None
        gate: defer.Deferred = defer.Deferred()
        real = store.load_read_markers

        def held(did: str, limit: int) -> defer.Deferred:
            d = real(did, limit)
            return gate.addCallback(lambda _: d)

        store.load_read_markers = held  # type: ignore[method-assign]
        a.send("JOIN #late")
        lines = await a.collect_until(lambda l: l.command == "366")
        self.assertEqual([l.params for l in lines if l.command == "MARKREAD"], [["#late", "*"]])
        gate.callback(None)
        self.assertEqual((await a.expect(is_markread("#late"))).params, ["#late", ts(now)])


class StoreMarkerTests(unittest.TestCase):
    """The store keeps the larger time whatever order writes arrive in."""

    @asynctest
    async def test_upsert_keeps_the_larger(self) -> None:
        store = Store.open(":memory:", reactor)
        store.start()
        self.addCleanup(store.stop)
        store.save_read_marker(DID, "#c", 2000, 10)
        store.save_read_marker(DID, "#c", 1000, 11)
        store.save_read_marker(DID, "bob", 5, 12)
        rows: Optional[dict[str, tuple[int, int]]] = await store.load_read_markers(DID, 10)
        self.assertEqual(rows, {"#c": (2000, 11), "bob": (5, 12)})
        store.delete_read_marker(DID, "bob")
        self.assertEqual(await store.load_read_markers(DID, 10), {"#c": (2000, 11)})
        self.assertEqual(await store.load_read_markers("did:plc:other", 10), {})



class SDKMarkerTests(unittest.TestCase):
    """The Python SDK's helpers: mark_read / get_read_marker, and another device's update as an event."""

    @asynctest
    async def test_two_devices(self) -> None:
        from freeq.client.connection import DEFAULT_CAPS
        from freeq.client.errors import IRCError
        from freeq.client.markers import MarkRead
        from tests.test_client_sdk import sdk
        from tests.test_sasl import new_credential

        srv = await start_server(self, **NO_NETWORK)
        cred = new_credential()
        caps = DEFAULT_CAPS + ("draft/read-marker",)
        phone = await sdk(self, srv.port, "alice", credential=cred, caps=caps)
        laptop = await sdk(self, srv.port, "alice2", credential=cred, caps=caps)
        self.assertIsNone(await phone.get_read_marker("#chan"))
        when = time.time() - 60
        told = laptop.on_markread.wait(lambda m: m.target == "#chan")
        stamp = await phone.mark_read("#chan", when)
        self.assertEqual(stamp, format_ms(int(round(when * 1000))))
        self.assertEqual(await told, MarkRead("#chan", stamp))
        self.assertEqual(laptop.read_markers["#chan"], stamp)
        self.assertEqual(await laptop.mark_read("#CHAN", when - 30), stamp)  # forward only
        with self.assertRaises(IRCError) as caught:
            await phone.mark_read("#chan", "yesterday")
        self.assertEqual(caught.exception.params[:2], ["MARKREAD", "INVALID_PARAMS"])


class FederatedMarkerTests(unittest.TestCase):
    """A DID connected to two federated servers sees its marker move on both; only a server hosting a user of
    the account may move it."""

    @asynctest
    async def test_both_servers(self) -> None:
        from tests.s2s_support import start_line, wait_for

        a, b = await start_line(self, "a.test", "b.test", **NO_NETWORK)
        on_a = await web_token_login(a.fixture, "alice")
        on_b = await web_token_login(b.fixture, "alicb")
        await wait_for(lambda: b.knows("alice") and a.knows("alicb"), what="each other's user")
        now = int(time.time() * 1000) - 5000
        on_a.send(f"MARKREAD #fed {ts(now)}")
        await on_a.expect(is_markread("#fed"))
        self.assertEqual((await on_b.expect(is_markread("#fed"))).params, ["#fed", ts(now)])
        on_b.send(f"MARKREAD #fed {ts(now - 1000)}")  # older: stays, nothing goes out
        self.assertEqual((await on_b.expect(is_markread("#fed"))).params[1], ts(now))
        await on_a.expect_not(is_markread("#fed"), after=(on_b,))
        on_b.send(f"MARKREAD Carol {ts(now + 1000)}")
        await on_b.expect(is_markread("Carol"))
        self.assertEqual((await on_a.expect(is_markread("carol"))).params, ["carol", ts(now + 1000)])
        on_a.send("MARKREAD carol")
        self.assertEqual((await on_a.expect(is_markread("carol"))).params[1], ts(now + 1000))
        guest = await b.client("guest", caps=("draft/read-marker",))
        guest.send("MARKREAD #fed")
        self.assertEqual((await guest.expect(is_markread("#fed"))).params[1], "*")

    @asynctest
    async def test_forged_markers_refused(self) -> None:
        from tests.s2s_support import link_raw_peer, wait_for

        node, mallory, _client = await link_raw_peer(self, "a.test", "op")
        victim = await web_token_login(node.fixture, "alice")
        mallory.send(mallory.user(1, "mal"))  # a guest of mallory's: no account
        await wait_for(lambda: node.knows("mal"), what="mallory's user")
        when = int(time.time() * 1000) - 1000
        fields = {"uid": mallory.uid(1), "target": "#chan", "read_ms": when}
        mallory.send(mallory.event("marker", fields, to=node.id))  # a user without the account
        mallory.send(mallory.event("marker", dict(fields, uid="0123456789abcdef.x.1"), to=node.id))  # not its user
        mallory.send(mallory.event("marker", fields))  # flooded, not routed
        mallory.send(mallory.event("marker", dict(fields, target="#Chan"), to=node.id))  # not folded
        mallory.send(mallory.user(2, "mal2"))  # the link is in order: once mal2 is known, all of the above was read
        await wait_for(lambda: node.knows("mal2"), what="mallory's second user")
        victim.send("MARKREAD #chan")
        self.assertEqual((await victim.expect(is_markread("#chan"))).params[1], "*")
        self.assertNotIn("#chan", node.server.read_markers.accounts.get(DID, MarkerBook(1)).entries)
        stats = node.federation.stats
        self.assertEqual((stats.get("rejected:unauthorized"), stats.get("rejected:forged"), stats.get("malformed")),
                         (2, 1, 1))
        # The same event from a user of the account's (the origin hosts the account): applied, forward only.
        mallory.send(mallory.user(3, "mal3", account=DID))
        await wait_for(lambda: node.knows("mal3"), what="mallory's user of the account")
        mallory.send(mallory.event("marker", dict(fields, uid=mallory.uid(3)), to=node.id))
        self.assertEqual((await victim.expect(is_markread("#chan"))).params, ["#chan", ts(when)])


    @asynctest
    async def test_relay_peer_cannot_move_an_accounts_marker(self) -> None:
        """A relay peer's user claiming the account (its claims are shown, never obeyed) may not move the account's
        marker here: refused as unauthorized, the victim's marker stays unset."""
        from tests.s2s_support import link_raw_peer, wait_for

        node, mallory, _client = await link_raw_peer(self, "a.test", "op", trust="relay")
        victim = await web_token_login(node.fixture, "alice")
        mallory.send(mallory.user(1, "mal", account=DID))
        await wait_for(lambda: node.knows("mal"), what="mallory's user of the account")
        when = int(time.time() * 1000) - 1000
        mallory.send(mallory.event("marker", {"uid": mallory.uid(1), "target": "#chan", "read_ms": when},
                                   to=node.id))
        mallory.send(mallory.user(2, "mal2"))  # the link is in order: once mal2 is known, the marker was read
        await wait_for(lambda: node.knows("mal2"), what="mallory's second user")
        victim.send("MARKREAD #chan")
        self.assertEqual((await victim.expect(is_markread("#chan"))).params[1], "*")
        self.assertEqual(node.federation.stats.get("rejected:unauthorized"), 1)


class FederatedSDKMarkerTests(unittest.TestCase):
    """The Python SDK on two federated servers: one identity, a device on each, the marker follows."""

    @asynctest
    async def test_sdk_devices_on_two_servers(self) -> None:
        from freeq.client.connection import DEFAULT_CAPS
        from tests.s2s_support import start_line, wait_for
        from tests.test_client_sdk import sdk
        from tests.test_sasl import new_credential

        a, b = await start_line(self, "a.test", "b.test", **NO_NETWORK)
        cred = new_credential()
        caps = DEFAULT_CAPS + ("draft/read-marker",)
        laptop = await sdk(self, a.fixture.port, "alice", credential=cred, caps=caps)
        phone = await sdk(self, b.fixture.port, "alicb", credential=cred, caps=caps)
        await wait_for(lambda: a.knows(phone.nick) and b.knows(laptop.nick), what="each other's device")
        when = time.time() - 120
        told = phone.on_markread.wait(lambda m: m.target == "#fed")
        stamp = await laptop.mark_read("#fed", when)
        self.assertEqual((await told).timestamp, stamp)
        self.assertEqual(await phone.get_read_marker("#fed"), stamp)
        back = laptop.on_markread.wait(lambda m: m.target == "#fed" and m.timestamp != stamp)
        later = await phone.mark_read("#fed", when + 60)
        self.assertEqual((await back).timestamp, later)
        self.assertEqual(laptop.read_markers["#fed"], later)
