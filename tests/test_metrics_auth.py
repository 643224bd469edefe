"""``/metrics`` behind a bearer token (``--metrics-token``) or on its own listener (``--metrics-addr``), issue #13
item 5, over real loopback HTTP."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import treq
from twisted.internet import reactor
from twisted.trial import unittest

from freeq.config import Config, ConfigError, Listen
from freeq.tap import Options, config_from_options
from tests.support import asynctest, sleep, start_server, start_web, tree_ports

TOKEN = "s3cret-metrics-token-0123"


async def scrape(port: int, token: Optional[str] = None, path: str = "/metrics") -> tuple[int, bytes, Any]:
    """GET ``path`` on ``port`` (with ``Authorization: Bearer token`` if given): (status, body, headers)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = await treq.get(f"http://127.0.0.1:{port}{path}", headers=headers, persistent=False)
    return response.code, await response.content(), response.headers


class MetricsTokenTests(unittest.TestCase):
    """With a token, a scrape without it (or with another) gets 401 and no numbers."""

    @asynctest
    async def test_token_required(self) -> None:
        """No header, a wrong token and a non-Bearer scheme are 401 with WWW-Authenticate; the token is 200."""
        srv = await start_server(self, metrics_token=TOKEN)
        web = await start_web(self, srv)
        for token in (None, "wrong-token-wrong-token", TOKEN + "x"):
            code, body, headers = await scrape(web.port, token)
            self.assertEqual(code, 401, token)
            self.assertNotIn(b"freeq_connections", body)
            self.assertEqual(headers.getRawHeaders("WWW-Authenticate"), ['Bearer realm="metrics"'])
        response = await treq.get(f"http://127.0.0.1:{web.port}/metrics", headers={"Authorization": f"Basic {TOKEN}"},
                                  persistent=False)
        self.assertEqual(response.code, 401)
        await response.content()
        code, body, _ = await scrape(web.port, TOKEN)
        self.assertEqual(code, 200)
        self.assertIn(b"freeq_connections", body)

    @asynctest
    async def test_token_read_at_request_time(self) -> None:
        """A reload that sets a token (server.config replaced) protects /metrics at once."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        code, _, _ = await scrape(web.port)
        self.assertEqual(code, 200)  # no token, no separate listener: open, as before
        srv.server.config = dataclasses.replace(srv.server.config, metrics_token=TOKEN)
        code, _, _ = await scrape(web.port)
        self.assertEqual(code, 401)
        code, _, _ = await scrape(web.port, TOKEN)
        self.assertEqual(code, 200)


class MetricsListenerTests(unittest.TestCase):
    """--metrics-addr moves /metrics to a listener of its own."""

    @asynctest
    async def test_separate_listener(self) -> None:
        """The service tree binds the metrics listener; /metrics answers there and is 404 on the web listener,
        whose other routes still work; the metrics listener serves nothing else."""
        from freeq.tap import build_service

        config = Config(listen=None, tls_listen=None, web_listen=Listen("127.0.0.1", 0),
                        metrics_listen=Listen("127.0.0.1", 0), connection_rate=0,
                        data_dir=os.path.join(self.mktemp(), "d")).validate()
        top = build_service(config, reactor)
        top.startService()
        self.addCleanup(lambda: top.stopService() if top.running else None)
        ports = tree_ports(top)
        for _ in range(200):
            if len(ports) == 2:
                break
            await sleep(0.01)
        web_port, metrics_port = (p.getHost().port for p in ports)
        code, body, _ = await scrape(metrics_port)
        self.assertEqual(code, 200)
        self.assertIn(b"freeq_uptime_seconds", body)
        code, body, _ = await scrape(web_port)
        self.assertEqual(code, 404)
        self.assertNotIn(b"freeq_uptime_seconds", body)
        code, _, _ = await scrape(web_port, path="/api/v1/health")
        self.assertEqual(code, 200)
        code, _, _ = await scrape(metrics_port, path="/api/v1/health")
        self.assertEqual(code, 404)
        await top.stopService()

    @asynctest
    async def test_separate_listener_with_token(self) -> None:
        """The token rule holds on the metrics listener too."""
        from freeq.tap import build_service

        config = Config(listen=Listen("127.0.0.1", 0), tls_listen=None, metrics_listen=Listen("127.0.0.1", 0),
                        metrics_token=TOKEN, connection_rate=0, data_dir=os.path.join(self.mktemp(), "d")).validate()
        top = build_service(config, reactor)
        top.startService()
        self.addCleanup(lambda: top.stopService() if top.running else None)
        ports = tree_ports(top)
        for _ in range(200):
            if len(ports) == 2:
                break
            await sleep(0.01)
        metrics_port = ports[1].getHost().port
        code, _, _ = await scrape(metrics_port)
        self.assertEqual(code, 401)
        code, _, _ = await scrape(metrics_port, TOKEN)
        self.assertEqual(code, 200)
        await top.stopService()


class MetricsConfigTests(unittest.TestCase):
    """The flags, the environment and their validation."""

    def _config(self, argv: list[str], environ: Optional[dict[str, str]] = None) -> Config:
        options = Options()
        options.parseOptions(argv)
        return config_from_options(options, environ or {})

    def test_flags(self) -> None:
        """--metrics-addr takes HOST:PORT or a bare PORT (loopback); the token comes from the flag or env."""
        config = self._config(["--metrics-addr", "9100", "--metrics-token", TOKEN])
        self.assertEqual(config.metrics_listen, Listen("127.0.0.1", 9100))
        self.assertEqual(config.metrics_token, TOKEN)
        config = self._config(["--metrics-addr", "0.0.0.0:9101"], {"METRICS_TOKEN": TOKEN})
        self.assertEqual(config.metrics_listen, Listen("0.0.0.0", 9101))
        self.assertEqual(config.metrics_token, TOKEN)
        config = self._config([])
        self.assertIsNone(config.metrics_listen)
        self.assertIsNone(config.metrics_token)

    def test_bad_values(self) -> None:
        """A short or spaced token and an address another listener has are refused in one line."""
        for argv, text in ((["--metrics-token", "short"], "--metrics-token"),
                           (["--metrics-token", "has a space in it ok"], "--metrics-token"),
                           (["--metrics-addr", "127.0.0.1:6667"], "--metrics-addr"),
                           (["--metrics-addr", "nonsense"], "--metrics-addr")):
            with self.assertRaises(ConfigError) as caught:
                self._config(argv)
            self.assertIn(text, str(caught.exception))
