"""What a client is told, as values: chat messages, joins and parts, account changes, channel state,
WHOIS replies; and the helpers that read a line's prefix and ``time`` tag."""
from __future__ import annotations

import calendar
import time as _time
from dataclasses import dataclass, field
from typing import Optional

from freeq.irc.parser import Message
from freeq.signing import SIG_TAG, verify as verify_signature


def split_prefix(source: Optional[str]) -> tuple[str, str, str]:
    """``nick!user@host`` → ``(nick, user, host)`` (missing parts are ``""``)."""
    if not source:
        return "", "", ""
    nick, _, rest = source.partition("!")
    user, _, host = rest.partition("@")
    if not rest and "@" in nick:
        nick, _, host = nick.partition("@")
    return nick, user, host


def parse_server_time(value: Optional[str]) -> Optional[float]:
    """The Unix time of an IRCv3 ``time`` tag (``YYYY-MM-DDTHH:MM:SS.sssZ``), or ``None``."""
    if not value:
        return None
    try:
        head, _, frac = value.rstrip("Z").partition(".")
        secs = calendar.timegm(_time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        return secs + (float("0." + frac) if frac.isdigit() else 0.0)
    except ValueError:
        return None


@dataclass
class ChatMessage:
    """A ``PRIVMSG`` or ``NOTICE`` as received, with the tags freeq attaches surfaced."""

    command: str
    source: str
    nick: str
    target: str
    text: str
    tags: dict[str, str]
    #: The channel, or the sender's nick for a private message: where a reply goes.
    reply_to: str
    #: Whether the message is our own (``echo-message``).
    own: bool = False

    @property
    def msgid(self) -> Optional[str]:
        """The server's message id (``msgid`` tag)."""
        return self.tags.get("msgid")

    @property
    def time(self) -> Optional[str]:
        """The server's receive time (``time`` tag, ``server-time`` cap)."""
        return self.tags.get("time")

    @property
    def account(self) -> Optional[str]:
        """The sender's DID (``account`` tag, ``account-tag`` cap); ``None`` for guests."""
        return self.tags.get("account")

    @property
    def signature(self) -> Optional[str]:
        """The ``+freeq.at/sig`` value, if any."""
        return self.tags.get(SIG_TAG)

    @property
    def is_channel(self) -> bool:
        """Whether it was sent to a channel."""
        name = self.target.lstrip("@+%~&")[:1] or self.target[:1]
        return name != "" and name in "#&"

    def verify(self, public_key: bytes) -> bool:
        """Whether :attr:`signature` is valid under ``public_key`` (a 32-byte Ed25519 key: the server's
        message-signing key or the sender's ``MSGSIG`` key).

        Needs the ``account`` and ``time`` tags (caps ``message-tags``, ``account-tag`` and
        ``server-time``); the target is tried as received and lower-cased (the server signs
        channel names normalised).
        """
        sig, did, when = self.signature, self.account, parse_server_time(self.time)
        if not sig or not did or when is None:
            return False
        second = int(when)
        bare = self.target.lstrip("@+") if self.is_channel else self.target
        targets = dict.fromkeys([self.target, bare.lower()])
        return any(verify_signature(public_key, sig, did, t, self.text, second) for t in targets)


@dataclass
class JoinEvent:
    """Someone (maybe us) joined a channel; ``account`` is the DID from ``extended-join`` (else ``None``)."""

    nick: str
    source: str
    channel: str
    account: Optional[str] = None
    realname: Optional[str] = None
    own: bool = False


@dataclass
class PartEvent:
    """Someone (maybe us) left a channel: ``PART`` or, with ``kicked_by``, ``KICK``."""

    nick: str
    source: str
    channel: str
    reason: Optional[str] = None
    own: bool = False
    kicked_by: Optional[str] = None


@dataclass
class AccountEvent:
    """``account-notify``: ``nick`` is now logged in as ``account`` (``None``: logged out)."""

    nick: str
    account: Optional[str]


@dataclass
class ChannelState:
    """What the client knows of a channel it is in: members with their status prefixes, topic."""

    name: str
    members: dict[str, str] = field(default_factory=dict)  # nick -> prefix characters ("@", "+", "")
    topic: Optional[str] = None


@dataclass
class WhoisReply:
    """The collected answer to :meth:`FreeqClient.whois`."""

    nick: str
    found: bool = False
    user: Optional[str] = None
    host: Optional[str] = None
    realname: Optional[str] = None
    server: Optional[str] = None
    account: Optional[str] = None
    channels: list[str] = field(default_factory=list)
    lines: list[Message] = field(default_factory=list)

