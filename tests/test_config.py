"""Unit tests for freeq.config: listen addresses and cross-field validation."""
from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from freeq.config import Config, ConfigError, Listen, parse_listen


class ParseListenTests(unittest.TestCase):
    """parse_listen turns HOST:PORT strings into Listen values or one-line errors."""

    def assertBad(self, value: str, *fragments: str) -> str:
        """``value`` is refused with a one-line message naming the flag and each fragment."""
        with self.assertRaises(ConfigError) as cm:
            parse_listen("--listen-addr", value)
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith("--listen-addr: "), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_ipv4(self) -> None:
        """An IPv4 address and port parse as given."""
        self.assertEqual(parse_listen("--listen-addr", "0.0.0.0:6667"), Listen("0.0.0.0", 6667))

    def test_whitespace_stripped(self) -> None:
        """Surrounding whitespace (e.g. from an environment file) is ignored."""
        self.assertEqual(parse_listen("--listen-addr", " 127.0.0.1:1 \n"), Listen("127.0.0.1", 1))

    def test_ipv6_bracketed(self) -> None:
        """``[IPv6]:port`` strips the brackets and keeps the address."""
        listen = parse_listen("--listen-addr", "[::1]:6697")
        self.assertEqual(listen, Listen("::1", 6697))
        self.assertEqual(str(listen), "[::1]:6697")
        self.assertEqual(parse_listen("--listen-addr", "[::]:0"), Listen("::", 0))

    def test_localhost(self) -> None:
        """``localhost`` is accepted and pinned to 127.0.0.1 (no resolver at start-up)."""
        self.assertEqual(parse_listen("--listen-addr", "localhost:6667"), Listen("127.0.0.1", 6667))

    def test_port_bounds(self) -> None:
        """Ports 0 and 65535 are fine; 65536 and negatives are out of range."""
        self.assertEqual(parse_listen("--listen-addr", "127.0.0.1:0").port, 0)
        self.assertEqual(parse_listen("--listen-addr", "127.0.0.1:65535").port, 65535)
        self.assertBad("127.0.0.1:65536", "out of range")
        self.assertBad("127.0.0.1:-1", "out of range")

    def test_bad_port(self) -> None:
        """A port that is not a number is refused and quoted."""
        self.assertBad("127.0.0.1:irc", "'irc'", "not a number")

    def test_missing_port(self) -> None:
        """No ``:PORT`` at all, or an empty port, is refused."""
        self.assertBad("127.0.0.1", "expected HOST:PORT")
        self.assertBad("127.0.0.1:", "not a number")
        self.assertBad("", "expected HOST:PORT")

    def test_missing_host(self) -> None:
        """``:6667`` with no host is refused rather than guessed."""
        self.assertBad(":6667", "expected HOST:PORT")

    def test_non_ip_host(self) -> None:
        """A host name other than localhost is refused: listeners bind to addresses."""
        self.assertBad("example.com:6667", "'example.com'", "not an IP address")
        self.assertBad("[localhostx]:6667", "not an IP address")

    def test_flag_named_in_message(self) -> None:
        """The error names the flag it was given, so the operator knows which option is wrong."""
        with self.assertRaises(ConfigError) as cm:
            parse_listen("--tls-listen-addr", "nope")
        self.assertTrue(str(cm.exception).startswith("--tls-listen-addr: "))


class ValidateTests(unittest.TestCase):
    """Config.validate checks cross-field rules and fails with one-line messages."""

    def config(self, **overrides: Any) -> Config:
        """A valid plain-listener config with ``overrides``."""
        return Config(**overrides)

    def assertInvalid(self, fragment: str, **overrides: Any) -> None:
        """Validating a config with ``overrides`` fails with one line containing ``fragment``."""
        with self.assertRaises(ConfigError) as cm:
            self.config(**overrides).validate()
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        self.assertIn(fragment, message)

    def test_defaults_valid(self) -> None:
        """The default config validates and validate() returns the same object."""
        cfg = self.config()
        self.assertIs(cfg.validate(), cfg)

    def test_frozen(self) -> None:
        """A Config cannot be mutated after construction."""
        cfg = self.config()
        with self.assertRaises(Exception):
            cfg.server_name = "x"  # type: ignore[misc]

    def test_server_name(self) -> None:
        """Server names must be one word of letters, digits, dots and dashes."""
        for good in ("freeq", "irc.example.com", "my-server", "irc-1.example.net"):
            self.assertIs(self.config(server_name=good).validate().server_name, good)
        for bad in ("", "two words", "a:b.c", "tab\t.x", "cr\r\nPRIVMSG.x", "x!y.z", "a@b.c"):
            self.assertInvalid("--server-name", server_name=bad)

    def test_tls_cert_and_key_together(self) -> None:
        """A TLS certificate without its key (or the reverse) is refused."""
        self.assertInvalid("--tls-cert and --tls-key", tls_cert="c.pem")
        self.assertInvalid("--tls-cert and --tls-key", tls_key="k.pem")
        self.config(tls_cert="c.pem", tls_key="k.pem").validate()

    def test_positive_limits(self) -> None:
        """Counts that must be at least 1 are refused at 0, naming the flag and the value."""
        for field in ("max_clients", "flood_burst", "sendq_bytes", "whowas_size", "max_targets"):
            flag = "--" + field.replace("_", "-")
            self.assertInvalid(f"{flag}: must be at least 1, got 0", **{field: 0})

    def test_flood_rate(self) -> None:
        """A negative flood rate is refused; zero (off) is allowed."""
        self.assertInvalid("--flood-rate", flood_rate=-1.0)
        self.config(flood_rate=0.0).validate()

    def test_nick_len_range(self) -> None:
        """NICKLEN must lie in 9..64."""
        self.assertInvalid("--nick-len: must be between 9 and 64, got 8", nick_len=8)
        self.assertInvalid("--nick-len", nick_len=65)
        self.config(nick_len=9).validate()
        self.config(nick_len=64).validate()

    def test_channel_len_range(self) -> None:
        """CHANNELLEN must lie in 2..64."""
        self.assertInvalid("--channel-len", channel_len=1)
        self.assertInvalid("--channel-len", channel_len=65)
        self.config(channel_len=2).validate()

    def test_timers_positive(self) -> None:
        """Timers must be positive."""
        for field in ("registration_timeout", "ping_interval", "sweep_interval"):
            self.assertInvalid("--" + field.replace("_", "-") + ": must be positive", **{field: 0})

    def test_ping_timeout_after_interval(self) -> None:
        """The ping timeout must exceed the ping interval."""
        self.assertInvalid("--ping-timeout must be greater than --ping-interval",
                           ping_interval=100.0, ping_timeout=100.0)
        self.config(ping_interval=100.0, ping_timeout=100.5).validate()

    def test_needs_a_listener(self) -> None:
        """With no plain listener, a TLS listener and certificate are required."""
        self.assertInvalid("no listener", listen=None, tls_listen=None)
        self.assertInvalid("no listener", listen=None)
        self.config(listen=None, tls_cert="c.pem", tls_key="k.pem").validate()

    def test_listen_str(self) -> None:
        """Listen renders IPv4 plainly and IPv6 in brackets."""
        self.assertEqual(str(Listen("127.0.0.1", 6667)), "127.0.0.1:6667")
        self.assertEqual(str(Listen("::", 6697)), "[::]:6697")
