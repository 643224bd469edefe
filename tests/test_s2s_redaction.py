"""Edits, deletes and reactions across two federated servers, driven by the Python SDK's helpers: each
server applies the same rules to the other's events and keeps them in its own history."""
from __future__ import annotations

from typing import Callable

from twisted.internet import reactor
from twisted.trial import unittest

from freeq.client.connect import client_endpoint
from freeq.client.protocol import FreeqClient, FreeqClientFactory
from freeq.irc.parser import Message
from tests.s2s_support import LogCapture, Node, start_line, wait_for
from tests.support import asynctest

CAPS = ("message-tags", "server-time", "echo-message", "batch", "draft/chathistory", "draft/message-redaction")


class Recorder:
    """Every line an SDK client receives, for waiting on."""

    def __init__(self, client: FreeqClient) -> None:
        self.client = client
        self.lines: list[Message] = []
        client.on_raw.add(self.lines.append)

    async def find(self, pred: Callable[[Message], bool], what: str) -> Message:
        """Wait for (and return) the first received line ``pred`` accepts."""
        found = await wait_for(lambda: next((m for m in self.lines if pred(m)), None), what=what)
        assert isinstance(found, Message)
        return found

    async def history(self, target: str) -> list[Message]:
        """The PRIVMSG lines of a CHATHISTORY LATEST batch."""
        self.lines.clear()
        self.client.send("CHATHISTORY", "LATEST", target, "*", "50")
        opener = await self.find(lambda m: m.command == "BATCH" and m.params[0].startswith("+"), "history batch")
        ref = opener.params[0][1:]
        await self.find(lambda m: m.command == "BATCH" and m.params == ["-" + ref], "end of history batch")
        return [m for m in self.lines if m.command == "PRIVMSG" and (m.tags or {}).get("batch") == ref]


class FederatedRedactionTests(unittest.TestCase):
    """A and B linked; alice (SDK) on A created #fed, bob (SDK) on B joined it."""

    timeout = 40

    async def sdk(self, node: Node, nick: str) -> Recorder:
        client: FreeqClient = await client_endpoint(reactor, "127.0.0.1", node.fixture.port).connect(
            FreeqClientFactory(nick, caps=CAPS, clock=reactor))
        self.addCleanup(lambda: client.quit(timeout=1.0))
        await client.registered
        return Recorder(client)

    @asynctest
    async def test_edit_react_delete_cross_servers(self) -> None:
        """alice edits her message, bob reacts to it and may not delete it, alice deletes it: each reaches the
        other server, which checks the author itself and keeps the edit, the reaction and the delete in its
        own history (CHATHISTORY on both servers agrees)."""
        LogCapture(self)
        a, b = await start_line(self, "a.test", "b.test")
        alice = await self.sdk(a, "alice")
        bob = await self.sdk(b, "bob")
        await alice.client.join("#fed")
        await wait_for(lambda: "#fed" in b.server.channels, what="#fed on B")
        await bob.client.join("#fed")
        await wait_for(lambda: any(u.nick == "bob" for u in a.server.channels["#fed"].members), what="bob on A")

        alice.client.say("#fed", "helo world")
        seen = await bob.find(lambda m: m.command == "PRIVMSG" and m.params[-1] == "helo world", "message on B")
        msgid = (seen.tags or {})["msgid"]
        keep = "second"
        alice.client.say("#fed", keep)
        await bob.find(lambda m: m.command == "PRIVMSG" and m.params[-1] == keep, "second on B")

        alice.client.edit("#fed", msgid, "hello world")
        edit = await bob.find(lambda m: m.command == "PRIVMSG" and m.params[-1] == "hello world", "edit on B")
        self.assertEqual((edit.tags or {})["+draft/edit"], msgid)

        bob.client.react("#fed", msgid, "👍")
        mine = await bob.find(lambda m: m.command == "TAGMSG" and (m.tags or {}).get("+react") == "👍", "own reaction")
        react = await alice.find(lambda m: m.command == "TAGMSG" and (m.tags or {}).get("+react") == "👍", "reaction")
        self.assertEqual((react.tags or {})["+reply"], msgid)

        bob.client.delete("#fed", msgid)
        fail = await bob.find(lambda m: m.command == "FAIL", "refusal on B")
        self.assertEqual(fail.params[:2], ["REDACT", "REDACT_FORBIDDEN"])

        for node_client in (alice, bob):
            shown = await node_client.history("#fed")
            self.assertEqual([m.params[-1] for m in shown], ["hello world", keep])
            self.assertEqual((shown[0].tags or {})["msgid"], msgid)
            self.assertEqual((shown[0].tags or {})["+freeq.at/reactions"], "👍:bob")
            self.assertEqual((shown[0].tags or {})["+freeq.at/edited"], (edit.tags or {})["msgid"])

        # bob takes his reaction back with REDACT of its msgid (his echo); A applies it too.
        bob.client.delete("#fed", (mine.tags or {})["msgid"])
        await alice.find(lambda m: m.command == "REDACT" and m.params[1:2] == [(mine.tags or {})["msgid"]],
                         "reaction REDACT on A")
        for node_client in (alice, bob):
            self.assertNotIn("+freeq.at/reactions", ((await node_client.history("#fed"))[0].tags or {}))

        alice.client.delete("#fed", msgid, "gone")
        redact = await bob.find(lambda m: m.command == "REDACT", "REDACT on B")
        self.assertEqual(redact.params, ["#fed", msgid, "gone"])
        for node_client in (bob, alice):
            self.assertEqual([m.params[-1] for m in await node_client.history("#fed")], [keep])

    @asynctest
    async def test_forged_remote_edit_rejected(self) -> None:
        """A peer's edit of a message its user did not write is not applied on the other server: B's user
        mallory edits alice's message by sending the tag straight to A's view (through B, which checks it
        first and refuses); A never shows it and keeps alice's text."""
        logs = LogCapture(self)
        a, b = await start_line(self, "a.test", "b.test")
        alice = await self.sdk(a, "alice")
        mallory = await self.sdk(b, "mallory")
        await alice.client.join("#fed")
        await wait_for(lambda: "#fed" in b.server.channels, what="#fed on B")
        await mallory.client.join("#fed")
        await wait_for(lambda: any(u.nick == "mallory" for u in a.server.channels["#fed"].members), what="on A")
        alice.client.say("#fed", "original")
        seen = await mallory.find(lambda m: m.command == "PRIVMSG" and m.params[-1] == "original", "on B")
        msgid = (seen.tags or {})["msgid"]
        # B's own check refuses it locally ...
        mallory.client.edit("#fed", msgid, "forged")
        fail = await mallory.find(lambda m: m.command == "FAIL", "refusal")
        self.assertEqual(fail.params[:2], ["EDIT", "AUTHOR_MISMATCH"])
        # ... and were B to relay it anyway, A applies the same rule: emit the event as B's federation would.
        user = b.server.users["mallory"]
        b.federation.local_message(user, "PRIVMSG", "#fed", b.server.channels["#fed"], "forged",
                                   {"+draft/edit": msgid}, "01HZZZZZZZZZZZZZZZZZZZZZZZ")
        await logs.wait("Federated edit of", msgid, "rejected")
        self.assertFalse(any(m.params[-1:] == ["forged"] for m in alice.lines))
        # An edit is one line: a multiline body carrying the edit tag is refused (even from the author's server).
        b.federation.local_multiline_message(user, "PRIVMSG", "#fed", b.server.channels["#fed"], "two\nlines",
                                             {"+draft/edit": msgid}, "01HZZZZZZZZZZZZZZZZZZZZZZY")
        await logs.wait("Federated edit of", msgid, "more than one line")
        self.assertEqual([m.params[-1] for m in await alice.history("#fed")], ["original"])
