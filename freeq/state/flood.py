"""Token bucket for per-client flood control (time passed in; no reactor)."""
from __future__ import annotations


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
