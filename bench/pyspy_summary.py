#!/usr/bin/env python3
"""Summarise a py-spy ``--format raw`` profile: top functions by self and by inclusive samples.

``python bench/pyspy_summary.py PROFILE.txt [--top N] [--lines]``; ``--lines`` keeps line numbers
(self time per source line).
"""
from __future__ import annotations

import argparse
import re
import signal
import sys
from collections import Counter

LINE_NO = re.compile(r":\d+\)$")


def frame_name(frame: str, lines: bool) -> str:
    frame = frame.strip()
    if not lines:
        frame = LINE_NO.sub(")", frame)
    return frame


def main() -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet under | head
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--lines", action="store_true")
    args = ap.parse_args()
    self_c: Counter[str] = Counter()
    incl_c: Counter[str] = Counter()
    total = 0
    with open(args.profile) as f:
        for raw in f:
            raw = raw.rstrip("\n")
            if not raw:
                continue
            stack, _, n = raw.rpartition(" ")
            try:
                count = int(n)
            except ValueError:
                continue
            frames = [frame_name(x, args.lines) for x in stack.split(";") if x]
            # py-spy puts the thread/process name first; drop non-frames
            frames = [x for x in frames if "(" in x]
            if not frames:
                continue
            total += count
            self_c[frames[-1]] += count
            for fr in set(frames):
                incl_c[fr] += count
    if not total:
        print("no samples")
        return 1
    print(f"{total} samples")
    print(f"\n-- self (top {args.top}) --")
    for fr, c in self_c.most_common(args.top):
        print(f"{100.0 * c / total:6.1f}%  {fr}")
    print(f"\n-- inclusive (top {args.top}) --")
    for fr, c in incl_c.most_common(args.top):
        print(f"{100.0 * c / total:6.1f}%  {fr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
