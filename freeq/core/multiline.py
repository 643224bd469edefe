"""IRCv3 ``draft/multiline``: client batches in, one message out (a batch, or plain lines for other clients).

Mixed into :class:`freeq.core.server.IRCServer`. A client's ``BATCH +<ref> draft/multiline <target>``
opens a :class:`freeq.state.multiline.PendingBatch`; ``PRIVMSG``/``NOTICE`` lines tagged ``batch=<ref>``
are handed here by :mod:`freeq.core.messages`; ``BATCH -<ref>`` assembles the body and sends it as one
message: one signature (``+freeq.at/sig`` over the body), one msgid, one history row, one S2S ``msg``
event (``s2s_notify("multiline_message" | "multiline_dm", ...)``). Each recipient gets it rendered by :func:`render_multiline`:
a ``draft/multiline`` batch whose opener carries the sender's prefix, msgid, time and account (the freeq
SDK assembles from the opener), or, without the cap, one ``PRIVMSG`` per line with the msgid on the first.

Bounds: 5 open batches per connection, 100 lines and 40 000 bytes per batch, 60 seconds open at most
(the sweep drops older ones); a broken batch frees its lines at once and the rest of it is dropped
quietly. Disconnecting frees everything (:meth:`MultilineCommands.multiline_forget`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Optional

from twisted.logger import Logger

from freeq.core.shared import server_time
from freeq.irc.names import fold, is_channel
from freeq.irc.parser import Message, build, build_text
from freeq.signing import SIG_TAG
from freeq.state.multiline import (
    CAP, CONCAT_TAGS, INVALID_CODE, MAX_LINES, MAX_OPEN, MAX_REF, OPEN_SECONDS, PendingBatch, Refusal, line_budget,
    shown, split_body,
)
from freeq.state.redaction import drop_stray_actions
from freeq.state.rules import status_target
from freeq.state.user import TC_ACCOUNT, TC_TAGS, TC_TIME, User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
else:
    _Server = object

log = Logger()

#: Tag-class bit (above freeq.state.user's three) for recipients that get the batch form.
_TC_BATCH = 8
_CONCAT_LINE = {CONCAT_TAGS[0]: "", CONCAT_TAGS[1]: ""}


class MultilineSession:
    """One connection's multiline state: its open batches, and the broken ones whose lines are still coming."""

    __slots__ = ("open", "dead")

    def __init__(self) -> None:
        self.open: dict[str, PendingBatch] = {}
        # ref -> how many more of its lines are dropped without a token or a reply (bounded like a batch)
        self.dead: dict[str, int] = {}

    def kill(self, ref: str) -> None:
        """Forget a batch's lines; the rest of it (up to a batch's worth of lines) is dropped quietly."""
        self.open.pop(ref, None)
        if len(self.dead) >= MAX_OPEN:
            self.dead.pop(next(iter(self.dead)))
        self.dead[ref] = MAX_LINES + 1


def wants_batch(user: User) -> bool:
    """Whether ``user`` gets multiline messages as a batch (``draft/multiline`` and ``batch``)."""
    caps = user.caps
    return CAP in caps and "batch" in caps


def render_multiline(source: str, command: str, target: str, body: str, opener_tags: dict[str, str],
                     line_tags: dict[str, str], batch_ref: Optional[str], outer: Optional[str] = None) -> bytes:
    """One multiline message, as the bytes one recipient gets.

    ``batch_ref`` set: a ``draft/multiline`` batch; the opener carries ``opener_tags`` (msgid, time,
    account, client tags) and the sender's prefix, each line ``batch=<ref>`` and, on continuations, both
    concat tag spellings. ``batch_ref`` ``None``: one line per non-blank piece, the first with
    ``opener_tags``, the others with ``line_tags`` (time, account: never a second msgid). ``outer``
    nests everything in an enclosing batch (CHATHISTORY).
    """
    pieces = split_body(body, line_budget(source, command, target))
    out: list[bytes] = []
    if batch_ref is not None:
        tags = dict(opener_tags)
        if outer is not None:
            tags["batch"] = outer
        out.append(build(source, "BATCH", "+" + batch_ref, CAP, target, tags=tags))
        plain = {"batch": batch_ref}
        concat = dict(_CONCAT_LINE, batch=batch_ref)
        for text, cont in pieces:
            out.append(build_text(source, command, target, text, tags=concat if cont else plain))
        out.append(build(source, "BATCH", "-" + batch_ref, tags={"batch": outer} if outer is not None else None))
        return b"".join(out)
    first = True
    for text, _cont in pieces:
        if not text:
            continue
        tags = dict(opener_tags if first else line_tags)
        if outer is not None:
            tags["batch"] = outer
        out.append(build_text(source, command, target, text, tags=tags or None))
        first = False
    return b"".join(out)


class MultilineCommands(_Server):
    """``BATCH`` (``draft/multiline``), the lines of open batches, and multiline fan-out."""

    if TYPE_CHECKING:  # what this group calls in the other groups
        signature_tag: Callable[[User, str, str, str, Optional[str], float], Optional[str]]  # identity
        _hook_message: Callable[[User, str, str, str], Optional[str]]  # messages
        _channel_message: Callable[..., None]  # messages
        _private_message: Callable[..., None]  # messages
        write_unlabelled: Callable[[User, bytes], None]  # server
        current_label: Optional[str]  # server

    def _multiline_sessions(self) -> dict[User, MultilineSession]:
        sessions: Optional[dict[User, MultilineSession]] = self.__dict__.get("_multiline")
        if sessions is None:
            sessions = self.__dict__["_multiline"] = {}
        return sessions

    # -- the connection's questions -------------------------------------------------------------
    def in_multiline_batch(self, user: Optional[User], msg: Message) -> bool:
        """Whether ``msg`` belongs to a multiline batch ``user`` has open (or just broke): such lines cost
        no flood tokens, the opener did (a batch is bounded by its own limits)."""
        session = self._multiline_sessions().get(user) if user is not None else None
        if session is None:
            return False
        if msg.command == "BATCH":
            ref = msg.params[0][1:] if msg.params and msg.params[0][:1] == "-" else None
        elif msg.command in ("PRIVMSG", "NOTICE") and msg.tags:
            ref = msg.tags.get("batch")
        else:
            return False
        return ref is not None and (ref in session.open or session.dead.get(ref, 0) > 0)

    def multiline_forget(self, user: User) -> None:
        """The connection is gone: free its batches."""
        self._multiline_sessions().pop(user, None)

    def expire_multiline(self, now: float) -> None:
        """Drop batches open longer than :data:`OPEN_SECONDS` (the sweep calls this)."""
        sessions = self._multiline_sessions()
        for user, session in list(sessions.items()):
            for ref, batch in list(session.open.items()):
                if now - batch.opened >= OPEN_SECONDS:
                    session.kill(ref)
                    log.info("dropped a multiline batch from {nick} open for {seconds} seconds",
                             nick=user.nick, seconds=int(now - batch.opened))
                    self.fail(user, "BATCH", INVALID_CODE, "Multiline batch timed out")
            if not session.open:
                del sessions[user]

    # -- BATCH ------------------------------------------------------------------------------------
    def irc_BATCH(self, user: User, msg: Message) -> None:
        p = msg.params
        if not p or len(p[0]) < 2 or p[0][0] not in "+-":
            self.fail(user, "BATCH", "NEED_MORE_PARAMS", "BATCH", "Missing or invalid batch reference")
            return
        ref = p[0][1:]
        if p[0][0] == "-":
            self._close_batch(user, ref)
            return
        if len(p) < 2 or p[1] != CAP:
            self.fail(user, "BATCH", "INVALID_TYPE", shown(p[1]) if len(p) > 1 else "*", "Unsupported batch type")
            return
        if not wants_batch(user):
            self.fail(user, "BATCH", INVALID_CODE, "Negotiate draft/multiline and batch first")
            return
        if len(p) < 3 or shown(p[2]) != p[2] or "," in p[2]:
            self.fail(user, "BATCH", "MULTILINE_INVALID_TARGET", shown(p[2]) if len(p) > 2 else "*",
                      "A multiline batch has one target")
            return
        if len(ref) > MAX_REF or "\\" in ref or ";" in ref:
            self.fail(user, "BATCH", INVALID_CODE, "Invalid batch reference")
            return
        now = self.clock.seconds()
        sessions = self._multiline_sessions()
        session = sessions.get(user)
        if session is None:
            session = sessions[user] = MultilineSession()
        if ref in session.open:
            self.fail(user, "BATCH", INVALID_CODE, "Batch reference already open")
            return
        if len(session.open) >= MAX_OPEN:
            self.fail(user, "BATCH", INVALID_CODE, f"Too many open multiline batches (at most {MAX_OPEN})")
            session.kill(ref)
            return
        session.dead.pop(ref, None)
        tags = {k: v for k, v in msg.tags.items() if k[:1] == "+"} if msg.tags else {}
        drop_stray_actions(tags)  # a multiline message is never an edit, delete or unreact
        target = p[2]
        session.open[ref] = PendingBatch(ref, target, fold(target), now, tags)

    def multiline_line(self, user: User, msg: Message, command: str) -> bool:
        """A ``PRIVMSG``/``NOTICE``/``TAGMSG`` tagged ``batch=``: True when it belongs to a multiline batch of
        ``user`` (kept, or refused with a FAIL); False for any other reference (an ordinary message then)."""
        tags = msg.tags or {}
        ref = tags.get("batch", "")
        session = self._multiline_sessions().get(user)
        batch = session.open.get(ref) if session is not None else None
        if batch is None or session is None:
            if session is not None and ref in session.dead:
                left = session.dead[ref] - 1
                session.dead[ref] = left
                if left <= 0:
                    del session.dead[ref]
                return True
            return False
        p = msg.params
        typed = p[0] if p else ""
        text = p[1] if len(p) > 1 else ""
        concat = CONCAT_TAGS[0] in tags or CONCAT_TAGS[1] in tags
        try:
            batch.add(command, fold(typed), typed, text, concat)
        except Refusal as refusal:
            session.kill(ref)
            self.fail(user, "BATCH", refusal.code, *refusal.params)
        return True

    def _close_batch(self, user: User, ref: str) -> None:
        sessions = self._multiline_sessions()
        session = sessions.get(user)
        batch = session.open.pop(ref, None) if session is not None else None
        if session is not None and batch is None and session.dead.pop(ref, None) is not None:
            if not session.open and not session.dead:
                del sessions[user]
            return  # a broken batch ends quietly: its FAIL was sent when it broke
        if session is None or batch is None:
            self.fail(user, "BATCH", INVALID_CODE, "No such open batch")
            return
        if not session.open and not session.dead:
            del sessions[user]
        try:
            body = batch.body()
        except Refusal as refusal:
            self.fail(user, "BATCH", refusal.code, *refusal.params)
            return
        assert batch.command is not None
        self._send_multiline(user, batch.command, batch.target, body, batch.tags)

    # -- sending ------------------------------------------------------------------------------------
    def _send_multiline(self, user: User, command: str, target: str, body: str, opener_tags: dict[str, str]) -> None:
        """The assembled message, sent as ``_message`` sends one line: hooks, signature, channel or user."""
        notice = command == "NOTICE"
        now = self.clock.seconds()
        user.last_spoke = user.last_active
        client_tags = dict(opener_tags)
        client_sig = client_tags.pop(SIG_TAG, None)
        if self.hooks:
            reason = self._hook_message(user, command, target, body)
            if reason:
                if not notice:
                    self.num(user, "404", target, reason)
                return
        status_min, name = status_target(target)
        if user.account:
            sig = self.signature_tag(user, fold(name) if is_channel(name) else name, name, body, client_sig, now)
            if sig:
                client_tags[SIG_TAG] = sig
        if is_channel(name):
            self._channel_message(user, command, target, name, status_min, body, client_tags, notice, now,
                                  multiline=True)
        else:
            self._private_message(user, command, target, body, client_tags, notice, now, multiline=True)

    def deliver_multiline(self, sender: User, command: str, target: str, body: str, client_tags: dict[str, str],
                          recipients: Iterable[User], to_self: bool = False, msgid: Optional[str] = None,
                          now: Optional[float] = None) -> str:
        """Fan one multiline message out, as :meth:`deliver` does one line: rendered once per tag class and
        form (batch or plain lines), the sender skipped unless it asked for ``echo-message``."""
        self.metric("messages")
        if now is None:
            now = self.clock.seconds()
        msgid = msgid or self.ulid.new()
        ref = "ml" + self.ulid.new()[-12:]
        source = sender.hostmask
        variants: dict[int, bytes] = {}

        def render(key: int) -> bytes:
            opener: dict[str, str] = {}
            line: dict[str, str] = {}
            if key & TC_TAGS:
                opener.update(client_tags)
                opener["msgid"] = msgid
                if sender.is_bot:
                    opener["bot"] = line["bot"] = ""
            if key & TC_TIME or key & _TC_BATCH:
                opener["time"] = line["time"] = server_time(now)
            if key & (TC_ACCOUNT | _TC_BATCH) and sender.account:
                opener["account"] = line["account"] = sender.account
            if key & _TC_BATCH:
                opener["msgid"] = msgid
            return render_multiline(source, command, target, body, opener, line,
                                    ref if key & _TC_BATCH else None)

        def send(u: User) -> None:
            key = u.tagclass | (_TC_BATCH if wants_batch(u) else 0)
            data = variants.get(key)
            if data is None:
                data = variants[key] = render(key)
            u.write(data)

        for u in recipients:
            if u is not sender:
                send(u)
        echo = "echo-message" in sender.caps
        copies = (1 if to_self or echo else 0) + (1 if to_self and echo else 0)  # to oneself: delivery and echo
        if copies:
            key = sender.tagclass | (_TC_BATCH if wants_batch(sender) else 0)
            data = variants.get(key) or render(key)
            for _ in range(copies):
                if self.current_label is not None:
                    # A labelled BATCH -: the echo is a batch of its own, never folded into a labelled reply
                    # (whose batch tag would clash with the multiline one); the command itself gets ACK.
                    self.write_unlabelled(sender, data)
                else:
                    sender.write(data)
        return msgid

    def multiline_history_line(self, user: User, source: str, command: str, target: str, body: str,
                               opener: dict[str, str], line: dict[str, str], outer: Optional[str]) -> bytes:
        """A stored multiline message replayed to ``user`` (CHATHISTORY), nested in batch ``outer``."""
        ref = "ml" + self.ulid.new()[-12:] if wants_batch(user) else None
        return render_multiline(source, command, target, body, opener, line, ref, outer)
