"""freeq.state.rules: the channel rules the core and federation share (join, send, invite, kick, topic,
modes, history), tested in memory."""
from __future__ import annotations

from twisted.trial import unittest

from freeq.state.channel import OP, VOICE, Channel
from freeq.state.rules import (
    NOT_ON_CHANNEL, NOT_OPERATOR, channel_history_key, consume_invite, dm_history_key, dm_key, grant_invite, invite_refusal,
    is_did_op, join_refusal, kick_refusal, mode_refusal, needs_invite, send_refusal, status_recipients,
    status_target, topic_refusal,
)
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

    def test_invite_passes_the_limit(self) -> None:
        """A pending INVITE, or one that follows the DID, lets the user into a full (+l) channel; it does
        not pass a key or a ban."""
        self.chan.limit = 1
        self.chan.add(make_user("bob"), 0)
        self.alice.invites.add(self.chan.folded)
        self.assertIsNone(join_refusal(self.chan, self.alice, None))
        self.alice.forget_invite(self.chan.folded)
        self.assertEqual(join_refusal(self.chan, self.alice, None), "l")
        self.chan.invited_accounts.add(DID)
        self.assertIsNone(join_refusal(self.chan, self.alice, None))
        self.chan.key = "k"
        self.assertEqual(join_refusal(self.chan, self.alice, None), "k")
        self.chan.key = None
        self.chan.list_add("b", "alice!*@*", "op", 0.0, 100)
        self.assertEqual(join_refusal(self.chan, self.alice, None), "b")

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


class ChannelCommandRefusalTests(unittest.TestCase):
    """topic/invite/kick/mode: not on the channel, or without the operator status the command takes."""

    def setUp(self) -> None:
        self.chan = Channel("#c", 0.0)
        self.op = make_user("op")
        self.member = make_user("member")
        self.outsider = make_user("outsider")
        self.chan.add(self.op, OP)
        self.chan.add(self.member, VOICE)

    def test_outsider_is_refused_everything(self) -> None:
        for rule in (topic_refusal, invite_refusal, kick_refusal, mode_refusal):
            self.assertEqual(rule(self.chan, self.outsider), NOT_ON_CHANNEL, rule.__name__)

    def test_operator_may_do_everything(self) -> None:
        self.chan.modes.update("ti")
        for rule in (topic_refusal, invite_refusal, kick_refusal, mode_refusal):
            self.assertIsNone(rule(self.chan, self.op), rule.__name__)

    def test_member_topic_and_invite_depend_on_t_and_i(self) -> None:
        self.assertIsNone(topic_refusal(self.chan, self.member))
        self.assertIsNone(invite_refusal(self.chan, self.member))
        self.chan.modes.update("ti")
        self.assertEqual(topic_refusal(self.chan, self.member), NOT_OPERATOR)
        self.assertEqual(invite_refusal(self.chan, self.member), NOT_OPERATOR)

    def test_member_never_kicks_or_sets_modes(self) -> None:
        self.assertEqual(kick_refusal(self.chan, self.member), NOT_OPERATOR)
        self.assertEqual(mode_refusal(self.chan, self.member), NOT_OPERATOR)


class SendRefusalTests(unittest.TestCase):
    def setUp(self) -> None:
        self.chan = Channel("#c", 0.0)
        self.voiced = make_user("voiced")
        self.plain = make_user("plain")
        self.outsider = make_user("outsider")
        self.chan.add(self.voiced, VOICE)
        self.chan.add(self.plain, 0)

    def test_open_channel_takes_outside_messages(self) -> None:
        self.assertIsNone(send_refusal(self.chan, self.outsider))

    def test_no_external_messages(self) -> None:
        self.chan.modes.add("n")
        self.assertEqual(send_refusal(self.chan, self.outsider), "n")
        self.assertIsNone(send_refusal(self.chan, self.plain))

    def test_moderated_needs_a_status_and_membership(self) -> None:
        self.chan.modes.add("m")
        self.assertEqual(send_refusal(self.chan, self.outsider), "n")
        self.assertEqual(send_refusal(self.chan, self.plain), "m")
        self.assertIsNone(send_refusal(self.chan, self.voiced))

    def test_banned_member_without_status_is_refused_voice_passes(self) -> None:
        self.chan.list_add("b", "*!*@*", "op", 0.0, 100)
        self.assertEqual(send_refusal(self.chan, self.plain), "b")
        self.assertEqual(send_refusal(self.chan, self.outsider), "b")
        self.assertIsNone(send_refusal(self.chan, self.voiced))


class InviteTests(unittest.TestCase):
    def test_grant_invite_bounds_the_pending_invites_and_follows_the_did(self) -> None:
        target = make_user("bob", account=DID)
        for i in range(5):
            grant_invite(Channel(f"#c{i}", 0.0), target, 3)
        self.assertEqual(len(target.invites), 3)
        chan = Channel("#last", 0.0)
        grant_invite(chan, target, 3)
        self.assertIn("#last", target.invites)
        self.assertEqual(chan.invited_accounts, {DID})

    def test_guest_invite_does_not_touch_accounts(self) -> None:
        chan = Channel("#c", 0.0)
        grant_invite(chan, make_user("guest"), 3)
        self.assertEqual(chan.invited_accounts, set())

    def test_needs_invite_and_did_ops(self) -> None:
        chan = Channel("#c", 0.0)
        alice = make_user("alice", account=DID)
        self.assertFalse(needs_invite(chan, alice))
        chan.modes.add("i")
        self.assertTrue(needs_invite(chan, alice))
        chan.list_add("I", "alice!*@*", "op", 0.0, 100)
        self.assertFalse(needs_invite(chan, alice))
        self.assertFalse(is_did_op(chan, alice))
        chan.did_ops[DID] = ("op!o@h", 0)
        self.assertTrue(is_did_op(chan, alice))
        self.assertFalse(is_did_op(chan, make_user("guest")))


class MessageTargetTests(unittest.TestCase):
    def test_status_target(self) -> None:
        self.assertEqual(status_target("@#c"), (OP, "#c"))
        self.assertEqual(status_target("+#c"), (VOICE, "#c"))
        self.assertEqual(status_target("#c"), (0, "#c"))
        self.assertEqual(status_target("@nick"), (0, "@nick"))
        self.assertEqual(status_target("@"), (0, "@"))

    def test_status_recipients(self) -> None:
        chan = Channel("#c", 0.0)
        op, voiced, plain = make_user("op"), make_user("voiced"), make_user("plain")
        chan.add(op, OP)
        chan.add(voiced, VOICE)
        chan.add(plain, 0)
        self.assertEqual(set(status_recipients(chan, 0)), {op, voiced, plain})
        self.assertEqual(set(status_recipients(chan, VOICE)), {op, voiced})
        self.assertEqual(set(status_recipients(chan, OP)), {op})


class HistoryKeyTests(unittest.TestCase):
    def test_channel_messages_are_kept_but_not_statusmsg_or_tagmsg(self) -> None:
        chan = Channel("#Chan", 0.0)
        self.assertEqual(channel_history_key(chan, "PRIVMSG", 0), "#chan")
        self.assertEqual(channel_history_key(chan, "NOTICE", 0), "#chan")
        self.assertIsNone(channel_history_key(chan, "PRIVMSG", OP))
        self.assertIsNone(channel_history_key(chan, "TAGMSG", 0))

    def test_dms_are_kept_between_accounts_only(self) -> None:
        a = make_user("a", account="did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")
        b = make_user("b", account="did:plc:bbbbbbbbbbbbbbbbbbbbbbbb")
        guest = make_user("guest")
        key = dm_key("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb")
        self.assertEqual(dm_history_key("PRIVMSG", a, b), key)
        self.assertEqual(dm_history_key("PRIVMSG", b, a), key)
        self.assertIsNone(dm_history_key("PRIVMSG", a, guest))
        self.assertIsNone(dm_history_key("TAGMSG", a, b))


class ConsumeInviteTests(unittest.TestCase):
    def test_join_uses_up_the_invite_and_the_dids(self) -> None:
        chan, other = Channel("#c", 0.0), Channel("#d", 0.0)
        alice = make_user("alice", account=DID)
        grant_invite(chan, alice, 10)
        grant_invite(other, alice, 10)
        consume_invite(chan, alice)
        self.assertFalse(alice.invited_to("#c"))
        self.assertTrue(alice.invited_to("#d"))
        self.assertEqual(chan.invited_accounts, set())
        self.assertEqual(other.invited_accounts, {DID})
