"""Logs (issue #13 item 6): ``--log-format json`` (one JSON object per line, under the real ``twistd``, in the
foreground and daemonized), security events at warn with the client IP, connection and quit lines at info
(``--log-connections off`` silences them) and their counters in ``/metrics``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Optional

from prometheus_client import generate_latest
from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.trial import unittest

from freeq.config import ConfigError
from freeq.logs import json_line, security_event, twistd_json_observer, twistd_log_file
from freeq.metrics import Metrics
from freeq.tap import config_from_options
from freeq.web.prometheus import MetricsResource
from tests.s2s_support import keys, start_node, start_raw_peer, wait_for
from tests.support import IRCClient, asynctest, sleep, start_server
from tests.test_service import parse
from tests.twistd_support import (
    TWISTD, ForegroundTwistd, connect_when_listening, free_port, twistd_env, wait_logged,
)


def events_with(observer: EventLoggingObserver, **fields: Any) -> list[dict[str, Any]]:
    """Captured events carrying every one of ``fields`` with that value."""
    return [e for e in observer if all(e.get(k) == v for k, v in fields.items())]


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events]


class JsonLineTests(unittest.TestCase):
    """The pure formatter: one event, one line of plain JSON."""

    def event(self, **extra: Any) -> dict[str, Any]:
        """An event as twisted.logger makes it (a format with named fields)."""
        event = {"log_format": "client {nick} quit from {ip}: {reason}", "log_level": LogLevel.info,
                 "log_namespace": "freeq.core.registration", "log_time": 1767225600.25, "log_source": None,
                 "log_logger": object(), "nick": "alice", "ip": "203.0.113.9", "reason": "Quit: bye"}
        event.update(extra)
        return event

    def test_fields(self) -> None:
        """timestamp (ISO-8601 UTC), level, namespace, the rendered message and the named fields; no log_* keys."""
        line = json_line(self.event(count=3, ratio=0.5, flag=True, nothing=None))
        self.assertNotIn("\n", line)
        obj = json.loads(line)
        self.assertEqual(obj, {"timestamp": "2026-01-01T00:00:00.250Z", "level": "info",
                               "namespace": "freeq.core.registration",
                               "message": "client alice quit from 203.0.113.9: Quit: bye", "nick": "alice",
                               "ip": "203.0.113.9", "reason": "Quit: bye", "count": 3, "ratio": 0.5, "flag": True,
                               "nothing": None})

    def test_secrets_and_unsafe_values_are_not_written(self) -> None:
        """Fields named like secrets, objects, bytes and non-finite numbers are left out; a newline in a value
        stays inside the one JSON line."""
        line = json_line(self.event(password="hunter2", broker_secret="s", api_token="t", obj=object(),
                                    raw=b"x", nan=float("nan"), reason="two\nlines"))
        obj = json.loads(line)
        for key in ("password", "broker_secret", "api_token", "obj", "raw", "nan"):
            self.assertNotIn(key, obj)
        self.assertNotIn("hunter2", line)
        self.assertEqual(obj["reason"], "two\nlines")
        self.assertEqual(len(line.splitlines()), 1)

    def test_failure_has_its_traceback(self) -> None:
        """A logged failure adds its traceback (escaped into the one line)."""
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        obj = json.loads(json_line(self.event(log_failure=failure, log_level=LogLevel.critical,
                                              log_format="sweep failed")))
        self.assertEqual(obj["level"], "critical")
        self.assertIn("ZeroDivisionError", obj["traceback"])

    def test_legacy_event(self) -> None:
        """A twisted.python.log event (message tuple, system) renders its text, without its plumbing keys."""
        obj = json.loads(json_line({"message": ("Site starting on 8080",), "isError": 0, "system": "-",
                                    "log_time": 0.0, "time": 0.0, "format": None}))
        self.assertEqual(obj["message"], "Site starting on 8080")
        self.assertEqual(obj["timestamp"], "1970-01-01T00:00:00.000Z")
        self.assertNotIn("isError", obj)


class TwistdLogFileTests(unittest.TestCase):
    """Where the JSON observer writes: where twistd would."""

    def test_rules(self) -> None:
        """stdout under -n without --logfile or with --logfile -; the --logfile otherwise; twistd's own choice for
        --syslog and --logger; nothing outside twistd."""
        self.assertIs(twistd_log_file({"nodaemon": True, "logfile": None}), sys.stdout)
        self.assertIs(twistd_log_file({"nodaemon": True, "logfile": "-"}), sys.stdout)
        self.assertIsNone(twistd_log_file({"nodaemon": True, "syslog": True}))
        self.assertIsNone(twistd_log_file({"nodaemon": False, "logger": "x.y"}))
        self.assertIsNone(twistd_log_file({"nodaemon": False, "logfile": "-"}))  # twistd refuses it itself
        self.assertIsNone(twistd_json_observer(None))
        path = os.path.abspath(self.mktemp())
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        out = twistd_log_file({"nodaemon": False, "logfile": path})
        self.assertIsInstance(out, LogFile)
        assert out is not None
        out.close()


class TextObserverTests(unittest.TestCase):
    """The text observer twistd logs through: its own classic lines, the timestamp formatted once a second."""

    def test_same_lines_as_twisted_text_observer(self) -> None:
        """Events across two seconds (and one without a time) render exactly as textFileLogObserver renders them."""
        import io

        from twisted.logger import LogLevel, textFileLogObserver

        from freeq.logs import text_file_observer, twistd_observer

        events = [{"log_format": "client connected from {ip} ({transport})", "ip": "192.0.2.1", "transport": "tcp",
                   "log_time": 1796508786.25 + step, "log_namespace": "freeq.net.connection",
                   "log_level": LogLevel.info, "log_system": "-"} for step in (0.0, 0.5, 1.0, 1.7)]
        events.append({"log_format": "no time", "log_namespace": "x", "log_level": LogLevel.warn})
        ours, theirs = io.StringIO(), io.StringIO()
        mine, twisted_own = text_file_observer(ours), textFileLogObserver(theirs)
        for event in events:
            mine(dict(event))
            twisted_own(dict(event))
        self.assertEqual(ours.getvalue(), theirs.getvalue())
        self.assertEqual(len(ours.getvalue().splitlines()), 5)
        self.assertIsNone(twistd_observer(None, "text"))
        self.assertIsNone(twistd_observer({"nodaemon": True, "syslog": True}, "text"))


class ConfigTests(unittest.TestCase):
    """The two flags."""

    def test_defaults_and_values(self) -> None:
        """Defaults: text, connections logged; json and off are taken; anything else is refused in one line."""
        config = config_from_options(parse(), {})
        self.assertEqual((config.log_format, config.log_connections), ("text", True))
        config = config_from_options(parse("--log-format", "json", "--log-connections", "off"), {})
        self.assertEqual((config.log_format, config.log_connections), ("json", False))
        with self.assertRaises(ConfigError) as ctx:
            config_from_options(parse("--log-format", "xml"), {})
        self.assertIn("--log-format", str(ctx.exception))
        with self.assertRaises(ConfigError):
            config_from_options(parse("--log-connections", "maybe"), {})


class ConnectionLineTests(unittest.TestCase):
    """Clients coming and going, over real sockets."""

    @asynctest
    async def test_connect_and_quit_lines_and_counters(self) -> None:
        """``client connected from <ip>`` and ``client <nick> quit from <ip>: <reason>`` at info, counted."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        srv = await start_server(self)
        alice = await srv.client("alice")
        alice.send("QUIT :bye now")
        await alice.closed
        await wait_for(lambda: srv.server.metrics.client_quits == 1, what="the quit counted")
        connected = events_with(observer, log_format="client connected from {ip} ({transport})")
        self.assertEqual(texts(connected), ["client connected from 127.0.0.1 (tcp)"])
        self.assertEqual(connected[0]["log_level"], LogLevel.info)
        self.assertEqual(connected[0]["ip"], "127.0.0.1")
        quits = events_with(observer, log_format="client {nick} quit from {ip}: {reason}")
        self.assertEqual(texts(quits), ["client alice quit from 127.0.0.1: Quit: bye now"])
        self.assertEqual(quits[0]["log_level"], LogLevel.info)
        self.assertEqual(srv.server.metrics.client_connects, 1)

    @asynctest
    async def test_switched_off(self) -> None:
        """``--log-connections off``: no connect or quit lines; the counters still count."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        srv = await start_server(self, log_connections=False)
        alice = await srv.client("alice")
        alice.send("QUIT")
        await alice.closed
        await wait_for(lambda: srv.server.metrics.client_quits == 1, what="the quit counted")
        self.assertEqual([t for t in texts(list(observer)) if t.startswith("client ")], [])
        self.assertEqual(srv.server.metrics.client_connects, 1)


class SecurityEventTests(unittest.TestCase):
    """Security events: warn, the IP as the field ``ip`` and early in the text, the kind as ``security``."""

    def assert_security(self, events: list[dict[str, Any]], kind: str, ip: str, starts: str) -> None:
        self.assertTrue(events, f"no {kind} event")
        for event in events:
            self.assertEqual(event["log_level"], LogLevel.warn)
            self.assertEqual(event["ip"], ip)
            text = formatEvent(event)
            self.assertTrue(text.startswith(starts), text)
            self.assertLess(text.index(ip), 60, text)  # early: before the details

    @asynctest
    async def test_sasl_failure(self) -> None:
        """A failed SASL exchange is a warn line naming the address first, counted as sasl_failure."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        srv = await start_server(self)
        c = await srv.connect()
        c.send("CAP LS 302")
        c.send("NICK eve")
        c.send("USER eve 0 * :Eve")
        c.send("CAP REQ :sasl")
        await c.expect(lambda l: l.command == "CAP" and l.params[1:2] == ["ACK"])
        c.send("AUTHENTICATE ATPROTO-CHALLENGE")
        await c.expect("AUTHENTICATE")
        c.send("AUTHENTICATE bm90LWpzb24")
        await c.expect("904")
        events = events_with(observer, security="sasl_failure")
        self.assert_security(events, "sasl_failure", "127.0.0.1", "SASL failure from 127.0.0.1 (ATPROTO-CHALLENGE")
        self.assertEqual(len(events), 1)
        self.assertEqual(srv.server.metrics.security_count("sasl_failure"), 1)

    @asynctest
    async def test_oper_failure(self) -> None:
        """A wrong OPER password: warn, ``failed OPER from <ip>``, security=oper_failure; its JSON line has
        ``ip`` before ``security`` (what the fail2ban JSON filter of docs/logging.md relies on)."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        srv = await start_server(self, oper_password="the-right-one-123")
        c = await srv.client("mallory")
        c.send("OPER admin guess-9f3k")
        await c.expect("464")
        events = events_with(observer, security="oper_failure")
        self.assert_security(events, "oper_failure", "127.0.0.1", "failed OPER from 127.0.0.1 as admin")
        line = json_line(events[0])
        self.assertNotIn("the-right-one-123", line)
        self.assertNotIn("guess-9f3k", line)
        self.assertRegex(line, r'"ip":"127\.0\.0\.1".*"security":"oper_failure"')
        self.assertEqual(srv.server.metrics.security_count("oper_failure"), 1)

    @asynctest
    async def test_per_ip_limit(self) -> None:
        """A connection over the per-IP limit: warn, ip field, security=per_ip_limit."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        srv = await start_server(self, max_connections_per_ip=1)
        await srv.client("first")
        second = await srv.connect()
        await second.expect("ERROR")
        self.assert_security(events_with(observer, security="per_ip_limit"), "per_ip_limit", "127.0.0.1",
                             "per-IP limit reached: refusing connection from 127.0.0.1")
        self.assertEqual(srv.server.metrics.security_count("per_ip_limit"), 1)

    @asynctest
    async def test_connection_rate(self) -> None:
        """A connection over the address's rate: warn, ip field, security=connection_rate (budget kept: one
        line for several refusals)."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        srv = await start_server(self, connection_rate_burst=1, connection_rate=0.001)
        await srv.client("first")
        for _ in range(3):
            extra = await srv.connect()
            await extra.expect("ERROR")
        events = events_with(observer, security="connection_rate")
        self.assert_security(events, "connection_rate", "127.0.0.1",
                             "connection rate exceeded: refusing connection from 127.0.0.1")
        self.assertEqual(len(events), 1)
        self.assertEqual(srv.server.metrics.security_count("connection_rate"), 3)

    def test_helper(self) -> None:
        """security_event opens a text without {ip} with the kind's words and the address, and counts it."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        metrics = Metrics()
        security_event(Logger(namespace="freeq.test"), "kline_hit", "198.51.100.7", "{mask} ({reason})",
                       metrics=metrics, mask="*@198.51.100.*", reason="spam")
        events = events_with(observer, security="kline_hit")
        self.assert_security(events, "kline_hit", "198.51.100.7", "K-line hit from 198.51.100.7: *@198.51.100.* (spam)")
        self.assertEqual(metrics.security_count("kline_hit"), 1)

    def test_metrics_family(self) -> None:
        """/metrics has freeq_security_events_total by kind (older counters included) and the connection counters."""
        metrics = Metrics()
        metrics.count_security("kline_hit")
        metrics.count_security("oper_failure")
        metrics.client_connects = 4
        metrics.client_quits = 2

        class Server:
            connections: list[Any] = []
            channels: dict[str, Any] = {}
            started = 0.0
            config = None

        text = generate_latest(MetricsResource(Server(), metrics, reactor).registry).decode()
        self.assertIn('freeq_security_events_total{kind="kline_hit"} 1.0', text)
        self.assertIn('freeq_security_events_total{kind="oper_failure"} 1.0', text)
        self.assertIn('freeq_security_events_total{kind="sasl_failure"} 0.0', text)
        self.assertIn("freeq_client_connects_total 4.0", text)
        self.assertIn("freeq_client_quits_total 2.0", text)
        self.assertEqual(metrics.oper_failures, 1)


class S2SRejectionTests(unittest.TestCase):
    """A rejected federation peer is a security event with its address."""

    timeout = 30

    @asynctest
    async def test_peer_not_allowed(self) -> None:
        """An endpoint outside the allowlist: warn, ``Rejecting S2S connection from 127.0.0.1``, ip field."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        (_ka, ida), (km, _idm) = keys(2)
        b = await start_node(self, "b.test", allowed=[ida])
        mallory = await start_raw_peer(self, key=km)
        mallory.bridge.add_peer(b.address())
        events = await wait_for(lambda: events_with(observer, security="s2s_rejected"), what="the rejection")
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertEqual(events[0]["ip"], "127.0.0.1")
        self.assertEqual(events[0]["security"], "s2s_rejected")
        self.assertIn("(127.0.0.1:", formatEvent(events[0]))
        self.assertGreaterEqual(b.server.metrics.security_count("s2s_rejected"), 1)

    @asynctest
    async def test_bad_hello(self) -> None:
        """A hello that does not prove the peer's identity: warn, ``rejected S2S peer from 127.0.0.1``."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        (kb, _idb), (km, idm), (_k, other) = keys(3)
        b = await start_node(self, "b.test", allowed=[idm], key=kb)
        mallory = await start_raw_peer(self, key=km)
        mallory.bridge.add_peer(b.address())
        await wait_for(lambda: mallory.links, what="link")
        mallory.send({"type": "hello", "protocol": "freeq-s2s", "min_version": 1, "max_version": 1, "id": other,
                      "name": "x", "network": "freeq", "epoch": 1})
        events = await wait_for(lambda: events_with(observer, security="s2s_rejected"), what="the rejection")
        self.assertEqual(events[0]["ip"], "127.0.0.1")
        self.assertTrue(formatEvent(events[0]).startswith("rejected S2S peer from 127.0.0.1: S2S handshake with"))


class TwistdJsonTests(unittest.TestCase):
    """The real ``twistd freeq --log-format json``: every line it logs is one JSON object."""

    timeout = 60

    def home(self) -> str:
        home = os.path.abspath(self.mktemp())
        os.makedirs(home)
        return home

    async def visit(self, client: IRCClient) -> None:
        """Register and quit: so the log has a connection and a quit line."""
        client.send("NICK sub")
        client.send("USER sub 0 * :Subprocess")
        await client.expect("001", timeout=10)
        client.send("QUIT :done")
        await client.closed

    def objects(self, text: str) -> list[dict[str, Any]]:
        """Every non-empty line parsed as JSON (a line that is not fails the test)."""
        out = []
        for line in text.splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    self.fail(f"not a JSON line: {line!r}\n{text}")
        return out

    def check(self, objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            self.assertEqual(set(obj) >= {"timestamp", "level", "namespace", "message"}, True, obj)
            self.assertTrue(obj["timestamp"].endswith("Z"), obj)
        messages = [o["message"] for o in objects]
        self.assertTrue(any("freeq freeq configured" in m for m in messages), messages)
        connected = [o for o in objects if o["message"].startswith("client connected from 127.0.0.1")]
        self.assertEqual(len(connected), 1, messages)
        self.assertEqual((connected[0]["ip"], connected[0]["level"], connected[0]["namespace"]),
                         ("127.0.0.1", "info", "freeq.net.connection"))
        quits = [o for o in objects if o["message"] == "client sub quit from 127.0.0.1: Quit: done"]
        self.assertEqual(len(quits), 1, messages)
        self.assertEqual(quits[0]["nick"], "sub")

    async def foreground(self, *flags: str) -> ForegroundTwistd:
        """Run ``twistd -n freeq`` with ``flags`` on a free loopback port, connect, register and quit once; wait for
        the quit line."""
        home = self.home()
        port = free_port()
        twistd = ForegroundTwistd(self, home, *flags, "--listen-addr", f"127.0.0.1:{port}", "--data-dir",
                                  os.path.join(home, "data"))
        await self.visit(await twistd.connect(port))
        await twistd.wait_logged("quit from 127.0.0.1")
        return twistd

    @asynctest
    async def test_foreground(self) -> None:
        """``twistd -n freeq --log-format json``: stdout is JSON lines only, with the server's own lines."""
        twistd = await self.foreground("--log-format", "json")
        twistd.proc.send_signal(signal.SIGTERM)
        await twistd.stopped()
        self.check(self.objects(twistd.output()))

    @asynctest
    async def test_foreground_text(self) -> None:
        """``twistd -n freeq`` (text, the default) logs through freeq's text observer: every line in twistd's
        classic format, the server's own lines and the connection lines among them."""
        import re

        text = (await self.foreground()).output()
        classic = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] ")
        lines = [line for line in text.splitlines() if line.strip()]
        self.assertEqual([line for line in lines if not classic.match(line)], [], text)
        self.assertTrue(any("[freeq.net.connection#info] client connected from 127.0.0.1 (tcp)" in line
                            for line in lines), text)
        self.assertTrue(any("freeq freeq configured" in line for line in lines), text)

    @asynctest
    async def test_daemon(self) -> None:
        """Daemonized ``twistd --logfile F freeq --log-format json``: F holds JSON lines only."""
        home = self.home()
        port = free_port()
        pidfile = os.path.join(home, "twistd.pid")
        logfile = os.path.join(home, "freeq.log")
        result = subprocess.run(
            [sys.executable, "-c", TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "freeq", "--log-format",
             "json", "--listen-addr", f"127.0.0.1:{port}", "--data-dir", os.path.join(home, "data")],
            cwd=home, env=twistd_env(home), capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

        def read() -> str:
            try:
                with open(logfile, encoding="utf-8", errors="replace") as f:
                    return f.read()
            except FileNotFoundError:
                return ""

        pid: Optional[int] = None
        for _ in range(100):
            try:
                with open(pidfile) as f:
                    pid = int(f.read().strip())
                break
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
        assert pid is not None, read()
        daemon = pid

        def stop() -> None:
            try:
                os.kill(daemon, signal.SIGKILL)
            except ProcessLookupError:
                pass

        self.addCleanup(stop)
        await self.visit(await connect_when_listening(self, port))
        await wait_logged(self, read, "quit from 127.0.0.1")
        os.kill(daemon, signal.SIGTERM)
        for _ in range(200):
            if not os.path.exists(pidfile):
                break
            await sleep(0.05)
        self.check(self.objects(read()))
