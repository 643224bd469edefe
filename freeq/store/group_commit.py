"""The DB thread and the group commit: queued writes are committed together every flush interval.

Writes (state and history messages) are queued on the reactor thread; every ``flush_interval``
seconds they go to the one DB thread as one transaction, in which each conversation's new
messages become one chunk and each conversation is cut back to the history cap. A failed
commit keeps its writes for the next flush (bounded by ``MAX_PENDING_WRITES``).
"""
from __future__ import annotations

import collections
import sqlite3
from typing import Any, Callable, Optional, Sequence

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from freeq.store.chunks import CHUNK_COLUMNS, INSERT_CHUNK, Key
from freeq.store.high_water import SET_GENERATION

log = Logger()

#: Queued writes kept while the disk refuses them, before the oldest are dropped (and logged).
MAX_PENDING_WRITES = 200_000
#: Per-target row counts kept in memory for the history cap; past this many targets they are re-read.
MAX_COUNTED_TARGETS = 100_000
#: How many of the newest msgids the duplicate check remembers (seeded from the database on start).
RECENT_MSGIDS = 100_000


class GroupCommit:
    """The DB thread, the write queues and the group commit (a part of the store)."""

    conn: sqlite3.Connection
    reactor: Any
    flush_interval: float
    retention_days: float
    max_messages_per_target: int
    trim_slack: int
    pool: Optional[ThreadPool]
    generation: int
    hwm_interval: float
    clock: Callable[[], float]
    _hwm_generation: int
    _hwm_at: float
    _pending: list[tuple[str, tuple[Any, ...]]]
    _messages: list[tuple[Any, ...]]
    _dropped: int
    _failing: bool
    _row_counts: dict[str, int]
    _recent: set[str]
    _recent_order: Optional[list[str]]
    # Provided by the other parts of the store.
    _mark_high_water: Callable[..., None]
    _chunk_rows: Callable[[str, list[tuple[Any, ...]], list[tuple[Any, ...]], list[Sequence[str]]], int]
    _rewrite_chunk: Callable[[sqlite3.Connection, sqlite3.Row, Callable[[Key], bool]], int]
    _retention_guarded: Callable[[], Optional[defer.Deferred]]

    def start(self) -> None:
        """Start the DB thread and the periodic flush (called by the store service)."""
        self.pool = ThreadPool(1, 1, name="freeq-db")
        self.pool.start()
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self._flush_guarded)
        self._loop.clock = self.reactor
        self._loop.start(self.flush_interval, now=False)
        if self.retention_days:
            self._retention_loop = LoopingCall(self._retention_guarded)
            self._retention_loop.clock = self.reactor
            self._retention_loop.start(3600, now=True)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Flush everything queued, then stop the thread and close the database."""
        if getattr(self, "_loop", None) is not None and self._loop.running:
            self._loop.stop()
        if getattr(self, "_retention_loop", None) is not None and self._retention_loop.running:
            self._retention_loop.stop()
        if self.pool is not None:
            yield self.flush()
            yield self._in_thread(lambda: self._mark_high_water(force=True))
            self.pool.stop()
            self.pool = None
        if self._pending or self._messages:
            log.critical("Database unwritable at shutdown: {n} queued writes are lost",
                         n=len(self._pending) + len(self._messages))
        self.conn.close()

    def _in_thread(self, fn: Callable[[], Any]) -> defer.Deferred:
        assert self.pool is not None
        return threads.deferToThreadPool(self.reactor, self.pool, fn)

    def _flush_guarded(self) -> None:
        try:
            self.flush()
        except Exception:
            log.failure("store flush failed")

    def flush(self) -> defer.Deferred:
        """Send queued writes to the DB thread as one transaction; fires when committed."""
        if not (self._pending or self._messages) or self.pool is None:
            if (self.pool is not None and self.generation != self._hwm_generation
                    and self.clock() - self._hwm_at >= self.hwm_interval):
                return self._in_thread(self._mark_high_water)  # the last commits of a burst, once quiet
            return defer.succeed(None)
        ops, self._pending = self._pending, []
        messages, self._messages = self._messages, []
        d = self._in_thread(lambda: self._apply(ops, messages))
        d.addErrback(self._write_failed, ops, messages)
        return d

    def _write_failed(self, failure: Any, ops: list[tuple[str, tuple[Any, ...]]],
                      messages: list[tuple[Any, ...]]) -> None:
        # Keep the batch for the next flush (a full disk may recover); bound what we hold, giving up
        # the oldest history first: channel state and nick ownership are worth more than old lines.
        if not self._failing:
            log.error("Database write failed; will retry ({n} writes pending): {error}",
                      n=len(ops) + len(self._pending) + len(messages) + len(self._messages),
                      error=failure.getErrorMessage())
        self._failing = True
        self._pending[:0] = ops
        self._messages[:0] = messages
        excess = len(self._pending) + len(self._messages) - MAX_PENDING_WRITES
        if excess > 0:
            from_history = min(excess, len(self._messages))
            del self._messages[:from_history]
            del self._pending[:excess - from_history]
            self._dropped += excess
            log.critical("Database unwritable: dropped {n} oldest pending writes ({total} in all)",
                         n=excess, total=self._dropped)

    def _apply(self, ops: Sequence[tuple[str, tuple[Any, ...]]], messages: Sequence[tuple[Any, ...]] = ()) -> None:
        """Commit one group of queued writes; the messages of each conversation become one chunk."""
        conn = self.conn
        if self._recent_order is None:
            self._load_recent_msgids(conn)
        by_target: collections.defaultdict[str, list[tuple[Any, ...]]] = collections.defaultdict(list)
        stored: list[Sequence[str]] = []  # the msgids this batch stores, per chunk
        conn.execute("BEGIN IMMEDIATE")
        try:
            for kind, args in ops:
                if kind == "message":
                    by_target[args[0]].append(args)
                else:
                    getattr(self, "_op_" + kind)(conn, *args)
            for m in messages:
                by_target[m[0]].append(m)
            if by_target:
                rows: list[tuple[Any, ...]] = []
                added: dict[str, int] = {}
                for target, msgs in by_target.items():
                    n = self._chunk_rows(target, msgs, rows, stored)
                    if n:
                        added[target] = n
                conn.executemany(INSERT_CHUNK, rows)  # history has no ordering ties with the other tables
            counts = self._trim(conn, added) if self.max_messages_per_target and by_target else {}
            conn.execute(SET_GENERATION, (str(self.generation + 1),))
            conn.execute("COMMIT")
        except BaseException:
            self._recent.difference_update(*stored)  # not stored after all: a retry must not see duplicates
            if conn.in_transaction:  # on SQLITE_FULL SQLite rolls back itself; keep the real error
                conn.execute("ROLLBACK")
            raise
        self.generation += 1
        self._mark_high_water()
        order = self._recent_order
        assert order is not None
        for ids in stored:
            order.extend(ids)
        excess = len(order) - RECENT_MSGIDS
        if excess > RECENT_MSGIDS // 4:  # forget the oldest in bulk (set and list operations in C)
            self._recent.difference_update(order[:excess])
            del order[:excess]
        if len(self._row_counts) + len(counts) > MAX_COUNTED_TARGETS:
            self._row_counts.clear()
        self._row_counts.update(counts)  # only once committed: a rolled-back trim must not be believed
        if self._failing:
            self._failing = False
            self.reactor.callFromThread(log.info, "Database writes recovered")

    def _load_recent_msgids(self, conn: sqlite3.Connection) -> None:
        """Seed the duplicate check with the newest stored msgids (the first write after a start)."""
        newest: list[str] = []
        for (msgids,) in conn.execute("SELECT msgids FROM message_chunks ORDER BY id DESC"):
            newest.extend(reversed(msgids.split(" ")))
            if len(newest) >= RECENT_MSGIDS:
                break
        del newest[RECENT_MSGIDS:]
        newest.reverse()
        self._recent_order = newest
        self._recent = set(newest)

    def append_message(self, target: str, msgid: str, now: float, command: str, sender: str,
                       account: Optional[str], shown_to: str, text: str, tags: dict[str, str]) -> None:
        """Queue one message for history; it is encrypted, with its conversation's others, on the DB thread."""
        self._messages.append((target, msgid, int(now * 1000), command, sender, account, shown_to, text, tags))

    # ------------------------------------------------------------------
    # The history cap (DB thread)
    # ------------------------------------------------------------------
    def _trim(self, conn: sqlite3.Connection, added: dict[str, int]) -> dict[str, int]:
        """Cut each target that ``added`` took past the cap plus the slack back to its newest messages.

        Returns the new message counts. A count is read once per target (``SUM(count)``), then kept
        up to date; it may run high (a retention pass), which only makes the next trim come early.
        """
        cap = self.max_messages_per_target
        limit = cap + self.trim_slack
        known = self._row_counts
        counts: dict[str, int] = {}
        for target, n in added.items():
            count = known.get(target)
            if count is None:
                count = conn.execute("SELECT COALESCE(SUM(count), 0) FROM message_chunks WHERE target=?",
                                     (target,)).fetchone()[0]
            else:
                count += n
            if count > limit:
                count = self._cut(conn, target, cap)
            counts[target] = count
        return counts

    def _cut(self, conn: sqlite3.Connection, target: str, keep: int) -> int:
        """Keep the newest ``keep`` messages of ``target`` (by insertion order, as v1 did); return the count.

        Whole older chunks are deleted; the chunk the cut falls in is re-encrypted without its
        older messages, so the cap is exact.
        """
        total = 0
        cut: Optional[tuple[int, int]] = None
        for cid, n in conn.execute("SELECT id, count FROM message_chunks WHERE target=? ORDER BY id DESC",
                                   (target,)).fetchall():
            if total + n >= keep:
                cut = (cid, n)
                break
            total += n
        if cut is None:
            return total
        cid, n = cut
        conn.execute("DELETE FROM message_chunks WHERE target=? AND id<?", (target, cid))
        need = keep - total
        if need >= n:
            return total + n
        row = conn.execute(f"SELECT {CHUNK_COLUMNS} FROM message_chunks WHERE id=?", (cid,)).fetchone()
        return total + self._rewrite_chunk(conn, row, lambda key: key[2] >= n - need)
