"""Nick and channel name rules and case folding (CASEMAPPING=ascii)."""
from __future__ import annotations

import unicodedata
from typing import Optional

_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

#: Characters never allowed in a nick (besides controls and whitespace).
_NICK_FORBIDDEN = set(" ,*?!@#&:$%+~.\x00") - {"."}  # dots are allowed: AT Protocol handles
_NICK_FIRST_FORBIDDEN = set("-0123456789")
_CHAN_FORBIDDEN = set(" ,\x07\x00\r\n")
CHANTYPES = "#&"


def fold(name: str) -> str:
    """Case-fold a nick or channel name with the ``ascii`` casemapping."""
    return name.translate(_FOLD)


#: Unicode general categories never allowed in a nick: controls, format characters (zero-width
#: space, soft hyphen, joiners, bidi controls), surrogates, private use, unassigned code points,
#: and every kind of space or line/paragraph separator.
_NICK_BAD_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"))

#: Default_Ignorable_Code_Point ranges (Unicode 15 DerivedCoreProperties) plus the blank braille
#: pattern: code points that render as nothing (or as blank) although their category is a letter
#: or a mark (Hangul fillers, variation selectors, the combining grapheme joiner, ...).
_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x2800, 0x2800),
    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)

#: Combining marks allowed in a row (Vietnamese needs two in NFD; "Zalgo" text stacks dozens).
MAX_COMBINING_RUN = 3


def _invisible(code: int) -> bool:
    for low, high in _INVISIBLE_RANGES:
        if code < low:
            return False
        if code <= high:
            return True
    return False


def nick_problem(nick: str, maxlen: int) -> Optional[str]:
    """Why ``nick`` is refused (the text of the 432 reply), or ``None`` if it is acceptable.

    Acceptable: 1..maxlen bytes of UTF-8, no IRC syntax characters, not starting with a digit,
    ``-`` or a channel prefix. Dots and non-ASCII letters are allowed so AT Protocol handles such
    as ``alice.bsky.social`` (and ``café``) are valid nicks. Characters that are invisible or
    change how others render the nick are refused (issue #10 item 10): controls, format
    characters (category Cf: zero-width space, soft hyphen, ZWJ/ZWNJ, bidi controls), spaces and
    separators, private-use and unassigned code points, default-ignorable code points (Hangul
    fillers, variation selectors), a combining mark first or more than ``MAX_COMBINING_RUN`` in a
    row. U+FFFD (what undecodable bytes become) is refused too.
    """
    if not nick or len(nick.encode("utf-8")) > maxlen:
        return "Erroneous nickname"
    if nick[0] in _NICK_FIRST_FORBIDDEN or nick[0] in CHANTYPES:
        return "Erroneous nickname"
    for ch in nick:
        if ch in _NICK_FORBIDDEN or ord(ch) < 0x21 or ord(ch) == 0x7F:
            return "Erroneous nickname"
    if nick.isascii():
        return None
    run = 0
    for i, ch in enumerate(nick):
        code = ord(ch)
        if code < 0x80:
            run = 0
            continue
        category = unicodedata.category(ch)
        if category in _NICK_BAD_CATEGORIES or _invisible(code) or ch == "\ufffd":
            return f"Erroneous nickname: U+{code:04X} is an invisible, control or formatting character"
        if category[0] == "M":
            run += 1
            if i == 0:
                return "Erroneous nickname: starts with a combining mark"
            if run > MAX_COMBINING_RUN:
                return f"Erroneous nickname: more than {MAX_COMBINING_RUN} combining marks in a row"
        else:
            run = 0
    return None


def valid_nick(nick: str, maxlen: int) -> bool:
    """Whether ``nick`` is acceptable (see :func:`nick_problem`)."""
    return nick_problem(nick, maxlen) is None


def valid_channel(name: str, maxlen: int) -> bool:
    """Whether ``name`` is a valid channel name: a CHANTYPES prefix, then 1+ allowed characters."""
    if len(name) < 2 or name[0] not in CHANTYPES:
        return False
    if len(name.encode("utf-8")) > maxlen:
        return False
    for ch in name:
        if ch in _CHAN_FORBIDDEN or ord(ch) < 0x20:
            return False
    return True


def is_channel(target: str) -> bool:
    """Whether a target names a channel (by its prefix)."""
    return bool(target) and target[0] in CHANTYPES
