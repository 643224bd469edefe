"""The auth broker (HMAC, skew, replay, missing secret) and the web/bearer token stores."""
from __future__ import annotations

import base64
import json
from typing import Any, Optional

import treq
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.web.broker import broker_signature, nick_for_handle
from freeq.web.tokens import BearerTokenStore, WebTokenStore
from tests.support import ServerFixture, WebFixture, asynctest, start_server, start_web

SECRET = "correct horse battery staple"
DID = "did:plc:brokered00000000000000000"
NOW = 1_700_000_000


async def broker(case: unittest.TestCase, secret: Optional[str] = SECRET) -> tuple[ServerFixture, WebFixture, Clock]:
    """A server whose clock is a Clock at NOW, with the web listener and (optionally) a broker secret."""
    clock = Clock()
    clock.advance(NOW)
    srv = await start_server(case, clock=clock)
    web = await start_web(case, srv, broker_shared_secret=secret)
    return srv, web, clock


async def post(web: WebFixture, route: str, body: bytes, ts: Optional[str] = None, sig: Optional[str] = None,
               secret: str = SECRET, sign_ts: Optional[str] = None) -> tuple[int, Any]:
    """POST to /auth/broker/<route>; by default signed correctly for ``ts``."""
    headers: dict[str, str] = {"Content-Type": "application/json"}
    if ts is not None:
        headers["X-Broker-Timestamp"] = ts
    if sig is None and ts is not None:
        sig = broker_signature(secret, sign_ts if sign_ts is not None else ts, body)
    if sig is not None:
        headers["X-Broker-Signature"] = sig
    response = await treq.post(web.url + "/auth/broker/" + route, data=body, headers=headers, persistent=False)
    return response.code, json.loads(await response.content())


def body(**fields: Any) -> bytes:
    """A JSON request body."""
    return json.dumps(fields).encode()


class BrokerHMACTests(unittest.TestCase):
    """The reference's §13.8 cases, with replay refused and constant-time comparison."""

    @asynctest
    async def test_good_signature_mints_a_token(self) -> None:
        """A correct HMAC with a current timestamp mints a token echoing did/handle and the derived nick."""
        srv, web, _ = await broker(self)
        code, data = await post(web, "web-token", body(did=DID, handle="alice.bsky.social"), ts=str(NOW))
        self.assertEqual(code, 200)
        self.assertEqual((data["did"], data["handle"], data["nick"]), (DID, "alice.bsky.social", "alice"))
        self.assertEqual(len(data["token"]), 43)
        self.assertEqual(srv.server.web_tokens.consume(data["token"]), (DID, "alice.bsky.social"))
        self.assertIsNone(srv.server.web_tokens.consume(data["token"]))

    @asynctest
    async def test_three_mints_three_tokens(self) -> None:
        """Each mint (distinct bodies) yields a distinct token."""
        _, web, _ = await broker(self)
        tokens = set()
        for i in range(3):
            code, data = await post(web, "web-token", body(did=DID, handle=None, request_id=i), ts=str(NOW))
            self.assertEqual(code, 200)
            tokens.add(data["token"])
        self.assertEqual(len(tokens), 3)

    @asynctest
    async def test_missing_or_malformed_headers_are_401(self) -> None:
        """No signature, no timestamp, or a non-numeric timestamp: 401."""
        _, web, _ = await broker(self)
        payload = body(did=DID)
        code, _ = await post(web, "web-token", payload)
        self.assertEqual(code, 401)
        code, _ = await post(web, "web-token", payload, ts=str(NOW), sig="")
        self.assertEqual(code, 401)
        code, _ = await post(web, "web-token", payload, sig=broker_signature(SECRET, str(NOW), payload))
        self.assertEqual(code, 401)
        code, data = await post(web, "web-token", payload, ts="soon")
        self.assertEqual((code, data["error"]), (401, "X-Broker-Timestamp is not a Unix time in seconds"))

    @asynctest
    async def test_skew_window(self) -> None:
        """±120 s and 61 s old are refused; exactly 60 s old is accepted (the reference's boundary)."""
        _, web, _ = await broker(self)
        for offset in (-120, 120, -61, 61):
            code, data = await post(web, "web-token", body(did=DID), ts=str(NOW + offset))
            self.assertEqual(code, 401, offset)
            self.assertIn("window", data["error"])
        code, _ = await post(web, "web-token", body(did=DID), ts=str(NOW - 60))
        self.assertEqual(code, 200)

    @asynctest
    async def test_bad_mac_cases(self) -> None:
        """A wrong secret, a body altered after signing, or a timestamp other than the signed one: 401."""
        srv, web, _ = await broker(self)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        payload = body(did=DID)
        code, _ = await post(web, "web-token", payload, ts=str(NOW), secret="wrong secret")
        self.assertEqual(code, 401)
        sig = broker_signature(SECRET, str(NOW), payload)
        code, _ = await post(web, "web-token", body(did="did:plc:attacker"), ts=str(NOW), sig=sig)
        self.assertEqual(code, 401)
        code, _ = await post(web, "web-token", payload, ts=str(NOW - 1), sign_ts=str(NOW))
        self.assertEqual(code, 401)
        self.assertEqual(srv.server.metrics.broker_rejected, 3)
        messages = [formatEvent(e) for e in observer]
        self.assertEqual(len([m for m in messages if "refused: Bad X-Broker-Signature" in m]), 3)
        self.assertFalse([m for m in messages if SECRET in m or sig in m])

    @asynctest
    async def test_replay_is_refused_until_the_window_passes(self) -> None:
        """The same signed request twice: the second is 401; the remembered MAC is dropped after the window."""
        _, web, clock = await broker(self)
        payload = body(did=DID)
        code, _ = await post(web, "web-token", payload, ts=str(NOW))
        self.assertEqual(code, 200)
        code, data = await post(web, "web-token", payload, ts=str(NOW))
        self.assertEqual((code, data["error"]), (401, "Replayed request"))
        resource = web.site.resource.children[b"auth"].children[b"broker"]
        self.assertEqual(len(resource._seen), 1)
        clock.advance(61)
        code, _ = await post(web, "web-token", payload, ts=str(NOW))  # stale now, and forgotten
        self.assertEqual(code, 401)
        self.assertEqual(len(resource._seen), 0)

    @asynctest
    async def test_bad_bodies_are_400(self) -> None:
        """A validly signed body that is empty, not JSON, or lacks a DID is 400."""
        _, web, _ = await broker(self)
        for payload in (b"", b"not json", body(handle="x.bsky.social"), body(did="alice"), b"[1]"):
            code, _ = await post(web, "web-token", payload, ts=str(NOW))
            self.assertEqual(code, 400, payload)

    @asynctest
    async def test_without_secret_both_routes_are_403(self) -> None:
        """No --broker-shared-secret: 403 'Broker auth not configured' for both routes, signed or not."""
        _, web, _ = await broker(self, secret=None)
        for route in ("web-token", "session"):
            code, data = await post(web, route, body(did=DID), ts=str(NOW))
            self.assertEqual((code, data), (403, {"error": "Broker auth not configured"}))

    @asynctest
    async def test_session_push(self) -> None:
        """/session with a good MAC answers ok with a bearer token for that DID; unsigned is 401, incomplete 400."""
        srv, web, _ = await broker(self)
        push = body(did=DID, handle="a.example", pds_url="https://pds.example", access_token="jwt",
                    dpop_key_b64="key")
        code, data = await post(web, "session", push, ts=str(NOW))
        self.assertEqual(code, 200)
        self.assertIs(data["ok"], True)
        self.assertEqual(srv.server.bearer_tokens.lookup(data["upload_token"]), DID)
        code, _ = await post(web, "session", push)
        self.assertEqual(code, 401)
        code, _ = await post(web, "session", body(did=DID, pds_url="https://pds.example"), ts=str(NOW))
        self.assertEqual(code, 400)

    @asynctest
    async def test_minted_token_logs_in_over_sasl_once(self) -> None:
        """A broker token authenticates an IRC client by SASL web-token once; the second use fails."""
        srv, web, _ = await broker(self)
        code, data = await post(web, "web-token", body(did=DID, handle="alice.bsky.social"), ts=str(NOW))
        self.assertEqual(code, 200)
        response = base64.urlsafe_b64encode(json.dumps(
            {"did": "", "method": "web-token", "signature": data["token"]}).encode()).rstrip(b"=").decode()
        for attempt in range(2):
            c = await srv.connect()
            c.send("CAP LS 302")
            c.send(f"NICK tok{attempt}")
            c.send(f"USER tok{attempt} 0 * :Token")
            c.send("CAP REQ :sasl")
            await c.expect(lambda l: l.command == "CAP" and "ACK" in l.params)
            c.send("AUTHENTICATE ATPROTO-CHALLENGE")
            await c.expect("AUTHENTICATE")
            c.send(f"AUTHENTICATE {response}")
            line = await c.expect(lambda l: l.command in ("903", "904"))
            if attempt == 0:
                self.assertEqual(line.command, "903")
                self.assertEqual(srv.server.users["tok0"].account, DID)
            else:
                self.assertEqual(line.command, "904")
            c.send("CAP END")


class TokenStoreTests(unittest.TestCase):
    """WebTokenStore and BearerTokenStore with a Clock."""

    def test_web_token_single_use_and_expiry(self) -> None:
        """A web token is 43 base64url chars, works once, and not after 300 s."""
        clock = Clock()
        store = WebTokenStore(clock)
        token = store.mint(DID, "h.example")
        self.assertEqual(len(token), 43)
        self.assertEqual(base64.urlsafe_b64decode(token + "="), base64.urlsafe_b64decode(token + "="))
        self.assertEqual(len(base64.urlsafe_b64decode(token + "=")), 32)
        self.assertEqual(store.consume(token), (DID, "h.example"))
        self.assertIsNone(store.consume(token))
        late = store.mint(DID, None)
        clock.advance(300)
        self.assertEqual(store.consume(late), (DID, None))  # exactly the TTL still passes
        expired = store.mint(DID, None)
        clock.advance(300.5)
        self.assertIsNone(store.consume(expired))
        self.assertIsNone(store.consume(""))
        self.assertIsNone(store.consume("A" * 43))

    def test_web_tokens_are_bounded_and_pruned(self) -> None:
        """Over max_tokens the oldest go first; expired tokens are pruned when new ones are minted."""
        clock = Clock()
        store = WebTokenStore(clock, ttl=10, max_tokens=3)
        first = store.mint("did:a", None)
        for _ in range(3):
            store.mint("did:b", None)
        self.assertEqual(len(store), 3)
        self.assertIsNone(store.consume(first))
        clock.advance(11)
        store.mint("did:c", None)
        self.assertEqual(len(store), 1)

    def test_bearer_tokens(self) -> None:
        """Bearer tokens map to their DID until expiry or revocation; each DID holds a bounded number."""
        clock = Clock()
        store = BearerTokenStore(clock, ttl=100)
        a = store.mint("did:a")
        b = store.mint("did:b")
        self.assertNotEqual(a, b)
        self.assertEqual((store.lookup(a), store.lookup(b)), ("did:a", "did:b"))
        self.assertEqual(store.lookup(a), "did:a")  # not single use
        store.revoke_did("did:a")
        self.assertIsNone(store.lookup(a))
        self.assertEqual(store.lookup(b), "did:b")
        clock.advance(101)
        self.assertIsNone(store.lookup(b))
        self.assertEqual(len(store), 0)
        many = [store.mint("did:c") for _ in range(BearerTokenStore.per_did + 5)]
        self.assertIsNone(store.lookup(many[0]))
        self.assertEqual(store.lookup(many[-1]), "did:c")
        self.assertEqual(len(store), BearerTokenStore.per_did)

    def test_nick_for_handle(self) -> None:
        """Bluesky-hosted handles lose their suffix; other handles stay whole."""
        self.assertEqual(nick_for_handle("alice.bsky.social"), "alice")
        self.assertEqual(nick_for_handle("bob.example.com"), "bob.example.com")
        self.assertIsNone(nick_for_handle(None))
