"""Modern chat over IRC, end to end: Python SDK clients on two federated servers use every issue #12 cap.

One scenario on servers A and B (linked, each with its web listener and auth broker): multiline both ways,
a labeled message learning its msgid from the echo, edit, reply, react/unreact with history aggregation,
delete (REDACT), CHATHISTORY of the result on the far server, one DID (logged in with broker web tokens) on
both servers keeping its read marker in step, metadata (set on A, told to and read on B), extended-monitor
across the link, and a device that loses its connection, comes back by itself and catches up on what it
missed.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from twisted.internet import defer, reactor
from twisted.trial import unittest

from freeq.client.connection import DEFAULT_CAPS
from freeq.client.model import ChatMessage
from freeq.client.protocol import FreeqClient
from freeq.client.reconnect import CatchUp, Reconnector
from freeq.client.webtoken import WebTokenCredential, fetch_web_token
from freeq.irc.parser import Message
from tests.s2s_support import Node, start_line, wait_for
from tests.support import asynctest, start_web
from tests.test_client_sdk import close_client, sdk
from tests.test_read_marker import NO_NETWORK
from tests.test_sasl import new_credential

SECRET = "modern-chat-broker-secret"
DAVE = "did:plc:modernchatdaveaaaaaaaaaa"
#: echo-message on top of the defaults: the labeled echo gives a client the msgid of its own message.
CAPS = DEFAULT_CAPS + ("echo-message",)


def said(text: str) -> Callable[[ChatMessage], bool]:
    return lambda m: m.text == text


def tagmsg(tag: str, value: str) -> Callable[[Message], bool]:
    return lambda m: m.command == "TAGMSG" and (m.tags or {}).get(tag) == value


def by_msgid(messages: list[ChatMessage], msgid: Optional[str]) -> ChatMessage:
    found = [m for m in messages if m.msgid == msgid]
    assert len(found) == 1, (msgid, messages)
    return found[0]


class ModernChatTests(unittest.TestCase):
    """alice (did:key) on A and bob (did:key) on B share #modern; dave (did:plc, web tokens) has a laptop on
    A and a phone on B that reconnects by itself; carol on A is only watched (MONITOR) from B."""

    timeout = 120

    async def client(self, node: Node, nick: str, **kwargs: Any) -> FreeqClient:
        kwargs.setdefault("caps", CAPS)
        return await sdk(self, node.fixture.port, nick, **kwargs)

    @asynctest
    async def test_every_cap_across_two_servers(self) -> None:
        a, b = await start_line(self, "a.test", "b.test", **NO_NETWORK)
        web_a = await start_web(self, a.fixture, broker_shared_secret=SECRET)
        web_b = await start_web(self, b.fixture, broker_shared_secret=SECRET)
        alice = await self.client(a, "alice", credential=new_credential())
        bob = await self.client(b, "bob", credential=new_credential())
        for c in (alice, bob):
            for cap in DEFAULT_CAPS:
                self.assertIn(cap, c.caps)  # every default cap is offered by freeq and granted
        await alice.join("#modern")
        await wait_for(lambda: "#modern" in b.server.channels, what="#modern on B")
        await bob.join("#modern")
        await wait_for(lambda: any(u.nick == "bob" for u in a.server.channels["#modern"].members), what="bob on A")

        # draft/multiline, both ways: one message with its lines (a long one cut and concatenated) arrives whole.
        body_a = "first line\nsecond line\n" + "long " * 150 + "end"
        got = bob.on_message.wait(said(body_a))
        alice.say_multiline("#modern", body_a)
        multi_a = await got
        self.assertEqual((multi_a.nick, multi_a.target), ("alice", "#modern"))
        body_b = "bob's reply\n\nwith a blank line between"
        got = alice.on_message.wait(said(body_b))
        bob.say_multiline("#modern", body_b)
        multi_b = await got

        # labeled-response with echo-message: the labeled PRIVMSG comes back as our own message with its msgid.
        got = bob.on_message.wait(said("hello everyone"))
        mine = await alice.say_labeled("#modern", "hello everyone")
        self.assertIsNotNone(mine)
        assert mine is not None
        self.assertEqual((mine.nick, mine.target), ("alice", "#modern"))
        self.assertEqual((await got).msgid, mine.msgid)  # B relays it under the same msgid

        # Edit (+draft/edit), reply (+draft/reply), reaction (+draft/react) across the link.
        got = bob.on_message.wait(said("hello, everyone"))
        alice.edit("#modern", str(mine.msgid), "hello, everyone")
        self.assertEqual((await got).tags.get("+draft/edit"), mine.msgid)
        got = alice.on_message.wait(said("hi alice"))
        bob.reply("#modern", str(mine.msgid), "hi alice")
        reply = await got
        self.assertEqual(reply.tags.get("+draft/reply"), mine.msgid)
        got_raw = alice.on_raw.wait(tagmsg("+draft/react", "👍"))
        bob.react("#modern", str(mine.msgid), "👍")
        self.assertEqual(((await got_raw).tags or {}).get("+draft/reply"), mine.msgid)
        got_raw = alice.on_raw.wait(tagmsg("+draft/react", "🎉"))
        bob.react("#modern", str(mine.msgid), "🎉")
        await got_raw
        # A aggregated the far user's reactions and the edit in its own history.
        shown = by_msgid(await alice.history("#modern"), mine.msgid)
        self.assertEqual(shown.text, "hello, everyone")
        self.assertEqual(shown.tags.get("+freeq.at/reactions"), "👍:bob;🎉:bob")
        self.assertIn("+freeq.at/edited", shown.tags)
        got_raw = alice.on_raw.wait(tagmsg("+freeq.at/unreact", "🎉"))
        bob.unreact("#modern", str(mine.msgid), "🎉")
        await got_raw
        shown = by_msgid(await alice.history("#modern"), mine.msgid)
        self.assertEqual(shown.tags.get("+freeq.at/reactions"), "👍:bob")

        # Delete (draft/message-redaction: REDACT, as the SDK picks when granted).
        doomed = await alice.say_labeled("#modern", "oops, wrong channel")
        assert doomed is not None
        got_raw = bob.on_raw.wait(lambda m: m.command == "REDACT")
        alice.delete("#modern", str(doomed.msgid), "mistake")
        self.assertEqual((await got_raw).params, ["#modern", doomed.msgid, "mistake"])

        # CHATHISTORY of the result on the far server (B): multiline rows whole, the edit applied, the
        # reaction aggregated, the reply tagged, the deleted message gone; the msgids are A's.
        on_b = await bob.history("#modern")
        self.assertEqual([m.text for m in on_b], [body_a, body_b, "hello, everyone", "hi alice"])
        self.assertEqual([m.msgid for m in on_b], [multi_a.msgid, multi_b.msgid, mine.msgid, reply.msgid])
        self.assertEqual(on_b[2].tags.get("+freeq.at/reactions"), "👍:bob")
        self.assertEqual(on_b[3].tags.get("+draft/reply"), mine.msgid)
        self.assertNotIn(doomed.msgid, [m.msgid for m in on_b])

        # One DID on both servers, each login a fresh broker web token (single use): the read marker follows.
        token = await fetch_web_token(reactor, web_a.url, SECRET, DAVE, "dave.example.com")
        self.assertEqual((token.did, token.nick), (DAVE, "dave.example.com"))
        laptop = await self.client(a, "dave", credential=token.credential())
        self.assertEqual(laptop.account, DAVE)
        phone_tokens: list[str] = []

        async def fresh_phone_credential() -> WebTokenCredential:
            minted = await fetch_web_token(reactor, web_b.url, SECRET, DAVE)
            phone_tokens.append(minted.token)
            return minted.credential()

        keeper = Reconnector(reactor, "127.0.0.1", b.fixture.port, "davb", caps=CAPS,
                             credential_factory=lambda: defer.ensureDeferred(fresh_phone_credential()),
                             channels=["#modern"], min_delay=0.5, max_delay=2.0, jitter=0.0, max_attempts=10)
        self.addCleanup(keeper.stop)
        phone: FreeqClient = await keeper.start()
        self.assertEqual(phone.account, DAVE)
        await laptop.join("#modern")
        await wait_for(lambda: a.knows("davb") and b.knows("dave"), what="dave's devices on each other's server")
        when = time.time() - 60
        told = phone.on_markread.wait(lambda m: m.target == "#modern")
        stamp = await laptop.mark_read("#modern", when)
        self.assertEqual((await told).timestamp, stamp)
        self.assertEqual(await phone.get_read_marker("#modern"), stamp)
        back = laptop.on_markread.wait(lambda m: m.target == "#modern" and m.timestamp != stamp)
        later = await phone.mark_read("#modern", when + 30)
        self.assertEqual((await back).timestamp, later)

        # draft/metadata-2: bob (B) subscribes, alice sets hers on A; B's subscriber is told and B answers GET.
        self.assertIn("display-name", await bob.metadata_subscribe("display-name"))
        told_meta = bob.on_metadata.wait(lambda m: m.target == "alice" and m.key == "display-name")
        self.assertEqual(await alice.metadata_set("*", "display-name", "Alice L."), "Alice L.")
        self.assertEqual((await told_meta).value, "Alice L.")
        self.assertEqual(await laptop.metadata_get("alice", "display-name"), {"display-name": "Alice L."})
        self.assertEqual(await bob.metadata_get("alice", "display-name"), {"display-name": "Alice L."})
        self.assertEqual(bob.metadata["alice"]["display-name"], "Alice L.")

        # extended-monitor: bob (B) watches carol (A), with whom he shares no channel, and hears her AWAY.
        carol = await self.client(a, "carol")
        await wait_for(lambda: b.knows("carol"), what="carol on B")
        self.assertEqual(await bob.monitor("carol"), {"carol": True})
        away = bob.on_monitored.wait(lambda m: m.command == "AWAY" and (m.source or "").startswith("carol!"))
        carol.send("AWAY", "lunch")
        self.assertEqual((await away).params, ["lunch"])

        # Reconnect: the phone saw "before the drop", loses its connection, comes back with a new web token,
        # rejoins #modern and fetches (CHATHISTORY AFTER that message) the two lines it missed.
        got = phone.on_message.wait(said("before the drop"))
        alice.say("#modern", "before the drop")
        await got
        self.assertEqual(keeper.last_seen("#modern"), "msgid=" + str((await got).msgid))
        caught: list[CatchUp] = []
        keeper.on_caught_up.add(caught.append)
        phone.transport.abortConnection()  # type: ignore[attr-defined]
        await wait_for(lambda: not b.server.users.get("davb"), what="the phone gone from B")
        await wait_for(lambda: not a.knows("davb"), what="the phone gone from A")
        alice.say("#modern", "missed one")
        alice.say("#modern", "missed two")
        await wait_for(lambda: caught, timeout=20, what="the phone to catch up")
        self.assertEqual(keeper.reconnects, 1)
        self.assertEqual(len(phone_tokens), 2)
        self.assertNotEqual(phone_tokens[0], phone_tokens[1])
        self.assertIsNot(keeper.client, phone)
        self.assertEqual(keeper.client.account, DAVE)
        self.assertIn("#modern", keeper.client.channels)
        self.assertEqual(caught[0].channel, "#modern")
        self.assertEqual([m.text for m in caught[0].messages], ["missed one", "missed two"])
        for c in (alice, bob, laptop, carol):
            await close_client(c)
