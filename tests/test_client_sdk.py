"""The Python client SDK (freeq.client): unit behaviour on a StringTransport, and every SASL method
against the real server on loopback with a fake PLC directory and PDS; plus the freeq-client CLI."""
from __future__ import annotations

import json
import os
import stat
import sys
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.testing import StringTransport
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from freeq.auth.multikey import ED25519, P256, SECP256K1, did_key, generate_private_key
from freeq.client.auth import (
    CryptoCredential, PDSOAuthCredential, PDSSessionCredential, b64url, b64url_decode, chunk_payload,
    encode_response, make_dpop_proof,
)
from freeq.client.cli import KeyFileError, main as cli_main, read_key_file, write_key_file
from freeq.client.connect import client_endpoint, connect
from freeq.client.protocol import ChatMessage, ConnectionClosed, FreeqClient, FreeqClientFactory, IRCError, SASLFailed
from freeq.irc.parser import parse
from tests.atproto_servers import FakePDS, check_dpop_proof, random_plc_did, start_identity, start_plc
from tests.support import asynctest, make_certificate, sleep, start_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def sdk(case: unittest.TestCase, port: int, nick: str, **kwargs: Any) -> FreeqClient:
    """Connect an SDK client to 127.0.0.1:``port`` and wait for registration (what it raises is raised).

    The connection is closed in ``case``'s cleanup whatever happens.
    """
    kwargs.setdefault("clock", reactor)
    client: FreeqClient = await client_endpoint(reactor, "127.0.0.1", port).connect(FreeqClientFactory(nick, **kwargs))
    case.addCleanup(close_client, client)
    return await client.registered


def close_client(client: FreeqClient) -> defer.Deferred:
    """Drop the connection (if still open) and wait until it is gone."""
    transport: Any = client.transport
    if client.is_connected and transport is not None:
        transport.loseConnection()
    return client.closed


async def same_second_window() -> None:
    """Wait until early in a wall-clock second, so a signature and the server's receive time share it."""
    frac = time.time() % 1
    if frac > 0.7:
        await sleep(1.02 - frac)


def _challenge(nonce: str = "n0nce") -> bytes:
    return json.dumps({"session_id": "s", "nonce": nonce, "timestamp": 1}, separators=(",", ":")).encode()


class FakeClient:
    """A FreeqClient on a StringTransport, with helpers to feed server lines and read what it sent."""

    def __init__(self, **kwargs: Any) -> None:
        self.clock = Clock()
        self.proto = FreeqClient(kwargs.pop("nick", "bot"), clock=self.clock, **kwargs)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def feed(self, *lines: str) -> None:
        for line in lines:
            self.proto.dataReceived(line.encode() + b"\r\n")

    def sent(self) -> list[str]:
        """Lines sent since the last call."""
        data = self.transport.value().decode()
        self.transport.clear()
        return [l for l in data.split("\r\n") if l]


class ProtocolUnitTests(unittest.TestCase):
    """The client protocol against scripted server lines."""

    def test_registration_lines_and_cap_req_only_offered(self) -> None:
        """It opens with CAP LS 302, NICK, USER and requests only wanted caps the server offers."""
        c = FakeClient()
        self.assertEqual(c.sent(), ["CAP LS 302", "NICK bot", "USER bot 0 * :freeq sdk"])
        c.feed(":srv CAP * LS :message-tags server-time sasl=ATPROTO-CHALLENGE chghost")
        self.assertEqual(c.sent(), ["CAP REQ :message-tags server-time"])
        c.feed(":srv CAP * ACK :message-tags server-time")
        self.assertEqual(c.sent(), ["CAP END"])
        self.assertEqual(c.proto.caps, {"message-tags", "server-time"})

    def test_multiline_ls_and_nak_fallback(self) -> None:
        """A 302 multi-line LS is joined; a NAKed batch is retried one cap at a time."""
        c = FakeClient()
        c.sent()
        c.feed(":srv CAP * LS * :message-tags", ":srv CAP * LS :account-tag")
        self.assertEqual(c.sent(), ["CAP REQ :message-tags account-tag"])
        c.feed(":srv CAP * NAK :message-tags account-tag")
        self.assertEqual(c.sent(), ["CAP REQ message-tags", "CAP REQ account-tag"])
        c.feed(":srv CAP * ACK :message-tags")
        self.assertEqual(c.sent(), [])
        c.feed(":srv CAP * NAK :account-tag")
        self.assertEqual(c.sent(), ["CAP END"])
        self.assertEqual(c.proto.caps, {"message-tags"})

    def test_sasl_exchange_chunked_challenge_and_success(self) -> None:
        """A chunked challenge is reassembled, signed, and 900/903 log in; MSGSIG follows 001."""
        key = generate_private_key(ED25519)
        cred = CryptoCredential.from_private_key(key)
        c = FakeClient(credential=cred)
        c.sent()
        c.feed(":srv CAP * LS :sasl=ATPROTO-CHALLENGE message-tags")
        self.assertEqual(c.sent(), ["CAP REQ :message-tags sasl"])
        c.feed(":srv CAP * ACK :message-tags sasl")
        self.assertEqual(c.sent(), ["AUTHENTICATE ATPROTO-CHALLENGE"])
        challenge = _challenge("x" * 400)
        payload = b64url(challenge)
        pieces = [payload[i:i + 400] for i in range(0, len(payload), 400)]
        for piece in pieces[:-1]:
            c.feed("AUTHENTICATE " + piece)
            self.assertEqual(c.sent(), [])
        c.feed("AUTHENTICATE " + pieces[-1])
        sent = c.sent()
        response = json.loads(b64url_decode("".join(l.split(" ", 1)[1] for l in sent)))
        self.assertEqual(list(response), ["did", "method", "signature", "challenge_nonce"])
        self.assertEqual(response["challenge_nonce"], "x" * 400)
        self.assertEqual(len(b64url_decode(response["signature"])), 64)
        c.feed(f":srv 900 bot bot!~bot@freeq/key/x {cred.did} :You are now logged in",
               ":srv 903 bot :SASL authentication successful", ":srv NOTICE bot :API-BEARER tok123")
        self.assertEqual(c.sent(), ["CAP END"])
        self.assertEqual(c.proto.account, cred.did)
        self.assertEqual(c.proto.bearer_token, "tok123")
        c.feed(":srv 001 bot :Welcome")
        sent = c.sent()
        self.assertEqual(len(sent), 1)
        self.assertTrue(sent[0].startswith("MSGSIG "))
        self.assertEqual(b64url_decode(sent[0].split()[1]), c.proto.session_public_key)
        c.feed(":srv MSGSIG OK")
        c.proto.say("#c", "hello")
        line = parse(c.sent()[0])
        assert line is not None and line.tags is not None
        self.assertEqual(line.params, ["#c", "hello"])
        self.assertIn("+freeq.at/sig", line.tags)

    def test_token_904_fails_without_guest_fallback(self) -> None:
        """With a token credential a 904 fails `registered` with SASLFailed and quits; no CAP END."""
        cred = PDSSessionCredential("did:plc:abc", "https://pds.example", "jwt")
        c = FakeClient(credential=cred, guest_fallback=True)
        failures: list[Any] = []
        c.proto.registered.addErrback(failures.append)
        c.feed(":srv CAP * LS :sasl", ":srv CAP * ACK :sasl", "AUTHENTICATE " + b64url(_challenge()))
        c.sent()
        c.feed(":srv 904 bot :SASL authentication failed")
        self.assertEqual(c.sent(), ["QUIT :Authentication failed"])
        self.assertEqual(len(failures), 1)
        failures[0].trap(SASLFailed)
        self.assertEqual(failures[0].value.numeric, "904")

    def test_signer_904_continues_as_guest_when_asked(self) -> None:
        """A refused signer with guest_fallback ends CAP and registers as a guest."""
        cred = CryptoCredential.from_private_key(generate_private_key(ED25519))
        c = FakeClient(credential=cred, guest_fallback=True)
        c.feed(":srv CAP * LS :sasl", ":srv CAP * ACK :sasl", "AUTHENTICATE " + b64url(_challenge()))
        c.sent()
        c.feed(":srv 904 bot :SASL authentication failed")
        self.assertEqual(c.sent(), ["CAP END"])
        c.feed(":srv 001 bot :Welcome", ":srv 422 bot :No MOTD")
        got = self.successResultOf(c.proto.registered)
        self.assertIs(got, c.proto)
        self.assertIsNone(got.account)
        self.assertEqual(got.sasl_error, "SASL authentication failed")

    def test_sasl_not_offered_fails_a_credential(self) -> None:
        """A server without SASL makes a credential fail rather than register a guest silently."""
        cred = CryptoCredential.from_private_key(generate_private_key(ED25519))
        c = FakeClient(credential=cred)
        c.feed(":srv CAP * LS :message-tags", ":srv CAP * ACK :message-tags")
        self.failureResultOf(c.proto.registered, SASLFailed)

    def test_dpop_nonce_notice_is_consumed_and_used(self) -> None:
        """DPOP_NONCE during SASL updates the credential (not shown as a notice); the next proof carries it."""
        cred = PDSOAuthCredential("did:plc:abc", "https://pds.example/", "tok")
        c = FakeClient(credential=cred)
        notices: list[ChatMessage] = []
        c.proto.on_notice.add(notices.append)
        c.feed(":srv CAP * LS :sasl", ":srv CAP * ACK :sasl", "AUTHENTICATE " + b64url(_challenge("a")))
        c.sent()
        c.feed(":srv NOTICE bot :DPOP_NONCE nonce-1", "AUTHENTICATE " + b64url(_challenge("b")))
        payload = "".join(l.split(" ", 1)[1] for l in c.sent() if l != "AUTHENTICATE +")
        response = json.loads(b64url_decode(payload))
        self.assertEqual(list(response), ["did", "method", "signature", "pds_url", "challenge_nonce", "dpop_proof"])
        proof = check_dpop_proof(response["dpop_proof"], "GET", "https://pds.example/xrpc/com.atproto.server.getSession",
                                 "tok")
        self.assertEqual(proof["nonce"], "nonce-1")
        self.assertEqual(response["challenge_nonce"], "b")
        self.assertEqual(notices, [])
        self.assertEqual(cred.nonces_received, 1)

    def test_ping_events_and_tags(self) -> None:
        """PING is answered; PRIVMSG, JOIN (extended), PART and ACCOUNT become events with tags surfaced."""
        c = FakeClient()
        c.feed(":srv CAP * LS :message-tags", ":srv CAP * ACK :message-tags", ":srv 001 bot :hi", "PING :abc")
        self.assertEqual(c.sent()[-1], "PONG abc")
        joins: list[Any] = []
        parts: list[Any] = []
        msgs: list[ChatMessage] = []
        accounts: list[Any] = []
        c.proto.on_join.add(joins.append)
        c.proto.on_part.add(parts.append)
        c.proto.on_message.add(msgs.append)
        c.proto.on_account.add(accounts.append)
        joined = c.proto.join("#Chan")
        c.feed(":bot!~bot@h JOIN #Chan * :freeq sdk", ":srv 353 bot = #Chan :@alice bot", ":srv 366 bot #Chan :End")
        state = self.successResultOf(joined)
        self.assertEqual(state.members, {"alice": "@", "bot": ""})
        c.feed(":bob!~b@freeq/plc/x JOIN #chan did:plc:x :Bob B",
               "@msgid=01ABC;time=2024-01-02T03:04:05.678Z;account=did:plc:x;+freeq.at/sig=SIG "
               ":bob!~b@freeq/plc/x PRIVMSG #chan :hello there",
               ":bob!~b@freeq/plc/x ACCOUNT did:plc:y", ":bob!~b@freeq/plc/x PART #chan :bye")
        self.assertEqual([(j.nick, j.account, j.own) for j in joins], [("bot", None, True), ("bob", "did:plc:x", False)])
        m = msgs[0]
        self.assertEqual((m.nick, m.target, m.text, m.reply_to), ("bob", "#chan", "hello there", "#chan"))
        self.assertEqual((m.msgid, m.time, m.account, m.signature), ("01ABC", "2024-01-02T03:04:05.678Z",
                                                                     "did:plc:x", "SIG"))
        self.assertEqual(accounts[0].account, "did:plc:y")
        self.assertEqual((parts[0].nick, parts[0].reason), ("bob", "bye"))
        self.assertNotIn("bob", c.proto.channels["#chan"].members)

    def test_join_error_fails_deferred(self) -> None:
        """A JOIN refused with 474 fails the join Deferred with IRCError."""
        c = FakeClient()
        d = c.proto.join("#banned")
        c.feed(":srv 474 bot #banned :Cannot join channel (+b)")
        self.assertEqual(self.failureResultOf(d, IRCError).value.numeric, "474")

    def test_nick_in_use_during_registration_retries(self) -> None:
        """433 before 001 retries with an underscore appended."""
        c = FakeClient()
        c.sent()
        c.feed(":srv 433 * bot :Nickname is already in use")
        self.assertEqual(c.sent(), ["NICK bot_"])

    def test_send_rejects_line_breaks(self) -> None:
        """Parameters with CR/LF never reach the wire."""
        c = FakeClient()
        self.assertRaises(ValueError, c.proto.send, "PRIVMSG", "#c", "a\rb")
        self.assertRaises(ValueError, c.proto.raw, "PRIVMSG #c :a\nQUIT")
        self.assertRaises(ValueError, c.proto.send, "MODE", "#c +o", "x")

    def test_over_long_line_without_newline_closes(self) -> None:
        """A server that never ends its line is cut off (bounded buffer)."""
        c = FakeClient()
        c.proto.dataReceived(b"x" * 20000)
        self.assertTrue(c.transport.disconnecting)

    def test_connection_lost_fails_waiters(self) -> None:
        """Waiting on an event or registration fails with ConnectionClosed when the connection ends."""
        c = FakeClient()
        waiting = c.proto.on_message.wait()
        reg = c.proto.registered
        c.feed("ERROR :Closing Link: bye")
        c.proto.connectionLost()
        self.assertEqual(self.failureResultOf(reg, ConnectionClosed).value.text, "Closing Link: bye")
        self.failureResultOf(waiting, ConnectionClosed)
        self.successResultOf(c.proto.closed)


class AuthEncodingTests(unittest.TestCase):
    """Response encoding, chunking and DPoP proofs."""

    def test_chunking(self) -> None:
        """400-char pieces; a final '+' only after an exact-400 last piece (or for an empty payload)."""
        self.assertEqual(chunk_payload(""), ["+"])
        self.assertEqual(chunk_payload("a" * 399), ["a" * 399])
        self.assertEqual(chunk_payload("a" * 400), ["a" * 400, "+"])
        self.assertEqual(chunk_payload("a" * 401), ["a" * 400, "a"])
        self.assertEqual(chunk_payload("a" * 800), ["a" * 400, "a" * 400, "+"])

    def test_response_key_order_and_omission(self) -> None:
        """Keys keep the wire order; unset ones are left out; the encoding is base64url without padding."""
        payload = encode_response({"did": "did:x:y", "method": "crypto", "signature": "s", "pds_url": None,
                                   "challenge_nonce": "n"})
        self.assertNotIn("=", payload)
        self.assertEqual(b64url_decode(payload), b'{"did":"did:x:y","method":"crypto","signature":"s","challenge_nonce":"n"}')

    def test_pds_session_response(self) -> None:
        """pds-session sends the JWT as signature, the PDS and the challenge nonce."""
        cred = PDSSessionCredential("did:plc:a", "https://pds", "jwt")
        self.assertEqual(cred.response(_challenge("nn")), {"did": "did:plc:a", "method": "pds-session",
                                                           "signature": "jwt", "pds_url": "https://pds",
                                                           "challenge_nonce": "nn"})
        self.assertNotIn("jwt", repr(cred))

    def test_dpop_proof_format(self) -> None:
        """The proof is ES256 with a P-256 jwk header and jti/htm/htu/iat/nonce/ath claims; a PDS accepts it."""
        key = PDSOAuthCredential("did:plc:a", "https://p", "tok").dpop_key
        proof = make_dpop_proof(key, "GET", "https://p/x", nonce="N", access_token="tok")
        header = json.loads(b64url_decode(proof.split(".")[0]))
        payload = json.loads(b64url_decode(proof.split(".")[1]))
        self.assertEqual(header["typ"], "dpop+jwt")
        self.assertEqual(header["alg"], "ES256")
        self.assertEqual(sorted(header["jwk"]), ["crv", "kty", "x", "y"])
        self.assertEqual(list(payload), ["jti", "htm", "htu", "iat", "nonce", "ath"])
        self.assertEqual(len(b64url_decode(payload["jti"])), 16)
        self.assertEqual(len(b64url_decode(proof.split(".")[2])), 64)
        self.assertEqual(check_dpop_proof(proof, "GET", "https://p/x", "tok")["nonce"], "N")
        self.assertRaises(ValueError, check_dpop_proof, proof, "GET", "https://p/x", "other-token")

    def test_dpop_requires_p256(self) -> None:
        """A non-P-256 key cannot make an ES256 proof."""
        from cryptography.hazmat.primitives.asymmetric import ec

        self.assertRaises(ValueError, make_dpop_proof, ec.generate_private_key(ec.SECP256K1()), "GET", "https://p")


class SDKLoginTests(unittest.TestCase):
    """The SDK logs in with each method against the real server."""

    async def server(self, **overrides: Any) -> Any:
        self.plc = await start_plc(self)
        return await start_server(self, allow_private_network=True, plc_directory_url=self.plc.url, **overrides)

    async def connect(self, srv: Any, nick: str, credential: Any = None, **kwargs: Any) -> FreeqClient:
        return await sdk(self, srv.port, nick, credential=credential, **kwargs)

    async def _did_key_login(self, kind: str) -> None:
        srv = await self.server()
        key = generate_private_key(kind)
        client = await self.connect(srv, "keyuser", CryptoCredential.from_private_key(key))
        did = did_key(key.public_key())
        self.assertEqual(client.account, did)
        self.assertEqual(client.nick, "keyuser")
        user = srv.server.users["keyuser"]
        self.assertEqual(user.account, did)
        self.assertEqual(user.host, "freeq/key/" + did[len("did:key:"):][:8])
        self.assertEqual(srv.server.nick_owner("keyuser"), did)

    @asynctest
    async def test_did_key_ed25519(self) -> None:
        """crypto with an Ed25519 did:key → 900/903, account and freeq/key cloak on the server."""
        await self._did_key_login(ED25519)

    @asynctest
    async def test_did_key_secp256k1(self) -> None:
        """crypto with a secp256k1 did:key (low-S compact signatures) logs in."""
        await self._did_key_login(SECP256K1)

    @asynctest
    async def test_did_key_p256(self) -> None:
        """crypto with a P-256 did:key logs in."""
        await self._did_key_login(P256)

    @asynctest
    async def test_did_plc_document_key(self) -> None:
        """crypto with the #atproto key of a did:plc document served by the PLC directory."""
        srv = await self.server()
        ident = await start_identity(self, plc=self.plc)
        client = await self.connect(srv, "plcuser", CryptoCredential(ident.did, ident.key))
        self.assertEqual(client.account, ident.did)
        self.assertEqual(srv.server.users["plcuser"].account, ident.did)
        self.assertEqual(srv.server.users["plcuser"].host, "freeq/plc/" + ident.did[8:16])
        self.assertEqual(srv.server.users["plcuser"].handle, "alice.test")

    @asynctest
    async def test_pds_session(self) -> None:
        """pds-session: the server checks the JWT with getSession on the document's PDS."""
        srv = await self.server()
        ident = await start_identity(self, plc=self.plc)
        cred = PDSSessionCredential(ident.did, ident.pds.url, ident.token)
        client = await self.connect(srv, "pdsuser", cred)
        self.assertEqual(client.account, ident.did)
        sessions = [r for r in ident.pds.requests if r.path == "/xrpc/com.atproto.server.getSession"]  # not the profile read
        self.assertEqual(sessions[-1].headers["authorization"], "Bearer " + ident.token)

    @asynctest
    async def test_pds_session_wrong_did_fails(self) -> None:
        """A PDS whose session belongs to another DID makes the login fail (no silent guest)."""
        srv = await self.server()
        ident = await start_identity(self, plc=self.plc)
        ident.pds.session_did = random_plc_did()
        cred = PDSSessionCredential(ident.did, ident.pds.url, ident.token)
        with self.assertRaises(SASLFailed):
            await self.connect(srv, "pdsuser", cred, guest_fallback=True)
        await sleep(0.05)
        self.assertNotIn("pdsuser", srv.server.users)

    @asynctest
    async def test_pds_oauth_dpop_nonce_rotation(self) -> None:
        """pds-oauth: the PDS demands a nonce, the SDK answers the fresh challenge with a proof carrying it."""
        srv = await self.server()
        ident = await start_identity(self, plc=self.plc)
        ident.pds.require_dpop_nonce = True
        cred = PDSOAuthCredential(ident.did, ident.pds.url, ident.token)
        client = await self.connect(srv, "oauthuser", cred)
        self.assertEqual(client.account, ident.did)
        self.assertEqual(cred.nonces_received, 1)
        self.assertEqual([p.get("nonce") for p in ident.pds.dpop_payloads], [None, ident.pds.dpop_nonce])
        sessions = [r for r in ident.pds.requests if r.path == "/xrpc/com.atproto.server.getSession"]  # not the profile read
        self.assertEqual(sessions[-1].headers["authorization"], "DPoP " + ident.token)

    @asynctest
    async def test_pds_oauth_endless_rotation_is_bounded(self) -> None:
        """A PDS that rotates its nonce on every request ends in 904 after 3 retries."""
        srv = await self.server()
        ident = await start_identity(self, plc=self.plc)
        pds: FakePDS = ident.pds
        pds.require_dpop_nonce = True
        answer = pds.respond

        def rotating(request: Any, path: str, headers: dict[str, str]) -> None:
            pds.rotate_nonce()
            answer(request, path, headers)

        pds.respond = rotating  # type: ignore[method-assign]
        cred = PDSOAuthCredential(ident.did, ident.pds.url, ident.token)
        with self.assertRaises(SASLFailed) as caught:
            await self.connect(srv, "oauthuser", cred)
        self.assertIn("DPoP nonce retry limit", caught.exception.reason)
        self.assertEqual(cred.nonces_received, 3)
        self.assertEqual(len(pds.dpop_payloads), 4)

    @asynctest
    async def test_wrong_key_signer(self) -> None:
        """A signer whose key is not the DID's fails, or registers as a guest with guest_fallback."""
        srv = await self.server()
        did_a = did_key(generate_private_key(ED25519).public_key())
        cred = CryptoCredential(did_a, generate_private_key(ED25519))
        with self.assertRaises(SASLFailed):
            await self.connect(srv, "signer", cred)
        client = await self.connect(srv, "signer2", cred, guest_fallback=True)
        self.assertIsNone(client.account)
        self.assertIsNone(srv.server.users["signer2"].account)
        self.assertEqual(srv.server.users["signer2"].host, "freeq/guest")

    @asynctest
    async def test_tls_with_trust_root(self) -> None:
        """connect(tls=True) verifies the server certificate against the given trust root."""
        srv = await start_server(self, tls=True)
        assert srv.tls_port is not None
        other_cert, _key = make_certificate(self.mktemp())
        cred = CryptoCredential.from_private_key(generate_private_key(ED25519))
        with self.assertRaises(ConnectionClosed):
            await connect(reactor, "127.0.0.1", srv.tls_port, "tlsuser", tls=True, credential=cred,
                          trust_root=other_cert, server_hostname="localhost", timeout=5)
        client = await connect(reactor, "127.0.0.1", srv.tls_port, "tlsuser", tls=True, credential=cred,
                               trust_root=srv.server.config.tls_cert, server_hostname="localhost", timeout=10)
        self.addCleanup(close_client, client)
        self.assertEqual(client.account, cred.did)


class SDKSessionTests(unittest.TestCase):
    """Events and commands of logged-in SDK clients talking to each other through the server."""

    @asynctest
    async def test_messages_signatures_and_events(self) -> None:
        """A signed PRIVMSG arrives with msgid/time/account and a +freeq.at/sig verifiable with the sender's
        MSGSIG key; joins carry the DID (extended-join); WHOIS gives the DID; a guest's message is unsigned."""
        srv = await start_server(self)
        cred = CryptoCredential.from_private_key(generate_private_key(ED25519))
        alice = await sdk(self, srv.port, "alice", credential=cred)
        bob = await sdk(self, srv.port, "bob")
        self.assertIsNone(bob.account)
        await bob.join("#room")
        seen_join = bob.on_join.wait(lambda j: j.nick == "alice")
        state = await alice.join("#Room")
        self.assertEqual(set(state.members), {"alice", "bob"})
        join = await seen_join
        self.assertEqual(join.account, cred.did)
        if not alice.msgsig_active:
            await alice.on_raw.wait(lambda m: m.command == "MSGSIG")
        self.assertTrue(alice.msgsig_active)

        incoming = bob.on_message.wait()
        await same_second_window()
        alice.say("#Room", "hello, bob")
        msg = await incoming
        self.assertEqual((msg.nick, msg.text, msg.account), ("alice", "hello, bob", cred.did))
        self.assertTrue(msg.msgid and msg.time and msg.signature)
        assert alice.session_public_key is not None
        self.assertTrue(msg.verify(alice.session_public_key))
        self.assertFalse(msg.verify(srv.server.signer.public_key))  # the client's own signature was kept

        incoming = alice.on_message.wait()
        bob.say("alice", "hi alice")
        dm = await incoming
        self.assertEqual((dm.reply_to, dm.account, dm.signature), ("bob", None, None))

        whois = await bob.whois("alice")
        self.assertTrue(whois.found)
        self.assertEqual(whois.account, cred.did)

        parted = bob.on_part.wait(lambda p: p.nick == "alice")
        await alice.part("#room", "later")
        self.assertEqual((await parted).reason, "later")
        self.assertNotIn("#room", alice.channels)

        with self.assertRaises(IRCError) as caught:
            await bob.change_nick("alice")
        self.assertEqual(caught.exception.numeric, "433")
        self.assertEqual(await bob.change_nick("bobby"), "bobby")
        self.assertEqual(bob.nick, "bobby")

    @asynctest
    async def test_server_signature_without_msgsig(self) -> None:
        """Without a session key the server signs a DID user's message with its own key."""
        srv = await start_server(self)
        cred = CryptoCredential.from_private_key(generate_private_key(SECP256K1))
        alice = await sdk(self, srv.port, "alice", credential=cred, auto_msgsig=False)
        bob = await sdk(self, srv.port, "bob")
        incoming = bob.on_message.wait()
        alice.say("bob", "direct")
        msg = await incoming
        self.assertTrue(msg.verify(srv.server.signer.public_key))

    @asynctest
    async def test_quit_closes(self) -> None:
        """quit() sends QUIT and fires once the server has closed the connection."""
        srv = await start_server(self)
        client = await sdk(self, srv.port, "leaver")
        await client.quit("bye")
        self.assertFalse(client.is_connected)
        await sleep(0.05)
        self.assertNotIn("leaver", srv.server.users)


class CLITests(unittest.TestCase):
    """The freeq-client command line: keygen and run."""

    def test_keygen_writes_private_file_and_prints_did(self) -> None:
        """keygen writes a 0600 key file, prints its did:key, and refuses to overwrite without --force."""
        import io

        path = os.path.join(self.mktemp(), "id.key")
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(cli_main(["keygen", "--key-file", path], out, err), 0)
        did = out.getvalue().strip()
        self.assertTrue(did.startswith("did:key:z6Mk"))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        key = read_key_file(path)
        self.assertEqual(did_key(key.public_key()), did)
        self.assertEqual(cli_main(["keygen", "--key-file", path], io.StringIO(), err), 1)
        self.assertIn("exists", err.getvalue())
        out = io.StringIO()
        self.assertEqual(cli_main(["keygen", "--key-file", path, "--kind", "secp256k1", "--force"], out, err), 0)
        self.assertTrue(out.getvalue().startswith("did:key:zQ3s"))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual([f for f in os.listdir(os.path.dirname(path))], ["id.key"])

    def test_key_file_checks(self) -> None:
        """A group/world-readable or malformed key file is refused."""
        path = os.path.join(self.mktemp(), "k")
        write_key_file(path, generate_private_key(ED25519))
        os.chmod(path, 0o644)
        self.assertRaises(KeyFileError, read_key_file, path)
        os.chmod(path, 0o600)
        with open(path, "w") as f:
            f.write("{}")
        self.assertRaises(KeyFileError, read_key_file, path)

    @asynctest
    async def test_run_subprocess_session(self) -> None:
        """`freeq-client run` authenticates with its key file, joins, says, prints what it hears, and quits."""
        srv = await start_server(self)
        path = os.path.abspath(os.path.join(self.mktemp(), "bot.key"))
        key = generate_private_key(ED25519)
        did = write_key_file(path, key)
        watcher = await sdk(self, srv.port, "watcher")
        await watcher.join("#cli")
        heard = watcher.on_message.wait(lambda m: m.nick == "clibot", timeout=20)
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = getProcessOutputAndValue(
            sys.executable,
            ["-m", "freeq.client.cli", "run", "--server", f"127.0.0.1:{srv.port}", "--nick", "clibot",
             "--key-file", path, "--join", "#cli", "--say", "hello from the cli", "--listen", "1.5"],
            env=env, path=REPO)
        msg = await heard
        self.assertEqual((msg.text, msg.account), ("hello from the cli", did))
        watcher.say("#cli", "welcome, bot")
        out, err, code = await proc
        self.assertEqual(code, 0, err)
        text = out.decode()
        self.assertIn(f"as {did}", text)
        self.assertIn("#cli <watcher> welcome, bot", text)

    @asynctest
    async def test_run_fails_cleanly_when_refused(self) -> None:
        """`run` exits 1 with a message when nothing listens on the port."""
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "freeq.client.cli", "run", "--server", f"127.0.0.1:{port}", "--nick", "x",
                             "--timeout", "5"], env=env, path=REPO)
        self.assertEqual(code, 1)
        self.assertIn(b"cannot connect", err)
