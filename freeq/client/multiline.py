"""IRCv3 ``draft/multiline`` for :class:`freeq.client.protocol.FreeqClient`: send and receive multi-line messages.

Sending (:meth:`MultilineCommands.say_multiline`): with ``draft/multiline`` and ``batch`` enabled, one
``BATCH +<ref> draft/multiline <target>`` whose opener carries the ``+freeq.at/sig`` over the whole body
(as the freeq JavaScript SDK does), a ``PRIVMSG`` per line (a line too long for one IRC line continues
with ``draft/multiline-concat``), and ``BATCH -<ref>``; without the caps, one message per line.

Receiving: the lines of a ``draft/multiline`` batch are held until it closes, then published as one
:class:`freeq.client.model.ChatMessage` (``on_message``/``on_notice``) whose text has ``\\n`` between lines,
whose sender is the opener's prefix and whose tags are the opener's (msgid, time, account, signature).
Both concat spellings (``draft/multiline-concat``, ``+draft/multiline-concat``) are read. What is held is
bounded (open batches, lines, bytes), so a misbehaving server cannot grow it without limit.
"""
from __future__ import annotations

import os
from typing import Optional

from freeq.client.commands import ClientCommands
from freeq.irc.parser import Message
from freeq.signing import SIG_TAG
from freeq.state.multiline import CAP, CONCAT_TAGS, MAX_BYTES, MAX_LINES, split_body

#: Text bytes per line we send (the server adds the prefix when it relays; it re-cuts long lines itself).
SEND_LINE_BYTES = 400
#: Inbound bounds: batches assembled at once, and lines and bytes per batch (the server's limits, doubled
#: for the lines a server may cut long ones into).
MAX_INBOUND_BATCHES = 8
MAX_INBOUND_LINES = 4 * MAX_LINES
MAX_INBOUND_BYTES = 2 * MAX_BYTES


def multiline_limits(value: str) -> tuple[int, int]:
    """``max-bytes`` and ``max-lines`` from the capability's value (the defaults where missing or bad)."""
    limits = {"max-bytes": MAX_BYTES, "max-lines": MAX_LINES}
    for item in value.split(","):
        key, _, number = item.partition("=")
        if key in limits and number.isdigit():
            limits[key] = int(number)
    return limits["max-bytes"], limits["max-lines"]


class _Incoming:
    """One server batch being assembled."""

    __slots__ = ("opener", "command", "parts", "size")

    def __init__(self, opener: Message) -> None:
        self.opener = opener
        self.command = "PRIVMSG"
        self.parts: list[str] = []
        self.size = 0


class MultilineCommands(ClientCommands):
    """Multi-line messages: :meth:`say_multiline`, and inbound ``draft/multiline`` batches assembled."""

    _multiline_in: Optional[dict[str, _Incoming]] = None

    @property
    def multiline_enabled(self) -> bool:
        """Whether multi-line messages go out as batches (``draft/multiline`` and ``batch`` enabled)."""
        return CAP in self.caps and "batch" in self.caps

    def say_multiline(self, target: str, text: str, command: str = "PRIVMSG") -> None:
        """Send ``text`` (which may hold newlines) to ``target`` as one message: a ``draft/multiline`` batch,
        signed over the whole text, when the server granted it, else one ``command`` per non-blank line.

        Raises ``ValueError`` when the text is over the server's ``max-bytes``/``max-lines``, or blank.
        """
        if command not in ("PRIVMSG", "NOTICE"):
            raise ValueError("a multiline message is a PRIVMSG or a NOTICE")
        body = text.replace("\r\n", "\n")
        if "\r" in body or "\0" in body:
            raise ValueError("a message cannot contain CR or NUL")
        if not body.replace("\n", "").strip():
            raise ValueError("a multiline message needs some text")
        if not self.multiline_enabled:
            self._chat(command, target, body)
            return
        max_bytes, max_lines = multiline_limits(self.caps_available.get(CAP, ""))
        pieces = split_body(body, SEND_LINE_BYTES)
        if len(body.encode("utf-8")) > max_bytes or len(pieces) > max_lines:
            raise ValueError(f"over the server's multiline limits ({max_bytes} bytes, {max_lines} lines)")
        ref = "ml" + os.urandom(6).hex()
        sig = self.sign(target, body)
        self.send("BATCH", "+" + ref, CAP, target, tags={SIG_TAG: sig} if sig is not None else None)
        plain = {"batch": ref}
        concat = {"batch": ref, CONCAT_TAGS[0]: ""}
        for piece, cont in pieces:
            self.send(command, target, piece, tags=concat if cont else plain)
        self.send("BATCH", "-" + ref)

    def irc_BATCH(self, msg: Message) -> None:
        p = msg.params
        if not p or len(p[0]) < 2:
            return
        ref = p[0][1:]
        held = self._multiline_in
        if p[0][0] == "+":
            if len(p) < 3 or p[1] != CAP:
                return
            if held is None:
                held = self._multiline_in = {}
            if len(held) >= MAX_INBOUND_BATCHES:
                held.pop(next(iter(held)))
            held[ref] = _Incoming(msg)
            return
        batch = held.pop(ref, None) if held else None
        if batch is None or not batch.parts:
            return
        opener = batch.opener
        tags = {k: v for k, v in (opener.tags or {}).items() if k != "batch"}
        assembled = Message(batch.command, [opener.params[2], "".join(batch.parts)], tags=tags, source=opener.source)
        super()._dispatch(assembled)

    def _dispatch(self, msg: Message) -> None:
        held = self._multiline_in
        if held and msg.tags and msg.command in ("PRIVMSG", "NOTICE"):
            batch = held.get(msg.tags.get("batch", ""))
            if batch is not None:
                self._hold(batch, msg, msg.tags.get("batch", ""))
                return
        super()._dispatch(msg)

    def _hold(self, batch: _Incoming, msg: Message, ref: str) -> None:
        text = msg.params[1] if len(msg.params) > 1 else ""
        concat = bool(batch.parts) and any(tag in (msg.tags or {}) for tag in CONCAT_TAGS)
        piece = text if concat or not batch.parts else "\n" + text
        batch.command = msg.command
        batch.size += len(piece)
        if len(batch.parts) >= MAX_INBOUND_LINES or batch.size > MAX_INBOUND_BYTES:
            if self._multiline_in is not None:
                self._multiline_in.pop(ref, None)  # over any sane bound: dropped
            return
        batch.parts.append(piece)
