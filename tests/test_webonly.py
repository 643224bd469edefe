"""Web-only deployments (issue #13 item 5): no IRC listener, only ``--web-addr``; the access log's client
address; the ``429`` status line. Real service trees and raw sockets on loopback."""
from __future__ import annotations

import json
import os
from typing import Any

import treq
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from freeq.config import Config, ConfigError, Listen
from freeq.tap import Options, config_from_options
from freeq.web.http import reason_phrase
from tests.support import WebFixture, asynctest, sleep, start_server, start_web, tree_ports
from tests.test_web_ws import ws_connect


class _Raw(protocol.Protocol):
    """Collects everything the server sends until it closes."""

    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)


async def raw_get(port: int, path: str, headers: tuple[str, ...] = ()) -> bytes:
    """One ``GET`` over a plain socket with ``Connection: close``; the whole response as bytes."""
    client = _Raw()
    proto = await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close", *headers]
    proto.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    timeout = reactor.callLater(5, proto.transport.abortConnection)
    data: bytes = await client.done
    if timeout.active():
        timeout.cancel()
    return data


async def start_web_only(case: unittest.TestCase, **overrides: Any) -> tuple[Any, int]:
    """The whole service tree with only a web listener on 127.0.0.1:0; (top service, web port)."""
    base: dict[str, Any] = dict(listen=None, tls_listen=None, web_listen=Listen("127.0.0.1", 0), connection_rate=0,
                                data_dir=os.path.join(case.mktemp(), "data"))
    base.update(overrides)
    from freeq.tap import build_service

    top = build_service(Config(**base).validate(), reactor)
    top.startService()
    case.addCleanup(lambda: top.stopService() if top.running else None)
    ports = tree_ports(top)
    for _ in range(200):
        if ports:
            break
        await sleep(0.01)
    return top, ports[0].getHost().port


class WebOnlyConfigTests(unittest.TestCase):
    """``--listen-addr none`` with ``--web-addr`` is a valid server; no listener at all is not."""

    def _config(self, *argv: str) -> Config:
        options = Options()
        options.parseOptions(list(argv))
        return config_from_options(options, {})

    def test_web_only_flags_validate(self) -> None:
        """The flags of a web-only deployment give a config with no IRC listener and the web one."""
        config = self._config("--listen-addr", "none", "--web-addr", "127.0.0.1:8080")
        self.assertIsNone(config.listen)
        self.assertEqual(config.web_listen, Listen("127.0.0.1", 8080))

    def test_no_listener_at_all_is_refused(self) -> None:
        """Without IRC, TLS (with a certificate) or web listener the config is still refused, naming the flags."""
        with self.assertRaises(ConfigError) as caught:
            self._config("--listen-addr", "none")
        self.assertIn("no listener", str(caught.exception))
        self.assertIn("--web-addr", str(caught.exception))


class WebOnlyServerTests(unittest.TestCase):
    """A server with only the web listener carries IRC over WebSocket and serves the REST API."""

    @asynctest
    async def test_websocket_client_and_rest_api(self) -> None:
        """A WebSocket client registers, joins and is counted by the REST API's health route."""
        top, port = await start_web_only(self)
        self.assertEqual(len([s for s in top if isinstance(s, StreamServerEndpointService)]), 1)  # the web one
        ws = await ws_connect(self, WebFixture(None, port, False))
        await ws.register("webonly")
        ws.send("JOIN #web")
        await ws.expect("366")
        response = await treq.get(f"http://127.0.0.1:{port}/api/v1/health", persistent=False)
        self.assertEqual(response.code, 200)
        data = json.loads(await response.content())
        self.assertEqual(data["connections"], 1)
        response = await treq.get(f"http://127.0.0.1:{port}/api/v1/channels/%23web", persistent=False)
        self.assertEqual(response.code, 200)
        await response.content()
        await ws.close_and_wait()


class StatusLineTests(unittest.TestCase):
    """The rate limit's reply carries the standard reason phrase (twisted.web has none for 429)."""

    def test_reason_phrases(self) -> None:
        """429 and 426 get their standard phrases; codes twisted.web names keep its phrase."""
        self.assertEqual(reason_phrase(429), b"Too Many Requests")
        self.assertEqual(reason_phrase(426), b"Upgrade Required")
        self.assertEqual(reason_phrase(404), b"Not Found")
        self.assertIsNone(reason_phrase(599))

    @asynctest
    async def test_429_status_line_over_a_socket(self) -> None:
        """Past the burst the raw status line reads ``HTTP/1.1 429 Too Many Requests``."""
        srv = await start_server(self)
        web = await start_web(self, srv, rate_burst=1, rate_per_second=0.001)
        first = await raw_get(web.port, "/api/v1/health")
        self.assertTrue(first.startswith(b"HTTP/1.1 200 OK\r\n"), first[:40])
        second = await raw_get(web.port, "/api/v1/health")
        self.assertTrue(second.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), second[:60])


class AccessLogTests(unittest.TestCase):
    """The access log names the client: the forwarded address only behind a trusted proxy."""

    def _access(self, observer: EventLoggingObserver) -> list[dict[str, Any]]:
        return [e for e in observer if e.get("log_namespace") == "freeq.web.access"]

    @asynctest
    async def test_trusted_proxy_logs_the_forwarded_client(self) -> None:
        """From a trusted proxy the line's ip is the X-Forwarded-For client, the proxy kept as peer."""
        srv = await start_server(self)
        web = await start_web(self, srv, trusted_proxies=("127.0.0.1",))
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        data = await raw_get(web.port, "/api/v1/health", ("X-Forwarded-For: 203.0.113.9",))
        self.assertTrue(data.startswith(b"HTTP/1.1 200"))
        events = self._access(observer)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["ip"], "203.0.113.9")
        self.assertEqual(events[0]["peer"], "127.0.0.1")
        self.assertEqual((events[0]["method"], events[0]["uri"], events[0]["code"]), ("GET", "/api/v1/health", 200))

    @asynctest
    async def test_untrusted_peer_logs_its_own_address(self) -> None:
        """Without --trusted-proxies a forged X-Forwarded-For is not believed: the peer is logged; control
        characters of the request never reach the log raw."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        await raw_get(web.port, "/api/v1/health", ("X-Forwarded-For: 203.0.113.9", "User-Agent: evil\x1b[31m"))
        events = self._access(observer)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["ip"], "127.0.0.1")
        self.assertNotIn("\x1b", events[0]["agent"])

    @asynctest
    async def test_websocket_upgrade_is_logged(self) -> None:
        """An /irc upgrade (which never finishes as an HTTP request) is logged too, as 101, with the client IP."""
        srv = await start_server(self)
        web = await start_web(self, srv, trusted_proxies=("127.0.0.1",))
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        ws = await ws_connect(self, web, headers={"X-Forwarded-For": "198.51.100.23"})
        await ws.register("logged")
        events = [e for e in self._access(observer) if e["uri"] == "/irc"]
        self.assertEqual([(e["ip"], e["code"]) for e in events], [("198.51.100.23", 101)])
        await ws.close_and_wait()
