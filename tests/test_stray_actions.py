"""Edit, delete and unreact tags on a message that is not that action (an edit tag on a NOTICE or TAGMSG, a
delete tag on a PRIVMSG, either on a multiline batch) are dropped, never relayed: a client reading them
would apply an edit or delete that no rule checked (issue #12 review)."""
from __future__ import annotations

from twisted.trial import unittest

from tests.support import IRCClient, asynctest, start_server

TAGS = ("batch", "message-tags", "server-time", "echo-message", "draft/multiline")
ACTION = ("+draft/edit", "+draft/delete", "+freeq.at/unreact")


class StrayActionTagTests(unittest.TestCase):
    async def pair(self) -> tuple[IRCClient, IRCClient]:
        srv = await start_server(self, flood_rate=0)
        alice = await srv.client("alice", caps=TAGS)
        bob = await srv.client("bob", caps=TAGS)
        for c in (alice, bob):
            c.send("JOIN #c")
            await c.expect("366")
            c.skip()
        return alice, bob

    def assert_no_action(self, line: object) -> None:
        tags = getattr(line, "tags")
        for tag in ACTION:
            self.assertNotIn(tag, tags, line)

    @asynctest
    async def test_edit_tag_on_notice_and_tagmsg_is_dropped(self) -> None:
        alice, bob = await self.pair()
        alice.send("@+draft/edit=01HZZZZZZZZZZZZZZZZZZZZZZZ NOTICE #c :not an edit")
        self.assert_no_action(await bob.expect("NOTICE"))
        alice.send("@+draft/edit=01HZZZZZZZZZZZZZZZZZZZZZZZ;+typing=active TAGMSG #c")
        line = await bob.expect("TAGMSG")
        self.assertEqual(line.tags.get("+typing"), "active")
        self.assert_no_action(line)

    @asynctest
    async def test_delete_and_unreact_tags_on_privmsg_are_dropped(self) -> None:
        alice, bob = await self.pair()
        alice.send("@+draft/delete=01HZZZZZZZZZZZZZZZZZZZZZZZ;+freeq.at/unreact=x PRIVMSG #c :hello")
        line = await bob.expect("PRIVMSG")
        self.assertEqual(line.params[-1], "hello")
        self.assert_no_action(line)

    @asynctest
    async def test_action_tags_on_a_multiline_opener_are_dropped(self) -> None:
        alice, bob = await self.pair()
        alice.send("@+draft/edit=01HZZZZZZZZZZZZZZZZZZZZZZZ;+draft/delete=01HYYYYYYYYYYYYYYYYYYYYYYY "
                   "BATCH +ml1 draft/multiline #c")
        alice.send("@batch=ml1 PRIVMSG #c :one")
        alice.send("@batch=ml1 PRIVMSG #c :two")
        alice.send("BATCH -ml1")
        opener = await bob.expect(lambda l: l.command == "BATCH" and l.params[0].startswith("+"))
        self.assert_no_action(opener)
        await bob.expect(lambda l: l.command == "BATCH" and l.params[0].startswith("-"))
