#!/usr/bin/env python3
"""freeq load benchmark: ``python bench/run.py [scenario ...] [--quick] [--runs N]``.

Starts a freeq server per run (pinned to one core), drives it from worker
processes pinned to another, and prints one JSON line per scenario on stdout
(progress goes to stderr). Scenarios: connect, fanout, channels, churn (all by
default). See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scenarios import PARAMS, SCENARIOS, combine, log, run_one  # noqa: E402
from server import raise_nofile  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="small, short versions for smoke-checking")
    ap.add_argument("--runs", type=int, default=1, help="runs per scenario; headline figures are medians")
    ap.add_argument("--python", help="interpreter for the server (default: .venv/bin/python)")
    ap.add_argument("--server-dir", metavar="DIR",
                    help="run the server from this source tree (a patched copy, for A/B tests; default: the repo)")
    ap.add_argument("--server-cpu", type=int, help="core for the server (default: the first allowed core)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a scenario parameter, e.g. --set receivers=500 (see scenarios.PARAMS)")
    ap.add_argument("--keep-log", metavar="PATH", help="copy the server log of the last run here")
    ap.add_argument("--profile", metavar="DIR",
                    help="record the server with py-spy during each measurement window (raw stacks in DIR; "
                         "summarise with bench/pyspy_summary.py). Perturbs the figures a little")
    ap.add_argument("--timeout", type=float, default=900.0, help="hard limit in seconds for each run")
    args = ap.parse_args(argv)

    names = args.scenarios or list(SCENARIOS)
    for n in names:
        if n not in SCENARIOS:
            ap.error(f"unknown scenario {n!r}; choose from {', '.join(SCENARIOS)}")
    overrides = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        if not any(k in PARAMS[n] for n in names):
            ap.error(f"--set {k}: no such parameter in {', '.join(names)}")
        overrides[k] = v
    raise_nofile()

    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"run exceeded --timeout {args.timeout:.0f}s")

    signal.signal(signal.SIGALRM, on_alarm)
    status = 0
    for name in names:
        runs = []
        for i in range(args.runs):
            log(f"{name}: run {i + 1}/{args.runs}{' (quick)' if args.quick else ''}")
            signal.alarm(int(args.timeout))
            try:
                runs.append(run_one(name, args.quick, overrides, args.python, args.server_cpu, args.keep_log,
                                    args.profile, args.server_dir))
            except Exception as e:  # one failed run does not stop the others
                log(f"{name}: run {i + 1} failed: {type(e).__name__}: {e}")
                status = 1
            finally:
                signal.alarm(0)
            time.sleep(1.0)
        if runs:
            print(json.dumps(combine(name, runs), sort_keys=False), flush=True)
        else:
            print(json.dumps({"scenario": name, "error": "all runs failed"}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
