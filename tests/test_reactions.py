"""Reactions and replies over real sockets: both tag spellings relayed, the plain-client fallback, persistence
and the +freeq.at/reactions aggregate in history, unreact, and the bounds."""
from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from freeq.state.redaction import MAX_REACTIONS_PER_USER
from tests.support import IRCClient, ServerFixture, asynctest, start_server

T0 = 1_700_000_000.0
TAGS = ("batch", "message-tags", "server-time", "echo-message", "draft/chathistory")


class ReactionTests(unittest.TestCase):
    """Reactions against a real server with its in-memory store."""

    async def start(self) -> tuple[ServerFixture, IRCClient, IRCClient, IRCClient]:
        """alice and bob with message-tags, dave without, all in #c."""
        self.clock = Clock()
        self.clock.advance(T0)
        self.srv = await start_server(self, clock=self.clock, flood_rate=0)
        alice = await self.srv.client("alice", caps=TAGS)
        bob = await self.srv.client("bob", caps=TAGS)
        dave = await self.srv.client("dave")
        for c in (alice, bob, dave):
            c.send("JOIN #c")
            await c.expect("366")
        for c in (alice, bob, dave):
            c.skip()
        return self.srv, alice, bob, dave

    async def say(self, client: IRCClient, text: str, tags: str = "") -> Any:
        client.send(f"{tags}PRIVMSG #c :{text}")
        line = await client.expect(lambda l: l.command == "PRIVMSG" and l.params[-1] == text)
        self.clock.advance(1)
        return line

    async def history(self, client: IRCClient) -> list[Any]:
        client.skip()
        client.send("CHATHISTORY LATEST #c * 50")
        opener = await client.expect("BATCH")
        ref = opener.params[0][1:]
        lines = await client.collect_until(lambda l: l.command == "BATCH" and l.params == ["-" + ref])
        return [l for l in lines[:-1] if l.command == "PRIVMSG"]

    @asynctest
    async def test_reaction_relayed_in_both_spellings_with_fallback(self) -> None:
        """``+draft/react`` alone reaches tag clients as both ``+draft/react`` and ``+react`` (and the reply in
        both spellings); a client without message-tags gets a CTCP ACTION saying so."""
        _srv, alice, bob, dave = await self.start()
        msg = await self.say(alice, "hello")
        msgid = msg.tags["msgid"]
        await dave.expect(lambda l: l.params[-1:] == ["hello"])
        bob.skip()
        bob.send(f"@+draft/react=👍;+draft/reply={msgid} TAGMSG #c")
        line = await alice.expect("TAGMSG")
        self.assertEqual((line.tags["+draft/react"], line.tags["+react"]), ("👍", "👍"))
        self.assertEqual((line.tags["+draft/reply"], line.tags["+reply"]), (msgid, msgid))
        self.assertTrue(line.source.startswith("bob!"))
        fallback = await dave.expect("PRIVMSG")
        self.assertTrue(fallback.source.startswith("bob!"))
        self.assertEqual(fallback.params, ["#c", "\x01ACTION reacted with 👍\x01"])

    @asynctest
    async def test_reactions_aggregated_in_history_and_unreact(self) -> None:
        """Reactions are kept and replayed on the message as ``+freeq.at/reactions=emoji:nick,nick;emoji:nick``;
        a repeated reaction counts once; ``+freeq.at/unreact`` takes one back (for everyone's history)."""
        _srv, alice, bob, _dave = await self.start()
        msg = await self.say(alice, "vote")
        other = await self.say(alice, "untouched")
        msgid = msg.tags["msgid"]
        for client, emoji in ((alice, "👍"), (bob, "👍"), (bob, "❤"), (bob, "👍")):
            client.send(f"@+react={emoji};+reply={msgid} TAGMSG #c")
            await client.expect(lambda l: l.command == "TAGMSG" and l.tags.get("+react") == emoji)
        lines = await self.history(alice)
        by_id = {l.tags["msgid"]: l for l in lines}
        self.assertEqual(by_id[msgid].tags["+freeq.at/reactions"], "👍:alice,bob;❤:bob")
        self.assertNotIn("+freeq.at/reactions", by_id[other.tags["msgid"]].tags)
        bob.send(f"@+freeq.at/unreact=👍;+reply={msgid} TAGMSG #c")
        line = await alice.expect("TAGMSG")
        self.assertEqual(line.tags["+freeq.at/unreact"], "👍")
        by_id = {l.tags["msgid"]: l for l in await self.history(bob)}
        self.assertEqual(by_id[msgid].tags["+freeq.at/reactions"], "👍:alice;❤:bob")

    @asynctest
    async def test_bounds(self) -> None:
        """An invalid reaction gets FAIL REACT INVALID_REACTION and is not relayed; past MAX_REACTIONS_PER_USER
        distinct reactions on one message a user gets FAIL REACT TOO_MANY_REACTIONS and nothing is relayed;
        a malformed reply reference is refused (FAIL ... INVALID_PARAMS)."""
        _srv, alice, bob, _dave = await self.start()
        msgid = (await self.say(alice, "target")).tags["msgid"]
        bob.send(f"@+react=a:b;+reply={msgid} TAGMSG #c")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:3], ["REACT", "INVALID_REACTION", "#c"])
        bob.send(f"@+react={'x' * 65};+reply={msgid} TAGMSG #c")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:2], ["REACT", "INVALID_REACTION"])
        for i in range(MAX_REACTIONS_PER_USER):
            bob.send(f"@+react=r{i};+reply={msgid} TAGMSG #c")
            await bob.expect(lambda l: l.command == "TAGMSG" and l.tags.get("+react") == f"r{i}")
        bob.send(f"@+react=one-more;+reply={msgid} TAGMSG #c")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:4], ["REACT", "TOO_MANY_REACTIONS", "#c", msgid])
        await alice.expect_not(lambda l: l.tags.get("+react") in ("one-more", "a:b"),
                               until=lambda l: l.tags.get("+react") == f"r{MAX_REACTIONS_PER_USER - 1}")
        bob.send("@+reply=bad\\sid PRIVMSG #c :reply")  # the value "bad id"
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:2], ["PRIVMSG", "INVALID_PARAMS"])
        reactions = (await self.history(alice))[0].tags["+freeq.at/reactions"]
        self.assertEqual(len(reactions.split(";")), MAX_REACTIONS_PER_USER)

    @asynctest
    async def test_reply_tags_normalised_and_kept(self) -> None:
        """A PRIVMSG with ``+reply`` is delivered with both reply spellings and history keeps them."""
        _srv, alice, bob, _dave = await self.start()
        first = await self.say(alice, "question")
        await self.say(bob, "answer", tags=f"@+reply={first.tags['msgid']} ")
        line = await alice.expect(lambda l: l.params[-1:] == ["answer"])
        self.assertEqual((line.tags["+reply"], line.tags["+draft/reply"]), (first.tags["msgid"],) * 2)
        kept = [l for l in await self.history(alice) if l.params[-1] == "answer"][0]
        self.assertEqual(kept.tags["+draft/reply"], first.tags["msgid"])

    @asynctest
    async def test_rows_of_pruned_messages_go(self) -> None:
        """Once the history cap has pruned a message, its reaction rows go at the next reaction in that
        conversation (they are older than the oldest message left)."""
        self.clock = Clock()
        self.clock.advance(T0)
        srv = await start_server(self, clock=self.clock, flood_rate=0, max_messages_per_channel=2)
        alice = await srv.client("alice", caps=TAGS)
        alice.send("JOIN #c")
        await alice.expect("366")
        self.srv = srv
        first = (await self.say(alice, "one")).tags["msgid"]
        alice.send(f"@+react=a;+reply={first} TAGMSG #c")
        await alice.expect("TAGMSG")
        self.clock.advance(1)
        await self.say(alice, "two")
        await self.say(alice, "three")
        last = (await self.say(alice, "four")).tags["msgid"]
        alice.send(f"@+react=b;+reply={last} TAGMSG #c")
        await alice.expect(lambda l: l.command == "TAGMSG" and l.tags.get("+react") == "b")
        store = srv.server.store
        assert store is not None
        rows = await store._in_thread(lambda: store.conn.execute(
            "SELECT msgid FROM message_reactions").fetchall())
        self.assertEqual([r[0] for r in rows], [last])

    @asynctest
    async def test_redact_a_reaction(self) -> None:
        """A kept reaction keeps the msgid of its TAGMSG: its reactor may REDACT it (history loses it, tag
        clients get +draft/delete); someone else who is not a channel operator may not."""
        _srv, alice, bob, _dave = await self.start()
        msgid = (await self.say(alice, "react to me")).tags["msgid"]
        bob.send(f"@+react=👍;+reply={msgid} TAGMSG #c")
        bobs = (await bob.expect(lambda l: l.command == "TAGMSG" and l.tags.get("+react") == "👍")).tags["msgid"]
        alice.send(f"@+react=🎉;+reply={msgid} TAGMSG #c")
        alices = (await alice.expect(lambda l: l.command == "TAGMSG" and l.tags.get("+react") == "🎉")).tags["msgid"]
        bob.send(f"REDACT #c {alices}")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:4], ["REDACT", "REDACT_FORBIDDEN", "#c", alices])
        bob.send(f"REDACT #c {bobs}")
        gone = await alice.expect(lambda l: l.command == "TAGMSG" and "+draft/delete" in l.tags)
        self.assertEqual(gone.tags["+draft/delete"], bobs)
        line = [l for l in await self.history(alice) if l.tags["msgid"] == msgid][0]
        self.assertEqual(line.tags["+freeq.at/reactions"], "🎉:alice")
