"""``freeq-admin rekey``: rotating the database key without losing history, resumable after any stop."""
from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.trial import unittest

from freeq import admin
from freeq.config import Config, ConfigError
from freeq.store import keys
from freeq.store.crypto import MessageCipher
from freeq.store.service import open_persistence
from tests.support import asynctest
from tests.test_store import make_v1_database

DM = "dm:did:plc:a did:plc:b"


class RekeyTests(unittest.TestCase):
    """Rotation of db-encryption-key.secret on a data directory with stored messages."""

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.db = os.path.join(self.data_dir, "freeq.db")
        self.key_path = os.path.join(self.data_dir, keys.DB_ENCRYPTION_KEY)
        self.config = Config(listen=None, tls_listen=None, data_dir=self.data_dir)

    async def populate(self, n: int, per_flush: int = 1) -> dict[str, str]:
        """Store ``n`` messages (a channel and a DM) through a real store, committing every ``per_flush``
        messages (so with 1, each is its own history chunk); return msgid -> text."""
        p = open_persistence(self.config, reactor, time.time())
        p.store.start()
        expected = {}
        base = time.time() - 3600
        for i in range(n):
            target, shown = ("#chan", "#chan") if i % 3 else (DM, "bob")
            msgid = f"01MSG{i:06d}"
            p.store.append_message(target, msgid, base + i / 1000, "PRIVMSG", "alice!u@h", None, shown,
                                   f"text number {i}", {"+example/n": str(i)})
            expected[msgid] = f"text number {i}"
            if (i + 1) % per_flush == 0:
                await p.store.flush()
        await p.store.stop()
        os.close(p.lock_fd)
        return expected

    async def read_all(self) -> dict[str, str]:
        """Open the data directory as the server would and read back every stored message."""
        p = open_persistence(self.config, reactor, time.time())
        p.store.start()
        try:
            out = {}
            for target in ("#chan", DM):
                for r in await p.store.history(target, "LATEST", (None,), 1_000_000):
                    self.assertNotIn("+freeq.at/undecryptable", r.tags)
                    self.assertEqual(r.tags["+example/n"], r.text.rsplit(" ", 1)[1])
                    out[r.msgid] = r.text
            return out
        finally:
            await p.store.stop()
            os.close(p.lock_fd)

    def key_counts(self) -> dict[str, int]:
        conn = sqlite3.connect(self.db)
        try:
            return dict(conn.execute("SELECT key_fp, SUM(count) FROM message_chunks GROUP BY key_fp").fetchall())
        finally:
            conn.close()

    def recorded_fp(self) -> str:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute("SELECT value FROM meta WHERE key='db_key_fingerprint'").fetchone()[0]
        finally:
            conn.close()

    def read_key(self, path: str = "") -> bytes:
        with open(path or self.key_path, "rb") as f:
            return f.read()

    @asynctest
    async def test_rekey_reencrypts_everything(self) -> None:
        """A full rotation: new key file, new recorded fingerprint, every row under it and readable, no .new."""
        expected = await self.populate(300)
        old_key = self.read_key()
        self.assertEqual(self.recorded_fp(), keys.fingerprint(old_key))
        out = io.StringIO()
        self.assertTrue(admin.rekey(self.data_dir, batch_size=50, out=out))
        new_key = self.read_key()
        self.assertNotEqual(new_key, old_key)
        self.assertEqual(len(new_key), 32)
        self.assertEqual(os.stat(self.key_path).st_mode & 0o777, 0o600)
        self.assertFalse(os.path.exists(self.key_path + ".new"))
        self.assertEqual(self.recorded_fp(), keys.fingerprint(new_key))
        self.assertEqual(self.key_counts(), {keys.fingerprint(new_key): 300})
        self.assertIn("re-encrypted 300 messages", out.getvalue())
        self.assertIn("rotation complete", out.getvalue())
        self.assertNotIn(new_key.hex(), out.getvalue())
        self.assertEqual(await self.read_all(), expected)

    @asynctest
    async def test_staged_rotation_blocks_start_until_finished(self) -> None:
        """--max-batches stops early (exit 3) with rows under both keys; the server refuses until a rerun ends it."""
        expected = await self.populate(300)
        old_key = self.read_key()
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        code = admin.main(["rekey", "--data-dir", self.data_dir, "--batch-size", "50", "--max-batches", "1"])
        self.assertEqual(code, 3)
        self.assertIn("run again to continue", stdout.getvalue())
        new_key = self.read_key(self.key_path + ".new")
        self.assertEqual(self.read_key(), old_key)
        self.assertEqual(self.recorded_fp(), keys.fingerprint(old_key))
        self.assertEqual(self.key_counts(), {keys.fingerprint(old_key): 250, keys.fingerprint(new_key): 50})

        with self.assertRaises(ConfigError) as cm:
            open_persistence(self.config, reactor, time.time())
        self.assertIn("freeq-admin rekey", str(cm.exception))

        self.assertFalse(admin.rekey(self.data_dir, batch_size=50, max_batches=2, out=io.StringIO()))
        self.assertEqual(self.key_counts(), {keys.fingerprint(old_key): 150, keys.fingerprint(new_key): 150})
        self.assertEqual(admin.main(["rekey", "--data-dir", self.data_dir, "--batch-size", "50"]), 0)
        self.assertEqual(self.read_key(), new_key)
        self.assertFalse(os.path.exists(self.key_path + ".new"))
        self.assertEqual(self.key_counts(), {keys.fingerprint(new_key): 300})
        self.assertEqual(await self.read_all(), expected)

    @asynctest
    async def test_kill_9_mid_run_then_rerun(self) -> None:
        """A rekey process killed with SIGKILL part-way is finished by a rerun with nothing lost."""
        total = 3000
        expected = await self.populate(total)
        old_fp = keys.fingerprint(self.read_key())
        proc = subprocess.Popen([sys.executable, "-m", "freeq.admin", "rekey", "--data-dir", self.data_dir,
                                 "--batch-size", "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=self.data_dir)

        def reap() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()

        self.addCleanup(reap)
        # Let the child run in short slices (SIGSTOP/SIGCONT) so the kill lands mid-run however fast it is.
        deadline = time.monotonic() + 20
        while not os.path.exists(self.key_path + ".new"):
            self.assertIsNone(proc.poll(), "rekey exited early")
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.0005)
        os.kill(proc.pid, signal.SIGSTOP)
        new_fp = keys.fingerprint(self.read_key(self.key_path + ".new"))
        while self.key_counts().get(new_fp, 0) < 50:
            self.assertLess(time.monotonic(), deadline)
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.001)
            os.kill(proc.pid, signal.SIGSTOP)
        os.kill(proc.pid, signal.SIGKILL)
        self.assertEqual(proc.wait(), -signal.SIGKILL)
        counts = self.key_counts()
        self.assertEqual(set(counts), {old_fp, new_fp})
        self.assertEqual(sum(counts.values()), total)
        self.assertEqual(counts[new_fp] % 5, 0)  # whole batches only
        self.assertEqual(self.recorded_fp(), old_fp)
        with self.assertRaises(ConfigError):
            open_persistence(self.config, reactor, time.time())

        self.assertTrue(admin.rekey(self.data_dir, batch_size=500, out=io.StringIO()))
        self.assertEqual(keys.fingerprint(self.read_key()), new_fp)
        self.assertEqual(self.recorded_fp(), new_fp)
        self.assertFalse(os.path.exists(self.key_path + ".new"))
        self.assertEqual(await self.read_all(), expected)

    def formats(self) -> dict[int, int]:
        conn = sqlite3.connect(self.db)
        try:
            return dict(conn.execute("SELECT format, COUNT(*) FROM message_chunks GROUP BY format").fetchall())
        finally:
            conn.close()

    @asynctest
    async def test_mixed_formats_interrupted_and_resumed(self) -> None:
        """Over a database upgraded from v1 (format-1 rows) that then stored multi-message chunks (format 2),
        a rotation stopped half-way, and then crashed mid-batch, is finished by a rerun: every message
        reads back, all of it as format 2 under the new key."""
        key = os.urandom(32)
        keys.write_secret_atomically(self.key_path, key)
        base = int(time.time() * 1000) - 7200_000
        expected = {}
        rows = []
        for i in range(60):
            target, shown = ("#chan", "#chan") if i % 3 else (DM, "bob")
            msgid = f"01V1{i:06d}"
            rows.append((target, msgid, base + i, "PRIVMSG", "alice!u@h", None, shown, f"text number {i}",
                         {"+example/n": str(i)}))
            expected[msgid] = f"text number {i}"
        make_v1_database(self.db, MessageCipher(key, keys.fingerprint(key)), rows)
        expected.update(await self.populate(300, per_flush=10))  # upgrades the database first
        self.assertTrue(os.path.exists(self.db + ".v1.bak"))
        self.assertEqual(self.formats(), {1: 60, 2: 60})  # 300 messages in 60 chunks (two per commit)
        old_fp = keys.fingerprint(key)

        self.assertFalse(admin.rekey(self.data_dir, batch_size=20, max_batches=2, out=io.StringIO()))
        new_fp = keys.fingerprint(self.read_key(self.key_path + ".new"))
        self.assertEqual(self.formats(), {1: 20, 2: 100})
        self.assertEqual(self.key_counts(), {old_fp: 20 + 60 * 5, new_fp: 40})
        # A crash in the middle of a batch of format-2 chunks (the process dies; SQLite drops the open
        # transaction exactly as the rollback here does).
        real = admin.reencrypt_chunk
        calls = []

        class Crash(BaseException):
            pass

        def crashing(row: sqlite3.Row, old: MessageCipher, new: MessageCipher) -> bytes:
            calls.append(row["format"])
            if len(calls) == 32:
                raise Crash()
            return real(row, old, new)

        self.patch(admin, "reencrypt_chunk", crashing)
        with self.assertRaises(Crash):
            admin.rekey(self.data_dir, batch_size=3, out=io.StringIO())
        self.assertEqual(calls[:20], [1] * 20)
        self.assertEqual(calls[20:], [2] * 12)
        counts = self.key_counts()
        self.assertEqual(sum(counts.values()), 360)
        self.assertEqual(self.formats(), {2: 120})
        conn = sqlite3.connect(self.db)
        chunk_sizes = [n for (n,) in conn.execute(
            "SELECT count FROM message_chunks WHERE format=2 AND key_fp=? ORDER BY id", (new_fp,))]
        conn.close()
        # Whole batches only: 10 batches of 3 committed (20 format-1 rows, 10 chunks), the 11th not at all.
        self.assertEqual(len(chunk_sizes), 40 + 20 + 10)
        self.assertEqual(counts[new_fp], sum(chunk_sizes))
        self.assertGreater(counts[old_fp], 0)
        self.assertEqual(self.recorded_fp(), old_fp)
        self.patch(admin, "reencrypt_chunk", real)

        out = io.StringIO()
        self.assertTrue(admin.rekey(self.data_dir, batch_size=7, out=out))
        self.assertIn("re-encrypted 360 messages", out.getvalue())
        self.assertEqual(self.formats(), {2: 120})
        self.assertEqual(self.key_counts(), {new_fp: 360})
        self.assertEqual(await self.read_all(), expected)

    @asynctest
    async def test_refused_while_server_runs(self) -> None:
        """While a server holds the data directory, rekey refuses (exit 1) and changes nothing."""
        await self.populate(10)
        old_key = self.read_key()
        p = open_persistence(self.config, reactor, time.time())
        self.addCleanup(p.store.conn.close)
        try:
            with self.assertRaises(admin.AdminError) as cm:
                admin.rekey(self.data_dir, out=io.StringIO())
            self.assertIn("in use by a running freeq server", str(cm.exception))
            stderr = io.StringIO()
            self.patch(sys, "stderr", stderr)
            self.assertEqual(admin.main(["rekey", "--data-dir", self.data_dir]), 1)
            self.assertIn("stop it first", stderr.getvalue())
        finally:
            os.close(p.lock_fd)
        self.assertEqual(self.read_key(), old_key)
        self.assertFalse(os.path.exists(self.key_path + ".new"))

    @asynctest
    async def test_refused_with_the_wrong_key_file(self) -> None:
        """If the key file does not match the database, rekey refuses before generating anything."""
        await self.populate(10)
        keys.write_secret_atomically(self.key_path, os.urandom(32))
        with self.assertRaises(admin.AdminError) as cm:
            admin.rekey(self.data_dir, out=io.StringIO())
        self.assertIn("refusing to rotate", str(cm.exception))
        self.assertFalse(os.path.exists(self.key_path + ".new"))

    def test_signing_keys_listed(self) -> None:
        """freeq-admin signing-keys prints the recorded public key as current."""
        p = open_persistence(self.config, reactor, time.time())
        p.store.conn.close()
        os.close(p.lock_fd)
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.assertEqual(admin.main(["signing-keys", "--data-dir", self.data_dir]), 0)
        self.assertEqual(stdout.getvalue().split(), [p.signer.public_key_b64, stdout.getvalue().split()[1],
                                                     "valid_until=current"])
