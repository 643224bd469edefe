"""IRC rules as pure functions over the state model: one definition each, used by the core (local
commands) and by federation (peers' events). No I/O, no numerics: callers turn the outcome into a
reply or a refusal of their own kind.
"""
from __future__ import annotations

from typing import Iterable, Optional

from freeq.irc.names import is_channel
from freeq.state.channel import OP, VOICE, Channel
from freeq.state.user import User

#: The channel modes a JOIN can be refused by, in the order they are checked.
JOIN_MODES = "klbi"

#: Why a channel command is refused to a user (the ``*_refusal`` functions below return one of these):
#: not on the channel, or on it without the channel-operator status the command takes.
NOT_ON_CHANNEL = "on"
NOT_OPERATOR = "op"

#: Why a message to a channel is refused (``send_refusal``): the sender is outside a ``+n`` (or ``+m``)
#: channel, has no voice on a ``+m`` channel, or is banned (and has no status).
SEND_MODES = "nmb"

#: The most accounts a channel remembers invites for (an invite that follows its DID across devices).
INVITED_ACCOUNTS_MAX = 500


def is_did_op(chan: Channel, user: User) -> bool:
    """Whether ``user``'s DID is the founder or a DID operator of ``chan`` (they pass +k/+l/+b/+i and get
    operator status on join). Federation also asks whether the user's server is trusted with DID claims."""
    return bool(user.account and (user.account == chan.founder or user.account in chan.did_ops))


def needs_invite(chan: Channel, user: User) -> bool:
    """Whether ``chan`` is invite-only for ``user``: ``+i`` and no ``+I`` mask matches it (an invite, or DID
    operator status, is then what lets it in)."""
    return "i" in chan.modes and not chan.list_matches("I", user)


def is_invited(chan: Channel, user: User) -> bool:
    """Whether ``user`` holds an invite to ``chan``: a pending INVITE, or one that follows its DID."""
    return user.invited_to(chan.folded) or (user.account is not None and user.account in chan.invited_accounts)


def join_refusal(chan: Channel, user: User, key: Optional[str]) -> Optional[str]:
    """The mode that keeps ``user`` out of the existing channel ``chan`` (``k``, ``l``, ``b`` or ``i``),
    or ``None`` when it may join.

    An invite (a pending INVITE, or one that follows the DID) passes ``+l`` as it passes ``+i``: the
    operator who invited asked for this user to come in, full or not. It does not pass ``+k`` or ``+b``.

    The callers check first what differs between them: the founder and DID operators pass every
    mode (the core trusts its own SASL; federation also asks the peer's trust), and the
    channels-per-user limit (local operators are exempt).
    """
    if chan.key is not None and key != chan.key:
        return "k"
    if chan.limit is not None and len(chan.members) >= chan.limit and not is_invited(chan, user):
        return "l"
    if chan.is_banned(user):
        return "b"
    if needs_invite(chan, user) and not is_invited(chan, user):
        return "i"
    return None


def consume_invite(chan: Channel, user: User) -> None:
    """``user`` joined ``chan``: its pending invite there, and its DID's, are used up."""
    user.forget_invite(chan.folded)
    if user.account is not None:
        chan.invited_accounts.discard(user.account)


def grant_invite(chan: Channel, target: User, max_invites: int) -> None:
    """Record an invite of ``target`` to ``chan``: it holds at most ``max_invites`` pending invites (an
    arbitrary old one makes room), and an account's invite also follows its DID (bounded per channel)."""
    if len(target.invites) >= max_invites:
        target.invites.pop()
    target.invites.add(chan.folded)
    if target.account is not None and len(chan.invited_accounts) < INVITED_ACCOUNTS_MAX:
        chan.invited_accounts.add(target.account)


def _member_refusal(chan: Channel, user: User, need_op: bool) -> Optional[str]:
    if user not in chan.members:
        return NOT_ON_CHANNEL
    if need_op and not chan.is_op(user):
        return NOT_OPERATOR
    return None


def topic_refusal(chan: Channel, user: User) -> Optional[str]:
    """Why ``user`` may not set the topic of ``chan`` (``NOT_ON_CHANNEL``, or ``NOT_OPERATOR`` on a ``+t``
    channel), or ``None``. A server operator's override is the caller's to grant."""
    return _member_refusal(chan, user, "t" in chan.modes)


def invite_refusal(chan: Channel, user: User) -> Optional[str]:
    """Why ``user`` may not invite to ``chan`` (``NOT_ON_CHANNEL``, or ``NOT_OPERATOR`` on a ``+i``
    channel), or ``None``."""
    return _member_refusal(chan, user, "i" in chan.modes)


def kick_refusal(chan: Channel, user: User) -> Optional[str]:
    """Why ``user`` may not kick from ``chan`` (``NOT_ON_CHANNEL`` or ``NOT_OPERATOR``), or ``None``."""
    return _member_refusal(chan, user, True)


def mode_refusal(chan: Channel, user: User) -> Optional[str]:
    """Why ``user`` may not change the modes of ``chan`` (``NOT_ON_CHANNEL`` or ``NOT_OPERATOR``), or ``None``."""
    return _member_refusal(chan, user, True)


def send_refusal(chan: Channel, user: User) -> Optional[str]:
    """Why ``user`` may not send to ``chan``: ``n`` (not a member of a ``+n`` or ``+m`` channel), ``m``
    (no status on a ``+m`` channel), ``b`` (banned, without status), or ``None`` (it may)."""
    status = chan.members.get(user)
    if status is None and ("n" in chan.modes or "m" in chan.modes):
        return "n"
    if not status:
        if "m" in chan.modes:
            return "m"
        if chan.lists["b"] and chan.is_banned(user):
            return "b"
    return None


def status_target(target: str) -> tuple[int, str]:
    """``@#chan`` -> ``(OP, "#chan")``, ``+#chan`` -> ``(VOICE, "#chan")``, anything else -> ``(0, target)``:
    a message to the channel's operators (or voiced and operators) only (STATUSMSG)."""
    if target[:1] in ("@", "+") and len(target) > 1 and is_channel(target[1:]):
        return (OP if target[0] == "@" else VOICE), target[1:]
    return 0, target


def status_recipients(chan: Channel, status_min: int) -> Iterable[User]:
    """The members of ``chan`` a message to ``status_target`` level ``status_min`` reaches (all for 0;
    operators for ``OP``; anyone with a status for ``VOICE``)."""
    if not status_min:
        return chan.members
    if status_min == OP:
        return [m for m, s in chan.members.items() if s & OP]
    return [m for m, s in chan.members.items() if s]


def dm_key(account_a: str, account_b: str) -> str:
    """The storage key of a private conversation between two accounts (order-independent)."""
    a, b = sorted((account_a, account_b))
    return f"dm:{a} {b}"


def channel_history_key(chan: Channel, command: str, status_min: int) -> Optional[str]:
    """Where a message to ``chan`` is kept in history, or ``None`` when it is not: STATUSMSG (only part of
    the channel saw it) and TAGMSG (typing notifications and other client tags are not conversation)."""
    if status_min or command == "TAGMSG":
        return None
    return chan.folded


def dm_history_key(command: str, sender: User, other: User) -> Optional[str]:
    """Where a private message is kept in history, or ``None``: only between two accounts (a guest nick
    can be anyone's later), and never TAGMSG."""
    if command == "TAGMSG" or not sender.account or not other.account:
        return None
    return dm_key(sender.account, other.account)
