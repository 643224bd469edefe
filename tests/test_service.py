"""``twistd freeq``: option validation into Config, the service tree, and the real twistd command."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from typing import Any, Mapping, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints, reactor
from twisted.internet.error import ConnectionRefusedError
from twisted.trial import unittest

from freeq.config import Config, ConfigError, Listen
from freeq.tap import OPTIONS, Options, build_service, config_from_options, makeService
from tests.support import IRCClient, ServerFixture, asynctest, make_certificate, sleep, tree_ports
from tests.twistd_support import TWISTD, ForegroundTwistd, free_port, twistd_env


def parse(*argv: str) -> Options:
    """Parse ``twistd freeq`` arguments the way twistd does."""
    options = Options()
    options.parseOptions(list(argv))
    return options


class ConfigFromOptionsTests(unittest.TestCase):
    """Every bad value becomes a one-line ConfigError that names the flag."""

    def config(self, *argv: str, environ: Optional[Mapping[str, str]] = None) -> Config:
        return config_from_options(parse(*argv), environ or {})

    def error(self, *argv: str, environ: Optional[Mapping[str, str]] = None) -> str:
        with self.assertRaises(ConfigError) as ctx:
            self.config(*argv, environ=environ)
        message = str(ctx.exception)
        self.assertNotIn("\n", message)
        return message

    def test_defaults(self) -> None:
        """No flags give the documented defaults: loopback listeners, no TLS, no passwords."""
        config = self.config()
        self.assertEqual(config.listen, Listen("127.0.0.1", 6667))
        self.assertEqual(config.tls_listen, Listen("127.0.0.1", 6697))
        self.assertIsNone(config.tls_cert)
        self.assertIsNone(config.oper_password)
        self.assertIsNone(config.server_password)
        self.assertEqual(config, Config())

    def test_good_values(self) -> None:
        """Valid flags land in the frozen Config with the right types."""
        config = self.config("--listen-addr", "[::1]:7000", "--max-clients", "5", "--flood-rate", "0",
                             "--ping-interval", "30", "--ping-timeout", "60", "--nick-len", "9",
                             "--motd", "one|two", "--plugin", "shout-filter", "--tls-listen-addr", "none")
        self.assertEqual(config.listen, Listen("::1", 7000))
        self.assertIsNone(config.tls_listen)
        self.assertEqual((config.max_clients, config.flood_rate), (5, 0.0))
        self.assertEqual((config.ping_interval, config.ping_timeout, config.nick_len), (30.0, 60.0, 9))
        self.assertEqual(config.motd, ("one", "two"))
        self.assertEqual(config.plugins, ("shout-filter",))

    def test_port_out_of_range(self) -> None:
        """A port above 65535 is refused, naming the flag."""
        message = self.error("--listen-addr", "127.0.0.1:70000")
        self.assertTrue(message.startswith("--listen-addr:"), message)
        self.assertIn("out of range", message)

    def test_port_not_a_number(self) -> None:
        """A non-numeric port is refused."""
        message = self.error("--tls-listen-addr", "127.0.0.1:ircs")
        self.assertTrue(message.startswith("--tls-listen-addr:"), message)
        self.assertIn("not a number", message)

    def test_listen_without_port(self) -> None:
        """An address with no port is refused."""
        self.assertTrue(self.error("--listen-addr", "nonsense").startswith("--listen-addr:"))

    def test_non_number(self) -> None:
        """Numeric flags refuse words."""
        self.assertTrue(self.error("--max-clients", "lots").startswith("--max-clients:"))
        self.assertTrue(self.error("--ping-interval", "soon").startswith("--ping-interval:"))

    def test_zero_or_negative_limits(self) -> None:
        """Limits below 1 and negative rates are refused."""
        self.assertTrue(self.error("--max-connections-per-ip", "0").startswith("--max-connections-per-ip:"))
        self.assertTrue(self.error("--flood-rate", "-1").startswith("--flood-rate:"))
        self.assertTrue(self.error("--registration-timeout", "0").startswith("--registration-timeout:"))

    def test_tls_cert_without_key(self) -> None:
        """--tls-cert alone is refused, and so is --tls-key alone."""
        self.assertIn("--tls-key", self.error("--tls-cert", "/tmp/cert.pem"))
        self.assertIn("--tls-cert", self.error("--tls-key", "/tmp/key.pem"))

    def test_ping_timeout_not_above_interval(self) -> None:
        """A ping timeout equal to or below the ping interval is refused."""
        message = self.error("--ping-interval", "100", "--ping-timeout", "100")
        self.assertIn("--ping-timeout", message)
        self.error("--ping-interval", "100", "--ping-timeout", "50")

    def test_nick_len_too_long(self) -> None:
        """A nick length of 65 is refused; 64 is accepted."""
        self.assertTrue(self.error("--nick-len", "65").startswith("--nick-len:"))
        self.assertEqual(self.config("--nick-len", "64").nick_len, 64)

    def test_bad_server_name(self) -> None:
        """A server name with spaces or odd characters is refused."""
        self.assertTrue(self.error("--server-name", "my server").startswith("--server-name:"))

    def test_unreadable_motd_file(self) -> None:
        """A missing --motd-file is refused with its path."""
        path = os.path.join(self.mktemp(), "motd.txt")
        message = self.error("--motd-file", path)
        self.assertTrue(message.startswith("--motd-file:"), message)
        self.assertIn(path, message)

    def test_motd_file_is_read(self) -> None:
        """A readable --motd-file becomes the MOTD lines and overrides --motd."""
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "motd.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("Welcome\r\nBe nice\n")
        self.assertEqual(self.config("--motd", "ignored", "--motd-file", path).motd, ("Welcome", "Be nice"))

    def test_passwords_from_environment(self) -> None:
        """OPER_PASSWORD and SERVER_PASSWORD come from the environment when the flags are absent."""
        env = {"OPER_PASSWORD": "oper-secret", "SERVER_PASSWORD": "server-secret"}
        config = self.config(environ=env)
        self.assertEqual(config.oper_password, "oper-secret")
        self.assertEqual(config.server_password, "server-secret")
        config = self.config("--oper-password", "from-flag", environ=env)
        self.assertEqual(config.oper_password, "from-flag")
        self.assertEqual(config.server_password, "server-secret")

    def test_unknown_plugin_stops_start_up(self) -> None:
        """An unknown --plugin makes makeService exit with one 'freeq:' line naming the plugin."""
        options = parse("--plugin", "no-such-plugin", "--listen-addr", "127.0.0.1:0", "--data-dir", self.mktemp())
        with self.assertRaises(SystemExit) as ctx:
            makeService(options)
        message = str(ctx.exception.code)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith("freeq: --plugin: unknown plugin no-such-plugin"), message)

    def test_make_service_reports_bad_config_as_system_exit(self) -> None:
        """makeService turns a ConfigError into SystemExit('freeq: ...')."""
        with self.assertRaises(SystemExit) as ctx:
            makeService(parse("--nick-len", "65"))
        self.assertEqual(str(ctx.exception.code), "freeq: --nick-len: must be between 9 and 64, got 65")


class BuildServiceTests(unittest.TestCase):
    """build_service() wires real listeners that serve real clients and shut down cleanly."""

    async def start(self, config: Config) -> tuple[Any, list[Any]]:
        top = build_service(config, reactor)
        top.startService()
        self.addCleanup(lambda: top.stopService() if top.running else None)
        ports = tree_ports(top)
        for _ in range(100):
            if len(ports) == len([s for s in top if isinstance(s, StreamServerEndpointService)]):
                break
            await sleep(0.01)
        return top, ports

    @asynctest
    async def test_serves_clients_and_says_goodbye_on_stop(self) -> None:
        """A built service accepts a real client on its bound port; stopService sends it ERROR and closes it."""
        data_dir = os.path.join(self.mktemp(), "data")
        config = Config(listen=Listen("127.0.0.1", 0), tls_listen=None, data_dir=data_dir)
        top, ports = await self.start(config)
        self.assertEqual(len(ports), 1)
        self.assertEqual(os.stat(data_dir).st_mode & 0o777, 0o700)
        port = ports[0].getHost().port
        fixture = ServerFixture(top.irc_server, port, None, [], [], reactor)
        self.addCleanup(lambda: fixture.stop())
        alice = await fixture.client("alice")
        await fixture.client("bob")
        alice.send("PING svc")
        await alice.expect("PONG")

        await top.stopService()
        error = await alice.expect("ERROR")
        self.assertIn("Server shutting down", error.raw)
        await alice.closed
        self.assertFalse(top.irc_server.connections)
        late = IRCClient()
        with self.assertRaises(ConnectionRefusedError):
            await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), late)

    @asynctest
    async def test_tls_listener_is_wired_when_cert_and_key_given(self) -> None:
        """With a certificate and key, build_service adds a TLS listener whose users show as secure."""
        cert, key = make_certificate(self.mktemp())
        config = Config(listen=Listen("127.0.0.1", 0), tls_listen=Listen("127.0.0.1", 0), tls_cert=cert,
                        tls_key=key, data_dir=self.mktemp())
        top, ports = await self.start(config)
        self.assertEqual(len(ports), 2)
        secure = {getattr(p.factory, "wrappedFactory", p.factory).secure: p.getHost().port for p in ports}
        tls_port, plain_port = secure[True], secure[False]
        fixture = ServerFixture(top.irc_server, plain_port, tls_port, [], [], reactor)
        self.addCleanup(lambda: fixture.stop())
        await fixture.client("secure", tls=True)
        watcher = await fixture.client("watcher")
        watcher.send("WHOIS secure")
        lines = await watcher.collect_until("318")
        self.assertIn("671", [l.command for l in lines])
        await top.stopService()

    def test_bad_tls_files_fail_build(self) -> None:
        """A missing certificate makes build_service raise a ConfigError naming --tls-cert."""
        _cert, key = make_certificate(self.mktemp())
        config = Config(listen=Listen("127.0.0.1", 0), tls_listen=Listen("127.0.0.1", 0),
                        tls_cert="/nonexistent/cert.pem", tls_key=key, data_dir=self.mktemp())
        with self.assertRaises(ConfigError) as ctx:
            build_service(config, reactor)
        self.assertTrue(str(ctx.exception).startswith("--tls-cert:"))


class TwistdCommandTests(unittest.TestCase):
    """The installed ``twistd freeq`` command, run as a real subprocess."""

    def run_twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        home = self.mktemp()
        os.makedirs(home)
        return subprocess.run([sys.executable, "-c", TWISTD, *args], cwd=home, env=twistd_env(home),
                              capture_output=True, text=True, timeout=60)

    @asynctest
    async def test_twistd_serves_a_client_and_stops_on_sigterm(self) -> None:
        """`twistd -n freeq` serves a real client; SIGTERM sends it ERROR and stops the process."""
        home = self.mktemp()
        os.makedirs(home)
        port = free_port()
        twistd = ForegroundTwistd(self, home, "--listen-addr", f"127.0.0.1:{port}", "--data-dir",
                                  os.path.join(home, "data"))
        proc, output = twistd.proc, twistd.output
        client = await twistd.connect(port)
        self.addCleanup(client.disconnect)
        client.send("NICK sub")
        client.send("USER sub 0 * :Subprocess")
        welcome = await client.expect("001", timeout=10)
        self.assertEqual(welcome.params[0], "sub")

        proc.send_signal(signal.SIGTERM)
        error = await client.expect("ERROR", timeout=10)
        self.assertIn("Server shutting down", error.raw)
        await client.closed
        # twistd re-raises the signal after a clean shutdown, so the exit status is "killed by SIGTERM".
        self.assertEqual(await twistd.stopped(), -signal.SIGTERM, output())
        self.assertIn("freeq freeq configured", output())
        self.assertIn("Server Shut Down.", output())

    def test_bad_listen_addr_exits_with_one_line(self) -> None:
        """`twistd freeq --listen-addr nonsense` exits non-zero with one 'freeq:' line on stderr."""
        result = self.run_twistd("-n", "--pidfile=", "freeq", "--listen-addr", "nonsense")
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("freeq: --listen-addr:"), lines[0])

    def test_help_lists_every_flag_with_its_default(self) -> None:
        """`twistd freeq --help` lists every option, each with its default when it has one."""
        result = self.run_twistd("freeq", "--help")
        self.assertEqual(result.returncode, 0, result.stderr)
        blocks: dict[str, str] = {}
        current: Optional[str] = None
        for line in result.stdout.splitlines():
            m = re.match(r" {1,10}(?:-\w, )?--([a-z0-9-]+)", line)  # continuation lines are indented deeper
            if m:
                current = m.group(1)
                blocks[current] = line
            elif current is not None and line.startswith(" "):
                blocks[current] += " " + line.strip()
            else:
                current = None
        for flag, default, _doc, _field, _kind in OPTIONS:
            self.assertIn(flag, blocks, f"--{flag} missing from --help")
            if default is not None:
                text = re.sub(r"\s+", " ", blocks[flag])
                self.assertIn(f"[default: {default}]", text, f"--{flag} does not show its default")
        self.assertIn("plugin", blocks)


class NoPersistenceTests(unittest.TestCase):
    """--db-path none runs without a store."""

    @asynctest
    async def test_db_path_none_serves_without_a_store(self) -> None:
        """With --db-path none the server runs with no store and no database file; key files are still made."""
        data_dir = self.mktemp()
        config = Config(listen=Listen("127.0.0.1", 0), tls_listen=None, data_dir=data_dir, db_path="none")
        top = build_service(config, reactor)
        top.startService()
        self.addCleanup(top.stopService)
        self.assertIsNone(top.irc_server.store)
        self.assertFalse(os.path.exists(os.path.join(data_dir, "freeq.db")))
        self.assertTrue(os.path.exists(os.path.join(data_dir, "msg-signing-key.secret")))
