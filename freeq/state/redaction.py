"""Edits, deletes and reactions as pure rules: who may change a stored message, what a reaction may be,
and how the reactions on a message are shown in history.

No I/O: the core and federation look the stored message up, ask these functions, and turn the outcome
into a ``FAIL`` (local) or a refused event (a peer's) of their own.
"""
from __future__ import annotations

from typing import Iterable, Optional

from freeq.irc.names import fold
from freeq.state.channel import Channel
from freeq.state.user import User

#: The client tags these features are keyed on (both spellings of react/reply are accepted and relayed).
EDIT_TAG = "+draft/edit"
DELETE_TAG = "+draft/delete"
REACT_TAGS = ("+draft/react", "+react")
REPLY_TAGS = ("+draft/reply", "+reply")
UNREACT_TAG = "+freeq.at/unreact"
#: The tag on a history message that was edited: the msgid of its latest edit.
EDITED_TAG = "+freeq.at/edited"
#: The tag on a history message that holds its reactions: ``emoji:nick1,nick2;emoji2:nick3``.
REACTIONS_TAG = "+freeq.at/reactions"
#: The reason of a deletion, carried to peers with ``+draft/delete``.
REASON_TAG = "+freeq.at/delete-reason"
#: Any of these on a message sends it through the edit/delete/reaction paths (one set test per tagged message).
ACTION_TAGS = frozenset({EDIT_TAG, DELETE_TAG, UNREACT_TAG, *REACT_TAGS, *REPLY_TAGS})

#: Why an edit or delete is refused: the user is not the author (nor, for deletes, a channel operator).
AUTHOR_MISMATCH = "AUTHOR_MISMATCH"

#: A reaction is at most this many UTF-8 bytes (a flag or a family emoji with modifiers fits) ...
MAX_EMOJI_BYTES = 64
#: ... and one user holds at most this many distinct reactions on one message ...
MAX_REACTIONS_PER_USER = 20
#: ... and one message at most this many in all (further ones are relayed, not kept).
MAX_REACTIONS_PER_MESSAGE = 500
#: The ``+freeq.at/reactions`` value is cut to this many bytes (whole entries; tag data is bounded).
MAX_REACTIONS_TAG_BYTES = 3000
#: A message keeps at most this many edits (the oldest go first); history shows the latest.
MAX_EDITS_PER_MESSAGE = 20
#: Characters a msgid reference may hold (the server's ULIDs and peers' ids are of these).
MSGID_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_")
#: Characters no reaction may hold: the separators of the reactions tag, spaces, backslash (the SDK's
#: tag unescaping mangles it) and controls.
_EMOJI_FORBIDDEN = frozenset(":;, \\\t\r\n\x00\x01") | frozenset(chr(c) for c in range(0x20)) | {"\x7f"}


def valid_msgid(value: str) -> bool:
    """Whether ``value`` can name a message (1 to 64 characters of ``MSGID_CHARS``)."""
    return 1 <= len(value) <= 64 and not set(value) - MSGID_CHARS


def valid_reaction(emoji: str) -> bool:
    """Whether ``emoji`` may be a reaction: not empty, at most ``MAX_EMOJI_BYTES``, none of the tag's
    separators, spaces or control characters."""
    if not emoji or len(emoji.encode("utf-8")) > MAX_EMOJI_BYTES:
        return False
    return _EMOJI_FORBIDDEN.isdisjoint(emoji)


def is_author(author_account: Optional[str], author_sender: str, user: User) -> bool:
    """Whether ``user`` wrote the stored message: by DID when the message has one, else (a guest's
    message) by nick, compared case-insensitively. ``author_sender`` is the stored hostmask or nick."""
    if author_account:
        return user.account == author_account
    nick = author_sender.split("!", 1)[0]
    return not user.account and fold(nick) == user.folded


def edit_refusal(author_account: Optional[str], author_sender: str, user: User) -> Optional[str]:
    """Why ``user`` may not edit the message (``AUTHOR_MISMATCH``: only its author may), or ``None``."""
    return None if is_author(author_account, author_sender, user) else AUTHOR_MISMATCH


def delete_refusal(author_account: Optional[str], author_sender: str, user: User,
                   chan: Optional[Channel]) -> Optional[str]:
    """Why ``user`` may not delete the message (``AUTHOR_MISMATCH``), or ``None``: its author may, and so
    may an operator of the channel it was sent to (``chan``; ``None`` for a private message)."""
    if is_author(author_account, author_sender, user):
        return None
    if chan is not None and user in chan.members and chan.is_op(user):
        return None
    return AUTHOR_MISMATCH


def reactor_id(nick: str, account: Optional[str]) -> str:
    """Who reacted, for counting and un-reacting: the DID, or a guest's folded nick."""
    return account if account else "nick:" + fold(nick)


def reactions_tag(reactions: Iterable[tuple[str, str]]) -> str:
    """The ``+freeq.at/reactions`` value of ``(emoji, nick)`` pairs in the order they were made:
    ``emoji:nick1,nick2;emoji2:nick3`` (the freeq SDK's format), emoji in order of first use, a nick
    once per emoji, cut to whole entries within ``MAX_REACTIONS_TAG_BYTES``."""
    by_emoji: dict[str, list[str]] = {}
    for emoji, nick in reactions:
        nicks = by_emoji.setdefault(emoji, [])
        if nick not in nicks:
            nicks.append(nick)
    parts: list[str] = []
    size = 0
    for emoji, nicks in by_emoji.items():
        part = emoji + ":" + ",".join(nicks)
        cost = len(part.encode("utf-8")) + (1 if parts else 0)
        if size + cost > MAX_REACTIONS_TAG_BYTES:
            break
        parts.append(part)
        size += cost
    return ";".join(parts)


#: Tags that act on another message; on a message that is not that action (an edit tag on a NOTICE or
#: TAGMSG, a delete tag on a PRIVMSG, an unreact on a PRIVMSG...) they are dropped, never relayed: a client
#: reading them would apply an edit or delete that no rule checked.
STRAY_ACTION_TAGS = (EDIT_TAG, DELETE_TAG, UNREACT_TAG)


def drop_stray_actions(tags: dict[str, str]) -> None:
    """For a message that goes the ordinary way (not an edit, delete or reaction, local or federated, or a
    multiline batch): drop the action tags it carries (``STRAY_ACTION_TAGS``), in place."""
    for stray in STRAY_ACTION_TAGS:
        tags.pop(stray, None)


def normalise_pairs(tags: dict[str, str], react: bool = True) -> None:
    """Give both spellings of the reply tag, and with ``react`` (a TAGMSG: a reaction) of the react tag,
    when a client sent one (IRCv3 clients read ``+draft/react``/``+draft/reply``, the freeq SDK
    ``+react``/``+reply``); in place. A PRIVMSG's react tag is not a reaction and is relayed as sent."""
    for pair in ((REACT_TAGS, REPLY_TAGS) if react else (REPLY_TAGS,)):
        value = tags.get(pair[0], tags.get(pair[1]))
        if value is not None:
            tags[pair[0]] = tags[pair[1]] = value
