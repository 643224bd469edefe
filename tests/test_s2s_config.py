"""Federation flags: parsing, validation (closed by default, allowlist both ways), wiring and key file."""
from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from typing import Any

from twisted.internet import endpoints, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.trial import unittest

from freeq.config import ConfigError
from freeq.s2s.protocol import EventSigner
from freeq.tap import Options, build_service, config_from_options
from tests.s2s_support import LogCapture, keys, wait_for
from tests.support import IRCClient, asynctest, sleep
from tests.twistd_support import TWISTD, twistd_env

A = "a" * 64
B = "b" * 64


def parse(*argv: str) -> Any:
    options = Options()
    options.parseOptions(list(argv))
    return config_from_options(options, {})


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FlagTests(unittest.TestCase):
    """The S2S flags become plain values in the frozen Config, or a one-line ConfigError."""

    def error(self, *argv: str) -> str:
        with self.assertRaises(ConfigError) as ctx:
            parse(*argv)
        self.assertNotIn("\n", str(ctx.exception))
        return str(ctx.exception)

    def test_defaults_off(self) -> None:
        """Federation is off by default; the relay mode default is the n0 relays; 100 events/s per peer."""
        config = parse()
        self.assertEqual((config.iroh, config.s2s_peers, config.s2s_allowed_peers, config.s2s_open_federation,
                          config.s2s_rate, config.iroh_relay_mode, config.s2s_max_remote_users),
                         (False, (), (), False, 100.0, "default", 10000))

    def test_full_set(self) -> None:
        """Peers with and without direct addresses, the allowlist and trust levels parse (ids lower-cased)."""
        config = parse("--iroh", "--iroh-port", "7700", "--iroh-relay-mode", "disabled",
                       "--s2s-peers", f"{A.upper()}@127.0.0.1:7701, {B}",
                       "--s2s-allowed-peers", f"{A},{B}", "--s2s-peer-trust", f"{A}=relay,{B}=READONLY",
                       "--s2s-rate", "50", "--s2s-max-remote-users", "25")
        self.assertEqual(config.s2s_max_remote_users, 25)
        self.assertEqual(config.s2s_peers, ((A, "127.0.0.1", 7701), (B, None, None)))
        self.assertEqual(config.s2s_allowed_peers, (A, B))
        self.assertEqual(config.s2s_peer_trust, ((A, "relay"), (B, "readonly")))
        self.assertEqual((config.iroh_port, config.iroh_relay_mode, config.s2s_rate), (7700, "disabled", 50.0))

    def test_peer_outside_allowlist_is_a_startup_error(self) -> None:
        """Outgoing links are only made to allowed peers: a listed peer must be allowed too."""
        message = self.error("--iroh", "--s2s-peers", A, "--s2s-allowed-peers", B)
        self.assertIn("--s2s-peers", message)
        self.assertIn("not in --s2s-allowed-peers", message)
        self.assertIn("not in --s2s-allowed-peers", self.error("--iroh", "--s2s-peers", A))

    def test_bad_values(self) -> None:
        """Bad ids, addresses, trust levels, relay modes and rates name their flag."""
        self.assertIn("--s2s-allowed-peers", self.error("--iroh", "--s2s-allowed-peers", "xyz"))
        self.assertIn("not an endpoint id", self.error("--iroh", "--s2s-peers", "nothex@1.2.3.4:5"))
        self.assertIn("--s2s-peers", self.error("--iroh", "--s2s-peers", f"{A}@host.example:5",
                                                "--s2s-allowed-peers", A))
        self.assertIn("full, relay or readonly", self.error("--iroh", "--s2s-peer-trust", f"{A}=root"))
        self.assertIn("ID=full|relay|readonly", self.error("--iroh", "--s2s-peer-trust", A))
        self.assertIn("--iroh-relay-mode", self.error("--iroh", "--iroh-relay-mode", "sometimes"))
        self.assertIn("--s2s-rate", self.error("--iroh", "--s2s-rate", "0"))
        self.assertIn("--s2s-max-remote-users", self.error("--iroh", "--s2s-max-remote-users", "0"))
        self.assertIn("--iroh-port", self.error("--iroh", "--iroh-port", "70000"))

    def test_s2s_flags_need_iroh(self) -> None:
        """Peers or an allowlist without --iroh is a mistake, not silently ignored."""
        self.assertIn("need --iroh", self.error("--s2s-allowed-peers", A))

    def test_open_federation_excludes_allowlist(self) -> None:
        """Open federation is an explicit choice that cannot be mixed with an allowlist."""
        self.assertIn("exclude each other", self.error("--iroh", "--s2s-open-federation", "--s2s-allowed-peers", A))
        config = parse("--iroh", "--s2s-open-federation", "--s2s-peers", A)
        self.assertTrue(config.s2s_open_federation)


class ServiceTests(unittest.TestCase):
    """build_service wires the bridge: key file, endpoint id in the log, clean stop even when peers are down."""

    timeout = 30

    @asynctest
    async def test_key_file_endpoint_id_and_quick_stop_with_unreachable_peer(self) -> None:
        """The key is created 0600 as 64 hex; the logged id is its public key; stop does not hang."""
        logs = LogCapture(self)
        data = os.path.abspath(self.mktemp())
        dead = keys(1)[0][1]
        argv = ["--iroh", "--iroh-host", "127.0.0.1", "--iroh-relay-mode", "disabled", "--listen-addr", "127.0.0.1:0",
                "--data-dir", data, "--db-path", ":memory:", "--s2s-peers", f"{dead}@127.0.0.1:{free_udp_port()}",
                "--s2s-allowed-peers", dead]
        top = build_service(parse(*argv), reactor)
        top.privilegedStartService()
        top.startService()
        path = os.path.join(data, "iroh-key.secret")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as f:
            raw = f.read()
        self.assertTrue(re.fullmatch(rb"[0-9a-f]{64}", raw))
        endpoint_id = EventSigner(bytes.fromhex(raw.decode())).server_id
        self.assertTrue(logs.find("iroh endpoint id", endpoint_id))
        await sleep(0.2)  # a dial to the dead address is in flight (QUIC would wait 5 s for it)
        started = time.monotonic()
        await top.stopService()
        self.assertLess(time.monotonic() - started, 3.0)
        # Deleting the key file changes the peer id (the seed's rotation procedure).
        os.unlink(path)
        top2 = build_service(parse(*argv), reactor)
        top2.privilegedStartService()
        top2.startService()
        with open(path, "rb") as f:
            self.assertNotEqual(f.read(), raw)
        await top2.stopService()


class TwistdTests(unittest.TestCase):
    """The seed's "Two-Server Federation" example with ``twistd freeq`` and direct loopback addresses."""

    timeout = 60

    def spawn(self, home: str, name: str, key_hex: str, port: int, udp: int, peer_id: str, peer_udp: int) -> Any:
        data = os.path.join(home, name)
        os.makedirs(data, mode=0o700)
        with open(os.path.join(data, "iroh-key.secret"), "w") as f:
            f.write(key_hex)
        os.chmod(os.path.join(data, "iroh-key.secret"), 0o600)
        log_path = os.path.join(home, f"{name}.log")
        log_file = open(log_path, "wb")
        self.addCleanup(log_file.close)
        proc = subprocess.Popen(
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "freeq", "--server-name", name,
             "--listen-addr", f"127.0.0.1:{port}", "--data-dir", data, "--iroh", "--iroh-host", "127.0.0.1",
             "--iroh-port", str(udp), "--iroh-relay-mode", "disabled",
             "--s2s-peers", f"{peer_id}@127.0.0.1:{peer_udp}", "--s2s-allowed-peers", peer_id],
            cwd=home, env=twistd_env(home),
            stdout=log_file, stderr=subprocess.STDOUT)

        def reap() -> None:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

        self.addCleanup(reap)
        proc.log_path = log_path  # type: ignore[attr-defined]
        return proc

    async def client(self, proc: Any, port: int, nick: str) -> IRCClient:
        client = IRCClient()
        for _ in range(400):
            self.assertIsNone(proc.poll(), "twistd exited early")
            try:
                await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
                break
            except ConnectionRefusedError:
                await sleep(0.05)
        self.addCleanup(client.disconnect)
        client.nick = nick
        client.send(f"NICK {nick}")
        client.send(f"USER {nick} 0 * :{nick}")
        await client.expect(lambda l: l.command in ("376", "422"), timeout=10)
        return client

    @asynctest
    async def test_two_twistd_servers_federate(self) -> None:
        """Two `twistd freeq --iroh` processes link (each allowing only the other), chat, and stop cleanly."""
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        (ka, ida), (kb, idb) = keys(2)
        pa, pb, ua, ub = free_tcp_port(), free_tcp_port(), free_udp_port(), free_udp_port()
        proc_a = self.spawn(home, "a.test", ka.hex(), pa, ua, idb, ub)
        proc_b = self.spawn(home, "b.test", kb.hex(), pb, ub, ida, ua)
        alice = await self.client(proc_a, pa, "alice")
        bob = await self.client(proc_b, pb, "bob")
        alice.send("JOIN #seed")
        await alice.expect("366")

        def log_of(proc: Any) -> str:
            with open(proc.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()

        await wait_for(lambda: "S2S link to a.test" in log_of(proc_b), timeout=20, what="link")
        for _ in range(200):
            bob.send("WHOIS alice")
            line = await bob.expect(lambda l: l.command in ("312", "401"), timeout=5)
            if line.command == "312":
                break
            await sleep(0.05)
        bob.send("JOIN #seed")
        await alice.expect(r":bob!\S+ JOIN #seed", timeout=10)
        alice.send("PRIVMSG #seed :across processes")
        self.assertEqual((await bob.expect("PRIVMSG", timeout=10)).params[-1], "across processes")
        self.assertIn(f"iroh endpoint id {ida}", log_of(proc_a))
        started = time.monotonic()
        proc_a.send_signal(signal.SIGTERM)
        line = await bob.expect("QUIT", timeout=10)  # alice is told first, or the link drops first
        self.assertIn(line.params, (["*.net *.split"], ["Server shutting down"]))
        while proc_a.poll() is None and time.monotonic() - started < 10:
            await sleep(0.05)
        self.assertEqual(proc_a.returncode, -signal.SIGTERM, log_of(proc_a)[-2000:])
        self.assertLess(time.monotonic() - started, 8)
        await wait_for(lambda: "server shutting down" in log_of(proc_b), what="reason logged on B")
        proc_b.send_signal(signal.SIGTERM)
        while proc_b.poll() is None and time.monotonic() - started < 15:
            await sleep(0.05)
        self.assertEqual(proc_b.returncode, -signal.SIGTERM)
