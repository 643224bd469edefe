"""Failure throttling by client address: exponential back-off with a bounded table.

Pure: time is passed in, nothing here touches the reactor or a transport. Used for OPER
(issue #10 item 7): after the n-th failure from an address, the next attempt from that address
is not even checked for ``base * 2**(n-1)`` seconds (capped), across connections.
"""
from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import NamedTuple


def ip_key(ip: str) -> str:
    """The throttling key of an address: an IPv4 address as is, an IPv6 address's /64.

    One IPv6 subscriber usually owns a whole /64, so keying by the full address would let it
    rotate addresses for free. IPv4-mapped IPv6 addresses count as their IPv4 address.
    Anything unparsable (a unix socket, a test transport) is its own key.
    """
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


class FailureOutcome(NamedTuple):
    """What one recorded failure means: the count, the wait it imposes and whether to log it."""

    failures: int  # failures of this key, this one included (since the last quiet period)
    wait: float  # seconds before this key's next attempt is checked
    log: bool  # whether this failure gets its log line (at most one per ``log_interval`` per key)
    suppressed: int  # failures of this key not logged since its previous line (when ``log``)


class _Entry:
    __slots__ = ("failures", "last", "until", "log_next", "held")

    def __init__(self) -> None:
        self.failures = 0
        self.last = 0.0  # time of the latest failure
        self.until = 0.0  # no attempt is checked before this time
        self.log_next = float("-inf")  # no log line before this time
        self.held = 0  # failures not logged since the last line


class FailureThrottle:
    """Per-key failure counter with exponential back-off, decay and a bounded table.

    * After failure ``n`` of a key, :meth:`wait` is ``min(cap, base * 2**(n-1))`` seconds from
      that failure; attempts made meanwhile should be refused without being checked.
    * A key whose latest failure is ``forget_after`` seconds old starts again from zero.
    * At most ``max_keys`` keys are remembered: the ones idle longest are dropped first (an
      attacker needs that many addresses at once to push someone else's record out).
    * Failure log lines: at most one per key per ``log_interval`` seconds, with the count of
      the failures held back meanwhile.

    ``base`` 0 turns the throttle off (:meth:`wait` is always 0; failures are still counted for
    the log budget).
    """

    def __init__(self, base: float = 1.0, cap: float = 600.0, forget_after: float = 3600.0,
                 max_keys: int = 10000, log_interval: float = 10.0) -> None:
        self.base = base
        self.cap = cap
        self.forget_after = max(forget_after, cap)
        self.max_keys = max_keys
        self.log_interval = log_interval
        self._entries: "OrderedDict[str, _Entry]" = OrderedDict()  # oldest latest-failure first

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: str, now: float) -> "_Entry | None":
        entry = self._entries.get(key)
        if entry is not None and now - entry.last >= self.forget_after:
            del self._entries[key]
            return None
        return entry

    def wait(self, key: str, now: float) -> float:
        """Seconds ``key`` must still wait before an attempt is checked (0: go ahead)."""
        entry = self._live(key, now)
        if entry is None:
            return 0.0
        return max(0.0, entry.until - now)

    def failures(self, key: str, now: float) -> int:
        """Failures of ``key`` that still count."""
        entry = self._live(key, now)
        return entry.failures if entry is not None else 0

    def fail(self, key: str, now: float) -> FailureOutcome:
        """Record a failed attempt of ``key`` at ``now``; return the count, the wait and the log verdict."""
        entry = self._live(key, now)
        if entry is None:
            self._make_room(now)
            entry = self._entries[key] = _Entry()
        else:
            self._entries.move_to_end(key)
        entry.failures += 1
        entry.last = now
        wait = 0.0
        if self.base > 0:
            # 2**n overflows a float only far beyond the cap: clamp the exponent first.
            wait = min(self.cap, self.base * 2.0 ** min(entry.failures - 1, 64))
        entry.until = now + wait
        if now >= entry.log_next:
            suppressed, entry.held = entry.held, 0
            entry.log_next = now + self.log_interval
            return FailureOutcome(entry.failures, wait, True, suppressed)
        entry.held += 1
        return FailureOutcome(entry.failures, wait, False, 0)

    def succeed(self, key: str) -> None:
        """A successful attempt of ``key``: forget its failures."""
        self._entries.pop(key, None)

    def _make_room(self, now: float) -> None:
        entries = self._entries
        # The front holds the oldest latest-failures: expired ones go first, then the idlest.
        while entries:
            key, entry = next(iter(entries.items()))
            if now - entry.last >= self.forget_after or len(entries) >= self.max_keys:
                del entries[key]
            else:
                break
