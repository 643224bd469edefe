"""The proofs federation keeps: the origin-signed events behind memberships, invites, statuses and user records.

Bursts carry them, so that a server which did not see an event live (a split, a restart, a server further
away) can check what a neighbour states; the checks themselves are the pure functions of
:mod:`freeq.s2s.proofs`, given here what this server knows (the actor, its status here, the link's trust).
"""
from __future__ import annotations

from typing import Any, Optional

from freeq.irc.names import fold
from freeq.s2s import protocol as P
from freeq.s2s import proofs
from freeq.s2s.base import FederationBase
from freeq.s2s.peers import PeerLink
from freeq.s2s.proofs import (
    INVITE_PROOF_MAX, PROOF_MAX, STATUS_PROOF_MAX, USER_PROOF_MAX, granted_bits, hlc_order, newer, proven_record,
    status_str,
)
from freeq.state.channel import OP, Channel
from freeq.state.rules import needs_invite
from freeq.state.user import User

#: Remote memberships remembered as accepted (their join signature and last status), across netsplits.
ACCEPTED_JOINS_MAX = 100000

#: Signed invite events kept for pending invites (oldest forgotten first).
INVITES_MAX = 100000


class ProofKeeping(FederationBase):
    """Keeps and checks the signed events that prove memberships, invites, statuses and user records, and
    forgets those of memberships that ended without a hook (:meth:`_prune_joins`, from the keepalive tick)."""

    # -- membership proofs: the origin-signed join behind each membership -----------------------
    def _stand_in(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A signed event of ours that is never sent live (``seq`` 0 fails every envelope check): the proof,
        carried in bursts, of a local change whose event was not sent (no link, no hook) or is too large."""
        event: dict[str, Any] = {"type": kind, "origin": self.me, "epoch": self.epoch, "seq": 0, "to": None,
                                 "hlc": list(self.hlc.tick())}
        event.update(fields)
        return self.signer.sign(event)

    def _sign_proof(self, uid: str, chan: Channel, status: str, ops: list[Any], key: Optional[str]) -> dict[str, Any]:
        """A stand-in ``join`` event: the proof of a local membership whose join was not sent (no link, no
        hook) or is too large for a burst."""
        fields: dict[str, Any] = {"uid": uid, "channel": chan.name, "status": status, "ops": ops}
        if key is not None:
            fields["key"] = key
        return self._stand_in("join", fields)

    def _local_proof(self, user: User, chan: Channel) -> dict[str, Any]:
        """The proof of a local member's membership (signed now if it joined without the join hook)."""
        uid = self.uid(user)
        proof = self.member_joins.get((uid, chan.folded))
        if proof is None:
            crdt = self.crdts.get(chan.folded)
            ops: list[Any] = []
            if crdt is not None and crdt.creator is not None and crdt.creator[1] == uid:
                ops.append(["created", uid, list(crdt.creator[0])])
            proof = self._sign_proof(uid, chan, status_str(chan.members.get(user, 0)), ops, chan.key)
            self.member_joins[(uid, chan.folded)] = proof
        return proof

    def _remember_join(self, uid: str, folded: str, proof: dict[str, Any], bits: int) -> None:
        """A remote membership was accepted here: keep its proof (for our bursts) and remember the join."""
        if len(P.canonical(proof)) <= PROOF_MAX:
            self.member_joins[(uid, folded)] = proof
        else:  # cannot travel in a burst frame: the membership is listed without proof
            self.member_joins.pop((uid, folded), None)
        key = (uid, folded)
        self.accepted_joins[key] = [proof["sig"], bits]
        self.accepted_joins.move_to_end(key)
        while len(self.accepted_joins) > ACCEPTED_JOINS_MAX:
            self.accepted_joins.popitem(last=False)

    def _forget_join(self, uid: str, folded: str) -> None:
        """A membership really ended (part, kick, quit): a later burst must not restore it unchecked."""
        self.member_joins.pop((uid, folded), None)
        self.member_invites.pop((uid, folded), None)
        self.member_status.pop((uid, folded), None)
        self.accepted_joins.pop((uid, folded), None)

    def _keep_invite(self, event: dict[str, Any]) -> None:
        """Keep the signed ``invite`` event of a pending invite (emitted here, or received and accepted)."""
        if len(P.canonical(event)) > INVITE_PROOF_MAX:
            return  # too large to travel in a burst entry: the invite only works where it is known
        key = (str(event["target"]), fold(str(event["channel"])))
        self.invite_events[key] = event
        self.invite_events.move_to_end(key)
        while len(self.invite_events) > INVITES_MAX:
            self.invite_events.popitem(last=False)

    def _needs_invite(self, chan: Channel, user: User) -> bool:
        """Whether joining ``chan`` takes an invite for ``user`` (+i, not passed by a DID op or an +I mask)."""
        return needs_invite(chan, user) and not self._is_did_op(chan, user)

    def _admitting_invite(self, uid: str, chan: Channel, user: User) -> None:
        """``user`` just joined ``chan``: if it took an invite, the invite event becomes the membership's
        second proof (carried in bursts next to the join); otherwise the membership has none."""
        event = self.invite_events.pop((uid, chan.folded), None)
        if event is not None and self._needs_invite(chan, user):
            self.member_invites[(uid, chan.folded)] = event
        else:
            self.member_invites.pop((uid, chan.folded), None)

    def _check_invite(self, invite: Any, user: User, chan: Channel, link: PeerLink,
                      authority: bool = True) -> Optional[str]:
        """Why ``invite`` (from a burst over ``link``) does not admit remote ``user`` to ``chan`` here (``None``: it
        does): it must be an ``invite`` event signed by its origin, for this channel and user, by an inviter
        known here who is a channel operator (or founder/DID operator) here, i.e. who could have invited the
        user here; a peer not trusted with invite events (``relay``) can only bring back our own. Without
        ``authority``, only the event itself is checked (not who the inviter is here)."""
        problem = proofs.invite_problem(invite, chan.folded, user.conn.uid, link.trust, self.me,
                                        self._former_names(chan.folded))
        if problem is not None or not authority:
            return problem
        return self._actor_authority(invite, chan, "inviter", "invite")

    def _actor_authority(self, event: dict[str, Any], chan: Channel, role: str, what: str) -> Optional[str]:
        """The shared tail of the invite and status proof checks, once ``event`` is a proper signed event of its
        origin: its actor (``uid``) is known here, belongs to that origin, and is a channel operator (or
        founder/DID operator) of ``chan`` here. ``role``/``what`` name them in the reason."""
        actor = self.user_by_uid(str(event["uid"]))
        if actor is None:
            return proofs.actor_authority_problem(event, role, what, None, False)
        origin = actor.conn.origin if self.is_remote(actor) else self.me
        is_op = origin == event["origin"] and (chan.is_op(actor) or self._is_did_op(chan, actor))
        return proofs.actor_authority_problem(event, role, what, origin, is_op)

    def _check_proof(self, proof: Any, user: User, folded: str) -> Optional[str]:
        """Why ``proof`` is not ``user``'s join of channel ``folded`` signed by its origin (``None``: it is)."""
        return proofs.join_problem(proof, user.conn.origin, user.conn.uid, folded, self._former_names(folded))

    def _former_names(self, folded: str) -> frozenset[str]:
        """The former names (folded) of channel ``folded``, which proofs signed before its renames name
        (freeq.s2s.rename keeps the signed rename events behind them)."""
        chain = self.channel_renames.get(folded)
        if not chain:
            return frozenset()
        return frozenset(fold(str(event.get("channel", ""))) for event in chain)

    # -- status proofs: the origin-signed mode event behind each member's status -----------------
    def _keep_status(self, uid: str, folded: str, bits: int, event: Optional[dict[str, Any]] = None) -> None:
        """Member ``uid`` of channel ``folded`` now has status ``bits``, and ``event`` (if given) is a signed
        ``mode`` event that granted some of it. Keep as the membership's status proof the event that proves
        its operator status if any (else the latest grant), and forget one that no longer proves anything."""
        key = (uid, folded)
        old = self.member_status.get(key)
        covers = granted_bits(event, uid) & bits
        if event is not None and covers and len(P.canonical(event)) <= STATUS_PROOF_MAX:
            if covers & OP or old is None or not granted_bits(old, uid) & bits & OP:
                self.member_status[key] = event
                return
        if old is not None and not granted_bits(old, uid) & bits:
            del self.member_status[key]

    def _check_status(self, proof: Any, user: User, chan: Channel, link: PeerLink,
                      authority: bool = True) -> Optional[str]:
        """Why ``proof`` (a burst entry's status proof, over ``link``) does not prove the status it grants remote
        ``user`` in ``chan`` (``None``: it does): it must be a ``mode`` event signed by its origin, for this
        channel, granting status to this user, by a granter known here who is a channel operator (or founder/
        DID operator) here, i.e. who could have given that status here; a peer not trusted with mode events
        (``relay``) can only bring back our own. Without ``authority``, only the event itself is checked."""
        problem = proofs.status_problem(proof, chan.folded, user.conn.uid, link.trust, self.me,
                                        self._former_names(chan.folded))
        if problem is not None or not authority:
            return problem
        return self._actor_authority(proof, chan, "granter", "status proof")

    def _remember_status(self, link: PeerLink, chan: Channel, user: User, proof: Any) -> None:
        """Keep the status proof of a bursted membership for our own bursts if it is a proper signed grant of
        that member's current status (each server that needs it checks the granter against its own view)."""
        bits = chan.members.get(user, 0)
        if proof is not None and self._check_status(proof, user, chan, link, authority=False) is None:
            self._keep_status(user.conn.uid, chan.folded, bits, proof)
        else:
            self._keep_status(user.conn.uid, chan.folded, bits)

    def _keep_user_proof(self, event: dict[str, Any]) -> None:
        """Keep an accepted (or emitted) ``user`` or ``nick`` event as the proof of its user's record, unless
        an event of that kind stored already is later. Too large to travel in a burst: nothing is kept (a
        local user's proof is then signed anew when bursting; a relayed user is left out of bursts)."""
        store = self.user_proofs if event["type"] == "user" else self.nick_proofs
        uid = str(event["uid"])
        if len(P.canonical(event)) > USER_PROOF_MAX:
            store.pop(uid, None)
            return
        current = store.get(uid)
        if (current is not None and current.get("origin") == event.get("origin")
                and hlc_order(current) > hlc_order(event)):
            return
        store[uid] = event
        nick_proof = self.nick_proofs.get(uid)
        if event["type"] == "user" and nick_proof is not None and hlc_order(nick_proof) < hlc_order(event):
            del self.nick_proofs[uid]  # the user event states the current nick

    def _forget_user_proofs(self, uid: str) -> None:
        self.user_proofs.pop(uid, None)
        self.nick_proofs.pop(uid, None)

    def _emitted(self, kind: str, fields: dict[str, Any], event: Optional[dict[str, Any]]) -> None:
        """A ``user`` or ``nick`` event about a local user was emitted (``None``: not sent, no link): keep it,
        or a stand-in signed now, as the proof of the user's record."""
        self._keep_user_proof(event if event is not None else self._stand_in(kind, fields))

    def _local_user_proofs(self, rec: dict[str, Any]) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
        """The proofs of a local user's current record ``rec``: what we emitted, or a stand-in signed now if
        that no longer states the record (a change made without a hook) or was too large to keep."""
        uid = rec["uid"]
        proof, nick_proof = self.user_proofs.get(uid), self.nick_proofs.get(uid)
        if proof is None or proven_record(proof, nick_proof) != rec:
            proof = self._stand_in("user", {k: v for k, v in rec.items() if k != "origin"})
            self.nick_proofs.pop(uid, None)
            nick_proof = None
            self._keep_user_proof(proof)
        if nick_proof is not None and newer(proof, nick_proof) is proof:
            nick_proof = None
        return proof, nick_proof

    def _user_proof_problem(self, event: Any, kind: str, rec: dict[str, Any]) -> Optional[str]:
        """Why ``event`` is not a ``kind`` (``user``/``nick``) event about the user of ``rec`` signed by its
        origin (``None``: it is); one verified and kept here already needs no new signature check."""
        stored = (self.user_proofs if kind == "user" else self.nick_proofs).get(rec["uid"])
        return proofs.user_proof_problem(event, kind, rec, stored)

    def _prune_joins(self) -> None:
        """Forget the joins of memberships that ended by a path without a hook (kept: users split away)."""
        channels = self.server.channels
        for uid, folded in list(self.member_joins):
            user = self.user_by_uid(uid)
            chan = channels.get(folded)
            if user is None or chan is None or user not in chan.members:
                del self.member_joins[(uid, folded)]
        for uid, folded in list(self.accepted_joins):
            user = self.remote.get(uid)
            if user is not None and ((chan := channels.get(folded)) is None or user not in chan.members):
                del self.accepted_joins[(uid, folded)]
        for key in [k for k in self.member_invites if k not in self.member_joins]:
            del self.member_invites[key]
        for uid, folded in list(self.member_status):  # statuses of memberships that ended without a hook
            user = self.user_by_uid(uid)
            chan = channels.get(folded)
            if user is None or chan is None or not chan.members.get(user, 0):
                del self.member_status[(uid, folded)]
        for uid, folded in list(self.invite_events):  # invites whose target or channel is gone
            if folded not in channels or self.user_by_uid(uid) is None:
                del self.invite_events[(uid, folded)]
