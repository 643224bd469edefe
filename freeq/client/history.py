"""Labeled requests (``labeled-response``), CHATHISTORY and ``MONITOR`` for
:class:`freeq.client.protocol.FreeqClient`.

:meth:`HistoryCommands.request` sends one command with a fresh ``label`` tag and fires with every line of
the server's answer: one line (or an ``ACK``), or all the lines of the ``labeled-response`` batch (or other
batch) that carries the label, nested batches included. :meth:`HistoryCommands.say_labeled` uses it to learn
the msgid of one's own message from the ``echo-message`` echo. :meth:`HistoryCommands.history` asks for
``CHATHISTORY`` and fires with the messages as :class:`freeq.client.model.ChatMessage` values (a
``draft/multiline`` message assembled into one); lines of ``chathistory`` batches are never published as
live messages. :meth:`HistoryCommands.monitor` adds nicks to the ``MONITOR`` list; with
``extended-monitor`` the server then also sends their ``AWAY``/``ACCOUNT``/``SETNAME`` changes, which
arrive on :attr:`HistoryCommands.on_monitored`.

What is collected is bounded (:data:`MAX_REPLY_LINES` per answer, :data:`MAX_HISTORY_BATCHES` history
batches open at once), so a misbehaving server cannot grow it without limit.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from twisted.internet import defer

from freeq.client.commands import ClientCommands
from freeq.client.errors import ClientError, IRCError
from freeq.client.events import Event
from freeq.client.model import ChatMessage, split_prefix
from freeq.irc.parser import Message
from freeq.signing import SIG_TAG
from freeq.state.multiline import CONCAT_TAGS

#: Most lines one answer may have (the server's CHATHISTORY limit is far below; multiline rows have more).
MAX_REPLY_LINES = 20000
#: ``chathistory`` batches whose lines are kept from live dispatch at once.
MAX_HISTORY_BATCHES = 16
#: How long :meth:`HistoryCommands.request` waits for the answer.
REQUEST_TIMEOUT = 15.0
#: The CHATHISTORY subcommands that take a target.
HISTORY_SUBCOMMANDS = ("LATEST", "BEFORE", "AFTER", "AROUND", "BETWEEN")
#: Commands a monitored user's change arrives as (``extended-monitor``).
MONITORED_COMMANDS = frozenset({"AWAY", "ACCOUNT", "SETNAME", "CHGHOST"})


def new_label() -> str:
    """A fresh label: 12 hex digits."""
    return os.urandom(6).hex()


def history_ref(msgid: Optional[str] = None, time: Optional[str] = None) -> str:
    """The CHATHISTORY reference for a message: ``msgid=<id>`` when known, else ``timestamp=<time>``, else ``*``."""
    if msgid:
        return "msgid=" + msgid
    if time:
        return "timestamp=" + time
    return "*"


class ReplyCollector:
    """Gathers the lines of one answer: :meth:`feed` every line, in order, until it returns ``True``.

    ``starts`` recognises the first line of the answer. A first line that opens a batch (``BATCH +ref``)
    makes the answer every line tagged with that batch or a batch nested in it, up to ``BATCH -ref``; any
    other first line is the whole answer.
    """

    def __init__(self, starts: Callable[[Message], bool], max_lines: int = MAX_REPLY_LINES) -> None:
        self.starts = starts
        self.max_lines = max_lines
        self.lines: list[Message] = []
        self.refs: set[str] = set()
        self.outer: Optional[str] = None
        self.overflowed = False

    def feed(self, msg: Message) -> bool:
        """Take ``msg`` if it belongs to the answer; ``True`` once the answer is complete."""
        p = msg.params
        opens = msg.command == "BATCH" and bool(p) and p[0][:1] == "+" and len(p[0]) > 1
        if self.outer is None:
            if not self.starts(msg):
                return False
            self.lines.append(msg)
            if not opens:
                return True
            self.outer = p[0][1:]
            self.refs.add(self.outer)
            return False
        if msg.command == "BATCH" and p == ["-" + self.outer]:
            self.lines.append(msg)
            return True
        inside = (msg.tags or {}).get("batch") in self.refs
        closes_inner = msg.command == "BATCH" and bool(p) and p[0][:1] == "-" and p[0][1:] in self.refs
        if not inside and not closes_inner:
            return False
        if len(self.lines) >= self.max_lines:
            self.overflowed = True
            return False
        self.lines.append(msg)
        if opens:
            self.refs.add(p[0][1:])
        return False


def history_messages(lines: list[Message]) -> list[ChatMessage]:
    """The messages of a CHATHISTORY answer (the lines :class:`ReplyCollector` gathered), oldest first.

    ``PRIVMSG``/``NOTICE`` lines become :class:`ChatMessage` values with their tags (``batch`` removed); the
    lines of a nested ``draft/multiline`` batch become one message whose text has ``\\n`` between lines (and
    no break where a line carries a concat tag) and whose tags and sender are the opener's.
    """
    out: list[Optional[ChatMessage]] = []
    #: nested batch ref -> [opener, command, text pieces, position in ``out``]
    multiline: dict[str, list[Any]] = {}
    for msg in lines:
        p = msg.params
        if msg.command == "BATCH" and p and len(p[0]) > 1:
            ref = p[0][1:]
            if p[0][0] == "+" and len(p) >= 3 and p[1] == "draft/multiline":
                multiline[ref] = [msg, "PRIVMSG", [], len(out)]
                out.append(None)  # filled in when the batch closes, where it opened
            elif p[0][0] == "-" and ref in multiline:
                opener, command, parts, position = multiline.pop(ref)
                out[position] = _chat(opener, command, opener.params[2], "".join(parts))
            continue
        if msg.command not in ("PRIVMSG", "NOTICE") or len(p) < 2:
            continue
        held = multiline.get((msg.tags or {}).get("batch", ""))
        if held is not None:
            parts = held[2]
            concat = bool(parts) and any(tag in (msg.tags or {}) for tag in CONCAT_TAGS)
            parts.append(p[1] if concat or not parts else "\n" + p[1])
            held[1] = msg.command
            continue
        out.append(_chat(msg, msg.command, p[0], p[1]))
    return [m for m in out if m is not None and m.text]


def _chat(msg: Message, command: str, target: str, text: str, own: bool = False) -> ChatMessage:
    nick, _user, _host = split_prefix(msg.source)
    tags = {k: v for k, v in (msg.tags or {}).items() if k != "batch"}
    channel = target.lstrip("~@%+")  # a STATUSMSG target (@#chan) names its channel
    reply_to = channel if channel[:1] and channel[0] in "#&" else nick
    return ChatMessage(command, msg.source or "", nick, target, text, tags, reply_to, own)


class HistoryCommands(ClientCommands):
    """``request`` (labeled-response), ``say_labeled``, ``history`` (CHATHISTORY) and ``monitor``."""

    _history_refs: Optional[set[str]] = None
    _on_monitored: Optional[Event[Message]] = None
    _monitored: Optional[dict[str, bool]] = None

    @property
    def on_monitored(self) -> Event[Message]:
        """``AWAY``/``ACCOUNT``/``SETNAME``/``CHGHOST`` lines about other users (``extended-monitor`` sends
        those of monitored nicks that share no channel with us)."""
        if self._on_monitored is None:
            self._on_monitored = Event("monitored", self.clock)
        return self._on_monitored

    # ------------------------------------------------------------------
    # Labeled requests
    # ------------------------------------------------------------------
    def request(self, command: str, *params: str, tags: Optional[dict[str, str]] = None,
                timeout: float = REQUEST_TIMEOUT) -> defer.Deferred:
        """Send ``command`` with a fresh ``label`` and fire with the lines of the answer (a list of
        :class:`Message`; ``[ACK]`` when the server had nothing to say). Needs ``labeled-response``
        (fails with :class:`ClientError` without it)."""
        if "labeled-response" not in self.caps:
            return defer.fail(ClientError("the server did not grant labeled-response"))
        label = new_label()
        collector = ReplyCollector(lambda m: (m.tags or {}).get("label") == label)
        d = self._collect(collector, timeout)
        self.send(command, *params, tags=dict(tags or {}, label=label))
        return d

    def _collect(self, collector: ReplyCollector, timeout: float) -> defer.Deferred:
        """Fire with ``collector.lines`` once it has the whole answer (on_raw sees every line in order)."""
        d = self.on_raw.wait(collector.feed, timeout=timeout)
        return d.addCallback(lambda _last: collector.lines)

    def say_labeled(self, target: str, text: str, tags: Optional[dict[str, str]] = None) -> defer.Deferred:
        """``PRIVMSG`` one line of ``text`` (signed like :meth:`say`) as a labeled request; fires with our
        message as the server echoed it (a :class:`ChatMessage` with its ``msgid``), or ``None`` when the
        server only acknowledged it (no ``echo-message``). Fails with :class:`IRCError` on an error reply."""
        if "\n" in text or "\r" in text:
            raise ValueError("say_labeled sends one line")
        tags = dict(tags or {})
        sig = self.sign(target, text)
        if sig is not None:
            tags[SIG_TAG] = sig

        def echoed(lines: list[Message]) -> Optional[ChatMessage]:
            for line in lines:
                if line.command in ("PRIVMSG", "NOTICE") and len(line.params) > 1 and self._from_me(line):
                    return _chat(line, line.command, line.params[0], line.params[1], own=True)
            for line in lines:
                if line.command == "FAIL" or (line.command.isdigit() and line.command[0] in "45"):
                    raise IRCError(line.command, list(line.params))
            return None

        return self.request("PRIVMSG", target, text, tags=tags or None).addCallback(echoed)

    def _from_me(self, line: Message) -> bool:
        nick, _u, _h = split_prefix(line.source)
        return bool(nick) and self.is_me(nick)

    # ------------------------------------------------------------------
    # CHATHISTORY
    # ------------------------------------------------------------------
    def history(self, target: str, sub: str = "LATEST", ref: str = "*", limit: int = 100,
                ref2: Optional[str] = None, timeout: float = REQUEST_TIMEOUT) -> defer.Deferred:
        """``CHATHISTORY <sub> <target> <ref> [<ref2>] <limit>``; fires with the messages (oldest first,
        multiline ones assembled, edits/reactions as the server's tags show them), fails with
        :class:`IRCError` on ``FAIL CHATHISTORY``. Needs ``batch`` (and ``draft/chathistory``)."""
        sub = sub.upper()
        if sub not in HISTORY_SUBCOMMANDS:
            raise ValueError(f"unknown CHATHISTORY subcommand {sub!r}")
        if (sub == "BETWEEN") != (ref2 is not None):
            raise ValueError("BETWEEN takes two references, the others one")
        if "batch" not in self.caps:
            return defer.fail(ClientError("the server did not grant batch"))
        params = [sub, target, ref] + ([ref2] if ref2 is not None else []) + [str(int(limit))]
        key = self.fold(target)

        def starts(m: Message) -> bool:
            if m.command == "FAIL":
                return m.params[:1] == ["CHATHISTORY"]
            return (m.command == "BATCH" and len(m.params) >= 3 and m.params[0][:1] == "+"
                    and m.params[1] == "chathistory" and self.fold(m.params[2]) == key)

        collector = ReplyCollector(starts)
        d = self._collect(collector, timeout)

        def done(lines: list[Message]) -> list[ChatMessage]:
            if lines and lines[0].command == "FAIL":
                raise IRCError("FAIL", list(lines[0].params))
            return history_messages(lines)

        self.send("CHATHISTORY", *params)
        return d.addCallback(done)

    def _dispatch(self, msg: Message) -> None:
        refs = self._history_refs
        p = msg.params
        if msg.command == "BATCH" and p and len(p[0]) > 1:
            if p[0][0] == "+" and len(p) >= 2 and p[1] == "chathistory":
                if refs is None:
                    refs = self._history_refs = set()
                if len(refs) < MAX_HISTORY_BATCHES:
                    refs.add(p[0][1:])
                return
            if refs and p[0][0] == "+" and (msg.tags or {}).get("batch") in refs:
                refs.add(p[0][1:])  # nested (a multiline row): kept out of live dispatch too
                return
            if refs and p[0][0] == "-" and p[0][1:] in refs:
                refs.discard(p[0][1:])
                return
        if refs and msg.tags and msg.tags.get("batch") in refs:
            return  # a history line: answered through history(), never shown as a live message
        if msg.command in MONITORED_COMMANDS:
            self.on_monitored.fire(msg)
        elif msg.command in ("730", "731"):
            self._monitor_status(msg)
        super()._dispatch(msg)

    # ------------------------------------------------------------------
    # MONITOR
    # ------------------------------------------------------------------
    @property
    def monitored(self) -> dict[str, bool]:
        """Nick -> online?, for the nicks this client monitors, as the server last said (730/731)."""
        if self._monitored is None:
            self._monitored = {}
        return self._monitored

    def monitor(self, *nicks: str, timeout: float = REQUEST_TIMEOUT) -> defer.Deferred:
        """``MONITOR + <nicks>``; fires with {nick: online?} once the server said where each new one is
        (730 online, 731 offline; nicks already monitored answer from :attr:`monitored`), fails with
        :class:`IRCError` on 734 (list full)."""
        if not nicks or any("," in n or " " in n or not n for n in nicks):
            return defer.fail(ValueError("name nicks (no commas or spaces)"))
        known = {self.fold(n): n for n in self.monitored}
        wanted = {self.fold(n): n for n in nicks if self.fold(n) not in known}

        def answer() -> dict[str, bool]:
            by_fold = {self.fold(n): online for n, online in self.monitored.items()}
            return {n: by_fold.get(self.fold(n), False) for n in nicks}

        def matches(m: Message) -> bool:
            if m.command == "734":
                return True
            if m.command in ("730", "731") and len(m.params) > 1:
                for item in m.params[-1].split(","):
                    wanted.pop(self.fold(item.split("!", 1)[0]), None)
            return not wanted

        def done(m: Message) -> dict[str, bool]:
            if m.command == "734":
                raise IRCError(m.command, list(m.params))
            return answer()

        if not wanted:
            return defer.succeed(answer())
        d: Any = self.on_raw.wait(matches, timeout=timeout)
        self.send("MONITOR", "+", ",".join(wanted.values()))
        return d.addCallback(done)

    def _monitor_status(self, msg: Message) -> None:
        """Remember what a 730/731 says (bounded by the server's MONITOR limit; we keep at most 1000)."""
        if len(msg.params) < 2:
            return
        online = msg.command == "730"
        table = self.monitored
        for item in msg.params[-1].split(","):
            nick = item.split("!", 1)[0]
            if not nick:
                continue
            for known in [k for k in table if self.fold(k) == self.fold(nick)]:
                del table[known]
            if len(table) < 1000:
                table[nick] = online
