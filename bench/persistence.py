"""Persistence on vs off, side by side: ``python bench/persistence.py [--quick] [--runs N]``.

Runs the fan-out and channels scenarios twice through ``bench/run.py``: with the default store
(SQLite in the data directory, every message encrypted and stored) and with ``--db-path none``
(nothing stored), alternating the two for ``--runs N`` pairs. Prints one JSON line per scenario
with the median of each side, their ratio and each pair's ratio; the bar for issue 3 is a ratio
of at least 0.80.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
HEADLINE = {"fanout": "delivered_msgs_per_s", "channels": "delivered_msgs_per_s"}


def run(scenarios: list[str], extra: list[str], server_args: str) -> dict[str, dict]:
    """Run ``bench/run.py`` with ``server_args`` added to the server's flags; results by scenario."""
    env = dict(os.environ, FREEQ_BENCH_SERVER_ARGS=server_args)
    out = subprocess.run([sys.executable, os.path.join(HERE, "run.py"), *scenarios, *extra], env=env,
                         stdout=subprocess.PIPE, text=True, timeout=3600, check=False).stdout
    results = {}
    for line in out.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        results[obj.get("scenario")] = obj
    return results


def headline(result: dict, key: str) -> float:
    """The headline figure of a combined result (its median when there were several runs)."""
    for source in (result.get("median") or {}, result):
        if key in source:
            return float(source[key])
    raise KeyError(key)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    extra = (["--quick"] if args.quick else []) + ["--runs", "1"]
    scenarios = list(HEADLINE)
    # Runs alternate (stored, in memory, stored, ...) so that drifting load from elsewhere on the
    # machine falls on both sides alike; each figure is the median of its runs, and so is the ratio
    # of each pair.
    on_runs: dict[str, list[float]] = {name: [] for name in scenarios}
    off_runs: dict[str, list[float]] = {name: [] for name in scenarios}
    for _ in range(args.runs):
        stored = run(scenarios, extra, "")
        memory = run(scenarios, extra, "--db-path none")
        for name, key in HEADLINE.items():
            try:
                on, off = headline(stored[name], key), headline(memory[name], key)
            except KeyError:
                continue
            on_runs[name].append(on)
            off_runs[name].append(off)
    status = 0
    for name, key in HEADLINE.items():
        ons, offs = on_runs[name], off_runs[name]
        if not ons:
            print(json.dumps({"scenario": f"{name}-persistence", "error": "every run failed"}))
            status = 1
            continue
        on, off = statistics.median(ons), statistics.median(offs)
        pairs = [round(a / b, 3) for a, b in zip(ons, offs) if b]
        print(json.dumps({"scenario": f"{name}-persistence", "metric": key, "persisted": round(on),
                          "not_persisted": round(off), "ratio": round(on / off, 3) if off else None,
                          "ratio_per_pair": pairs, "runs": len(ons), "bar": 0.8}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
