"""Monotonic ULID generator for ``msgid`` tags (26 Crockford base32 characters)."""
from __future__ import annotations

import os
from typing import Callable

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def _encode(value: int) -> str:
    # 130 bits = 13 pairs of 10 bits; the top two bits are always zero for a ULID.
    out = []
    for shift in range(120, -10, -10):
        out.append(_PAIRS[(value >> shift) & 0x3FF])
    return "".join(out)


class ULIDGenerator:
    """Generates ULIDs: 48-bit millisecond time and 80 random bits, strictly increasing
    within a millisecond (the random part is incremented), as the reference server does.
    """

    __slots__ = ("_now", "_last_ms", "_last_rand")

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._last_ms = -1
        self._last_rand = 0

    def new(self) -> str:
        """Return a fresh ULID string."""
        ms = int(self._now() * 1000)
        if ms <= self._last_ms:
            ms = self._last_ms
            rand = self._last_rand + 1
            if rand >> 80:  # random part exhausted: borrow the next millisecond
                ms += 1
                rand = 0
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        self._last_ms = ms
        self._last_rand = rand
        return _encode(((ms & ((1 << 48) - 1)) << 80) | rand)
