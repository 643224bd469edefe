"""UTF8ONLY (https://ircv3.net/specs/extensions/utf8-only) over real loopback sockets: the ISUPPORT token,
and a line that is not UTF-8 refused with ``FAIL <command> INVALID_UTF8``, never relayed, the connection kept."""
from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.support import asynctest, sleep, start_server
from tests.test_limits import until
from tests.test_channels import join, setup_channel

_TEXT = "Message rejected, your IRC software MUST use UTF-8 encoding on this network"


def fail(command: str) -> Any:
    """A predicate for ``FAIL <command> INVALID_UTF8 :...``."""
    return lambda l: l.command == "FAIL" and l.params == [command, "INVALID_UTF8", _TEXT]


class UTF8OnlyTests(unittest.TestCase):
    """The token is advertised; non-UTF-8 input is refused command by command."""

    @asynctest
    async def test_isupport_advertises_utf8only(self) -> None:
        """The welcome burst's 005 lines carry the bare UTF8ONLY token."""
        srv = await start_server(self)
        c = await srv.connect()
        c.send("NICK u8")
        c.send("USER u8 0 * :U")
        lines = await c.collect_until("376|422")
        tokens = [p for l in lines if l.command == "005" for p in l.params[1:-1]]
        self.assertIn("UTF8ONLY", tokens)

    @asynctest
    async def test_privmsg_to_a_channel_is_refused_not_relayed(self) -> None:
        """A non-UTF-8 PRIVMSG gets FAIL PRIVMSG INVALID_UTF8 and reaches nobody; the next line goes through."""
        srv = await start_server(self, flood_rate=0)
        alice, bob = await setup_channel(srv, "#u", "alice", "bob")
        alice.send(b"PRIVMSG #u :caf\xe9 \xff\xfe\r\n")
        await alice.expect(fail("PRIVMSG"))
        await bob.expect_not("PRIVMSG", after=[alice])
        alice.send("PRIVMSG #u :café")
        self.assertEqual((await bob.expect("PRIVMSG")).params, ["#u", "café"])
        self.assertFalse(alice.is_closed)

    @asynctest
    async def test_topic_and_notice_are_refused(self) -> None:
        """A non-UTF-8 TOPIC leaves the topic as it was; a NOTICE is refused like a PRIVMSG."""
        srv = await start_server(self, flood_rate=0)
        alice, bob = await setup_channel(srv, "#u", "alice", "bob")
        alice.send(b"TOPIC #u :bad \xc3\x28\r\n")
        await alice.expect(fail("TOPIC"))
        alice.send(b"NOTICE bob :\x80\r\n")
        await alice.expect(fail("NOTICE"))
        await bob.expect_not(lambda l: l.command in ("TOPIC", "NOTICE"), after=[alice])
        self.assertEqual(srv.server.channels["#u"].topic, "")

    @asynctest
    async def test_user_with_a_non_utf8_realname_is_refused_before_registration(self) -> None:
        """``USER u s e :<non-UTF-8>`` (the spec's example) is refused; a valid USER then registers."""
        srv = await start_server(self)
        c = await srv.connect()
        c.send("NICK reg8")
        c.send(b"USER u s e :r\xe9al\r\n")
        await c.expect(fail("USER"))
        await c.expect_not("001")
        c.send("USER u 0 * :réal")
        await c.expect("001")
        self.assertEqual(srv.server.users["reg8"].realname, "réal")

    @asynctest
    async def test_an_undecodable_command_word_is_named_star(self) -> None:
        """The FAIL echoes only a plausible command word; binary junk is named ``*``."""
        srv = await start_server(self, flood_rate=0)
        c = await srv.client("junk")
        c.send(b"\xff\xfe\x01x y\r\n")
        await c.expect(fail("*"))
        self.assertFalse(c.is_closed)

    @asynctest
    async def test_refusals_cost_flood_tokens_and_keep_their_turn(self) -> None:
        """Behind a full bucket a non-UTF-8 line waits its turn (fake lag) like any other line: the FAIL
        arrives between the replies to the lines sent around it."""
        clock = Clock()
        srv = await start_server(self, clock=clock, flood_burst=2, flood_rate=1, flood_queue=5)
        c = await srv.client("lag")
        clock.advance(10)
        c.send(b"FOO1\r\nFOO2\r\nFOO3\r\nBAR \xff\r\nFOO4\r\n")
        answered = lambda: [(l.command, l.params[1] if l.command == "421" else l.params[0])  # noqa: E731
                            for l in c.lines if l.command in ("421", "FAIL")]
        await until(lambda: len(answered()) == 2)
        await sleep(0.05)
        self.assertEqual(len(answered()), 2, "queued lines ran before the clock moved")
        for _ in range(5):
            clock.advance(1)
            await sleep(0.05)
        self.assertEqual(answered(), [("421", "FOO1"), ("421", "FOO2"), ("421", "FOO3"), ("FAIL", "BAR"),
                                      ("421", "FOO4")])
        self.assertFalse(c.is_closed)

    @asynctest
    async def test_join_of_a_non_utf8_channel_name_is_refused(self) -> None:
        """JOIN with a non-UTF-8 channel name creates nothing."""
        srv = await start_server(self, flood_rate=0)
        c = await srv.client("joiner")
        c.send(b"JOIN #caf\xe9\r\n")
        await c.expect(fail("JOIN"))
        await join(c, "#ok")
        self.assertEqual(sorted(srv.server.channels), ["#ok"])


class UTF8OnlyWebSocketTests(unittest.TestCase):
    """The WebSocket transport shares the framing: a binary frame that is not UTF-8 is refused the same way."""

    @asynctest
    async def test_binary_frame_not_utf8_is_refused(self) -> None:
        """binary.ircv3.net: a PRIVMSG frame with invalid UTF-8 gets FAIL PRIVMSG INVALID_UTF8 and is not
        relayed; the connection stays."""
        from tests.support import start_web
        from tests.test_web_ws import ws_connect

        srv = await start_server(self, flood_rate=0)
        web = await start_web(self, srv)
        bob = await srv.client("bob")
        ws = await ws_connect(self, web, ["binary.ircv3.net"])
        await ws.register("webby")
        ws.send(b"PRIVMSG bob :\xff\xfe", binary=True)
        await ws.expect(fail("PRIVMSG"))
        await bob.expect_not("PRIVMSG", after=[])
        ws.send(b"PRIVMSG bob :fine", binary=True)
        self.assertEqual((await bob.expect("PRIVMSG")).params, ["bob", "fine"])
