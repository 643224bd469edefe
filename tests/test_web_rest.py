"""The REST API, /metrics, static files and the listener's HTTP policies, over real loopback HTTP (treq)."""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import treq
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import reactor
from twisted.trial import unittest

from freeq.config import Config, Listen
from freeq.signing import SIG_TAG, MessageSigner, b64url
from freeq.tap import build_service
from tests.support import ServerFixture, WebFixture, asynctest, sleep, start_server, start_web

ALICE = "did:plc:alice000000000000000000"
BOB = "did:plc:bob00000000000000000000"


async def get(web: WebFixture, path: str, token: Optional[str] = None,
              headers: Optional[dict[str, str]] = None) -> tuple[int, Any, Any]:
    """GET ``path``; return (status, parsed JSON or text, response headers)."""
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    response = await treq.get(web.url + path, headers=h, persistent=False)
    body = await response.content()
    ctype = (response.headers.getRawHeaders("content-type") or [""])[0]
    data: Any = json.loads(body) if "json" in ctype else body.decode("utf-8", "replace")
    return response.code, data, response.headers


async def account_user(srv: ServerFixture, nick: str, did: str, caps: tuple[str, ...] = ()) -> Any:
    """A registered TCP client whose user is logged in to ``did`` (set on the model: SASL is tested elsewhere)."""
    client = await srv.client(nick, caps=caps)
    srv.server.set_account(srv.server.users[nick.lower()], did)
    return client


async def channel(client: Any, name: str, *modes: str) -> None:
    """Join ``name`` and set ``modes`` (each a MODE argument string) as its op."""
    client.send(f"JOIN {name}")
    await client.expect("366")
    for mode in modes:
        client.send(f"MODE {name} {mode}")
        await client.expect("MODE")


class PublicRouteTests(unittest.TestCase):
    """Routes that need no token, and the headers every response carries."""

    @asynctest
    async def test_health_and_security_headers(self) -> None:
        """health reports the server's numbers; every response has the security headers and no-store."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        await srv.client("one")
        code, data, headers = await get(web, "/api/v1/health")
        self.assertEqual(code, 200)
        self.assertEqual(data["server_name"], srv.server.name)
        self.assertEqual(data["connections"], 1)
        self.assertIn("version", data)
        self.assertIn("uptime_secs", data)
        for name in ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy", "Content-Security-Policy"):
            self.assertTrue(headers.getRawHeaders(name), name)
        self.assertEqual(headers.getRawHeaders("X-Frame-Options"), ["DENY"])
        self.assertEqual(headers.getRawHeaders("Cache-Control"), ["no-store"])
        self.assertIsNone(headers.getRawHeaders("Strict-Transport-Security"))  # plain HTTP: no HSTS
        code, data, headers = await get(web, "/api/v1/nope")
        self.assertEqual(code, 404)
        self.assertEqual(data, {"error": "No such route"})
        self.assertTrue(headers.getRawHeaders("Content-Security-Policy"))

    @asynctest
    async def test_hsts_over_tls(self) -> None:
        """Over HTTPS the listener adds Strict-Transport-Security."""
        srv = await start_server(self)
        web = await start_web(self, srv, tls=True)
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
        from twisted.internet import ssl

        class NoVerify(BrowserLikePolicyForHTTPS):
            def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
                return ssl.CertificateOptions(verify=False)

        pool = HTTPConnectionPool(reactor, persistent=False)
        client = treq.client.HTTPClient(Agent(reactor, contextFactory=NoVerify(), pool=pool))
        response = await client.get(web.url + "/api/v1/health")
        await response.content()
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers.getRawHeaders("Strict-Transport-Security"))

    @asynctest
    async def test_signing_key_reference_shape_and_previous_keys(self) -> None:
        """signing-key has the reference's JSON shape, the current key, and earlier keys on record."""
        srv = await start_server(self)
        signer = srv.server.signer
        store = srv.server.store
        old = MessageSigner(b"\x01" * 32).public_key_b64
        store.record_signing_key(old, 1000)
        store.record_signing_key(signer.public_key_b64, 2000)
        web = await start_web(self, srv)
        code, data, _ = await get(web, "/api/v1/signing-key")
        self.assertEqual(code, 200)
        self.assertEqual({k: data[k] for k in ("algorithm", "public_key", "encoding", "usage", "tag")}, {
            "algorithm": "ed25519", "public_key": signer.public_key_b64, "encoding": "base64url",
            "usage": "message-signing", "tag": "+freeq.at/sig"})
        self.assertEqual(data["canonical_form"], "{sender_did}\\0{target}\\0{text}\\0{timestamp}")
        self.assertIn({"public_key": old, "valid_from": 1000, "valid_until": 2000}, data["previous_keys"])
        self.assertNotIn(signer.public_key_b64, [k["public_key"] for k in data["previous_keys"]])

    @asynctest
    async def test_client_signing_keys(self) -> None:
        """signing-keys/{did} lists the MSGSIG keys of a DID; an unknown DID is 404."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        key = b64url(b"\x02" * 32)
        srv.server.session_keys[ALICE] = [key]
        code, data, _ = await get(web, f"/api/v1/signing-keys/{ALICE}")
        self.assertEqual(code, 200)
        self.assertEqual((data["did"], data["keys"], data["public_key"]), (ALICE, [key], key))
        code, _, _ = await get(web, f"/api/v1/signing-keys/{BOB}")
        self.assertEqual(code, 404)

    @asynctest
    async def test_users(self) -> None:
        """users/{nick}: online users (with DID when logged in), owned offline nicks, 404 for nobody."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        await srv.client("guesty")
        await account_user(srv, "alice", ALICE)
        srv.server.nick_owners["bob"] = ("Bob", BOB)
        code, data, _ = await get(web, "/api/v1/users/GUESTY")
        self.assertEqual((code, data["nick"], data["online"], data["did"]), (200, "guesty", True, None))
        code, data, _ = await get(web, "/api/v1/users/alice")
        self.assertEqual((data["online"], data["did"]), (True, ALICE))
        code, data, _ = await get(web, "/api/v1/users/bob")
        self.assertEqual((code, data), (200, {"nick": "Bob", "online": False, "did": BOB, "handle": None}))
        code, _, _ = await get(web, "/api/v1/users/nobody")
        self.assertEqual(code, 404)

    @asynctest
    async def test_metadata_in_user_and_channel_views(self) -> None:
        """draft/metadata-2 values show in users/{nick} (online users) and channels/{name} (issue #12)."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        alice = await srv.client("alice", caps=("draft/metadata-2", "batch"))
        alice.send("METADATA * SET display-name :Alice A.")
        await alice.expect("761")
        alice.send("JOIN #meta")
        await alice.expect("366")
        alice.send("METADATA #meta SET homepage :https://example.org/meta")
        await alice.expect("761")
        code, data, _ = await get(web, "/api/v1/users/alice")
        self.assertEqual((code, data["metadata"]), (200, {"display-name": "Alice A."}))
        code, data, _ = await get(web, "/api/v1/channels/meta")
        self.assertEqual((code, data["metadata"]), (200, {"homepage": "https://example.org/meta"}))

    @asynctest
    async def test_static_client_and_no_listing(self) -> None:
        """/ serves the bundled client with the CSP; directories are never listed; --web-static-dir replaces it."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        code, text, headers = await get(web, "/")
        self.assertEqual(code, 200)
        self.assertIn('src="app.js"', text)
        self.assertIn("default-src 'self'", headers.getRawHeaders("Content-Security-Policy")[0])
        code, text, _ = await get(web, "/app.js")
        self.assertEqual(code, 200)
        self.assertIn("ATPROTO-CHALLENGE", text)
        custom = self.mktemp()
        os.makedirs(os.path.join(custom, "sub"))
        with open(os.path.join(custom, "index.html"), "w") as f:
            f.write("<p>custom client</p>")
        other = await start_web(self, srv, web_static_dir=custom)
        code, text, _ = await get(other, "/")
        self.assertEqual((code, text), (200, "<p>custom client</p>"))
        code, text, _ = await get(other, "/sub/")
        self.assertEqual(code, 404)
        self.assertNotIn("Directory listing", text)


class ChannelAuthorizationTests(unittest.TestCase):
    """Public channels are public; everything else needs a member's bearer token."""

    async def setup_channels(self) -> tuple[ServerFixture, WebFixture, Any]:
        srv = await start_server(self)
        web = await start_web(self, srv)
        alice = await account_user(srv, "alice", ALICE)
        await channel(alice, "#open")
        alice.send("TOPIC #open :all welcome")
        await alice.expect("TOPIC")
        await channel(alice, "#secret", "+s")
        await channel(alice, "#private", "+p")
        await channel(alice, "#invite", "+i")
        await channel(alice, "#keyed", "+k sesame")
        return srv, web, alice

    @asynctest
    async def test_channel_list_hides_private_channels_from_the_public(self) -> None:
        """channels lists only public ones without a token, and a member's private ones with its token."""
        srv, web, _ = await self.setup_channels()
        code, data, _ = await get(web, "/api/v1/channels")
        self.assertEqual(code, 200)
        self.assertEqual(data, [{"name": "#open", "members": 1, "topic": "all welcome"}])
        token = srv.server.bearer_tokens.mint(ALICE)
        code, data, _ = await get(web, "/api/v1/channels", token=token)
        self.assertEqual(sorted(c["name"] for c in data), ["#invite", "#keyed", "#open", "#private", "#secret"])
        stranger = srv.server.bearer_tokens.mint(BOB)
        code, data, _ = await get(web, "/api/v1/channels", token=stranger)
        self.assertEqual([c["name"] for c in data], ["#open"])

    @asynctest
    async def test_channel_info_authorization(self) -> None:
        """channels/{name}: public 200; +s/+p 404 to outsiders; +i/+k 401 without and 403 with a stranger's token."""
        srv, web, _ = await self.setup_channels()
        member = srv.server.bearer_tokens.mint(ALICE)
        stranger = srv.server.bearer_tokens.mint(BOB)
        code, data, _ = await get(web, "/api/v1/channels/open")
        self.assertEqual((code, data["name"], data["members"], data["topic"]), (200, "#open", 1, "all welcome"))
        code, data, _ = await get(web, "/api/v1/channels/%23OPEN")
        self.assertEqual((code, data["name"]), (200, "#open"))
        for name in ("secret", "private"):
            for token in (None, stranger):
                code, data, _ = await get(web, f"/api/v1/channels/{name}", token=token)
                self.assertEqual((code, data), (404, {"error": "No such channel"}), (name, token))
        for name in ("invite", "keyed"):
            code, _, headers = await get(web, f"/api/v1/channels/{name}")
            self.assertEqual(code, 401, name)
            self.assertEqual(headers.getRawHeaders("WWW-Authenticate"), ['Bearer realm="freeq"'])
            code, _, _ = await get(web, f"/api/v1/channels/{name}", token=stranger)
            self.assertEqual(code, 403, name)
        for name in ("secret", "private", "invite", "keyed"):
            code, data, _ = await get(web, f"/api/v1/channels/{name}", token=member)
            self.assertEqual((code, data["name"]), (200, "#" + name))
            self.assertNotIn("sesame", json.dumps(data))
        code, _, _ = await get(web, "/api/v1/channels/nowhere")
        self.assertEqual(code, 404)

    @asynctest
    async def test_bad_expired_or_revoked_token_is_401(self) -> None:
        """A made-up, malformed or revoked token is refused with 401, even for public data."""
        srv, web, _ = await self.setup_channels()
        code, _, _ = await get(web, "/api/v1/channels", token="A" * 43)
        self.assertEqual(code, 401)
        code, _, _ = await get(web, "/api/v1/channels", headers={"Authorization": "Basic Zm9vOmJhcg=="})
        self.assertEqual(code, 401)
        token = srv.server.bearer_tokens.mint(ALICE)
        srv.server.bearer_tokens.revoke_did(ALICE)
        code, _, _ = await get(web, "/api/v1/channels/secret", token=token)
        self.assertEqual(code, 401)

    @asynctest
    async def test_history(self) -> None:
        """history: public channel open to all; limit and before honoured; keyed channel needs a member token."""
        srv, web, alice = await self.setup_channels()
        for i in range(5):
            alice.send(f"PRIVMSG #open :message {i}")
            alice.send(f"PRIVMSG #keyed :hidden {i}")
        alice.send("PING sync")
        await alice.expect("PONG")
        code, data, _ = await get(web, "/api/v1/channels/open/history")
        self.assertEqual(code, 200)
        self.assertEqual([m["text"] for m in data], [f"message {i}" for i in range(5)])
        self.assertEqual((data[0]["sender"], data[0]["account"]), ("alice", ALICE))
        self.assertEqual(data[0]["id"], data[0]["msgid"])
        code, data, _ = await get(web, "/api/v1/channels/open/history?limit=2")
        self.assertEqual([m["text"] for m in data], ["message 3", "message 4"])
        code, data, _ = await get(web, f"/api/v1/channels/open/history?before={int(srv.server.clock.seconds()) - 3600}")
        self.assertEqual(data, [])
        code, _, _ = await get(web, "/api/v1/channels/open/history?limit=lots")
        self.assertEqual(code, 400)
        code, _, _ = await get(web, "/api/v1/channels/keyed/history")
        self.assertEqual(code, 401)
        code, _, _ = await get(web, "/api/v1/channels/keyed/history", token=srv.server.bearer_tokens.mint(BOB))
        self.assertEqual(code, 403)
        code, data, _ = await get(web, "/api/v1/channels/keyed/history",
                                  token=srv.server.bearer_tokens.mint(ALICE))
        self.assertEqual([m["text"] for m in data], [f"hidden {i}" for i in range(5)])
        code, _, _ = await get(web, "/api/v1/channels/secret/history")
        self.assertEqual(code, 404)


class VerifyTests(unittest.TestCase):
    """verify/{msgid}: the stored message, its canonical form, and which key signed it."""

    @asynctest
    async def test_server_signed_channel_message_verifies(self) -> None:
        """A DID user's channel message, signed by the server on delivery, verifies with the server key."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        alice = await account_user(srv, "alice", ALICE, caps=("message-tags", "echo-message"))
        await channel(alice, "#Signed")
        alice.send("PRIVMSG #Signed :hello world")
        echo = await alice.expect("PRIVMSG")
        msgid = echo.tags["msgid"]
        code, data, _ = await get(web, f"/api/v1/verify/{msgid}")
        self.assertEqual(code, 200)
        self.assertEqual((data["msgid"], data["channel"], data["from"], data["text"], data["sender_did"]),
                         (msgid, "#Signed", "alice", "hello world", ALICE))
        self.assertEqual(data["signature"], echo.tags.get(SIG_TAG))
        self.assertEqual(data["verification"]["valid"], True)
        self.assertEqual(data["verification"]["verified_by"], "server-key")
        self.assertEqual(data["verification"]["server_public_key"], srv.server.signer.public_key_b64)
        expected = f"{ALICE}\0#signed\0hello world\0{data['timestamp']}".encode()
        self.assertEqual(bytes.fromhex(data["canonical_hex"]), expected)

    @asynctest
    async def test_session_key_tampered_and_dm_access(self) -> None:
        """A client-key signature verifies as such; a tampered one is invalid; a DM only for its parties."""
        from nacl.signing import SigningKey

        srv = await start_server(self)
        web = await start_web(self, srv)
        alice = await account_user(srv, "alice", ALICE)
        await channel(alice, "#room")
        store = srv.server.store
        key = SigningKey(b"\x03" * 32)
        srv.server.session_keys[ALICE] = [b64url(bytes(key.verify_key))]
        now = int(srv.server.clock.seconds())
        sig = b64url(key.sign(f"{ALICE}\0#room\0by my key\0{now}".encode()).signature)
        store.append_message("#room", "01CLIENTSIGNED0000000000000", now, "PRIVMSG", "alice!~a@h", ALICE, "#room",
                             "by my key", {SIG_TAG: sig})
        store.append_message("#room", "01TAMPERED00000000000000000", now, "PRIVMSG", "alice!~a@h", ALICE, "#room",
                             "changed text", {SIG_TAG: sig})
        dm = f"dm:{ALICE} {BOB}"
        store.append_message(dm, "01DIRECT0000000000000000000", now, "PRIVMSG", "alice!~a@h", ALICE, "bob",
                             "psst", {})
        code, data, _ = await get(web, "/api/v1/verify/01CLIENTSIGNED0000000000000")
        self.assertEqual((code, data["verification"]["valid"], data["verification"]["verified_by"]),
                         (200, True, "client-session-key"))
        code, data, _ = await get(web, "/api/v1/verify/01TAMPERED00000000000000000")
        self.assertEqual((data["verification"]["valid"], data["verification"]["verified_by"]), (False, "none"))
        code, _, _ = await get(web, "/api/v1/verify/01DIRECT0000000000000000000")
        self.assertEqual(code, 404)
        code, _, _ = await get(web, "/api/v1/verify/01DIRECT0000000000000000000",
                               token=srv.server.bearer_tokens.mint("did:plc:mallory"))
        self.assertEqual(code, 404)
        code, data, _ = await get(web, "/api/v1/verify/01DIRECT0000000000000000000",
                                  token=srv.server.bearer_tokens.mint(BOB))
        self.assertEqual((code, data["text"], data["channel"], data["verification"]), (200, "psst", None, None))
        code, _, _ = await get(web, "/api/v1/verify/unknown")
        self.assertEqual(code, 404)
        code, _, _ = await get(web, "/api/v1/verify/bad%20id")
        self.assertEqual(code, 404)


class LimitsTests(unittest.TestCase):
    """Body size and request rate limits, CORS, metrics, and the wiring through build_service."""

    @asynctest
    async def test_body_limit_is_413(self) -> None:
        """A body over the limit gets 413 before any route runs; a small one reaches the route."""
        srv = await start_server(self)
        web = await start_web(self, srv, max_body_bytes=1024, broker_shared_secret="s3cret")
        response = await treq.post(web.url + "/auth/broker/web-token", data=b"x" * 5000, persistent=False)
        self.assertEqual(response.code, 413)
        self.assertEqual(json.loads(await response.content()), {"error": "Request body too large"})
        self.assertTrue(response.headers.getRawHeaders("X-Content-Type-Options"))
        response = await treq.post(web.url + "/auth/broker/web-token", data=b"{}", persistent=False)
        self.assertEqual(response.code, 401)  # reached the broker, which wants a signature
        await response.content()

    @asynctest
    async def test_rate_limit_per_ip(self) -> None:
        """After the burst the API answers 429 to that IP; static files and other (proxied) IPs are unaffected."""
        srv = await start_server(self)
        web = await start_web(self, srv, rate_burst=3, rate_per_second=0.001, trusted_proxies=("127.0.0.1",))
        codes = [(await get(web, "/api/v1/health"))[0] for _ in range(4)]
        self.assertEqual(codes, [200, 200, 200, 429])
        code, data, headers = await get(web, "/metrics")
        self.assertEqual((code, data), (429, {"error": "Rate limit exceeded"}))
        self.assertEqual(headers.getRawHeaders("Retry-After"), ["1"])
        code, _, _ = await get(web, "/")
        self.assertEqual(code, 200)
        code, _, _ = await get(web, "/api/v1/health", headers={"X-Forwarded-For": "198.51.100.1"})
        self.assertEqual(code, 200)
        self.assertEqual(srv.server.metrics.web_rate_limited, 2)

    @asynctest
    async def test_cors_only_for_listed_origins(self) -> None:
        """API responses allow a listed web-client origin and no other."""
        srv = await start_server(self)
        web = await start_web(self, srv, web_allowed_origins=("https://chat.example",))
        _, _, headers = await get(web, "/api/v1/health", headers={"Origin": "https://chat.example"})
        self.assertEqual(headers.getRawHeaders("Access-Control-Allow-Origin"), ["https://chat.example"])
        _, _, headers = await get(web, "/api/v1/health", headers={"Origin": "https://evil.example"})
        self.assertIsNone(headers.getRawHeaders("Access-Control-Allow-Origin"))

    @asynctest
    async def test_metrics_per_server(self) -> None:
        """/metrics is Prometheus text from this server's own collector (two servers do not mix)."""
        srv = await start_server(self)
        other = await start_server(self)
        web = await start_web(self, srv)
        other_web = await start_web(self, other)
        a = await srv.client("a")
        await srv.client("b")
        for i in range(3):
            a.send(f"PRIVMSG b :hi {i}")
        a.send("PING sync")
        await a.expect("PONG")
        srv.server.metric("sasl_failure")
        response = await treq.get(web.url + "/metrics", persistent=False)
        text = (await response.content()).decode()
        self.assertEqual(response.code, 200)
        self.assertIn("text/plain", response.headers.getRawHeaders("Content-Type")[0])
        values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
                  if line and not line.startswith("#")}
        self.assertEqual(values["freeq_connections"], 2.0)
        self.assertEqual(values["freeq_messages_total"], 3.0)
        self.assertEqual(values["freeq_sasl_failure_total"], 1.0)
        for name in ("freeq_channels", "freeq_s2s_peers", "freeq_sasl_success_total", "freeq_s2s_rejected_total",
                     "freeq_per_ip_refusals_total", "freeq_uptime_seconds"):
            self.assertIn(name, values)
        response = await treq.get(other_web.url + "/metrics", persistent=False)
        text = (await response.content()).decode()
        self.assertIn("freeq_connections 0.0", text)
        self.assertIn("freeq_messages_total 0.0", text)

    @asynctest
    async def test_build_service_starts_the_web_listener(self) -> None:
        """build_service with web_listen adds the web listener; its health route answers; the stores exist."""
        config = Config(listen=Listen("127.0.0.1", 0), tls_listen=None, data_dir=os.path.join(self.mktemp(), "d"),
                        web_listen=Listen("127.0.0.1", 0))
        top = build_service(config, reactor)
        top.startService()
        self.addCleanup(lambda: top.stopService() if top.running else None)
        services = [s for s in top if isinstance(s, StreamServerEndpointService)]
        self.assertEqual(len(services), 2)
        ports: list[Any] = []

        def record(port: Any) -> Any:
            ports.append(port)
            return port  # the service stops listening through this same Deferred

        services[1]._waitingForPort.addCallback(record)
        for _ in range(100):
            if ports:
                break
            await sleep(0.01)
        web_port = ports[0].getHost().port
        response = await treq.get(f"http://127.0.0.1:{web_port}/api/v1/health", persistent=False)
        self.assertEqual(response.code, 200)
        await response.content()
        server = top.irc_server
        self.assertIsNotNone(server.web_tokens)
        self.assertIsNotNone(server.bearer_tokens)
        self.assertIsNotNone(server.metrics)
        await top.stopService()
        await sleep(0)
