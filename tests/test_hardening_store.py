"""Issue #10 item 11: a rolled-back, lost or emptied database is refused at start-up, not silently reused.

A high-water mark (``freeq.db.hwm``) records the newest durable commit generation; the database
keeps its own generation in ``meta``. Start-up refuses, with one line and an ``--accept-data-loss``
override, a database behind the mark, or a missing/empty one beside existing key files. A missing
``msg-signing-key.secret`` next to an existing database starts with a warning saying what it means.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.config import ConfigError
from freeq.store import keys
from freeq.store.crypto import MessageCipher
from freeq.store.db import Store, StoreError, hwm_path, read_high_water_mark
from freeq.tap import Options, build_service, config_from_options
from tests.support import asynctest, sleep, start_tree
from tests.test_persistence import Running, _config

KEY_FILES = (keys.DB_ENCRYPTION_KEY, keys.MSG_SIGNING_KEY, keys.VERIFIER_SIGNING_KEY)


class StartupGuardTests(unittest.TestCase):
    """The real service (build_service) on a data directory, stopped, tampered with, started again."""

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        self.db = os.path.join(self.data_dir, "freeq.db")
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    async def start(self, data_dir: str = "", **overrides: Any) -> Running:
        """Start the whole service tree on ``data_dir`` (default: the test's) and return it running."""
        top, port = start_tree(_config(data_dir or self.data_dir, **overrides))
        running = Running(top, port)
        self.addCleanup(lambda: defer.ensureDeferred(running.stop()))
        return running

    def refused(self, data_dir: str = "") -> str:
        """Start-up on ``data_dir`` must fail with a one-line ConfigError; return it."""
        with self.assertRaises(ConfigError) as cm:
            build_service(_config(data_dir or self.data_dir), reactor)
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        return message

    async def add_channels(self, run: Running, names: list[str]) -> None:
        """Create persistent channels (a topic keeps a channel) and wait until they are committed."""
        alice = await run.client("alice")
        for name in names:
            alice.send(f"JOIN {name}")
            await alice.expect("366")
            alice.send(f"TOPIC {name} :kept")
            await alice.expect("TOPIC")
        alice.disconnect()
        await run.store.flush()

    def warnings(self) -> list[str]:
        """Every warning logged so far, formatted, but the configuration audit's (tests/test_audit.py)."""
        return [formatEvent(e) for e in self.events
                if e.get("log_level") == LogLevel.warn and e.get("log_namespace") != "freeq.audit"]

    def remove_wal(self) -> None:
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.db + suffix):
                os.unlink(self.db + suffix)

    @asynctest
    async def test_rolled_back_database_refused_until_accepted(self) -> None:
        """An older copy of freeq.db is refused with one line; --accept-data-loss starts it and re-baselines."""
        run = await self.start()
        await self.add_channels(run, ["#one"])
        await run.stop()
        snapshot = self.mktemp()
        shutil.copyfile(self.db, snapshot)  # a clean stop checkpointed the WAL into the file
        run = await self.start()
        await self.add_channels(run, ["#two", "#three", "#four"])
        await run.stop()
        mark = read_high_water_mark(hwm_path(self.db))
        shutil.copyfile(snapshot, self.db)
        self.remove_wal()

        message = self.refused()
        self.assertIn(f"{self.db} is behind its high-water mark (generation ", message)
        self.assertIn(f" < {mark})", message)
        self.assertIn("restore it from a backup, or start once with --accept-data-loss", message)

        run = await self.start(accept_data_loss=True)
        self.assertEqual(set(run.server.channels), {"#one"})
        self.assertTrue(any("--accept-data-loss" in w and "behind its high-water mark" in w
                            for w in self.warnings()), self.warnings())
        self.assertGreaterEqual(run.store.generation, mark)  # raised past the mark: older copies still refused
        await run.stop()
        run = await self.start()  # re-baselined: no flag needed any more
        self.assertEqual(set(run.server.channels), {"#one"})

    @asynctest
    async def test_lost_wal_after_a_crash_is_refused(self) -> None:
        """The database file without its WAL (the WAL lost or corrupt after a crash) is refused."""
        run = await self.start()
        await self.add_channels(run, ["#base"])
        await run.stop()
        run = await self.start(channel_create_burst=0)  # 20 new channels at once from one address (item 14 cap)
        run.store.hwm_interval = 0  # mark every commit, so the copy below is surely behind
        await self.add_channels(run, [f"#c{i}" for i in range(20)])
        self.assertTrue(os.path.getsize(self.db + "-wal") > 0)
        # A crash with a lost WAL: the data directory as it is on disk, minus freeq.db-wal.
        crashed = os.path.abspath(self.mktemp())
        os.makedirs(crashed)
        for name in ("freeq.db", "freeq.db.hwm") + KEY_FILES:
            shutil.copy2(os.path.join(self.data_dir, name), os.path.join(crashed, name))
        message = self.refused(crashed)
        self.assertIn("is behind its high-water mark", message)
        run = await self.start(crashed, accept_data_loss=True)
        self.assertEqual(set(run.server.channels), {"#base"})

    @asynctest
    async def test_zero_byte_database_beside_keys_refused(self) -> None:
        """A zero-byte freeq.db beside the key files is refused and left untouched; the override starts fresh."""
        run = await self.start()
        await self.add_channels(run, ["#gone"])
        await run.stop()
        open(self.db, "wb").close()
        self.remove_wal()
        os.unlink(hwm_path(self.db))  # the key file alone is enough evidence
        message = self.refused()
        self.assertEqual(message, f"{self.db} is missing or empty but {keys.DB_ENCRYPTION_KEY} exists: the database "
                                  f"was lost or replaced; restore it from a backup, or start once with "
                                  f"--accept-data-loss")
        self.assertEqual(os.path.getsize(self.db), 0)
        self.assertFalse(os.path.exists(self.db + "-wal"))
        run = await self.start(accept_data_loss=True)
        self.assertEqual(run.server.channels, {})
        self.assertTrue(any("--accept-data-loss" in w and "missing or empty" in w for w in self.warnings()))

    @asynctest
    async def test_missing_database_beside_keys_refused(self) -> None:
        """A deleted freeq.db (keys and mark still there) is refused, and no new file is created."""
        run = await self.start()
        await run.stop()
        os.unlink(self.db)
        self.remove_wal()
        self.assertIn("is missing or empty but", self.refused())
        self.assertFalse(os.path.exists(self.db))

    @asynctest
    async def test_first_start_and_restart_need_no_flag(self) -> None:
        """A new data directory starts, writes a 0600 mark, and a normal restart passes the check."""
        run = await self.start()
        path = hwm_path(self.db)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        await self.add_channels(run, ["#a"])
        await run.stop()
        self.assertEqual(read_high_water_mark(path), run.store.generation)
        self.assertGreater(run.store.generation, 0)
        run = await self.start()
        self.assertIn("#a", run.server.channels)
        self.assertEqual(self.warnings(), [])

    @asynctest
    async def test_mark_catches_up_once_writes_stop(self) -> None:
        """The last commits of a burst reach the mark from the idle flush loop, without another write."""
        run = await self.start()
        fake = [0.0]
        run.store.clock = lambda: fake[0]
        run.store._hwm_at = 0.0
        await self.add_channels(run, ["#burst"])
        self.assertLess(read_high_water_mark(hwm_path(self.db)), run.store.generation)  # within the interval
        fake[0] = run.store.hwm_interval
        for _ in range(50):
            await sleep(0.05)
            if read_high_water_mark(hwm_path(self.db)) == run.store.generation:
                break
        self.assertEqual(read_high_water_mark(hwm_path(self.db)), run.store.generation)

    @asynctest
    async def test_corrupt_mark_refused(self) -> None:
        """An unparsable freeq.db.hwm is refused (one line), never silently replaced."""
        run = await self.start()
        await run.stop()
        with open(hwm_path(self.db), "wb") as f:
            f.write(b"garbage")
        message = self.refused()
        self.assertIn("freeq.db.hwm is corrupt", message)
        self.assertIn("--accept-data-loss", message)

    @asynctest
    async def test_missing_signing_key_warns_what_it_means(self) -> None:
        """A missing msg-signing-key.secret beside a database starts with a new key and a clear warning."""
        run = await self.start()
        old = run.top.persistence.signer.public_key_b64  # type: ignore[attr-defined]
        await run.stop()
        self.assertEqual(self.warnings(), [])
        key_path = os.path.join(self.data_dir, keys.MSG_SIGNING_KEY)
        os.unlink(key_path)
        run = await self.start()
        self.assertNotEqual(run.top.persistence.signer.public_key_b64, old)  # type: ignore[attr-defined]
        warned = [w for w in self.warnings() if key_path in w]
        self.assertEqual(len(warned), 1, self.warnings())
        self.assertIn("a new message-signing key is generated", warned[0])
        self.assertIn(old, warned[0])  # the old public key (not secret) names what is affected
        self.assertIn("can no longer sign with it", warned[0])
        self.assertIn("previous_keys", warned[0])


class GenerationTests(unittest.TestCase):
    """The Store's commit generation and its throttled, atomic high-water mark (no reactor needed)."""

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "freeq.db")
        self.now = [100.0]
        self.store = Store.open(self.path, None)
        self.store.clock = lambda: self.now[0]
        self.store.use_cipher(MessageCipher(b"k" * 32, keys.fingerprint(b"k" * 32)))
        self.addCleanup(self.store.conn.close)

    def commit(self, n: int) -> None:
        self.store._apply([("message", ("#c", f"m{n}", n, "PRIVMSG", "a!b@c", None, "#c", "hi", {}))])

    def mark(self) -> Any:
        with open(hwm_path(self.path), "rb") as f:
            return json.loads(f.read())

    def test_generation_counts_commits_in_the_database(self) -> None:
        """Each group commit adds one to the generation, stored in meta within the same transaction."""
        self.assertEqual(self.store.generation, 0)
        for i in range(3):
            self.commit(i)
        self.assertEqual(self.store.generation, 3)
        row = self.store.conn.execute("SELECT value FROM meta WHERE key='commit_generation'").fetchone()
        self.assertEqual(row[0], "3")
        reopened = Store.open(self.path, None)
        self.addCleanup(reopened.conn.close)
        self.assertEqual(reopened.generation, 3)

    def test_mark_written_at_most_every_interval_and_forced_at_stop(self) -> None:
        """The mark file follows the generation no more often than hwm_interval; force writes it now."""
        self.store.rebaseline(0)
        self.assertEqual(self.mark(), {"format": 1, "generation": 0})
        self.assertEqual(stat.S_IMODE(os.stat(hwm_path(self.path)).st_mode), 0o600)
        self.commit(1)
        self.assertEqual(self.mark()["generation"], 0)  # within the interval of the baseline
        self.now[0] += self.store.hwm_interval
        self.commit(2)
        self.assertEqual(self.mark()["generation"], 2)
        self.commit(3)
        self.assertEqual(self.mark()["generation"], 2)
        self.store._mark_high_water(force=True)
        self.assertEqual(self.mark()["generation"], 3)
        self.assertEqual([n for n in os.listdir(os.path.dirname(self.path)) if ".tmp" in n], [])

    def test_rebaseline_raises_the_generation_past_the_mark(self) -> None:
        """Accepting a loss raises the database's generation to the old mark, so older copies stay detectable."""
        self.commit(1)
        self.store.rebaseline(40)
        self.assertEqual(self.store.generation, 40)
        self.assertEqual(self.mark()["generation"], 40)
        self.commit(2)
        self.assertEqual(self.store.generation, 41)

    def test_must_exist_refuses_before_creating_anything(self) -> None:
        """Store.open with must_exist refuses a missing or table-less file and creates nothing."""
        other = os.path.join(os.path.dirname(self.path), "other.db")
        with self.assertRaises(StoreError) as cm:
            Store.open(other, None, must_exist="gone")
        self.assertEqual(str(cm.exception), "gone")
        self.assertFalse(os.path.exists(other))
        open(other, "wb").close()
        with self.assertRaises(StoreError):
            Store.open(other, None, must_exist="gone")
        self.assertEqual(os.path.getsize(other), 0)


class FlagTests(unittest.TestCase):
    """``--accept-data-loss`` is a twistd flag that reaches the Config."""

    def test_flag_parses(self) -> None:
        """Off by default; on with the flag."""
        options = Options()
        options.parseOptions([])
        self.assertFalse(config_from_options(options, {}).accept_data_loss)
        options = Options()
        options.parseOptions(["--accept-data-loss"])
        self.assertTrue(config_from_options(options, {}).accept_data_loss)
