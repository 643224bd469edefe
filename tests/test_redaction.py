"""Edits and deletes over real sockets: REDACT (draft/message-redaction), +draft/edit, +draft/delete, who may,
what each kind of client sees, and how history and the REST API show the result."""
from __future__ import annotations

import io
import json
import os
from typing import Any

import treq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from freeq.signing import SIG_TAG, unb64url, verify
from freeq.config import Config, Listen
from tests.support import IRCClient, ServerFixture, asynctest, start_server, start_tree, start_web
from tests.test_persistence import Running

T0 = 1_700_000_000.0
FULL = ("batch", "message-tags", "server-time", "echo-message", "draft/chathistory", "draft/message-redaction")
TAGS = ("batch", "message-tags", "server-time", "echo-message", "draft/chathistory")


class RedactionTests(unittest.TestCase):
    """Edits and deletes against a real server with its in-memory store."""

    async def start(self) -> tuple[ServerFixture, IRCClient, IRCClient, IRCClient, IRCClient]:
        """alice (op of #c: she created it) and bob with the redaction cap, carol with message-tags only,
        dave with no caps, all in #c; the clock is controlled so messages get distinct times."""
        self.clock = Clock()
        self.clock.advance(T0)
        self.srv = await start_server(self, clock=self.clock, flood_rate=0)
        alice = await self.srv.client("alice", caps=FULL)
        bob = await self.srv.client("bob", caps=FULL)
        carol = await self.srv.client("carol", caps=TAGS)
        dave = await self.srv.client("dave")
        for c in (alice, bob, carol, dave):
            c.send("JOIN #c")
            await c.expect("366")
        for c in (alice, bob, carol, dave):
            c.skip()
        return self.srv, alice, bob, carol, dave

    async def say(self, client: IRCClient, text: str, tags: str = "", target: str = "#c") -> Any:
        """Send with echo-message; return the echoed line; step the clock a second."""
        client.send(f"{tags}PRIVMSG {target} :{text}")
        line = await client.expect(lambda l: l.command == "PRIVMSG" and l.params[-1] == text)
        self.clock.advance(1)
        return line

    async def history(self, client: IRCClient, target: str = "#c") -> list[Any]:
        """The lines of a CHATHISTORY LATEST batch."""
        client.skip()
        client.send(f"CHATHISTORY LATEST {target} * 50")
        opener = await client.expect("BATCH")
        ref = opener.params[0][1:]
        lines = await client.collect_until(lambda l: l.command == "BATCH" and l.params == ["-" + ref])
        return lines[:-1]

    @asynctest
    async def test_cap_advertised(self) -> None:
        """CAP LS offers draft/message-redaction and it can be negotiated."""
        srv = await start_server(self)
        c = await srv.client("alice", caps=("message-tags", "draft/message-redaction"))
        ls = " ".join(p for l in c.lines if l.command == "CAP" and l.params[1:2] == ["LS"] for p in l.params)
        self.assertIn("draft/message-redaction", ls.split())
        acks = [l for l in c.lines if l.command == "CAP" and l.params[1:2] == ["ACK"]]
        self.assertIn("draft/message-redaction", acks[0].params[-1].split())

    @asynctest
    async def test_redact_own_message(self) -> None:
        """REDACT of one's own message: REDACT to redaction clients (with the reason), TAGMSG +draft/delete to
        other tag clients, nothing to plain ones; history leaves the message out."""
        _srv, alice, bob, carol, dave = await self.start()
        keep = await self.say(alice, "keep me")
        gone = await self.say(alice, "oops")
        msgid = gone.tags["msgid"]
        await dave.expect(lambda l: l.params[-1:] == ["oops"])
        dave.skip()
        alice.send(f"REDACT #c {msgid} :typo")
        echo = await alice.expect("REDACT")
        self.assertEqual(echo.params, ["#c", msgid, "typo"])
        line = await bob.expect("REDACT")
        self.assertEqual(line.params, ["#c", msgid, "typo"])
        self.assertTrue(line.source.startswith("alice!"))
        self.assertIn("msgid", line.tags)
        tag = await carol.expect("TAGMSG")
        self.assertEqual(tag.tags["+draft/delete"], msgid)
        self.assertEqual(tag.params, ["#c"])
        dave.send("PING :after")
        await dave.expect_not(lambda l: l.command in ("REDACT", "TAGMSG") or "oops" in l.raw,
                              until=lambda l: l.command == "PONG")
        texts = [l.params[-1] for l in await self.history(bob)]
        self.assertIn("keep me", texts)
        self.assertNotIn("oops", texts)
        self.assertEqual(keep.params[-1], "keep me")

    @asynctest
    async def test_redact_refusals(self) -> None:
        """Someone else's message (not an operator): REDACT_FORBIDDEN; unknown msgid: UNKNOWN_MSGID; a channel
        one is not on: INVALID_TARGET; too few parameters: NEED_MORE_PARAMS. Nothing is deleted."""
        srv, alice, bob, _carol, _dave = await self.start()
        line = await self.say(alice, "mine")
        msgid = line.tags["msgid"]
        bob.send(f"REDACT #c {msgid} :no")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:4], ["REDACT", "REDACT_FORBIDDEN", "#c", msgid])
        bob.send("REDACT #c 01HZZZZZZZZZZZZZZZZZZZZZZZ")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:4], ["REDACT", "UNKNOWN_MSGID", "#c", "01HZZZZZZZZZZZZZZZZZZZZZZZ"])
        bob.send(f"REDACT #elsewhere {msgid}")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:3], ["REDACT", "INVALID_TARGET", "#elsewhere"])
        bob.send("REDACT #c")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:2], ["REDACT", "NEED_MORE_PARAMS"])
        self.assertIn("mine", [l.params[-1] for l in await self.history(alice)])

    @asynctest
    async def test_labelled_redact(self) -> None:
        """A labelled REDACT is answered (later, once the store found the message) with the label: the echo on
        success, the FAIL on refusal."""
        srv, alice, _bob, _carol, _dave = await self.start()
        erin = await srv.client("erin", caps=FULL + ("labeled-response",))
        erin.send("JOIN #c")
        await erin.expect("366")
        line = await self.say(erin, "labelled")
        erin.send(f"@label=r1 REDACT #c {line.tags['msgid']}")
        echo = await erin.expect("REDACT")
        self.assertEqual((echo.tags.get("label"), echo.params), ("r1", ["#c", line.tags["msgid"]]))
        other = await self.say(alice, "not erin's")
        erin.send(f"@label=r2 REDACT #c {other.tags['msgid']}")
        fail = await erin.expect("FAIL")
        self.assertEqual((fail.tags.get("label"), fail.params[:2]), ("r2", ["REDACT", "REDACT_FORBIDDEN"]))
        erin.send("@label=r3 PING :x")
        await erin.expect_not(lambda l: l.command == "ACK" and l.tags.get("label") in ("r1", "r2"),
                              until=lambda l: l.command == "PONG")

    @asynctest
    async def test_operator_deletes_others_message_by_tag(self) -> None:
        """A channel operator may delete anyone's message (TAGMSG +draft/delete); a plain member may not
        (FAIL DELETE AUTHOR_MISMATCH)."""
        _srv, alice, bob, carol, _dave = await self.start()
        bobs = await self.say(bob, "spam")
        alices = await self.say(alice, "ham")
        bob.send(f"@+draft/delete={alices.tags['msgid']} TAGMSG #c")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:4], ["DELETE", "AUTHOR_MISMATCH", "#c", alices.tags["msgid"]])
        alice.send(f"@+draft/delete={bobs.tags['msgid']} TAGMSG #c")
        line = await bob.expect("REDACT")
        self.assertEqual(line.params, ["#c", bobs.tags["msgid"]])
        tag = await carol.expect("TAGMSG")
        self.assertEqual(tag.tags["+draft/delete"], bobs.tags["msgid"])
        texts = [l.params[-1] for l in await self.history(carol)]
        self.assertEqual([t for t in texts if t in ("spam", "ham")], ["ham"])
        bob.send("@+draft/delete=01HZZZZZZZZZZZZZZZZZZZZZZZ TAGMSG #c")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:2], ["DELETE", "MESSAGE_NOT_FOUND"])

    @asynctest
    async def test_edit_by_did_author(self) -> None:
        """An account holder edits its message: recipients get a PRIVMSG with a new msgid, +draft/edit=<original>
        and a signature over the new text that verifies; history shows the new text at the original's msgid
        with +freeq.at/edited naming the edit and the edit's signature."""
        srv, alice, bob, _carol, _dave = await self.start()
        srv.server.users["alice"].account = "did:plc:alice"
        srv.server.users["bob"].account = "did:plc:bob"
        original = await self.say(alice, "helo world")
        orig_id = original.tags["msgid"]
        bob.skip()
        edit = await self.say(alice, "hello world", tags=f"@+draft/edit={orig_id} ")
        seen = await bob.expect(lambda l: l.command == "PRIVMSG" and l.params[-1] == "hello world")
        self.assertEqual(seen.tags["+draft/edit"], orig_id)
        self.assertNotEqual(seen.tags["msgid"], orig_id)
        sig = seen.tags[SIG_TAG]
        key = unb64url(srv.server.signer.public_key_b64)
        self.assertTrue(verify(key, sig, "did:plc:alice", "#c", "hello world", int(T0) + 1))
        lines = [l for l in await self.history(bob) if l.command == "PRIVMSG"]
        self.assertEqual([l.params[-1] for l in lines], ["hello world"])
        self.assertEqual(lines[0].tags["msgid"], orig_id)
        self.assertEqual(lines[0].tags["+freeq.at/edited"], edit.tags["msgid"])
        self.assertEqual(lines[0].tags[SIG_TAG], sig)

    @asynctest
    async def test_edit_refusals(self) -> None:
        """Editing another's message: FAIL EDIT AUTHOR_MISMATCH (by DID, and a guest by nick); an unknown msgid:
        MESSAGE_NOT_FOUND; nothing is delivered and history is unchanged."""
        srv, alice, bob, carol, _dave = await self.start()
        srv.server.users["alice"].account = "did:plc:alice"
        line = await self.say(alice, "original")
        carols = await self.say(carol, "guest words")
        bob.send(f"@+draft/edit={line.tags['msgid']} PRIVMSG #c :hijack")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:4], ["EDIT", "AUTHOR_MISMATCH", "#c", line.tags["msgid"]])
        bob.send(f"@+draft/edit={carols.tags['msgid']} PRIVMSG #c :hijack")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:2], ["EDIT", "AUTHOR_MISMATCH"])
        bob.send("@+draft/edit=01HZZZZZZZZZZZZZZZZZZZZZZZ PRIVMSG #c :x")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.params[:2], ["EDIT", "MESSAGE_NOT_FOUND"])
        # a guest edits its own message (matched by nick)
        await self.say(carol, "guest words, fixed", tags=f"@+draft/edit={carols.tags['msgid']} ")
        await alice.expect_not("hijack", until=lambda l: l.params[-1:] == ["guest words, fixed"])
        texts = [l.params[-1] for l in await self.history(alice) if l.command == "PRIVMSG"]
        self.assertEqual(texts, ["original", "guest words, fixed"])

    @asynctest
    async def test_dm_edit_and_delete_between_accounts(self) -> None:
        """Private messages between accounts are edited and deleted the same way; history follows."""
        srv, alice, bob, _carol, _dave = await self.start()
        srv.server.users["alice"].account = "did:plc:alice"
        srv.server.users["bob"].account = "did:plc:bob"
        first = await self.say(alice, "dm one", target="bob")
        second = await self.say(alice, "dm two", target="bob")
        await self.say(alice, "dm one!", tags=f"@+draft/edit={first.tags['msgid']} ", target="bob")
        line = await bob.expect(lambda l: l.params[-1:] == ["dm one!"])
        self.assertEqual(line.tags["+draft/edit"], first.tags["msgid"])
        alice.send(f"REDACT bob {second.tags['msgid']}")
        line = await bob.expect("REDACT")
        self.assertEqual(line.params, ["bob", second.tags["msgid"]])
        texts = [l.params[-1] for l in await self.history(bob, "alice") if l.command == "PRIVMSG"]
        self.assertEqual(texts, ["dm one!"])

    @asynctest
    async def test_rest_history_and_verify(self) -> None:
        """REST history shows the edited text with ``edited`` set and leaves deleted messages out; verify
        checks an edit's signature over its text at its own time."""
        srv, alice, _bob, _carol, _dave = await self.start()
        srv.server.users["alice"].account = "did:plc:alice"
        web = await start_web(self, srv)
        one = await self.say(alice, "one")
        two = await self.say(alice, "two")
        edit = await self.say(alice, "one (edited)", tags=f"@+draft/edit={one.tags['msgid']} ")
        alice.send(f"REDACT #c {two.tags['msgid']}")
        await alice.expect("REDACT")
        response = await treq.get(web.url + "/api/v1/channels/c/history", persistent=False)
        data = json.loads(await response.content())
        self.assertEqual([(m["msgid"], m["text"], m["edited"]) for m in data],
                         [(one.tags["msgid"], "one (edited)", edit.tags["msgid"])])
        response = await treq.get(web.url + f"/api/v1/verify/{edit.tags['msgid']}", persistent=False)
        data = json.loads(await response.content())
        self.assertEqual(data["text"], "one (edited)")
        self.assertTrue(data["verification"]["valid"], data)


class RedactionRestartTests(unittest.TestCase):
    """Edits, deletes and reactions are kept encrypted on disk and still applied after a restart."""

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())

    async def start(self) -> Running:
        """The whole service tree on ``data_dir`` (stopped in cleanup if still running)."""
        top, port = start_tree(Config(listen=Listen("127.0.0.1", 0), tls_listen=None, data_dir=self.data_dir,
                                      flood_rate=0))
        running = Running(top, port)
        self.addCleanup(lambda: defer.ensureDeferred(running.stop()))
        return running

    async def say_all(self, client: IRCClient, target: str, texts: list[str]) -> list[str]:
        """Send PRIVMSGs (echo-message); return their msgids."""
        ids = []
        for text in texts:
            client.send(f"PRIVMSG {target} :{text}")
            line = await client.expect(lambda l: l.command == "PRIVMSG" and l.params[-1] == text)
            ids.append(line.tags["msgid"])
        return ids

    async def history(self, client: IRCClient, target: str) -> list[Any]:
        """The lines of a CHATHISTORY LATEST batch."""
        client.skip()
        client.send(f"CHATHISTORY LATEST {target} * 50")
        opener = await client.expect("BATCH")
        ref = opener.params[0][1:]
        lines = await client.collect_until(lambda l: l.command == "BATCH" and l.params == ["-" + ref])
        return lines[:-1]

    async def populate(self) -> str:
        """Run once: alice (an account) edits her first message in #keep, reacts to it and deletes her second;
        stop. Returns the first message's msgid."""
        caps = ("echo-message", "message-tags", "batch", "server-time", "draft/message-redaction")
        run = await self.start()
        alice = await run.client("alice", caps=caps, account="did:plc:alice")
        alice.send("JOIN #keep")
        await alice.expect("366")
        first, second = await self.say_all(alice, "#keep", ["first draft", "to be deleted"])
        alice.send(f"@+draft/edit={first} PRIVMSG #keep :zebra-crossing-final-text")
        await alice.expect(lambda l: l.params[-1:] == ["zebra-crossing-final-text"])
        alice.send(f"@+react=🦓;+reply={first} TAGMSG #keep")
        await alice.expect("TAGMSG")
        alice.send(f"REDACT #keep {second}")
        await alice.expect("REDACT")
        await run.stop()
        return first

    @asynctest
    async def test_edit_delete_reaction_survive_restart(self) -> None:
        """After a restart history still shows the edit, leaves the deleted message out and carries the
        reaction; none of the edit's text or the emoji is in the database file in clear."""
        first = await self.populate()
        with open(os.path.join(self.data_dir, "freeq.db"), "rb") as f:
            raw = f.read()
        self.assertNotIn(b"zebra-crossing-final-text", raw)
        self.assertNotIn("🦓".encode(), raw)
        await self.check_after_restart(first)

    async def check_after_restart(self, first: str) -> None:
        """Start again: history shows the edit and the reaction on ``first`` and not the deleted message."""
        caps = ("echo-message", "message-tags", "batch", "server-time", "draft/message-redaction")
        run = await self.start()
        alice = await run.client("alice", caps=caps, account="did:plc:alice")
        alice.send("JOIN #keep")
        await alice.expect("366")
        inner = [l for l in await self.history(alice, "#keep") if l.command == "PRIVMSG"]
        self.assertEqual([(l.tags["msgid"], l.params[-1]) for l in inner], [(first, "zebra-crossing-final-text")])
        self.assertEqual(inner[0].tags["+freeq.at/reactions"], "🦓:alice")
        self.assertIn("+freeq.at/edited", inner[0].tags)

    @asynctest
    async def test_rekey_keeps_edits_deletes_reactions(self) -> None:
        """``freeq-admin rekey`` re-encrypts the edit, delete and reaction rows too: after the rotation history
        still applies them (a deleted message does not come back)."""
        from freeq.admin import rekey

        first = await self.populate()
        out = io.StringIO()
        self.assertTrue(rekey(self.data_dir, out=out))
        self.assertIn("re-encrypted 3 edits, deletes and reactions", out.getvalue())
        await self.check_after_restart(first)
