"""The SQLite store: opening and refusing databases, schema upgrades, encryption at rest, a full disk, retention."""
from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any, Optional, Sequence

from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.store import db as dbmod
from freeq.store import keys
from freeq.store.crypto import MessageCipher
from freeq.irc.ulid import ULIDGenerator
from freeq.store.db import ChannelRecord, Store, StoreError
from tests.support import asynctest, sleep, start_server

#: A queued message as a v1 row or a call to append_message would carry it:
#: (target, msgid, time_ms, command, sender, account, shown_to, text, tags).
V1Row = tuple[str, str, int, str, str, Optional[str], str, str, dict]


def _cipher(key: bytes = b"") -> MessageCipher:
    key = key or os.urandom(32)
    return MessageCipher(key, keys.fingerprint(key))


def _meta(path: str, key: str) -> Any:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def make_v1_database(path: str, cipher: MessageCipher, rows: Sequence[V1Row]) -> None:
    """Write a schema-v1 database at ``path`` holding ``rows``, encrypted as freeq v1 did (one row each)."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(dbmod._schema_script("v1.sql"))
        conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO meta(key, value) VALUES ('db_key_fingerprint', ?)", (cipher.fingerprint,))
        for target, msgid, time_ms, command, sender, account, shown_to, text, tags in rows:
            body = json.dumps({"text": text, "tags": tags}, separators=(",", ":")).encode()
            conn.execute("INSERT INTO messages(target, msgid, time_ms, command, sender, account, shown_to, key_fp, "
                         "payload) VALUES (?,?,?,?,?,?,?,?,?)", (target, msgid, time_ms, command, sender, account,
                                                                 shown_to, cipher.fingerprint,
                                                                 cipher.encrypt(body, msgid, target)))
        conn.commit()
    finally:
        conn.close()


def _schema_of(path: str) -> set[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return {(r[0], " ".join(r[1].split())) for r in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name <> 'sqlite_sequence'")}
    finally:
        conn.close()


def _rows(store: Store, sql: str) -> list[tuple[Any, ...]]:
    """Rows of a query on the store's connection (when its DB thread is idle), as plain tuples."""
    return [tuple(r) for r in store.conn.execute(sql)]


class OpenTests(unittest.TestCase):
    """Opening new, foreign, corrupt, newer and unreachable databases."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "freeq.db")

    def _open(self, path: str = "", **kw: Any) -> Store:
        store = Store.open(path or self.path, reactor, **kw)
        self.addCleanup(store.conn.close)
        return store

    def test_new_file_gets_current_schema_in_wal_mode(self) -> None:
        """A new database is created private (0600), in WAL mode, at the current schema with every table."""
        store = self._open()
        self.assertEqual(store._version(), dbmod.SCHEMA_VERSION)
        self.assertEqual(store.conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(store.conn.execute("PRAGMA foreign_keys").fetchone()[0], 1)
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        self.assertTrue({"meta", "channels", "channel_lists", "channel_did_ops", "nick_owners", "oper_dids",
                         "message_chunks", "channel_crdt", "signing_keys"} <= tables)
        self.assertNotIn("messages", tables)  # v1's table, replaced by message_chunks
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertIsNone(store.recorded_key_fingerprint())
        store.conn.close()
        again = self._open()
        self.assertEqual(again._version(), dbmod.SCHEMA_VERSION)

    def test_empty_file_is_treated_as_new(self) -> None:
        """A zero-length file (e.g. touched by an installer) becomes a fresh database."""
        open(self.path, "wb").close()
        self.assertEqual(self._open()._version(), dbmod.SCHEMA_VERSION)

    def test_corrupt_file_refused(self) -> None:
        """A file of random bytes is a StoreError naming the path, and it is left untouched."""
        garbage = os.urandom(8192)
        with open(self.path, "wb") as f:
            f.write(garbage)
        with self.assertRaises(StoreError) as cm:
            Store.open(self.path, reactor)
        self.assertIn(self.path, str(cm.exception))
        self.assertIn("not a SQLite database or is corrupt", str(cm.exception))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), garbage)

    def test_damaged_freeq_database_refused(self) -> None:
        """A freeq database whose pages were overwritten fails the integrity check with a StoreError."""
        store = self._open()
        store.use_cipher(_cipher())
        for i in range(200):
            store._apply([("message", ("#c", f"m{i}", i, "PRIVMSG", "a!b@c", None, "#c", "x" * 200, {}))])
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.conn.close()
        size = os.path.getsize(self.path)
        self.assertGreater(size, 4 * 4096)
        with open(self.path, "r+b") as f:
            f.seek(2 * 4096)
            f.write(os.urandom(size - 3 * 4096))
        with self.assertRaises(StoreError):
            Store.open(self.path, reactor)

    def test_foreign_sqlite_database_refused_and_untouched(self) -> None:
        """A SQLite database without freeq's meta table is refused, and not even switched to WAL."""
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users(name) VALUES ('x')")
        conn.commit()
        conn.close()
        with open(self.path, "rb") as f:
            before = f.read()
        with self.assertRaises(StoreError) as cm:
            Store.open(self.path, reactor)
        self.assertIn("not a freeq one", str(cm.exception))
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertFalse(os.path.exists(self.path + "-wal"))

    def test_newer_schema_refused(self) -> None:
        """A database written by a newer freeq (a later schema) is refused with advice to upgrade."""
        self._open().conn.close()
        newer = str(dbmod.SCHEMA_VERSION + 1)
        conn = sqlite3.connect(self.path)
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (newer,))
        conn.commit()
        conn.close()
        with self.assertRaises(StoreError) as cm:
            Store.open(self.path, reactor)
        self.assertIn(f"schema v{newer}", str(cm.exception))
        self.assertIn("upgrade freeq", str(cm.exception))
        self.assertEqual(_meta(self.path, "schema_version"), newer)

    def test_missing_directory_is_a_clear_error(self) -> None:
        """A database path in a directory that does not exist is a one-line StoreError."""
        path = os.path.join(self.dir, "nope", "freeq.db")
        with self.assertRaises(StoreError) as cm:
            Store.open(path, reactor)
        self.assertIn(os.path.join(self.dir, "nope"), str(cm.exception))
        self.assertIn("does not exist", str(cm.exception))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "nope")))

    def test_parent_is_a_regular_file(self) -> None:
        """A database path whose parent is a regular file is refused clearly (root cannot bypass this)."""
        blocker = os.path.join(self.dir, "file")
        with open(blocker, "w") as f:
            f.write("x")
        with self.assertRaises(StoreError) as cm:
            Store.open(os.path.join(blocker, "freeq.db"), reactor)
        self.assertIn(blocker, str(cm.exception))

    def test_unwritable_location(self) -> None:
        """Where the database cannot be created the error is a StoreError, never an OSError traceback."""
        # Unprivileged: a directory without write permission. Root ignores permission bits, so
        # use a directory where creating files fails anyway (procfs).
        if os.geteuid() == 0:
            path = "/proc/freeq-test.db"
            expected = "cannot create"
        else:
            ro = os.path.join(self.dir, "ro")
            os.makedirs(ro)
            os.chmod(ro, 0o500)
            self.addCleanup(os.chmod, ro, 0o700)
            path = os.path.join(ro, "freeq.db")
            expected = "not writable"
        with self.assertRaises(StoreError) as cm:
            Store.open(path, reactor)
        self.assertIn(expected, str(cm.exception))
        self.assertIn(path, str(cm.exception))
        self.assertFalse(os.path.exists(path))

    def test_upgrade_backs_up_first(self) -> None:
        """Upgrading vN to vN+1 copies the database to freeq.db.vN.bak first, then applies upgrade-N+1.sql."""
        store = self._open()
        store.use_cipher(_cipher())
        store.conn.close()
        original = dbmod._schema_script
        current = dbmod.SCHEMA_VERSION

        def script(name: str) -> str:
            if name == f"upgrade-{current + 1}.sql":
                return "-- test upgrade\nCREATE TABLE extra (x INTEGER);\nINSERT INTO extra VALUES (7);\n"
            return original(name)

        self.patch(dbmod, "SCHEMA_VERSION", current + 1)
        self.patch(dbmod, "_schema_script", script)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        upgraded = self._open()
        backup = self.path + f".v{current}.bak"
        self.assertTrue(os.path.exists(backup))
        self.assertEqual(_meta(backup, "schema_version"), str(current))
        self.assertIsNotNone(_meta(backup, "db_key_fingerprint"))
        self.assertEqual(upgraded._version(), current + 1)
        self.assertEqual(upgraded.conn.execute("SELECT x FROM extra").fetchone()[0], 7)
        self.assertTrue(any("Backed up" in formatEvent(e) and backup in formatEvent(e) for e in events))

    def test_failed_upgrade_changes_nothing(self) -> None:
        """An upgrade script that fails rolls back entirely: still vN, no partial tables, one-line StoreError."""
        self._open().conn.close()
        original = dbmod._schema_script
        current = dbmod.SCHEMA_VERSION
        self.patch(dbmod, "SCHEMA_VERSION", current + 1)
        self.patch(dbmod, "_schema_script", lambda name: "CREATE TABLE half (x INTEGER); THIS IS NOT SQL;"
                   if name == f"upgrade-{current + 1}.sql" else original(name))
        with self.assertRaises(StoreError) as cm:
            Store.open(self.path, reactor)
        self.assertIn("nothing was changed", str(cm.exception))
        self.assertEqual(_meta(self.path, "schema_version"), str(current))
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertIsNone(conn.execute("SELECT name FROM sqlite_master WHERE name='half'").fetchone())

    def test_key_fingerprint_mismatch_refused(self) -> None:
        """The first key is recorded; a different key later is a StoreError naming both fingerprints."""
        key = os.urandom(32)
        store = self._open()
        store.use_cipher(_cipher(key))
        store.conn.close()
        store = self._open()
        store.use_cipher(_cipher(key))  # same key: fine
        other = _cipher()
        with self.assertRaises(StoreError) as cm:
            store.use_cipher(other)
        self.assertIn(other.fingerprint, str(cm.exception))
        self.assertIn(keys.fingerprint(key), str(cm.exception))
        self.assertIn("freeq-admin rekey", str(cm.exception))
        self.assertNotIn(key.hex(), str(cm.exception))


class StoredDataTests(unittest.TestCase):
    """What the running store writes: ciphertext only, retries on a full disk, bounded history."""

    def _store(self, **kw: Any) -> Store:
        path = os.path.join(self.mktemp(), "freeq.db")
        os.makedirs(os.path.dirname(path))
        store = Store.open(path, reactor, **kw)
        store.use_cipher(_cipher())
        store.start()
        self.addCleanup(store.stop)
        return store

    @asynctest
    async def test_database_files_never_hold_plaintext(self) -> None:
        """Channel and private messages sent through a real server are on disk only as ciphertext."""
        srv = await start_server(self, db_path=None, flood_rate=0)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        srv.server.users["alice"].account = "did:plc:alice"
        srv.server.users["bob"].account = "did:plc:bob"
        alice.send("JOIN #vault")
        await alice.expect("366")
        bob.send("JOIN #vault")
        await bob.expect("366")
        secrets = [f"PlainSecretNumber{i}xyzzy" for i in range(20)]
        for s in secrets[:10]:
            alice.send(f"PRIVMSG #vault :{s}")
        for s in secrets[10:]:
            alice.send(f"PRIVMSG bob :{s}")
        for _ in secrets:
            await bob.expect("PRIVMSG")
        store = srv.server.store
        assert store is not None
        await store.flush()
        self.assertEqual(await store.count_messages(), 20)
        path = os.path.join(srv.server.config.data_dir, "freeq.db")
        data = b""
        for suffix in ("", "-wal"):
            if os.path.exists(path + suffix):
                with open(path + suffix, "rb") as f:
                    data += f.read()
        self.assertIn(b"#vault", data)  # the grep can see what is stored in the clear
        self.assertIn(b"did:plc:alice", data)  # in the private conversation's key
        self.assertNotIn(b"PRIVMSG", data)  # command, sender and account are encrypted too since schema v2
        for s in secrets:
            self.assertNotIn(s.encode(), data)
        self.assertNotIn(b"PlainSecret", data)
        self.assertNotIn(b"xyzzy", data)

    @asynctest
    async def test_full_disk_logged_retried_and_nothing_lost(self) -> None:
        """Out of space: one error is logged, the server keeps serving, and no queued message is lost later."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        srv = await start_server(self, db_path=None, flood_rate=0)
        store = srv.server.store
        assert store is not None
        alice = await srv.client("alice", caps=("echo-message",))
        bob = await srv.client("bob")
        alice.send("JOIN #full")
        await alice.expect("366")
        bob.send("JOIN #full")
        await bob.expect("366")
        alice.send("PRIVMSG #full :before")
        await bob.expect("PRIVMSG")
        await store.flush()

        def set_max(n: int) -> None:
            store.conn.execute(f"PRAGMA max_page_count={n}").fetchone()

        pages = await store._in_thread(lambda: store.conn.execute("PRAGMA page_count").fetchone()[0])
        await store._in_thread(lambda: set_max(pages))
        for i in range(40):
            alice.send(f"PRIVMSG #full :filler {i} " + "y" * 380)
        for _ in range(40):
            await bob.expect("PRIVMSG")
        for _ in range(50):
            if any(e.get("log_format", "").startswith("Database write failed") for e in events):
                break
            await sleep(0.05)
        failures = [e for e in events if e.get("log_format", "").startswith("Database write failed")]
        self.assertEqual(len(failures), 1, "the failure is logged once, not on every retry")
        self.assertEqual(failures[0]["log_level"].name, "error")
        self.assertIn("database or disk is full", formatEvent(failures[0]))

        # Still serving: a newcomer registers, joins and talks while writes are failing.
        carol = await srv.client("carol")
        carol.send("JOIN #full")
        await carol.expect("366")
        carol.send("PRIVMSG #full :still alive")
        line = await bob.expect("PRIVMSG")
        self.assertEqual(line.params, ["#full", "still alive"])
        await sleep(0.5)  # several failed flush rounds
        self.assertEqual(len([e for e in events if e.get("log_format", "").startswith("Database write failed")]), 1)

        await store._in_thread(lambda: set_max(1 << 30))
        for _ in range(50):
            if any("recovered" in e.get("log_format", "") for e in events):
                break
            await sleep(0.05)
        self.assertTrue(any("Database writes recovered" in formatEvent(e) for e in events))
        self.assertEqual(await store.count_messages(), 42)
        rows = await store.history("#full", "LATEST", (None,), 100)
        self.assertEqual([r.text for r in rows][:2], ["before", "filler 0 " + "y" * 380])
        self.assertEqual(rows[-1].text, "still alive")
        self.assertEqual(len(rows), 42)
        self.assertEqual(store._dropped, 0)

    @asynctest
    async def test_max_messages_per_target_prunes_oldest(self) -> None:
        """Each conversation keeps its newest N messages; other conversations are untouched."""
        store = self._store(max_messages_per_target=5)
        now = time.time()
        for i in range(8):
            store.append_message("#a", f"a{i}", now + i, "PRIVMSG", "n!u@h", None, "#a", f"text {i}", {})
        for i in range(3):
            store.append_message("#b", f"b{i}", now + i, "PRIVMSG", "n!u@h", None, "#b", f"text {i}", {})
        await store.flush()
        rows = await store.history("#a", "LATEST", (None,), 100)
        self.assertEqual([r.msgid for r in rows], ["a3", "a4", "a5", "a6", "a7"])
        self.assertEqual(len(await store.history("#b", "LATEST", (None,), 100)), 3)
        store.append_message("#a", "a8", now + 8, "PRIVMSG", "n!u@h", None, "#a", "text 8", {})
        rows = await store.history("#a", "LATEST", (None,), 100)
        self.assertEqual([r.msgid for r in rows], ["a4", "a5", "a6", "a7", "a8"])

    @asynctest
    async def test_trim_waits_for_a_tenth_over_the_cap(self) -> None:
        """With a cap of 20 a conversation is trimmed once it holds more than 22 rows, back to the newest 20;
        the count survives restarts (read back from the table) and retention pruning."""
        store = self._store(max_messages_per_target=20, retention_days=1)
        now = time.time()

        async def send(n: int, start: int, age_days: float = 0) -> None:
            for i in range(start, start + n):
                store.append_message("#t", f"t{i}", now - age_days * 86400 + i / 1000, "PRIVMSG", "n!u@h", None,
                                     "#t", f"text {i}", {})
            await store.flush()

        async def msgids() -> list[str]:
            return [r.msgid for r in await store.history("#t", "LATEST", (None,), 100)]

        await send(22, 0)
        self.assertEqual(len(await msgids()), 22)  # within the slack: no DELETE yet
        await send(1, 22)
        self.assertEqual(await msgids(), [f"t{i}" for i in range(3, 23)])
        store._row_counts.clear()  # as after a restart: the count is read from the table
        await send(2, 23)
        self.assertEqual(len(await msgids()), 22)
        await send(1, 25)
        self.assertEqual(await msgids(), [f"t{i}" for i in range(6, 26)])
        await send(5, 26, age_days=2)  # old enough for the retention job
        self.assertEqual(len(await msgids()), 20)  # 25 rows: over the slack, trimmed
        pruned = store._retention_guarded()
        assert pruned is not None
        await pruned
        await send(2, 31)
        self.assertEqual(len(await msgids()), 17)  # 15 left after pruning, 2 more: nothing to trim
        self.assertEqual(store._row_counts["#t"], 17)

    @asynctest
    async def test_retention_days_prunes_by_age(self) -> None:
        """Messages older than message_retention_days are deleted by the retention job; newer ones stay."""
        store = self._store(retention_days=2)
        now = time.time()
        for i, age_days in enumerate((10, 3, 2.01, 1.9, 0.5, 0)):
            store.append_message("#r", f"r{i}", now - age_days * 86400, "PRIVMSG", "n!u@h", None, "#r",
                                 f"aged {age_days}", {})
        await store.flush()
        self.assertEqual(await store.count_messages(), 6)
        pruned = store._retention_guarded()
        assert pruned is not None
        await pruned
        rows = await store.history("#r", "LATEST", (None,), 100)
        self.assertEqual([r.text for r in rows], ["aged 1.9", "aged 0.5", "aged 0"])

    @asynctest
    async def test_stop_flushes_and_channel_records_roundtrip(self) -> None:
        """Writes queued just before stop() are committed, and channel records load back intact."""
        store = self._store()
        rec = ChannelRecord("#Mixed", 100, "imnst", "sekrit", 7, "a topic", "op!u@h", 123, "did:plc:f",
                            {"b": [("*!*@bad", "op!u@h", 5)], "e": [("*!*@good", "op!u@h", 6)],
                             "I": [("*!*@inv", "op!u@h", 7)]}, {"did:plc:f": ("did:plc:f", 100)})
        store.save_channel(rec)
        store.bind_nick("nick", "Nick", "did:plc:n", 50)
        path = store.path
        await store.stop()
        again = Store.open(path, reactor)
        self.addCleanup(again.conn.close)
        self.assertEqual(again.load_channels(), [rec])
        self.assertEqual(again.load_nick_owners(), {"nick": ("Nick", "did:plc:n")})


class PackTests(unittest.TestCase):
    """The chunk payload's column packing (pure)."""

    def test_round_trip_and_json_fallback(self) -> None:
        """NUL-joined columns round-trip (tags, no account, empty and non-ASCII text); a NUL in a field
        falls back to JSON, which reads back the same; a payload of the wrong shape is refused."""
        cols = [[1, 2, 3], ["PRIVMSG", "NOTICE", "PRIVMSG"], ["a!u@h", "b!u@h", "c!u@h"],
                ["did:plc:abc", None, None], ["#c", "#c", "#c"], ["hi", "", "h\u00e9 \u2603 :x"],
                [{}, {"+draft/reply": "01J"}, {}]]
        packed = dbmod.pack_columns(cols)
        self.assertTrue(packed.startswith("\x01"))
        self.assertEqual(dbmod.unpack_columns(packed, 3), cols)
        evil = [c[:] for c in cols]
        evil[5][0] = "a\x00b"
        fallback = dbmod.pack_columns(evil)
        self.assertTrue(fallback.startswith("["))
        self.assertEqual(dbmod.unpack_columns(fallback, 3), evil)
        with self.assertRaises(ValueError):
            dbmod.unpack_columns(packed, 2)


class ChunkTests(unittest.TestCase):
    """Schema v2's chunked history: migration from v1, tamper-evidence, lookups, duplicates, cap, retention."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "freeq.db")
        self.key = os.urandom(32)

    def _start(self, **kw: Any) -> Store:
        store = Store.open(self.path, reactor, **kw)
        store.use_cipher(_cipher(self.key))
        store.start()
        self.addCleanup(lambda: store.stop() if store.pool is not None else None)
        return store

    def _raw(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        return conn

    @asynctest
    async def test_v1_database_migrates_to_chunks(self) -> None:
        """A v1 database with messages is backed up, then moved into format-1 chunks in one upgrade, with
        no key needed; its history (bounds, msgid lookups, TARGETS names) reads as before, and new
        messages (format 2) interleave in order."""
        base = int(time.time() * 1000) - 60_000
        ulid = ULIDGenerator(lambda: base / 1000)
        dm = "dm:did:plc:a did:plc:b"
        rows: list[V1Row] = []
        for i in range(30):
            if i % 3:
                rows.append(("#chan", ulid.new(), base + i, "PRIVMSG", f"n{i}!u@h", "did:plc:a" if i % 2 else None,
                             "#Chan", f"chan text {i}", {"+example/n": str(i)}))
            else:
                rows.append((dm, f"legacy-{i}", base + i, "NOTICE", "alice!u@h", "did:plc:a", "bob", f"dm text {i}", {}))
        make_v1_database(self.path, _cipher(self.key), rows)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        store = self._start()
        backup = self.path + ".v1.bak"
        self.assertEqual(_meta(backup, "schema_version"), "1")
        self.assertTrue(any("Backed up" in formatEvent(e) for e in events))
        old = sqlite3.connect(backup)
        self.addCleanup(old.close)
        self.assertEqual(old.execute("SELECT COUNT(*) FROM messages").fetchone()[0], 30)
        self.assertEqual(store._version(), dbmod.SCHEMA_VERSION)
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        self.assertNotIn("messages", tables)
        self.assertEqual(_rows(store, "SELECT format, COUNT(*) FROM message_chunks GROUP BY format"), [(1, 30)])
        self.assertEqual(await store.count_messages(), 30)

        chan = await store.history("#chan", "LATEST", (None,), 100)
        self.assertEqual([(m.msgid, m.time_ms, m.command, m.sender, m.account, m.shown_to, m.text, m.tags)
                          for m in chan], [r[1:] for r in rows if r[0] == "#chan"])
        around = await store.history("#chan", "AROUND", (("msgid", rows[10][1]),), 4)
        self.assertEqual([m.text for m in around], ["chan text 7", "chan text 8", "chan text 10", "chan text 11"])
        before = await store.history(dm, "BEFORE", (("msgid", "legacy-9"),), 2)
        self.assertEqual([m.text for m in before], ["dm text 3", "dm text 6"])
        found = await store.message(rows[5][1])
        assert found is not None
        self.assertEqual((found[0], found[1].text, found[1].sender), ("#chan", "chan text 5", "n5!u@h"))
        found = await store.message("legacy-27")
        assert found is not None
        self.assertEqual((found[0], found[1].text), (dm, "dm text 27"))
        self.assertEqual(await store.targets(["#chan"], base - 1, base + 1000, 10, dm_account="did:plc:a"),
                         [("#chan", "#chan", base + 29), (dm, "bob", base + 27)])

        # New messages are format-2 chunks, ordered with the old ones by time, then insertion.
        store.append_message("#chan", "new-early", (base + 4) / 1000, "PRIVMSG", "n!u@h", None, "#Chan", "new 4", {})
        store.append_message("#chan", "new-late", (base + 40) / 1000, "PRIVMSG", "n!u@h", None, "#Chan", "new 40", {})
        chan = await store.history("#chan", "AFTER", (base + 3,), 4)
        self.assertEqual([m.text for m in chan], ["chan text 4", "new 4", "chan text 5", "chan text 7"])
        self.assertEqual((await store.history("#chan", "LATEST", (None,), 1))[0].text, "new 40")

    def test_fresh_and_upgraded_databases_have_the_same_schema(self) -> None:
        """A new database (v1.sql then upgrade-2.sql) and an upgraded v1 one end up with identical schemas."""
        fresh = os.path.join(self.dir, "fresh.db")
        Store.open(fresh, reactor).conn.close()
        make_v1_database(self.path, _cipher(self.key), [])
        Store.open(self.path, reactor).conn.close()
        self.assertEqual(_schema_of(fresh), _schema_of(self.path))
        self.assertIn("channel_crdt", {name for name, _ in _schema_of(fresh)})

    @asynctest
    async def test_chunks_are_bound_to_their_target_and_msgids(self) -> None:
        """A payload swapped into another chunk (or conversation), or a chunk whose msgids column was edited,
        does not decrypt: its messages come back as placeholders tagged undecryptable, with a log line."""
        store = self._start()
        now = time.time()
        for i in range(3):
            store.append_message("#a", f"a{i}", now + i / 1000, "PRIVMSG", "n!u@h", None, "#a", f"a text {i}", {})
        await store.flush()
        for i in range(3, 5):
            store.append_message("#a", f"a{i}", now + i / 1000, "PRIVMSG", "n!u@h", None, "#a", f"a text {i}", {})
        store.append_message("#b", "b0", now, "PRIVMSG", "n!u@h", None, "#b", "b text", {})
        await store.flush()
        ids = dict(store.conn.execute("SELECT msgids, id FROM message_chunks").fetchall())
        first, second, other = ids["a0 a1 a2"], ids["a3 a4"], ids["b0"]
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

        def tamper() -> None:
            payload = dict(store.conn.execute("SELECT id, payload FROM message_chunks").fetchall())
            store.conn.execute("UPDATE message_chunks SET payload=? WHERE id=?", (payload[other], first))
            store.conn.execute("UPDATE message_chunks SET payload=? WHERE id=?", (payload[first], other))
            store.conn.execute("UPDATE message_chunks SET msgids='a3 a5' WHERE id=?", (second,))

        await store._in_thread(tamper)
        rows = await store.history("#a", "LATEST", (None,), 10)
        self.assertEqual([m.msgid for m in rows], ["a0", "a1", "a2", "a3", "a5"])
        for m in rows:
            self.assertEqual((m.text, m.tags), ("", {"+freeq.at/undecryptable": ""}))
        b = await store.history("#b", "LATEST", (None,), 10)
        self.assertEqual([(m.msgid, m.tags) for m in b], [("b0", {"+freeq.at/undecryptable": ""})])
        found = await store.message("a1")
        assert found is not None
        self.assertIn("+freeq.at/undecryptable", found[1].tags)
        logged = [formatEvent(e) for e in events if "does not decrypt" in e.get("log_format", "")]
        self.assertTrue(any(f"chunk {first} in #a (3 messages)" in line for line in logged), logged)
        self.assertTrue(any(f"chunk {second} in #a" in line for line in logged), logged)

    @asynctest
    async def test_file_holds_no_plaintext_of_chunks(self) -> None:
        """Text, tags, senders, accounts, commands and shown targets of chunked messages are not in the file;
        the conversation and msgids are."""
        store = self._start()
        now = time.time()
        for i in range(50):
            store.append_message("#clear", f"msgid{i:03d}", now, "NOTICE", f"SenderNick{i}!ident@host", "did:plc:acct",
                                 "#ShownTarget", f"SecretText{i}", {"+example/secret": f"TagValue{i}"})
        await store.stop()
        data = b""
        for suffix in ("", "-wal"):
            if os.path.exists(self.path + suffix):
                with open(self.path + suffix, "rb") as f:
                    data += f.read()
        self.assertIn(b"#clear", data)
        self.assertIn(b"msgid000 msgid001", data)
        for secret in (b"SecretText", b"TagValue", b"example/secret", b"SenderNick", b"did:plc:acct", b"NOTICE",
                       b"ShownTarget"):
            self.assertNotIn(secret, data)

    @asynctest
    async def test_msgid_lookups(self) -> None:
        """Messages are found by msgid through the ULID time (near, or a federated sender's clock up to two
        minutes off), through a conversation's msgids for any other msgid, and never by a prefix."""
        store = self._start()
        now = time.time()
        ulid = ULIDGenerator(lambda: now)
        local = ulid.new()
        skewed = ULIDGenerator(lambda: now - 90).new()
        far = ULIDGenerator(lambda: now - 3600).new()
        for i, msgid in enumerate((local, skewed, far, "plain-id", "plain")):
            store.append_message("#x", msgid, now + i / 1000, "PRIVMSG", "n!u@h", None, "#x", f"text {i}", {})
        for i in range(300):  # plenty of other chunks, in other conversations and times
            store.append_message(f"#o{i % 7}", f"other-{i}", now - i, "PRIVMSG", "n!u@h", None, "#o", "o", {})
            if i % 50 == 0:
                await store.flush()
        for msgid, text in ((local, "text 0"), (skewed, "text 1"), ("plain-id", "text 3"), ("plain", "text 4")):
            found = await store.message(msgid)
            assert found is not None, msgid
            self.assertEqual((found[0], found[1].msgid, found[1].text), ("#x", msgid, text))
        self.assertIsNone(await store.message(far))  # a ULID an hour off its arrival: not searched table-wide
        self.assertIsNone(await store.message(ulid.new()))
        self.assertIsNone(await store.message("plai"))
        self.assertIsNone(await store.message("plain-id plain"))
        # Across conversations a non-ULID msgid is searched only among the newest chunks (a bounded scan).
        self.patch(dbmod, "MSGID_SCAN_CHUNKS", 10)
        self.assertIsNone(await store.message("plain-id"))
        store.append_message("#y", "late-plain", now + 5, "PRIVMSG", "n!u@h", None, "#y", "late", {})
        found = await store.message("late-plain")
        self.assertEqual(found[1].text if found else None, "late")
        # Within a conversation every msgid is found, however far its ULID time is.
        rows = await store.history("#x", "AROUND", (("msgid", far),), 3)
        self.assertEqual([m.text for m in rows], ["text 1", "text 2", "text 3"])
        rows = await store.history("#x", "AFTER", (("msgid", "plain-id"),), 10)
        self.assertEqual([m.text for m in rows], ["text 4"])
        self.assertEqual(await store.history("#x", "AFTER", (("msgid", "other-1"),), 10), [])

    @asynctest
    async def test_duplicate_msgids_stored_once(self) -> None:
        """A msgid already stored is ignored (the first text wins): within a group commit, in a later one, and
        after a restart (the duplicate check is seeded from the newest chunks)."""
        store = self._start()
        now = time.time()
        store.append_message("#d", "m1", now, "PRIVMSG", "n!u@h", None, "#d", "first", {})
        store.append_message("#d", "m1", now, "PRIVMSG", "n!u@h", None, "#d", "again", {})
        store.append_message("#e", "m1", now, "PRIVMSG", "n!u@h", None, "#e", "elsewhere", {})
        store.append_message("#d", "m2", now, "PRIVMSG", "n!u@h", None, "#d", "second", {})
        await store.flush()
        store.append_message("#d", "m2", now, "PRIVMSG", "n!u@h", None, "#d", "later", {})
        store.append_message("#d", "m3", now, "PRIVMSG", "n!u@h", None, "#d", "third", {})
        await store.stop()
        store = self._start()
        store.append_message("#d", "m3", now, "PRIVMSG", "n!u@h", None, "#d", "after restart", {})
        store.append_message("#d", "m4", now, "PRIVMSG", "n!u@h", None, "#d", "fourth", {})
        rows = await store.history("#d", "LATEST", (None,), 10)
        self.assertEqual([(m.msgid, m.text) for m in rows],
                         [("m1", "first"), ("m2", "second"), ("m3", "third"), ("m4", "fourth")])
        self.assertEqual(await store.history("#e", "LATEST", (None,), 10), [])
        self.assertEqual(await store.count_messages(), 4)

    @asynctest
    async def test_big_or_long_batches_split_into_chunks(self) -> None:
        """One conversation's batch becomes several chunks past CHUNK_MAX_MESSAGES or CHUNK_MAX_SPAN_MS, and
        history reads across them in order (time, then insertion)."""
        store = self._start()
        now = time.time()
        for i in range(600):
            store.append_message("#big", f"b{i}", now, "PRIVMSG", "n!u@h", None, "#big", f"t{i}", {})
        for i in range(4):
            store.append_message("#long", f"l{i}", now - (3 - i) * 50, "PRIVMSG", "n!u@h", None, "#long", f"l{i}", {})
        await store.flush()
        counts = _rows(store, "SELECT target, count FROM message_chunks ORDER BY id")
        self.assertEqual(counts, [("#big", 256), ("#big", 256), ("#big", 88), ("#long", 2), ("#long", 2)])
        rows = await store.history("#big", "LATEST", (None,), 100)
        self.assertEqual([m.text for m in rows], [f"t{i}" for i in range(500, 600)])
        rows = await store.history("#big", "BEFORE", (("msgid", "b300"),), 100)
        self.assertEqual([m.text for m in rows], [f"t{i}" for i in range(200, 300)])
        rows = await store.history("#big", "BETWEEN", (("msgid", "b520"), ("msgid", "b250")), 5)
        self.assertEqual([m.text for m in rows], [f"t{i}" for i in range(515, 520)])
        rows = await store.history("#long", "BETWEEN", (int((now - 120) * 1000), int(now * 1000) + 1), 10)
        self.assertEqual([m.text for m in rows], ["l1", "l2", "l3"])

    @asynctest
    async def test_cap_is_exact_across_chunks(self) -> None:
        """With many chunks per conversation, trimming deletes whole older chunks and re-encrypts the one the
        cut falls in, keeping exactly the newest N messages (the bound: never more than N + N/10)."""
        store = self._start(max_messages_per_target=50)
        now = time.time()
        sent = 0
        for _ in range(20):
            for _ in range(7):
                store.append_message("#cap", f"c{sent}", now + sent / 1000, "PRIVMSG", "n!u@h", None, "#cap",
                                     f"text {sent}", {})
                sent += 1
            await store.flush()
            held = await store.count_messages()
            self.assertLessEqual(held, 55)
            rows = await store.history("#cap", "LATEST", (None,), 100)
            self.assertEqual([m.text for m in rows], [f"text {i}" for i in range(sent - held, sent)])
        self.assertLess(store.conn.execute("SELECT COUNT(*) FROM message_chunks").fetchone()[0], 10)

    @asynctest
    async def test_retention_splits_a_chunk_across_the_cutoff(self) -> None:
        """A chunk straddling the retention cutoff keeps only its unexpired messages (same chunk id); older
        chunks are deleted whole."""
        store = self._start(retention_days=1)
        cutoff = time.time() - 86400
        store.append_message("#r", "gone", cutoff - 3600, "PRIVMSG", "n!u@h", None, "#r", "an hour too old", {})
        await store.flush()
        for i, offset in enumerate((-20, -10, 10, 20)):
            store.append_message("#r", f"r{i}", cutoff + offset, "PRIVMSG", "n!u@h", None, "#r", f"at {offset}", {})
        await store.flush()
        chunk = store.conn.execute("SELECT MAX(id) FROM message_chunks").fetchone()[0]
        pruned = store._retention_guarded()
        assert pruned is not None
        await pruned
        self.assertEqual([m.text for m in await store.history("#r", "LATEST", (None,), 10)], ["at 10", "at 20"])
        self.assertEqual(_rows(store, "SELECT id, count, msgids FROM message_chunks"), [(chunk, 2, "r2 r3")])
        self.assertEqual(await store.count_messages(), 2)

    @asynctest
    async def test_channel_crdt_state_roundtrip(self) -> None:
        """save_channel_crdt / delete_channel_crdt are queued writes; load_channel_crdts reads them back at start."""
        store = Store.open(self.path, reactor)
        store.start()
        store.save_channel_crdt("#a", '{"v": 1}')
        store.save_channel_crdt("#b", "b-state")
        store.save_channel_crdt("#a", '{"v": 2}')
        store.save_channel_crdt("#c", "c")
        store.delete_channel_crdt("#c")
        await store.stop()
        again = Store.open(self.path, reactor)
        self.addCleanup(again.conn.close)
        self.assertEqual(again.load_channel_crdts(), {"#a": '{"v": 2}', "#b": "b-state"})


def _reference_history(msgs: list[tuple[int, int, str]], query: str, args: tuple[Any, ...],
                       limit: int) -> Optional[list[str]]:
    """v1's CHATHISTORY semantics over (time, insertion order, msgid) triples, by brute force."""
    inf = 1 << 62
    msgs = sorted(msgs)
    where = {m[2]: (m[0], m[1]) for m in msgs}
    bounds: list[Any] = []
    for a in args:
        if isinstance(a, tuple):
            if a[1] not in where:
                return []
            bounds.append((where[a[1]], True))
        else:
            bounds.append(((a, -1), False) if a is not None else None)

    def keys(pred: Any) -> list[str]:
        return [m[2] for m in msgs if pred((m[0], m[1]))]

    if query == "LATEST":
        if bounds[0] is None:
            return [m[2] for m in msgs][-limit:]
        (t, i), exact = bounds[0]
        return keys(lambda k: k > (t, i if exact else inf))[-limit:]
    (t, i), exact = bounds[0]
    if query == "BEFORE":
        return keys(lambda k: k < (t, i))[-limit:]
    if query == "AFTER":
        return keys(lambda k: k > (t, i if exact else inf))[:limit]
    if query == "AROUND":
        half = max(limit // 2, 1)
        edge = (t, i if exact else inf)
        before = keys(lambda k: k < edge)[-half:]
        return before + keys(lambda k: k >= edge)[:limit - len(before)]
    (a, a_exact), (b, b_exact) = bounds[0], bounds[1]
    (lo, lo_exact), (hi, hi_exact) = ((a, a_exact), (b, b_exact)) if a <= b else ((b, b_exact), (a, a_exact))
    lower = lo if lo_exact else (lo[0], inf)
    upper = hi if hi_exact else (hi[0], -1)
    between = keys(lambda k: lower < k < upper)
    return between[:limit] if a <= b else between[-limit:]


class ChunkedQueryEquivalenceTests(unittest.TestCase):
    """Chunked history answers every query exactly as v1's one-row-per-message table did."""

    @asynctest
    async def test_random_queries_match_v1_semantics(self) -> None:
        """Random times (ties, disorder, long spans), random chunk boundaries and sizes, random queries."""
        import random

        self.patch(dbmod, "CHUNK_MAX_MESSAGES", 7)
        self.patch(dbmod, "CHUNK_MAX_SPAN_MS", 40)
        rnd = random.Random(1234)
        path = os.path.join(self.mktemp(), "freeq.db")
        os.makedirs(os.path.dirname(path))
        store = Store.open(path, reactor)
        store.use_cipher(_cipher())
        store.start()
        self.addCleanup(store.stop)
        base = 1_700_000_000_000
        msgs: list[tuple[int, int, str]] = []
        for seq in range(400):
            t = base + rnd.choice((rnd.randrange(300), seq, seq, seq // 10 * 10))
            msgid = f"m{seq}"
            store.append_message("#q", msgid, t / 1000, "PRIVMSG", "n!u@h", None, "#q", msgid, {})
            msgs.append((t, seq, msgid))
            if rnd.random() < 0.1:
                await store.flush()
        await store.flush()

        def ref(m: str) -> Any:
            return ("msgid", m)

        def any_bound() -> Any:
            if rnd.random() < 0.5:
                return ref(f"m{rnd.randrange(405)}")  # sometimes unknown
            return base + rnd.randrange(-5, 420)

        for _ in range(400):
            query = rnd.choice(("LATEST", "BEFORE", "AFTER", "AROUND", "BETWEEN"))
            limit = rnd.choice((1, 2, 3, 5, 10, 40, 100))
            if query == "LATEST":
                args: tuple[Any, ...] = (None if rnd.random() < 0.3 else any_bound(),)
            elif query == "BETWEEN":
                args = (any_bound(), any_bound())
            else:
                args = (any_bound(),)
            got = [m.msgid for m in await store.history("#q", query, args, limit)]
            self.assertEqual(got, _reference_history(msgs, query, args, limit), (query, args, limit))
