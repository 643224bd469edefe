"""Network bans in the database (issue #13 item 4): the ``network_bans`` table of schema v4.

Loaded synchronously at start-up (expired rows deleted first); writes are queued on the reactor thread and
applied by the group commit (``_op_<kind>`` on the DB thread). A ban is identified by ``(kind, mask)``: saving
one on a mask already held replaces it.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Optional

from freeq.state.bans import KINDS, Ban, BanError, parse_mask


class BanRecords:
    """Loading and saving K-lines and D-lines (a part of the store)."""

    conn: sqlite3.Connection
    _pending: list[tuple[str, tuple[Any, ...]]]

    def load_bans(self, now: float) -> list[Ban]:
        """The bans still in force at ``now`` (start-up, synchronous); expired rows are deleted, and a row that is
        no longer a valid ban (edited by hand) is skipped."""
        self.conn.execute("DELETE FROM network_bans WHERE expires IS NOT NULL AND expires <= ?", (now,))
        out: list[Ban] = []
        for r in self.conn.execute("SELECT kind, mask, id, reason, setter, set_at, expires, origin FROM network_bans"):
            kind, mask = r[0], r[1]
            try:
                if kind not in KINDS or parse_mask(kind, mask) != mask:
                    continue
            except BanError:
                continue
            out.append(Ban(r[2], kind, mask, r[3], r[4], float(r[5]), None if r[6] is None else float(r[6]), r[7]))
        return out

    def save_ban(self, ban: Ban) -> None:
        """Store ``ban`` (replacing one on the same mask)."""
        self._pending.append(("ban", (ban.kind, ban.mask, ban.id, ban.reason, ban.setter, ban.set_at, ban.expires,
                                      ban.origin)))

    def delete_ban(self, kind: str, mask: str) -> None:
        """Forget the ban on ``(kind, mask)``."""
        self._pending.append(("delete_ban", (kind, mask)))

    def _op_ban(self, conn: sqlite3.Connection, kind: str, mask: str, ban_id: str, reason: str, setter: str,
                set_at: float, expires: Optional[float], origin: str) -> None:
        conn.execute("INSERT OR REPLACE INTO network_bans(kind, mask, id, reason, setter, set_at, expires, origin) "
                     "VALUES (?,?,?,?,?,?,?,?)", (kind, mask, ban_id, reason, setter, set_at, expires, origin))

    def _op_delete_ban(self, conn: sqlite3.Connection, kind: str, mask: str) -> None:
        conn.execute("DELETE FROM network_bans WHERE kind=? AND mask=?", (kind, mask))
