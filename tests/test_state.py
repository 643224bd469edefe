"""Unit tests for the pure state model: hostmasks, channels, users and the flood bucket."""
from __future__ import annotations

from twisted.trial import unittest

from freeq.state.channel import OP, VOICE, Channel
from freeq.state.flood import TokenBucket
from freeq.state.masks import MaskSet, glob_match, normalize_mask
from freeq.state.user import TC_ACCOUNT, TC_TAGS, TC_TIME, User


def make_user(nick: str, username: str = "~u", host: str = "freeq/guest",
              account: str | None = None) -> User:
    """A registered-looking user with a sink that is never written to here."""
    user = User(None, lambda data: None, "10.0.0.1", 0.0, "srv")
    user.set_nick(nick)
    user.set_userhost(username, host)
    user.account = account
    return user


class MaskTests(unittest.TestCase):
    """normalize_mask, MaskSet and glob_match."""

    def test_normalize_partial_masks(self) -> None:
        """Partial masks are completed the way IRC servers do."""
        self.assertEqual(normalize_mask("nick"), "nick!*@*")
        self.assertEqual(normalize_mask("user@host"), "*!user@host")
        self.assertEqual(normalize_mask("nick!user"), "nick!user@*")
        self.assertEqual(normalize_mask("n!u@h"), "n!u@h")

    def test_normalize_host_like_masks(self) -> None:
        """A bare mask with a dot, colon or slash is a host."""
        self.assertEqual(normalize_mask("*.example.com"), "*!*@*.example.com")
        self.assertEqual(normalize_mask("2001:db8::*"), "*!*@2001:db8::*")
        self.assertEqual(normalize_mask("freeq/guest"), "*!*@freeq/guest")

    def test_normalize_keeps_did(self) -> None:
        """DID masks are kept verbatim, although they contain colons."""
        self.assertEqual(normalize_mask("did:plc:abc123"), "did:plc:abc123")

    def test_glob_case_insensitive(self) -> None:
        """Matching folds both sides with the ascii casemapping."""
        self.assertTrue(glob_match("ALICE!*@*", "alice!~a@host"))
        self.assertTrue(glob_match("alice!*@*", "ALICE!~A@HOST"))

    def test_glob_wildcards(self) -> None:
        """``*`` matches any run (including empty) and ``?`` exactly one character."""
        self.assertTrue(glob_match("a*", "a"))
        self.assertTrue(glob_match("a*z", "abcz"))
        self.assertTrue(glob_match("a?c", "abc"))
        self.assertFalse(glob_match("a?c", "ac"))
        self.assertFalse(glob_match("a?c", "abbc"))
        self.assertFalse(glob_match("a*", "ba"))

    def test_glob_anchored_at_end(self) -> None:
        """A mask must match the whole text, not a prefix of it."""
        self.assertFalse(glob_match("abc", "abcd"))
        self.assertFalse(glob_match("abc", "abc\n"))

    def test_regex_metacharacters_literal(self) -> None:
        """Regex metacharacters in a mask match only themselves."""
        self.assertTrue(glob_match("a.b", "a.b"))
        self.assertFalse(glob_match("a.b", "axb"))
        for mask in ("a+b", "(a)", "[ab]", "a|b", "a$b", "a^b", "a{2}", "a\\b"):
            self.assertTrue(glob_match(mask, mask), mask)
        self.assertFalse(glob_match("[ab]", "a"))
        self.assertFalse(glob_match("a|b", "a"))
        self.assertFalse(glob_match("a+", "aa"))

    def test_mask_set_any(self) -> None:
        """A compiled mask list matches a hostmask (any case) against any of the masks, anchored."""
        masks = MaskSet(["bob!*@*", "*!*@*.EVIL.net"])
        self.assertTrue(masks.matches("bob!~b@x", None))
        self.assertTrue(masks.matches("eve!~e@a.evil.net", None))
        self.assertFalse(masks.matches("alice!~a@good.net", None))
        self.assertFalse(masks.matches("xbob!~b@x", None))

    def test_mask_set_did_only_exact_account(self) -> None:
        """DID masks are never globs: they match the account exactly, never the hostmask text."""
        self.assertFalse(MaskSet([]).matches("x!y@z", "did:plc:abc"))
        masks = MaskSet(["did:plc:abc", "x!*@*"])
        self.assertFalse(masks.matches("did:plc:abc", None))
        self.assertTrue(masks.matches("x!y@z", None))
        self.assertTrue(masks.matches("a!b@c", "did:plc:abc"))
        self.assertFalse(masks.matches("a!b@c", "did:plc:ABC"))


class ChannelMembershipTests(unittest.TestCase):
    """Members and their status bits."""

    def test_add_remove_status(self) -> None:
        """add records status on both sides; remove clears both and is a no-op when absent."""
        chan = Channel("#Chan", 100.5)
        alice = make_user("alice")
        self.assertEqual(chan.folded, "#chan")
        self.assertEqual(chan.created, 100)
        chan.add(alice, OP | VOICE)
        self.assertEqual(chan.status(alice), OP | VOICE)
        self.assertIs(alice.channels["#chan"], chan)
        chan.remove(alice)
        self.assertEqual(chan.status(alice), 0)
        self.assertNotIn(alice, chan.members)
        self.assertNotIn("#chan", alice.channels)
        chan.remove(alice)

    def test_is_op(self) -> None:
        """Only the OP bit makes a channel operator; voice and non-members are not."""
        chan = Channel("#c", 0)
        op, voiced, plain, outsider = (make_user(n) for n in ("op", "v", "p", "o"))
        chan.add(op, OP)
        chan.add(voiced, VOICE)
        chan.add(plain)
        self.assertTrue(chan.is_op(op))
        self.assertFalse(chan.is_op(voiced))
        self.assertFalse(chan.is_op(plain))
        self.assertFalse(chan.is_op(outsider))
        self.assertEqual(chan.status(plain), 0)
        self.assertIn(plain, chan.members)


class ChannelListTests(unittest.TestCase):
    """Ban, exception and invite-exception lists."""

    def test_list_add_duplicate_case_insensitive(self) -> None:
        """Adding a mask already present (in any case) returns ``False`` and stores nothing."""
        chan = Channel("#c", 0)
        self.assertIs(chan.list_add("b", "Bad!*@*", "op", 5.7, 10), True)
        self.assertIs(chan.list_add("b", "bad!*@*", "op", 6, 10), False)
        self.assertEqual(len(chan.lists["b"]), 1)
        entry = chan.lists["b"][0]
        self.assertEqual((entry.mask, entry.setter, entry.set_at), ("Bad!*@*", "op", 5))

    def test_list_add_limit(self) -> None:
        """A full list refuses new masks with ``None``; a duplicate still reports ``False``."""
        chan = Channel("#c", 0)
        self.assertTrue(chan.list_add("b", "a!*@*", "op", 0, 2))
        self.assertTrue(chan.list_add("b", "b!*@*", "op", 0, 2))
        self.assertIsNone(chan.list_add("b", "c!*@*", "op", 0, 2))
        self.assertIs(chan.list_add("b", "A!*@*", "op", 0, 2), False)
        self.assertEqual([e.mask for e in chan.lists["b"]], ["a!*@*", "b!*@*"])

    def test_lists_are_separate(self) -> None:
        """The same mask may be in +b and +e independently."""
        chan = Channel("#c", 0)
        self.assertTrue(chan.list_add("b", "x!*@*", "op", 0, 5))
        self.assertTrue(chan.list_add("e", "x!*@*", "op", 0, 5))
        self.assertEqual(chan.lists["I"], [])

    def test_list_remove_case_insensitive(self) -> None:
        """Removal ignores case and returns the stored spelling; an absent mask gives ``None``."""
        chan = Channel("#c", 0)
        chan.list_add("b", "Bad!*@*", "op", 0, 10)
        self.assertEqual(chan.list_remove("b", "BAD!*@*"), "Bad!*@*")
        self.assertEqual(chan.lists["b"], [])
        self.assertIsNone(chan.list_remove("b", "bad!*@*"))

    def test_list_matches_by_hostmask(self) -> None:
        """A user matches a list when its hostmask matches one of the globs, case-insensitively."""
        chan = Channel("#c", 0)
        eve = make_user("Eve", "~eve", "Bad.Example.net")
        alice = make_user("alice", "~a", "good.net")
        self.assertFalse(chan.list_matches("b", eve))
        chan.list_add("b", "*!*@*.example.NET", "op", 0, 10)
        self.assertTrue(chan.list_matches("b", eve))
        self.assertFalse(chan.list_matches("b", alice))

    def test_list_matches_follows_changes(self) -> None:
        """Adding and removing entries invalidates the compiled pattern."""
        chan = Channel("#c", 0)
        alice = make_user("alice")
        chan.list_add("b", "bob!*@*", "op", 0, 10)
        self.assertFalse(chan.list_matches("b", alice))
        chan.list_add("b", "alice!*@*", "op", 0, 10)
        self.assertTrue(chan.list_matches("b", alice))
        chan.list_remove("b", "alice!*@*")
        self.assertFalse(chan.list_matches("b", alice))

    def test_list_matches_nick_change(self) -> None:
        """Matching uses the user's current hostmask, not a cached one."""
        chan = Channel("#c", 0)
        user = make_user("alice")
        chan.list_add("b", "mallory!*@*", "op", 0, 10)
        self.assertFalse(chan.list_matches("b", user))
        user.set_nick("Mallory")
        self.assertTrue(chan.list_matches("b", user))

    def test_list_matches_by_exact_did(self) -> None:
        """A DID entry matches only a user logged into exactly that account."""
        chan = Channel("#c", 0)
        chan.list_add("b", "did:plc:abc", "op", 0, 10)
        self.assertTrue(chan.list_matches("b", make_user("x", account="did:plc:abc")))
        self.assertFalse(chan.list_matches("b", make_user("y", account="did:plc:abcd")))
        self.assertFalse(chan.list_matches("b", make_user("z")))
        # A DID mask is not a glob: a guest whose hostmask looks like it does not match.
        self.assertFalse(chan.list_matches("b", make_user("did:plc:abc")))

    def test_is_banned_with_exception(self) -> None:
        """A ban applies unless an exception (+e) also matches."""
        chan = Channel("#c", 0)
        eve = make_user("eve", host="bad.example.net")
        friend = make_user("friend", host="bad.example.net", account="did:plc:friend")
        chan.list_add("b", "*!*@*.example.net", "op", 0, 10)
        self.assertTrue(chan.is_banned(eve))
        self.assertTrue(chan.is_banned(friend))
        chan.list_add("e", "did:plc:friend", "op", 0, 10)
        self.assertTrue(chan.is_banned(eve))
        self.assertFalse(chan.is_banned(friend))
        chan.list_add("e", "eve!*@*", "op", 0, 10)
        self.assertFalse(chan.is_banned(eve))

    def test_exception_without_ban_is_not_banned(self) -> None:
        """An exception alone never bans anyone."""
        chan = Channel("#c", 0)
        chan.list_add("e", "*!*@*", "op", 0, 10)
        self.assertFalse(chan.is_banned(make_user("a")))


class ChannelModeStringTests(unittest.TestCase):
    """The +modes string shown by MODE #chan and 324."""

    def test_flags_sorted(self) -> None:
        """Flag modes are listed sorted, with no arguments."""
        chan = Channel("#c", 0)
        chan.modes.update("tns")
        self.assertEqual(chan.mode_string(True), ("+nst", []))

    def test_no_modes(self) -> None:
        """A channel with no modes shows a bare ``+``."""
        self.assertEqual(Channel("#c", 0).mode_string(True), ("+", []))

    def test_key_hidden_from_non_members(self) -> None:
        """The key is shown to members and replaced by ``*`` otherwise; the limit is always shown."""
        chan = Channel("#c", 0)
        chan.modes.update("nt")
        chan.key = "sekrit"
        chan.limit = 10
        self.assertEqual(chan.mode_string(True), ("+ntkl", ["sekrit", "10"]))
        self.assertEqual(chan.mode_string(False), ("+ntkl", ["*", "10"]))


class UserCapsTests(unittest.TestCase):
    """User.set_caps and the tag class used on fan-out."""

    def test_tagclass_bits(self) -> None:
        """Each tag-related cap sets its own bit and unrelated caps set none."""
        user = make_user("a")
        cases = [
            (set(), 0),
            ({"echo-message", "batch"}, 0),
            ({"message-tags"}, TC_TAGS),
            ({"server-time"}, TC_TIME),
            ({"account-tag"}, TC_ACCOUNT),
            ({"message-tags", "server-time"}, TC_TAGS | TC_TIME),
            ({"message-tags", "server-time", "account-tag", "batch"}, TC_TAGS | TC_TIME | TC_ACCOUNT),
        ]
        for caps, expected in cases:
            user.set_caps(frozenset(caps))
            self.assertEqual(user.tagclass, expected, caps)
            self.assertEqual(user.caps, frozenset(caps))

    def test_tagclass_cleared_when_caps_removed(self) -> None:
        """Dropping caps recomputes the tag class rather than keeping old bits."""
        user = make_user("a")
        user.set_caps(frozenset({"message-tags", "server-time"}))
        user.set_caps(frozenset({"server-time"}))
        self.assertEqual(user.tagclass, TC_TIME)

    def test_hostmask_tracks_nick_and_host(self) -> None:
        """The cached hostmask follows set_nick and set_userhost."""
        user = make_user("alice", "~al", "h.example")
        self.assertEqual(user.hostmask, "alice!~al@h.example")
        user.set_nick("Bob")
        self.assertEqual((user.hostmask, user.folded), ("Bob!~al@h.example", "bob"))


class TokenBucketTests(unittest.TestCase):
    """Flood control with explicit times."""

    def test_burst_then_refused(self) -> None:
        """A full bucket allows ``burst`` actions at once, then refuses."""
        bucket = TokenBucket(3, 1.0, 100.0)
        self.assertEqual([bucket.take(100.0) for _ in range(4)], [True, True, True, False])

    def test_refill_over_time(self) -> None:
        """Tokens come back at ``rate`` per second."""
        bucket = TokenBucket(2, 2.0, 0.0)
        self.assertTrue(bucket.take(0.0))
        self.assertTrue(bucket.take(0.0))
        self.assertFalse(bucket.take(0.0))
        self.assertFalse(bucket.take(0.25))  # 0.5 tokens
        self.assertTrue(bucket.take(0.5))  # 1.0 token
        self.assertFalse(bucket.take(0.5))

    def test_refill_capped_at_burst(self) -> None:
        """A long idle period refills only up to ``burst``."""
        bucket = TokenBucket(3, 1.0, 0.0)
        for _ in range(3):
            bucket.take(0.0)
        results = [bucket.take(1000.0) for _ in range(4)]
        self.assertEqual(results, [True, True, True, False])

    def test_cost(self) -> None:
        """An action may cost more than one token."""
        bucket = TokenBucket(5, 1.0, 0.0)
        self.assertTrue(bucket.take(0.0, cost=3))
        self.assertFalse(bucket.take(0.0, cost=3))
        self.assertTrue(bucket.take(0.0, cost=2))

    def test_rate_zero_unlimited(self) -> None:
        """``rate == 0`` disables the limit and never asks to wait."""
        bucket = TokenBucket(1, 0, 0.0)
        self.assertTrue(all(bucket.take(0.0) for _ in range(1000)))
        self.assertEqual(bucket.wait_time(), 0.0)

    def test_wait_time(self) -> None:
        """wait_time is zero while tokens remain and otherwise the time to earn the missing part."""
        bucket = TokenBucket(2, 4.0, 0.0)
        self.assertEqual(bucket.wait_time(), 0.0)
        bucket.take(0.0)
        bucket.take(0.0)
        self.assertFalse(bucket.take(0.0))
        self.assertAlmostEqual(bucket.wait_time(), 0.25)
        self.assertAlmostEqual(bucket.wait_time(cost=2), 0.5)
        self.assertFalse(bucket.take(0.125))
        self.assertAlmostEqual(bucket.wait_time(), 0.125)
        self.assertTrue(bucket.take(0.25))
