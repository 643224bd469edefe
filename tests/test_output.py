"""The connection layer's output path: one write per connection per reactor turn, direct send(), TCP_NODELAY."""
from __future__ import annotations

import socket
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from freeq.config import Config
from freeq.core.server import IRCServer
from freeq.irc.parser import build, build_text
from freeq.net.connection import ConnectionLimiter, IRCFactory, IRCProtocol
from tests.support import asynctest, sleep, start_server


class CountingTransport(StringTransport):
    """A StringTransport that also records each write() call separately."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class CoalescingTests(unittest.TestCase):
    """Lines written during one reactor turn leave in one transport write; close() sends them first."""

    def setUp(self) -> None:
        self.clock = Clock()  # the model's clock
        self.turns = Clock()  # stands in for the reactor that runs the per-turn flush
        self.server = IRCServer(Config(server_name="irc.test", listen=None, tls_listen=None), self.clock)
        factory = IRCFactory(self.server, ConnectionLimiter(10, 10), self.clock, reactor=self.turns)
        self.proto = factory.buildProtocol(None)
        self.transport = CountingTransport()
        self.proto.makeConnection(self.transport)
        assert self.proto.user is not None
        self.user = self.proto.user

    def test_one_write_per_turn(self) -> None:
        """Three lines written in one turn reach the transport as one write, in order, at the turn's end."""
        lines = [build(None, "PING", f"t{i}") for i in range(3)]
        for line in lines:
            self.user.write(line)
        self.assertEqual(self.transport.writes, [])
        self.turns.advance(0)
        self.assertEqual(self.transport.writes, [b"".join(lines)])
        self.user.write(lines[0])
        self.turns.advance(0)
        self.assertEqual(self.transport.writes, [b"".join(lines), lines[0]])

    def test_fake_clock_does_not_hold_output(self) -> None:
        """The flush runs on the reactor given to the factory, never on the model's (fake) clock."""
        self.user.write(build(None, "PING", "x"))
        self.clock.advance(60)
        self.assertEqual(self.transport.writes, [])
        self.turns.advance(0)
        self.assertEqual(len(self.transport.writes), 1)

    def test_close_sends_buffered_output_before_closing(self) -> None:
        """A server close() writes what the turn buffered, then ERROR, then closes."""
        self.user.write(build_text("irc.test", "NOTICE", "*", "first"))
        self.server.close(self.user, "Bye")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.transport.writes), 1)
        sent = self.transport.value().split(b"\r\n")
        self.assertIn(b"first", sent[0])
        self.assertTrue(sent[1].startswith(b"ERROR :Closing Link"), sent)
        self.turns.advance(0)  # the pending flush finds nothing more to send
        self.assertEqual(len(self.transport.writes), 1)

    def test_lost_connection_drops_its_buffer(self) -> None:
        """Output buffered for a connection that is lost before the flush is discarded, not written."""
        self.user.write(build(None, "PING", "x"))
        self.proto.connectionLost(None)  # type: ignore[arg-type]
        self.turns.advance(0)
        self.assertEqual(self.transport.writes, [])

    def test_idle_connection_keeps_no_queues(self) -> None:
        """No fake-lag queue, output list, mode, invite or monitor set exists until one is needed."""
        self.assertEqual(self.proto._pending, ())
        self.assertIsNone(self.proto._out)
        self.assertIsNone(self.user._invites)
        self.assertIsNone(self.user._monitoring)
        self.assertEqual(self.user.modes, frozenset())


def server_conn(srv: Any, nick: str) -> IRCProtocol:
    conn = srv.server.users[nick].conn
    assert isinstance(conn, IRCProtocol)
    return conn


class SocketTests(unittest.TestCase):
    """The output path over real loopback sockets."""

    @asynctest
    async def test_nodelay_on_tcp_and_tls(self) -> None:
        """Server-side sockets have TCP_NODELAY for plain TCP and under TLS."""
        srv = await start_server(self, tls=True)
        await srv.client("plain")
        await srv.client("secure", tls=True)
        plain = server_conn(srv, "plain").transport.getHandle()
        secure = server_conn(srv, "secure").transport.transport.getHandle()  # the TCP transport under TLS
        for sock in (plain, secure):
            self.assertTrue(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        self.assertIsNotNone(server_conn(srv, "plain")._socket)
        self.assertIsNone(server_conn(srv, "secure")._socket)  # TLS output always goes through TLS

    @asynctest
    async def test_order_kept_across_a_backlog(self) -> None:
        """When a reader stalls, output queues in the transport and later lines wait behind it: once the
        reader resumes, every line arrives once and in order (the direct send() never overtakes)."""
        srv = await start_server(self, flood_rate=0, sendq_bytes=64 * 1024 * 1024)
        sender = await srv.client("sender")
        reader = await srv.client("reader")
        for c in (sender, reader):
            c.send("JOIN #order")
            await c.expect("366")
        reader.skip()
        conn = server_conn(srv, "reader")
        # Small socket buffers, so that the backlog is reached with little data.
        conn.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        reader_transport: Any = reader.transport
        reader_transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        received: list[bytes] = []
        reader.dataReceived = received.append  # type: ignore[method-assign, assignment]  # raw: parsed at the end
        reader_transport.pauseProducing()
        count = 0
        extra = 20  # rounds sent after the socket filled, so that later lines queue behind the backlog
        while extra and count < 60000:
            sender.send(b"".join(f"PRIVMSG #order :n{count + i} {'x' * 300}\r\n".encode() for i in range(100)))
            count += 100
            await sleep(0.005)
            if conn._backlog > 0:
                extra -= 1
        self.assertFalse(extra, "the socket never filled: the test did not exercise the backlog")
        reader_transport.resumeProducing()
        for _ in range(40):  # keep talking while the backlog drains: new lines must still wait their turn
            sender.send(b"".join(f"PRIVMSG #order :n{count + i} {'x' * 300}\r\n".encode() for i in range(20)))
            count += 20
            await sleep(0.002)
        last = f":n{count - 1} ".encode()
        for _ in range(600):
            if last in b"".join(received[-2:]):
                break
            await sleep(0.05)
        lines = b"".join(received).split(b"\r\n")
        got = [int(line.split(b" :n", 1)[1].split(b" ", 1)[0]) for line in lines if b" PRIVMSG #order :n" in line]
        self.assertEqual(got, list(range(count)))
        await sleep(0.05)
        self.assertEqual(conn._backlog, 0)  # the transport drained and said so
