"""Test support: a real freeq server on loopback and a line-collecting IRC client.

Integration tests use these over real sockets (TCP, TLS). Nothing here fakes
the server: :class:`ServerFixture` listens with the same factory ``twistd
freeq`` uses.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import re
import subprocess
import tempfile
from typing import Any, Awaitable, Callable, Iterable, Optional, Union

from twisted.internet import defer, endpoints, protocol, reactor, ssl
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from freeq.config import Config
from freeq.core.server import IRCServer
from freeq.irc.parser import Message, parse
from freeq.net.connection import IRCFactory
from freeq.tap import make_irc_server

Pred = Union[str, Callable[["Line"], bool]]


def asynctest(f: Callable[..., Awaitable[Any]]) -> Callable[..., defer.Deferred]:
    """Run an ``async def`` test method under trial (which waits on the returned Deferred)."""

    @functools.wraps(f)
    def wrapper(self: Any, *a: Any, **kw: Any) -> defer.Deferred:
        return defer.ensureDeferred(f(self, *a, **kw))

    return wrapper


def sleep(seconds: float) -> defer.Deferred:
    """Let the real reactor run for ``seconds``."""
    return deferLater(reactor, seconds, lambda: None)


class Line:
    """One received line: the raw text and its parse."""

    __slots__ = ("raw", "msg")

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self.msg = parse(raw) or Message("", [])

    @property
    def command(self) -> str:
        return self.msg.command

    @property
    def params(self) -> list[str]:
        return self.msg.params

    @property
    def tags(self) -> dict[str, str]:
        return self.msg.tags or {}

    @property
    def source(self) -> Optional[str]:
        return self.msg.source

    def __repr__(self) -> str:
        return f"Line({self.raw!r})"


class TimeoutError_(AssertionError):
    """An expected line did not arrive in time."""


class IRCClient(protocol.Protocol):
    """A minimal client that records every line it receives and lets tests wait for lines."""

    def __init__(self) -> None:
        self.lines: list[Line] = []
        self.cursor = 0
        self.buffer = b""
        self.closed = defer.Deferred()
        self.connected_d: defer.Deferred = defer.Deferred()
        self.is_closed = False
        self._waiters: list[tuple[Callable[[Line], bool], defer.Deferred]] = []
        self._barriers: dict[str, defer.Deferred] = {}
        self.nick = "*"

    def connectionMade(self) -> None:
        self.connected_d.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\n", 1)
            line = Line(raw.rstrip(b"\r").decode("utf-8", "replace"))
            if self._barriers and line.command == "PONG" and line.params[-1:] and line.params[-1] in self._barriers:
                self._barriers.pop(line.params[-1]).callback(None)  # a barrier's own PONG: not part of the transcript
                continue
            self.lines.append(line)
            self._check()

    def connectionLost(self, reason: Any = None) -> None:
        self.is_closed = True
        self.closed.callback(None)
        self._check()
        barriers, self._barriers = self._barriers, {}
        for d in barriers.values():
            d.callback(None)  # closed: nothing more can arrive, which is all a barrier proves

    def _check(self) -> None:
        for pred, d in list(self._waiters):
            found = self._scan(pred)
            if found is not None:
                self._waiters.remove((pred, d))
                d.callback(found)

    def _scan(self, pred: Callable[[Line], bool]) -> Optional[Line]:
        for i in range(self.cursor, len(self.lines)):
            if pred(self.lines[i]):
                self.cursor = i + 1
                return self.lines[i]
        return None

    # -- API for tests --------------------------------------------------------
    def send(self, line: Union[str, bytes]) -> None:
        """Send one line (CRLF added) or raw bytes (sent verbatim)."""
        if isinstance(line, str):
            self.transport.write(line.encode("utf-8") + b"\r\n")
        else:
            self.transport.write(line)

    def expect(self, pred: Pred, timeout: float = 5.0) -> defer.Deferred:
        """Wait for the next line (after the cursor) matching ``pred``.

        ``pred`` is a callable over :class:`Line` or a string: a command or
        numeric (``"001"``, ``"PRIVMSG"``) or, when it contains a space or
        regex characters, a regex searched in the raw line.
        """
        check = _predicate(pred)
        found = self._scan(check)
        if found is not None:
            return defer.succeed(found)
        d: defer.Deferred = defer.Deferred()
        entry = (check, d)
        self._waiters.append(entry)

        def on_timeout() -> None:
            if entry in self._waiters:
                self._waiters.remove(entry)
                unread = [l.raw for l in self.lines[self.cursor:]][-20:]
                d.errback(TimeoutError_(f"{self.nick}: no line matching {pred!r} in {timeout}s; unread: {unread}"))

        call = reactor.callLater(timeout, on_timeout)
        d.addBoth(_cancel_and_pass, call)
        return d

    async def sync(self, timeout: float = 5.0) -> None:
        """A barrier: send ``PING`` with a unique token and wait for its ``PONG``.

        The server answers a PING in order on the same connection, so when this returns every line
        it wrote to this connection before it handled the PING has arrived. The PONG is not recorded
        in :attr:`lines` and the cursor does not move, so a barrier never hides or consumes a line.
        A closed connection needs no barrier: nothing more can arrive on it.
        """
        if self.is_closed:
            return
        token = f"barrier-{next(_barrier_tokens)}"
        d: defer.Deferred = defer.Deferred()
        self._barriers[token] = d
        self.send(f"PING :{token}")

        def on_timeout() -> None:
            if self._barriers.pop(token, None) is d:
                d.errback(TimeoutError_(f"{self.nick}: no PONG for barrier {token} in {timeout}s"))

        call = reactor.callLater(timeout, on_timeout)
        d.addBoth(_cancel_and_pass, call)
        await d

    async def expect_not(self, pred: Pred, after: Iterable["IRCClient"] = (), until: Optional[Pred] = None,
                         wait: Optional[float] = None) -> None:
        """Assert that no unread line matches ``pred``, once anything that could carry one has arrived.

        By default this is a barrier, not a timer: first each client of ``after`` (those whose earlier
        commands could cause the line) round-trips a PING (:meth:`sync`), so the server has handled
        those commands and made every write they cause (it makes them in the same reactor turn); then
        this client does, so every such write to it has arrived. That is sound for lines a server
        writes while handling a command or a call the test made. It proves nothing about a line still
        in flight elsewhere (from another server, the DB thread, a timer). For those:

        - ``until``: a later line the test caused along the same ordered path (the same link, the same
          DB thread) that this client does receive; once it arrives the forbidden line would have
          arrived before it. It is consumed (the cursor moves past it) and is not itself checked.
        - ``wait``: sleep that many seconds instead, only where neither is sound; say at the call site
          why.
        """
        start = self.cursor
        marker: Optional[Line] = None
        if wait is not None:
            await sleep(wait)
        elif until is not None:
            marker = await self.expect(until)
        else:
            for other in after:
                if other is not self:
                    await other.sync()
            await self.sync()
        check = _predicate(pred)
        bad = [l.raw for l in self.lines[start:] if l is not marker and check(l)]
        if bad:
            raise AssertionError(f"{self.nick}: unexpected {bad}")

    async def collect_until(self, pred: Pred, timeout: float = 5.0) -> list[Line]:
        """Return every line from the cursor up to and including the first match of ``pred``."""
        start = self.cursor
        await self.expect(pred, timeout)
        return self.lines[start:self.cursor]

    def skip(self) -> None:
        """Mark every line received so far as read."""
        self.cursor = len(self.lines)

    def disconnect(self) -> None:
        """Close the connection from the client side."""
        if not self.is_closed:
            self.transport.loseConnection()


#: Unique tokens for :meth:`IRCClient.sync` barriers (never repeated, so a stale PONG cannot satisfy a later barrier).
_barrier_tokens = itertools.count(1)


def _cancel_and_pass(result: Any, call: Any) -> Any:
    if call.active():
        call.cancel()
    return result


def _predicate(pred: Pred) -> Callable[[Line], bool]:
    if callable(pred):
        return pred
    if re.fullmatch(r"[A-Z]+|\d{3}", pred):
        return lambda l: l.command == pred
    rx = re.compile(pred)
    return lambda l: rx.search(l.raw) is not None


@dataclasses.dataclass
class ServerFixture:
    """A real freeq server listening on 127.0.0.1 (TCP, and TLS when asked)."""

    server: IRCServer
    port: int
    tls_port: Optional[int]
    listeners: list[Any]
    clients: list[IRCClient]
    clock: Any

    async def connect(self, tls: bool = False, source: Optional[str] = None) -> IRCClient:
        """Open a raw connection (no registration), from loopback address ``source`` when given (e.g. 127.0.0.2:
        a second client address for per-address rules)."""
        client = IRCClient()
        bind = (source, 0) if source else None
        if tls:
            assert self.tls_port is not None, "start the fixture with tls=True"
            ep: Any = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", self.tls_port, ssl.ClientContextFactory(),
                                                   bindAddress=bind)
        else:
            ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port, bindAddress=bind)
        self.clients.append(client)
        await endpoints.connectProtocol(ep, client)
        await client.connected_d
        return client

    async def client(self, nick: str, caps: tuple[str, ...] = (), tls: bool = False,
                     user: Optional[str] = None, realname: str = "Test User", source: Optional[str] = None
                     ) -> IRCClient:
        """Connect and register as ``nick`` (requesting ``caps``; from loopback address ``source`` when given);
        returns after the welcome burst."""
        c = await self.connect(tls=tls, source=source)
        c.nick = nick
        if caps:
            c.send("CAP LS 302")
        c.send(f"NICK {nick}")
        c.send(f"USER {user or nick.split('.')[0][:10]} 0 * :{realname}")
        if caps:
            await c.expect(lambda l: l.command == "CAP" and l.params[1:2] == ["LS"])
            c.send("CAP REQ :" + " ".join(caps))
            await c.expect(lambda l: l.command == "CAP" and l.params[1:2] == ["ACK"])
            c.send("CAP END")
        await c.expect(lambda l: l.command in ("376", "422"))
        c.skip()
        return c

    async def stop(self) -> None:
        """Close every client and listener (called from tearDown)."""
        for c in self.clients:
            c.disconnect()
        for c in self.clients:
            if not c.is_closed:
                await c.closed
        for port in self.listeners:
            await port.stopListening()


#: The PLC directory of test configs that bring no fake of their own (see :func:`make_config`).
NO_PUBLIC_PLC = "http://127.0.0.1:9"


def make_config(**overrides: Any) -> Config:
    """A config for tests: loopback, a temporary data dir, flood control as given."""
    # connection_rate 0: the suite opens many connections from 127.0.0.1 (the throttle has its own tests).
    # plc_directory_url on loopback port 9: a did:plc login in a test without a fake PLC of its own makes the
    # server read the DID's Bluesky profile (draft/metadata-2 defaults); the SSRF guard refuses this address at
    # once (and with --allow-private-network nothing listens there), so no test ever asks plc.directory.
    base: dict[str, Any] = dict(listen=None, tls_listen=None, data_dir=tempfile.mkdtemp(prefix="freeq-test-"),
                                connection_rate=0, plc_directory_url=NO_PUBLIC_PLC)
    base.update(overrides)
    return Config(**base)


async def start_server(case: unittest.TestCase, tls: bool = False, clock: Any = None, federation: Any = None,
                       **overrides: Any) -> ServerFixture:
    """Start a real server on 127.0.0.1:0 for ``case``; it is stopped in the case's cleanup. ``federation``:
    the factory of its federation (:func:`freeq.s2s.federation.make_federation`), as the composition root
    passes it."""
    from freeq.config import Listen

    overrides.setdefault("listen", Listen("127.0.0.1", 0))
    if tls:
        cert, key = make_certificate(case.mktemp())
        overrides.setdefault("tls_cert", cert)
        overrides.setdefault("tls_key", key)
    overrides.setdefault("db_path", ":memory:")
    config = make_config(**overrides)
    the_clock = clock if clock is not None else reactor
    from freeq.store.service import StoreService, open_persistence

    persistence = open_persistence(config, reactor, reactor.seconds())
    store_service = StoreService(persistence.store, persistence.lock_fd)
    store_service.startService()
    server, limiter = make_irc_server(config, the_clock, persistence=persistence, net_reactor=reactor,
                                      federation=federation)
    listeners = []
    port = reactor.listenTCP(0, IRCFactory(server, limiter, the_clock), interface="127.0.0.1")
    listeners.append(port)
    tls_port = None
    if tls:
        from freeq.net.tls import load_tls_options

        options = load_tls_options(config.tls_cert, config.tls_key)  # type: ignore[arg-type]
        tport = reactor.listenSSL(0, IRCFactory(server, limiter, the_clock, secure=True), options,
                                  interface="127.0.0.1")
        listeners.append(tport)
        tls_port = tport.getHost().port
    fixture = ServerFixture(server, port.getHost().port, tls_port, listeners, [], the_clock)

    async def cleanup() -> None:
        await fixture.stop()
        await store_service.stopService()

    case.addCleanup(lambda: defer.ensureDeferred(cleanup()))
    return fixture


def start_tree(config: Config) -> tuple[Any, int]:
    """Start the whole ``twistd freeq`` service tree (:func:`freeq.tap.build_service`) for ``config``.

    Returns the started top service and the port of its one IRC listener (``config.listen`` with
    port 0 gets a free one). The caller stops the tree (``await top.stopService()``).
    """
    from freeq.tap import build_service

    top = build_service(config, reactor)
    top.startService()
    ports = tree_ports(top)
    assert len(ports) == 1, f"expected one IRC listener, got {len(ports)}"
    return top, ports[0].getHost().port


def tree_ports(top: Any) -> list[Any]:
    """The listening ports of a started service tree's endpoint services, as each binds (a list that fills)."""
    from twisted.application.internet import StreamServerEndpointService

    ports: list[Any] = []

    def got_port(port: Any) -> Any:
        ports.append(port)
        return port  # the service stops listening through this same Deferred

    for svc in top:
        if isinstance(svc, StreamServerEndpointService):
            svc._waitingForPort.addCallback(got_port)
    return ports


def make_certificate(directory: str, cn: str = "localhost") -> tuple[str, str]:
    """Generate a throw-away self-signed certificate and key (PEM) with openssl; return their paths."""
    os.makedirs(directory, exist_ok=True)
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import datetime

    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pkey.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
        .sign(pkey, hashes.SHA256())
    )
    with open(cert, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key, "wb") as f:
        f.write(pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.chmod(key, 0o600)
    return cert, key


@dataclasses.dataclass
class WebFixture:
    """The web listener (``/irc``, ``/api/v1``, ``/auth/broker``, ``/metrics``) of a :class:`ServerFixture`."""

    site: Any
    port: int
    tls: bool

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:<port>``."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The IRC WebSocket endpoint."""
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/irc"


async def start_web(case: unittest.TestCase, srv: ServerFixture, tls: bool = False, **overrides: Any) -> WebFixture:
    """Start the web listener for ``srv`` on 127.0.0.1:0, sharing its per-IP limiter; stopped in cleanup.

    ``overrides`` replace config fields (``trusted_proxies``, ``broker_shared_secret``, ...) or set the
    site's limits (``rate_burst``, ``rate_per_second``, ``max_body_bytes``).
    """
    from freeq.web.site import build_web_site

    limits = {k: overrides.pop(k) for k in ("rate_burst", "rate_per_second", "max_body_bytes") if k in overrides}
    config = dataclasses.replace(srv.server.config, **overrides)
    limiter = srv.listeners[0].factory.limiter
    site = build_web_site(config, srv.clock, srv.server, limiter, reactor=reactor, **limits)
    if tls:
        from freeq.net.tls import load_tls_options

        cert, key = make_certificate(case.mktemp())
        port = reactor.listenSSL(0, site, load_tls_options(cert, key), interface="127.0.0.1")
    else:
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return WebFixture(site, port.getHost().port, tls)


__all__ = [
    "asynctest", "sleep", "IRCClient", "Line", "ServerFixture", "start_server", "make_config",
    "make_certificate", "Clock", "subprocess", "WebFixture", "start_web", "start_tree", "tree_ports",
]
