"""Hostmask globs for bans, exceptions, invite exceptions and the WHO/LIST/LINKS filters.

A glob has two wildcards: ``*`` (any run of characters, also none) and ``?`` (exactly one
character); there is no escape character, so ``\\`` is an ordinary character. Matching is
case-insensitive under the server's ``ascii`` casemapping.

Globs are matched in linear-time pieces, never by a backtracking regex (issue #10 item 1: a
``.*``-per-star regex took minutes for ``*a*a*a*a*a*a*a*a*b`` against 200 ``a``). A compiled
:class:`Glob` splits the folded mask at its stars into fixed-length segments; the first must be
a prefix of the text, the last a suffix, and the ones between are found left to right, each at
its earliest place after the previous one. Taking the earliest place is always right because
every segment has a fixed length, so this is the classic two-pointer wildcard match (backtrack
to the last star only) with each scan done by ``str.find``: at most O(len(text) * len(mask))
character comparisons, usually one ``startswith``, one ``endswith`` and a ``find`` or two.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Callable, Iterable, Optional, Union

from freeq.irc.names import fold

#: Longest mask accepted from a user (characters, after ``normalize_mask``). It is the length the
#: federation accepts for a list element (:func:`freeq.s2s.state.check_element`) and the length
#: masks were silently cut to before, so every mask a user can set is one every peer applies; a
#: full ``nick!~user@host`` with the longest nick and user still leaves over 100 characters of host.
MAX_MASK_LENGTH = 200

#: Most wildcards (``*`` and ``?`` together) in a mask accepted from a user. Real masks use two
#: to six; the matcher is linear anyway, this keeps each match a handful of ``find`` calls.
MAX_MASK_WILDCARDS = 32


def normalize_mask(mask: str) -> str:
    """Complete a partial mask the way IRC servers do: ``nick`` -> ``nick!*@*``,
    ``user@host`` -> ``*!user@host``, ``nick!user`` -> ``nick!user@*``.
    DID masks (``did:...``, used by the identity layer) are kept verbatim.
    """
    if mask.startswith("did:"):
        return mask
    if "!" not in mask and "@" not in mask:
        if "." in mask or ":" in mask or "/" in mask:
            return "*!*@" + mask
        return mask + "!*@*"
    if "!" not in mask:
        return "*!" + mask
    if "@" not in mask:
        return mask + "@*"
    return mask


def mask_problem(mask: str) -> Optional[str]:
    """Why a user-supplied mask is refused (too long, too many wildcards), or ``None`` if it is fine."""
    if len(mask) > MAX_MASK_LENGTH:
        return f"longer than {MAX_MASK_LENGTH} characters"
    if mask.count("*") + mask.count("?") > MAX_MASK_WILDCARDS:
        return f"more than {MAX_MASK_WILDCARDS} wildcards"
    return None


class LogThrottle:
    """At most one log line per ``interval`` seconds for an event outsiders can repeat at will.

    :meth:`admit` says whether this occurrence gets its line (and how many were held back since
    the last one), so a client sending refused masks in a loop cannot flood the operator's log.
    """

    __slots__ = ("interval", "next_at", "held")

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.next_at = float("-inf")
        self.held = 0

    def admit(self, now: float) -> Optional[int]:
        """The count of occurrences held back before this one if it may be logged now, else ``None``."""
        if now < self.next_at:
            self.held += 1
            return None
        held, self.held = self.held, 0
        self.next_at = now + self.interval
        return held


class _Wild:
    """A fixed-length segment containing ``?``: literal chunks at known offsets."""

    __slots__ = ("length", "chunks", "anchor", "anchor_at")

    def __init__(self, segment: str) -> None:
        self.length = len(segment)
        self.chunks: list[tuple[int, str]] = []
        offset = 0
        for piece in segment.split("?"):
            if piece:
                self.chunks.append((offset, piece))
            offset += len(piece) + 1
        # Search for the longest chunk (the last of equals: "a?a?b" looks for "b") with str.find, then
        # check the others where it puts the segment: at most (text length) x (chunks) comparisons.
        self.anchor_at, self.anchor = max(reversed(self.chunks), key=lambda c: len(c[1]), default=(0, ""))

    def at(self, text: str, pos: int) -> bool:
        """Whether the segment matches ``text`` at ``pos`` (which leaves room for it)."""
        for offset, chunk in self.chunks:
            if not text.startswith(chunk, pos + offset):
                return False
        return True

    def find(self, text: str, start: int, end: int) -> int:
        """The earliest ``pos >= start`` with the segment inside ``text[start:end]`` there, or -1."""
        last = end - self.length
        if last < start:
            return -1
        anchor = self.anchor
        if not anchor:  # only "?": any place with room
            return start
        ahead = self.anchor_at
        stop = last + ahead + len(anchor)
        hit = text.find(anchor, start + ahead, stop)
        while hit >= 0:
            pos = hit - ahead
            if self.at(text, pos):
                return pos
            hit = text.find(anchor, hit + 1, stop)
        return -1


_Segment = Union[str, _Wild]


def _segment(piece: str) -> _Segment:
    return _Wild(piece) if "?" in piece else piece


def fold_text(text: str) -> str:
    """:func:`~freeq.irc.names.fold` for matching: the same ``ascii`` casemapping, at ``str.lower``'s
    C speed for ASCII text (nearly every hostmask), where the translate table costs ~1 us a line."""
    return text.lower() if text.isascii() else fold(text)


class Glob:
    """One mask, folded and split at its stars once; :meth:`match` takes folded text.

    ``shortest``, ``head`` and ``tail`` are a cheap necessary condition (enough characters, the
    literal prefix before the first wildcard, the literal suffix after the last one) that rejects
    most texts with two C calls; ``check`` is the rest of the match, or ``None`` when the mask is
    ``prefix*suffix`` and the condition is already the whole answer.
    """

    __slots__ = ("mask", "folded", "shortest", "head", "tail", "check")

    def __init__(self, mask: str) -> None:
        self.mask = mask
        folded = self.folded = fold_text(mask)
        parts = folded.split("*")
        self.shortest = len(folded) - len(parts) + 1
        self.head = parts[0].split("?", 1)[0]
        self.tail = parts[-1].rsplit("?", 1)[-1] if len(parts) > 1 else ""
        self.check = _rest(parts)

    def match(self, text: str) -> bool:
        """Whether folded ``text`` matches (see :func:`fold_text`)."""
        check = self.check
        return (len(text) >= self.shortest and text.startswith(self.head) and text.endswith(self.tail)
                and (check is None or check(text)))

    def __repr__(self) -> str:
        return f"<Glob {self.mask!r}>"


def _rest(parts: list[str]) -> Optional[Callable[[str], bool]]:
    """The full match of a folded glob split at its stars, or ``None`` for ``prefix*suffix``."""
    if len(parts) == 1:
        only = parts[0]
        if "?" not in only:
            return only.__eq__  # type: ignore[return-value]
        whole = _Wild(only)
        return lambda text: len(text) == whole.length and whole.at(text, 0)
    head, tail = _segment(parts[0]), _segment(parts[-1])
    middles = [_segment(p) for p in parts[1:-1] if p]
    if not middles and isinstance(head, str) and isinstance(tail, str):
        return None
    head_len, tail_len = len(parts[0]), len(parts[-1])
    if isinstance(head, str) and isinstance(tail, str) and all(isinstance(seg, str) for seg in middles):
        literal = [(seg, len(seg)) for seg in middles if isinstance(seg, str)]

        def check_literal(text: str) -> bool:
            # The usual case (no "?"): the ends are checked already, find each middle in order.
            end = len(text) - tail_len
            pos = head_len
            find = text.find
            for seg, size in literal:
                pos = find(seg, pos, end)
                if pos < 0:
                    return False
                pos += size
            return True

        return check_literal

    def check(text: str) -> bool:
        # Called after Glob.match checked the length and the literal ends.
        end = len(text) - tail_len
        if isinstance(head, _Wild) and not head.at(text, 0):
            return False
        if isinstance(tail, _Wild) and not tail.at(text, end):
            return False
        pos = head_len
        for seg in middles:
            if isinstance(seg, str):
                found = text.find(seg, pos, end)
                if found < 0:
                    return False
                pos = found + len(seg)
            else:
                found = seg.find(text, pos, end)
                if found < 0:
                    return False
                pos = found + seg.length
        return True

    return check


_Entry = tuple[int, str, str, Optional[Callable[[str], bool]]]


class MaskSet:
    """A channel list (``+b``/``+e``/``+I``) compiled for matching many times.

    Hostmask globs are matched case-insensitively; DID masks (``did:...``) only exactly, against
    the user's account. Masks without wildcards are one set look-up; the others are filed by the
    first character of their literal prefix (or else the last of their literal suffix), so a text
    is only tried against the globs that could match its first and last characters.
    """

    __slots__ = ("exact", "by_first", "by_last", "anywhere", "dids")

    def __init__(self, masks: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.by_first: dict[str, list[_Entry]] = {}
        self.by_last: dict[str, list[_Entry]] = {}
        self.anywhere: list[_Entry] = []  # "*...*": no literal end to file them by
        self.dids: set[str] = set()
        for mask in masks:
            if mask.startswith("did:"):
                self.dids.add(mask)
                continue
            glob = Glob(mask)
            if "*" not in mask and "?" not in mask:
                self.exact.add(glob.folded)
                continue
            entry = (glob.shortest, glob.head, glob.tail, glob.check)
            if glob.head:
                self.by_first.setdefault(glob.head[0], []).append(entry)
            elif glob.tail:
                self.by_last.setdefault(glob.tail[-1], []).append(entry)
            else:
                self.anywhere.append(entry)

    def matches(self, hostmask: str, account: Optional[str]) -> bool:
        """Whether ``nick!user@host`` (any case) matches a glob, or ``account`` is one of the DIDs."""
        text = fold_text(hostmask)
        if text in self.exact:
            return True
        size = len(text)
        # Glob.match inlined: this runs for every JOIN and every message to a channel with bans.
        for bucket in (self.by_first.get(text[:1]), self.by_last.get(text[-1:]), self.anywhere):
            if bucket:
                for shortest, head, tail, check in bucket:
                    if (size >= shortest and text.startswith(head) and text.endswith(tail)
                            and (check is None or check(text))):
                        return True
        return account is not None and account in self.dids


@lru_cache(maxsize=256)
def compile_glob(mask: str) -> Glob:
    """The compiled :class:`Glob` for ``mask`` (cached: WHO and LIST reuse the same few masks)."""
    return Glob(mask)


def glob_match(mask: str, text: str) -> bool:
    """Case-insensitive glob match of one mask against ``text``."""
    return compile_glob(mask).match(fold_text(text))


def ip_of(text: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    """The address of a connection's IP text (an IPv4-mapped IPv6 address as IPv4, a zone id dropped), ``None``
    if it is none. The one parser of client addresses for K-/D-lines, oper host masks and WebIRC gateways."""
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr
