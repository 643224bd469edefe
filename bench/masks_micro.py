"""Micro-benchmark: matching a channel ban list, the linear glob matcher vs the old regex.

``python bench/masks_micro.py`` prints microseconds per ``is banned?`` check of a typical 10-entry
ban list (a user matching none, the common case at JOIN and on every message), and the time of the
pathological ``*a*a*a*a*a*a*a*a*b`` mask (issue #10 item 1) for each. The old matcher is copied here
(one anchored alternation of ``.*``-per-star regexes) so the comparison survives its removal.
"""
from __future__ import annotations

import re
import time
import timeit
from typing import Iterable, Optional

from freeq.irc.names import fold
from freeq.state.masks import MaskSet

BANS = [
    "spammer!*@*", "*!*@*.badisp.example", "*!~bot*@*", "troll*!*@*", "*!*@freeq/guest/1a2b3c",
    "evil?!*@*", "*!*baduser@*", "flood*!*@10.0.*", "*!*@*.tor-exit.example", "x!y@z",
]
USER = "alice_in_wonderland!~alice@freeq/user/did-plc-ab12cd34ef56"


def _old_regex(mask: str) -> str:
    out = []
    for ch in fold(mask):
        out.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
    return "".join(out)


def old_compile(masks: Iterable[str]) -> Optional["re.Pattern[str]"]:
    """The matcher before issue #10: one anchored regex of all masks."""
    parts = [_old_regex(m) for m in masks if not m.startswith("did:")]
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL) if parts else None


def main() -> None:
    """Print the figures."""
    big = BANS + [f"user{i}*!*@*" if i % 2 else f"*!*@host{i}.example" for i in range(90)]
    n = 100_000
    for bans in (BANS, big):
        old = old_compile(bans)
        assert old is not None
        new = MaskSet(bans)
        assert not old.match(fold(USER)) and not new.matches(USER, None)
        assert new.matches("Spammer!x@y", None) and old.match(fold("Spammer!x@y"))
        for label, stmt in (("old regex (as shipped, names.fold)", lambda: old.match(fold(USER))),
                            ("old regex (fold by str.lower)     ", lambda: old.match(USER.lower())),
                            ("linear glob MaskSet.matches       ", lambda: new.matches(USER, None))):
            best = min(timeit.repeat(stmt, number=n, repeat=5))
            print(f"{label}: {best / n * 1e6:.3f} us per {len(bans)}-entry ban list check (no match)")
    evil_new = MaskSet(["*a*a*a*a*a*a*a*a*b"])
    start = time.perf_counter()
    evil_new.matches("a" * 200, None)
    print(f"linear glob: *a*a*a*a*a*a*a*a*b vs 200 'a': {(time.perf_counter() - start) * 1e6:.1f} us")
    evil_old = old_compile(["*a*a*a*a*a*a*a*a*b"])
    assert evil_old is not None
    start = time.perf_counter()
    evil_old.match("a" * 35)
    print(f"old regex  : *a*a*a*a*a*a*a*a*b vs 35 'a' (not 200): {(time.perf_counter() - start) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
