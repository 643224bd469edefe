"""Unit tests of the pure checks of federation proofs (:mod:`freeq.s2s.proofs`), with events signed in memory.

Each way a proof can be wrong is named by its own test: a good proof passes, and every other one is refused
with the reason the federation logs.
"""
from __future__ import annotations

import os
from typing import Any

from twisted.trial import unittest

from freeq.s2s import proofs
from freeq.s2s.protocol import EventSigner
from freeq.state.channel import OP, VOICE

ALICE_HOME = EventSigner(os.urandom(32))  # the server where the users of these tests live
OTHER = EventSigner(os.urandom(32))  # another server of the federation
ME = EventSigner(os.urandom(32))  # the server doing the checks


def uid_of(signer: EventSigner, n: int) -> str:
    """A uid of server ``signer`` (uids start with their origin's first 16 hex digits)."""
    return f"{signer.server_id[:16]}.1.{n}"


ALICE, BOB = uid_of(ALICE_HOME, 1), uid_of(ALICE_HOME, 2)


def signed(signer: EventSigner, kind: str, **fields: Any) -> dict[str, Any]:
    """An event of ``kind`` from ``signer``'s server, signed as it travels."""
    event: dict[str, Any] = {"type": kind, "origin": signer.server_id, "epoch": 1, "seq": 1, "to": None,
                             "hlc": [1000, 0, signer.server_id[:16]]}
    event.update(fields)
    return signer.sign(event)


def tampered(event: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``event`` changed after it was signed (its signature no longer matches)."""
    return {**event, **changes}


class JoinProofTests(unittest.TestCase):
    """:func:`proofs.join_problem`: the origin-signed join behind a membership."""

    def join(self, **fields: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"uid": ALICE, "channel": "#Chan", "status": "", "ops": []}
        base.update(fields)
        return signed(ALICE_HOME, "join", **base)

    def test_good_join_passes(self) -> None:
        """The user's own signed join of that channel (channel names compare folded)."""
        self.assertIsNone(proofs.join_problem(self.join(), ALICE_HOME.server_id, ALICE, "#chan"))
        self.assertIsNone(proofs.join_problem(self.join(key="secret"), ALICE_HOME.server_id, ALICE, "#chan"))

    def test_not_an_event(self) -> None:
        self.assertEqual(proofs.join_problem(None, ALICE_HOME.server_id, ALICE, "#chan"), "no join event")
        self.assertEqual(proofs.join_problem(["join"], ALICE_HOME.server_id, ALICE, "#chan"), "no join event")

    def test_wrong_type(self) -> None:
        """A signed event of another kind (a part) proves no join."""
        part = signed(ALICE_HOME, "part", uid=ALICE, channel="#chan", reason="")
        self.assertEqual(proofs.join_problem(part, ALICE_HOME.server_id, ALICE, "#chan"), "join event of another user")

    def test_other_user(self) -> None:
        self.assertEqual(proofs.join_problem(self.join(uid=BOB), ALICE_HOME.server_id, ALICE, "#chan"),
                         "join event of another user")

    def test_other_origin(self) -> None:
        """The same join signed by another server is not the user's join."""
        forged = signed(OTHER, "join", uid=ALICE, channel="#chan", status="", ops=[])
        self.assertEqual(proofs.join_problem(forged, ALICE_HOME.server_id, ALICE, "#chan"),
                         "join event of another user")

    def test_other_channel(self) -> None:
        self.assertEqual(proofs.join_problem(self.join(), ALICE_HOME.server_id, ALICE, "#other"),
                         "join event of another channel")
        self.assertEqual(proofs.join_problem(self.join(channel=5), ALICE_HOME.server_id, ALICE, "#chan"),
                         "join event of another channel")

    def test_malformed(self) -> None:
        """A key that is not a string, or ops that are not a list."""
        for bad in (self.join(key=1234), self.join(ops="created")):
            self.assertEqual(proofs.join_problem(bad, ALICE_HOME.server_id, ALICE, "#chan"), "malformed join event")

    def test_bad_signature(self) -> None:
        """Changed after signing (here: the status), or signed by a key other than the origin's."""
        self.assertEqual(proofs.join_problem(tampered(self.join(), status="o"), ALICE_HOME.server_id, ALICE, "#chan"),
                         "bad signature on the join event")
        foreign = tampered(signed(OTHER, "join", uid=ALICE, channel="#chan", status="", ops=[]),
                           origin=ALICE_HOME.server_id)
        self.assertEqual(proofs.join_problem(foreign, ALICE_HOME.server_id, ALICE, "#chan"),
                         "bad signature on the join event")


class InviteProofTests(unittest.TestCase):
    """:func:`proofs.invite_problem`: the signed invite that admitted a member to a +i channel."""

    def invite(self, signer: EventSigner = ALICE_HOME, **fields: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"uid": uid_of(signer, 9), "channel": "#chan", "target": BOB}
        base.update(fields)
        return signed(signer, "invite", **base)

    def check(self, invite: Any, trust: str = "full", folded: str = "#chan", target: str = BOB) -> Any:
        return proofs.invite_problem(invite, folded, target, trust, ME.server_id)

    def test_good_invite_passes(self) -> None:
        self.assertIsNone(self.check(self.invite()))
        self.assertIsNone(self.check(self.invite(channel="#CHAN")))

    def test_wrong_type(self) -> None:
        self.assertEqual(self.check(None), "no invite event")
        self.assertEqual(self.check(signed(ALICE_HOME, "join", uid=BOB, channel="#chan", status="", ops=[])),
                         "no invite event")

    def test_relay_peer_brings_back_only_our_own(self) -> None:
        """A peer not trusted with invite events (``relay``) may carry our own invites, no one else's."""
        self.assertEqual(self.check(self.invite(), trust="relay"), "invite events are not accepted from a relay peer")
        self.assertIsNone(self.check(self.invite(ME), trust="relay"))

    def test_too_large(self) -> None:
        self.assertEqual(self.check(self.invite(pad="x" * proofs.INVITE_PROOF_MAX)), "invite event too large")

    def test_other_channel(self) -> None:
        self.assertEqual(self.check(self.invite(), folded="#other"), "invite event of another channel")

    def test_other_user(self) -> None:
        self.assertEqual(self.check(self.invite(), target=ALICE), "invite event for another user")

    def test_bad_signature(self) -> None:
        self.assertEqual(self.check(tampered(self.invite(), target=ALICE), target=ALICE),
                         "bad signature on the invite event")

    def test_actor_of_another_origin(self) -> None:
        """The inviter must be a user of the server that signed the invite."""
        self.assertEqual(self.check(self.invite(uid=uid_of(OTHER, 9))),
                         "inviter does not belong to the invite's origin")
        self.assertEqual(self.check(self.invite(uid=None)), "inviter does not belong to the invite's origin")


class ActorAuthorityTests(unittest.TestCase):
    """:func:`proofs.actor_authority_problem`: whether the actor of a sound proof could have acted here."""

    def setUp(self) -> None:
        self.invite = signed(ALICE_HOME, "invite", uid=ALICE, channel="#chan", target=BOB)

    def test_channel_operator_here_passes(self) -> None:
        self.assertIsNone(proofs.actor_authority_problem(self.invite, "inviter", "invite", ALICE_HOME.server_id, True))

    def test_unknown_actor(self) -> None:
        self.assertEqual(proofs.actor_authority_problem(self.invite, "inviter", "invite", None, False),
                         "inviter unknown here")

    def test_actor_of_another_origin(self) -> None:
        """The actor known here lives on another server than the one that signed the event."""
        self.assertEqual(proofs.actor_authority_problem(self.invite, "inviter", "invite", OTHER.server_id, True),
                         "inviter does not belong to the invite's origin")

    def test_actor_not_an_op_here(self) -> None:
        self.assertEqual(proofs.actor_authority_problem(self.invite, "inviter", "invite", ALICE_HOME.server_id, False),
                         "inviter is not a channel operator here")

    def test_server_operator_override_passes(self) -> None:
        """An event its origin marks as a server operator's (``"oper": true``) needs no channel status here."""
        oper = signed(ALICE_HOME, "mode", uid=ALICE, channel="#chan", ops=[], status=[["+", "o", BOB]], oper=True)
        self.assertIsNone(proofs.actor_authority_problem(oper, "granter", "status proof", ALICE_HOME.server_id, False))


class StatusProofTests(unittest.TestCase):
    """:func:`proofs.status_problem` and :func:`proofs.granted_bits`: the signed grant of a member's status."""

    def grant(self, signer: EventSigner = ALICE_HOME, status: Any = None, **fields: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"uid": uid_of(signer, 9), "channel": "#chan", "ops": [],
                                "status": status if status is not None else [["+", "o", BOB]]}
        base.update(fields)
        return signed(signer, "mode", **base)

    def check(self, proof: Any, trust: str = "full", folded: str = "#chan", uid: str = BOB) -> Any:
        return proofs.status_problem(proof, folded, uid, trust, ME.server_id)

    def test_good_grant_passes(self) -> None:
        self.assertIsNone(self.check(self.grant()))

    def test_missing(self) -> None:
        self.assertEqual(self.check(None), "no status proof")

    def test_wrong_type(self) -> None:
        topic = signed(ALICE_HOME, "topic", uid=ALICE, channel="#chan", ops=[], status=[["+", "o", BOB]])
        self.assertEqual(self.check(topic), "status proof is not a mode event")
        self.assertEqual(self.check("mode"), "status proof is not a mode event")

    def test_relay_peer_brings_back_only_our_own(self) -> None:
        self.assertEqual(self.check(self.grant(), trust="relay"), "status proofs are not accepted from a relay peer")
        self.assertIsNone(self.check(self.grant(ME), trust="relay"))

    def test_too_large(self) -> None:
        self.assertEqual(self.check(self.grant(pad="x" * proofs.STATUS_PROOF_MAX)), "status proof too large")

    def test_other_channel(self) -> None:
        self.assertEqual(self.check(self.grant(), folded="#other"), "status proof of another channel")

    def test_other_user(self) -> None:
        """A grant to someone else, or one that takes the status back in the same event, grants nothing."""
        self.assertEqual(self.check(self.grant(), uid=ALICE), "status proof for another user")
        self.assertEqual(self.check(self.grant(status=[["+", "o", BOB], ["-", "o", BOB]])),
                         "status proof for another user")

    def test_bad_signature(self) -> None:
        self.assertEqual(self.check(tampered(self.grant(), status=[["+", "o", ALICE]]), uid=ALICE),
                         "bad signature on the status proof")

    def test_actor_of_another_origin(self) -> None:
        self.assertEqual(self.check(self.grant(uid=uid_of(OTHER, 9))),
                         "granter does not belong to the status proof's origin")

    def test_granted_bits(self) -> None:
        """The last change of each bit for the user counts; other users' changes and other events count nothing."""
        event = self.grant(status=[["+", "o", BOB], ["+", "v", BOB], ["-", "o", BOB], ["+", "o", ALICE]])
        self.assertEqual(proofs.granted_bits(event, BOB), VOICE)
        self.assertEqual(proofs.granted_bits(event, ALICE), OP)
        self.assertEqual(proofs.granted_bits({"type": "join", "status": [["+", "o", BOB]]}, BOB), 0)
        self.assertEqual(proofs.granted_bits(None, BOB), 0)
        self.assertEqual(proofs.status_str(OP | VOICE), "ov")
        self.assertEqual(proofs.STATUS_BITS[proofs.status_str(VOICE)], VOICE)


class UserProofTests(unittest.TestCase):
    """:func:`proofs.user_proof_problem` and the record a user's signed events state."""

    def user_event(self, at: int = 1000, **fields: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"uid": ALICE, "nick": "alice", "nick_ts": 5, "user": "a", "host": "h", "real": "A",
                                "account": None, "handle": None, "away": None, "modes": "", "signon": 1,
                                "owns": False}
        base.update(fields)
        event = signed(ALICE_HOME, "user", **base)
        if at != 1000:
            event = ALICE_HOME.sign({**event, "hlc": [at, 0, ALICE_HOME.server_id[:16]]})
        return event

    def rec(self) -> dict[str, Any]:
        return {"uid": ALICE, "origin": ALICE_HOME.server_id}

    def test_good_events_pass(self) -> None:
        self.assertIsNone(proofs.user_proof_problem(self.user_event(), "user", self.rec()))
        nick = signed(ALICE_HOME, "nick", uid=ALICE, nick="alicia", nick_ts=6, owns=False)
        self.assertIsNone(proofs.user_proof_problem(nick, "nick", self.rec()))

    def test_not_an_event(self) -> None:
        self.assertEqual(proofs.user_proof_problem(None, "user", self.rec()), "no user event")

    def test_wrong_type(self) -> None:
        self.assertEqual(proofs.user_proof_problem(self.user_event(), "nick", self.rec()), "nick event of another user")

    def test_other_user(self) -> None:
        self.assertEqual(proofs.user_proof_problem(self.user_event(uid=BOB), "user", self.rec()),
                         "user event of another user")

    def test_other_origin(self) -> None:
        forged = signed(OTHER, "user", uid=ALICE, nick="alice")
        self.assertEqual(proofs.user_proof_problem(forged, "user", self.rec()), "user event of another user")

    def test_too_large(self) -> None:
        large = self.user_event(real="x" * proofs.USER_PROOF_MAX)
        self.assertEqual(proofs.user_proof_problem(large, "user", self.rec()), "user event too large")

    def test_bad_signature(self) -> None:
        self.assertEqual(proofs.user_proof_problem(tampered(self.user_event(), nick="mallory"), "user", self.rec()),
                         "bad signature on the user event")

    def test_event_kept_already_is_not_verified_again(self) -> None:
        """The very event stored (verified when it was kept) passes without a new signature check."""
        event = tampered(self.user_event(), nick="stored")
        self.assertIsNone(proofs.user_proof_problem(event, "user", self.rec(), stored=event))

    def test_proven_record_takes_the_later_nick(self) -> None:
        """The record states the user event, with the nick of a later nick event; an earlier one is ignored."""
        user = self.user_event(at=1000)
        later = ALICE_HOME.sign({**signed(ALICE_HOME, "nick", uid=ALICE, nick="alicia", nick_ts=9, owns=True),
                                 "hlc": [2000, 0, ALICE_HOME.server_id[:16]]})
        earlier = ALICE_HOME.sign({**later, "hlc": [500, 0, ALICE_HOME.server_id[:16]]})
        rec = proofs.proven_record(user, later)
        self.assertEqual((rec["nick"], rec["nick_ts"], rec["owns"], rec["origin"]),
                         ("alicia", 9, True, ALICE_HOME.server_id))
        self.assertEqual(proofs.proven_record(user, earlier)["nick"], "alice")
        self.assertEqual(set(proofs.proven_record(user, None)), set(proofs.USER_FIELDS) | {"origin"})
        self.assertIs(proofs.newer(user, later), later)
        self.assertIs(proofs.newer(user, earlier), user)
        self.assertIs(proofs.newer(None, earlier), earlier)
        self.assertEqual(proofs.hlc_order({"hlc": [True, 0, "x"]}), (-1, -1))
