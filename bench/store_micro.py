"""DB-thread cost of storing history, per message: ``python bench/store_micro.py [--messages N] [--runs N]``.

Replays the persistence load of the channels scenario without a server: messages spread over 250
conversations arrive at 72,000/s and are committed every 0.2 s (14,400 per group commit), as the
store's flush loop does. Each run writes a fresh SQLite file (WAL, ``synchronous=NORMAL``) and
times, on one thread:

* ``v1_us_per_msg``: schema v1's path, one encrypted row per message in ``messages``
  (JSON body, AES-GCM, ``INSERT OR IGNORE`` into three indexes), as ``Store._apply`` did;
* ``chunked_us_per_msg``: today's ``Store._apply``, one encrypted chunk per conversation and
  group commit in ``message_chunks`` (duplicate check and cap bookkeeping included);
* ``enqueue_us_per_msg``: ``Store.append_message`` on the reactor thread (the queue append).

Prints one JSON line with the medians over the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from freeq.irc.ulid import ULIDGenerator  # noqa: E402
from freeq.store import db as dbmod  # noqa: E402
from freeq.store.crypto import MessageCipher  # noqa: E402
from freeq.store.db import Store  # noqa: E402
from freeq.store.keys import fingerprint  # noqa: E402

RATE = 72_000
FLUSH_INTERVAL = 0.2
TARGETS = 250
TEXT_LEN = 40  # as bench/scenarios.py

_V1_INSERT = ("INSERT OR IGNORE INTO messages(target, msgid, time_ms, command, sender, account, shown_to, "
              "key_fp, payload) VALUES (?,?,?,?,?,?,?,?,?)")


def workload(n: int) -> list[list[tuple[Any, ...]]]:
    """``n`` queued message tuples (as ``append_message`` queues them), cut into group commits."""
    clock = [1_750_000_000.0]
    ulid = ULIDGenerator(lambda: clock[0])
    per_batch = int(RATE * FLUSH_INTERVAL)
    batches: list[list[tuple[Any, ...]]] = []
    for i in range(n):
        clock[0] += 1.0 / RATE
        if i % per_batch == 0:
            batches.append([])
        chan = i % TARGETS
        nick = f"m{chan * 4 + i % 4}"
        batches[-1].append(("message", (f"#ch{chan}", ulid.new(), int(clock[0] * 1000), "PRIVMSG",
                                        f"{nick}!~{nick}@freeq/guest", None, f"#ch{chan}",
                                        f"~T{i} " + "x" * TEXT_LEN, {})))
    return batches


def fresh_store(directory: str, name: str, cipher: MessageCipher) -> Store:
    store = Store.open(os.path.join(directory, name), None)
    store.use_cipher(cipher)
    return store


def v1_apply(conn: sqlite3.Connection, cipher: MessageCipher, counts: dict[str, int],
             ops: list[tuple[str, tuple[Any, ...]]]) -> None:
    """Schema v1's ``Store._apply`` for messages: one encrypted row each."""
    rows = []
    added: dict[str, int] = {}
    conn.execute("BEGIN IMMEDIATE")
    for _, (target, msgid, time_ms, command, sender, account, shown_to, text, tags) in ops:
        body = json.dumps({"text": text, "tags": tags}, separators=(",", ":")).encode()
        rows.append((target, msgid, time_ms, command, sender, account, shown_to, cipher.fingerprint,
                     cipher.encrypt(body, msgid, target)))
        added[target] = added.get(target, 0) + 1
    conn.executemany(_V1_INSERT, rows)
    for target, n in added.items():  # the cap bookkeeping (below the cap: no DELETE)
        if target not in counts:
            counts[target] = conn.execute("SELECT COUNT(*) FROM messages WHERE target=?", (target,)).fetchone()[0]
        counts[target] += n
    conn.execute("COMMIT")


def timed(batches: list[list[tuple[str, tuple[Any, ...]]]], apply: Callable[[list[Any]], None]) -> float:
    """Microseconds per message spent in ``apply`` over all batches."""
    total = 0.0
    for ops in batches:
        t = time.perf_counter()
        apply(ops)
        total += time.perf_counter() - t
    return total / sum(len(b) for b in batches) * 1e6


def one_run(batches: list[list[tuple[str, tuple[Any, ...]]]], cipher: MessageCipher) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        # v1: the v1 schema alone, as shipped before chunks.
        v1_path = os.path.join(d, "v1.db")
        conn = dbmod._connect(v1_path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(dbmod._schema_script("v1.sql"))
        counts: dict[str, int] = {}
        v1 = timed(batches, lambda ops: v1_apply(conn, cipher, counts, ops))
        conn.close()

        store = fresh_store(d, "v2.db", cipher)
        chunked = timed(batches, store._apply)
        stored = store.conn.execute("SELECT SUM(count), COUNT(*) FROM message_chunks").fetchone()
        store.conn.close()

        enqueue_store = fresh_store(d, "enqueue.db", cipher)
        msgs = [args for ops in batches for _, args in ops]
        t = time.perf_counter()
        append = enqueue_store.append_message
        for target, msgid, time_ms, command, sender, account, shown_to, text, tags in msgs:
            append(target, msgid, time_ms / 1000, command, sender, account, shown_to, text, tags)
        enqueue = (time.perf_counter() - t) / len(msgs) * 1e6
        enqueue_store.conn.close()
    return {"v1": v1, "chunked": chunked, "enqueue": enqueue, "stored": stored[0], "chunks": stored[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=72_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    key = os.urandom(32)
    cipher = MessageCipher(key, fingerprint(key))
    batches = workload(args.messages)
    runs = [one_run(batches, cipher) for _ in range(args.runs)]
    print(json.dumps({
        "bench": "store_micro", "messages": args.messages, "targets": TARGETS, "group_commits": len(batches),
        "per_commit": len(batches[0]), "runs": args.runs,
        "v1_us_per_msg": round(statistics.median(r["v1"] for r in runs), 2),
        "chunked_us_per_msg": round(statistics.median(r["chunked"] for r in runs), 2),
        "enqueue_us_per_msg": round(statistics.median(r["enqueue"] for r in runs), 3),
        "chunks_per_commit": runs[0]["chunks"] / len(batches), "stored": runs[0]["stored"],
        "python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version,
    }))


if __name__ == "__main__":
    main()
