"""Resource limits over real loopback sockets: connection caps, framing, floods, slow readers, timeouts."""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.net.connection import IRCProtocol
from tests.support import IRCClient, ServerFixture, asynctest, sleep, start_server


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``cond`` on the real reactor until it holds; fail after ``timeout`` seconds."""
    waited = 0.0
    while not cond():
        if waited >= timeout:
            raise AssertionError(f"condition not met in {timeout}s")
        await sleep(0.01)
        waited += 0.01


def logged(observer: EventLoggingObserver, text: str) -> list[str]:
    """The formatted log messages seen by ``observer`` that contain ``text``."""
    return [m for m in (formatEvent(e) for e in observer) if text in m]


def server_side(srv: ServerFixture, nick: str) -> IRCProtocol:
    """The server's protocol instance for the registered (lower-case) ``nick``."""
    conn = srv.server.users[nick].conn
    assert isinstance(conn, IRCProtocol)
    return conn


async def pong(c: IRCClient, token: str = "alive") -> None:
    """Prove the connection still works: a PING is answered with the matching PONG."""
    c.send(f"PING {token}")
    await c.expect(lambda l: l.command == "PONG" and l.params[-1:] == [token])


class ConnectionLimitTests(unittest.TestCase):
    """Per-IP and total connection caps across the TCP and TLS listeners."""

    @asynctest
    async def test_per_ip_limit_counts_tcp_and_tls_together(self) -> None:
        """With a per-IP limit of 3, a 4th connection over TLS or TCP is refused with ERROR and logged."""
        srv = await start_server(self, tls=True, max_connections_per_ip=3)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        a = await srv.client("a1")
        await srv.client("b1", tls=True)
        await srv.client("c1")
        refused_tls = await srv.connect(tls=True)
        line = await refused_tls.expect("ERROR")
        self.assertIn("Too many connections from your IP", line.raw)
        await refused_tls.closed
        refused_tcp = await srv.connect()
        await refused_tcp.expect("ERROR")
        await refused_tcp.closed
        self.assertEqual(len(srv.server.connections), 3)
        self.assertEqual(len(logged(observer, "per-IP limit reached")), 2)

        a.disconnect()
        await a.closed
        await until(lambda: len(srv.server.connections) == 2)
        again = await srv.client("d1", tls=True)
        await pong(again)

    @asynctest
    async def test_max_clients_refuses_beyond_total(self) -> None:
        """With max_clients=2 a third connection is refused as 'Server is full'; a freed slot is reusable."""
        srv = await start_server(self, max_clients=2)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        first = await srv.client("one")
        await srv.client("two")
        third = await srv.connect()
        line = await third.expect("ERROR")
        self.assertIn("Server is full", line.raw)
        await third.closed
        self.assertEqual(len(logged(observer, "Server is full")), 1)
        self.assertEqual(len(logged(observer, "client limit reached")), 1)
        self.assertEqual(len(logged(observer, "per-IP limit reached")), 0)
        first.disconnect()
        await until(lambda: len(srv.server.connections) == 1)
        await srv.client("three")


class FramingTests(unittest.TestCase):
    """Over-long lines become 417 and the connection keeps working; buffering stays bounded."""

    @asynctest
    async def test_long_line_without_tags_gets_417(self) -> None:
        """A 600-byte line is answered with 417, not delivered, and the connection keeps working."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        line = "PRIVMSG bob :" + "x" * (600 - len("PRIVMSG bob :"))
        alice.send(line)
        reply = await alice.expect("417")
        self.assertEqual(reply.params[0], "alice")
        await pong(alice)
        await bob.expect_not("PRIVMSG", after=(alice,))
        alice.send("PRIVMSG bob :short")
        self.assertEqual((await bob.expect("PRIVMSG")).params, ["bob", "short"])

    @asynctest
    async def test_line_of_exactly_512_bytes_is_accepted(self) -> None:
        """A line of 510 bytes plus CRLF (the RFC limit) is accepted; one more byte is 417."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        prefix = "PRIVMSG bob :"
        alice.send(prefix + "y" * (510 - len(prefix)))
        got = await bob.expect("PRIVMSG")
        self.assertEqual(len(got.params[1]), 510 - len(prefix))
        alice.send(prefix + "y" * (511 - len(prefix)))
        await alice.expect("417")

    @asynctest
    async def test_oversized_tags_get_417(self) -> None:
        """Client tag data over 4094 bytes (message-tags) gets 417; 4094 bytes are accepted."""
        srv = await start_server(self)
        c = await srv.client("tagger")
        c.send("@+big=" + "t" * 8200 + " PING huge")
        await c.expect("417")
        c.send("@+ok=" + "t" * (4094 - len("+ok=")) + " PING fits")
        pong_line = await c.expect("PONG")
        self.assertEqual(pong_line.params[-1], "fits")
        await c.expect_not("417")

    @asynctest
    async def test_endless_line_is_discarded_with_one_417_and_bounded_buffer(self) -> None:
        """20000 bytes with no newline: one 417, the rest dropped up to the newline, the buffer bounded."""
        srv = await start_server(self)
        c = await srv.client("big")
        proto = server_side(srv, "big")
        limit = srv.server.config.max_line_bytes + srv.server.config.max_tag_bytes
        sizes: list[int] = []
        original = proto.dataReceived

        def recording(data: bytes) -> None:
            original(data)
            sizes.append(len(proto._buffer))

        proto.dataReceived = recording  # type: ignore[method-assign]
        for _ in range(5):
            c.send(b"A" * 4000)
            await sleep(0.01)
        c.send(b"PRIVMSG big :still discarded\r\nPING after\r\n")
        await c.expect(lambda l: l.command == "PONG" and l.params[-1] == "after")
        self.assertEqual(len([l for l in c.lines if l.command == "417"]), 1)
        self.assertFalse([l for l in c.lines if l.command == "PRIVMSG"])
        self.assertTrue(sizes)
        self.assertLessEqual(max(sizes), limit)
        self.assertEqual(proto._buffer, b"")
        await pong(c)


class BadInputTests(unittest.TestCase):
    """Malformed input is cleaned up or ignored, never a traceback or a dropped connection."""

    @asynctest
    async def test_nul_bytes_are_stripped(self) -> None:
        """NUL bytes inside a line are removed before the message is delivered."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        alice.send(b"PRIVMSG bob :he\x00llo\x00\r\n")
        self.assertEqual((await bob.expect("PRIVMSG")).params, ["bob", "hello"])

    @asynctest
    async def test_invalid_utf8_is_refused(self) -> None:
        """UTF8ONLY (issue #12): an undecodable line is refused with FAIL INVALID_UTF8, never relayed
        (tests/test_utf8only.py has the rest)."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        alice.send(b"PRIVMSG bob :caf\xe9 \xff\xfeok\r\n")
        self.assertEqual((await alice.expect("FAIL")).params[:2], ["PRIVMSG", "INVALID_UTF8"])
        await bob.expect_not("PRIVMSG", after=[alice])

    @asynctest
    async def test_bare_lf_line_endings(self) -> None:
        """Lines ended by a bare LF are accepted, including registration itself."""
        srv = await start_server(self)
        c = await srv.connect()
        c.send(b"NICK lf\nUSER lf 0 * :Bare LF\n")
        await c.expect("001")
        c.send(b"PING one\nPING two\n")
        first = await c.expect("PONG")
        second = await c.expect("PONG")
        self.assertEqual([first.params[-1], second.params[-1]], ["one", "two"])

    @asynctest
    async def test_line_split_byte_by_byte(self) -> None:
        """A line delivered one byte per write is reassembled into one message."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        for byte in b"PRIVMSG bob :one byte at a time\r\n":
            alice.send(bytes([byte]))
            await sleep(0.002)
        self.assertEqual((await bob.expect("PRIVMSG")).params, ["bob", "one byte at a time"])

    @asynctest
    async def test_empty_and_degenerate_lines_are_ignored(self) -> None:
        """Empty lines, blank lines, '@tagsonly' and ':prefixonly' produce no reply and no disconnect."""
        srv = await start_server(self)
        c = await srv.client("odd")
        c.send(b"\r\n\n\r\n")
        c.send(b"      \r\n")
        c.send(b"@tagsonly\r\n")
        c.send(b"@a=b;c \r\n")
        c.send(b":prefixonly\r\n")
        c.send(b":prefix \r\n")
        c.send(b"\r\r\r\n")
        await pong(c, "after-junk")
        self.assertEqual([l.raw for l in c.lines[c.cursor - 1:]], [":freeq PONG freeq after-junk"])
        self.assertFalse(c.is_closed)

    @asynctest
    async def test_garbage_before_registration_still_registers(self) -> None:
        """Control bytes and binary junk sent before NICK/USER do not stop registration."""
        srv = await start_server(self)
        c = await srv.connect()
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n")
        c.send(b"\x01\x02\x03\x1b[31m\x7f\r\n")
        c.send(b"\xff\xfe\xfd\r\n")
        c.send("NICK junky")
        c.send("USER junky 0 * :Junk first")
        welcome = await c.expect("001")
        self.assertEqual(welcome.params[0], "junky")
        self.assertFalse(c.is_closed)


class FloodTests(unittest.TestCase):
    """The token bucket: bursts are delayed (fake lag); sustained floods are cut off."""

    async def _flood_server(self, **overrides: Any) -> tuple[ServerFixture, Clock]:
        clock = Clock()
        settings: dict[str, Any] = dict(flood_burst=5, flood_rate=1, flood_queue=5)
        settings.update(overrides)
        srv = await start_server(self, clock=clock, **settings)
        return srv, clock

    @asynctest
    async def test_burst_is_delayed_but_answered_in_order(self) -> None:
        """8 commands against a burst of 5 at 1/s: 5 answered now, the other 3 one per second, in order."""
        srv, clock = await self._flood_server()
        c = await srv.client("burst")
        clock.advance(10)  # refill the bucket spent on registration
        c.send(b"".join(b"FOO%d\r\n" % i for i in range(1, 9)))
        answered = lambda: [l.params[1] for l in c.lines if l.command == "421"]  # noqa: E731
        await until(lambda: len(answered()) == 5)
        await sleep(0.1)
        self.assertEqual(len(answered()), 5, "queued commands ran before the clock moved")
        advances = 0
        while len(answered()) < 8 and advances < 10:
            clock.advance(1)
            advances += 1
            await sleep(0.05)
        self.assertEqual(answered(), [f"FOO{i}" for i in range(1, 9)])
        self.assertEqual(advances, 3)
        self.assertFalse(c.is_closed)
        self.assertFalse([l for l in c.lines if l.command == "ERROR"])

    @asynctest
    async def test_sustained_flood_is_excess_flood(self) -> None:
        """50 commands at once overflow the queue: ERROR 'Excess Flood', closed; others unaffected."""
        srv, clock = await self._flood_server()
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        bystander = await srv.client("calm")
        flooder = await srv.client("flooder")
        bystander.send("JOIN #room")
        await bystander.expect("366")
        flooder.send("JOIN #room")
        await flooder.expect("366")
        clock.advance(10)
        flooder.send(b"".join(b"FOO%d\r\n" % i for i in range(50)))
        error = await flooder.expect("ERROR")
        self.assertIn("Excess Flood", error.raw)
        await flooder.closed
        quit_line = await bystander.expect("QUIT")
        self.assertIn("Excess Flood", quit_line.params[-1])
        self.assertTrue(logged(observer, "Excess flood from flooder"))
        self.assertNotIn("flooder", srv.server.users)
        bystander.send("FOOBAR")
        self.assertEqual((await bystander.expect("421")).params[1], "FOOBAR")

    @asynctest
    async def test_flood_rate_zero_disables_flood_control(self) -> None:
        """With flood_rate=0, 50 commands at once are all answered immediately and nobody is cut off."""
        srv, clock = await self._flood_server(flood_rate=0)
        c = await srv.client("fast")
        c.send(b"".join(b"FOO%d\r\n" % i for i in range(50)))
        await until(lambda: len([l for l in c.lines if l.command == "421"]) == 50)
        self.assertEqual([l.params[1] for l in c.lines if l.command == "421"], [f"FOO{i}" for i in range(50)])
        self.assertFalse(c.is_closed)


class SlowReaderTests(unittest.TestCase):
    """A client that stops reading is dropped once its send queue overflows."""

    @asynctest
    async def test_slow_reader_is_dropped_and_others_continue(self) -> None:
        """A paused TCP reader in a busy channel hits SendQ exceeded; co-members see its QUIT, the rest keep talking."""
        await self._slow_reader(tls=False)

    @asynctest
    async def test_slow_tls_reader_is_dropped(self) -> None:
        """The send queue bound holds for a TLS reader too (TLS buffers in front of the socket)."""
        await self._slow_reader(tls=True)

    async def _slow_reader(self, tls: bool) -> None:
        srv = await start_server(self, tls=tls, sendq_bytes=65536, flood_rate=0)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        sender = await srv.client("sender")
        slow = await srv.client("slow", tls=tls)
        watcher = await srv.client("watcher")
        for c in (sender, slow, watcher):
            c.send("JOIN #busy")
            await c.expect("366")
        watcher.skip()
        sender.skip()
        slow_transport: Any = slow.transport
        slow_transport.pauseProducing()  # the client stops reading; the server's writes pile up

        payload = "PRIVMSG #busy :" + "z" * 400 + "\r\n"
        sent = 0
        # Paced so that the watcher (a normal reader in this same process) keeps up while the paused
        # reader's queue fills: the test is about the slow reader only.
        while "slow" in srv.server.users and sent < 20000:
            sender.send(payload.encode() * 40)
            sent += 40
            await sleep(0.01)
        self.assertFalse(watcher.is_closed, "the watcher must not be dropped")
        self.assertNotIn("slow", srv.server.users, f"not dropped after {sent} messages")
        quit_line = await watcher.expect(lambda l: l.command == "QUIT" and (l.source or "").startswith("slow!"),
                                         timeout=20)
        self.assertEqual(quit_line.params, ["SendQ exceeded"])
        self.assertEqual(len(logged(observer, "SendQ exceeded for slow")), 1)

        slow_transport.resumeProducing()
        await slow.closed
        self.assertFalse(sender.is_closed)
        self.assertFalse(watcher.is_closed)
        sender.send("PRIVMSG #busy :after the drop")
        await watcher.expect(lambda l: l.command == "PRIVMSG" and l.params[-1] == "after the drop", timeout=20)
        await pong(sender)


class TimeoutTests(unittest.TestCase):
    """Registration timeouts, keepalive PINGs and ping timeouts, driven by a fake clock and sweep()."""

    @asynctest
    async def test_registration_timeout(self) -> None:
        """A connection that never finishes registering is closed with 'Registration timed out'."""
        clock = Clock()
        srv = await start_server(self, clock=clock, registration_timeout=60)
        loris = await srv.connect()
        loris.send("NICK loris")
        await until(lambda: any(u.nick == "loris" for u in srv.server.connections))
        clock.advance(59)
        srv.server.sweep()
        await loris.expect_not("ERROR")  # a PING before registration leaves signon (the timeout's start) alone
        clock.advance(1)
        srv.server.sweep()
        error = await loris.expect("ERROR")
        self.assertIn("Registration timed out", error.raw)
        await loris.closed
        self.assertEqual(len(srv.server.connections), 0)

    @asynctest
    async def test_idle_client_is_pinged_then_times_out(self) -> None:
        """After ping_interval an idle client gets PING; after ping_timeout it gets ERROR and co-members see QUIT."""
        clock = Clock()
        srv = await start_server(self, clock=clock, ping_interval=90, ping_timeout=180)
        idle = await srv.client("idle")
        lively = await srv.client("lively")
        for c in (idle, lively):
            c.send("JOIN #keep")
            await c.expect("366")
        lively.skip()

        clock.advance(89)
        srv.server.sweep()
        # Timed, not a barrier: a barrier PING from idle would itself reset the idleness under test.
        await idle.expect_not("PING", wait=0.1)
        clock.advance(1)
        srv.server.sweep()
        ping = await idle.expect("PING")
        self.assertEqual(ping.params, ["freeq"])
        await lively.expect("PING")
        srv.server.sweep()
        await idle.expect_not("PING", wait=0.1)  # one PING per idle period, not one per sweep (timed: as above)
        lively.send("PONG freeq")
        await until(lambda: srv.server.users["lively"].last_active == 90)

        clock.advance(90)
        srv.server.sweep()
        error = await idle.expect("ERROR")
        self.assertIn("Ping timeout: 180 seconds", error.raw)
        await idle.closed
        quit_line = await lively.expect("QUIT")
        self.assertEqual(quit_line.source.split("!")[0], "idle")
        self.assertEqual(quit_line.params, ["Ping timeout: 180 seconds"])
        self.assertFalse(lively.is_closed)

    @asynctest
    async def test_any_line_resets_idleness(self) -> None:
        """A client that sends anything (not only PONG) before the timeout is not dropped."""
        clock = Clock()
        srv = await start_server(self, clock=clock, ping_interval=90, ping_timeout=180)
        c = await srv.client("chatty")
        clock.advance(170)
        srv.server.sweep()
        await c.expect("PING")
        c.send("FOOBAR")
        await c.expect("421")
        clock.advance(20)
        srv.server.sweep()
        # Timed, not a barrier: a barrier PING would reset the idleness the ERROR below is timed from.
        await c.expect_not("ERROR", wait=0.1)
        self.assertFalse(c.is_closed)
        clock.advance(160)
        srv.server.sweep()
        error = await c.expect("ERROR")
        self.assertIn("Ping timeout: 180 seconds", error.raw)
