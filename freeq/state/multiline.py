"""IRCv3 ``draft/multiline``, the pure part: limits, one client batch being filled, assembly and re-splitting.

A client opens ``BATCH +<ref> draft/multiline <target>``, sends ``PRIVMSG``/``NOTICE`` lines tagged
``batch=<ref>`` (a continuation of the previous line carries ``draft/multiline-concat``, or the freeq
SDK's ``+draft/multiline-concat``) and closes with ``BATCH -<ref>``. The message is the *body*: the
lines joined with ``\\n``, concat lines joined to the previous one without a separator. The body is what is
signed, stored (one history row), federated (one S2S ``msg`` event) and rendered again for each
recipient (:func:`split_body`). Nothing here touches a transport or the clock: time comes in as ``now``.
"""
from __future__ import annotations

from typing import Optional

#: The capability and its advertised limits.
CAP = "draft/multiline"
MAX_BYTES = 40000  # UTF-8 bytes of the assembled body, newlines included
MAX_LINES = 100  # lines of one client batch, concat lines included
CAP_VALUE = f"max-bytes={MAX_BYTES},max-lines={MAX_LINES}"
#: Open batches one connection may hold at once, and how long one may stay open before it is dropped.
MAX_OPEN = 5
OPEN_SECONDS = 60.0
#: Text bytes of one line of an open batch (an ordinary line has 510): the freeq JavaScript SDK sends lines of up to
#: 6400 bytes in a batch, and the reference server reads lines of 8192.
BATCH_LINE_BYTES = 8192
#: The longest batch reference accepted from a client (it only names the batch on that connection).
MAX_REF = 64
#: The concat tag, in the IRCv3 spelling and in the freeq SDK's client-only spelling; both are read and written.
CONCAT_TAGS = ("draft/multiline-concat", "+draft/multiline-concat")

# FAIL BATCH codes
MAX_BYTES_CODE = "MULTILINE_MAX_BYTES"
MAX_LINES_CODE = "MULTILINE_MAX_LINES"
INVALID_TARGET_CODE = "MULTILINE_INVALID_TARGET"
INVALID_CODE = "MULTILINE_INVALID"


class Refusal(Exception):
    """A batch broke a rule: the ``FAIL BATCH`` code, its context parameters and its text."""

    def __init__(self, code: str, *params: str) -> None:
        super().__init__(code, *params)
        self.code = code
        self.params = params


class PendingBatch:
    """One client batch being filled: its target, the opener's client tags and the lines so far."""

    __slots__ = ("ref", "target", "folded_target", "opened", "tags", "command", "parts", "size", "lines")

    def __init__(self, ref: str, target: str, folded_target: str, opened: float, tags: dict[str, str]) -> None:
        self.ref = ref
        self.target = target  # as the client typed it on the opener
        self.folded_target = folded_target
        self.opened = opened
        self.tags = tags  # client-only tags of the opener (the signature among them)
        self.command: Optional[str] = None  # PRIVMSG or NOTICE, fixed by the first line
        self.parts: list[str] = []  # the body in pieces, separators included
        self.size = 0  # UTF-8 bytes of the body so far
        self.lines = 0

    def add(self, command: str, folded_target: str, typed_target: str, text: str, concat: bool) -> None:
        """Add one line, or raise :class:`Refusal` (the batch is then void)."""
        if command not in ("PRIVMSG", "NOTICE") or (self.command is not None and command != self.command):
            raise Refusal(INVALID_CODE, "Multiline batches hold PRIVMSG or NOTICE lines, not both")
        if folded_target != self.folded_target:
            raise Refusal(INVALID_TARGET_CODE, self.target, shown(typed_target), "Multiline target mismatch")
        if concat and not text:
            raise Refusal(INVALID_CODE, "Concatenated line is blank")
        if concat and not self.lines:
            raise Refusal(INVALID_CODE, "The first line of a multiline batch cannot be a concatenation")
        self.lines += 1
        if self.lines > MAX_LINES:
            raise Refusal(MAX_LINES_CODE, str(MAX_LINES), "Too many lines in the multiline batch")
        piece = text if (concat or not self.parts) else "\n" + text
        self.size += len(piece.encode("utf-8"))
        if self.size > MAX_BYTES:
            raise Refusal(MAX_BYTES_CODE, str(MAX_BYTES), "Multiline batch is too long")
        self.command = command
        self.parts.append(piece)

    def body(self) -> str:
        """The assembled message, or raise :class:`Refusal` when it has no line with text."""
        body = "".join(self.parts)
        if self.command is None or not body.replace("\n", "").strip():
            raise Refusal(INVALID_CODE, "Multiline batch has no text")
        return body


def shown(word: str) -> str:
    """``word`` as a middle parameter of a reply: itself when it is one, else ``*``."""
    return word if word and " " not in word and word[0] != ":" else "*"


def body_problem(body: str) -> Optional[str]:
    """Why a multiline body from elsewhere (a peer) cannot be relayed, or ``None``."""
    if "\r" in body or "\0" in body:
        return "CR or NUL in the text"
    if len(body.encode("utf-8")) > MAX_BYTES:
        return "text over max-bytes"
    if body.count("\n") >= MAX_LINES:
        return "more lines than max-lines"
    if not body.replace("\n", "").strip():
        return "no text"
    return None


def split_body(body: str, budget: int) -> list[tuple[str, bool]]:
    """The body as IRC lines of at most ``budget`` UTF-8 bytes: ``(text, concat)`` pairs.

    Each ``\\n``-separated line becomes one line; a longer one is cut into pieces (after a space when
    one falls in the second half of the piece, else at a character boundary), each after the first
    marked ``concat``, so joining them gives the body back byte for byte.
    """
    budget = max(budget, 16)
    out: list[tuple[str, bool]] = []
    for line in body.split("\n"):
        raw = line.encode("utf-8")
        if len(raw) <= budget:
            out.append((line, False))
            continue
        first = True
        while raw:
            if len(raw) <= budget:
                cut = len(raw)
            else:
                cut = budget
                while cut > 0 and (raw[cut] & 0xC0) == 0x80:  # never inside a UTF-8 sequence
                    cut -= 1
                space = raw.rfind(b" ", budget // 2, cut)
                if space >= 0:
                    cut = space + 1
            out.append((raw[:cut].decode("utf-8"), not first))
            raw = raw[cut:]
            first = False
    return out


def line_budget(source: str, command: str, target: str, max_line: int = 512) -> int:
    """Bytes of text that fit in ``:<source> <command> <target> :<text>\\r\\n`` within ``max_line``."""
    overhead = len(source.encode("utf-8")) + len(command) + len(target.encode("utf-8")) + 7
    return max_line - overhead
