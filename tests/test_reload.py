"""Live reload (issue #13 item 1): REHASH and SIGHUP re-read the config file into the running server, over real
sockets: the MOTD, TLS certificates (IRC and web), limits and oper gating change while connected clients stay;
a broken file is refused with one line and the running configuration kept; what needs a restart is kept and
named."""
from __future__ import annotations

import os
import signal
from typing import Any, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints, reactor, ssl
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from freeq.config import Config
from freeq.net.connection import IRCFactory
from freeq.tap import ConfigReloader, Options, _ReloadSignalService, build_service, config_from_options
from tests.support import NO_PUBLIC_PLC, IRCClient, asynctest, make_certificate, sleep
from tests.twistd_support import ForegroundTwistd, free_port


class Fixture:
    """A whole ``twistd freeq`` service tree built from a config file (``--config``) with the test's body."""

    def __init__(self, case: unittest.TestCase, body: str, tls: bool = False, web_tls: bool = False) -> None:
        self.case = case
        self.dir = os.path.abspath(case.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "freeq.toml")
        self.tls = tls
        self.web_tls = web_tls
        self.certs: dict[str, tuple[str, str]] = {}
        if tls:
            self.certs["irc"] = make_certificate(os.path.join(self.dir, "irc-tls"), cn="irc-one")
        if web_tls:
            self.certs["web"] = make_certificate(os.path.join(self.dir, "web-tls"), cn="web-one")
        self.write(body)
        self.options = Options()
        self.options.parseOptions(["--config", self.path])
        self.clients: list[IRCClient] = []
        self.ports: dict[str, Any] = {}

    def write(self, body: str) -> None:
        """Write the config file: the fixture's listeners and storage, then ``body``."""
        head = [f'data-dir = "{os.path.join(self.dir, "data")}"', 'db-path = "none"', 'listen-addr = "127.0.0.1:0"',
                'connection-rate = 0', f'plc-directory-url = "{NO_PUBLIC_PLC}"']
        if self.tls:
            cert, key = self.certs["irc"]
            head += ['tls-listen-addr = "127.0.0.1:0"', f'tls-cert = "{cert}"', f'tls-key = "{key}"']
        else:
            head.append('tls-listen-addr = "none"')
        if self.web_tls:
            cert, key = self.certs["web"]
            head += ['web-addr = "127.0.0.1:0"', f'web-tls-cert = "{cert}"', f'web-tls-key = "{key}"']
        with open(self.path, "w", encoding="utf-8") as f:
            f.write("\n".join(head) + "\n" + body)

    def start(self) -> "Fixture":
        """Build (as makeService does: the reload re-reads the file with the same options) and start the tree."""
        config = config_from_options(self.options, {})
        self.top = build_service(config, reactor, lambda: config_from_options(self.options, {}))
        self.top.startService()
        for svc in self.top:
            if isinstance(svc, StreamServerEndpointService):
                if isinstance(svc.factory, IRCFactory):
                    kind = "tls" if svc.factory.secure else "irc"
                else:
                    kind = "web"
                svc._waitingForPort.addCallback(self._bound, kind)
        self.case.addCleanup(self.stop)
        return self

    def _bound(self, port: Any, kind: str) -> Any:
        """Record the listening port of the ``kind`` listener (irc, tls, web)."""
        self.ports[kind] = port
        return port

    async def stop(self) -> None:
        """Close the clients, then stop the tree (the case's cleanup)."""
        for c in self.clients:
            c.disconnect()
        for c in self.clients:
            if not c.is_closed:
                await c.closed
        await self.top.stopService()

    @property
    def server(self) -> Any:
        """The running IRCServer."""
        return self.top.irc_server

    @property
    def reloader(self) -> ConfigReloader:
        """The tree's reloader (what REHASH and SIGHUP call)."""
        return self.top.reloader

    def signal_service(self) -> _ReloadSignalService:
        """The service that installs the SIGHUP handler."""
        return next(s for s in self.top if isinstance(s, _ReloadSignalService))

    async def connect(self, kind: str = "irc") -> IRCClient:
        """A raw connection to the ``kind`` listener (plain IRC, or TLS for tls and web)."""
        client = IRCClient()
        port = self.ports[kind].getHost().port
        if kind == "irc":
            ep: Any = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        else:
            ep = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", port, ssl.ClientContextFactory())
        self.clients.append(client)
        await endpoints.connectProtocol(ep, client)
        await client.connected_d
        return client

    async def client(self, nick: str, kind: str = "irc") -> IRCClient:
        """A registered client ``nick``."""
        c = await self.connect(kind)
        c.nick = nick
        c.send(f"NICK {nick}")
        c.send(f"USER {nick} 0 * :{nick}")
        await c.expect(lambda l: l.command in ("376", "422"))
        c.skip()
        return c

    async def oper(self, nick: str = "boss") -> IRCClient:
        """A registered client made operator with the shared password (every privilege)."""
        c = await self.client(nick)
        c.send("OPER admin oper-pw-123")
        await c.expect("381")
        c.skip()
        return c


def peer_digest(client: IRCClient) -> str:
    """The SHA-256 digest of the certificate the server presented on ``client``'s TLS connection."""
    cert = client.transport.getPeerCertificate()
    assert cert is not None, "no TLS handshake yet"
    return cert.digest("sha256").decode()


def file_digest(cert_path: str) -> str:
    """The SHA-256 digest of the certificate in the PEM file ``cert_path``."""
    with open(cert_path, "rb") as f:
        return ssl.Certificate.loadPEM(f.read()).original.digest("sha256").decode()


def log_events(case: unittest.TestCase) -> list[dict[str, Any]]:
    """Every log event from now until the end of ``case``."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


OPER = 'oper-password-file = "{secret}"\n'


class RehashTests(unittest.TestCase):
    """REHASH over real sockets."""

    def fixture(self, body: str = "", **kw: Any) -> Fixture:
        """A Fixture whose file also sets the shared OPER password through oper-password-file."""
        secret = os.path.abspath(self.mktemp())
        with open(secret, "w") as f:
            f.write("oper-pw-123\n")
        os.chmod(secret, 0o600)
        self.oper_body = OPER.format(secret=secret)
        return Fixture(self, self.oper_body + body, **kw)

    @asynctest
    async def test_rehash_by_oper_and_refused_without(self) -> None:
        """A non-operator gets 481 and nothing reloads; an operator (the shared password grants every privilege)
        gets 382 naming the file, the reload, and the action is logged as an oper action."""
        events = log_events(self)
        fx = self.fixture('motd = "before"\n').start()
        user = await fx.client("plain")
        user.send("REHASH")
        await user.expect(lambda l: l.command == "481" and "not an IRC operator" in l.params[-1])
        before = fx.server.config
        boss = await fx.oper()
        fx.write(self.oper_body + 'motd = "after"\n')
        boss.send("REHASH")
        line = await boss.expect("382")
        self.assertEqual(line.params[1:], [fx.path, "Rehashing"])
        await boss.expect(lambda l: l.command == "NOTICE" and l.params[-1] == "*** Configuration reloaded")
        self.assertIsNot(fx.server.config, before)
        self.assertEqual(fx.server.motd, ["after"])
        actions = [e for e in events if e.get("action") == "rehash"]
        self.assertEqual(len(actions), 1)
        self.assertEqual((actions[0]["nick"], actions[0]["ip"]), ("boss", "127.0.0.1"))

    @asynctest
    async def test_oper_without_rehash_privilege(self) -> None:
        """An [[oper]] account whose privileges lack ``rehash`` is refused with 481."""
        from freeq.opers import hash_password

        fx = self.fixture(f'[[oper]]\nname = "killer"\npassword = "{hash_password("kill-pw-123")}"\n'
                          'privileges = ["kill"]\n').start()
        c = await fx.client("killer")
        c.send("OPER killer kill-pw-123")
        await c.expect("381", timeout=10)
        before = fx.server.config
        c.send("REHASH")
        await c.expect("481")
        await c.expect_not("382")
        self.assertIs(fx.server.config, before)

    @asynctest
    async def test_motd_change_visible_and_client_stays(self) -> None:
        """A new motd-file is read on REHASH: a client connected before sees it with MOTD and stays, a new
        client gets it at registration."""
        motd = os.path.join(os.path.abspath(self.mktemp()))
        with open(motd, "w") as f:
            f.write("first message of the day\n")
        fx = self.fixture(f'motd-file = "{motd}"\n').start()
        early = await fx.client("early")
        with open(motd, "w") as f:
            f.write("second message of the day\n")
        boss = await fx.oper()
        boss.send("REHASH")
        await boss.expect("NOTICE")
        early.send("MOTD")
        await early.expect(lambda l: l.command == "372" and "second message of the day" in l.params[-1])
        late = await fx.connect()
        late.send("NICK late")
        late.send("USER late 0 * :late")
        await late.expect(lambda l: l.command == "372" and "second message of the day" in l.params[-1])
        self.assertFalse(early.is_closed)

    @asynctest
    async def test_broken_file_refused_and_config_kept(self) -> None:
        """A bad value is refused with one FAIL line naming the file and key; the running config stays, and a
        fixed file reloads afterwards."""
        fx = self.fixture('nick-len = 30\nmotd = "kept"\n').start()
        boss = await fx.oper()
        before = fx.server.config
        fx.write(self.oper_body + 'nick-len = 99\nmotd = "lost"\n')
        boss.send("REHASH")
        await boss.expect("382")
        fail = await boss.expect("FAIL")
        self.assertEqual(fail.params[:2], ["REHASH", "CONFIG_ERROR"])
        self.assertIn(f"{fx.path}: nick-len: must be between 9 and 64, got 99", fail.params[-1])
        self.assertIs(fx.server.config, before)
        self.assertEqual(fx.server.motd, ["kept"])
        fx.write(self.oper_body + 'nick-len = 30\nunknown-key = 1\n')
        boss.send("REHASH")
        fail = await boss.expect("FAIL")
        self.assertIn("unknown key 'unknown-key'", fail.params[-1])
        fx.write(self.oper_body + 'nick-len = 31\n')
        boss.send("REHASH")
        await boss.expect(lambda l: l.command == "NOTICE" and "reloaded" in l.params[-1])
        self.assertEqual(fx.server.config.nick_len, 31)

    @asynctest
    async def test_restart_fields_kept_and_named(self) -> None:
        """A changed listener address or server name is not applied live: the running value stays and the reload
        names it (NOTICE to the oper, a warn line); the other changes apply."""
        events = log_events(self)
        fx = self.fixture('max-targets = 4\n').start()
        boss = await fx.oper()
        old_listen = fx.server.config.listen
        fx.write(self.oper_body + 'max-targets = 6\nserver-name = "renamed.example"\n')
        with open(fx.path) as f:
            text = f.read().replace('listen-addr = "127.0.0.1:0"', 'listen-addr = "127.0.0.1:1"')
        with open(fx.path, "w") as f:
            f.write(text)
        boss.send("REHASH")
        notice = await boss.expect(lambda l: l.command == "NOTICE" and "need a restart" in l.params[-1])
        self.assertIn("listen", notice.params[-1])
        self.assertIn("server-name", notice.params[-1])
        config = fx.server.config
        self.assertEqual((config.listen, config.server_name, config.max_targets), (old_listen, "freeq", 6))
        warns = [e for e in events if e.get("log_level") == LogLevel.warn and "need a restart" in e.get(
            "log_format", "")]
        self.assertEqual(len(warns), 1)
        self.assertIn("listen", warns[0]["fields"])

    @asynctest
    async def test_limit_change_takes_effect(self) -> None:
        """max-connections-per-ip raised by a reload admits a connection refused before; connected clients stay."""
        fx = self.fixture("max-connections-per-ip = 2\n").start()
        boss = await fx.oper()
        other = await fx.client("other")
        refused = await fx.connect()
        await refused.expect(lambda l: l.command == "ERROR" and "Too many connections" in l.params[-1])
        await refused.closed
        fx.write(self.oper_body + "max-connections-per-ip = 3\n")
        boss.send("REHASH")
        await boss.expect("NOTICE")
        third = await fx.client("third")
        third.send("PING :alive")
        await third.expect("PONG")
        other.send("PING :alive")
        await other.expect("PONG")
        self.assertEqual(fx.server.config.max_connections_per_ip, 3)
        factories = [s.factory for s in fx.top if isinstance(getattr(s, "factory", None), IRCFactory)]
        self.assertTrue(factories)
        self.assertTrue(all(f.config is fx.server.config for f in factories))  # flood and send-queue limits


    @asynctest
    async def test_flood_limits_follow_a_reload_on_open_connections(self) -> None:
        """flood-burst/flood-rate changed by a reload apply to a client connected before it, not only to the next:
        its token bucket takes the new burst and rate, and holds no more than the new burst."""
        fx = self.fixture("flood-burst = 50\nflood-rate = 50\n").start()
        boss = await fx.oper()
        early = await fx.client("early")
        fx.write(self.oper_body + "flood-burst = 3\nflood-rate = 0.5\n")
        boss.send("REHASH")
        await boss.expect("NOTICE")
        early.send("PING :still here")  # connected across the reload (and one token spent)
        await early.expect("PONG")
        early_conn = None
        for user in fx.server.connections:
            if user.nick == "early":
                early_conn = user.conn
        assert early_conn is not None
        bucket = early_conn._bucket
        self.assertEqual((bucket.burst, bucket.rate), (3.0, 0.5))
        self.assertLessEqual(bucket.tokens, 3.0)


class TLSReloadTests(unittest.TestCase):
    """New certificate files are served to new connections after a reload; connected clients keep theirs."""

    def test_reloadable_context_declares_its_interface(self) -> None:
        """ReloadableTLS is an IOpenSSLContextFactory, so Twisted's TLS wrapper takes it without the
        LegacyContextFactoryWarning it logged at every start (and calls getContext per connection)."""
        from twisted.internet.interfaces import IOpenSSLContextFactory

        from freeq.net.tls import ReloadableTLS

        cert, key = make_certificate(self.mktemp())
        self.assertTrue(IOpenSSLContextFactory.providedBy(ReloadableTLS(cert, key)))

    @asynctest
    async def test_irc_and_web_tls_certificates_reload(self) -> None:
        """Both TLS listeners (IRC and web) present the new certificate to connections made after the reload; a
        client connected before keeps its session and its certificate and stays connected."""
        fx = Fixture(self, "", tls=True, web_tls=True).start()
        irc_cert, irc_key = fx.certs["irc"]
        web_cert, web_key = fx.certs["web"]
        first_irc, first_web = file_digest(irc_cert), file_digest(web_cert)
        before = await fx.client("before", kind="tls")
        self.assertEqual(peer_digest(before), first_irc)
        web_before = await fx.connect("web")
        web_before.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await web_before.expect(r"^HTTP/1.1 200")
        self.assertEqual(peer_digest(web_before), first_web)
        # The certificate files are renewed in place (as certbot does), then the server reloads.
        for (cert, key), cn in ((fx.certs["irc"], "irc-two"), (fx.certs["web"], "web-two")):
            new_cert, new_key = make_certificate(os.path.join(fx.dir, cn), cn=cn)
            os.replace(new_cert, cert)
            os.replace(new_key, key)
        self.assertNotEqual(file_digest(irc_cert), first_irc)
        fx.write("web-max-connections-per-ip = 7\nflood-queue = 11\n")
        outcome = fx.reloader.reload("test")
        self.assertTrue(outcome.ok, outcome.error)
        # The web listener's bounds and its WebSocket factory (flood and send-queue limits) follow the reload.
        from freeq.web.site import WebSite

        site = next(s.factory for s in fx.top if isinstance(getattr(s, "factory", None), WebSite))
        self.assertEqual(site.connections.per_ip, 7)
        self.assertIs(site.resource.children[b"irc"].factory.config, fx.server.config)
        self.assertEqual(fx.server.config.flood_queue, 11)
        after = await fx.client("after", kind="tls")
        self.assertEqual(peer_digest(after), file_digest(irc_cert))
        web_after = await fx.connect("web")
        web_after.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await web_after.expect(r"^HTTP/1.1 200")
        self.assertEqual(peer_digest(web_after), file_digest(web_cert))
        # The clients connected before are still there, on their old sessions.
        before.send("PRIVMSG after :still here")
        await after.expect(lambda l: l.command == "PRIVMSG" and l.params[-1] == "still here")
        self.assertEqual(peer_digest(before), first_irc)
        web_before.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await web_before.expect(r"^HTTP/1.1 200")
        self.assertEqual(peer_digest(web_before), first_web)
        self.assertFalse(before.is_closed or web_before.is_closed)

    @asynctest
    async def test_bad_certificate_refused_and_old_one_served(self) -> None:
        """A certificate file replaced by garbage refuses the reload (naming --tls-cert); the old one is served."""
        fx = Fixture(self, "", tls=True).start()
        cert, _key = fx.certs["irc"]
        first = file_digest(cert)
        with open(cert, "w") as f:
            f.write("not a certificate\n")
        outcome = fx.reloader.reload("test")
        self.assertFalse(outcome.ok)
        self.assertIn("--tls-cert:", outcome.error)
        c = await fx.client("still", kind="tls")
        self.assertEqual(peer_digest(c), first)


class SighupTests(unittest.TestCase):
    """SIGHUP runs the same reload, in the reactor thread."""

    @asynctest
    async def test_handler_installed_and_restored(self) -> None:
        """Starting the tree installs the SIGHUP handler; stopping it puts the previous one back."""
        previous = signal.getsignal(signal.SIGHUP)
        fx = Fixture(self, "").start()
        svc = fx.signal_service()
        self.assertEqual(signal.getsignal(signal.SIGHUP), svc.on_signal)
        await fx.top.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)
        fx.top.startService()  # the cleanup stops it again

    @asynctest
    async def test_sighup_reloads(self) -> None:
        """A real SIGHUP to this process reloads the file (a connected client stays)."""
        fx = Fixture(self, 'motd = "one"\n').start()
        c = await fx.client("watcher")
        self.assertEqual(signal.getsignal(signal.SIGHUP), fx.signal_service().on_signal)
        fx.write('motd = "two"\n')
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if fx.server.motd == ["two"]:
                break
            await sleep(0.02)
        self.assertEqual(fx.server.motd, ["two"])
        c.send("PING :x")
        await c.expect("PONG")

    @asynctest
    async def test_sighup_broken_file_logged_at_error(self) -> None:
        """On SIGHUP a broken file is one error log line and the running configuration is kept."""
        events = log_events(self)
        fx = Fixture(self, 'max-targets = 4\n').start()
        before = fx.server.config
        fx.write('max-targets = "four"\n')
        fx.signal_service().on_signal(signal.SIGHUP, None)  # what the handler does: schedule the reload
        refused: list[dict[str, Any]] = []
        for _ in range(100):
            refused = [e for e in events if e.get("log_level") == LogLevel.error and "refused" in e.get(
                "log_format", "")]
            if refused:
                break
            await sleep(0.02)
        self.assertEqual(len(refused), 1)
        self.assertEqual(refused[0]["origin"], "SIGHUP")
        self.assertEqual(refused[0]["error"], f"{fx.path}: max-targets: expected a whole number, got 'four'")
        self.assertIs(fx.server.config, before)


class ReconfigureFederationTests(unittest.TestCase):
    """Federation.reconfigure applies the reloaded allowlist, trust and rate (a unit test over a fake bridge)."""

    def test_reconfigure(self) -> None:
        from twisted.internet.task import Clock

        from freeq.core.server import IRCServer
        from freeq.s2s import protocol as P
        from freeq.s2s.federation import Federation
        from freeq.s2s.protocol import EventSigner
        from tests.support import make_config

        class Bridge:
            """A stand-in for the iroh bridge: records closed links and dialled peers."""

            def __init__(self) -> None:
                self.allowed: Optional[frozenset[str]] = frozenset()
                self.peers: dict[str, Any] = {}
                self.closed: list[tuple[int, str]] = []
                self.added: list[Any] = []
                self.sent: list[Any] = []

            def send(self, link_id: int, data: bytes) -> None:
                self.sent.append((link_id, data))

            def close_link(self, link_id: int, reason: str, code: int = 2) -> None:
                self.closed.append((link_id, reason))

            def add_peer(self, peer: Any) -> None:
                self.added.append(peer)
                self.peers[peer.endpoint_id] = peer

        clock = Clock()
        server = IRCServer(make_config(), clock)
        bridge = Bridge()
        fed = Federation(server, bridge, EventSigner(os.urandom(32)), clock)
        a, b = EventSigner(os.urandom(32)), EventSigner(os.urandom(32))
        for link_id, peer in ((1, a), (2, b)):
            fed.link_up(link_id, peer.server_id, incoming=True)
            fed.link_frames(link_id, [P.encode_message(P.make_hello(peer.server_id, "p", "freeq", 1))[4:]])
        new_peer = "c" * 64
        config = Config(iroh=True, s2s_allowed_peers=(a.server_id, new_peer), s2s_peers=((new_peer, None, None),),
                        s2s_peer_trust=((a.server_id, "readonly"),), s2s_rate=5.0, s2s_max_remote_users=7)
        fed.reconfigure(config)
        self.assertEqual(bridge.allowed, frozenset({a.server_id, new_peer}))
        self.assertEqual((fed.links[1].trust, fed.rate, fed.max_remote_users), ("readonly", 5.0, 7))
        self.assertEqual(bridge.closed, [(2, "no longer allowed")])
        self.assertEqual([p.endpoint_id for p in bridge.added], [new_peer])
        fed.reconfigure(Config(iroh=True, s2s_open_federation=True))
        self.assertIsNone(bridge.allowed)
        self.assertEqual(fed.links[1].trust, "full")


class ReloadedBlocksTests(unittest.TestCase):
    """Oper accounts and [[kline]] bans come from the file and follow a reload."""

    @asynctest
    async def test_oper_account_and_kline_from_reload(self) -> None:
        """An [[oper]] block added by a reload lets its account OPER; a [[kline]] added by a reload refuses the
        next connection it covers while the connected clients it does not cover stay."""
        from freeq.opers import hash_password

        fx = Fixture(self, "")
        secret = os.path.join(fx.dir, "oper.secret")
        with open(secret, "w") as f:
            f.write("oper-pw-123\n")
        os.chmod(secret, 0o600)
        base = f'oper-password-file = "{secret}"\noper-backoff-base = 0\n'  # no wait after the failed OPER
        fx.write(base)
        fx.start()
        boss = await fx.oper()
        carol = await fx.client("carol")
        carol.send("OPER carol carol-pw-123")
        await carol.expect("464", timeout=10)  # no such account yet: the shared password is checked, and fails
        fx.write(base + f'[[oper]]\nname = "carol"\npassword = "{hash_password("carol-pw-123")}"\n'
                        'privileges = ["rehash"]\n'
                        '[[kline]]\nmask = "banned@127.0.0.1"\nreason = "reload test"\n')
        boss.send("REHASH")
        await boss.expect(lambda l: l.command == "NOTICE" and "reloaded" in l.params[-1])
        self.assertEqual([a.name for a in fx.server.config.opers], ["carol"])
        self.assertEqual(fx.server.config.config_bans, (("banned@127.0.0.1", "reload test"),))
        carol.send("OPER carol carol-pw-123")
        await carol.expect("381", timeout=10)
        banned = await fx.connect()
        banned.send("NICK banned")
        banned.send("USER banned 0 * :banned")
        refused = await banned.expect("ERROR")
        self.assertIn("reload test", refused.raw)
        await banned.closed
        carol.send("PING :alive")
        await carol.expect("PONG")
        self.assertFalse(boss.is_closed)


class TwistdReloadTests(unittest.TestCase):
    """The real ``twistd freeq --config``: SIGHUP to the process reloads the file, keeping command-line flags."""

    @asynctest
    async def test_twistd_sighup(self) -> None:
        """A broken file on SIGHUP is refused with an error line and the process serves on; a fixed one reloads
        (new MOTD) while the command line's --max-targets still overrides the file, and the client stays."""
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        port = free_port()
        path = os.path.join(home, "freeq.toml")

        def write(body: str) -> None:
            with open(path, "w") as f:
                f.write(f'listen-addr = "127.0.0.1:{port}"\ntls-listen-addr = "none"\n'
                        f'data-dir = "{os.path.join(home, "data")}"\ndb-path = "none"\nmax-targets = 3\n' + body)

        write('motd = "first motd"\n')
        twistd = ForegroundTwistd(self, home, "--config", path, "--max-targets", "7")
        proc = twistd.proc
        client = await twistd.connect(port)
        self.addCleanup(client.disconnect)
        client.send("NICK sub")
        client.send("USER sub 0 * :Subprocess")
        await client.expect(r"TARGMAX=PRIVMSG:7,", timeout=10)
        await client.expect(lambda l: l.command == "372" and "first motd" in l.params[-1])

        write('motd = "second motd"\nnick-len = 99\n')
        proc.send_signal(signal.SIGHUP)
        self.assertIn(f"configuration reload (SIGHUP) refused, the running configuration is kept: {path}: "
                      "nick-len: must be between 9 and 64, got 99", await twistd.wait_logged("refused"))
        client.send("MOTD")
        await client.expect(lambda l: l.command == "372" and "first motd" in l.params[-1])

        write('motd = "second motd"\n')
        proc.send_signal(signal.SIGHUP)
        await twistd.wait_logged("configuration reloaded (SIGHUP)")
        client.send("MOTD")
        await client.expect(lambda l: l.command == "372" and "second motd" in l.params[-1])
        client.send("VERSION")
        await client.expect(r"TARGMAX=PRIVMSG:7,")  # the command line still beats the file's max-targets = 3
        self.assertIsNone(proc.poll())
        self.assertFalse(client.is_closed)
