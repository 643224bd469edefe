"""Metadata in the database (draft/metadata-2): what accounts set on themselves and what operators set
on registered channels.

Channel metadata is loaded synchronously at start-up (with the channels); an account's metadata is
read on the DB thread when it logs in (a Deferred). Writes are queued and applied by the group commit.
"""
from __future__ import annotations

import sqlite3
from typing import Any, Callable

from twisted.internet import defer


class MetadataRecords:
    """Loading and saving account and channel metadata (a part of the store)."""

    conn: sqlite3.Connection
    _pending: list[tuple[str, tuple[Any, ...]]]
    _in_thread: Callable[[Callable[[], Any]], defer.Deferred]
    flush: Callable[[], defer.Deferred]

    def load_channel_metadata(self) -> dict[str, dict[str, str]]:
        """folded channel -> {key: value}, for every channel that has some (start-up, synchronous)."""
        out: dict[str, dict[str, str]] = {}
        for r in self.conn.execute("SELECT channel, key, value FROM channel_metadata"):
            out.setdefault(r[0], {})[r[1]] = r[2]
        return out

    def load_account_metadata(self, did: str) -> defer.Deferred:
        """The metadata ``did`` set on itself, as ``{key: value}`` (a Deferred)."""

        self.flush()  # queued writes first: the DB thread runs them before this read

        def run() -> dict[str, str]:
            return {r[0]: r[1] for r in self.conn.execute(
                "SELECT key, value FROM account_metadata WHERE did=?", (did,))}

        return self._in_thread(run)

    def save_account_metadata(self, did: str, key: str, value: str | None) -> None:
        """Set (or, with ``None``, delete) one key of ``did``."""
        self._pending.append(("account_metadata", (did, key, value)))

    def save_channel_metadata(self, folded: str, key: str, value: str | None) -> None:
        """Set (or, with ``None``, delete) one key of channel ``folded``."""
        self._pending.append(("channel_metadata", (folded, key, value)))

    def _op_account_metadata(self, conn: sqlite3.Connection, did: str, key: str, value: str | None) -> None:
        if value is None:
            conn.execute("DELETE FROM account_metadata WHERE did=? AND key=?", (did, key))
        else:
            conn.execute("INSERT OR REPLACE INTO account_metadata(did, key, value) VALUES (?,?,?)", (did, key, value))

    def _op_channel_metadata(self, conn: sqlite3.Connection, folded: str, key: str, value: str | None) -> None:
        if value is None:
            conn.execute("DELETE FROM channel_metadata WHERE channel=? AND key=?", (folded, key))
        else:
            conn.execute("INSERT OR REPLACE INTO channel_metadata(channel, key, value) VALUES (?,?,?)",
                         (folded, key, value))
