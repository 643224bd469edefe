"""What the command groups of :class:`freeq.core.server.IRCServer` share.

The server is one object assembled from mixins (registration, channels, modes, messages, queries,
monitor, operator, history, identity), each in its own module. :class:`ServerCore` is the part of
the server every group may use: the state it holds and the output helpers that stay in
``server.py``. It exists for the type checker only: each group inherits it under ``TYPE_CHECKING``
and declares, as annotations in an ``if TYPE_CHECKING:`` block of its class, what it calls in the
other groups (at run time the groups are plain classes, so method lookup costs nothing more).
"""
from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any, Iterable, Optional, Protocol

from freeq import __version__
from freeq.state.channel import OP, VOICE

if TYPE_CHECKING:
    from freeq.config import Config
    from freeq.irc.confusables import NickOwners
    from freeq.irc.ulid import ULIDGenerator
    from freeq.plugins import IServerHook
    from freeq.state.channel import Channel, ChannelTable
    from freeq.state.channel_quota import CreationQuota
    from freeq.state.links import FederationControl
    from freeq.state.masks import LogThrottle
    from freeq.state.throttle import FailureThrottle
    from freeq.state.user import User
    from freeq.store.db import Store

VERSION = f"freeq-{__version__}"
USER_MODES = "Biow"
CHANNEL_MODES = "beIiklmnopstv"


def truncate(text: str, max_bytes: int) -> str:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes without splitting a character."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore")


#: 404 texts for freeq.state.rules.send_refusal's reasons (a message, a reaction).
SEND_REFUSAL = {"n": "Cannot send to channel (no external messages)", "m": "Cannot send to channel (+m)",
                "b": "Cannot send to channel (you're banned)"}


def server_time(now: float) -> str:
    """IRCv3 ``time`` tag value with millisecond precision."""
    # Same rounding as the msgid ULID; ``now - int(now)`` loses a millisecond to float error.
    secs, ms = divmod(int(now * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


def prefix_chars(status: int, multi: bool) -> str:
    """The NAMES/WHO/WHOIS prefix of a channel status (both ``@+`` with ``multi-prefix``)."""
    if multi:
        return ("@" if status & OP else "") + ("+" if status & VOICE else "")
    if status & OP:
        return "@"
    if status & VOICE:
        return "+"
    return ""


class ServerCore(Protocol):
    """The server's state and the helpers ``server.py`` keeps, as the command groups see them (type-only)."""

    config: "Config"
    store: Optional["Store"]
    clock: Any
    name: str
    hooks: list["IServerHook"]
    federation: Optional["FederationControl"]
    users: dict[str, "User"]
    channels: "ChannelTable"
    connections: set["User"]
    sessions: dict[str, list["User"]]
    nick_owners: "NickOwners"
    registered_count: int
    invisible_count: int
    oper_count: int
    whowas: deque[tuple[str, str, str, str, float]]
    monitors: dict[str, set["User"]]
    ulid: "ULIDGenerator"
    started: Any
    motd: list[str]
    _isupport: list[list[str]]
    mask_refusal_log: "LogThrottle"
    oper_throttle: "FailureThrottle"
    channel_quota: "CreationQuota"
    empty_since: dict[str, float]

    def num(self, user: "User", code: str, *params: str) -> None: ...

    def num_raw(self, user: "User", code: str, *params: str) -> None: ...

    def fail(self, user: "User", command: str, code: str, *context_and_text: str) -> None: ...

    def notice(self, user: "User", text: str) -> None: ...

    def co_members(self, user: "User") -> set["User"]: ...

    def broadcast(self, users: Iterable["User"], data: bytes, cap: Optional[str] = None,
                  fallback: Optional[bytes] = None) -> None: ...

    def close(self, user: "User", reason: str, quit_reason: Optional[str] = None) -> None: ...

    def metric(self, name: str) -> None: ...

    def s2s_notify(self, event: str, *args: Any) -> None: ...

    def group(self, user: "User") -> list["User"]: ...

    def primary_session(self, account: str) -> Optional["User"]: ...

    def _mask_refused(self, user: "User", where: str, mask: str) -> bool: ...

    def _attach_session(self, user: "User", primary: "User") -> None: ...

    # The hook points (defined in server.py: each names the features that act then).
    def on_account_changed(self, user: "User", account: Optional[str]) -> None: ...

    def on_caps_changed(self, user: "User") -> None: ...

    def before_motd(self, user: "User") -> None: ...

    def after_register(self, user: "User") -> None: ...

    def before_names(self, user: "User", chan: "Channel") -> None: ...

    def after_join(self, user: "User", chan: "Channel") -> None: ...

    def after_channels_loaded(self) -> None: ...

    def on_channel_renamed(self, chan: "Channel", old_folded: str) -> None: ...

    def on_channel_gone(self, chan: "Channel") -> None: ...

    def forget_channel(self, chan: "Channel") -> None: ...

    def whois_extra(self, asker: "User", target: "User") -> None: ...


class OverrideRefused(Protocol):
    """The type of ``OperatorCommands._override_refused`` as the channel and mode commands declare it (its
    last argument is optional, which a ``Callable`` cannot say)."""

    def __call__(self, user: "User", chan: "Channel", command: str, refuser: Optional[str] = None) -> bool: ...
