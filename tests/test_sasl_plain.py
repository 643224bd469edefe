"""SASL PLAIN with a Bluesky handle (or DID) and an app password (issue #12 item 7).

Real server on loopback, with loopback AT Protocol services: a PLC directory, a handle resolver
(``com.atproto.identity.resolveHandle``) and a PDS that answers ``createSession`` /
``deleteSession`` like the reference PDS. Pure parts (response parsing, the TLS-or-loopback rule,
the back-off, the flags) are tested directly.
"""
from __future__ import annotations

import base64
import json
import secrets
from typing import Any, Optional

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web import server

from freeq.auth.multikey import generate_private_key
from freeq.auth.plain import BadPlain, PlainThrottle, parse_plain, plain_allowed
from freeq.auth.sasl import PLAIN, SaslExchange
from freeq.config import ConfigError
from freeq.tap import Options, config_from_options
from tests.atproto_servers import LoopbackServer, make_did_doc, random_plc_did, start_plc
from tests.support import IRCClient, Line, ServerFixture, asynctest, start_server, start_web
from tests.test_sasl import finish, is_cap, open_negotiation
from tests.test_web_ws import ws_connect

CREATE = "/xrpc/com.atproto.server.createSession"
DELETE = "/xrpc/com.atproto.server.deleteSession"
RESOLVE = "/xrpc/com.atproto.identity.resolveHandle"


def app_password() -> str:
    """A fresh password shaped like a Bluesky app password (xxxx-xxxx-xxxx-xxxx), unique per test."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    return "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(4))


class PasswordPDS(LoopbackServer):
    """A PDS for one account: ``createSession`` with the DID or handle and the right password mints
    tokens; ``deleteSession`` with the refresh token revokes them. Every body it got is kept."""

    def __init__(self, did: str, handle: str, password: str) -> None:
        super().__init__()
        self.did = did
        self.handle = handle
        self.password = password
        self.session_did: Optional[str] = None  # a different DID to claim in the session (hostile PDS)
        self.bodies: list[dict[str, Any]] = []
        self.live_refresh: set[str] = set()
        self.deleted: list[str] = []

    def respond(self, request: server.Request, path: str, headers: dict[str, str]) -> None:
        if path == CREATE and request.method == b"POST":
            assert request.content is not None
            body = json.loads(request.content.read() or b"{}")
            self.bodies.append(body)
            if body.get("identifier") not in (self.did, self.handle) or body.get("password") != self.password:
                self._send(request, 401, {"error": "AuthenticationRequired", "message": "Invalid identifier or password"})
                return
            refresh = "refresh-" + secrets.token_urlsafe(24)
            self.live_refresh.add(refresh)
            self._send(request, 200, {"did": self.session_did or self.did, "handle": self.handle, "active": True,
                                      "accessJwt": "access-" + secrets.token_urlsafe(24), "refreshJwt": refresh})
        elif path == DELETE and request.method == b"POST":
            token = headers.get("authorization", "").removeprefix("Bearer ")
            self.deleted.append(token)
            self.live_refresh.discard(token)
            self._send(request, 200, {})
        else:
            self._send(request, 404, {"error": "MethodNotImplemented"})

    def creates(self) -> int:
        """How many createSession calls arrived."""
        return len(self.bodies)


class HandleResolver(LoopbackServer):
    """``com.atproto.identity.resolveHandle`` over a table of handles."""

    def __init__(self) -> None:
        super().__init__()
        self.handles: dict[str, str] = {}

    def respond(self, request: server.Request, path: str, headers: dict[str, str]) -> None:
        handle = (request.args.get(b"handle") or [b""])[0].decode()
        if path == RESOLVE and handle in self.handles:
            self._send(request, 200, {"did": self.handles[handle]})
        else:
            self._send(request, 400, {"error": "InvalidRequest", "message": "Unable to resolve handle"})


def plain_payload(authcid: str, password: str, authzid: str = "") -> str:
    """The base64 PLAIN response ``authzid NUL authcid NUL password``."""
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()


def send_plain(c: IRCClient, payload: str) -> None:
    """Send a PLAIN response in IRCv3 chunks (``+`` after an exact 400-byte last chunk)."""
    for i in range(0, len(payload), 400):
        c.send("AUTHENTICATE " + payload[i:i + 400])
    if len(payload) % 400 == 0:
        c.send("AUTHENTICATE +")


async def sasl_result(c: IRCClient) -> Line:
    """The next 903 or 904."""
    return await c.expect(lambda l: l.command in ("903", "904"))


class PlainServerTests(unittest.TestCase):
    """PLAIN over real sockets against loopback PLC, resolver and PDS."""

    async def world(self, handle: str = "alice.test", clock: Any = None, **overrides: Any) -> ServerFixture:
        """A PLC directory, a resolver and a PDS for one account, and a server using them."""
        self.plc = await start_plc(self)
        self.resolver = HandleResolver()
        self.resolver.start()
        self.addCleanup(self.resolver.stop)
        self.did = random_plc_did()
        self.handle = handle
        self.password = app_password()
        self.pds = PasswordPDS(self.did, handle, self.password)
        self.pds.start()
        self.addCleanup(self.pds.stop)
        key = generate_private_key("secp256k1")
        self.plc.add(make_did_doc(self.did, [key.public_key()], handle=handle, pds_url=self.pds.url))
        self.resolver.handles[handle] = self.did
        return await start_server(self, clock=clock, allow_private_network=True, plc_directory_url=self.plc.url,
                                  handle_resolver_url=self.resolver.url, **overrides)

    async def plain(self, c: IRCClient, authcid: str, password: str, authzid: str = "") -> Line:
        """A whole PLAIN exchange; the 903/904 line."""
        c.send("AUTHENTICATE PLAIN")
        self.assertEqual((await c.expect("AUTHENTICATE")).params, ["+"])
        send_plain(c, plain_payload(authcid, password, authzid))
        return await sasl_result(c)

    def capture_log(self) -> EventLoggingObserver:
        """Every log event from now on."""
        observer = EventLoggingObserver()
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return observer

    def assert_not_logged(self, observer: EventLoggingObserver, secret: str) -> None:
        """``secret`` appears in no log event, formatted or raw (fields, failures)."""
        self.assertTrue(len(observer) > 0)
        for event in observer:
            self.assertNotIn(secret, formatEvent(event) or "")
            self.assertNotIn(secret, repr(event))
            failure = event.get("log_failure")
            if failure is not None:
                self.assertNotIn(secret, failure.getTraceback())

    @asynctest
    async def test_advertised_and_908(self) -> None:
        """CAP LS 302 offers sasl=ATPROTO-CHALLENGE,PLAIN; an unknown mechanism gets 908 listing both, then 904."""
        srv = await self.world()
        c = await srv.connect()
        c.send("CAP LS 302")
        ls = await c.expect(is_cap("LS"))
        self.assertIn("sasl=ATPROTO-CHALLENGE,PLAIN", ls.params[-1].split())
        c.send("CAP REQ :sasl")
        await c.expect(is_cap("ACK"))
        c.send("AUTHENTICATE EXTERNAL")
        self.assertEqual((await c.expect("908")).params[1:], ["ATPROTO-CHALLENGE,PLAIN", "are available SASL mechanisms"])
        await c.expect("904")

    @asynctest
    async def test_handle_login_binds_the_did(self) -> None:
        """Handle + app password: 900 with the DID and cloak, 903, WHOIS 330, the nick owned by the DID, the
        createSession made with the DID as identifier, and the PDS session revoked right after."""
        srv = await self.world()
        watcher = await srv.client("watcher", caps=("account-notify", "extended-join"))
        watcher.send("JOIN #lobby")
        await watcher.expect("366")
        c = await open_negotiation(srv, "alice")
        c.send("AUTHENTICATE PLAIN")
        await c.expect("AUTHENTICATE")
        send_plain(c, plain_payload(self.handle, self.password))
        logged_in = await c.expect("900")
        self.assertEqual(logged_in.params[1], f"alice!~alice@freeq/plc/{self.did[8:16]}")
        self.assertEqual(logged_in.params[2], self.did)
        await c.expect("903")
        await finish(c)
        c.send("JOIN #lobby")
        self.assertEqual((await watcher.expect("JOIN")).params, ["#lobby", self.did, "Real alice"])
        watcher.send("WHOIS alice")
        lines = await watcher.collect_until("318")
        self.assertEqual([l.params[2] for l in lines if l.command == "330"], [self.did])
        self.assertEqual(srv.server.nick_owner("alice"), self.did)
        self.assertEqual(self.pds.bodies, [{"identifier": self.did, "password": self.password}])
        self.assertEqual(len(self.pds.deleted), 1)
        self.assertEqual(self.pds.live_refresh, set())

        # account-notify and the same binding after registration, by DID as the username this time.
        late = await srv.client("late")
        late.send("JOIN #lobby")
        await watcher.expect("JOIN")
        self.assertEqual((await self.plain(late, self.did, self.password)).command, "903")
        notify = await watcher.expect("ACCOUNT")
        self.assertEqual(notify.params, [self.did])

    @asynctest
    async def test_chunked_response(self) -> None:
        """A response of exactly 400 base64 characters is finished by ``AUTHENTICATE +``; longer ones are
        reassembled from 400-byte chunks."""
        srv = await self.world()
        for length in (400, 404):
            raw_len = length * 3 // 4
            authcid = self.handle
            self.pds.password = password = "p" * (raw_len - 2 * len(authcid) - 2)
            payload = plain_payload(authcid, password, authzid=authcid)
            self.assertEqual(len(payload), length)
            c = await open_negotiation(srv, f"chunk{length}")
            c.send("AUTHENTICATE PLAIN")
            await c.expect("AUTHENTICATE")
            c.send("AUTHENTICATE " + payload[:400])
            await c.expect_not(lambda l: l.command in ("903", "904"))
            if length == 400:
                c.send("AUTHENTICATE +")
            else:
                c.send("AUTHENTICATE " + payload[400:])
            self.assertEqual((await sasl_result(c)).command, "903")

    @asynctest
    async def test_wrong_password(self) -> None:
        """A wrong password: 904 saying so, no account, registration as a guest; neither password is ever logged."""
        observer = self.capture_log()
        srv = await self.world()
        wrong = app_password()
        c = await open_negotiation(srv, "alice")
        line = await self.plain(c, self.handle, wrong)
        self.assertEqual(line.command, "904")
        self.assertIn("invalid handle or app password", line.params[-1])
        await finish(c)
        self.assertIsNone(srv.server.users["alice"].account)
        self.assertEqual(self.pds.live_refresh, set())
        self.assert_not_logged(observer, wrong)
        self.assertTrue(any("SASL PLAIN failed" in (formatEvent(e) or "") for e in observer))

        # and the right one (after the back-off) is not logged either
        srv.server.plain_verifier.throttle = PlainThrottle()  # type: ignore[union-attr]
        ok = await open_negotiation(srv, "alice2")
        self.assertEqual((await self.plain(ok, self.handle, self.password)).command, "903")
        self.assert_not_logged(observer, self.password)

    @asynctest
    async def test_pds_claims_another_did(self) -> None:
        """The handle's DID names a PDS whose session belongs to another DID: 904, nothing bound."""
        srv = await self.world()
        self.pds.session_did = random_plc_did()
        c = await open_negotiation(srv, "alice")
        self.assertEqual((await self.plain(c, self.handle, self.password)).command, "904")
        await finish(c)
        self.assertIsNone(srv.server.users["alice"].account)
        self.assertIsNone(srv.server.nick_owner("alice"))

    @asynctest
    async def test_handle_not_claimed_by_the_document(self) -> None:
        """A resolver pointing a handle at a DID whose document does not claim it: 904, the PDS never asked."""
        srv = await self.world()
        self.resolver.handles["mallory.test"] = self.did
        c = await open_negotiation(srv, "mallory")
        line = await self.plain(c, "mallory.test", self.password)
        self.assertEqual(line.command, "904")
        self.assertIn("could not be resolved", line.params[-1])
        self.assertEqual(self.pds.creates(), 0)

    @asynctest
    async def test_back_off_after_failures(self) -> None:
        """After a failure the next attempt (from that address, for that account) is refused unchecked with
        904 "too many failed attempts" until the back-off has passed; then the right password works."""
        clock = Clock()
        srv = await self.world(clock=clock)
        c = await open_negotiation(srv, "alice")
        self.assertEqual((await self.plain(c, self.handle, app_password())).command, "904")
        line = await self.plain(c, self.handle, self.password)
        self.assertEqual(line.command, "904")
        self.assertIn("too many failed attempts", line.params[-1])
        self.assertEqual(self.pds.creates(), 1)
        # the third failure on one connection ends it, as for ATPROTO-CHALLENGE
        self.assertEqual((await self.plain(c, self.handle, self.password)).command, "904")
        await c.closed
        self.assertEqual(self.pds.creates(), 1)
        clock.advance(3)
        d = await open_negotiation(srv, "alice")
        self.assertEqual((await self.plain(d, self.did, self.password)).command, "903")
        self.assertEqual(self.pds.creates(), 2)

    @asynctest
    async def test_bad_responses(self) -> None:
        """Malformed PLAIN responses get 904 with the reason and never reach the PDS."""
        srv = await self.world()
        cases = [
            ("!!!", "not base64"),
            (base64.b64encode(b"alice.test\0pw").decode(), "expected authzid"),
            (plain_payload("not a handle", "pw"), "Bluesky handle or a DID"),
            (plain_payload(self.handle, "pw", authzid="bob.test"), "authorization identity"),
        ]
        for i, (payload, reason) in enumerate(cases):
            c = await open_negotiation(srv, f"bad{i}")
            c.send("AUTHENTICATE PLAIN")
            await c.expect("AUTHENTICATE")
            send_plain(c, payload)
            line = await c.expect("904")
            self.assertIn(reason, line.params[-1])
        c = await open_negotiation(srv, "huge")
        c.send("AUTHENTICATE PLAIN")
        await c.expect("AUTHENTICATE")
        for _ in range(11):
            c.send("AUTHENTICATE " + "A" * 400)
        self.assertIn("too long", (await c.expect("904")).params[-1])
        self.assertEqual(self.pds.creates(), 0)

    @asynctest
    async def test_abort_and_switch_mechanism(self) -> None:
        """``AUTHENTICATE *`` aborts a PLAIN exchange (906); ATPROTO-CHALLENGE still starts as before."""
        srv = await self.world()
        c = await open_negotiation(srv, "alice")
        c.send("AUTHENTICATE PLAIN")
        await c.expect("AUTHENTICATE")
        c.send("AUTHENTICATE *")
        await c.expect("906")
        c.send("AUTHENTICATE ATPROTO-CHALLENGE")
        challenge = await c.expect("AUTHENTICATE")
        self.assertNotEqual(challenge.params, ["+"])
        c.send("AUTHENTICATE PLAIN")  # switching mid-exchange restarts as PLAIN
        self.assertEqual((await c.expect("AUTHENTICATE")).params, ["+"])
        send_plain(c, plain_payload(self.handle, self.password))
        self.assertEqual((await sasl_result(c)).command, "903")

    @asynctest
    async def test_plaintext_from_afar_refused(self) -> None:
        """A client that is not on loopback and not on TLS (here: a WebSocket through a trusted proxy that
        forwards 198.51.100.7 over http) is refused before it sends a password; over https, or with
        --sasl-plain-insecure, it may log in."""
        for insecure, headers, allowed in (
                (False, {"X-Forwarded-For": "198.51.100.7"}, False),
                (False, {"X-Forwarded-For": "198.51.100.8", "X-Forwarded-Proto": "https"}, True),
                (True, {"X-Forwarded-For": "198.51.100.9"}, True)):
            srv = await self.world(sasl_plain_insecure=insecure)
            web = await start_web(self, srv, trusted_proxies=("127.0.0.0/8",))
            ws = await ws_connect(self, web, headers=headers)
            ws.send("CAP REQ :sasl")
            await ws.expect(is_cap("ACK"))
            ws.send("AUTHENTICATE PLAIN")
            if not allowed:
                line = await ws.expect("904")
                self.assertIn("use a TLS connection", line.params[-1])
                self.assertEqual(self.pds.creates(), 0)
                continue
            await ws.expect("AUTHENTICATE")
            ws.send("AUTHENTICATE " + plain_payload(self.handle, self.password))
            self.assertEqual((await ws.expect(lambda l: l.command in ("903", "904"))).command, "903")
        self.assertEqual(self.pds.creates(), 1)

    @asynctest
    async def test_turned_off(self) -> None:
        """``--sasl-plain off``: CAP LS offers only ATPROTO-CHALLENGE and PLAIN gets 908 + 904."""
        srv = await self.world(sasl_plain=False)
        c = await srv.connect()
        c.send("CAP LS 302")
        ls = await c.expect(is_cap("LS"))
        self.assertIn("sasl=ATPROTO-CHALLENGE", ls.params[-1].split())
        c.send("CAP REQ :sasl")
        await c.expect(is_cap("ACK"))
        c.send("AUTHENTICATE PLAIN")
        self.assertEqual((await c.expect("908")).params[1], "ATPROTO-CHALLENGE")
        await c.expect("904")
        self.assertEqual(self.pds.creates(), 0)


class PlainUnitTests(unittest.TestCase):
    """The pure parts: parsing, the transport rule, the back-off, reassembly, the flags."""

    def test_parse(self) -> None:
        """Handles are lower-cased (a leading @ dropped), DIDs kept; authzid empty or the same; did:key refused."""
        creds = parse_plain(plain_payload("@Alice.Test", "pw"))
        self.assertEqual((creds.authcid, creds.password), ("alice.test", "pw"))
        self.assertNotIn("pw", repr(creds))
        did = random_plc_did()
        self.assertEqual(parse_plain(plain_payload(did, "pw", authzid=did)).authcid, did)
        for bad in (plain_payload("alice.test", ""), plain_payload("did:key:z6Mkabc", "pw"),
                    plain_payload("alice.test", "pw", authzid="bob.test"), plain_payload("alice.test", "x" * 1025),
                    "A" * 5000, "YWJj-_", base64.b64encode(b"\xff\0a.b\0c").decode()):
            self.assertRaises(BadPlain, parse_plain, bad)

    def test_bad_plain_reasons_hold_no_secret(self) -> None:
        """The reasons (sent in 904 and logged) never contain the response's password."""
        secret = "hunter2-secret"
        for payload in (plain_payload("a.test", secret, authzid="b.test"), plain_payload("nope", secret)):
            with self.assertRaises(BadPlain) as caught:
                parse_plain(payload)
            self.assertNotIn(secret, str(caught.exception))

    def test_transport_rule(self) -> None:
        """A password is accepted over TLS, from loopback, or with --sasl-plain-insecure; not over plaintext."""
        self.assertTrue(plain_allowed(True, "203.0.113.5", False))
        self.assertTrue(plain_allowed(False, "127.0.0.1", False))
        self.assertTrue(plain_allowed(False, "::1", False))
        self.assertTrue(plain_allowed(False, "203.0.113.5", True))
        self.assertFalse(plain_allowed(False, "203.0.113.5", False))
        self.assertFalse(plain_allowed(False, "::ffff:203.0.113.5", False))
        self.assertFalse(plain_allowed(False, "unix-socket", False))

    def test_throttle_per_address_and_account(self) -> None:
        """A failure holds back its address (IPv6 by /64) and its account, across spellings, with doubling waits."""
        t = PlainThrottle(base=2.0, cap=60.0)
        did = random_plc_did()
        t.fail("203.0.113.5", ("alice.test", did), 100.0)
        self.assertEqual(t.wait("203.0.113.5", ("bob.test",), 100.0), 2.0)  # the address
        self.assertEqual(t.wait("198.51.100.7", ("Alice.Test",), 100.0), 2.0)  # the account, other address
        self.assertEqual(t.wait("198.51.100.7", (did,), 101.0), 1.0)
        self.assertEqual(t.wait("198.51.100.7", ("bob.test",), 100.0), 0.0)
        t.fail("2001:db8::1", ("carol.test",), 100.0)
        t.fail("2001:db8::2", ("carol.test",), 100.0)
        self.assertEqual(t.wait("2001:db8::3", ("dave.test",), 100.0), 4.0)  # same /64, doubled
        t.succeed("198.51.100.7", ("alice.test", did))
        self.assertEqual(t.wait("198.51.100.7", ("alice.test", did), 100.0), 0.0)

    def test_reassembly(self) -> None:
        """For PLAIN a 400-byte chunk always waits for more (no JSON sniffing), and the cap is small."""
        sasl = SaslExchange()
        sasl.start_plain()
        self.assertEqual(sasl.mechanism, PLAIN)
        self.assertIsNone(sasl.feed("A" * 400))
        self.assertEqual(sasl.feed("+"), "A" * 400)
        for _ in range(10):
            self.assertIsNone(sasl.feed("A" * 400))
        self.assertIsInstance(sasl.feed("A" * 400), ValueError)
        sasl.start(0.0)
        self.assertNotEqual(sasl.mechanism, PLAIN)

    def test_flags(self) -> None:
        """--sasl-plain on|off (default on), --sasl-plain-insecure (default off), --handle-resolver-url."""
        def config(*argv: str) -> Any:
            options = Options()
            options.parseOptions(list(argv))
            return config_from_options(options, {})

        default = config()
        self.assertTrue(default.sasl_plain)
        self.assertFalse(default.sasl_plain_insecure)
        self.assertEqual(default.handle_resolver_url, "https://public.api.bsky.app")
        self.assertFalse(config("--sasl-plain", "off").sasl_plain)
        self.assertTrue(config("--sasl-plain-insecure").sasl_plain_insecure)
        self.assertEqual(config("--handle-resolver-url", "https://bsky.social").handle_resolver_url,
                         "https://bsky.social")
        self.assertRaises(ConfigError, config, "--sasl-plain", "maybe")
        self.assertRaises(ConfigError, config, "--handle-resolver-url", "ftp://x")

