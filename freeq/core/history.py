"""IRCv3 ``draft/chathistory``: the CHATHISTORY command over the store.

Access rule: a channel's history only for its current members; a private conversation only to
its two parties, and only between DID-authenticated users (guest nicks are ephemeral, so guest
DMs are never stored). Results are bounded by ``MAX_LIMIT`` and wrapped in a ``batch`` for
clients that negotiated it. ``draft/event-playback`` is deliberately not offered: JOIN/PART/
MODE events are not stored, so history holds PRIVMSG and NOTICE only.
"""
from __future__ import annotations

import calendar
import re
import time
from typing import TYPE_CHECKING, Any, Optional

from twisted.logger import Logger

from freeq.core.multiline import wants_batch
from freeq.irc.names import fold, is_channel
from freeq.irc.parser import Message, build, build_text
from freeq.state.rules import dm_key

if TYPE_CHECKING:
    from freeq.core.server import IRCServer
    from freeq.state.user import User
    from freeq.store.db import StoredMessage

log = Logger()

MAX_LIMIT = 100
_TS = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?Z?\Z")
_SUBCOMMANDS = ("LATEST", "BEFORE", "AFTER", "AROUND", "BETWEEN", "TARGETS")


def parse_timestamp(text: str) -> Optional[int]:
    """``YYYY-MM-DDThh:mm:ss[.sss]Z`` -> Unix milliseconds, or None."""
    m = _TS.match(text)
    if not m:
        return None
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s), 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    ms = int((frac or "0").ljust(3, "0")[:3])
    return secs * 1000 + ms


def format_ms(ms: int) -> str:
    """Unix milliseconds -> IRCv3 timestamp."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def parse_ref(text: str, allow_star: bool = False) -> Any:
    """A message reference: ``timestamp=...`` -> ms, ``msgid=...`` -> ("msgid", id), ``*`` -> None.

    Returns the string ``"invalid"`` for anything else.
    """
    if text == "*" and allow_star:
        return None
    kind, _, value = text.partition("=")
    if kind == "timestamp":
        ms = parse_timestamp(value)
        return ms if ms is not None else "invalid"
    if kind == "msgid" and value and len(value) <= 64:
        return ("msgid", value)
    return "invalid"


class HistoryCommands:
    """Mixed into :class:`IRCServer`: the CHATHISTORY command."""

    def irc_CHATHISTORY(self: "IRCServer", user: "User", msg: Message) -> Any:  # type: ignore[misc]
        p = msg.params
        if not p:
            self.fail(user, "CHATHISTORY", "NEED_MORE_PARAMS", "CHATHISTORY", "Missing parameters")
            return None
        sub = p[0].upper()
        if sub not in _SUBCOMMANDS:
            self.fail(user, "CHATHISTORY", "INVALID_PARAMS", sub, "Unknown subcommand")
            return None
        need = {"BETWEEN": 5, "TARGETS": 4}.get(sub, 4)
        if len(p) < need:
            self.fail(user, "CHATHISTORY", "NEED_MORE_PARAMS", sub, "Missing parameters")
            return None
        try:
            limit = int(p[need - 1])
        except ValueError:
            limit = -1
        if limit < 0:
            self.fail(user, "CHATHISTORY", "INVALID_PARAMS", sub, p[need - 1], "Invalid limit")
            return None
        limit = min(limit or MAX_LIMIT, MAX_LIMIT)
        if self.store is None:
            self._history_batch(user, p[1] if sub != "TARGETS" else "*", [], sub)
            return None
        label = self.current_label
        if sub == "TARGETS":
            a, b = parse_ref(p[1]), parse_ref(p[2])
            if not isinstance(a, int) or not isinstance(b, int):
                self.fail(user, "CHATHISTORY", "INVALID_PARAMS", sub, "Timestamps are required")
                return None
            chans = [c.folded for c in user.channels.values()]
            d = self.store.targets(chans, a, b, limit, dm_account=user.account)
            d.addCallback(lambda rows: self._targets_reply(user, rows, label))
            d.addErrback(lambda f: self._history_failed(user, sub, f))
            return d
        target = p[1]
        key = self._history_key(user, target)
        if key is None:
            self.fail(user, "CHATHISTORY", "INVALID_TARGET", sub, target, "Messages could not be retrieved")
            return None
        refs = []
        for i, raw in enumerate(p[2:need - 1]):
            ref = parse_ref(raw, allow_star=(sub == "LATEST"))
            if ref == "invalid":
                self.fail(user, "CHATHISTORY", "INVALID_PARAMS", sub, raw, "Invalid message reference")
                return None
            refs.append(ref)
        # edits, deletes and reactions applied (freeq.store.redaction): deleted messages are left out
        d = self.store.annotated_history(key, sub, tuple(refs), limit)
        d.addCallback(lambda rows: self._history_batch(user, target, rows, sub, label))
        d.addErrback(lambda f: self._history_failed(user, sub, f))
        return d

    def _history_key(self: "IRCServer", user: "User", target: str) -> Optional[str]:  # type: ignore[misc]
        if is_channel(target):
            chan = self.channels.get(fold(target))
            if chan is None or user not in chan.members:
                return None
            return chan.folded
        if not user.account:
            return None
        other = self.users.get(fold(target))
        account = other.account if other is not None else None
        if account is None:
            owner = self.nick_owners.get(fold(target))
            account = owner[1] if owner else None
        if account is None:
            return None
        return dm_key(user.account, account)

    def _history_failed(self: "IRCServer", user: "User", sub: str, failure: Any) -> None:  # type: ignore[misc]
        log.failure("CHATHISTORY {sub} failed for {nick}", failure, sub=sub, nick=user.nick)
        if user in self.connections:
            self.fail(user, "CHATHISTORY", "MESSAGE_ERROR", sub, "Messages could not be retrieved")

    def _open_batch(self: "IRCServer", user: "User", kind: str, arg: Optional[str],  # type: ignore[misc]
                    label: Optional[str], count: int = 0) -> Optional[str]:
        if "batch" not in user.caps:
            if label is not None and "labeled-response" in user.caps and count == 0:
                self._flush_label(user, label, [])  # an empty labelled answer is an ACK
            return None
        ref = self.ulid.new()[-12:]
        tags = {"label": label} if label is not None and "labeled-response" in user.caps else None
        params = ["+" + ref, kind] + ([arg] if arg else [])
        user.write(build(self.name, "BATCH", *params, tags=tags))
        return ref

    def _history_batch(self: "IRCServer", user: "User", target: str, rows: "list[StoredMessage]",  # type: ignore[misc]
                       sub: str, label: Optional[str] = None) -> None:
        if user not in self.connections:
            return
        ref = self._open_batch(user, "chathistory", target, label, len(rows))
        if ref is None and label is not None and len(rows) == 1 and "labeled-response" in user.caps:
            m = rows[0]
            self._flush_label(user, label, [self._history_line(user, m, None)])
            return
        for m in rows:
            user.write(self._history_line(user, m, ref))
        if ref is not None:
            user.write(build(self.name, "BATCH", "-" + ref))

    def _history_line(self: "IRCServer", user: "User", m: "StoredMessage", ref: Optional[str]) -> bytes:  # type: ignore[misc]
        if "\n" in m.text:  # one row of a draft/multiline message: a nested batch, or plain lines
            return self._history_multiline(user, m, ref)
        tags: dict[str, str] = {}
        if ref is not None:
            tags["batch"] = ref
        if "message-tags" in user.caps:
            tags.update(m.tags)
            tags["msgid"] = m.msgid
        if "server-time" in user.caps or ref is not None:
            tags["time"] = format_ms(m.time_ms)
        if "account-tag" in user.caps and m.account:
            tags["account"] = m.account
        return build_text(m.sender, m.command, m.shown_to, m.text, tags=tags or None)

    def _history_multiline(self: "IRCServer", user: "User", m: "StoredMessage",  # type: ignore[misc]
                           ref: Optional[str]) -> bytes:
        """A multiline row as it was delivered live: the opener (or the first line) with msgid and client tags."""
        batch = wants_batch(user)
        opener: dict[str, str] = {}
        line: dict[str, str] = {}
        if "message-tags" in user.caps:
            opener.update(m.tags)
        if "message-tags" in user.caps or batch:
            opener["msgid"] = m.msgid
        if "server-time" in user.caps or ref is not None or batch:
            opener["time"] = line["time"] = format_ms(m.time_ms)
        if ("account-tag" in user.caps or batch) and m.account:
            opener["account"] = line["account"] = m.account
        return self.multiline_history_line(user, m.sender, m.command, m.shown_to, m.text, opener, line, ref)

    def _targets_reply(self: "IRCServer", user: "User", rows: list[tuple[str, str, int]],  # type: ignore[misc]
                       label: Optional[str]) -> None:
        if user not in self.connections:
            return
        ref = self._open_batch(user, "draft/chathistory-targets", None, label, len(rows))
        for key, shown, ms in rows:
            if key.startswith("dm:"):
                name = shown
            else:
                chan = self.channels.get(key)
                name = chan.name if chan is not None else shown
            tags = {"batch": ref} if ref is not None else None
            user.write(build(self.name, "CHATHISTORY", "TARGETS", name, format_ms(ms), tags=tags))
        if ref is not None:
            user.write(build(self.name, "BATCH", "-" + ref))
