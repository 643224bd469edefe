"""The commit generation and its high-water mark, so a database rolled back is noticed at start-up.

Every group commit adds one to the generation kept in the database's ``meta`` table; the newest
generation known to be durable is also written beside the database file (``<db>.hwm``). A
database whose generation is below its mark lost commits (a lost or corrupt WAL, an old copy).
"""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Callable, Optional

from twisted.logger import Logger

from freeq.store.errors import StoreError
from freeq.store.keys import write_secret_atomically

log = Logger()

#: The high-water mark beside a database file: ``<db>.hwm`` holds the newest commit generation known
#: to be durable, so a database rolled back (a lost or corrupt WAL, an old copy) is noticed at start-up.
HWM_SUFFIX = ".hwm"
#: The mark is rewritten (fsync of the WAL, then of the mark) at most this often while writes go on,
#: and on every clean stop: a roll-back of less than this many seconds of commits may go unnoticed.
HWM_INTERVAL = 5.0
GENERATION_KEY = "commit_generation"
SET_GENERATION = "INSERT OR REPLACE INTO meta(key, value) VALUES ('commit_generation', ?)"


def hwm_path(db_path: str) -> str:
    """The high-water-mark file of the database at ``db_path``."""
    return db_path + HWM_SUFFIX


def read_high_water_mark(path: str) -> Optional[int]:
    """The commit generation recorded in the high-water-mark file ``path``; None if there is none.

    Raises :class:`StoreError` (one line) if the file exists but cannot be read or parsed.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read the high-water mark {path}: {e.strerror}") from None
    try:
        record = json.loads(data)
        generation = record["generation"]
        if record.get("format") != 1 or not isinstance(generation, int) or generation < 0:
            raise ValueError(generation)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise StoreError(f"the high-water mark {path} is corrupt ({len(data)} bytes)") from None
    return generation


def write_high_water_mark(path: str, generation: int) -> None:
    """Record ``generation`` in ``path``: 0600, temporary file, fsync, rename, fsync of the directory."""
    write_secret_atomically(path, json.dumps({"format": 1, "generation": generation}).encode())


class HighWaterMark:
    """Keeping the high-water-mark file up to date with the commit generation (a part of the store)."""

    conn: sqlite3.Connection
    path: str
    reactor: Any
    generation: int
    hwm_file: Optional[str]
    hwm_interval: float
    clock: Callable[[], float]
    _hwm_generation: int
    _hwm_at: float
    _hwm_failing: bool

    def rebaseline(self, generation: int) -> None:
        """At start-up: make both the database and the high-water mark say at least ``generation``.

        Called once the database has passed its checks (with ``--accept-data-loss``, the mark it
        failed is raised past, so an even older copy is still noticed later). Synchronous.
        """
        if generation > self.generation:
            self.conn.execute(SET_GENERATION, (str(generation),))
            self.generation = generation
        if self.hwm_file is not None:
            self._sync_wal()
            write_high_water_mark(self.hwm_file, self.generation)
            self._hwm_generation, self._hwm_at = self.generation, self.clock()

    def _sync_wal(self) -> None:
        """fsync the WAL: with ``synchronous=NORMAL`` commits reach it unsynced, and the mark must
        never be ahead of what survives a power cut."""
        try:
            fd = os.open(self.path + "-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _mark_high_water(self, force: bool = False) -> None:
        """DB thread, after a commit (or idle, or at stop): record the generation in the mark file if
        it moved and ``hwm_interval`` has passed (or ``force``). Never raises: a failed write is logged."""
        if self.hwm_file is None or self.generation == self._hwm_generation:
            return
        now = self.clock()
        if not force and now - self._hwm_at < self.hwm_interval:
            return
        generation = self.generation
        try:
            self._sync_wal()
            write_high_water_mark(self.hwm_file, generation)
        except OSError as e:
            if not self._hwm_failing and self.reactor is not None:
                self.reactor.callFromThread(log.error, "Cannot write the high-water mark {path}: {error}",
                                            path=self.hwm_file, error=e.strerror)
            self._hwm_failing = True
            self._hwm_at = now  # retry after the interval, not on every commit
            return
        self._hwm_generation, self._hwm_at, self._hwm_failing = generation, now, False
