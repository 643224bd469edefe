"""The checks of federation proofs, as pure functions (explicit arguments, no federation object, no I/O).

A membership, an invite, a member's status and a user record can each reach a server that never saw the
event behind it (a split, a restart, a server further down the tree): bursts then carry the origin-signed
event as its *proof*. Each ``*_problem`` function here says why an event is not a proper proof of what
it claims (``None``: it is); the federation supplies what it knows locally (who the actor is here,
whether the actor is a channel operator here, the link's trust) and keeps the proofs it accepts.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from freeq.irc.names import fold
from freeq.s2s import protocol as P
from freeq.state.channel import OP, VOICE

#: The largest join event (canonical JSON bytes) carried as a membership's proof in bursts.
PROOF_MAX = 24000
#: The largest invite event (canonical JSON bytes) kept as the proof that admitted a member to a +i channel.
INVITE_PROOF_MAX = 2000
#: The largest ``user`` or ``nick`` event (canonical JSON bytes) kept as the proof of a user record in bursts.
USER_PROOF_MAX = 4000
#: The largest ``mode`` event (canonical JSON bytes) kept as the proof of a member's status (larger: not kept).
STATUS_PROOF_MAX = 4000
#: The fields of a user record (a burst entry, a ``user`` event), besides ``origin``.
USER_FIELDS = ("uid", "nick", "nick_ts", "user", "host", "real", "account", "handle", "away", "modes", "signon",
               "owns")
#: A member's status as it travels (join events, burst member entries) -> status bits.
STATUS_BITS = {"": 0, "v": VOICE, "o": OP, "ov": OP | VOICE}


def status_str(bits: int) -> str:
    """Status bits as they travel: ``"o"``, ``"v"``, ``"ov"`` or ``""``."""
    return ("o" if bits & OP else "") + ("v" if bits & VOICE else "")


def granted_bits(event: Any, uid: str) -> int:
    """The status bits a ``mode`` event leaves granted to ``uid`` (its last change of each bit for that uid
    is a ``+``); 0 for anything that is not such an event."""
    changes = event.get("status") if isinstance(event, dict) and event.get("type") == "mode" else None
    if not isinstance(changes, list):
        return 0
    bits = 0
    for item in changes[:50]:
        if (isinstance(item, list) and len(item) == 3 and item[2] == uid and item[0] in ("+", "-")
                and item[1] in ("o", "v")):
            bit = OP if item[1] == "o" else VOICE
            bits = bits | bit if item[0] == "+" else bits & ~bit
    return bits


# -- user records ------------------------------------------------------------------------------
def hlc_order(event: dict[str, Any]) -> tuple[int, int]:
    """Where an event stands on its origin's hybrid clock (which orders all events of one run of it)."""
    hlc = event.get("hlc")
    if (isinstance(hlc, list) and len(hlc) == 3 and isinstance(hlc[0], int) and isinstance(hlc[1], int)
            and not isinstance(hlc[0], bool) and not isinstance(hlc[1], bool)):
        return (hlc[0], hlc[1])
    return (-1, -1)


def newer(old: Optional[dict[str, Any]], new: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The later of two events of one origin (``old`` on a tie)."""
    if old is None or (new is not None and hlc_order(new) > hlc_order(old)):
        return new
    return old


def proven_record(proof: dict[str, Any], nick_proof: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The user record that a ``user`` event states, with the nick of ``nick_proof`` if that is later."""
    rec = {key: proof.get(key) for key in USER_FIELDS}
    rec["origin"] = proof.get("origin")
    if nick_proof is not None and hlc_order(nick_proof) > hlc_order(proof):
        rec["nick"], rec["nick_ts"] = nick_proof.get("nick"), nick_proof.get("nick_ts")
        rec["owns"] = bool(nick_proof.get("owns"))
    return rec


def user_proof_problem(event: Any, kind: str, rec: dict[str, Any],
                       stored: Optional[dict[str, Any]] = None) -> Optional[str]:
    """Why ``event`` is not a ``kind`` (``user``/``nick``) event about the user of ``rec`` signed by its
    origin (``None``: it is). ``stored``: the event of that kind kept for the user already (verified when
    it was kept, so the same event needs no new signature check)."""
    if not isinstance(event, dict):
        return f"no {kind} event"
    if event.get("type") != kind or event.get("origin") != rec["origin"] or event.get("uid") != rec["uid"]:
        return f"{kind} event of another user"
    if len(P.canonical(event)) > USER_PROOF_MAX:
        return f"{kind} event too large"
    if stored != event and not P.verify_event(event):
        return f"bad signature on the {kind} event"
    return None


# -- memberships ---------------------------------------------------------------------------------
def join_problem(proof: Any, origin: str, uid: str, folded: str,
                 former: frozenset[str] = frozenset()) -> Optional[str]:
    """Why ``proof`` is not the join of channel ``folded`` (or of one of its ``former`` names, folded: it was
    renamed, freeq.s2s.rename) by user ``uid`` of server ``origin``, signed by that origin (``None``: it is)."""
    if not isinstance(proof, dict):
        return "no join event"
    if proof.get("type") != "join" or proof.get("origin") != origin or proof.get("uid") != uid:
        return "join event of another user"
    name = proof.get("channel")
    if not isinstance(name, str) or (fold(name) != folded and fold(name) not in former):
        return "join event of another channel"
    if not isinstance(proof.get("key"), (str, type(None))) or not isinstance(proof.get("ops", []), list):
        return "malformed join event"
    if not P.verify_event(proof):
        return "bad signature on the join event"
    return None


def actor_origin_problem(event: dict[str, Any], role: str, what: str) -> Optional[str]:
    """Why the actor (``uid``) of a signed ``event`` does not belong to the event's origin (``None``: it
    does). ``role``/``what`` name the actor and the event in the reason."""
    actor_uid = event.get("uid")
    if not isinstance(actor_uid, str) or actor_uid[:16] != str(event["origin"])[:16]:
        return f"{role} does not belong to the {what}'s origin"
    return None


def actor_authority_problem(event: dict[str, Any], role: str, what: str, actor_origin: Optional[str],
                            actor_is_op: bool) -> Optional[str]:
    """Why the actor of a signed ``event`` could not have done it here (``None``: it could): it must be
    known here (``actor_origin``: the server it lives on, ``None``: unknown), belong to the event's origin,
    and be a channel operator (or founder/DID operator) here (``actor_is_op``), unless the event says a
    server operator did it (``"oper": true``; callers take such events only from ``full`` peers or us)."""
    if actor_origin is None:
        return f"{role} unknown here"
    if actor_origin != event["origin"]:
        return f"{role} does not belong to the {what}'s origin"
    if not (actor_is_op or event.get("oper") is True):
        return f"{role} is not a channel operator here"
    return None


def _trusted_with(kind: str, event: dict[str, Any], trust: str, me: str) -> bool:
    """Whether a peer of ``trust`` may bring ``event`` (of ``kind``): a peer not trusted with such events
    (``relay``) can only bring back our own."""
    return kind in P.TRUST_ALLOWS[trust] or event.get("origin") == me


def _channel_event_problem(event: Any, kind: str, noun: str, wrong_kind: str, folded: str, trust: str, me: str,
                           max_size: int, for_target: Callable[[dict[str, Any]], bool], role: str,
                           what: str, former: frozenset[str] = frozenset()) -> Optional[str]:
    """The checks an invite and a status proof share: ``event`` is a ``kind`` event (else ``wrong_kind``) a
    peer of ``trust`` may bring, at most ``max_size`` canonical bytes, of channel ``folded`` (or one of its
    ``former`` names), for the user (``for_target``), signed by its origin, by an actor (``role``) of that
    origin. ``noun`` names it in the reasons."""
    if not isinstance(event, dict) or event.get("type") != kind:
        return wrong_kind
    if not _trusted_with(kind, event, trust, me):
        return f"{noun}s are not accepted from a {trust} peer"
    if len(P.canonical(event)) > max_size:
        return f"{noun} too large"
    name = event.get("channel")
    if not isinstance(name, str) or (fold(name) != folded and fold(name) not in former):
        return f"{noun} of another channel"
    if not for_target(event):
        return f"{noun} for another user"
    if not P.verify_event(event):
        return f"bad signature on the {noun}"
    return actor_origin_problem(event, role, what)


def invite_problem(invite: Any, folded: str, target_uid: str, trust: str, me: str,
                   former: frozenset[str] = frozenset()) -> Optional[str]:
    """Why ``invite`` (from a peer of ``trust``) is not a proper invite of user ``target_uid`` to channel
    ``folded`` (or one of its ``former`` names), signed by its origin, by an actor of that origin (``None``: it
    is). Who the inviter is here is checked apart (:func:`actor_authority_problem`)."""
    return _channel_event_problem(invite, "invite", "invite event", "no invite event", folded, trust, me,
                                  INVITE_PROOF_MAX, lambda ev: ev.get("target") == target_uid, "inviter", "invite",
                                  former)


def status_problem(proof: Any, folded: str, uid: str, trust: str, me: str,
                   former: frozenset[str] = frozenset()) -> Optional[str]:
    """Why ``proof`` (from a peer of ``trust``) is not a ``mode`` event granting status in channel ``folded``
    (or one of its ``former`` names) to user ``uid``, signed by its origin, by an actor of that origin
    (``None``: it is). Who the granter is here is checked apart (:func:`actor_authority_problem`)."""
    if proof is None:
        return "no status proof"
    return _channel_event_problem(proof, "mode", "status proof", "status proof is not a mode event", folded, trust,
                                  me, STATUS_PROOF_MAX, lambda ev: bool(granted_bits(ev, uid)), "granter",
                                  "status proof", former)
