"""freeq.state.rules: the JOIN admission rule the core and federation share, tested in memory."""
from __future__ import annotations

from twisted.trial import unittest

from freeq.state.channel import Channel
from freeq.state.rules import join_refusal
from tests.test_state import make_user

DID = "did:plc:invitee00000000000000000"


class JoinRefusalTests(unittest.TestCase):
    def setUp(self) -> None:
        self.chan = Channel("#c", 0.0)
        self.chan.modes.update("nt")
        self.alice = make_user("alice", account=DID)

    def test_open_channel_admits(self) -> None:
        self.assertIsNone(join_refusal(self.chan, self.alice, None))

    def test_key(self) -> None:
        self.chan.key = "s3cret"
        self.assertEqual(join_refusal(self.chan, self.alice, None), "k")
        self.assertEqual(join_refusal(self.chan, self.alice, "wrong"), "k")
        self.assertIsNone(join_refusal(self.chan, self.alice, "s3cret"))

    def test_limit(self) -> None:
        self.chan.limit = 1
        self.chan.add(make_user("bob"), 0)
        self.assertEqual(join_refusal(self.chan, self.alice, None), "l")

    def test_ban_and_exception(self) -> None:
        self.chan.list_add("b", "alice!*@*", "op", 0.0, 100)
        self.assertEqual(join_refusal(self.chan, self.alice, None), "b")
        self.chan.list_add("e", "*!*@freeq/guest", "op", 0.0, 100)
        self.assertIsNone(join_refusal(self.chan, self.alice, None))

    def test_invite_only_passed_by_invite_did_invite_or_invex(self) -> None:
        self.chan.modes.add("i")
        self.assertEqual(join_refusal(self.chan, self.alice, None), "i")
        self.alice.invites.add(self.chan.folded)
        self.assertIsNone(join_refusal(self.chan, self.alice, None))
        self.alice.forget_invite(self.chan.folded)
        self.chan.invited_accounts.add(DID)  # an INVITE that follows the DID
        self.assertIsNone(join_refusal(self.chan, self.alice, None))
        self.chan.invited_accounts.clear()
        self.chan.list_add("I", "alice!*@*", "op", 0.0, 100)
        self.assertIsNone(join_refusal(self.chan, self.alice, None))

    def test_order_key_before_limit_before_ban_before_invite(self) -> None:
        self.chan.modes.add("i")
        self.chan.list_add("b", "alice!*@*", "op", 0.0, 100)
        self.chan.limit = 0
        self.chan.key = "k"
        self.assertEqual(join_refusal(self.chan, self.alice, None), "k")
        self.assertEqual(join_refusal(self.chan, self.alice, "k"), "l")
        self.chan.limit = None
        self.assertEqual(join_refusal(self.chan, self.alice, "k"), "b")
