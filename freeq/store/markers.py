"""Read markers in the database (draft/read-marker): one row per account (DID) and conversation.

Reads go to the DB thread and return Deferreds; writes are queued on the reactor thread and
applied by the group commit (``_op_<kind>`` on the DB thread). A stored marker never moves back:
the upsert keeps the larger of the stored and the new time, so a late or replayed write is harmless.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Callable

from twisted.internet import defer


class ReadMarkerRecords:
    """Loading and saving read markers (a part of the store)."""

    conn: sqlite3.Connection
    _pending: list[tuple[str, tuple[Any, ...]]]
    _in_thread: Callable[[Callable[[], Any]], defer.Deferred]
    flush: Callable[[], defer.Deferred]

    def load_read_markers(self, did: str, limit: int) -> defer.Deferred:
        """The markers of ``did`` as ``{target: (read_ms, updated_at)}``, the ``limit`` newest updated."""

        self.flush()  # queued writes first: the DB thread runs them before this read

        def run() -> dict[str, tuple[int, int]]:
            rows = self.conn.execute(
                "SELECT target, read_ms, updated_at FROM read_markers WHERE did=? ORDER BY updated_at DESC LIMIT ?",
                (did, limit)).fetchall()
            return {r[0]: (int(r[1]), int(r[2])) for r in rows}

        return self._in_thread(run)

    def save_read_marker(self, did: str, target: str, read_ms: int, now: float) -> None:
        """Move the marker of ``did`` in ``target`` forward to ``read_ms`` (never back)."""
        self._pending.append(("read_marker", (did, target, int(read_ms), int(now))))

    def delete_read_marker(self, did: str, target: str) -> None:
        """Forget one marker (evicted when the account holds too many)."""
        self._pending.append(("delete_read_marker", (did, target)))

    def _op_read_marker(self, conn: sqlite3.Connection, did: str, target: str, read_ms: int, ts: int) -> None:
        conn.execute(
            "INSERT INTO read_markers(did, target, read_ms, updated_at) VALUES (?,?,?,?) "
            "ON CONFLICT(did, target) DO UPDATE SET read_ms=MAX(read_ms, excluded.read_ms), "
            "updated_at=excluded.updated_at", (did, target, read_ms, ts))

    def _op_delete_read_marker(self, conn: sqlite3.Connection, did: str, target: str) -> None:
        conn.execute("DELETE FROM read_markers WHERE did=? AND target=?", (did, target))
