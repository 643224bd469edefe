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
"""
from __future__ import annotations

import collections
import dataclasses
import heapq
import json
import os
import sqlite3
import time
from importlib import resources
from typing import Any, Callable, Iterable, Optional, Sequence

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from freeq.state.channel import ChannelRecord  # the channel's snapshot; the store persists it
from freeq.store.crypto import DecryptionError, MessageCipher

log = Logger()

SCHEMA_VERSION = 2
#: Queued writes kept while the disk refuses them, before the oldest are dropped (and logged).
MAX_PENDING_WRITES = 200_000
#: Per-target row counts kept in memory for the history cap; past this many targets they are re-read.
MAX_COUNTED_TARGETS = 100_000

#: A chunk holds at most this many messages (bigger batches of one conversation are split) ...
CHUNK_MAX_MESSAGES = 256
#: ... and messages at most this far apart in time, so a time bound maps to a short index range.
CHUNK_MAX_SPAN_MS = 60_000
#: How many of the newest msgids the duplicate check remembers (seeded from the database on start).
RECENT_MSGIDS = 100_000
#: A msgid lookup first searches chunks this close to the time in a ULID msgid, then this far.
MSGID_NEAR_MS = 2_000
MSGID_SKEW_MS = 120_000
#: Across all conversations, a msgid that is not a ULID is looked for in this many newest chunks only.
MSGID_SCAN_CHUNKS = 20_000
#: Tag on a history message whose stored row does not decrypt.
UNDECRYPTABLE = "+freeq.at/undecryptable"
#: The high-water mark beside a database file: ``<db>.hwm`` holds the newest commit generation known
#: to be durable, so a database rolled back (a lost or corrupt WAL, an old copy) is noticed at start-up.
HWM_SUFFIX = ".hwm"
#: The mark is rewritten (fsync of the WAL, then of the mark) at most this often while writes go on,
#: and on every clean stop: a roll-back of less than this many seconds of commits may go unnoticed.
HWM_INTERVAL = 5.0
_GENERATION_KEY = "commit_generation"
_SET_GENERATION = "INSERT OR REPLACE INTO meta(key, value) VALUES ('commit_generation', ?)"

#: A message's place in a conversation: (time in ms, chunk id, position in the chunk).
Key = tuple[int, int, int]
_INF = 1 << 62
_CHUNK_COLS = "id, target, first_ms, last_ms, count, msgids, key_fp, format, legacy, payload"
_INSERT_CHUNK = ("INSERT INTO message_chunks(target, first_ms, last_ms, count, msgids, key_fp, format, payload) "
                 "VALUES (?,?,?,?,?,?,2,?)")
#: Exact membership of one msgid in a chunk's space-separated list (no LIKE wildcards).
_HAS_MSGID = "instr(' ' || msgids || ' ', ' ' || ? || ' ') > 0"
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_SET = frozenset(_CROCKFORD)


class StoreError(Exception):
    """The database cannot be used; the message is one line for the operator."""


@dataclasses.dataclass
class StoredMessage:
    """One history message, decrypted."""

    msgid: str
    time_ms: int
    command: str
    sender: str
    account: Optional[str]
    shown_to: str
    text: str
    tags: dict[str, str]


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
    from freeq.store.keys import write_secret_atomically

    write_secret_atomically(path, json.dumps({"format": 1, "generation": generation}).encode())


def _schema_script(name: str) -> str:
    return resources.files("freeq.store").joinpath("schema", name).read_text("utf-8")


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
    conn.row_factory = sqlite3.Row
    return conn


class Store:
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
        row = conn.execute("SELECT value FROM meta WHERE key=?", (_GENERATION_KEY,)).fetchone()
        store.generation = int(row[0]) if row else 0
        return store

    def rebaseline(self, generation: int) -> None:
        """At start-up: make both the database and the high-water mark say at least ``generation``.

        Called once the database has passed its checks (with ``--accept-data-loss``, the mark it
        failed is raised past, so an even older copy is still noticed later). Synchronous.
        """
        if generation > self.generation:
            self.conn.execute(_SET_GENERATION, (str(generation),))
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
    # Keys
    # ------------------------------------------------------------------
    def recorded_key_fingerprint(self) -> Optional[str]:
        """The fingerprint of the key the stored messages were written with (None for a new DB)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='db_key_fingerprint'").fetchone()
        return row[0] if row else None

    def use_cipher(self, cipher: MessageCipher) -> None:
        """Check the key against the one the data was written with, and use it."""
        recorded = self.recorded_key_fingerprint()
        if recorded is None:
            self.conn.execute("INSERT INTO meta(key, value) VALUES ('db_key_fingerprint', ?)", (cipher.fingerprint,))
        elif recorded != cipher.fingerprint:
            raise StoreError(
                f"db-encryption-key.secret (fingerprint {cipher.fingerprint}) is not the key this database was "
                f"written with (fingerprint {recorded}); refusing to start. Restore the right key file "
                f"(or finish a rotation with `freeq-admin rekey`)")
        self.cipher = cipher

    def record_signing_key(self, public_key_b64: str, now: float) -> None:
        """Note the current message-signing public key; retire any previous one (kept for verification)."""
        ts = int(now)
        row = self.conn.execute("SELECT valid_until FROM signing_keys WHERE public_key=?", (public_key_b64,)).fetchone()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("UPDATE signing_keys SET valid_until=? WHERE valid_until IS NULL AND public_key<>?",
                          (ts, public_key_b64))
        if row is None:
            self.conn.execute("INSERT INTO signing_keys(public_key, valid_from, valid_until) VALUES (?, ?, NULL)",
                              (public_key_b64, ts))
        elif row[0] is not None:
            self.conn.execute("UPDATE signing_keys SET valid_until=NULL WHERE public_key=?", (public_key_b64,))
        self.conn.execute("COMMIT")

    def signing_keys(self) -> list[tuple[str, int, Optional[int]]]:
        """Every signing key on record: (public key, valid from, valid until or None)."""
        return [tuple(r) for r in self.conn.execute(  # type: ignore[misc]
            "SELECT public_key, valid_from, valid_until FROM signing_keys ORDER BY valid_from")]

    # ------------------------------------------------------------------
    # Start-up loading (synchronous, before listening)
    # ------------------------------------------------------------------
    def load_channels(self) -> list[ChannelRecord]:
        """Every persisted channel with its lists and DID ops."""
        out: dict[str, ChannelRecord] = {}
        for r in self.conn.execute("SELECT * FROM channels"):
            out[r["name"]] = ChannelRecord(
                r["display"], r["created_at"], r["modes"], r["chan_key"], r["user_limit"], r["topic"],
                r["topic_setter"], r["topic_time"], r["founder_did"], {"b": [], "e": [], "I": []}, {})
        for r in self.conn.execute("SELECT * FROM channel_lists ORDER BY rowid"):
            rec = out.get(r["channel"])
            if rec is not None:
                rec.lists[r["mode"]].append((r["mask"], r["setter"], r["set_at"]))
        for r in self.conn.execute("SELECT * FROM channel_did_ops"):
            rec = out.get(r["channel"])
            if rec is not None:
                rec.did_ops[r["did"]] = (r["granted_by"], r["granted_at"])
        return list(out.values())

    def load_nick_owners(self) -> dict[str, tuple[str, str]]:
        """folded nick -> (display nick, DID)."""
        return {r["nick"]: (r["display"], r["did"]) for r in self.conn.execute("SELECT * FROM nick_owners")}

    def load_oper_dids(self) -> set[str]:
        """DIDs granted server-operator status in the database."""
        return {r[0] for r in self.conn.execute("SELECT did FROM oper_dids")}

    def load_channel_crdts(self) -> dict[str, str]:
        """folded channel -> serialized CRDT state, as saved by :meth:`save_channel_crdt`."""
        return {r[0]: r[1] for r in self.conn.execute("SELECT channel, state FROM channel_crdt")}

    # ------------------------------------------------------------------
    # The DB thread
    # ------------------------------------------------------------------
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
                conn.executemany(_INSERT_CHUNK, rows)  # history has no ordering ties with the other tables
            counts = self._trim(conn, added) if self.max_messages_per_target and by_target else {}
            conn.execute(_SET_GENERATION, (str(self.generation + 1),))
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

    # ------------------------------------------------------------------
    # Writes (queued; reactor thread)
    # ------------------------------------------------------------------
    def save_channel(self, rec: ChannelRecord) -> None:
        """Insert or replace a channel with its lists and DID ops."""
        self._pending.append(("channel", (rec,)))

    def delete_channel(self, name: str) -> None:
        """Forget a channel (its history is kept until retention removes it)."""
        self._pending.append(("delete_channel", (name,)))

    def save_channel_crdt(self, folded: str, state: str) -> None:
        """Insert or replace the federation CRDT state of channel ``folded``."""
        self._pending.append(("channel_crdt", (folded, state)))

    def delete_channel_crdt(self, folded: str) -> None:
        """Forget the federation CRDT state of channel ``folded``."""
        self._pending.append(("delete_channel_crdt", (folded,)))

    def bind_nick(self, folded: str, display: str, did: str, now: float) -> None:
        """Record that ``did`` owns ``display`` (replacing its previous nick)."""
        self._pending.append(("bind_nick", (folded, display, did, int(now))))

    def _op_channel(self, conn: sqlite3.Connection, rec: ChannelRecord) -> None:
        from freeq.irc.names import fold

        name = fold(rec.name)
        conn.execute(
            "INSERT OR REPLACE INTO channels(name, display, created_at, modes, chan_key, user_limit, topic, "
            "topic_setter, topic_time, founder_did) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (name, rec.name, rec.created_at, rec.modes, rec.key, rec.limit, rec.topic, rec.topic_setter,
             rec.topic_time, rec.founder))
        conn.execute("DELETE FROM channel_lists WHERE channel=?", (name,))
        conn.executemany("INSERT OR IGNORE INTO channel_lists(channel, mode, mask, setter, set_at) VALUES (?,?,?,?,?)",
                         [(name, mode, m, s, t) for mode, entries in rec.lists.items() for m, s, t in entries])
        conn.execute("DELETE FROM channel_did_ops WHERE channel=?", (name,))
        conn.executemany("INSERT INTO channel_did_ops(channel, did, granted_by, granted_at) VALUES (?,?,?,?)",
                         [(name, did, by, at) for did, (by, at) in rec.did_ops.items()])

    def _op_delete_channel(self, conn: sqlite3.Connection, name: str) -> None:
        conn.execute("DELETE FROM channels WHERE name=?", (name,))

    def _op_channel_crdt(self, conn: sqlite3.Connection, folded: str, state: str) -> None:
        conn.execute("INSERT OR REPLACE INTO channel_crdt(channel, state) VALUES (?,?)", (folded, state))

    def _op_delete_channel_crdt(self, conn: sqlite3.Connection, folded: str) -> None:
        conn.execute("DELETE FROM channel_crdt WHERE channel=?", (folded,))

    def _op_bind_nick(self, conn: sqlite3.Connection, folded: str, display: str, did: str, ts: int) -> None:
        conn.execute("DELETE FROM nick_owners WHERE did=? OR nick=?", (did, folded))
        conn.execute("INSERT INTO nick_owners(nick, display, did, bound_at) VALUES (?,?,?,?)",
                     (folded, display, did, ts))


    def append_message(self, target: str, msgid: str, now: float, command: str, sender: str,
                       account: Optional[str], shown_to: str, text: str, tags: dict[str, str]) -> None:
        """Queue one message for history; it is encrypted, with its conversation's others, on the DB thread."""
        self._messages.append((target, msgid, int(now * 1000), command, sender, account, shown_to, text, tags))

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

    def _seal_chunk(self, target: str, cols: Sequence[Sequence[Any]], lo: int, hi: int) -> tuple[Any, ...]:
        """The ``message_chunks`` row (format 2) of messages of ``target`` from ``lo`` to ``hi`` ms, given
        as the columns of their queued tuples (target, msgid, time_ms, command, ..., tags)."""
        cipher = self.cipher
        assert cipher is not None, "use_cipher() before storing messages"
        msgids = " ".join(cols[1])
        # The payload is the columns time_ms, command, sender, account, shown_to, text, tags, in chunk
        # order (see pack_columns); target and msgids are bound as associated data instead.
        plain = pack_columns(cols[2:]).encode()
        return (target, lo, hi, len(cols[1]), msgids, cipher.fingerprint, cipher.encrypt_chunk(plain, target, msgids))

    def _open_chunk(self, row: sqlite3.Row) -> tuple[list[tuple[Key, StoredMessage]], bool]:
        """Decrypt one chunk row: its messages with their sort keys, and whether it decrypted.

        A row that does not decrypt is logged and stands for placeholder messages (no text, the
        ``+freeq.at/undecryptable`` tag) so a client still sees that something is missing.
        """
        cipher = self.cipher
        assert cipher is not None
        cid, target, msgids = row["id"], row["target"], row["msgids"]
        try:
            if row["format"] == 2:
                ids = msgids.split(" ")
                cols = unpack_columns(cipher.decrypt_chunk(row["payload"], target, msgids).decode(), len(ids))
                if not isinstance(cols, list) or len(cols) != 7 or any(len(c) != len(ids) for c in cols):
                    raise ValueError("chunk shape")
                out = []
                for idx, (msgid, t, command, sender, account, shown_to, text, tags) in enumerate(zip(ids, *cols)):
                    out.append(((t, cid, idx), StoredMessage(msgid, t, command, sender, account, shown_to, text, tags)))
                return out, True
            command, sender, account, shown_to = json.loads(row["legacy"])
        except (DecryptionError, ValueError, TypeError):
            log.error("History chunk {chunk} in {target} ({count} messages) does not decrypt; skipped",
                      chunk=cid, target=target, count=row["count"])
            first, last = row["first_ms"], row["last_ms"]
            out = []
            for idx, msgid in enumerate(msgids.split(" ")):
                hint = _ulid_ms(msgid)
                t = hint if hint is not None and first <= hint <= last else first
                out.append(((t, cid, idx), StoredMessage(msgid, t, "NOTICE", "*", None, "*", "", {UNDECRYPTABLE: ""})))
            return out, False
        # Format 1: one v1 message, its clear columns in `legacy`.
        t = row["first_ms"]
        try:
            body = json.loads(cipher.decrypt(row["payload"], msgids, target))
            text, tags, ok = body["text"], body.get("tags", {}), True
        except (DecryptionError, ValueError, KeyError, TypeError):
            log.error("History row {msgid} in {target} does not decrypt; skipped", msgid=msgids, target=target)
            text, tags, ok = "", {UNDECRYPTABLE: ""}, False
        return [((t, cid, 0), StoredMessage(msgids, t, command, sender, account, shown_to, text, tags))], ok

    def _rewrite_chunk(self, conn: sqlite3.Connection, row: sqlite3.Row, keep: Callable[[Key], bool]) -> int:
        """Keep only the messages of chunk ``row`` whose key ``keep`` accepts (re-encrypting it under the
        current key as format 2, same id, so order is unchanged); return how many it holds now.

        A chunk that does not decrypt cannot be split and is left whole.
        """
        entries, ok = self._open_chunk(row)
        if not ok:
            return int(row["count"])
        kept = [(row["target"], m.msgid, m.time_ms, m.command, m.sender, m.account, m.shown_to, m.text, m.tags)
                for key, m in entries if keep(key)]
        if len(kept) == len(entries):
            return len(kept)
        if not kept:
            conn.execute("DELETE FROM message_chunks WHERE id=?", (row["id"],))
            return 0
        cols = list(zip(*kept))
        target, lo, hi, count, msgids, key_fp, payload = self._seal_chunk(row["target"], cols, min(cols[2]),
                                                                          max(cols[2]))
        conn.execute("UPDATE message_chunks SET first_ms=?, last_ms=?, count=?, msgids=?, key_fp=?, format=2, "
                     "legacy=NULL, payload=? WHERE id=?", (lo, hi, count, msgids, key_fp, payload, row["id"]))
        return count

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
        row = conn.execute(f"SELECT {_CHUNK_COLS} FROM message_chunks WHERE id=?", (cid,)).fetchone()
        return total + self._rewrite_chunk(conn, row, lambda key: key[2] >= n - need)

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
                for row in conn.execute(f"SELECT {_CHUNK_COLS} FROM message_chunks WHERE last_ms >= ? AND "
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
        base = f"SELECT {_CHUNK_COLS} FROM message_chunks WHERE {where}"
        hint = _ulid_ms(msgid)
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
        for row in conn.execute(f"SELECT {_CHUNK_COLS} FROM message_chunks WHERE {' AND '.join(clauses)} "
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
                    f"SELECT {_CHUNK_COLS} FROM message_chunks WHERE ({where}) AND last_ms >= ? AND last_ms <= ? "
                    f"AND first_ms < ?", (*params, hi, hi + CHUNK_MAX_SPAN_MS, hi)).fetchall():
                times = [k[0] for k, _ in self._open_chunk(row)[0] if lo < k[0] < hi]
                if times:
                    latest[row["target"]] = max(latest.get(row["target"], lo), max(times))
            out = []
            for key, t in sorted(latest.items(), key=lambda kv: kv[1], reverse=True)[:limit]:
                name = key
                if key.startswith("dm:"):
                    last = self.conn.execute(f"SELECT {_CHUNK_COLS} FROM message_chunks WHERE target=? "
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


_PACKED = "\x01"  # first field of a packed chunk payload (a JSON one starts with "[")
_SEP = "\x00"  # IRC text cannot hold NUL; a chunk whose fields do falls back to JSON


def pack_columns(cols: Sequence[Sequence[Any]]) -> str:
    """Serialize a chunk's columns (time_ms, command, sender, account, shown_to, text, tags).

    The usual form is every field of every column joined by NUL after a marker field: one
    ``str.join`` instead of a JSON encoder walking every value (about a third of the DB thread's
    time per message). Tags are JSON only when a message has any; a missing account is empty.
    If any field holds a NUL (the fields are checked by counting separators) the columns are
    written as a JSON array instead; :func:`unpack_columns` reads both.
    """
    times, commands, senders, accounts, shown, texts, tags = cols
    packed = _SEP.join([_PACKED, *map(str, times), *commands, *senders, *[a or "" for a in accounts], *shown,
                        *texts, *[json.dumps(t, separators=(",", ":")) if t else "" for t in tags]])
    if packed.count(_SEP) != 7 * len(times):
        return json.dumps(list(cols), separators=(",", ":"))
    return packed


def unpack_columns(text: str, n: int) -> list[Any]:
    """Inverse of :func:`pack_columns` for a chunk of ``n`` messages; ValueError if malformed."""
    if text.startswith("["):
        cols = json.loads(text)
        if not isinstance(cols, list):
            raise ValueError("chunk shape")
        return cols
    parts = text.split(_SEP)
    if len(parts) != 7 * n + 1 or parts[0] != _PACKED:
        raise ValueError("chunk shape")
    col: list[Any] = [parts[1 + i * n:1 + (i + 1) * n] for i in range(7)]
    col[0] = [int(t) for t in col[0]]
    col[3] = [a or None for a in col[3]]
    col[6] = [json.loads(t) if t else {} for t in col[6]]
    return col


def _ulid_ms(msgid: str) -> Optional[int]:
    """The millisecond time encoded in a ULID msgid (its first 10 characters), or None if not a ULID."""
    if len(msgid) != 26 or msgid[0] > "7":
        return None
    value = 0
    for c in msgid[:10]:
        digit = _CROCKFORD.find(c)
        if digit < 0:
            return None
        value = value * 32 + digit
    if not set(msgid[10:]) <= _CROCKFORD_SET:
        return None
    return value


def _split_sql(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
