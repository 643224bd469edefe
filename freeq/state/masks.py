"""Hostmask globs for bans, exceptions and invite exceptions."""
from __future__ import annotations

import re
from typing import Iterable, Optional

from freeq.irc.names import fold


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


def _glob_to_regex(mask: str) -> str:
    out = []
    for ch in fold(mask):
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def compile_masks(masks: Iterable[str]) -> Optional["re.Pattern[str]"]:
    """Compile hostmask globs into one anchored regex over folded ``nick!user@host``.

    DID masks are skipped here; they are matched exactly by :func:`matches_any`.
    Returns ``None`` for an empty list.
    """
    parts = [_glob_to_regex(m) for m in masks if not m.startswith("did:")]
    if not parts:
        return None
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL)


def glob_match(mask: str, text: str) -> bool:
    """Case-insensitive glob match of one mask against ``text``."""
    return re.match(_glob_to_regex(mask) + r"\Z", fold(text), re.DOTALL) is not None
