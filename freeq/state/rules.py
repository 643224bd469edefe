"""IRC rules as pure functions over the state model: one definition each, used by the core (local
commands) and by federation (peers' events). No I/O, no numerics: callers turn the outcome into a
reply or a refusal of their own kind.
"""
from __future__ import annotations

from typing import Optional

from freeq.state.channel import Channel
from freeq.state.user import User

#: The channel modes a JOIN can be refused by, in the order they are checked.
JOIN_MODES = "klbi"


def is_invited(chan: Channel, user: User) -> bool:
    """Whether ``user`` holds an invite to ``chan``: a pending INVITE, or one that follows its DID."""
    return user.invited_to(chan.folded) or (user.account is not None and user.account in chan.invited_accounts)


def join_refusal(chan: Channel, user: User, key: Optional[str]) -> Optional[str]:
    """The mode that keeps ``user`` out of the existing channel ``chan`` (``k``, ``l``, ``b`` or ``i``),
    or ``None`` when it may join.

    The callers check first what differs between them: the founder and DID operators pass every
    mode (the core trusts its own SASL; federation also asks the peer's trust), and the
    channels-per-user limit (local operators are exempt).
    """
    if chan.key is not None and key != chan.key:
        return "k"
    if chan.limit is not None and len(chan.members) >= chan.limit:
        return "l"
    if chan.is_banned(user):
        return "b"
    if "i" in chan.modes and not is_invited(chan, user) and not chan.list_matches("I", user):
        return "i"
    return None
