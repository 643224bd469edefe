"""The pure rules of edits, deletes and reactions (freeq.state.redaction), in memory."""
from __future__ import annotations

from typing import Optional

from twisted.trial import unittest

from freeq.state.channel import OP, VOICE, Channel
from freeq.state.redaction import (
    AUTHOR_MISMATCH, MAX_EMOJI_BYTES, MAX_REACTIONS_TAG_BYTES, delete_refusal, edit_refusal, is_author,
    normalise_pairs, reactions_tag, reactor_id, valid_msgid, valid_reaction)
from freeq.state.user import User


def user(nick: str, account: Optional[str] = None) -> User:
    """A registered user with ``nick`` (and ``account``)."""
    u = User(None, lambda data: None, "127.0.0.1", 0.0, "test.server")
    u.nick = nick
    u.folded = nick.lower()
    u.account = account
    u.registered = True
    return u


class AuthorTests(unittest.TestCase):
    """Who wrote a stored message: by DID when it has one, else by nick."""

    def test_did_message_matches_by_did_only(self) -> None:
        """A DID's message is its DID's, whatever the nick; a guest with the same nick is not its author."""
        self.assertTrue(is_author("did:plc:a", "alice!~a@h", user("renamed", "did:plc:a")))
        self.assertFalse(is_author("did:plc:a", "alice!~a@h", user("alice")))
        self.assertFalse(is_author("did:plc:a", "alice!~a@h", user("alice", "did:plc:b")))

    def test_guest_message_matches_by_nick(self) -> None:
        """A guest's message is the guest nick's (case-insensitively); an account holder with that nick is not
        its author (it did not write as a guest)."""
        self.assertTrue(is_author(None, "Carol!~c@freeq/guest", user("carol")))
        self.assertTrue(is_author(None, "carol", user("CAROL")))
        self.assertFalse(is_author(None, "carol!~c@h", user("dave")))
        self.assertFalse(is_author(None, "carol!~c@h", user("carol", "did:plc:c")))

    def test_edit_only_by_author(self) -> None:
        """Only the author may edit; a channel operator may not edit another's message."""
        self.assertIsNone(edit_refusal("did:plc:a", "a", user("a", "did:plc:a")))
        self.assertEqual(edit_refusal("did:plc:a", "a", user("b", "did:plc:b")), AUTHOR_MISMATCH)

    def test_delete_by_author_or_channel_operator(self) -> None:
        """The author may delete; so may an operator of the channel; a voiced member, a non-member operator of
        nothing, or anyone in a private conversation may not."""
        chan = Channel("#c", 0.0)
        op, voiced, plain = user("op"), user("v"), user("p")
        chan.members[op] = OP
        chan.members[voiced] = VOICE
        chan.members[plain] = 0
        self.assertIsNone(delete_refusal(None, "p!~p@h", plain, chan))
        self.assertIsNone(delete_refusal("did:plc:x", "x", op, chan))
        self.assertEqual(delete_refusal("did:plc:x", "x", voiced, chan), AUTHOR_MISMATCH)
        self.assertEqual(delete_refusal(None, "x", user("outsider"), chan), AUTHOR_MISMATCH)
        self.assertEqual(delete_refusal("did:plc:x", "x", op, None), AUTHOR_MISMATCH)


class ReactionRuleTests(unittest.TestCase):
    """What a reaction may be and how reactions show in history."""

    def test_valid_reaction(self) -> None:
        """One emoji (even a long ZWJ sequence) passes; empty, too long, or holding a separator, a space, a
        backslash or a control character does not."""
        for good in ("👍", "❤️", "👨‍👩‍👧‍👦", "🏳️‍🌈", "+1"):
            self.assertTrue(valid_reaction(good), good)
        for bad in ("", "a" * (MAX_EMOJI_BYTES + 1), "👍:", "a;b", "a,b", "a b", "a\\s", "\x01", "x\x7f"):
            self.assertFalse(valid_reaction(bad), repr(bad))
        self.assertTrue(valid_reaction("é" * (MAX_EMOJI_BYTES // 2)))
        self.assertFalse(valid_reaction("é" * (MAX_EMOJI_BYTES // 2 + 1)))

    def test_valid_msgid(self) -> None:
        """A msgid is 1..64 characters of letters, digits, '-' and '_'."""
        self.assertTrue(valid_msgid("01HXYZ"))
        self.assertTrue(valid_msgid("a" * 64))
        for bad in ("", "a" * 65, "a b", "a;b", "é"):
            self.assertFalse(valid_msgid(bad), bad)

    def test_reactions_tag_format(self) -> None:
        """``emoji:nick,nick;emoji:nick``: emoji in order of first use, each nick once per emoji."""
        value = reactions_tag([("👍", "alice"), ("❤", "bob"), ("👍", "bob"), ("👍", "alice")])
        self.assertEqual(value, "👍:alice,bob;❤:bob")
        self.assertEqual(reactions_tag([]), "")

    def test_reactions_tag_bounded(self) -> None:
        """The value is cut to whole entries within MAX_REACTIONS_TAG_BYTES."""
        pairs = [(f"e{i}", "n" * 30) for i in range(500)]
        value = reactions_tag(pairs)
        self.assertLessEqual(len(value.encode()), MAX_REACTIONS_TAG_BYTES)
        self.assertTrue(all(part.count(":") == 1 for part in value.split(";")))

    def test_reactor_id(self) -> None:
        """A DID identifies a reactor; a guest by its folded nick (never equal to a DID)."""
        self.assertEqual(reactor_id("Alice", "did:plc:a"), "did:plc:a")
        self.assertEqual(reactor_id("Alice", None), "nick:alice")

    def test_normalise_pairs(self) -> None:
        """Either spelling of react/reply gives both; other tags are untouched."""
        tags = {"+react": "👍", "+draft/reply": "m1", "+x": "y"}
        normalise_pairs(tags)
        self.assertEqual(tags, {"+react": "👍", "+draft/react": "👍", "+draft/reply": "m1", "+reply": "m1", "+x": "y"})
        tags = {"+draft/react": "x", "+reply": "m1"}
        normalise_pairs(tags, react=False)  # a PRIVMSG: its react tag is not a reaction
        self.assertEqual(tags, {"+draft/react": "x", "+reply": "m1", "+draft/reply": "m1"})
