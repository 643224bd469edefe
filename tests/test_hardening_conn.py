"""Connection hardening (issue #10 items 2, 3, 5, 6): every close ends, PING costs tokens, a connection-rate throttle.

Integration tests use a real server on 127.0.0.1 with real sockets (raw ones where the peer must
misbehave: never start a TLS handshake, never read); :class:`ConnectionRate` is tested directly
with time passed in.
"""
from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from freeq.config import Config, ConfigError
from freeq.net.connection import ConnectionLimiter
from freeq.state.flood import ConnectionRate
from tests.support import ServerFixture, start_server


async def sleep(seconds: float) -> None:
    """Let the real reactor run for ``seconds``."""
    await deferLater(reactor, seconds, lambda: None)


async def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    """Poll ``cond`` on the real reactor until it holds or ``timeout`` passes; return its last value."""
    waited = 0.0
    while not cond():
        if waited >= timeout:
            return False
        await sleep(0.05)
        waited += 0.05
    return True


def limiter_of(fixture: ServerFixture) -> ConnectionLimiter:
    """The connection limiter shared by the fixture's listeners."""
    return fixture.listeners[0].factory.limiter  # type: ignore[no-any-return]


def raw_connect(port: int) -> socket.socket:
    """A non-blocking TCP socket connected to 127.0.0.1:``port`` that has sent nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed or aborted ``sock`` (what it sent before is read and dropped)."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset: aborted


class HalfOpenTests(unittest.TestCase):
    """Item 2: connections that never register, TLS ones that never send a ClientHello included, are closed."""

    async def test_silent_tls_and_tcp_connections_are_closed(self) -> None:
        """Silent raw sockets on the TLS and plain ports are all gone, and their per-IP slots free, in time.

        The registration clock starts at the TCP connect (the model knows the connection before any
        TLS handshake); the sweep, run here as the server's timer runs it, times them out and the
        close grace aborts the TLS ones whose graceful close waits for a handshake that never comes.
        """
        fixture = await start_server(self, tls=True, registration_timeout=0.3, close_grace=0.3)
        assert fixture.tls_port is not None
        socks = [raw_connect(fixture.tls_port) for _ in range(5)] + [raw_connect(fixture.port) for _ in range(2)]
        for s in socks:
            self.addCleanup(s.close)
        limiter = limiter_of(fixture)
        self.assertTrue(await wait_for(lambda: limiter.counts.get("127.0.0.1") == 7, 2.0))
        self.assertEqual(len(fixture.server.connections), 7)

        def swept_and_closed() -> bool:
            fixture.server.sweep()
            return all(closed_by_peer(s) for s in socks)

        self.assertTrue(await wait_for(swept_and_closed, 3.0), "silent connections still open")
        self.assertTrue(await wait_for(lambda: limiter.counts.get("127.0.0.1", 0) == 0, 1.0), limiter.counts)
        self.assertEqual(fixture.server.connections, set())

    async def test_sweep_close_of_a_silent_tls_connection_completes(self) -> None:
        """The model's sweep times out a silent TLS connection; the close it starts ends within the grace."""
        fixture = await start_server(self, tls=True, registration_timeout=0.2, sweep_interval=60, close_grace=0.3)
        assert fixture.tls_port is not None
        sock = raw_connect(fixture.tls_port)
        self.addCleanup(sock.close)
        limiter = limiter_of(fixture)
        self.assertTrue(await wait_for(lambda: limiter.counts.get("127.0.0.1") == 1, 2.0))
        await sleep(0.3)
        fixture.server.sweep()
        self.assertEqual(fixture.server.connections, set())  # the model forgot it at once
        self.assertTrue(await wait_for(lambda: closed_by_peer(sock), 2.0), "TLS socket still open after the sweep")
        self.assertTrue(await wait_for(lambda: limiter.counts.get("127.0.0.1", 0) == 0, 1.0), limiter.counts)


class StalledReaderTests(unittest.TestCase):
    """Item 3: a client that stops reading loses its socket and its per-IP slot after a close."""

    async def _stalled(self, **overrides: Any) -> tuple[ServerFixture, Any]:
        fixture = await start_server(self, close_grace=0.5, sendq_bytes=64 * 1024 * 1024, **overrides)
        client = await fixture.client("slow")
        handle = client.transport.getHandle()
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.transport.pauseProducing()  # the client stops reading
        self.addCleanup(client.transport.resumeProducing)
        user = fixture.server.users["slow"]
        line = b":irc.test NOTICE slow :" + b"x" * 400 + b"\r\n"
        for _ in range(40):  # ~16 MB over 40 turns: far more than both socket buffers hold
            for _ in range(1000):
                user.write(line)
            await sleep(0.01)
        conn = user.conn
        assert conn is not None
        self.assertGreater(conn._backlog, 1024 * 1024, "the server's send queue did not fill")
        return fixture, user

    async def test_ping_timeout_of_a_client_that_stopped_reading(self) -> None:
        """The sweep's ping timeout closes a stalled client: its socket and slot are gone within the grace."""
        fixture, user = await self._stalled(ping_interval=0.1, ping_timeout=0.2)
        user.last_active -= 10
        fixture.server.sweep()
        self.assertNotIn(user, fixture.server.connections)
        limiter = limiter_of(fixture)
        self.assertTrue(await wait_for(lambda: limiter.counts.get("127.0.0.1", 0) == 0, 2.0),
                        f"per-IP slot still held: {limiter.counts}")

    async def test_kill_of_a_client_that_stopped_reading(self) -> None:
        """A server close (as KILL does) of a stalled client ends in an abort within the grace."""
        fixture, user = await self._stalled()
        fixture.server.close(user, "Killed (oper (bye))")
        limiter = limiter_of(fixture)
        self.assertEqual(limiter.counts.get("127.0.0.1"), 1)  # the graceful close cannot finish by itself
        self.assertTrue(await wait_for(lambda: limiter.counts.get("127.0.0.1", 0) == 0, 2.0),
                        f"per-IP slot still held: {limiter.counts}")


class PingFloodTests(unittest.TestCase):
    """Item 5: PING costs flood tokens like any command (PONG stays free)."""

    async def test_two_hundred_pings_are_throttled(self) -> None:
        """200 PINGs in one write get at most the burst of PONGs, then Excess Flood, with default flood settings."""
        fixture = await start_server(self)
        cfg: Config = fixture.server.config
        client = await fixture.client("pinger")
        client.send(b"".join(b"PING :t%d\r\n" % i for i in range(200)))
        await client.expect(r"Excess Flood", timeout=5)
        pongs = [l for l in client.lines if l.command == "PONG"]
        self.assertLessEqual(len(pongs), cfg.flood_burst + 1)


class ConnectionRateTests(unittest.TestCase):
    """Item 6: new connections per address (IPv6 /64) are throttled: refused, logged once per window, counted."""

    def setUp(self) -> None:
        self.observer = EventLoggingObserver()
        globalLogPublisher.addObserver(self.observer)
        self.addCleanup(globalLogPublisher.removeObserver, self.observer)

    async def test_connections_over_the_rate_are_refused(self) -> None:
        """After the burst, a connection gets ERROR (Connecting too fast) and is closed; one warn line, a counter."""
        fixture = await start_server(self, connection_rate_burst=3, connection_rate=0.01)
        for _ in range(3):
            await fixture.connect()
        refused = [await fixture.connect() for _ in range(4)]
        for client in refused:
            line = await client.expect("ERROR")
            self.assertEqual(line.params[-1], "Closing Link: 127.0.0.1 (Connecting too fast)")
            await client.closed
        self.assertEqual(fixture.server.metrics.connection_rate_refusals, 4)
        warns = [e for e in self.observer if "connection rate exceeded" in e.get("log_format", "")]
        self.assertEqual(len(warns), 1)
        self.assertEqual(warns[0]["ip"], "127.0.0.1")
        self.assertEqual(limiter_of(fixture).counts.get("127.0.0.1"), 3)

    def test_bucket_refills_and_ipv6_counts_per_64(self) -> None:
        """A /64 shares one bucket; other addresses have their own; tokens come back at the rate."""
        from freeq.state.throttle import ip_key

        rate = ConnectionRate(burst=2, rate=1.0)
        a, b = ip_key("2001:db8:1:2::1"), ip_key("2001:db8:1:2:ffff::9")
        self.assertEqual(a, b)
        self.assertTrue(rate.allow(a, 0.0))
        self.assertTrue(rate.allow(b, 0.0))
        self.assertFalse(rate.allow(a, 0.5))
        self.assertTrue(rate.allow(ip_key("2001:db8:1:3::1"), 0.5))
        self.assertTrue(rate.allow(ip_key("192.0.2.1"), 0.5))
        self.assertTrue(rate.allow(a, 1.5))
        self.assertFalse(rate.allow(a, 1.6))

    def test_log_verdict_once_per_window(self) -> None:
        """Refusals of one key get one log line per window, which says how many were held back."""
        rate = ConnectionRate(burst=1, rate=0.001, log_interval=60.0)
        rate.allow("k", 0.0)
        self.assertFalse(rate.allow("k", 1.0))
        self.assertEqual(rate.log_refusal("k", 1.0), 0)
        for t in (2.0, 3.0):
            rate.allow("k", t)
            self.assertIsNone(rate.log_refusal("k", t))
        self.assertEqual(rate.log_refusal("k", 61.0), 2)

    def test_table_is_bounded(self) -> None:
        """The table never holds more than max_keys; refilled buckets are forgotten first."""
        rate = ConnectionRate(burst=2, rate=1.0, max_keys=100)
        for i in range(1000):
            rate.allow(f"198.51.100.{i % 250}-{i}", float(i) / 1000)
        self.assertLessEqual(len(rate), 100)
        rate.allow("late", 100.0)  # every other bucket has refilled: all forgotten
        self.assertEqual(len(rate), 1)

    def test_flags_are_validated(self) -> None:
        """Negative rates, an empty burst and a non-positive close grace are start-up errors."""
        with self.assertRaises(ConfigError):
            Config(listen=None, tls_listen=None, connection_rate=-1).validate()
        with self.assertRaises(ConfigError):
            Config(listen=None, tls_listen=None, connection_rate_burst=0).validate()
        with self.assertRaises(ConfigError):
            Config(listen=None, tls_listen=None, close_grace=0).validate()
