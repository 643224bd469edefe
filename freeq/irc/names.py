"""Nick and channel name rules and case folding (CASEMAPPING=ascii)."""
from __future__ import annotations

_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

#: Characters never allowed in a nick (besides controls and whitespace).
_NICK_FORBIDDEN = set(" ,*?!@#&:$%+~.\x00") - {"."}  # dots are allowed: AT Protocol handles
_NICK_FIRST_FORBIDDEN = set("-0123456789")
_CHAN_FORBIDDEN = set(" ,\x07\x00\r\n")
CHANTYPES = "#&"


def fold(name: str) -> str:
    """Case-fold a nick or channel name with the ``ascii`` casemapping."""
    return name.translate(_FOLD)


def valid_nick(nick: str, maxlen: int) -> bool:
    """Whether ``nick`` is acceptable: 1..maxlen bytes, no controls, no IRC syntax characters.

    Dots and non-ASCII letters are allowed so AT Protocol handles such as
    ``alice.bsky.social`` (and ``café``) are valid nicks; a leading digit or
    ``-`` is not (it would be confused with numerics and options).
    """
    if not nick or len(nick.encode("utf-8")) > maxlen:
        return False
    if nick[0] in _NICK_FIRST_FORBIDDEN or nick[0] in CHANTYPES:
        return False
    for ch in nick:
        if ch in _NICK_FORBIDDEN or ord(ch) < 0x21 or 0x7F <= ord(ch) <= 0x9F or ch == "\ufffd":
            return False
    return True


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
