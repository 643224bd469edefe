"""Token buckets: per-client flood control and the per-address connection rate (time passed in; no reactor)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional


class TokenBucket:
    """A bucket of ``burst`` tokens refilled at ``rate`` per second; ``rate == 0`` means unlimited."""

    __slots__ = ("burst", "rate", "tokens", "stamp")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.burst = float(burst)
        self.rate = rate
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if available; return whether the action may proceed now."""
        if not self.rate:
            return True
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= cost:
            self.tokens = tokens - cost
            return True
        self.tokens = tokens
        return False

    def wait_time(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens will be available (as of the last :meth:`take`)."""
        if not self.rate or self.tokens >= cost:
            return 0.0
        return (cost - self.tokens) / self.rate


class ConnectionRate:
    """New connections per address key: a :class:`TokenBucket` per key, in a bounded table (time passed in).

    Keys are what :func:`freeq.state.throttle.ip_key` makes (an IPv4 address, an IPv6 /64). A key
    whose bucket has refilled is the same as an unknown key, so it is forgotten; when the table is
    still full, the key idle longest goes (an attacker needs ``max_keys`` addresses at once to reset
    someone else's bucket). Refusals get at most one log verdict per key per ``log_interval``.
    """

    def __init__(self, burst: int, rate: float, max_keys: int = 10000, log_interval: float = 60.0) -> None:
        self.burst = burst
        self.rate = rate
        self.max_keys = max_keys
        self.log_interval = log_interval
        # key -> [bucket, time before which no refusal is logged, refusals held back]; idlest first.
        self._entries: "OrderedDict[str, list[Any]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def allow(self, key: str, now: float) -> bool:
        """Count a new connection of ``key`` at ``now``; False when it comes too fast."""
        if not self.rate:
            return True
        entries = self._entries
        entry = entries.get(key)
        if entry is None:
            self._prune(now)
            entry = entries[key] = [TokenBucket(self.burst, self.rate, now), float("-inf"), 0]
        else:
            entries.move_to_end(key)
        return bool(entry[0].take(now))

    def log_refusal(self, key: str, now: float) -> Optional[int]:
        """Whether a refusal of ``key`` gets a log line now: the refusals held back since the last, else None."""
        entry = self._entries.get(key)
        if entry is None:
            return 0
        if now >= entry[1]:
            entry[1] = now + self.log_interval
            held, entry[2] = entry[2], 0
            return int(held)
        entry[2] += 1
        return None

    def _prune(self, now: float) -> None:
        entries = self._entries
        full_after = self.burst / self.rate  # seconds of idleness after which a bucket is full again
        while entries:
            key, entry = next(iter(entries.items()))
            if now - entry[0].stamp >= full_after and now >= entry[1] or len(entries) >= self.max_keys:
                del entries[key]
            else:
                break
