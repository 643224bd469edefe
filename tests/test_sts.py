"""STS (https://ircv3.net/specs/extensions/sts) over real loopback sockets, through the composition root
(:func:`freeq.tap.build_service`) with both listeners on port 0: plain connections are told the TLS port the
server really bound (``sts=port=``), TLS connections the policy duration (``sts=duration=``)."""
from __future__ import annotations

import os
from typing import Any, Optional

from twisted.internet import defer, endpoints, reactor, ssl
from twisted.trial import unittest

from freeq.config import Config, ConfigError, Listen
from freeq.tap import Options, build_service, config_from_options
from tests.support import IRCClient, asynctest, make_certificate, make_config, start_server, tree_ports
from tests.s2s_support import wait_for


class Tree:
    """A started service tree with a plain and a TLS listener on 127.0.0.1:0."""

    def __init__(self, top: Any, plain: int, tls: int) -> None:
        self.top = top
        self.plain = plain
        self.tls = tls
        self.clients: list[IRCClient] = []

    async def connect(self, tls: bool = False) -> IRCClient:
        """A raw connection to one of the listeners."""
        client = IRCClient()
        if tls:
            ep: Any = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", self.tls, ssl.ClientContextFactory())
        else:
            ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.plain)
        await endpoints.connectProtocol(ep, client)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        """Close the clients, then the tree."""
        for c in self.clients:
            c.disconnect()
            if not c.is_closed:
                await c.closed
        await self.top.stopService()


async def start(case: unittest.TestCase, **overrides: Any) -> Tree:
    """Build and start the whole tree with TLS; wait until both listeners are bound."""
    cert, key = make_certificate(case.mktemp())
    config = make_config(listen=Listen("127.0.0.1", 0), tls_listen=Listen("127.0.0.1", 0), tls_cert=cert,
                         tls_key=key, db_path=":memory:", data_dir=os.path.abspath(case.mktemp()),
                         **overrides).validate()
    top = build_service(config, reactor)
    top.startService()
    ports = tree_ports(top)
    await wait_for(lambda: len(ports) == 2, what="both listeners bound")
    plain = next(p for p in ports if not _is_tls(p))
    tls = next(p for p in ports if _is_tls(p))
    tree = Tree(top, plain.getHost().port, tls.getHost().port)
    case.addCleanup(lambda: defer.ensureDeferred(tree.stop()))
    return tree


def _is_tls(port: Any) -> bool:
    factory = port.factory
    return bool(getattr(factory, "secure", False) or getattr(getattr(factory, "wrappedFactory", None), "secure", False))


async def cap_ls(c: IRCClient, version: str = "302") -> list[str]:
    """Send ``CAP LS <version>`` and return the advertised tokens (all lines of a multi-line reply)."""
    c.send(f"CAP LS {version}".strip())
    tokens: list[str] = []
    while True:
        line = await c.expect(lambda l: l.command == "CAP" and l.params[1:2] == ["LS"])
        tokens += line.params[-1].split()
        if line.params[2:3] != ["*"]:
            return tokens


def sts(tokens: list[str]) -> Optional[str]:
    """The value of the ``sts`` token, or ``None`` when it is not advertised."""
    for tok in tokens:
        name, _, value = tok.partition("=")
        if name == "sts":
            return value
    return None


class STSTests(unittest.TestCase):
    """What ``sts`` says on each kind of connection."""

    timeout = 20

    @asynctest
    async def test_plain_connection_is_told_the_bound_tls_port(self) -> None:
        """On the plain listener: ``sts=port=<the port the TLS listener really bound>``, no duration; ``CAP
        REQ sts`` is NAKed; ``CAP LS`` without 302 does not mention it."""
        tree = await start(self)
        c = await tree.connect()
        self.assertNotEqual(tree.tls, 0)
        self.assertEqual(sts(await cap_ls(c)), f"port={tree.tls}")
        # Not requestable (clients must not ask for it), and not shown without 302 (it needs a value).
        c.send("CAP REQ sts")
        await c.expect(lambda l: l.command == "CAP" and l.params[1:2] == ["NAK"])
        self.assertIsNone(sts(await cap_ls(await tree.connect(), "")))

    @asynctest
    async def test_tls_connection_is_told_the_duration(self) -> None:
        """On the TLS listener: ``sts=duration=2592000`` (the default policy)."""
        tree = await start(self)
        c = await tree.connect(tls=True)
        self.assertEqual(sts(await cap_ls(c)), "duration=2592000")

    @asynctest
    async def test_duration_flag_and_zero_turns_it_off(self) -> None:
        """``--sts-duration 600`` is advertised as such; ``0`` advertises no sts at all, and neither does a
        server without a TLS listener."""
        tree = await start(self, sts_duration=600)
        self.assertEqual(sts(await cap_ls(await tree.connect(tls=True))), "duration=600")
        await tree.stop()
        off = await start(self, sts_duration=0)
        self.assertIsNone(sts(await cap_ls(await off.connect())))
        self.assertIsNone(sts(await cap_ls(await off.connect(tls=True))))
        plain_only = await start_server(self)
        self.assertIsNone(sts(await cap_ls(await plain_only.connect())))



class STSWebSocketTests(unittest.TestCase):
    """A WebSocket client cannot switch to the raw TLS port: it is never offered sts."""

    @asynctest
    async def test_websocket_gets_no_sts(self) -> None:
        """With a TLS listener known to the server, a plain TCP client gets sts=port=, a WebSocket one none."""
        from tests.support import start_web
        from tests.test_web_ws import ws_connect

        srv = await start_server(self)
        srv.server.learn_tls_port(6697)  # as the composition root does once the TLS listener is bound
        self.assertEqual(sts(await cap_ls(await srv.connect())), "port=6697")
        web = await start_web(self, srv)
        ws = await ws_connect(self, web)
        ws.send("CAP LS 302")
        line = await ws.expect(lambda l: l.command == "CAP" and l.params[1:2] == ["LS"] and l.params[2:3] != ["*"])
        self.assertNotIn("sts", [t.split("=", 1)[0] for t in line.params[-1].split()])


class STSConfigTests(unittest.TestCase):
    """The flag: default, parsing and bounds."""

    def test_default_flag_and_bounds(self) -> None:
        """30 days by default; ``--sts-duration`` parses; negative or over a year is refused at start-up."""
        self.assertEqual(Config().sts_duration, 2592000)
        opts = Options()
        opts.parseOptions(["--sts-duration", "0"])
        self.assertEqual(config_from_options(opts, {}).sts_duration, 0)
        for bad in (-1, 31536001):
            with self.assertRaises(ConfigError) as e:
                make_config(sts_duration=bad).validate()
            self.assertIn("--sts-duration", str(e.exception))
