"""WEBIRC for trusted gateways (issue #13 item 5): the ``[[webirc]]`` blocks and the pure checks
(:mod:`freeq.gateways`), and the command over real loopback sockets (:mod:`freeq.core.webirc`)."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.config import BLOCKS, ConfigError
from freeq.gateways import (
    WebircGateway, believe_secure, check_webirc, clean_hostname, clean_ip, is_gateway_host, parse_options,
    parse_webirc_blocks,
)
from tests.support import IRCClient, ServerFixture, asynctest, sleep, start_server

PASSWORD = "gateway-pass-0123"


def gateway(hosts: tuple[str, ...] = ("127.0.0.0/8",), password: str = PASSWORD, name: str = "kiwi") -> WebircGateway:
    """One parsed [[webirc]] block."""
    return parse_webirc_blocks([{"name": name, "password": password, "hosts": list(hosts)}])[0]


class BlockTests(unittest.TestCase):
    """``[[webirc]]`` blocks parse into gateways; every mistake is one line that never shows the password."""

    def test_registered_in_the_config_blocks(self) -> None:
        """The config loader's block table sends [[webirc]] to Config.webirc through parse_webirc_blocks."""
        field, parse = BLOCKS["webirc"]
        self.assertEqual(field, "webirc")
        self.assertEqual(parse([{"name": "a", "password": PASSWORD, "hosts": ["192.0.2.1"]}])[0].name, "a")

    def test_good_blocks(self) -> None:
        """A plain password, a password file (one trailing newline dropped), IPs and CIDRs of both families."""
        path = os.path.join(self.mktemp())
        with open(path, "w") as f:
            f.write("from-a-file-secret\n")
        kiwi, other = parse_webirc_blocks([
            {"name": "kiwi", "password": PASSWORD, "hosts": ["192.0.2.10", "2001:db8:10::/64"]},
            {"name": "other.gw", "password-file": path, "hosts": "198.51.100.0/24"},
        ])
        self.assertEqual(kiwi.name, "kiwi")
        self.assertTrue(kiwi.allows("192.0.2.10"))
        self.assertTrue(kiwi.allows("::ffff:192.0.2.10"))  # a dual-stack listener's form of the same peer
        self.assertTrue(kiwi.allows("2001:db8:10::5"))
        self.assertFalse(kiwi.allows("192.0.2.11"))
        self.assertFalse(kiwi.allows("not-an-ip"))
        self.assertTrue(other.password_ok("from-a-file-secret"))
        self.assertNotIn(PASSWORD, repr(kiwi))

    def test_bad_blocks(self) -> None:
        """Each problem is refused with a line naming the block and key, and never the password."""
        secret = "do-not-print-me-please"
        cases = [
            ({"password": secret, "hosts": ["192.0.2.1"]}, "name"),
            ({"name": "bad name", "password": secret, "hosts": ["192.0.2.1"]}, "name"),
            ({"name": "a", "hosts": ["192.0.2.1"]}, "password"),
            ({"name": "a", "password": secret, "password-file": "/x", "hosts": ["192.0.2.1"]}, "password"),
            ({"name": "a", "password": "short", "hosts": ["192.0.2.1"]}, "password"),
            ({"name": "a", "password": "has space in it", "hosts": ["192.0.2.1"]}, "password"),
            ({"name": "a", "password": secret}, "hosts"),
            ({"name": "a", "password": secret, "hosts": []}, "hosts"),
            ({"name": "a", "password": secret, "hosts": ["gateway.example.org"]}, "hosts"),
            ({"name": "a", "password": secret, "hosts": ["0.0.0.0/0"]}, "too wide"),
            ({"name": "a", "password": secret, "hosts": ["::/0"]}, "too wide"),
            ({"name": "a", "password": secret, "hosts": ["192.0.2.1"], "secure": True}, "unknown key"),
            ({"name": "a", "password-file": "/nonexistent/webirc.secret", "hosts": ["192.0.2.1"]}, "password-file"),
            ({"name": "a", "password": "scrypt$1$1$1$x$y", "hosts": ["192.0.2.1"]}, "password"),
        ]
        for block, text in cases:
            with self.assertRaises(ConfigError, msg=repr(block)) as caught:
                parse_webirc_blocks([block])
            self.assertIn(text, str(caught.exception), block)
            self.assertNotIn(secret, str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            parse_webirc_blocks([{"name": "a", "password": secret, "hosts": ["192.0.2.1"]},
                                 {"name": "a", "password": secret, "hosts": ["192.0.2.2"]}])
        self.assertIn("two blocks", str(caught.exception))
        with self.assertRaises(ConfigError):
            parse_webirc_blocks({"name": "a"})
        with self.assertRaises(ConfigError):
            parse_webirc_blocks([{"name": "g%d" % i, "password": secret, "hosts": ["192.0.2.1"]} for i in range(65)])


class CheckTests(unittest.TestCase):
    """The pure rules of the command."""

    def test_check_order_and_password(self) -> None:
        """An unlisted address is refused before any password is looked at; a listed one needs the password."""
        gws = (gateway(("192.0.2.0/24",)), gateway(("198.51.100.1",), password="another-password-1", name="b"))
        self.assertEqual(check_webirc(gws, "203.0.113.1", PASSWORD), (None, "not a WebIRC gateway address"))
        self.assertEqual(check_webirc(gws, "192.0.2.9", "nope-nope-nope"), (None, "wrong WebIRC password"))
        self.assertEqual(check_webirc(gws, "198.51.100.1", PASSWORD), (None, "wrong WebIRC password"))
        found, why = check_webirc(gws, "192.0.2.9", PASSWORD)
        self.assertEqual((found.name if found else None, why), ("kiwi", ""))
        self.assertTrue(is_gateway_host(gws, "198.51.100.1"))
        self.assertFalse(is_gateway_host(gws, "198.51.100.2"))
        self.assertFalse(is_gateway_host((), "198.51.100.1"))

    def test_scrypt_hashed_password(self) -> None:
        """A block may hold an scrypt hash (freeq-admin hash-password): the password it hashes is accepted
        (and remembered), another is not."""
        from freeq.opers import hash_password

        gw = gateway(password=hash_password(PASSWORD, salt=b"\x01" * 16))
        self.assertTrue(gw.hashed)
        self.assertFalse(gw.password_ok("wrong-password-here"))
        self.assertTrue(gw.password_ok(PASSWORD))
        self.assertTrue(gw.password_ok(PASSWORD))  # the remembered success

    def test_clean_ip(self) -> None:
        """Client addresses are canonical unicast IPs; anything else is refused."""
        self.assertEqual(clean_ip("203.0.113.7"), "203.0.113.7")
        self.assertEqual(clean_ip("::ffff:203.0.113.7"), "203.0.113.7")
        self.assertEqual(clean_ip("2001:DB8::0001"), "2001:db8::1")
        self.assertEqual(clean_ip("0::1"), "::1")
        for bad in ("nonsense", "203.0.113", "0.0.0.0", "::", "224.0.0.1", "1.2.3.4 5", "", "1" * 100):
            self.assertIsNone(clean_ip(bad), bad)

    def test_clean_hostname(self) -> None:
        """A plausible DNS name is kept (lower case); anything else falls back to the IP."""
        ip = "203.0.113.7"
        self.assertEqual(clean_hostname("Host-7.Example.ORG", ip), "host-7.example.org")
        for bogus in ("", ip, "1.2.3.4", "localhost", ":evil", "a b.example.org", "x.example.org\r\nQUIT",
                      "*.example.org", "-bad.example.org", "bad-.example.org", "a..example.org",
                      "a" * 64 + ".example.org", ("a" * 60 + ".") * 5 + "org", "host.example.org.",
                      "ünïcode.example.org", "123.456"):
            self.assertEqual(clean_hostname(bogus, ip), ip, bogus)

    def test_options_and_secure(self) -> None:
        """Options are bounded name[=value] words; 'secure' is believed only over a secure or loopback leg."""
        self.assertEqual(parse_options("secure remote-port=5555  local-port=443"),
                         {"secure": "", "remote-port": "5555", "local-port": "443"})
        self.assertEqual(len(parse_options(" ".join(f"o{i}" for i in range(100)))), 16)
        self.assertTrue(believe_secure({"secure": ""}, True, "192.0.2.1"))
        self.assertTrue(believe_secure({"secure": ""}, False, "127.0.0.1"))
        self.assertTrue(believe_secure({"secure": ""}, False, "::1"))
        self.assertFalse(believe_secure({"secure": ""}, False, "192.0.2.1"))
        self.assertFalse(believe_secure({}, True, "127.0.0.1"))


async def webirc(srv: ServerFixture, line: str) -> IRCClient:
    """A raw connection that sends ``line`` first."""
    c = await srv.connect()
    c.send(line)
    return c


async def register(c: IRCClient, nick: str) -> None:
    """NICK and USER; returns after the end of the MOTD."""
    c.nick = nick
    c.send(f"NICK {nick}")
    c.send(f"USER {nick} 0 * :Gateway User")
    await c.expect(lambda l: l.command in ("376", "422"))
    c.skip()


def warnings(observer: EventLoggingObserver, text: str) -> list[dict[str, Any]]:
    """Warn events whose text holds ``text``."""
    return [e for e in observer if e.get("log_level") == LogLevel.warn and text in formatEvent(e)]


class WebircCommandTests(unittest.TestCase):
    """The command over real sockets from 127.0.0.1 (a listed gateway host, or not)."""

    @asynctest
    async def test_accepted_gateway_names_the_client(self) -> None:
        """The connection's address becomes the client's; the slot moves to it; the hostname is kept; WHOIS
        shows no secure connection without the option; the gateway's log line names both."""
        srv = await start_server(self, webirc=(gateway(),))
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc client7.example.org 203.0.113.7")
        await register(c, "webber")
        user = srv.server.users["webber"]
        self.assertEqual(user.ip, "203.0.113.7")
        self.assertEqual(srv.server.webirc_origin(user), ("kiwi", "127.0.0.1", "client7.example.org"))
        self.assertEqual(user.host, "freeq/guest")  # the visible host stays the cloak
        limiter = srv.listeners[0].factory.limiter
        self.assertEqual(limiter.counts.get("203.0.113.7"), 1)
        self.assertNotIn("127.0.0.1", limiter.counts)  # the gateway's host counts only in the total
        c.send("WHOIS webber")
        lines = await c.collect_until("318")
        self.assertNotIn("671", [l.command for l in lines])
        self.assertEqual(srv.server.metrics.webirc_accepted, 1)
        self.assertTrue([e for e in observer if "vouches for" in formatEvent(e) and e.get("ip") == "203.0.113.7"
                         and e.get("gateway_ip") == "127.0.0.1"])
        c.disconnect()
        await c.closed
        for _ in range(100):  # the server sees the close a moment after the client does
            if not limiter.current:
                break
            await sleep(0.01)
        self.assertEqual((limiter.counts, limiter.current), ({}, 0))

    @asynctest
    async def test_secure_option_and_bogus_hostname(self) -> None:
        """'secure' over a loopback leg marks the connection secure (WHOIS 671); a bogus hostname becomes the IP;
        an IPv6 client address is taken canonical."""
        srv = await start_server(self, webirc=(gateway(),))
        c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc bad!host 2001:DB8::7 :secure remote-port=5555")
        await register(c, "sec")
        user = srv.server.users["sec"]
        self.assertEqual(user.ip, "2001:db8::7")
        self.assertEqual(srv.server.webirc_origin(user), ("kiwi", "127.0.0.1", "2001:db8::7"))
        c.send("WHOIS sec")
        await c.expect("671")

    @asynctest
    async def test_wrong_password_is_closed_and_logged(self) -> None:
        """A wrong password: ERROR, the connection closed, a warn line with the peer's address and without the
        password; nothing about the connection changed."""
        srv = await start_server(self, webirc=(gateway(),))
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        c = await webirc(srv, "WEBIRC wrong-password-xyz kiwiirc host.example.org 203.0.113.7")
        line = await c.expect("ERROR")
        self.assertIn("Invalid WebIRC password", line.raw)
        await c.closed
        found = warnings(observer, "WEBIRC refused")
        self.assertEqual(len(found), 1)
        self.assertEqual(found[0]["ip"], "127.0.0.1")
        self.assertNotIn("wrong-password-xyz", repr(found[0]))
        self.assertEqual(srv.server.metrics.webirc_refused, 1)
        self.assertEqual(srv.server.metrics.security_count("webirc_refused"), 1)

    @asynctest
    async def test_unlisted_gateway_is_closed_and_logged(self) -> None:
        """The right password from an address no block lists is refused the same way (logged as such)."""
        srv = await start_server(self, webirc=(gateway(("192.0.2.0/24",)),))
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.7")
        await c.expect("ERROR")
        await c.closed
        found = warnings(observer, "not a WebIRC gateway address")
        self.assertEqual([e["ip"] for e in found], ["127.0.0.1"])

    @asynctest
    async def test_without_blocks_webirc_is_refused(self) -> None:
        """A server with no [[webirc]] block refuses every WEBIRC."""
        srv = await start_server(self)
        c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.7")
        await c.expect("ERROR")
        await c.closed

    @asynctest
    async def test_only_first_and_only_before_registration(self) -> None:
        """After NICK (or CAP) WEBIRC is refused and the connection closed; once registered it is 462; a
        second WEBIRC is refused; too few parameters are 461 and change nothing."""
        srv = await start_server(self, webirc=(gateway(),))
        c = await srv.connect()
        c.send("NICK early")
        c.send(f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.7")
        line = await c.expect("ERROR")
        self.assertIn("must be the first command", line.raw)
        await c.closed
        c = await srv.connect()
        c.send("CAP LS 302")
        c.send(f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.7")
        await c.expect("ERROR")
        await c.closed
        c = await srv.client("registered")
        c.send(f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.7")
        await c.expect("462")
        self.assertEqual(srv.server.users["registered"].ip, "127.0.0.1")
        c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.8")
        c.send(f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.9")
        await c.expect("ERROR")
        await c.closed
        c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc")
        await c.expect("461")
        await register(c, "after461")
        self.assertEqual(srv.server.users["after461"].ip, "127.0.0.1")

    @asynctest
    async def test_invalid_client_address(self) -> None:
        """A client address that is not an IP is refused with ERROR."""
        srv = await start_server(self, webirc=(gateway(),))
        c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc host.example.org not.an.ip")
        line = await c.expect("ERROR")
        self.assertIn("Invalid WebIRC client address", line.raw)
        await c.closed

    @asynctest
    async def test_per_ip_limit_and_rate_count_the_client(self) -> None:
        """The gateway's host is held to neither the per-IP limit nor the connection rate; each client address
        is: a third connection for one client address is refused, others still come in."""
        srv = await start_server(self, webirc=(gateway(),), max_connections_per_ip=2, connection_rate=0.001,
                                 connection_rate_burst=2)
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for i in range(2):
            c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.50")
            await register(c, f"same{i}")
        c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.50")
        line = await c.expect("ERROR")
        self.assertIn("connecting too fast", line.raw.lower())  # the client's burst of 2 is spent
        await c.closed
        for i in range(3):
            c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.{60 + i}")
            await register(c, f"other{i}")
        limiter = srv.listeners[0].factory.limiter
        self.assertEqual(limiter.counts, {"203.0.113.50": 2, "203.0.113.60": 1, "203.0.113.61": 1,
                                          "203.0.113.62": 1})
        self.assertTrue([e for e in observer if e.get("ip") == "203.0.113.50"
                         and e.get("log_level") == LogLevel.warn])

    @asynctest
    async def test_per_ip_limit_of_the_client(self) -> None:
        """Without a rate limit, the per-IP limit holds for the client address: the third is refused."""
        srv = await start_server(self, webirc=(gateway(),), max_connections_per_ip=2)
        for i in range(2):
            c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.50")
            await register(c, f"lim{i}")
        c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.50")
        line = await c.expect("ERROR")
        self.assertIn("Too many connections from your IP", line.raw)
        await c.closed
        self.assertEqual(srv.listeners[0].factory.limiter.counts, {"203.0.113.50": 2})

    @asynctest
    async def test_reload_applies_to_the_next_client(self) -> None:
        """Blocks are read from server.config at each WEBIRC: after a reload the new password works and the
        old one does not."""
        srv = await start_server(self, webirc=(gateway(),))
        srv.server.config = dataclasses.replace(srv.server.config, webirc=(gateway(password="the-new-password-1"),))
        c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.7")
        await c.expect("ERROR")
        await c.closed
        c = await webirc(srv, "WEBIRC the-new-password-1 kiwiirc host.example.org 203.0.113.7")
        await register(c, "reloaded")
        self.assertEqual(srv.server.users["reloaded"].ip, "203.0.113.7")


class ConfigFileTests(unittest.TestCase):
    """[[webirc]] blocks and the metrics token come from the TOML config file."""

    def test_config_file_blocks_and_metrics_token_file(self) -> None:
        """A file's [[webirc]] blocks fill Config.webirc (password from a password-file); its metrics-token-file
        key fills --metrics-token (the generic secret-file rule); a bad block is one line naming the file."""
        from freeq.tap import Options, config_from_options

        def load(path: str) -> Any:
            options = Options()
            options.parseOptions(["--config", path])
            return config_from_options(options, {})

        base = self.mktemp()
        os.makedirs(base)
        secret = os.path.join(base, "webirc.secret")
        token = os.path.join(base, "metrics.secret")
        for path, text in ((secret, "file-gateway-pass\n"), (token, "metrics-token-from-file\n")):
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o600)
        conf = os.path.join(base, "freeq.toml")
        with open(conf, "w") as f:
            f.write(f'listen-addr = "none"\nweb-addr = "127.0.0.1:8080"\nmetrics-token-file = "{token}"\n\n'
                    f'[[webirc]]\nname = "kiwi"\npassword-file = "{secret}"\nhosts = ["192.0.2.10", "2001:db8::/48"]\n')
        config = load(conf)
        self.assertIsNone(config.listen)
        self.assertEqual(config.metrics_token, "metrics-token-from-file")
        self.assertEqual([g.name for g in config.webirc], ["kiwi"])
        self.assertTrue(config.webirc[0].allows("192.0.2.10"))
        self.assertTrue(config.webirc[0].password_ok("file-gateway-pass"))
        with open(conf, "w") as f:
            f.write('[[webirc]]\nname = "kiwi"\npassword = "inline-secret-1"\nhosts = ["nonsense"]\n')
        with self.assertRaises(ConfigError) as caught:
            load(conf)
        self.assertIn(conf, str(caught.exception))
        self.assertIn("hosts", str(caught.exception))
        self.assertNotIn("inline-secret-1", str(caught.exception))


class WebircBansTests(unittest.TestCase):
    """What is keyed by address afterwards sees the client, not the gateway."""

    @asynctest
    async def test_dline_of_the_client_refuses_it_and_spares_the_gateway(self) -> None:
        """A D-line on the client's address refuses it at registration (465); another client through the same
        gateway registers; an operator's WHOIS (378/338) shows the client's address."""
        srv = await start_server(self, webirc=(gateway(),), config_bans=(("203.0.113.66", "abuser"),),
                                 oper_password="oper-secret-123")
        c = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.66")
        c.send("NICK banned")
        c.send("USER banned 0 * :x")
        line = await c.expect("465")
        self.assertIn("abuser", line.raw)
        await c.expect("ERROR")
        await c.closed
        ok = await webirc(srv, f"WEBIRC {PASSWORD} kiwiirc host.example.org 203.0.113.67")
        await register(ok, "fine")
        oper = await srv.client("theoper")
        oper.send("OPER theoper oper-secret-123")
        await oper.expect("381")
        oper.send("WHOIS fine")
        lines = await oper.collect_until("318")
        real = [l for l in lines if l.command in ("378", "338")]
        self.assertTrue(real)
        self.assertTrue(all("203.0.113.67" in l.raw and "127.0.0.1" not in l.raw for l in real), real)
