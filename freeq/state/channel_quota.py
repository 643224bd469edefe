"""How many channels one address or account may create: a token bucket per key (issue #10 item 14).

Pure: time is passed in, nothing here touches the reactor or a transport. The server asks
:meth:`CreationQuota.take` with the keys of the creator (its address, IPv6 /64, and its account
if it has one) before a JOIN makes a new channel; every key must have a token, and then each
spends one. Refusals carry a log verdict so a flood costs one log line per key per interval.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple


class QuotaVerdict(NamedTuple):
    """The answer to one creation attempt."""

    allowed: bool
    wait: float  # seconds until the most starved key has a token again (0 when allowed)
    log: bool  # refused and this refusal gets its log line
    suppressed: int  # refusals of the starved key not logged since its previous line (when ``log``)


class _Bucket:
    __slots__ = ("tokens", "stamp", "log_next", "held")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.stamp = now
        self.log_next = float("-inf")
        self.held = 0


class CreationQuota:
    """``burst`` creations per key at once, then one more every ``interval`` seconds.

    ``burst`` 0 turns the quota off. The table holds only keys that are below a full bucket:
    :meth:`prune` drops refilled ones, and at most ``max_keys`` are kept (a full table drops the
    fullest-looking, i.e. least recently touched, first).
    """

    def __init__(self, burst: int, interval: float, max_keys: int = 100000, log_interval: float = 60.0) -> None:
        self.burst = float(burst)
        self.rate = 1.0 / interval  # tokens per second (``interval`` must be positive)
        self.max_keys = max_keys
        self.log_interval = log_interval
        self._buckets: dict[str, _Bucket] = {}  # insertion order: least recently touched first

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, bucket: _Bucket, now: float) -> float:
        return min(self.burst, bucket.tokens + max(0.0, now - bucket.stamp) * self.rate)

    def take(self, keys: Sequence[str], now: float) -> QuotaVerdict:
        """One channel creation by the holder of ``keys`` at ``now``: allowed (and paid for) or not."""
        if not self.burst:
            return QuotaVerdict(True, 0.0, False, 0)
        buckets = self._buckets
        levels: list[tuple[str, float]] = []
        for key in keys:
            bucket = buckets.get(key)
            levels.append((key, self.burst if bucket is None else self._level(bucket, now)))
        starved = min(levels, key=lambda kv: kv[1])
        if starved[1] >= 1.0:
            for key, level in levels:
                bucket = buckets.pop(key, None)
                if bucket is None:
                    if len(buckets) >= self.max_keys:
                        del buckets[next(iter(buckets))]
                    bucket = _Bucket(level, now)
                bucket.tokens, bucket.stamp = level - 1.0, now
                buckets[key] = bucket  # re-inserted: most recently touched last
            return QuotaVerdict(True, 0.0, False, 0)
        key = starved[0]
        bucket = buckets[key]  # a starved key always has a bucket
        wait = (1.0 - starved[1]) / self.rate
        if now >= bucket.log_next:
            suppressed, bucket.held = bucket.held, 0
            bucket.log_next = now + self.log_interval
            return QuotaVerdict(False, wait, True, suppressed)
        bucket.held += 1
        return QuotaVerdict(False, wait, False, 0)

    def prune(self, now: float) -> None:
        """Forget keys whose bucket has refilled (they behave exactly like unknown keys)."""
        for key in [k for k, b in self._buckets.items() if self._level(b, now) >= self.burst]:
            del self._buckets[key]
