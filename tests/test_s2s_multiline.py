"""``draft/multiline`` across two federated servers: one S2S ``msg`` event per message (flagged ``multiline``,
up to max-bytes), rendered on the far side as a batch or as plain lines, kept there as one history row; and
the Python SDK's multiline helper end to end. A peer's multiline body is held to the same limits."""
from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from freeq.client.connect import client_endpoint
from freeq.client.protocol import ChatMessage, FreeqClient, FreeqClientFactory
from freeq.state.multiline import MAX_LINES
from tests.s2s_support import LogCapture, Node, link_raw_peer, start_line, wait_for
from tests.support import asynctest
from tests.test_multiline import assemble, read_batch, send_batch

ML = ("batch", "draft/multiline", "message-tags", "server-time", "echo-message")
PLAIN = ("message-tags", "server-time")


class FederatedMultilineTests(unittest.TestCase):
    """A and B linked over real iroh endpoints on 127.0.0.1."""

    timeout = 40

    async def pair(self) -> tuple[Node, Node, Any, Any, Any]:
        """alice (multiline) on A created #fed; bob (multiline) and carol (plain) on B joined it."""
        self.logs = LogCapture(self)
        a, b = await start_line(self, "a.test", "b.test")
        alice = await a.client("alice", caps=ML)
        bob = await b.client("bob", caps=ML)
        carol = await b.client("carol", caps=PLAIN)
        alice.send("JOIN #fed")
        await alice.expect("366")
        await wait_for(lambda: "#fed" in b.server.channels, what="#fed on B")
        for c in (bob, carol):
            c.send("JOIN #fed")
            await c.expect("366")
        await wait_for(lambda: len(a.server.channels["#fed"].members) == 3, what="bob and carol on A")
        for c in (alice, bob, carol):
            c.skip()
        return a, b, alice, bob, carol

    @asynctest
    async def test_channel_message_is_one_event_rendered_on_the_far_side(self) -> None:
        """A 7 KB multiline message (over the 4096-byte single-line cap) crosses as one msg event; B renders it
        as a batch for bob (alice's prefix and msgid on the opener) and as plain lines for carol, and keeps one
        history row."""
        a, b, alice, bob, carol = await self.pair()
        body = [f"{i:02d} " + "lorem ipsum " * 10 for i in range(60)]
        send_batch(alice, "#fed", body)
        echo, _ = await read_batch(alice)
        opener, lines = await read_batch(bob)
        self.assertTrue(opener.source.startswith("alice!"))
        self.assertEqual(opener.params[1:], ["draft/multiline", "#fed"])
        self.assertEqual(opener.tags["msgid"], echo.tags["msgid"])
        self.assertEqual(opener.tags["+freeq.at/origin"], "a.test")
        self.assertEqual(assemble(lines), "\n".join(body))
        plain = [await carol.expect("PRIVMSG") for _ in body]
        self.assertEqual([l.params[-1] for l in plain], body)
        self.assertEqual(plain[0].tags["msgid"], echo.tags["msgid"])
        self.assertTrue(all("msgid" not in l.tags for l in plain[1:]))
        self.assertEqual(b.federation.stats.get("applied:msg", 0), 1)
        rows = await b.server.store.history("#fed", "LATEST", (None,), 10)
        self.assertEqual([r.text for r in rows], ["\n".join(body)])

    @asynctest
    async def test_private_message_to_remote_user(self) -> None:
        """A multiline DM to a user on the other server arrives there as a batch."""
        a, b, alice, bob, carol = await self.pair()
        send_batch(alice, "bob", ["one", "two"], command="NOTICE")
        opener, lines = await read_batch(bob)
        self.assertEqual(opener.params[1:], ["draft/multiline", "bob"])
        self.assertEqual([l.command for l in lines], ["NOTICE", "NOTICE"])
        self.assertEqual(assemble(lines), "one\ntwo")

    async def sdk(self, node: Node, nick: str) -> FreeqClient:
        """A Python SDK client asking for multiline."""
        client: FreeqClient = await client_endpoint(reactor, "127.0.0.1", node.fixture.port).connect(
            FreeqClientFactory(nick, caps=ML, clock=reactor))
        self.addCleanup(lambda: client.quit(timeout=1.0))
        await client.registered
        return client

    @asynctest
    async def test_sdk_multiline_end_to_end(self) -> None:
        """The SDK sends a 7 KB text with a line longer than one IRC line as a batch; the SDK on the other
        server gets back exactly that text as one message with one msgid (before: one 7 KB PRIVMSG, 417, lost)."""
        LogCapture(self)
        a, b = await start_line(self, "a.test", "b.test")
        alice = await self.sdk(a, "alice")
        bob = await self.sdk(b, "bob")
        self.assertTrue(alice.multiline_enabled)
        await alice.join("#fed")
        await wait_for(lambda: "#fed" in b.server.channels, what="#fed on B")
        await bob.join("#fed")
        await wait_for(lambda: len(a.server.channels["#fed"].members) == 2, what="bob on A")
        text = "\n".join(f"line {i}: " + "x" * 100 for i in range(60)) + "\n" + "word " * 300 + "\n\nend"
        got: "list[ChatMessage]" = []
        bob.on_message.add(got.append)
        alice.say_multiline("#fed", text)
        await wait_for(lambda: got, what="the message on B")
        await wait_for(lambda: b.federation.stats.get("applied:msg", 0) >= 1, what="the event on B")
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0].text, text)
        self.assertEqual(got[0].nick, "alice")
        self.assertEqual(len(got[0].msgid or ""), 26)
        self.assertEqual(b.federation.stats.get("applied:msg", 0), 1)
        back: "list[ChatMessage]" = []
        alice.on_message.add(back.append)
        bob.say_multiline("#fed", "reply\nin two lines")
        await wait_for(lambda: back, what="the reply on A")
        self.assertEqual(back[0].text, "reply\nin two lines")


class HostilePeerMultilineTests(unittest.TestCase):
    """A scripted peer's multiline events meet the same limits as a client's batch."""

    timeout = 30

    @asynctest
    async def test_over_limit_or_unsafe_multiline_events_are_malformed(self) -> None:
        """Too many lines or a CR in a multiline body is a malformed event: nothing reaches a client; a valid
        one is rendered as a batch."""
        logs = LogCapture(self)
        b, mallory, bob = await link_raw_peer(self, "b.test", "bob")
        bob.send("CAP REQ :batch draft/multiline message-tags")
        await bob.expect(r"CAP bob ACK")
        mallory.send(mallory.user(1, "mal"))
        mallory.send(mallory.event("join", {"uid": mallory.uid(1), "channel": "#chan", "status": "", "ops": []}))
        await wait_for(lambda: b.knows("mal"), what="mal on B")

        def msg(text: str, msgid: str) -> dict[str, Any]:
            return mallory.event("msg", {"uid": mallory.uid(1), "cmd": "PRIVMSG", "target": "#chan", "text": text,
                                         "multiline": True, "tags": {}, "msgid": msgid})
        mallory.send(msg("\n".join(["x"] * (MAX_LINES + 1)), "M1"))
        mallory.send(msg("a\r\nQUIT :pwned", "M2"))
        await wait_for(lambda: b.federation.stats.get("malformed", 0) >= 2, what="two malformed")
        self.assertTrue(logs.find("malformed"))
        mallory.send(msg("fine\nlines", "M3"))
        opener, lines = await read_batch(bob)
        self.assertEqual(opener.tags["msgid"], "M3")
        self.assertEqual(assemble(lines), "fine\nlines")
        self.assertFalse(any(l.command == "QUIT" or "pwned" in l.raw for l in bob.lines))
