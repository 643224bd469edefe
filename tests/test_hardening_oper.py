"""OPER brute force (issue #10 item 7): failed OPER is throttled per address across connections with an
exponential back-off, the right password is not even checked during the wait, and the warn line that
names the IP (for fail2ban) is rate-limited. The throttle itself is a pure unit tested with plain times."""
from __future__ import annotations

import treq
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.config import Config, ConfigError
from freeq.state.throttle import FailureThrottle, ip_key
from tests.support import IRCClient, ServerFixture, asynctest, start_server, start_web


class IpKeyTests(unittest.TestCase):
    """The throttling key of an address."""

    def test_ipv4_is_itself(self) -> None:
        """An IPv4 address is its own key; an IPv4-mapped IPv6 address counts as the IPv4 one."""
        self.assertEqual(ip_key("192.0.2.7"), "192.0.2.7")
        self.assertEqual(ip_key("::ffff:192.0.2.7"), "192.0.2.7")

    def test_ipv6_is_its_slash_64(self) -> None:
        """Addresses in one IPv6 /64 share a key; another /64 does not."""
        self.assertEqual(ip_key("2001:db8:1:2::1"), "2001:db8:1:2::/64")
        self.assertEqual(ip_key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::/64")
        self.assertNotEqual(ip_key("2001:db8:1:3::1"), ip_key("2001:db8:1:2::1"))

    def test_unparsable_is_itself(self) -> None:
        """Something that is no IP address (a UNIX socket) keys as itself instead of failing."""
        self.assertEqual(ip_key("unix"), "unix")


class FailureThrottleTests(unittest.TestCase):
    """Back-off, decay, table bound and log budget of :class:`FailureThrottle`."""

    def test_backoff_doubles_and_caps(self) -> None:
        """After failure n the key waits base * 2**(n-1) seconds, never more than the cap."""
        t = FailureThrottle(base=1.0, cap=10.0, forget_after=3600)
        self.assertEqual(t.wait("k", 0.0), 0.0)
        now = 0.0
        waits = []
        for _ in range(6):
            outcome = t.fail("k", now)
            waits.append(outcome.wait)
            self.assertEqual(t.wait("k", now), outcome.wait)
            now += outcome.wait
            self.assertEqual(t.wait("k", now), 0.0)
        self.assertEqual(waits, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0])
        self.assertEqual(t.wait("k", now - 0.5), 0.5)
        self.assertEqual(t.wait("other", now), 0.0)

    def test_failures_decay_after_quiet_period(self) -> None:
        """A key quiet for ``forget_after`` seconds starts again from one failure."""
        t = FailureThrottle(base=1.0, cap=10.0, forget_after=100)
        for now in (0.0, 1.0, 3.0):
            t.fail("k", now)
        self.assertEqual(t.failures("k", 50.0), 3)
        self.assertEqual(t.failures("k", 103.0), 0)
        self.assertEqual(t.fail("k", 103.0).wait, 1.0)

    def test_success_forgets(self) -> None:
        """A success clears the key's record."""
        t = FailureThrottle(base=1.0, cap=10.0)
        t.fail("k", 0.0)
        t.succeed("k")
        self.assertEqual(t.wait("k", 0.0), 0.0)
        self.assertEqual(t.failures("k", 0.0), 0)

    def test_table_is_bounded(self) -> None:
        """However many keys fail, at most ``max_keys`` are remembered: the idlest go first."""
        t = FailureThrottle(base=1.0, cap=10.0, max_keys=100)
        for i in range(1000):
            t.fail(f"k{i}", float(i))
        self.assertEqual(len(t), 100)
        self.assertEqual(t.failures("k0", 1000.0), 0)
        self.assertEqual(t.failures("k999", 1000.0), 1)

    def test_log_budget(self) -> None:
        """One log line per key per ``log_interval``; the next one carries the count held back."""
        t = FailureThrottle(base=1.0, cap=600.0, log_interval=10.0)
        verdicts = [(now, t.fail("k", now)) for now in (0.0, 1.0, 3.0, 7.0, 15.0)]
        self.assertEqual([(now, o.log, o.suppressed) for now, o in verdicts],
                         [(0.0, True, 0), (1.0, False, 0), (3.0, False, 0), (7.0, False, 0), (15.0, True, 3)])
        self.assertTrue(t.fail("other", 15.0).log)

    def test_base_zero_is_off(self) -> None:
        """Base 0: no wait, ever."""
        t = FailureThrottle(base=0.0, cap=0.0)
        for now in range(5):
            self.assertEqual(t.fail("k", float(now)).wait, 0.0)
            self.assertEqual(t.wait("k", float(now)), 0.0)

    def test_config_validation(self) -> None:
        """A negative base, or a cap below the base, is refused at start-up."""
        with self.assertRaises(ConfigError):
            Config(oper_backoff_base=-1).validate()
        with self.assertRaises(ConfigError):
            Config(oper_backoff_base=5, oper_backoff_max=1).validate()


def failure_lines(observer: EventLoggingObserver) -> list[tuple[LogLevel, str]]:
    """Level and text of each 'failed OPER from <ip>' log line (not the quit lines whose reason names them)."""
    return [(e["log_level"], formatEvent(e)) for e in observer if "failed OPER from" in formatEvent(e)]


class OperBruteForceTests(unittest.TestCase):
    """Wrong OPER passwords over real sockets, from one address, over many connections."""

    async def server(self) -> tuple[ServerFixture, Clock]:
        clock = Clock()
        clock.advance(1000)
        srv = await start_server(self, clock=clock, oper_password="right-pw", flood_rate=0)
        return srv, clock

    async def oper(self, c: IRCClient, password: str) -> str:
        """Send OPER and return the numeric it got (381, 464 or 263)."""
        c.send(f"OPER admin {password}")
        line = await c.expect(lambda l: l.command in ("381", "464", "263"))
        return line.command

    @asynctest
    async def test_right_password_waits_for_the_backoff_across_connections(self) -> None:
        """After a wrong password, the right one is refused with 263 (not checked) on this connection
        and on a new one, until the wait (1 s after the first failure) has passed; then it works."""
        srv, clock = await self.server()
        first = await srv.client("mallory")
        self.assertEqual(await self.oper(first, "wrong"), "464")
        retry = await self.oper(first, "right-pw")
        self.assertEqual(retry, "263")
        self.assertIn("try again in 1 seconds", first.lines[-1].params[-1])
        self.assertFalse(srv.server.users["mallory"].is_oper)
        first.disconnect()
        await first.closed
        second = await srv.client("mallory2")
        self.assertEqual(await self.oper(second, "right-pw"), "263")
        clock.advance(0.5)
        self.assertEqual(await self.oper(second, "right-pw"), "263")
        clock.advance(0.5)
        self.assertEqual(await self.oper(second, "right-pw"), "381")
        self.assertTrue(srv.server.users["mallory2"].is_oper)
        self.assertEqual((srv.server.metrics.oper_failures, srv.server.metrics.oper_throttled), (1, 3))
        # The success forgot the address's failures: a new wrong password waits 1 s again.
        self.assertEqual(await self.oper(second, "wrong"), "464")
        self.assertEqual(srv.server.oper_throttle.wait("127.0.0.1", clock.seconds()), 1.0)

    @asynctest
    async def test_many_attempts_over_reconnects_are_throttled_and_the_log_bounded(self) -> None:
        """Ten connections of three wrong OPERs each over 2.7 s: only the attempts after each wait are
        checked (2 of 30), each connection is closed after its third, and one warn line names the IP;
        the next line, 10 s later, says how many were held back. /metrics counts both kinds."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        srv, clock = await self.server()
        web = await start_web(self, srv)
        replies: list[str] = []
        for i in range(10):
            c = await srv.client(f"bot{i}")
            for _ in range(3):
                replies.append(await self.oper(c, f"guess{i}"))
            await c.expect("ERROR")
            await c.closed
            clock.advance(0.3)
        # Failures at t=0 (wait 1 s) and t=1.2 (wait 2 s, to 3.2 s); everything else was refused unchecked.
        self.assertEqual(replies.count("464"), 2, replies)
        self.assertEqual(replies.count("263"), 28, replies)
        lines = failure_lines(observer)
        self.assertEqual(lines, [(LogLevel.warn, "failed OPER from 127.0.0.1 as admin (nick bot0, failures 1)")])
        clock.advance(10)
        late = await srv.client("late")
        self.assertEqual(await self.oper(late, "guess-late"), "464")
        lines = failure_lines(observer)
        self.assertEqual(lines[1:], [(LogLevel.warn, "failed OPER from 127.0.0.1 as admin (nick late, failures 3, "
                                                     "1 more suppressed)")])
        self.assertFalse(any("guess" in text or "right-pw" in text for _level, text in lines))
        response = await treq.get(web.url + "/metrics", persistent=False)
        text = (await response.content()).decode().splitlines()
        self.assertIn("freeq_oper_failures_total 3.0", text)
        self.assertIn("freeq_oper_throttled_total 28.0", text)
