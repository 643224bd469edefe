"""The wire guard end to end (issue #10 item 9): no handle with CR/LF reaches a client, from any source.

Handles come from the auth broker, from SASL (verifier or web token) and from federation peers; each
gate is exercised over real loopback sockets. A reply the parser's guard refuses (a stored string
with CR/LF that slipped past every gate) is dropped without closing the asker's connection.
"""
from __future__ import annotations

import base64
import json
from typing import Any

from twisted.trial import unittest

from tests.s2s_support import LogCapture, link_raw_peer, wait_for
from tests.support import asynctest, start_server
from tests.test_web_broker import DID, NOW, body, broker, post

INJECTED = "evil.example\r\nPRIVMSG victim :forged"


async def whois_lines(client: Any, nick: str) -> list[Any]:
    """The lines of ``client``'s WHOIS of ``nick`` up to 318, then a PING round trip (so nothing is pending)."""
    client.send(f"WHOIS {nick}")
    await client.expect("318")
    client.send("PING :after")
    await client.expect(lambda l: l.command == "PONG" and l.params[-1] == "after")
    return list(client.lines)


class BrokerHandleTests(unittest.TestCase):
    """The broker refuses a handle that is not an AT Protocol handle (400) and mints nothing."""

    @asynctest
    async def test_crlf_handle_is_400(self) -> None:
        srv, web, _ = await broker(self)
        for handle in (INJECTED, "alice.bsky.social\n", "ALİCE.bsky.social", "no-dot"):
            code, data = await post(web, "web-token", body(did=DID, handle=handle, n=handle), ts=str(NOW))
            self.assertEqual(code, 400, handle)
            self.assertIn("Invalid handle", data["error"])
        self.assertEqual(len(srv.server.web_tokens), 0)


class SaslHandleTests(unittest.TestCase):
    """The last gate: a web token carrying an unchecked handle logs in (the DID is proven) without the handle."""

    @asynctest
    async def test_unchecked_handle_is_dropped_at_login(self) -> None:
        srv, _web, _ = await broker(self)
        token = srv.server.web_tokens.mint(DID, INJECTED)  # as if a bug let it past the broker
        response = base64.urlsafe_b64encode(json.dumps(
            {"did": "", "method": "web-token", "signature": token}).encode()).rstrip(b"=").decode()
        c = await srv.connect()
        c.send("CAP LS 302")
        c.send("NICK tok")
        c.send("USER tok 0 * :Token")
        c.send("CAP REQ :sasl")
        await c.expect(lambda l: l.command == "CAP" and "ACK" in l.params)
        c.send("AUTHENTICATE ATPROTO-CHALLENGE")
        await c.expect("AUTHENTICATE")
        c.send(f"AUTHENTICATE {response}")
        self.assertEqual((await c.expect(lambda l: l.command in ("903", "904"))).command, "903")
        c.send("CAP END")
        await c.expect("001")
        user = srv.server.users["tok"]
        self.assertEqual(user.account, DID)
        self.assertIsNone(user.handle)
        lines = await whois_lines(c, "tok")
        self.assertFalse([l for l in lines if l.command == "320" and "handle" in l.params[-1]])
        self.assertFalse([l for l in lines if "forged" in " ".join(l.params)])


class UnsafeReplyTests(unittest.TestCase):
    """A reply the guard refuses is not sent, and the asker keeps its connection."""

    @asynctest
    async def test_whois_of_a_poisoned_user(self) -> None:
        fixture = await start_server(self)
        victim = await fixture.client("victim")
        await fixture.client("bob")
        bob = fixture.server.users["bob"]
        bob.account, bob.handle = DID, INJECTED  # past every gate: only the wire guard is left
        victim.send("WHOIS bob")
        await victim.expect("330")  # the reply is cut at the refused line (320): the rest of it is not sent
        victim.send("PING :after")
        await victim.expect(lambda l: l.command == "PONG" and l.params[-1] == "after")  # still connected
        lines = list(victim.lines)
        self.assertFalse([l for l in lines if "forged" in " ".join(l.params)])
        self.assertFalse([l for l in lines if l.command == "ERROR"])
        self.assertEqual(fixture.server.metrics.unsafe_lines, 1)
        self.assertIn("victim", fixture.server.users)


class FederatedHandleTests(unittest.TestCase):
    """A peer's user with a handle that is a word but not an atproto handle is accepted without it."""

    timeout = 30

    @asynctest
    async def test_non_handle_word_is_dropped(self) -> None:
        self.logs = LogCapture(self)
        b, mallory, _bob = await link_raw_peer(self, "b.test", "bob")
        mallory.send(mallory.user(1, "mal", handle="Not_A_Handle"))
        mallory.send(mallory.user(2, "mel", handle="mel.bsky.social"))
        await wait_for(lambda: b.knows("mal") and b.knows("mel"), what="mal and mel on B")
        self.assertIsNone(b.server.users["mal"].handle)
        self.assertEqual(b.server.users["mel"].handle, "mel.bsky.social")
