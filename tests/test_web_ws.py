"""IRC over WebSocket on the web listener: framing, subprotocols, Origin, the shared per-IP limit, proxies.

Autobahn's client over real loopback sockets against the same server the TCP clients use.
"""
from __future__ import annotations

import base64
import os
from typing import Any, Optional, Sequence

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.web.proxy import ProxyPolicy
from freeq.web.websocket import IRCWebSocketProtocol
from tests.support import IRCClient, WebFixture, asynctest, sleep, start_server, start_web


class WSClient(WebSocketClientProtocol):
    """An Autobahn client that records each received message as one IRC line (via an IRCClient recorder)."""

    def __init__(self) -> None:
        super().__init__()
        self.irc = IRCClient()  # used only for its line recording and expect()
        self.frames: list[tuple[bytes, bool]] = []
        self.opened: defer.Deferred = defer.Deferred()
        self.lost: defer.Deferred = defer.Deferred()
        self.is_lost = False
        self.close_code: Optional[int] = None

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.append((payload, isBinary))
        self.irc.dataReceived(payload + b"\n")

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        self.close_code = code
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {reason}"))

    def connectionLost(self, reason: Any = None) -> None:
        super().connectionLost(reason)
        self.is_lost = True
        self.irc.connectionLost(reason)
        self.lost.callback(None)

    # -- test API --------------------------------------------------------------
    def send(self, line: str | bytes, binary: bool = False) -> None:
        """Send one message (no CRLF added)."""
        data = line.encode("utf-8") if isinstance(line, str) else line
        self.sendMessage(data, isBinary=binary)

    def expect(self, pred: Any, timeout: float = 5.0) -> defer.Deferred:
        return self.irc.expect(pred, timeout)

    async def register(self, nick: str) -> None:
        """NICK/USER in two messages; returns after the end of the MOTD."""
        self.irc.nick = nick
        self.send(f"NICK {nick}")
        self.send(f"USER {nick} 0 * :Web User")
        await self.expect(lambda l: l.command in ("376", "422"))
        self.irc.skip()

    async def close_and_wait(self) -> None:
        """Close (politely, then by force) and wait until the socket is gone."""
        if self.is_lost:
            return
        if self.state == WebSocketClientProtocol.STATE_OPEN:
            self.sendClose(1000)
        else:
            self.dropConnection(abort=True)
        call = reactor.callLater(3, lambda: None if self.is_lost else self.transport.abortConnection())
        await self.lost
        if call.active():
            call.cancel()


async def ws_connect(case: unittest.TestCase, web: WebFixture, protocols: Sequence[str] = ("text.ircv3.net",),
                     headers: Optional[dict[str, str]] = None, origin: Optional[str] = None) -> WSClient:
    """Open a WebSocket to ``/irc`` (closed in cleanup); fails if the upgrade is refused."""
    factory = WebSocketClientFactory(web.ws_url, protocols=list(protocols) or None, headers=headers or {},
                                     origin=origin, reactor=reactor)
    factory.protocol = WSClient
    if web.tls:
        ep: Any = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", web.port, ssl.ClientContextFactory())
    else:
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", web.port)
    proto = await ep.connect(factory)
    case.addCleanup(lambda: defer.ensureDeferred(proto.close_and_wait()))
    await proto.opened
    return proto


class _RawHTTP(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)


async def raw_upgrade(web: WebFixture, headers: Optional[dict[str, str]] = None) -> tuple[int, bytes]:
    """Send a WebSocket upgrade request by hand; return (status, whole response) once the server closes."""
    lines = [
        "GET /irc HTTP/1.1", f"Host: 127.0.0.1:{web.port}", "Upgrade: websocket", "Connection: Upgrade",
        "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(), "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    client = _RawHTTP()
    ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", web.port)
    proto = await endpoints.connectProtocol(ep, client)
    proto.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    timeout = reactor.callLater(5, proto.transport.abortConnection)
    await sleep(0.2)
    if not client.done.called:
        proto.transport.loseConnection()
    data = await client.done
    if timeout.active():
        timeout.cancel()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


def logged(observer: EventLoggingObserver, text: str) -> list[str]:
    """Formatted log messages containing ``text``."""
    return [m for m in (formatEvent(e) for e in observer) if text in m]


async def until(cond: Any, timeout: float = 5.0) -> None:
    """Poll ``cond`` on the real reactor until it holds."""
    waited = 0.0
    while not cond():
        if waited >= timeout:
            raise AssertionError(f"condition not met in {timeout}s")
        await sleep(0.01)
        waited += 0.01


class FramingTests(unittest.TestCase):
    """One IRC line per message in both directions, under each subprotocol."""

    @asynctest
    async def test_text_subprotocol_one_line_per_text_frame(self) -> None:
        """text.ircv3.net: every server line arrives as one text frame without CRLF; commands go one per frame."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        ws = await ws_connect(self, web, ["text.ircv3.net"])
        self.assertEqual(ws.websocket_protocol_in_use, "text.ircv3.net")
        await ws.register("webby")
        self.assertTrue(ws.frames)
        for payload, binary in ws.frames:
            self.assertFalse(binary)
            self.assertNotIn(b"\n", payload)
            self.assertNotIn(b"\r", payload)
        ws.send("PING token1")
        line = await ws.expect("PONG")
        self.assertEqual(line.params[-1], "token1")
        user = srv.server.users["webby"]
        self.assertIsInstance(user.conn, IRCWebSocketProtocol)
        self.assertEqual(user.ip, "127.0.0.1")

    @asynctest
    async def test_binary_subprotocol_uses_binary_frames(self) -> None:
        """binary.ircv3.net: the server sends binary frames and accepts binary (and text) frames."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        ws = await ws_connect(self, web, ["binary.ircv3.net", "text.ircv3.net"])
        self.assertEqual(ws.websocket_protocol_in_use, "binary.ircv3.net")
        ws.send(b"NICK binny", binary=True)
        ws.send("USER binny 0 * :Binary")
        await ws.expect("001")
        self.assertTrue(all(binary for _payload, binary in ws.frames))
        ws.send("PRIVMSG binny :caf\u00e9 \u2603".encode("utf-8"), binary=True)
        ws.send(b"PING done", binary=True)
        await ws.expect("PONG")

    @asynctest
    async def test_client_preference_picks_text(self) -> None:
        """When the client lists text.ircv3.net first, text is chosen."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        ws = await ws_connect(self, web, ["text.ircv3.net", "binary.ircv3.net"])
        self.assertEqual(ws.websocket_protocol_in_use, "text.ircv3.net")

    @asynctest
    async def test_no_subprotocol_gets_text_frames(self) -> None:
        """Without a subprotocol (as the reference server allows) the session works with text frames."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        ws = await ws_connect(self, web, [])
        self.assertIsNone(ws.websocket_protocol_in_use)
        await ws.register("plainws")
        self.assertTrue(all(not binary for _p, binary in ws.frames))

    @asynctest
    async def test_several_lines_in_one_message_are_split(self) -> None:
        """A message carrying CRLF-separated lines is handled as those lines, in order (documented choice)."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        ws = await ws_connect(self, web)
        ws.send("NICK multi\r\nUSER multi 0 * :Multi\r\n")
        await ws.expect("001")
        ws.send("PING one\r\nPING two\nPING three")
        for token in ("one", "two", "three"):
            line = await ws.expect("PONG")
            self.assertEqual(line.params[-1], token)

    @asynctest
    async def test_long_message_gets_417_and_huge_frame_closes(self) -> None:
        """A line over the IRC limit is answered 417 as on TCP; a message over the frame cap ends the socket."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        ws = await ws_connect(self, web)
        await ws.register("longy")
        ws.send("PRIVMSG longy :" + "x" * 600)
        await ws.expect("417")
        ws.send("PING still")
        await ws.expect("PONG")
        ws.send("PRIVMSG longy :" + "y" * 40000)
        await ws.lost
        self.assertEqual(ws.close_code, 1009)
        await until(lambda: "longy" not in srv.server.users)

    @asynctest
    async def test_plain_get_is_426(self) -> None:
        """A GET /irc without an upgrade is told to upgrade (426) and never becomes a session."""
        import treq

        srv = await start_server(self)
        web = await start_web(self, srv)
        response = await treq.get(web.url + "/irc", persistent=False)
        self.assertEqual(response.code, 426)
        await response.content()
        self.assertEqual(len(srv.server.connections), 0)


class AdmissionTests(unittest.TestCase):
    """Origin checks, the per-IP limit shared with TCP/TLS, and client addresses behind proxies."""

    @asynctest
    async def test_origin_not_allowed_is_403(self) -> None:
        """With --web-allowed-origins a foreign Origin gets 403; a listed one and a missing one are admitted."""
        srv = await start_server(self)
        web = await start_web(self, srv, web_allowed_origins=("https://chat.example",))
        status, body = await raw_upgrade(web, {"Origin": "https://evil.example"})
        self.assertEqual(status, 403)
        self.assertIn(b"Origin not allowed", body)
        self.assertEqual(srv.server.metrics.per_ip_refusals, 0)
        ok = await ws_connect(self, web, origin="https://chat.example")
        await ok.register("good")
        bot = await ws_connect(self, web)  # no Origin header: not a browser
        await bot.register("bot")

    @asynctest
    async def test_per_ip_limit_shared_with_tcp_refuses_upgrade_with_429(self) -> None:
        """Limit 2 per IP: one TCP and one WS client fill it; the next upgrade gets 429 and the log line."""
        srv = await start_server(self, max_connections_per_ip=2)
        web = await start_web(self, srv)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await srv.client("tcpuser")
        ws = await ws_connect(self, web)
        await ws.register("wsuser")
        status, body = await raw_upgrade(web)
        self.assertEqual(status, 429)
        self.assertIn(b"Too many connections from your IP", body)
        self.assertNotIn(b"101 Switching Protocols", body)
        self.assertEqual(len(srv.server.connections), 2)
        self.assertEqual(len(logged(observer, "per-IP limit reached")), 1)
        self.assertIn("WebSocket upgrade from 127.0.0.1", logged(observer, "per-IP limit reached")[0])
        refused_tcp = await srv.connect()
        await refused_tcp.expect("ERROR")
        self.assertEqual(srv.server.metrics.per_ip_refusals, 2)

        await ws.close_and_wait()
        await until(lambda: len(srv.server.connections) == 1)
        again = await ws_connect(self, web)
        await again.register("again")

    @asynctest
    async def test_trusted_proxy_forwarded_for_is_the_client_ip(self) -> None:
        """From a trusted proxy, X-Forwarded-For names the client: it is the user's IP and what the limit counts."""
        srv = await start_server(self, max_connections_per_ip=1)
        web = await start_web(self, srv, trusted_proxies=("127.0.0.0/8",))
        a = await ws_connect(self, web, headers={"X-Forwarded-For": "198.51.100.7, 127.0.0.1"})
        await a.register("alice")
        b = await ws_connect(self, web, headers={"Forwarded": 'for="[2001:db8::5]:4711";proto=https'})
        await b.register("bob")
        self.assertEqual(srv.server.users["alice"].ip, "198.51.100.7")
        self.assertEqual(srv.server.users["bob"].ip, "2001:db8::5")
        self.assertTrue(srv.server.users["bob"].conn.secure)
        status, _ = await raw_upgrade(web, {"X-Forwarded-For": "198.51.100.7"})
        self.assertEqual(status, 429)

    @asynctest
    async def test_forwarded_for_from_untrusted_peer_is_ignored(self) -> None:
        """Without --trusted-proxies (or from a peer outside them) X-Forwarded-For cannot choose the IP."""
        srv = await start_server(self, max_connections_per_ip=1)
        web = await start_web(self, srv, trusted_proxies=("10.0.0.0/8",))
        a = await ws_connect(self, web, headers={"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"})
        await a.register("spoofer")
        user = srv.server.users["spoofer"]
        self.assertEqual(user.ip, "127.0.0.1")
        self.assertFalse(user.conn.secure)
        status, _ = await raw_upgrade(web, {"X-Forwarded-For": "198.51.100.99"})
        self.assertEqual(status, 429)  # the spoofed address did not buy a fresh slot


class SessionTests(unittest.TestCase):
    """WebSocket users are ordinary users: channels with TCP users, limits, TLS."""

    @asynctest
    async def test_ws_and_tcp_clients_talk_in_one_channel(self) -> None:
        """A WS and a TCP client join one channel and exchange messages both ways."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        tcp = await srv.client("tcpuser", caps=("extended-join",))
        ws = await ws_connect(self, web)
        await ws.register("webuser")
        tcp.send("JOIN #mixed")
        await tcp.expect("366")
        ws.send("JOIN #mixed")
        names = await ws.expect("353")
        self.assertIn("tcpuser", names.params[-1])
        await tcp.expect(lambda l: l.command == "JOIN" and (l.source or "").startswith("webuser!"))
        ws.send("PRIVMSG #mixed :hello from the web")
        line = await tcp.expect("PRIVMSG")
        self.assertEqual(line.params, ["#mixed", "hello from the web"])
        tcp.send("PRIVMSG #mixed :hello from tcp")
        line = await ws.expect("PRIVMSG")
        self.assertEqual(line.params, ["#mixed", "hello from tcp"])
        self.assertTrue((line.source or "").startswith("tcpuser!"))
        ws.send("QUIT :bye")
        quit_line = await tcp.expect("QUIT")
        self.assertTrue((quit_line.source or "").startswith("webuser!"))
        await ws.lost

    @asynctest
    async def test_flood_over_ws_is_excess_flood(self) -> None:
        """The TCP flood control applies: a sustained burst ends in 'Excess Flood'."""
        srv = await start_server(self, flood_burst=3, flood_rate=1, flood_queue=5)
        web = await start_web(self, srv)
        ws = await ws_connect(self, web)
        await ws.register("flooder")
        for i in range(20):
            ws.send(f"PRIVMSG flooder :{i}")
        line = await ws.expect("ERROR")
        self.assertIn("Excess Flood", line.raw)
        await ws.lost

    @asynctest
    async def test_slow_ws_reader_is_dropped(self) -> None:
        """A WS client that stops reading hits SendQ exceeded; co-members see it quit, the rest go on."""
        srv = await start_server(self, sendq_bytes=65536, flood_rate=0)
        web = await start_web(self, srv)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        sender = await srv.client("sender")
        watcher = await srv.client("watcher")
        slow = await ws_connect(self, web)
        await slow.register("slow")
        for c in (sender, watcher):
            c.send("JOIN #busy")
            await c.expect("366")
        slow.send("JOIN #busy")
        await slow.expect("366")
        watcher.skip()
        slow.transport.pauseProducing()
        payload = ("PRIVMSG #busy :" + "z" * 400 + "\r\n").encode()
        sent = 0
        while "slow" in srv.server.users and sent < 20000:
            sender.send(payload * 200)
            sent += 200
            await sleep(0.005)
        self.assertNotIn("slow", srv.server.users, f"not dropped after {sent} messages")
        quit_line = await watcher.expect(lambda l: l.command == "QUIT" and (l.source or "").startswith("slow!"),
                                         timeout=20)
        self.assertEqual(quit_line.params, ["SendQ exceeded"])
        self.assertEqual(len(logged(observer, "SendQ exceeded for slow")), 1)
        slow.transport.resumeProducing()
        await slow.lost
        sender.send("PING alive")
        await sender.expect("PONG", timeout=20)

    @asynctest
    async def test_wss_is_secure(self) -> None:
        """Over wss:// (web TLS) the connection counts as secure: WHOIS shows 671."""
        srv = await start_server(self)
        web = await start_web(self, srv, tls=True)
        ws = await ws_connect(self, web)
        await ws.register("tlsweb")
        ws.send("WHOIS tlsweb")
        line = await ws.expect("671")
        self.assertEqual(line.params[1], "tlsweb")


class ProxyPolicyTests(unittest.TestCase):
    """Client address resolution (pure)."""

    def test_untrusted_peer_headers_ignored(self) -> None:
        """Headers from a peer outside the trusted list never change the address."""
        policy = ProxyPolicy(["10.0.0.1"])
        self.assertEqual(policy.client_ip("192.0.2.1", None, "198.51.100.1"), "192.0.2.1")
        self.assertEqual(ProxyPolicy().client_ip("10.0.0.1", "for=198.51.100.1", None), "10.0.0.1")

    def test_rightmost_untrusted_hop_wins(self) -> None:
        """Client-supplied entries left of the real client are ignored; trusted hops are skipped."""
        policy = ProxyPolicy(["10.0.0.0/8"])
        chain = "6.6.6.6, 198.51.100.1, 10.0.0.2"
        self.assertEqual(policy.client_ip("10.0.0.1", None, chain), "198.51.100.1")
        self.assertEqual(policy.client_ip("10.0.0.1", None, "10.0.0.3, 10.0.0.2"), "10.0.0.3")

    def test_forwarded_header_forms(self) -> None:
        """RFC 7239 for= values: quoted IPv6 with port, IPv4 with port; Forwarded beats X-Forwarded-For."""
        policy = ProxyPolicy(["127.0.0.1"])
        self.assertEqual(policy.client_ip("127.0.0.1", 'for="[2001:db8::1]:80"', "1.1.1.1"), "2001:db8::1")
        self.assertEqual(policy.client_ip("127.0.0.1", "for=192.0.2.60:8080;proto=https, for=198.51.100.2", None),
                         "198.51.100.2")

    def test_garbage_falls_back_to_peer(self) -> None:
        """An entry that is not an address (unknown, obfuscated) makes the peer the client."""
        policy = ProxyPolicy(["127.0.0.1"])
        self.assertEqual(policy.client_ip("127.0.0.1", "for=unknown", None), "127.0.0.1")
        self.assertEqual(policy.client_ip("127.0.0.1", None, "not-an-ip"), "127.0.0.1")
        self.assertEqual(policy.client_ip("::ffff:127.0.0.1", None, "198.51.100.4"), "198.51.100.4")
