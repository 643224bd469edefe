"""The SQLite store: versioned schema, WAL, one DB thread, encrypted message history.

Start-up (opening, upgrading, loading state) is synchronous and happens before any listener
opens. After that every statement runs on one dedicated thread: writes are queued on the
reactor thread and committed together every ``flush_interval`` seconds (group commit), reads
return Deferreds. SQLite in WAL mode with ``synchronous=NORMAL`` keeps every committed
transaction across a crash of the process, so a message is durable within one flush interval
(0.2 s by default) of being delivered.

History is stored in chunks (schema v2): each group commit turns the new messages of one
conversation into one ``message_chunks`` row, encrypted as a whole, which costs far less per
message than a row each (see docs/persistence.md and bench/store_micro.py).

The store is one :class:`Store` assembled from its parts: the server-state tables
(:mod:`freeq.store.state_tables`), key records (:mod:`freeq.store.key_records`), the commit
generation and its high-water mark (:mod:`freeq.store.high_water`), the DB thread and group
commit (:mod:`freeq.store.group_commit`) and the chunk format (:mod:`freeq.store.chunks`). This
module opens and upgrades the database, cuts new messages into chunks, answers history queries
and prunes by retention; it holds the tunables of the chunk layout and of msgid lookups.
"""
from __future__ import annotations

import heapq
import os
import sqlite3
import time
from importlib import resources
from typing import Any, Callable, Iterable, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from freeq.state.channel import ChannelRecord  # the channel's snapshot; the store persists it
from freeq.store.chunks import (
    CHUNK_COLUMNS, UNDECRYPTABLE, ChunkCodec, Key, StoredMessage, pack_columns, ulid_ms, unpack_columns)
from freeq.store.crypto import MessageCipher
from freeq.store.errors import StoreError
from freeq.store.group_commit import MAX_COUNTED_TARGETS, MAX_PENDING_WRITES, RECENT_MSGIDS, GroupCommit
from freeq.store.high_water import (
    GENERATION_KEY, HWM_INTERVAL, HWM_SUFFIX, HighWaterMark, hwm_path, read_high_water_mark, write_high_water_mark)
from freeq.store.key_records import KeyRecords
from freeq.store.state_tables import StateTables
from freeq.store.markers import ReadMarkerRecords  # draft/read-marker (issue #12)
from freeq.store.metadata import MetadataRecords  # draft/metadata-2 (issue #12)
from freeq.store.redaction import RedactionStore  # edits, deletes, reactions (issue #12)
from freeq.store.bans import BanRecords  # K-lines and D-lines (issue #13)

#: Names other modules import from here (the store's public face, as before its parts were split out).
__all__ = [
    "SCHEMA_VERSION", "CHUNK_MAX_MESSAGES", "CHUNK_MAX_SPAN_MS", "MSGID_NEAR_MS", "MSGID_SKEW_MS",
    "MSGID_SCAN_CHUNKS", "MAX_PENDING_WRITES", "MAX_COUNTED_TARGETS", "RECENT_MSGIDS", "UNDECRYPTABLE",
    "HWM_SUFFIX", "HWM_INTERVAL", "ChannelRecord", "Key", "Store", "StoreError", "StoredMessage",
    "hwm_path", "read_high_water_mark", "write_high_water_mark", "pack_columns", "unpack_columns",
]

log = Logger()

SCHEMA_VERSION = 4

# The tunables below are read from this module when used (tests patch them here).
#: A chunk holds at most this many messages (bigger batches of one conversation are split) ...
CHUNK_MAX_MESSAGES = 256
#: ... and messages at most this far apart in time, so a time bound maps to a short index range.
CHUNK_MAX_SPAN_MS = 60_000
#: A msgid lookup first searches chunks this close to the time in a ULID msgid, then this far.
MSGID_NEAR_MS = 2_000
MSGID_SKEW_MS = 120_000
#: Across all conversations, a msgid that is not a ULID is looked for in this many newest chunks only.
MSGID_SCAN_CHUNKS = 20_000

_INF = 1 << 62
#: Exact membership of one msgid in a chunk's space-separated list (no LIKE wildcards).
_HAS_MSGID = "instr(' ' || msgids || ' ', ' ' || ? || ' ') > 0"


def _schema_script(name: str) -> str:
    return resources.files("freeq.store").joinpath("schema", name).read_text("utf-8")


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.row_factory = sqlite3.Row
    return conn


class Store(StateTables, ReadMarkerRecords, MetadataRecords, RedactionStore, BanRecords, KeyRecords, HighWaterMark,
            GroupCommit, ChunkCodec):
    """Persistence for one server. Construct with :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, path: str, reactor: Any, flush_interval: float = 0.2,
                 max_messages_per_target: int = 10000, retention_days: float = 0) -> None:
        self.conn = conn
        self.path = path
        self.reactor = reactor
        self.flush_interval = flush_interval
        self.max_messages_per_target = max_messages_per_target
        # A target is trimmed back to the cap only once it is this far over it: trimming on every
        # group commit cost a third of the DB thread (one DELETE per touched target per flush).
        self.trim_slack = max_messages_per_target // 10
        self._row_counts: dict[str, int] = {}  # target -> messages stored (an upper bound); DB thread only
        # Duplicate check (INSERT OR IGNORE of v1): the newest RECENT_MSGIDS msgids; DB thread only.
        self._recent: set[str] = set()
        self._recent_order: Optional[list[str]] = None  # the same, oldest first
        self.retention_days = retention_days
        self.cipher: Optional[MessageCipher] = None
        self.pool: Optional[ThreadPool] = None
        self._pending: list[tuple[str, tuple[Any, ...]]] = []  # state writes: (kind, args)
        # History, kept apart from state writes so queueing a message makes one tuple: (target, msgid,
        # time_ms, command, sender, account, shown_to, text, tags).
        self._messages: list[tuple[Any, ...]] = []
        self._inflight = 0
        self._dropped = 0
        self._failing = False
        # The commit generation: +1 per group commit, kept in ``meta`` and, at most every
        # ``hwm_interval`` seconds (``clock``), in the high-water-mark file ``hwm_file``. DB thread only
        # once started.
        self.generation = 0
        self.created = False  # the file was missing, empty or had no tables when opened
        self.hwm_file: Optional[str] = None  # None: no mark (:memory:)
        self.hwm_interval = HWM_INTERVAL
        self.clock: Callable[[], float] = time.monotonic
        self._hwm_generation = -1  # the generation last written to hwm_file
        self._hwm_at = -float("inf")
        self._hwm_failing = False

    # ------------------------------------------------------------------
    # Opening and schema
    # ------------------------------------------------------------------
    @classmethod
    def open(cls, path: str, reactor: Any, must_exist: Optional[str] = None, **kw: Any) -> "Store":
        """Open (creating or upgrading) the database at ``path``; raise :class:`StoreError` clearly.

        ``:memory:`` gives a private in-memory database (tests, or a server without persistence).
        With ``must_exist`` (a one-line reason), a missing, empty or table-less file is refused with
        that message before anything is created or written.
        """
        if path == ":memory:":
            conn = _connect(path)
            conn.execute("PRAGMA foreign_keys=ON")
            store = cls(conn, path, reactor, **kw)
            store._migrate(set())
            return store
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StoreError(f"--db-path: directory {directory} does not exist")
        exists = os.path.exists(path) and os.path.getsize(path) > 0
        if not exists and must_exist:
            raise StoreError(must_exist)
        if not exists and not os.access(directory, os.W_OK):
            raise StoreError(f"--db-path: cannot create {path}: directory {directory} is not writable")
        if exists and not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"--db-path: {path} is not readable and writable by this user")
        if not exists:
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # the database is private too
            except OSError as e:  # access() is only advisory (root, read-only or special filesystems)
                raise StoreError(f"--db-path: cannot create {path}: {e.strerror}") from None
        try:
            conn = _connect(path)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            raise StoreError(f"--db-path: {path} is not a SQLite database or is corrupt ({e})") from None
        if tables and "meta" not in tables:
            conn.close()
            raise StoreError(f"--db-path: {path} is a SQLite database but not a freeq one; refusing to touch it")
        if not tables and must_exist:
            conn.close()
            raise StoreError(must_exist)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"--db-path: cannot enable WAL mode on {path} (got {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as e:
            conn.close()
            raise StoreError(f"--db-path: {path} cannot be used ({e})") from None
        if check != "ok":
            conn.close()
            raise StoreError(f"--db-path: {path} failed its integrity check ({check}); restore a backup")
        store = cls(conn, path, reactor, **kw)
        store._migrate(tables)
        store.created = not tables
        store.hwm_file = hwm_path(path)
        row = conn.execute("SELECT value FROM meta WHERE key=?", (GENERATION_KEY,)).fetchone()
        store.generation = int(row[0]) if row else 0
        return store

    def _version(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self, tables: set[str]) -> None:
        version = self._version() if tables else 0
        if version > SCHEMA_VERSION:
            raise StoreError(f"--db-path: {self.path} has schema v{version}, newer than this freeq "
                             f"(v{SCHEMA_VERSION}); upgrade freeq")
        if version == SCHEMA_VERSION:
            return
        if version > 0:
            backup = f"{self.path}.v{version}.bak"
            dest = sqlite3.connect(backup)
            with dest:
                self.conn.backup(dest)
            dest.close()
            log.info("Backed up {path} to {backup} before upgrading the schema", path=self.path, backup=backup)
        # A new database runs v1.sql and then every upgrade, so fresh and upgraded ones are the same.
        scripts = (["v1.sql"] if version == 0 else []) + [
            f"upgrade-{v}.sql" for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1)]
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for name in scripts:
                for statement in _split_sql(_schema_script(name)):
                    self.conn.execute(statement)
            self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                              (str(SCHEMA_VERSION),))
            self.conn.execute("COMMIT")
        except sqlite3.Error as e:
            if self.conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                self.conn.execute("ROLLBACK")
            raise StoreError(f"--db-path: schema upgrade of {self.path} failed ({e}); nothing was changed") from None
        log.info("Database {path} at schema v{version}", path=self.path, version=SCHEMA_VERSION)

    # ------------------------------------------------------------------
    # History chunks (DB thread)
    # ------------------------------------------------------------------
    def _chunk_rows(self, target: str, msgs: list[tuple[Any, ...]], out: list[tuple[Any, ...]],
                    stored: list[Sequence[str]]) -> int:
        """Append to ``out`` the chunk rows of ``msgs`` (queued message tuples of one conversation, in
        order) and to ``stored`` their msgids; return how many messages they hold.

        A msgid already stored (among the newest ``RECENT_MSGIDS``) or repeated is skipped, as
        v1's ``INSERT OR IGNORE`` did. Normally one row; more when there are over
        ``CHUNK_MAX_MESSAGES`` or they span more than ``CHUNK_MAX_SPAN_MS`` (a batch held back by
        a failing disk, a clock step).
        """
        recent = self._recent
        cols = list(zip(*msgs))  # columns: target, msgid, time_ms, command, sender, account, shown_to, text, tags
        ids = cols[1]
        size = len(recent)
        if recent.isdisjoint(ids):
            recent.update(ids)
            if len(recent) - size < len(ids):  # repeated within the batch: keep the first of each
                seen: set[str] = set()
                unique = []
                for m in msgs:
                    if m[1] not in seen:
                        seen.add(m[1])
                        unique.append(m)
                msgs, cols = unique, list(zip(*unique))
        else:
            kept = []
            for m in msgs:
                if m[1] not in recent:
                    recent.add(m[1])
                    kept.append(m)
            if not kept:
                return 0
            msgs, cols = kept, list(zip(*kept))
        stored.append(cols[1])
        times = cols[2]
        lo, hi = min(times), max(times)
        if len(msgs) <= CHUNK_MAX_MESSAGES and hi - lo <= CHUNK_MAX_SPAN_MS:
            out.append(self._seal_chunk(target, cols, lo, hi))
            return len(msgs)
        part: list[tuple[Any, ...]] = []
        for m in msgs:
            t = m[2]
            if part and (len(part) >= CHUNK_MAX_MESSAGES or max(hi, t) - min(lo, t) > CHUNK_MAX_SPAN_MS):
                out.append(self._seal_chunk(target, list(zip(*part)), lo, hi))
                part = []
            if not part:
                lo = hi = t
            part.append(m)
            lo, hi = min(lo, t), max(hi, t)
        out.append(self._seal_chunk(target, list(zip(*part)), lo, hi))
        return len(msgs)

    # ------------------------------------------------------------------
    # Retention (hourly; DB thread)
    # ------------------------------------------------------------------
    def _retention_guarded(self) -> Optional[defer.Deferred]:
        if self.pool is None:
            return None
        cutoff = int((time.time() - self.retention_days * 86400) * 1000)

        def prune() -> None:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM message_chunks WHERE last_ms < ?", (cutoff,))
                # Chunks straddling the cutoff lose their expired messages (re-encrypted without them).
                for row in conn.execute(f"SELECT {CHUNK_COLUMNS} FROM message_chunks WHERE last_ms >= ? AND "
                                        f"last_ms <= ? AND first_ms < ?",
                                        (cutoff, cutoff + CHUNK_MAX_SPAN_MS, cutoff)).fetchall():
                    self._rewrite_chunk(conn, row, lambda key: key[0] >= cutoff)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._row_counts.clear()  # re-read on the next write to each target

        d = self._in_thread(prune)
        d.addErrback(lambda f: log.failure("retention pruning failed", f))
        return d

    # ------------------------------------------------------------------
    # Reads (Deferreds; DB thread)
    # ------------------------------------------------------------------
    def history(self, target: str, query: str, args: tuple[Any, ...], limit: int) -> defer.Deferred:
        """Run a CHATHISTORY query (LATEST, BEFORE, AFTER, AROUND, BETWEEN) after flushing queued writes.

        ``args`` are bounds: Unix ms, ``("msgid", id)``, or None (LATEST ``*``). The result is a list
        of :class:`StoredMessage`, ascending by (time, insertion order).
        """
        self.flush()
        return self._in_thread(lambda: self._history(target, query, args, limit))

    def _find_chunk(self, conn: sqlite3.Connection, msgid: str, target: Optional[str]) -> Optional[sqlite3.Row]:
        """The chunk holding ``msgid`` (in ``target``, or any conversation), found without decrypting.

        A ULID msgid carries its creation time: chunks within ``MSGID_NEAR_MS``, then
        ``MSGID_SKEW_MS`` (a federated message's ULID comes from the sender's clock) of it are
        searched through the time index. Otherwise, and for a ULID not found there, the whole
        conversation's msgids are searched (bounded by the cap); across all conversations a non-ULID
        msgid is searched in the msgids of the newest ``MSGID_SCAN_CHUNKS`` chunks only (never
        decrypting), so one lookup (REST ``verify``, open to anyone) costs a bounded scan.
        """
        if not msgid or " " in msgid:
            return None
        where, params = ("target=? AND ", [target]) if target is not None else ("", [])
        base = f"SELECT {CHUNK_COLUMNS} FROM message_chunks WHERE {where}"
        hint = ulid_ms(msgid)
        if hint is not None:
            for slack in (MSGID_NEAR_MS, MSGID_SKEW_MS):
                row = conn.execute(
                    base + f"last_ms >= ? AND last_ms <= ? AND first_ms <= ? AND {_HAS_MSGID} LIMIT 1",
                    (*params, hint - slack, hint + slack + CHUNK_MAX_SPAN_MS, hint + slack, msgid)).fetchone()
                if row is not None:
                    return row
            if target is None:
                return None
        if target is None:
            return conn.execute(
                base + f"id > (SELECT COALESCE(MAX(id), 0) FROM message_chunks) - ? AND {_HAS_MSGID} LIMIT 1",
                (MSGID_SCAN_CHUNKS, msgid)).fetchone()
        return conn.execute(base + f"{_HAS_MSGID} LIMIT 1", (*params, msgid)).fetchone()

    def _locate(self, conn: sqlite3.Connection, target: str, msgid: str) -> Optional[tuple[Key, StoredMessage]]:
        row = self._find_chunk(conn, msgid, target)
        if row is None:
            return None
        entries, _ = self._open_chunk(row)
        return entries[row["msgids"].split(" ").index(msgid)]

    def _history(self, target: str, query: str, args: tuple[Any, ...], limit: int) -> list[StoredMessage]:
        conn = self.conn
        # A timestamp bound excludes that millisecond; as a key, it sits before or after every message of it.
        bounds: list[Any] = []
        for a in args:
            if isinstance(a, tuple) and a[0] == "msgid":
                found = self._locate(conn, target, a[1])
                if found is None:
                    return []
                bounds.append(found[0])
            else:
                bounds.append(a)

        def after(b: Any) -> Key:  # key > after(b): later than the bound
            return b if isinstance(b, tuple) else (int(b), _INF, 0)

        def before(b: Any) -> Key:  # key < before(b): earlier than the bound
            return b if isinstance(b, tuple) else (int(b), -1, 0)

        if query == "LATEST":
            lo = after(bounds[0]) if bounds and bounds[0] is not None else None
            return self._select(conn, target, lo, None, limit, True)[::-1]
        if query == "BEFORE":
            return self._select(conn, target, None, before(bounds[0]), limit, True)[::-1]
        if query == "AFTER":
            return self._select(conn, target, after(bounds[0]), None, limit, False)
        if query == "AROUND":
            b = bounds[0]
            half = max(limit // 2, 1)
            # Before: up to and including the bound's millisecond (a timestamp), or strictly before the
            # message; after: the message itself onwards, or strictly after the millisecond.
            hi = b if isinstance(b, tuple) else (int(b), _INF, 0)
            lo = (b[0], b[1], b[2] - 1) if isinstance(b, tuple) else (int(b), _INF, 0)
            older = self._select(conn, target, None, hi, half, True)[::-1]
            return older + self._select(conn, target, lo, None, limit - len(older), False)
        if query == "BETWEEN":
            a, b = (before(x) for x in bounds[:2])  # a timestamp compares as the start of its millisecond
            ascending = a <= b
            first, second = (bounds[0], bounds[1]) if ascending else (bounds[1], bounds[0])
            rows = self._select(conn, target, after(first), before(second), limit, not ascending)
            return rows if ascending else rows[::-1]
        raise ValueError(query)

    def _select(self, conn: sqlite3.Connection, target: str, lo: Optional[Key], hi: Optional[Key], limit: int,
                newest: bool) -> list[StoredMessage]:
        """The ``limit`` newest (or oldest) messages of ``target`` with ``lo < key < hi``, in that order.

        Chunks are read in order of their latest (or earliest) time, so every chunk not yet read is
        known to hold only older (newer) messages: reading stops as soon as ``limit`` messages beat it.
        """
        if limit <= 0:
            return []
        clauses: list[str] = ["target=?"]
        params: list[Any] = [target]
        if hi is not None:
            clauses.append("first_ms <= ?")
            params.append(hi[0])
            if newest:
                clauses.append("last_ms <= ?")  # chunks span at most CHUNK_MAX_SPAN_MS: an index range
                params.append(hi[0] + CHUNK_MAX_SPAN_MS)
        if lo is not None:
            clauses.append("last_ms >= ?")
            params.append(lo[0])
            if not newest:
                clauses.append("first_ms >= ?")
                params.append(lo[0] - CHUNK_MAX_SPAN_MS)
        order = "last_ms DESC" if newest else "first_ms"  # index order; ties are sorted out below
        heap: list[tuple[Key, StoredMessage]] = []  # the best `limit` so far; heap[0] the worst of them
        for row in conn.execute(f"SELECT {CHUNK_COLUMNS} FROM message_chunks WHERE {' AND '.join(clauses)} "
                                f"ORDER BY {order}", params):
            if len(heap) >= limit:
                worst = heap[0][0][0]
                if (worst > row["last_ms"]) if newest else (-worst < row["first_ms"]):
                    break
            for key, m in self._open_chunk(row)[0]:
                if (lo is not None and key <= lo) or (hi is not None and key >= hi):
                    continue
                k = key if newest else (-key[0], -key[1], -key[2])
                if len(heap) < limit:
                    heapq.heappush(heap, (k, m))
                elif k > heap[0][0]:
                    heapq.heapreplace(heap, (k, m))
        heap.sort(key=lambda e: e[0], reverse=True)
        return [m for _, m in heap]

    def targets(self, targets: Iterable[str], start_ms: int, end_ms: int, limit: int,
                dm_account: Optional[str] = None) -> defer.Deferred:
        """Latest message time per conversation between two times, newest first.

        Covers the given channel keys and, with ``dm_account``, that account's private
        conversations. Rows are (key, name to show, latest time in ms); for a private
        conversation the name is the other party's nick as last seen.
        """
        wanted = list(targets)
        self.flush()

        def run() -> list[tuple[str, str, int]]:
            lo, hi = min(start_ms, end_ms), max(start_ms, end_ms)
            clauses, params = [], []
            if wanted:
                clauses.append(f"target IN ({','.join('?' * len(wanted))})")
                params.extend(wanted)
            if dm_account:
                # exact prefix/suffix checks (not LIKE: a DID may contain LIKE wildcards)
                clauses.append("(substr(target, 1, 3) = 'dm:' AND (substr(target, 4, length(?) + 1) = ? || ' ' "
                               "OR substr(target, -length(?) - 1) = ' ' || ?))")
                params.extend([dm_account, dm_account, dm_account, dm_account])
            if not clauses:
                return []
            where = " OR ".join(clauses)
            latest: dict[str, int] = dict(self.conn.execute(
                f"SELECT target, MAX(last_ms) FROM message_chunks WHERE ({where}) AND last_ms > ? AND last_ms < ? "
                f"GROUP BY target", (*params, lo, hi)).fetchall())
            # Chunks reaching past `hi` may still hold messages before it.
            for row in self.conn.execute(
                    f"SELECT {CHUNK_COLUMNS} FROM message_chunks WHERE ({where}) AND last_ms >= ? AND last_ms <= ? "
                    f"AND first_ms < ?", (*params, hi, hi + CHUNK_MAX_SPAN_MS, hi)).fetchall():
                times = [k[0] for k, _ in self._open_chunk(row)[0] if lo < k[0] < hi]
                if times:
                    latest[row["target"]] = max(latest.get(row["target"], lo), max(times))
            out = []
            for key, t in sorted(latest.items(), key=lambda kv: kv[1], reverse=True)[:limit]:
                name = key
                if key.startswith("dm:"):
                    last = self.conn.execute(f"SELECT {CHUNK_COLUMNS} FROM message_chunks WHERE target=? "
                                             f"ORDER BY last_ms DESC, id DESC LIMIT 1", (key,)).fetchone()
                    if last is not None:
                        entries, ok = self._open_chunk(last)
                        if ok:
                            m = max(entries, key=lambda e: e[0])[1]
                            name = m.shown_to if m.account == dm_account else m.sender.split("!")[0]
                out.append((key, name, t))
            return out

        return self._in_thread(run)

    def count_messages(self) -> defer.Deferred:
        """How many messages history holds (for tests and admin)."""
        self.flush()
        return self._in_thread(
            lambda: self.conn.execute("SELECT COALESCE(SUM(count), 0) FROM message_chunks").fetchone()[0])

    def message(self, msgid: str) -> defer.Deferred:
        """The stored message ``msgid`` as ``(target, StoredMessage)``, or ``None`` (REST verify).

        See :meth:`_find_chunk` for which msgids are found.
        """
        self.flush()

        def run() -> Optional[tuple[str, StoredMessage]]:
            row = self._find_chunk(self.conn, msgid, None)
            if row is None:
                return None
            entries, _ = self._open_chunk(row)
            return row["target"], entries[row["msgids"].split(" ").index(msgid)][1]

        return self._in_thread(run)


def _split_sql(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]