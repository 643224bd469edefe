"""Web listener hardening (issue #10 items 4 and 12), over real loopback HTTP.

Item 4: plain HTTP connections are bounded per TCP peer and in total (a refused one gets ``503``
and is closed, logged rate-limited, counted), a connection without a request is closed after
``--web-idle-timeout``, a request trickled byte by byte is cut at ``--web-request-timeout``, an
upgraded WebSocket leaves the web limit, and start-up checks ``RLIMIT_NOFILE`` against the
connection limits. Item 12: a NUL or undecodable byte in the path is a JSON ``400`` (it was a
``500`` with a critical traceback), an unhandled exception is one log line and a JSON ``500``, and
``Server`` says ``freeq`` without a version.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Optional

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.resource import Resource

from freeq.config import Config, ConfigError
from freeq.fdlimit import FD_MARGIN, ensure_fd_limit, needed_fds, plan_fd_limit
from freeq.config import Listen
from freeq.web.limits import WEB_FULL, WEB_PER_IP, LogThrottle, WebConnectionLimiter, peer_ip
from tests.support import WebFixture, asynctest, sleep, start_server, start_web
from tests.test_service import parse
from tests.test_web_ws import ws_connect


class RawHTTP(protocol.Protocol):
    """A raw HTTP client connection: records what it receives and when the server closed it."""

    transport: Any

    def __init__(self) -> None:
        self.data = b""
        self.opened_at = time.monotonic()
        self.closed_at: Optional[float] = None
        self.lost: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed_at = time.monotonic()
        self.lost.callback(self.data)

    @property
    def is_closed(self) -> bool:
        """Whether the server has closed the connection."""
        return self.closed_at is not None

    async def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the close; whether it came."""
        deadline = time.monotonic() + timeout
        while not self.is_closed and time.monotonic() < deadline:
            await sleep(0.05)
        return self.is_closed

    def status(self) -> int:
        """The status code of the (first) response."""
        return int(self.data.split(b" ", 2)[1])

    def header(self, name: bytes) -> Optional[bytes]:
        """A header of the (first) response."""
        head = self.data.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def body(self) -> bytes:
        """The body of the (only) response."""
        return self.data.split(b"\r\n\r\n", 1)[1]


async def raw(case: unittest.TestCase, web: WebFixture, send: bytes = b"") -> RawHTTP:
    """Open a raw connection to the web listener (aborted in cleanup) and send ``send``."""
    proto = await endpoints.connectProtocol(endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", web.port), RawHTTP())

    def cleanup() -> Any:
        if proto.is_closed:
            return None
        proto.transport.abortConnection()
        return proto.lost

    case.addCleanup(cleanup)
    if send:
        proto.transport.write(send)
    return proto


async def request(case: unittest.TestCase, web: WebFixture, path: bytes, method: bytes = b"GET") -> RawHTTP:
    """One ``Connection: close`` request with a raw path; returns after the server closed."""
    proto = await raw(case, web, method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    if not await proto.wait_closed(5):
        case.fail(f"no complete answer to {path!r}")
    return proto


def capture_logs(case: unittest.TestCase) -> list[dict[str, Any]]:
    """Every log event published while the test runs."""
    events: list[dict[str, Any]] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


class BadPathTests(unittest.TestCase):
    """Item 12: paths no resource can serve are a JSON 400, on every route, without a traceback."""

    @asynctest
    async def test_nul_and_undecodable_paths_are_json_400(self) -> None:
        """`GET /%00` (a 500 and a critical traceback before), a NUL inside a segment, %ff, and under /api:
        each is a JSON 400, no event carries a traceback, and /metrics counts them."""
        events = capture_logs(self)
        srv = await start_server(self)
        web = await start_web(self, srv)
        paths = (b"/%00", b"/a%00b/c", b"/%ff", b"/index.html%00.js", b"/api/v1/%00", b"/api/v1/channels/%c3%28")
        for path in paths:
            answer = await request(self, web, path)
            self.assertEqual(answer.status(), 400, path)
            self.assertIn(b"application/json", answer.header(b"content-type") or b"")
            self.assertEqual(json.loads(answer.body()), {"error": "Bad request path"})
        self.assertEqual([e for e in events if "log_failure" in e or e.get("log_level") == LogLevel.critical], [])
        self.assertEqual(srv.server.metrics.web_bad_paths, len(paths))
        lines = [formatEvent(e) for e in events if "NUL or undecodable" in (e.get("log_format") or "")]
        self.assertEqual(len(lines), 1, "the refusal line is rate-limited")
        self.assertIn("127.0.0.1", lines[0])
        metrics = await request(self, web, b"/metrics")
        self.assertIn(b"freeq_web_bad_paths_total 6.0", metrics.body())
        # Good paths are untouched: the client, and an encoded but valid UTF-8 name (a plain 404).
        self.assertEqual((await request(self, web, b"/")).status(), 200)
        self.assertEqual((await request(self, web, b"/caf%C3%A9")).status(), 404)


class _Boom(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        raise KeyError("secret-looking detail\nsecond line")


class FailureTests(unittest.TestCase):
    """Item 12: an unhandled exception while rendering is a JSON 500 and at most one log line."""

    @asynctest
    async def test_unhandled_exception_is_one_line_and_json_500(self) -> None:
        """Three failing requests: three JSON 500s, one single-line error event (no traceback) naming the
        exception and where it was raised, and web_errors 3."""
        events = capture_logs(self)
        srv = await start_server(self)
        web = await start_web(self, srv)
        web.site.resource.putChild(b"boom", _Boom())
        for _ in range(3):
            answer = await request(self, web, b"/boom")
            self.assertEqual(answer.status(), 500)
            self.assertEqual(json.loads(answer.body()), {"error": "Internal server error"})
            self.assertEqual(answer.header(b"server"), b"freeq")
        self.assertEqual([e for e in events if "log_failure" in e], [])
        errors = [formatEvent(e) for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]
        self.assertEqual(len(errors), 1, errors)
        self.assertNotIn("\n", errors[0])
        self.assertIn("KeyError", errors[0])
        self.assertIn("test_hardening_web.py", errors[0])
        self.assertIn("/boom", errors[0])
        self.assertEqual(srv.server.metrics.web_errors, 3)


class ServerHeaderTests(unittest.TestCase):
    """Item 12: no response names TwistedWeb, Autobahn or a version."""

    @asynctest
    async def test_server_header_is_just_freeq(self) -> None:
        """API, static, 404, 405, 400 and the WebSocket upgrade all say `Server: freeq`."""
        srv = await start_server(self)
        web = await start_web(self, srv)
        for path, method in ((b"/api/v1/health", b"GET"), (b"/", b"GET"), (b"/nope", b"GET"), (b"/%00", b"GET"),
                             (b"/auth/broker/web-token", b"GET"), (b"/metrics", b"GET"), (b"/irc", b"GET")):
            answer = await request(self, web, path, method)
            self.assertEqual(answer.header(b"server"), b"freeq", path)
        upgrade = await raw(self, web, b"GET /irc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        for _ in range(100):
            if b"\r\n\r\n" in upgrade.data:
                break
            await sleep(0.02)
        self.assertEqual(upgrade.status(), 101)
        self.assertEqual(upgrade.header(b"server"), b"freeq")


class ConnectionLimitTests(unittest.TestCase):
    """Item 4: plain HTTP connections are bounded per peer and in total, at connection time."""

    @asynctest
    async def test_per_ip_limit_refuses_with_503_and_counts(self) -> None:
        """With --web-max-connections-per-ip 3, three idle connections are held, the fourth gets a 503 and is
        closed at once, a warn line names the IP, /metrics counts it; closing one frees a slot."""
        events = capture_logs(self)
        srv = await start_server(self)
        web = await start_web(self, srv, web_max_connections_per_ip=3)
        held = [await raw(self, web) for _ in range(3)]
        await sleep(0.2)
        refused = await raw(self, web)
        self.assertTrue(await refused.wait_closed(3))
        self.assertEqual(refused.status(), 503)
        self.assertEqual(json.loads(refused.body()), {"error": WEB_PER_IP})
        self.assertEqual(refused.header(b"server"), b"freeq")
        self.assertFalse(any(c.is_closed for c in held))
        self.assertEqual(srv.server.metrics.web_connections_refused, 1)
        self.assertEqual(srv.server.metrics.web_connections, 3)
        warns = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn and "refused" in formatEvent(e)]
        self.assertEqual(len(warns), 1)
        self.assertIn("127.0.0.1", warns[0])
        held[0].transport.loseConnection()
        await held[0].lost
        await sleep(0.1)
        answer = await request(self, web, b"/api/v1/health")
        self.assertEqual(answer.status(), 200)
        metrics = await request(self, web, b"/metrics")
        self.assertIn(b"freeq_web_connections_refused_total 1.0", metrics.body())

    @asynctest
    async def test_total_limit(self) -> None:
        """With --web-max-connections 2, the third connection (any address) is refused 'Web listener full'."""
        srv = await start_server(self)
        web = await start_web(self, srv, web_max_connections=2)
        held = [await raw(self, web) for _ in range(2)]
        await sleep(0.2)
        refused = await raw(self, web)
        self.assertTrue(await refused.wait_closed(3))
        self.assertEqual(json.loads(refused.body()), {"error": WEB_FULL})
        self.assertFalse(any(c.is_closed for c in held))

    @asynctest
    async def test_websocket_upgrade_leaves_the_web_limit(self) -> None:
        """An upgraded WebSocket is an IRC connection: with one web slot per IP it does not hold that slot (an
        HTTP connection from the same address is still let in, a second one is not), and the web timers
        (idle 0.3 s) do not cut it."""
        srv = await start_server(self)
        web = await start_web(self, srv, web_max_connections_per_ip=1, web_idle_timeout=0.3, web_request_timeout=0.3)
        ws = await ws_connect(self, web)
        await ws.register("webby")
        await sleep(0.2)
        self.assertEqual(srv.server.metrics.web_connections, 0)
        plain = await raw(self, web, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        await sleep(0.1)
        second = await raw(self, web)
        self.assertTrue(await second.wait_closed(3))
        self.assertEqual(second.status(), 503)
        self.assertEqual(plain.status(), 200)
        await sleep(0.8)
        self.assertFalse(ws.is_lost)
        ws.send("PING :still-here")
        await ws.expect(lambda l: l.command == "PONG")


class TimeoutTests(unittest.TestCase):
    """Item 4: idle connections and slow requests end within known limits."""

    @asynctest
    async def test_slowloris_is_cut_at_the_request_timeout(self) -> None:
        """A client trickling its headers a byte every 50 ms (which resets twisted.web's own idle timer) is
        cut when --web-request-timeout (0.6 s) after its first byte has passed, and the cut is counted."""
        srv = await start_server(self)
        web = await start_web(self, srv, web_request_timeout=0.6, web_idle_timeout=30)
        conn = await raw(self, web, b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        header = b"X-Slow: " + b"a" * 200
        for byte in header:
            if conn.is_closed:
                break
            conn.transport.write(bytes([byte]))
            await sleep(0.05)
        self.assertTrue(conn.is_closed, "the trickling client was never cut")
        assert conn.closed_at is not None
        self.assertLess(conn.closed_at - started, 2.0)
        self.assertGreater(conn.closed_at - started, 0.5)
        self.assertEqual(srv.server.metrics.web_timeouts, 1)

    @asynctest
    async def test_silent_and_keepalive_connections_close_at_the_idle_timeout(self) -> None:
        """A connection that sends nothing is closed after --web-idle-timeout (0.8 s); a keep-alive connection
        is served while its requests come in time, then closed once idle as long (twisted.web alone keeps
        both 60 s)."""
        srv = await start_server(self)
        web = await start_web(self, srv, web_idle_timeout=0.8, web_request_timeout=5)
        silent = await raw(self, web)
        keepalive = await raw(self, web)
        for _ in range(3):
            keepalive.transport.write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            await sleep(0.4)
        self.assertFalse(keepalive.is_closed)
        self.assertEqual(keepalive.data.count(b"HTTP/1.1 200 OK"), 3)
        self.assertTrue(await silent.wait_closed(3))
        self.assertTrue(await keepalive.wait_closed(3))
        assert silent.closed_at is not None
        self.assertGreater(silent.closed_at - silent.opened_at, 0.7)
        self.assertEqual(srv.server.metrics.web_connections, 0)
        self.assertEqual(srv.server.metrics.web_timeouts, 2)


class WebLimiterUnitTests(unittest.TestCase):
    """The pure parts: the connection counter, the log throttle, the peer address."""

    def test_limiter_per_ip_total_and_proxy_exemption(self) -> None:
        """Per-IP and total bounds; a trusted proxy counts only in the total; release frees the slot."""
        limiter = WebConnectionLimiter(per_ip=2, total=4)
        self.assertIsNone(limiter.acquire("192.0.2.1"))
        self.assertIsNone(limiter.acquire("192.0.2.1"))
        self.assertEqual(limiter.acquire("192.0.2.1"), WEB_PER_IP)
        self.assertIsNone(limiter.acquire("10.0.0.1", per_ip_exempt=True))
        self.assertIsNone(limiter.acquire("10.0.0.1", per_ip_exempt=True))
        self.assertEqual(limiter.acquire("192.0.2.9"), WEB_FULL)
        limiter.release("192.0.2.1")
        self.assertEqual(limiter.count("192.0.2.1"), 1)
        self.assertEqual(limiter.open, 3)
        limiter.release("198.51.100.1")  # never acquired: no effect
        self.assertEqual(limiter.open, 3)

    def test_log_throttle(self) -> None:
        """One line per key per interval; the next line says how many were held back."""
        clock = Clock()
        throttle = LogThrottle(clock, interval=10)
        self.assertEqual(throttle.allow("a"), 0)
        self.assertIsNone(throttle.allow("a"))
        self.assertIsNone(throttle.allow("a"))
        self.assertEqual(throttle.allow("b"), 0)
        clock.advance(10)
        self.assertEqual(throttle.allow("a"), 2)

    def test_peer_ip(self) -> None:
        """IPv4-mapped addresses count as IPv4."""
        self.assertEqual(peer_ip("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(peer_ip("2001:db8::1"), "2001:db8::1")


class _FakeResource:
    """A stand-in for the ``resource`` module."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int) -> None:
        self.limits = (soft, hard)
        self.set_calls: list[tuple[int, tuple[int, int]]] = []

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        self.set_calls.append((which, limits))
        self.limits = limits


class FdLimitTests(unittest.TestCase):
    """Item 4: the start-up check of RLIMIT_NOFILE against the connection limits."""

    def test_needed_counts_web_only_when_listening(self) -> None:
        """--max-clients + --web-max-connections (when the web listener is on) + the margin."""
        self.assertEqual(needed_fds(Config(max_clients=1000)), 1000 + FD_MARGIN)
        config = Config(max_clients=1000, web_listen=Listen("127.0.0.1", 8080), web_max_connections=500)
        self.assertEqual(needed_fds(config), 1500 + FD_MARGIN)

    def test_plan(self) -> None:
        """Enough: keep; soft too low: raise to the hard limit (or to the need when unlimited); hard too low:
        a one-line ConfigError naming the flags to lower."""
        self.assertIsNone(plan_fd_limit(1000, 1024, 4096))
        self.assertIsNone(plan_fd_limit(1000, -1, -1))
        self.assertEqual(plan_fd_limit(2000, 1024, 4096), 4096)
        self.assertEqual(plan_fd_limit(2000, 1024, -1), 2000)
        with self.assertRaises(ConfigError) as e:
            plan_fd_limit(11064, 1024, 4096)
        message = str(e.exception)
        self.assertNotIn("\n", message)
        for part in ("4096", "11064", "--max-clients", "--web-max-connections"):
            self.assertIn(part, message)

    def test_ensure_raises_the_soft_limit(self) -> None:
        """With a fake resource module: the soft limit goes up, the hard one stays."""
        fake = _FakeResource(1024, 65536)
        self.assertEqual(ensure_fd_limit(Config(max_clients=10000), fake), (1024, 65536))
        self.assertEqual(fake.set_calls, [(7, (65536, 65536))])
        self.assertIsNone(ensure_fd_limit(Config(max_clients=10000), fake))

    def _limited(self, soft: int, hard: int, *flags: str) -> subprocess.CompletedProcess[str]:
        """The real check (freeq.tap._check_fd_limit on parsed flags) in a subprocess with these limits."""
        code = ("import resource, sys\n"
                f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
                "from freeq.tap import Options, _check_fd_limit, config_from_options\n"
                "from freeq.config import ConfigError\n"
                "o = Options(); o.parseOptions(sys.argv[1:])\n"
                "try:\n"
                "    _check_fd_limit(config_from_options(o, {}))\n"
                "except ConfigError as e:\n"
                "    print('freeq: %s' % e); sys.exit(1)\n"
                "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n")
        return subprocess.run([sys.executable, "-c", code, *flags], capture_output=True, text=True, timeout=60,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def test_real_limits_in_a_subprocess(self) -> None:
        """With real RLIMIT_NOFILE (soft 256, hard 2048): --max-clients 1000 raises the soft limit to 2048;
        --max-clients 1000 with a 1000-connection web listener (2064 needed) refuses with one line."""
        raised = self._limited(256, 2048, "--max-clients", "1000")
        self.assertEqual(raised.returncode, 0, raised.stderr)
        self.assertEqual(raised.stdout.strip(), "2048")
        refused = self._limited(256, 2048, "--max-clients", "1000", "--web-addr", "8080")
        self.assertEqual(refused.returncode, 1)
        self.assertEqual(len(refused.stdout.strip().splitlines()), 1)
        self.assertIn("--web-max-connections", refused.stdout)


class FlagTests(unittest.TestCase):
    """The new flags reach the Config and are validated."""

    def test_flags(self) -> None:
        """The four web flags parse into the Config; their defaults are documented ones."""
        from freeq.tap import config_from_options

        config = config_from_options(parse("--web-max-connections-per-ip", "5", "--web-max-connections", "50",
                                           "--web-idle-timeout", "7", "--web-request-timeout", "3"), {})
        self.assertEqual((config.web_max_connections_per_ip, config.web_max_connections), (5, 50))
        self.assertEqual((config.web_idle_timeout, config.web_request_timeout), (7.0, 3.0))
        default = Config()
        self.assertEqual((default.web_max_connections_per_ip, default.web_max_connections), (32, 1000))
        self.assertEqual((default.web_idle_timeout, default.web_request_timeout), (30.0, 10.0))

    def test_bad_values(self) -> None:
        """Zero connections or a non-positive timeout is a one-line ConfigError naming the flag."""
        for field, flag in (("web_max_connections_per_ip", "--web-max-connections-per-ip"),
                            ("web_max_connections", "--web-max-connections"),
                            ("web_idle_timeout", "--web-idle-timeout"),
                            ("web_request_timeout", "--web-request-timeout")):
            with self.assertRaises(ConfigError) as e:
                Config(**{field: 0}).validate()  # type: ignore[arg-type]
            self.assertIn(flag, str(e.exception))
