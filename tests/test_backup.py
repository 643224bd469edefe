"""``freeq-admin backup`` / ``restore`` (issue #13 item 7): a backup taken while the server runs restores to a working
server with its history intact."""
from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import sys
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from freeq import admin, backup
from freeq.config import Config, Listen
from freeq.store import keys
from freeq.store.high_water import read_high_water_mark
from tests.support import IRCClient, ServerFixture, asynctest, start_tree

CAPS = ("echo-message", "message-tags", "batch", "server-time")


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class Running:
    """One in-process ``twistd freeq`` service tree (freeq.tap.build_service) on a data directory."""

    def __init__(self, data_dir: str, **overrides: Any) -> None:
        fields: dict[str, Any] = dict(listen=Listen("127.0.0.1", 0), tls_listen=None, data_dir=data_dir,
                                      flood_rate=0, max_clients=100)
        fields.update(overrides)
        self.top, port = start_tree(Config(**fields))
        self.server = self.top.irc_server
        self.store = self.top.persistence.store
        self.fixture = ServerFixture(self.server, port, None, [], [], reactor)
        self.stopped = False

    async def stop(self) -> None:
        """Stop like twistd does (final flush, lock released)."""
        if not self.stopped:
            self.stopped = True
            await self.top.stopService()
            await self.fixture.stop()


async def say(client: IRCClient, target: str, text: str) -> None:
    """Send one PRIVMSG and wait for its echo (the server has stored-queued it)."""
    client.send(f"PRIVMSG {target} :{text}")
    await client.expect(lambda l: l.command == "PRIVMSG" and l.params[-1] == text)


async def history(client: IRCClient, target: str) -> list[str]:
    """The texts of CHATHISTORY LATEST (one page of 100), oldest first."""
    client.skip()
    client.send(f"CHATHISTORY LATEST {target} * 100")
    opener = await client.expect("BATCH")
    ref = opener.params[0][1:]
    lines = await client.collect_until(lambda l: l.command == "BATCH" and l.params == ["-" + ref])
    return [l.params[-1] for l in lines if l.command == "PRIVMSG"]


class BackupRestoreTests(unittest.TestCase):
    """A real server with history, backed up while it runs and writes, restored to a fresh data directory."""

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        self.dest = os.path.abspath(self.mktemp())
        self.restored = os.path.abspath(self.mktemp())
        self.out = io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.out)

    async def start(self, data_dir: str, **overrides: Any) -> Running:
        run = Running(data_dir, **overrides)
        self.addCleanup(lambda: defer.ensureDeferred(run.stop()))
        return run

    async def populated(self, n: int = 20) -> tuple[Running, IRCClient, list[str]]:
        """A server whose #keep holds ``n`` stored messages from alice (flushed to the database)."""
        run = await self.start(self.data_dir)
        alice = await run.fixture.client("alice", caps=CAPS)
        alice.send("JOIN #keep")
        await alice.expect("366")
        texts = [f"before backup {i}" for i in range(n)]
        for text in texts:
            await say(alice, "#keep", text)
        await run.store.flush()
        return run, alice, texts

    @asynctest
    async def test_backup_while_running_restores_history(self) -> None:
        """Backup (through ``freeq-admin``) while alice keeps talking: the copy is one consistent snapshot (every
        message before it, then an unbroken prefix of those sent during it); restored into a fresh data
        directory, a server starts on it (no --accept-data-loss) and CHATHISTORY returns exactly that."""
        run, alice, texts = await self.populated()
        wal = os.path.join(self.data_dir, "freeq.db-wal")
        self.assertGreater(os.path.getsize(wal), 0)  # the history is (partly) in the WAL only: the copy must read it
        during = [f"during backup {i}" for i in range(60)]
        done = threads.deferToThread(admin.main, ["backup", self.dest, "--data-dir", self.data_dir])
        for text in during:
            await say(alice, "#keep", text)
            if done.called:
                break
        self.assertEqual(await done, 0, self.out.getvalue())
        await run.stop()

        self.assertEqual(mode(self.dest), 0o700)
        for name in (keys.DB_ENCRYPTION_KEY, keys.MSG_SIGNING_KEY, keys.VERIFIER_SIGNING_KEY):
            self.assertEqual(mode(os.path.join(self.dest, name)), 0o600, name)
            with open(os.path.join(self.dest, name), "rb") as a, open(os.path.join(self.data_dir, name), "rb") as b:
                self.assertEqual(a.read(), b.read(), name)
        self.assertEqual(mode(os.path.join(self.dest, "freeq.db")), 0o600)
        self.assertIn("a backup without db-encryption-key.secret is useless", self.out.getvalue())
        with open(os.path.join(self.dest, backup.MANIFEST), "rb") as f:
            manifest = json.load(f)
        self.assertEqual(read_high_water_mark(os.path.join(self.dest, "freeq.db.hwm")), manifest["generation"])
        self.assertFalse(os.path.exists(os.path.join(self.dest, "freeq.db-wal")))

        self.assertEqual(admin.main(["restore", self.dest, "--data-dir", self.restored]), 0, self.out.getvalue())
        self.assertEqual(mode(self.restored), 0o700)
        for name in ("freeq.db", "freeq.db.hwm", keys.DB_ENCRYPTION_KEY, keys.MSG_SIGNING_KEY):
            self.assertEqual(mode(os.path.join(self.restored, name)), 0o600, name)

        run = await self.start(self.restored)
        bob = await run.fixture.client("bob", caps=CAPS)
        bob.send("JOIN #keep")
        await bob.expect("366")
        got = await history(bob, "#keep")
        self.assertEqual(got[:len(texts)], texts)
        self.assertEqual(got[len(texts):], during[:len(got) - len(texts)])  # a prefix: nothing missing in between

    @asynctest
    async def test_restore_over_a_newer_data_dir(self) -> None:
        """Restoring an older backup over the data directory it came from (--force) is not a roll-back: the high-water
        mark follows the restored database and its stale WAL is removed, so the server starts without
        --accept-data-loss, with the backup's history; a non-empty directory without --force is refused."""
        run, alice, texts = await self.populated(5)
        self.assertEqual(admin.main(["backup", self.dest, "--data-dir", self.data_dir]), 0, self.out.getvalue())
        for i in range(5):
            await say(alice, "#keep", f"after backup {i}")
        await run.store.flush()
        await run.stop()
        newer = read_high_water_mark(os.path.join(self.data_dir, "freeq.db.hwm"))
        with open(os.path.join(self.data_dir, "freeq.db-wal"), "wb") as f:
            f.write(b"stale WAL of the replaced database")

        self.assertEqual(admin.main(["restore", self.dest, "--data-dir", self.data_dir]), 1)
        self.assertIn("is not empty", self.out.getvalue())
        self.assertIn("--force", self.out.getvalue())
        self.assertEqual(admin.main(["restore", self.dest, "--data-dir", self.data_dir, "--force"]), 0,
                         self.out.getvalue())
        mark = read_high_water_mark(os.path.join(self.data_dir, "freeq.db.hwm"))
        self.assertIsNotNone(newer)
        self.assertLess(mark, newer)
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, "freeq.db-wal")))

        run = await self.start(self.data_dir)
        bob = await run.fixture.client("bob", caps=CAPS)
        bob.send("JOIN #keep")
        await bob.expect("366")
        self.assertEqual(await history(bob, "#keep"), texts)

    @asynctest
    async def test_restore_refused_while_the_server_runs(self) -> None:
        """Restore takes the data directory's lock: with a server on it, exit 1 and nothing touched."""
        run, _alice, _texts = await self.populated(2)
        self.assertEqual(admin.main(["backup", self.dest, "--data-dir", self.data_dir]), 0)
        with open(os.path.join(self.data_dir, "freeq.db"), "rb") as f:
            before = f.read()
        self.assertEqual(admin.main(["restore", self.dest, "--data-dir", self.data_dir, "--force"]), 1)
        self.assertIn("in use by a running freeq server", self.out.getvalue())
        with open(os.path.join(self.data_dir, "freeq.db"), "rb") as f:
            self.assertEqual(f.read(), before)
        await run.stop()

    @asynctest
    async def test_backup_finds_the_data_dir_in_the_config_file(self) -> None:
        """``freeq-admin backup DEST --config FILE`` backs up the data directory the server's config file names."""
        run, _alice, _texts = await self.populated(2)
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(f'data-dir = "{self.data_dir}"\n')
        self.assertEqual(admin.main(["backup", self.dest, "--config", config]), 0, self.out.getvalue())
        self.assertIn(f"backed up {os.path.join(self.data_dir, 'freeq.db')}", self.out.getvalue())
        self.assertTrue(os.path.exists(os.path.join(self.dest, keys.DB_ENCRYPTION_KEY)))
        await run.stop()

    @asynctest
    async def test_backup_refuses_a_non_empty_destination(self) -> None:
        """DEST must be new or empty: an old backup is never mixed with a new one."""
        run, _alice, _texts = await self.populated(1)
        os.makedirs(self.dest)
        with open(os.path.join(self.dest, "old"), "w") as f:
            f.write("x")
        self.assertEqual(admin.main(["backup", self.dest, "--data-dir", self.data_dir]), 1)
        self.assertIn("not an empty directory", self.out.getvalue())
        await run.stop()

    @asynctest
    async def test_damaged_or_keyless_backup_refused(self) -> None:
        """A file that no longer matches the manifest is refused; so is a backup without the database key whose
        database holds encrypted history (the server could never read it)."""
        run, _alice, _texts = await self.populated(3)
        self.assertEqual(admin.main(["backup", self.dest, "--data-dir", self.data_dir]), 0)
        await run.stop()
        key = os.path.join(self.dest, keys.DB_ENCRYPTION_KEY)
        keys.write_secret_atomically(key, os.urandom(32))
        self.assertEqual(admin.main(["restore", self.dest, "--data-dir", self.restored]), 1)
        self.assertIn("does not match its checksum", self.out.getvalue())
        os.unlink(key)
        os.unlink(os.path.join(self.dest, backup.MANIFEST))
        self.assertEqual(admin.main(["restore", self.dest, "--data-dir", self.restored]), 1)
        self.assertIn(f"has no {keys.DB_ENCRYPTION_KEY}", self.out.getvalue())
        self.assertFalse(os.path.exists(os.path.join(self.restored, "freeq.db")))

    def test_backup_without_the_key_warns(self) -> None:
        """A data directory without db-encryption-key.secret is backed up with the warning that it is useless."""
        os.makedirs(self.data_dir, mode=0o700)
        conn = sqlite3.connect(os.path.join(self.data_dir, "freeq.db"))
        conn.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('commit_generation', '7'), ('schema_version', '4')")
        conn.commit()
        conn.close()
        info = backup.backup(self.data_dir, self.dest, out=self.out)
        self.assertEqual((info.generation, info.key_files), (7, ()))
        self.assertIn("a backup without db-encryption-key.secret is useless", self.out.getvalue())
        self.assertIn("was not found", self.out.getvalue())

    def test_refused_restore_changes_nothing(self) -> None:
        """A restore refused for a non-empty directory leaves it as it was (its mode included)."""
        os.makedirs(self.data_dir, mode=0o700)
        conn = sqlite3.connect(os.path.join(self.data_dir, "freeq.db"))
        conn.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT)")
        conn.commit()
        conn.close()
        backup.backup(self.data_dir, self.dest, out=self.out)
        os.makedirs(self.restored)
        os.chmod(self.restored, 0o755)
        with open(os.path.join(self.restored, "notes.txt"), "w") as f:
            f.write("mine")
        with self.assertRaises(backup.BackupError):
            backup.restore(self.dest, self.restored, out=self.out)
        self.assertEqual(mode(self.restored), 0o755)
        self.assertEqual(sorted(os.listdir(self.restored)), ["notes.txt"])
