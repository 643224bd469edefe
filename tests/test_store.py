"""The SQLite store: opening and refusing databases, schema upgrades, encryption at rest, a full disk, retention."""
from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.store import db as dbmod
from freeq.store import keys
from freeq.store.crypto import MessageCipher
from freeq.store.db import ChannelRecord, Store, StoreError
from tests.support import asynctest, sleep, start_server


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

    def test_new_file_gets_schema_v1_in_wal_mode(self) -> None:
        """A new database is created private (0600), in WAL mode, at schema version 1 with every table."""
        store = self._open()
        self.assertEqual(store._version(), 1)
        self.assertEqual(store.conn.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        self.assertEqual(store.conn.execute("PRAGMA foreign_keys").fetchone()[0], 1)
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        self.assertTrue({"meta", "channels", "channel_lists", "channel_did_ops", "nick_owners", "oper_dids",
                         "messages", "signing_keys"} <= tables)
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
        self.assertIsNone(store.recorded_key_fingerprint())
        store.conn.close()
        again = self._open()
        self.assertEqual(again._version(), 1)

    def test_empty_file_is_treated_as_new(self) -> None:
        """A zero-length file (e.g. touched by an installer) becomes a fresh database."""
        open(self.path, "wb").close()
        self.assertEqual(self._open()._version(), 1)

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
            store._op_message(store.conn, "#c", f"m{i}", i, "PRIVMSG", "a!b@c", None, "#c", "x" * 200, {})
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
        """A database written by a newer freeq (schema v2) is refused with advice to upgrade."""
        self._open().conn.close()
        conn = sqlite3.connect(self.path)
        conn.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
        conn.commit()
        conn.close()
        with self.assertRaises(StoreError) as cm:
            Store.open(self.path, reactor)
        self.assertIn("schema v2", str(cm.exception))
        self.assertIn("upgrade freeq", str(cm.exception))
        self.assertEqual(_meta(self.path, "schema_version"), "2")

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
        """Upgrading v1 to v2 copies the database to freeq.db.v1.bak first, then applies upgrade-2.sql."""
        store = self._open()
        store.use_cipher(_cipher())
        store.conn.close()
        original = dbmod._schema_script

        def script(name: str) -> str:
            if name == "upgrade-2.sql":
                return "-- test upgrade\nCREATE TABLE extra (x INTEGER);\nINSERT INTO extra VALUES (7);\n"
            return original(name)

        self.patch(dbmod, "SCHEMA_VERSION", 2)
        self.patch(dbmod, "_schema_script", script)
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        upgraded = self._open()
        backup = self.path + ".v1.bak"
        self.assertTrue(os.path.exists(backup))
        self.assertEqual(_meta(backup, "schema_version"), "1")
        self.assertIsNotNone(_meta(backup, "db_key_fingerprint"))
        self.assertEqual(upgraded._version(), 2)
        self.assertEqual(upgraded.conn.execute("SELECT x FROM extra").fetchone()[0], 7)
        self.assertTrue(any("Backed up" in formatEvent(e) and backup in formatEvent(e) for e in events))

    def test_failed_upgrade_changes_nothing(self) -> None:
        """An upgrade script that fails rolls back entirely: still v1, no partial tables, one-line StoreError."""
        self._open().conn.close()
        original = dbmod._schema_script
        self.patch(dbmod, "SCHEMA_VERSION", 2)
        self.patch(dbmod, "_schema_script", lambda name: "CREATE TABLE half (x INTEGER); THIS IS NOT SQL;"
                   if name == "upgrade-2.sql" else original(name))
        with self.assertRaises(StoreError) as cm:
            Store.open(self.path, reactor)
        self.assertIn("nothing was changed", str(cm.exception))
        self.assertEqual(_meta(self.path, "schema_version"), "1")
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
        self.assertIn(b"did:plc:alice", data)
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
