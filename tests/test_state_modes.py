"""freeq.state.modes.apply_modes: channel modes applied in memory, with the replies and refusals it returns
as values (the core's numerics are tested over sockets in test_channels and test_hardening_*)."""
from __future__ import annotations

from typing import Iterable, Optional

from twisted.trial import unittest

from freeq.state.channel import OP, VOICE, Channel
from freeq.state.masks import MAX_MASK_LENGTH
from freeq.state.modes import (
    FOUNDER, INVALID, LIST, LIST_FULL, LIST_REFUSED, MASK_REFUSED, NEED_PARAMS, NO_SUCH_NICK, NOT_MEMBER, UNKNOWN,
    ModeOutcome, ModeReply, apply_modes,
)
from freeq.state.user import User
from tests.test_state import make_user

FOUNDER_DID = "did:plc:founder0000000000000000"
BOB_DID = "did:plc:bob000000000000000000000"


class ApplyModesTests(unittest.TestCase):
    """Each mode letter, the lists, the arguments' validation, status changes and the argument cap."""

    def setUp(self) -> None:
        self.chan = Channel("#c", 0.0)
        self.chan.modes.update("nt")
        self.op = make_user("op")
        self.bob = make_user("bob")
        self.outsider = make_user("outsider")
        self.chan.add(self.op, OP)
        self.chan.add(self.bob, 0)
        self.users = {u.folded: u for u in (self.op, self.bob, self.outsider)}
        self.devices: dict[User, list[User]] = {}

    def apply(self, modes: str, *params: str, actor: Optional[User] = None, authorized: bool = True,
              max_changes: int = 4, max_list_entries: int = 3, now: float = 1000.0) -> ModeOutcome:
        def devices(user: User) -> Iterable[User]:
            return self.devices.get(user, [user])

        return apply_modes(self.chan, actor or self.op, modes, list(params), now, authorized=authorized,
                           users=self.users, devices=devices, max_changes=max_changes,
                           max_list_entries=max_list_entries)

    def kinds(self, outcome: ModeOutcome) -> list[tuple[str, str, Optional[str]]]:
        return [(r.kind, r.mode, r.arg) for r in outcome.replies]

    # -- flags -------------------------------------------------------------
    def test_every_flag_mode(self) -> None:
        """+imnpst set and clear each flag; a flag already in that state is not reported again."""
        out = self.apply("+imps-nt")
        self.assertEqual(out.applied, [("+", "i", None), ("+", "m", None), ("+", "p", None), ("+", "s", None),
                                       ("-", "n", None), ("-", "t", None)])
        self.assertEqual(self.chan.modes, {"i", "m", "p", "s"})
        self.assertEqual(out.replies, [])
        self.assertTrue(out.persist)
        again = self.apply("+i-n")
        self.assertEqual(again.applied, [])
        self.assertFalse(again.persist)

    def test_unknown_mode_letter(self) -> None:
        """An unknown letter is a reply (472) and does not stop the rest; non-operators get it too."""
        out = self.apply("+xm")
        self.assertEqual(self.kinds(out), [(UNKNOWN, "x", None)])
        self.assertEqual(out.applied, [("+", "m", None)])
        denied = self.apply("+z", actor=self.bob, authorized=False)
        self.assertEqual(self.kinds(denied), [(UNKNOWN, "z", None)])
        self.assertFalse(denied.denied)

    # -- key and limit -----------------------------------------------------
    def test_key_set_and_cleared(self) -> None:
        out = self.apply("+k", " s3cret ")
        self.assertEqual(out.applied, [("+", "k", "s3cret")])
        self.assertEqual(self.chan.key, "s3cret")
        out = self.apply("-k", "whatever")
        self.assertEqual(out.applied, [("-", "k", "*")])
        self.assertIsNone(self.chan.key)
        self.assertEqual(self.apply("-k").applied, [], "no key: nothing to clear")

    def test_key_validation(self) -> None:
        """Empty, comma, space, a leading colon and over 23 characters are refused (696), shown safely."""
        # An over-long key is echoed as "*" (issue #12), like one that could not be one parameter.
        for key, shown in [("a,b", "a,b"), ("a b", "*"), (":x", "*"), ("k" * 24, "*"), ("  ", "*")]:
            out = self.apply("+k", key)
            self.assertEqual(self.kinds(out), [(INVALID, "k", shown)], key)
            self.assertIn("Invalid key", out.replies[0].text)
        self.assertIsNone(self.chan.key)
        self.assertEqual(self.kinds(self.apply("+k")), [(NEED_PARAMS, "k", None)])

    def test_limit_set_and_cleared(self) -> None:
        out = self.apply("+l", "25")
        self.assertEqual(out.applied, [("+", "l", "25")])
        self.assertEqual(self.chan.limit, 25)
        out = self.apply("-l")
        self.assertEqual(out.applied, [("-", "l", None)])
        self.assertIsNone(self.chan.limit)

    def test_limit_validation(self) -> None:
        """Zero, negative, not a number and over a million are refused (696 with the raw value)."""
        for raw in ("0", "-5", "many", "1000001"):
            out = self.apply("+l", raw)
            self.assertEqual(self.kinds(out), [(INVALID, "l", raw)], raw)
            self.assertEqual(out.replies[0].text, "Invalid limit")
        self.assertIsNone(self.chan.limit)
        self.assertEqual(self.kinds(self.apply("+l")), [(NEED_PARAMS, "l", None)])
        self.assertEqual(self.apply("+l", "1000000").applied, [("+", "l", "1000000")])

    # -- lists ---------------------------------------------------------------
    def test_list_add_and_remove(self) -> None:
        """+b/+e/+I add a normalised mask, set by the actor at ``now``; removal echoes the stored spelling."""
        out = self.apply("+beI", "Evil", "friend@host", "*!*@trusted")
        self.assertEqual(out.applied, [("+", "b", "Evil!*@*"), ("+", "e", "*!friend@host"),
                                       ("+", "I", "*!*@trusted")])
        entry = self.chan.lists["b"][0]
        self.assertEqual((entry.mask, entry.setter, entry.set_at), ("Evil!*@*", self.op.hostmask, 1000))
        self.assertEqual(self.apply("+b", "evil!*@*").applied, [], "already there, case-insensitively")
        self.assertEqual(self.apply("-b", "EVIL!*@*").applied, [("-", "b", "Evil!*@*")])
        self.assertEqual(self.apply("-b", "nobody!*@*").applied, [])
        self.assertTrue(out.persist)

    def test_list_full(self) -> None:
        """Past the per-list cap the mask is refused (478) and the list unchanged."""
        out = self.apply("+bbbb", "a", "b", "c", "d")
        self.assertEqual(len(out.applied), 3)
        self.assertEqual(self.kinds(out), [(LIST_FULL, "b", "d!*@*")])
        self.assertEqual(len(self.chan.lists["b"]), 3)

    def test_mask_over_the_caps(self) -> None:
        """A mask too long (or with too many wildcards) is refused with the problem as text."""
        mask = "x" * (MAX_MASK_LENGTH + 1) + "!*@*"
        out = self.apply("+b", mask)
        self.assertEqual(out.applied, [])
        self.assertEqual(self.kinds(out), [(MASK_REFUSED, "b", mask)])
        self.assertIn("longer than", out.replies[0].text)

    def test_unechoable_mask_skipped(self) -> None:
        """A mask that could not be one middle parameter (with a space) is dropped silently."""
        out = self.apply("+b", "a b")
        self.assertEqual((out.applied, out.replies), ([], []))

    def test_list_query_snapshots_the_list_in_order(self) -> None:
        """``+b`` without a mask lists the bans as they were at that point of the request."""
        out = self.apply("+bbb", "", "first", "")
        self.assertEqual([r.kind for r in out.replies], [LIST, LIST])
        self.assertEqual(out.replies[0].entries, ())
        self.assertEqual([e.mask for e in out.replies[1].entries], ["first!*@*"])
        self.assertEqual(self.kinds(self.apply("-b")), [(LIST, "b", None)], "-b with no argument lists too")
        self.assertEqual(self.kinds(self.apply("-b", " ")), [], "-b with a blank argument does nothing")

    def test_exception_lists_only_for_operators(self) -> None:
        """Bans are listed to anyone; +e and +I lists need channel or server operator status."""
        out = self.apply("beI", actor=self.bob, authorized=False)
        self.assertEqual(self.kinds(out), [(LIST, "b", None), (LIST_REFUSED, "e", None), (LIST_REFUSED, "I", None)])
        self.assertFalse(out.denied)
        self.outsider.modes = frozenset({"o"})
        out = self.apply("eI", actor=self.outsider, authorized=True)
        self.assertEqual([r.kind for r in out.replies], [LIST, LIST])

    # -- member status -------------------------------------------------------
    def test_op_and_voice_a_member(self) -> None:
        out = self.apply("+ov", "bob", "BOB")
        self.assertEqual(out.applied, [("+", "o", "bob"), ("+", "v", "bob")])
        self.assertEqual(self.chan.members[self.bob], OP | VOICE)
        self.assertFalse(out.persist, "a guest's status is not kept")
        out = self.apply("-o", "bob")
        self.assertEqual(out.applied, [("-", "o", "bob")])
        self.assertEqual(self.chan.members[self.bob], VOICE)
        self.assertEqual(self.apply("-o", "bob").applied, [], "no change, nothing to report")

    def test_status_of_non_members_and_unknown_nicks(self) -> None:
        out = self.apply("+oov", "outsider", "ghost")
        self.assertEqual(self.kinds(out), [(NOT_MEMBER, "o", "outsider"), (NO_SUCH_NICK, "o", "ghost"),
                                           (NEED_PARAMS, "v", None)])
        self.assertEqual(out.applied, [])

    def test_status_follows_every_device(self) -> None:
        """+o on a user applies to each of its connections on the channel."""
        phone = make_user("bob")
        self.chan.add(phone, 0)
        self.devices[self.bob] = [self.bob, phone, make_user("bob")]  # the last is not on the channel
        self.apply("+o", "bob")
        self.assertEqual(self.chan.members[phone], OP)

    def test_did_operators(self) -> None:
        """+o/-o on an account holder is remembered by DID; the founder cannot be deopped by others."""
        self.bob.account = BOB_DID
        out = self.apply("+o", "bob", now=77.5)
        self.assertEqual(self.chan.did_ops[BOB_DID], (self.op.hostmask, 77))
        self.assertTrue(out.did_ops_changed)
        self.assertTrue(out.persist)
        out = self.apply("-o", "bob")
        self.assertNotIn(BOB_DID, self.chan.did_ops)
        self.assertTrue(out.did_ops_changed)

        self.chan.founder = FOUNDER_DID
        self.bob.account = FOUNDER_DID
        self.chan.did_ops[FOUNDER_DID] = ("srv", 0)
        self.chan.members[self.bob] = OP
        out = self.apply("-o", "bob")
        self.assertEqual(self.kinds(out), [(FOUNDER, "o", "bob")])
        self.assertEqual(self.chan.members[self.bob], OP)
        out = self.apply("-o", "bob", actor=self.bob)
        self.assertEqual(out.applied, [("-", "o", "bob")], "the founder may deop itself")
        self.assertIn(FOUNDER_DID, self.chan.did_ops, "and stays a DID operator")
        self.assertFalse(out.did_ops_changed)

    def test_server_operator_may_deop_the_founder(self) -> None:
        self.chan.founder = self.bob.account = FOUNDER_DID
        self.chan.members[self.bob] = OP
        self.outsider.modes = frozenset({"o"})
        out = self.apply("-o", "bob", actor=self.outsider)
        self.assertEqual(out.applied, [("-", "o", "bob")])

    # -- authority and caps --------------------------------------------------
    def test_non_operator_is_denied_and_nothing_changes(self) -> None:
        """Without authority every change is skipped and ``denied`` set; missing arguments still answer 461."""
        out = self.apply("+mkl-t+b+o", "key", "5", "mask", actor=self.bob, authorized=False)
        self.assertTrue(out.denied)
        self.assertEqual(out.applied, [])
        self.assertEqual(self.kinds(out), [(NEED_PARAMS, "o", None)])
        self.assertEqual(self.chan.modes, {"n", "t"})
        self.assertIsNone(self.chan.key)
        self.assertIsNone(self.chan.limit)
        self.assertEqual(self.chan.lists["b"], [])

    def test_mixed_string(self) -> None:
        """Signs carry over letters, arguments are consumed in order, and the replies keep request order."""
        out = self.apply("+tk-n+lvqb", "pw", "10", "bob", "ghost!*@*")
        self.assertEqual(out.applied, [("+", "k", "pw"), ("-", "n", None), ("+", "l", "10"), ("+", "v", "bob"),
                                       ("+", "b", "ghost!*@*")])
        self.assertEqual(self.kinds(out), [(UNKNOWN, "q", None)])

    def test_argument_change_cap(self) -> None:
        """At most ``max_changes`` list and status changes are made; the rest are skipped silently, flags and
        keys are not counted."""
        out = self.apply("+bbbmkvv", "a", "b", "c", "pw", "bob", "op", max_changes=3, max_list_entries=10)
        self.assertEqual(out.applied, [("+", "b", "a!*@*"), ("+", "b", "b!*@*"), ("+", "b", "c!*@*"),
                                       ("+", "m", None), ("+", "k", "pw")])
        self.assertEqual(out.replies, [])
        self.assertEqual(self.chan.members[self.bob], 0)

    def test_reply_values(self) -> None:
        """Replies are plain values the core can compare and render."""
        self.assertEqual(ModeReply(UNKNOWN, "x"), ModeReply(UNKNOWN, "x", None, "", ()))

