"""Restarts on one data directory: channel state, history, identities and keys survive; bad starts are refused."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Optional

from twisted.application.service import MultiService
from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.trial import unittest

from freeq.config import Config, ConfigError, Listen
from freeq.store import keys
from freeq.store.db import ChannelRecord
from freeq.tap import build_service
from tests.support import IRCClient, ServerFixture, asynctest, sleep, start_tree


class Running:
    """One in-process freeq service tree on a data directory, and its client fixture."""

    def __init__(self, top: MultiService, port: int) -> None:
        self.top = top
        self.port = port
        self.server = top.irc_server  # type: ignore[attr-defined]
        self.store = top.persistence.store  # type: ignore[attr-defined]
        self.fixture = ServerFixture(self.server, port, None, [], [], reactor)
        self.stopped = False

    async def client(self, nick: str, caps: tuple[str, ...] = (), account: Optional[str] = None) -> IRCClient:
        """Register ``nick``; with ``account``, mark it as DID-authenticated (as the identity layer would)."""
        c = await self.fixture.client(nick, caps=caps)
        if account is not None:
            self.server.users[nick.lower()].account = account
        return c

    async def stop(self) -> None:
        """Stop like twistd does (clients told, final flush, data-directory lock released)."""
        if self.stopped:
            return
        self.stopped = True
        await self.top.stopService()
        await self.fixture.stop()


def _config(data_dir: str, **overrides: Any) -> Config:
    base: dict[str, Any] = dict(listen=Listen("127.0.0.1", 0), tls_listen=None, data_dir=data_dir, flood_rate=0)
    base.update(overrides)
    return Config(**base)


class RestartTests(unittest.TestCase):
    """A real service (freeq.tap.build_service) stopped and started again on the same data directory."""

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())

    async def start(self, **overrides: Any) -> Running:
        top, port = start_tree(_config(self.data_dir, **overrides))
        running = Running(top, port)
        self.addCleanup(lambda: defer.ensureDeferred(running.stop()))
        return running

    async def say_all(self, client: IRCClient, target: str, texts: list[str], command: str = "PRIVMSG") -> list[str]:
        """Send messages (the client has echo-message and message-tags); return their msgids in order."""
        ids = []
        for text in texts:
            client.send(f"{command} {target} :{text}")
            line = await client.expect(lambda l: l.command == command and l.params[-1] == text)
            ids.append(line.tags["msgid"])
        return ids

    async def history(self, client: IRCClient, target: str, limit: int = 100) -> list[Any]:
        """CHATHISTORY LATEST for a batch client: the lines inside the batch."""
        client.skip()
        client.send(f"CHATHISTORY LATEST {target} * {limit}")
        opener = await client.expect("BATCH")
        ref = opener.params[0][1:]
        lines = await client.collect_until(lambda l: l.command == "BATCH" and l.params == ["-" + ref])
        return lines[:-1]

    @asynctest
    async def test_channel_state_and_history_survive_restart(self) -> None:
        """Modes, key, limit, topic with setter and time, ban/except/invex lists and history come back."""
        caps = ("echo-message", "message-tags", "batch", "server-time")
        run = await self.start()
        alice = await run.client("alice", caps=caps)
        alice.send("JOIN #Keep")
        await alice.expect("366")
        for change in ("+imnst", "+kl sekrit 10", "+b *!*@banned.example", "+e *!*@except.example",
                       "+I alice!*@*"):
            alice.send(f"MODE #Keep {change}")
            await alice.expect(lambda l: l.command == "MODE" and l.params[0] == "#Keep")
        alice.send("TOPIC #Keep :kept across restarts")
        await alice.expect("TOPIC")
        msgids = await self.say_all(alice, "#Keep", [f"line {i}" for i in range(5)])
        msgids += await self.say_all(alice, "#Keep", ["a notice"], command="NOTICE")
        chan = run.server.channels["#keep"]
        before = (chan.created, chan.topic_setter, chan.topic_time,
                  {m: [(e.mask, e.setter, e.set_at) for e in chan.lists[m]] for m in "beI"})
        self.assertEqual(before[1], "alice!~alice@freeq/guest")
        await run.stop()

        run = await self.start()
        self.assertIn("#keep", run.server.channels)
        alice = await run.client("alice", caps=caps)
        alice.send("JOIN #Keep")
        self.assertEqual((await alice.expect(lambda l: l.command in ("475", "473", "366"))).command, "475")
        alice.send("JOIN #Keep sekrit")  # +k still applies; +I lets alice past +i
        topic = await alice.expect("332")
        self.assertEqual(topic.params, ["alice", "#Keep", "kept across restarts"])
        who = await alice.expect("333")
        self.assertEqual(who.params, ["alice", "#Keep", before[1], str(before[2])])
        await alice.expect("366")
        alice.send("MODE #Keep")
        modes = await alice.expect("324")
        self.assertEqual(sorted(modes.params[2].lstrip("+")), sorted("iklmnst"))
        self.assertEqual(sorted(modes.params[3:]), ["10", "sekrit"])
        created = await alice.expect("329")
        self.assertEqual(created.params[2], str(before[0]))
        for mode, item, end in (("b", "367", "368"), ("e", "348", "349"), ("I", "346", "347")):
            alice.send(f"MODE #Keep +{mode}")
            lines = await alice.collect_until(end)
            entries = [tuple(l.params[2:5]) for l in lines if l.command == item]
            self.assertEqual(entries, [(m, s, str(t)) for m, s, t in before[3][mode]], mode)
            self.assertEqual(len(entries), 1)
        inner = await self.history(alice, "#Keep")
        self.assertEqual([l.tags["msgid"] for l in inner], msgids)
        self.assertEqual([(l.command, l.params[-1]) for l in inner],
                         [("PRIVMSG", f"line {i}") for i in range(5)] + [("NOTICE", "a notice")])
        # A guest on another host is still kept out by +i (the invex matched only alice).
        bob = await run.client("bob")
        bob.send("JOIN #Keep sekrit")
        await bob.expect("473")

    @asynctest
    async def test_channel_emptied_of_state_is_forgotten(self) -> None:
        """A channel whose persistent state is removed does not come back after a restart."""
        run = await self.start()
        alice = await run.client("alice")
        alice.send("JOIN #gone")
        await alice.expect("366")
        alice.send("TOPIC #gone :temporary")
        await alice.expect("TOPIC")
        alice.send("JOIN #kept")
        await alice.expect("366")
        alice.send("MODE #kept +s")
        await alice.expect("MODE")
        alice.send("TOPIC #gone :")
        await alice.expect("TOPIC")
        alice.send("PART #gone")
        await alice.expect("PART")
        await run.stop()
        run = await self.start()
        self.assertNotIn("#gone", run.server.channels)
        self.assertIn("#kept", run.server.channels)

    @asynctest
    async def test_nick_owners_founder_and_did_ops_survive(self) -> None:
        """Nick ownership and a channel's founder and DID operators written through the store reload intact."""
        run = await self.start()
        now = time.time()
        run.store.bind_nick("owned", "Owned", "did:plc:owner", now)
        run.store.bind_nick("renamed", "Renamed", "did:plc:mover", now)
        run.store.bind_nick("moved", "Moved", "did:plc:mover", now)  # a DID owns one nick: replaces 'renamed'
        run.store.save_channel(ChannelRecord(
            "#Founded", 1000, "nt", None, None, "", "", 0, "did:plc:founder", {"b": [], "e": [], "I": []},
            {"did:plc:founder": ("did:plc:founder", 1000), "did:plc:helper": ("did:plc:founder", 2000)}))
        await run.stop()
        run = await self.start()
        self.assertEqual(run.server.nick_owners, {"owned": ("Owned", "did:plc:owner"),
                                                  "moved": ("Moved", "did:plc:mover")})
        chan = run.server.channels["#founded"]
        self.assertEqual(chan.name, "#Founded")
        self.assertEqual(chan.founder, "did:plc:founder")
        self.assertEqual(chan.did_ops, {"did:plc:founder": ("did:plc:founder", 1000),
                                        "did:plc:helper": ("did:plc:founder", 2000)})
        self.assertEqual(chan.created, 1000)
        # An owned, empty channel does not hand ops to the first guest who walks in.
        guest = await run.client("guest")
        guest.send("JOIN #Founded")
        names = await guest.expect("353")
        self.assertEqual(names.params[-1], "guest")

    @asynctest
    async def test_account_dms_stored_guest_dms_not(self) -> None:
        """DMs between accounts survive a restart and are readable by both parties only; guest DMs are not kept."""
        caps = ("echo-message", "message-tags", "batch")
        run = await self.start()
        alice = await run.client("alice", caps=caps, account="did:plc:alice")
        bob = await run.client("bob", caps=caps, account="did:plc:bob")
        dave = await run.client("dave", caps=caps)
        await run.client("erin")
        ids = await self.say_all(alice, "bob", ["hello bob"])
        ids += await self.say_all(bob, "alice", ["hello alice"])
        await self.say_all(dave, "erin", ["guest secret"])
        await self.say_all(alice, "erin", ["to a guest"])
        self.assertEqual(await run.store.count_messages(), 2)
        await run.stop()

        run = await self.start()
        self.assertEqual(await run.store.count_messages(), 2)
        alice = await run.client("alice", caps=caps, account="did:plc:alice")
        bob = await run.client("bob", caps=caps, account="did:plc:bob")
        carol = await run.client("carol", caps=caps, account="did:plc:carol")
        dave = await run.client("dave", caps=caps)
        await run.client("erin", caps=caps)
        for me, other in ((alice, "bob"), (bob, "alice")):
            inner = await self.history(me, other)
            self.assertEqual([l.tags["msgid"] for l in inner], ids)
            self.assertEqual([l.params[-1] for l in inner], ["hello bob", "hello alice"])
        self.assertEqual(await self.history(carol, "alice"), [])
        self.assertEqual(await self.history(carol, "bob"), [])
        dave.send("CHATHISTORY LATEST erin * 10")
        fail = await dave.expect("FAIL")
        self.assertEqual(fail.params[1], "INVALID_TARGET")

    @asynctest
    async def test_missing_key_with_data_refuses_to_start(self) -> None:
        """Without db-encryption-key.secret an existing database is not opened (and no new key is made)."""
        run = await self.start()
        alice = await run.client("alice")
        alice.send("JOIN #x")
        await alice.expect("366")
        alice.send("PRIVMSG #x :keep me")
        alice.send("PING :sync")
        await alice.expect("PONG")
        await run.stop()
        key_path = os.path.join(self.data_dir, keys.DB_ENCRYPTION_KEY)
        os.rename(key_path, key_path + ".moved")
        with self.assertRaises(ConfigError) as cm:
            build_service(_config(self.data_dir), reactor)
        self.assertIn(key_path, str(cm.exception))
        self.assertIn("missing", str(cm.exception))
        self.assertFalse(os.path.exists(key_path))
        os.rename(key_path + ".moved", key_path)
        run = await self.start()  # the refused start released the lock; the right key works again
        self.assertEqual(await run.store.count_messages(), 1)

    @asynctest
    async def test_different_key_refuses_to_start(self) -> None:
        """A db-encryption-key.secret other than the one the data was written with is refused, untouched."""
        run = await self.start()
        await run.stop()
        key_path = os.path.join(self.data_dir, keys.DB_ENCRYPTION_KEY)
        other = os.urandom(32)
        with open(key_path, "wb") as f:
            f.write(other)
        with self.assertRaises(ConfigError) as cm:
            build_service(_config(self.data_dir), reactor)
        self.assertIn("not the key this database was written with", str(cm.exception))
        self.assertIn(keys.fingerprint(other), str(cm.exception))
        with open(key_path, "rb") as f:
            self.assertEqual(f.read(), other)

    @asynctest
    async def test_second_server_on_same_data_dir_refused(self) -> None:
        """While one server runs, another on the same data directory is refused; the first keeps working."""
        run = await self.start()
        with self.assertRaises(ConfigError) as cm:
            build_service(_config(self.data_dir), reactor)
        self.assertIn("already used by another running freeq", str(cm.exception))
        alice = await run.client("alice")
        alice.send("PING :still")
        await alice.expect("PONG")

    @asynctest
    async def test_rekey_in_progress_refuses_to_start(self) -> None:
        """A db-encryption-key.secret.new file (interrupted rotation) blocks start-up, naming freeq-admin rekey."""
        run = await self.start()
        await run.stop()
        key_path = os.path.join(self.data_dir, keys.DB_ENCRYPTION_KEY)
        keys.write_secret_atomically(key_path + ".new", os.urandom(32))
        with self.assertRaises(ConfigError) as cm:
            build_service(_config(self.data_dir), reactor)
        self.assertIn("freeq-admin rekey", str(cm.exception))
        self.assertIn(key_path + ".new", str(cm.exception))

    @asynctest
    async def test_signing_key_rotation_keeps_old_key(self) -> None:
        """Deleting msg-signing-key.secret between runs makes a new current key; the old one is kept, retired."""
        run = await self.start()
        old = run.top.persistence.signer.public_key_b64  # type: ignore[attr-defined]
        await run.stop()
        run = await self.start()  # same key again: no new record
        self.assertEqual(run.store.signing_keys(), [(old, run.store.signing_keys()[0][1], None)])
        await run.stop()
        os.unlink(os.path.join(self.data_dir, keys.MSG_SIGNING_KEY))
        run = await self.start()
        new = run.top.persistence.signer.public_key_b64  # type: ignore[attr-defined]
        self.assertNotEqual(new, old)
        records = {k: (start, until) for k, start, until in run.store.signing_keys()}
        self.assertEqual(set(records), {old, new})
        self.assertIsNone(records[new][1])
        self.assertIsNotNone(records[old][1])
        self.assertGreaterEqual(records[old][1], records[old][0])
        self.assertEqual(records[old][1], records[new][0])


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class DurabilityTests(unittest.TestCase):
    """A real ``twistd freeq`` process killed with SIGKILL loses nothing older than one flush interval."""

    def spawn(self, data_dir: str, port: int) -> subprocess.Popen:
        log = open(os.path.join(data_dir, f"twistd-{time.time():.3f}.log"), "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "freeq", "--listen-addr", f"127.0.0.1:{port}", "--data-dir", data_dir, "--flood-rate", "0"],
            stdout=log, stderr=subprocess.STDOUT, cwd=data_dir)

        def reap() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

        self.addCleanup(reap)
        return proc

    async def connect(self, proc: subprocess.Popen, port: int, nick: str) -> tuple[ServerFixture, IRCClient]:
        fixture = ServerFixture(None, port, None, [], [], reactor)  # type: ignore[arg-type]
        self.addCleanup(lambda: defer.ensureDeferred(fixture.stop()))
        deadline = time.monotonic() + 15
        while True:
            self.assertIsNone(proc.poll(), "the server exited during start-up")
            try:
                client = await fixture.client(nick, caps=("echo-message", "message-tags", "batch"))
                return fixture, client
            except ConnectionRefusedError:
                fixture.clients.clear()
                if time.monotonic() > deadline:
                    raise
                await sleep(0.05)

    @asynctest
    async def test_sigkill_keeps_everything_older_than_a_second(self) -> None:
        """Messages echoed more than 1 s before a SIGKILL are in CHATHISTORY after a restart."""
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        port = _free_port()
        proc = self.spawn(data_dir, port)
        _fixture, alice = await self.connect(proc, port, "alice")
        alice.send("JOIN #durable")
        await alice.expect("366")
        alice.skip()
        echoed: list[tuple[str, float]] = []  # (msgid, a time no earlier than the echo's arrival)
        seen = 0
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < 1.6:
            alice.send(f"PRIVMSG #durable :message {i}")
            i += 1
            await sleep(0.02)
            now = time.monotonic()
            for line in alice.lines[seen:]:
                if line.command == "PRIVMSG":
                    echoed.append((line.tags["msgid"], now))
            seen = len(alice.lines)
        alice.send("PRIVMSG #durable :in flight at the kill")
        killed_at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        self.assertEqual(proc.wait(), -signal.SIGKILL)
        must_survive = [m for m, t in echoed if t < killed_at - 1.0]
        self.assertGreater(len(must_survive), 10)

        proc2 = self.spawn(data_dir, port)
        _fixture2, bob = await self.connect(proc2, port, "bob")
        bob.send("JOIN #durable")
        await bob.expect("366")
        bob.skip()
        bob.send("CHATHISTORY LATEST #durable * 100")
        opener = await bob.expect("BATCH")
        lines = await bob.collect_until(lambda l: l.command == "BATCH" and l.params == ["-" + opener.params[0][1:]])
        stored = [l.tags["msgid"] for l in lines if l.command == "PRIVMSG"]
        self.assertLessEqual(i + 1, 100, "sent more than one CHATHISTORY page")
        self.assertLessEqual(len(stored), i + 1)
        missing = [m for m in must_survive if m not in stored]
        self.assertEqual(missing, [])
        self.assertEqual(stored[:len(must_survive)], must_survive)  # oldest first, in order
        texts = [l.params[-1] for l in lines if l.command == "PRIVMSG"]
        self.assertEqual(texts[:3], ["message 0", "message 1", "message 2"])
        self.assertIsNone(proc2.poll())
