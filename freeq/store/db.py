"""The SQLite store: versioned schema, WAL, one DB thread, encrypted message history.

Start-up (opening, upgrading, loading state) is synchronous and happens before any listener
opens. After that every statement runs on one dedicated thread: writes are queued on the
reactor thread and committed together every ``flush_interval`` seconds (group commit), reads
return Deferreds. SQLite in WAL mode with ``synchronous=NORMAL`` keeps every committed
transaction across a crash of the process, so a message is durable within one flush interval
(0.2 s by default) of being delivered.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
from importlib import resources
from typing import Any, Callable, Iterable, Optional, Sequence

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from freeq.store.crypto import DecryptionError, MessageCipher

log = Logger()

SCHEMA_VERSION = 1
#: Queued writes kept while the disk refuses them, before the oldest are dropped (and logged).
MAX_PENDING_WRITES = 200_000
#: Per-target row counts kept in memory for the history cap; past this many targets they are re-read.
MAX_COUNTED_TARGETS = 100_000

_INSERT_MESSAGE = ("INSERT OR IGNORE INTO messages(target, msgid, time_ms, command, sender, account, shown_to, "
                   "key_fp, payload) VALUES (?,?,?,?,?,?,?,?,?)")


class StoreError(Exception):
    """The database cannot be used; the message is one line for the operator."""


@dataclasses.dataclass
class ChannelRecord:
    """A persisted channel as loaded at start-up."""

    name: str
    created_at: int
    modes: str
    key: Optional[str]
    limit: Optional[int]
    topic: str
    topic_setter: str
    topic_time: int
    founder: Optional[str]
    lists: dict[str, list[tuple[str, str, int]]]
    did_ops: dict[str, tuple[str, int]]


@dataclasses.dataclass
class StoredMessage:
    """One history row, decrypted."""

    msgid: str
    time_ms: int
    command: str
    sender: str
    account: Optional[str]
    shown_to: str
    text: str
    tags: dict[str, str]


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
        self._row_counts: dict[str, int] = {}  # target -> rows stored (an upper bound); DB thread only
        self.retention_days = retention_days
        self.cipher: Optional[MessageCipher] = None
        self.pool: Optional[ThreadPool] = None
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self._inflight = 0
        self._dropped = 0
        self._failing = False

    # ------------------------------------------------------------------
    # Opening and schema
    # ------------------------------------------------------------------
    @classmethod
    def open(cls, path: str, reactor: Any, **kw: Any) -> "Store":
        """Open (creating or upgrading) the database at ``path``; raise :class:`StoreError` clearly.

        ``:memory:`` gives a private in-memory database (tests, or a server without persistence).
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
        scripts = ["v1.sql"] if version == 0 else [f"upgrade-{v}.sql" for v in range(version + 1, SCHEMA_VERSION + 1)]
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
            yield self._in_thread(lambda: None)
            self.pool.stop()
            self.pool = None
        if self._pending:
            log.critical("Database unwritable at shutdown: {n} queued writes are lost", n=len(self._pending))
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
        if not self._pending or self.pool is None:
            return defer.succeed(None)
        ops, self._pending = self._pending, []
        d = self._in_thread(lambda: self._apply(ops))
        d.addErrback(self._write_failed, ops)
        return d

    def _write_failed(self, failure: Any, ops: list[tuple[str, tuple[Any, ...]]]) -> None:
        # Keep the batch for the next flush (a full disk may recover); bound what we hold.
        if not self._failing:
            log.error("Database write failed; will retry ({n} writes pending): {error}",
                      n=len(ops) + len(self._pending), error=failure.getErrorMessage())
        self._failing = True
        self._pending[:0] = ops
        excess = len(self._pending) - MAX_PENDING_WRITES
        if excess > 0:
            del self._pending[:excess]
            self._dropped += excess
            log.critical("Database unwritable: dropped {n} oldest pending writes ({total} in all)",
                         n=excess, total=self._dropped)

    def _apply(self, ops: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        conn = self.conn
        added: dict[str, int] = {}
        rows: list[tuple[Any, ...]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for kind, args in ops:
                if kind == "message":
                    rows.append(self._message_row(*args))
                    added[args[0]] = added.get(args[0], 0) + 1
                else:
                    getattr(self, "_op_" + kind)(conn, *args)
            if rows:
                conn.executemany(_INSERT_MESSAGE, rows)  # history has no ordering ties with the other tables
            counts = self._trim(conn, added) if self.max_messages_per_target else {}
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # on SQLITE_FULL SQLite rolls back itself; keep the real error
                conn.execute("ROLLBACK")
            raise
        if len(self._row_counts) + len(counts) > MAX_COUNTED_TARGETS:
            self._row_counts.clear()
        self._row_counts.update(counts)  # only once committed: a rolled-back trim must not be believed
        if self._failing:
            self._failing = False
            self.reactor.callFromThread(log.info, "Database writes recovered")

    # ------------------------------------------------------------------
    # Writes (queued; reactor thread)
    # ------------------------------------------------------------------
    def save_channel(self, rec: ChannelRecord) -> None:
        """Insert or replace a channel with its lists and DID ops."""
        self._pending.append(("channel", (rec,)))

    def delete_channel(self, name: str) -> None:
        """Forget a channel (its history is kept until retention removes it)."""
        self._pending.append(("delete_channel", (name,)))

    def bind_nick(self, folded: str, display: str, did: str, now: float) -> None:
        """Record that ``did`` owns ``display`` (replacing its previous nick)."""
        self._pending.append(("bind_nick", (folded, display, did, int(now))))

    def append_message(self, target: str, msgid: str, now: float, command: str, sender: str,
                       account: Optional[str], shown_to: str, text: str, tags: dict[str, str]) -> None:
        """Queue one message for history; it is encrypted on the DB thread."""
        self._pending.append(("message", (target, msgid, int(now * 1000), command, sender, account, shown_to,
                                          text, tags)))

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

    def _op_bind_nick(self, conn: sqlite3.Connection, folded: str, display: str, did: str, ts: int) -> None:
        conn.execute("DELETE FROM nick_owners WHERE did=? OR nick=?", (did, folded))
        conn.execute("INSERT INTO nick_owners(nick, display, did, bound_at) VALUES (?,?,?,?)",
                     (folded, display, did, ts))

    def _op_message(self, conn: sqlite3.Connection, target: str, msgid: str, time_ms: int, command: str,
                    sender: str, account: Optional[str], shown_to: str, text: str, tags: dict[str, str]) -> None:
        conn.execute(_INSERT_MESSAGE, self._message_row(target, msgid, time_ms, command, sender, account, shown_to,
                                                        text, tags))

    def _message_row(self, target: str, msgid: str, time_ms: int, command: str, sender: str,
                     account: Optional[str], shown_to: str, text: str, tags: dict[str, str]) -> tuple[Any, ...]:
        """The ``messages`` row of one queued message, its text and tags encrypted."""
        assert self.cipher is not None, "use_cipher() before storing messages"
        body = json.dumps({"text": text, "tags": tags}, separators=(",", ":")).encode()
        payload = self.cipher.encrypt(body, msgid, target)
        return (target, msgid, time_ms, command, sender, account, shown_to, self.cipher.fingerprint, payload)

    def _trim(self, conn: sqlite3.Connection, added: dict[str, int]) -> dict[str, int]:
        """Cut each target that ``added`` took past the cap plus the slack back to its newest rows.

        Returns the new row counts. A count is read once per target (``COUNT(*)``), then kept up to
        date; it may run high (an ignored duplicate, a retention pass), which only makes the next
        trim come early, and a trim that deletes nothing re-reads it.
        """
        cap = self.max_messages_per_target
        limit = cap + self.trim_slack
        known = self._row_counts
        counts: dict[str, int] = {}
        for target, n in added.items():
            count = known.get(target)
            if count is None:
                count = conn.execute("SELECT COUNT(*) FROM messages WHERE target=?", (target,)).fetchone()[0]
            else:
                count += n
            if count > limit:
                deleted = conn.execute(
                    "DELETE FROM messages WHERE target=? AND id <= (SELECT id FROM messages WHERE target=? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)", (target, target, cap)).rowcount
                if deleted > 0:
                    count = cap
                else:
                    count = conn.execute("SELECT COUNT(*) FROM messages WHERE target=?", (target,)).fetchone()[0]
            counts[target] = count
        return counts

    def _retention_guarded(self) -> Optional[defer.Deferred]:
        if self.pool is None:
            return None
        cutoff = int((time.time() - self.retention_days * 86400) * 1000)

        def prune() -> None:
            self.conn.execute("DELETE FROM messages WHERE time_ms < ?", (cutoff,))
            self._row_counts.clear()  # re-read on the next write to each target

        d = self._in_thread(prune)
        d.addErrback(lambda f: log.failure("retention pruning failed", f))
        return d

    # ------------------------------------------------------------------
    # Reads (Deferreds; DB thread)
    # ------------------------------------------------------------------
    def history(self, target: str, query: str, args: tuple[Any, ...], limit: int) -> defer.Deferred:
        """Run a history query (see :func:`history_sql`) after flushing queued writes."""
        self.flush()
        return self._in_thread(lambda: self._history(target, query, args, limit))

    def _row_time(self, conn: sqlite3.Connection, target: str, msgid: str) -> Optional[tuple[int, int]]:
        row = conn.execute("SELECT time_ms, id FROM messages WHERE target=? AND msgid=?", (target, msgid)).fetchone()
        return (row[0], row[1]) if row else None

    def _history(self, target: str, query: str, args: tuple[Any, ...], limit: int) -> list[StoredMessage]:
        conn = self.conn
        resolved: list[Any] = []
        for a in args:
            if isinstance(a, tuple) and a[0] == "msgid":
                pos = self._row_time(conn, target, a[1])
                if pos is None:
                    return []
                resolved.append(pos)
            else:
                resolved.append(a)
        rows = _run_history_query(conn, target, query, resolved, limit)
        return [self._decrypt_row(target, r) for r in rows]

    def _decrypt_row(self, target: str, r: sqlite3.Row) -> StoredMessage:
        assert self.cipher is not None
        try:
            body = json.loads(self.cipher.decrypt(r["payload"], r["msgid"], target))
            text, tags = body["text"], body.get("tags", {})
        except (DecryptionError, ValueError, KeyError):
            log.error("History row {msgid} in {target} does not decrypt; skipped", msgid=r["msgid"], target=target)
            text, tags = "", {"+freeq.at/undecryptable": ""}
        return StoredMessage(r["msgid"], r["time_ms"], r["command"], r["sender"], r["account"], r["shown_to"],
                             text, tags)

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
            rows = self.conn.execute(
                f"SELECT target, MAX(time_ms) AS t FROM messages WHERE ({' OR '.join(clauses)}) "
                f"AND time_ms > ? AND time_ms < ? GROUP BY target ORDER BY t DESC LIMIT ?",
                (*params, lo, hi, limit)).fetchall()
            out = []
            for key, t in rows:
                name = key
                if key.startswith("dm:"):
                    last = self.conn.execute(
                        "SELECT sender, shown_to, account FROM messages WHERE target=? ORDER BY time_ms DESC, id DESC "
                        "LIMIT 1", (key,)).fetchone()
                    if last is not None:
                        name = last["shown_to"] if last["account"] == dm_account else last["sender"].split("!")[0]
                out.append((key, name, t))
            return out

        return self._in_thread(run)

    def count_messages(self) -> defer.Deferred:
        """How many history rows there are (for tests and admin)."""
        self.flush()
        return self._in_thread(lambda: self.conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    def message(self, msgid: str) -> defer.Deferred:
        """The history row with ``msgid`` as ``(target, StoredMessage)``, or ``None`` (REST verify)."""
        self.flush()

        def run() -> Optional[tuple[str, StoredMessage]]:
            row = self.conn.execute("SELECT target, msgid, time_ms, command, sender, account, shown_to, payload "
                                    "FROM messages WHERE msgid=?", (msgid,)).fetchone()
            return None if row is None else (row["target"], self._decrypt_row(row["target"], row))

        return self._in_thread(run)


def _bound(value: Any) -> tuple[int, int]:
    """A history bound as (time_ms, id): msgid references resolve to their row; timestamps get an id edge."""
    if isinstance(value, tuple):
        return value
    return (int(value), -1)


def _run_history_query(conn: sqlite3.Connection, target: str, query: str, args: list[Any],
                       limit: int) -> list[sqlite3.Row]:
    cols = "msgid, time_ms, command, sender, account, shown_to, payload"
    if query == "LATEST":
        if args and args[0] is not None:
            t, i = _bound(args[0])
            rows = conn.execute(
                f"SELECT {cols}, id FROM messages WHERE target=? AND (time_ms > ? OR (time_ms = ? AND id > ?)) "
                f"ORDER BY time_ms DESC, id DESC LIMIT ?", (target, t, t, i if i >= 0 else 1 << 62, limit)).fetchall()
        else:
            rows = conn.execute(f"SELECT {cols}, id FROM messages WHERE target=? ORDER BY time_ms DESC, id DESC "
                                f"LIMIT ?", (target, limit)).fetchall()
        return rows[::-1]
    if query == "BEFORE":
        t, i = _bound(args[0])
        rows = conn.execute(
            f"SELECT {cols}, id FROM messages WHERE target=? AND (time_ms < ? OR (time_ms = ? AND id < ?)) "
            f"ORDER BY time_ms DESC, id DESC LIMIT ?", (target, t, t, i if i >= 0 else -1, limit)).fetchall()
        return rows[::-1]
    if query == "AFTER":
        t, i = _bound(args[0])
        return conn.execute(
            f"SELECT {cols}, id FROM messages WHERE target=? AND (time_ms > ? OR (time_ms = ? AND id > ?)) "
            f"ORDER BY time_ms, id LIMIT ?", (target, t, t, i if i >= 0 else 1 << 62, limit)).fetchall()
    if query == "AROUND":
        t, i = _bound(args[0])
        half = max(limit // 2, 1)
        before = conn.execute(
            f"SELECT {cols}, id FROM messages WHERE target=? AND (time_ms < ? OR (time_ms = ? AND id < ?)) "
            f"ORDER BY time_ms DESC, id DESC LIMIT ?", (target, t, t, i if i >= 0 else 1 << 62, half)).fetchall()
        after = conn.execute(
            f"SELECT {cols}, id FROM messages WHERE target=? AND (time_ms > ? OR (time_ms = ? AND id >= ?)) "
            f"ORDER BY time_ms, id LIMIT ?", (target, t, t, i if i >= 0 else 1 << 62, limit - len(before))).fetchall()
        return before[::-1] + after
    if query == "BETWEEN":
        a, b = _bound(args[0]), _bound(args[1])
        lo, hi = (a, b) if a <= b else (b, a)
        order = "ASC" if a <= b else "DESC"
        rows = conn.execute(
            f"SELECT {cols}, id FROM messages WHERE target=? AND (time_ms > ? OR (time_ms = ? AND id > ?)) "
            f"AND (time_ms < ? OR (time_ms = ? AND id < ?)) ORDER BY time_ms {order}, id {order} LIMIT ?",
            (target, lo[0], lo[0], lo[1] if lo[1] >= 0 else 1 << 62, hi[0], hi[0], hi[1] if hi[1] >= 0 else -1,
             limit)).fetchall()
        return rows if order == "ASC" else rows[::-1]
    raise ValueError(query)


def _split_sql(script: str) -> list[str]:
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
