"""Network bans, the pure part (freeq.state.bans): masks, durations, reasons, matching and expiry."""
from __future__ import annotations

import time

from twisted.trial import unittest

from freeq.state.bans import (
    DLINE, KLINE, MAX_DURATION, MAX_REASON_BYTES, Ban, BanError, BanList, clean_reason, compile_config_bans,
    parse_duration, parse_mask, reason_problem, shape_of, valid_did,
)


def _ban(kind: str, mask: str, expires: float | None = None, ban_id: str = "") -> Ban:
    return Ban(ban_id or f"{kind}:{mask}", kind, parse_mask(kind, mask), "reason", "oper", 0.0, expires)


class MaskTests(unittest.TestCase):
    """What a K-line or D-line mask may be, normalised."""

    def test_dline_masks(self) -> None:
        """An address or CIDR network; host bits cleared; a /32 is the bare address; mapped IPv6 is IPv4."""
        self.assertEqual(parse_mask(DLINE, "203.0.113.7"), "203.0.113.7")
        self.assertEqual(parse_mask(DLINE, "203.0.113.7/24"), "203.0.113.0/24")
        self.assertEqual(parse_mask(DLINE, "203.0.113.7/32"), "203.0.113.7")
        self.assertEqual(parse_mask(DLINE, "2001:DB8::1/32"), "2001:db8::/32")
        self.assertEqual(parse_mask(DLINE, "::ffff:198.51.100.1"), "198.51.100.1")

    def test_dline_refusals(self) -> None:
        """Not an address, a network wider than /8 (IPv4) or /24 (IPv6), text with spaces, or an IPv6 zone (a link
        of this host, never a client's): refused."""
        for bad in ("host.example", "0.0.0.0/0", "10.0.0.0/7", "::/0", "2001::/16", "1.2.3.4 ", "", "1.2.3.4/33",
                    "fe80::1%eth0"):
            with self.assertRaises(BanError, msg=bad):
                parse_mask(DLINE, bad)
        self.assertEqual(parse_mask(DLINE, "10.0.0.0/8"), "10.0.0.0/8")

    def test_kline_masks(self) -> None:
        """user@host globs (folded), a bare host is *@host, a host may be a CIDR network, a DID is kept."""
        self.assertEqual(parse_mask(KLINE, "~Bot*@*.Example.COM"), "~bot*@*.example.com")
        self.assertEqual(parse_mask(KLINE, "198.51.100.7"), "*@198.51.100.7")
        self.assertEqual(parse_mask(KLINE, "*@198.51.100.9/24"), "*@198.51.100.0/24")
        self.assertEqual(parse_mask(KLINE, "did:plc:abcdefghijklmnopqrstuvwx"), "did:plc:abcdefghijklmnopqrstuvwx")

    def test_kline_refusals(self) -> None:
        """Too wide (*@*), bad characters, two @, bad DIDs, too long or too many wildcards: refused."""
        for bad in ("*@*", "*@*.*", "?@*.c", "a b@host", "u@h@x", "did:plc:", "did:PLC:x", "did::x",
                    "u@" + "h" * 300, "*a" * 40 + "@host.example", "@host.example", "user@", "x!y@host.example",
                    "*@0.0.0.0/0"):
            with self.assertRaises(BanError, msg=bad):
                parse_mask(KLINE, bad)

    def test_valid_did(self) -> None:
        """did:<lowercase method>:<id>, bounded."""
        self.assertTrue(valid_did("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"))
        self.assertTrue(valid_did("did:web:example.com"))
        for bad in ("did:web:", "did:web:example.com:", "did:web:a b", "did:" + "a" * 300, "notadid"):
            self.assertFalse(valid_did(bad), bad)

    def test_shape_of_config_bans(self) -> None:
        """A config-file ban's kind is decided by its shape."""
        self.assertEqual(shape_of("did:plc:x"), KLINE)
        self.assertEqual(shape_of("*@host.example"), KLINE)
        self.assertEqual(shape_of("192.0.2.0/24"), DLINE)


class ValueTests(unittest.TestCase):
    """Durations and reasons."""

    def test_durations(self) -> None:
        """Whole minutes up to a year; 0 is permanent; anything else refused."""
        self.assertIsNone(parse_duration("0"))
        self.assertEqual(parse_duration("90"), 5400)
        self.assertEqual(parse_duration(str(MAX_DURATION // 60)), MAX_DURATION)
        for bad in (str(MAX_DURATION // 60 + 1), "-5", "1.5", "١٢", "9" * 20, ""):
            with self.assertRaises(BanError, msg=bad):
                parse_duration(bad)

    def test_reasons(self) -> None:
        """Control characters become spaces, long reasons are cut on a character, empty gets a default; a peer's
        reason is refused instead."""
        self.assertEqual(clean_reason("spam\x01\x02bot"), "spam  bot")
        self.assertEqual(clean_reason(""), "No reason given")
        long = clean_reason("é" * 500)
        self.assertLessEqual(len(long.encode()), MAX_REASON_BYTES)
        self.assertTrue(long.startswith("é"))
        self.assertIsNone(reason_problem("spam"))
        for bad in ("", "a\r\nb", "x" * (MAX_REASON_BYTES + 1), 5, None):
            self.assertIsNotNone(reason_problem(bad), repr(bad))


class MatchTests(unittest.TestCase):
    """Matching a connection against the list."""

    def test_dline_exact_and_network(self) -> None:
        """An exact address and a network match their addresses (IPv4-mapped too) and nothing else."""
        bans = BanList([_ban(DLINE, "192.0.2.7"), _ban(DLINE, "198.51.100.0/24"), _ban(DLINE, "2001:db8::/32")])
        self.assertEqual(bans.dline_for("192.0.2.7", 0).mask, "192.0.2.7")  # type: ignore[union-attr]
        self.assertEqual(bans.dline_for("::ffff:198.51.100.200", 0).mask, "198.51.100.0/24")  # type: ignore[union-attr]
        self.assertEqual(bans.dline_for("2001:db8:1::5", 0).mask, "2001:db8::/32")  # type: ignore[union-attr]
        for ok in ("192.0.2.8", "198.51.101.1", "2001:db9::1", "not an ip", ""):
            self.assertIsNone(bans.dline_for(ok, 0), ok)

    def test_kline_user_host(self) -> None:
        """user@host globs match the username (with or without its ~) at the IP or the visible host."""
        bans = BanList([_ban(KLINE, "bot*@192.0.2.*"), _ban(KLINE, "*@freeq/guest-x"),
                        _ban(KLINE, "evil@198.51.100.0/24")])
        self.assertIsNotNone(bans.kline_for("~bot1", "freeq/guest", "192.0.2.5", None, 0))
        self.assertIsNotNone(bans.kline_for("~anyone", "freeq/guest-x", "203.0.113.1", None, 0))
        self.assertIsNotNone(bans.kline_for("~evil", "h", "198.51.100.77", None, 0))
        self.assertIsNone(bans.kline_for("~evil", "h", "198.51.101.77", None, 0))
        self.assertIsNone(bans.kline_for("~robot", "h", "192.0.2.5", None, 0))
        self.assertIsNone(bans.kline_for("~bot1", "h", "192.0.3.5", None, 0))

    def test_kline_did(self) -> None:
        """A DID K-line matches that account only, exactly."""
        bans = BanList([_ban(KLINE, "did:plc:aaaa")])
        self.assertIsNotNone(bans.kline_for("~u", "h", "192.0.2.1", "did:plc:aaaa", 0))
        self.assertIsNone(bans.kline_for("~u", "h", "192.0.2.1", "did:plc:aaaab", 0))
        self.assertIsNone(bans.kline_for("~u", "h", "192.0.2.1", None, 0))

    def test_expiry(self) -> None:
        """An expired ban matches nothing and is listed for removal; a permanent one never expires."""
        bans = BanList([_ban(DLINE, "192.0.2.1", expires=100.0), _ban(KLINE, "did:plc:x", expires=100.0),
                        _ban(KLINE, "*@192.0.2.2", expires=100.0), _ban(DLINE, "192.0.2.3")])
        self.assertIsNotNone(bans.dline_for("192.0.2.1", 99.0))
        self.assertIsNone(bans.dline_for("192.0.2.1", 100.0))
        self.assertIsNone(bans.kline_for("~u", "h", "192.0.2.9", "did:plc:x", 100.0))
        self.assertIsNone(bans.kline_for("~u", "h", "192.0.2.2", None, 100.0))
        self.assertEqual(len(bans.expired(100.0)), 3)
        self.assertIsNotNone(bans.dline_for("192.0.2.3", 1e12))

    def test_replace_and_remove(self) -> None:
        """A ban on the same mask replaces the first; removing empties every index."""
        bans = BanList()
        self.assertIsNone(bans.add(_ban(DLINE, "192.0.2.0/24", ban_id="a")))
        old = bans.add(_ban(DLINE, "192.0.2.0/24", ban_id="b"))
        self.assertEqual(old.id if old else None, "a")  # type: ignore[union-attr]
        self.assertEqual(len(bans), 1)
        self.assertEqual(bans.ids, {"b"})
        bans.add(_ban(KLINE, "did:plc:x"))
        bans.add(_ban(KLINE, "*@host.example"))
        for kind, mask in ((DLINE, "192.0.2.0/24"), (KLINE, "did:plc:x"), (KLINE, "*@host.example")):
            self.assertIsNotNone(bans.remove(kind, mask))
        self.assertIsNone(bans.dline_for("192.0.2.1", 0))
        self.assertIsNone(bans.kline_for("~u", "host.example", "192.0.2.1", "did:plc:x", 0))
        self.assertEqual((len(bans), bans.ids), (0, set()))

    def test_many_networks_cost_one_lookup_per_prefix(self) -> None:
        """10,000 D-line networks of one prefix length: a miss is one dict look-up, not 10,000 comparisons."""
        bans = BanList(_ban(DLINE, f"10.{i // 256}.{i % 256}.0/24") for i in range(10000))
        start = time.perf_counter()
        for _ in range(1000):
            self.assertIsNone(bans.dline_for("192.0.2.1", 0))
        self.assertLess(time.perf_counter() - start, 1.0)
        self.assertIsNotNone(bans.dline_for("10.39.15.200", 0))

    def test_config_bans(self) -> None:
        """Config pairs compile by shape, permanent, origin "config"; a bad one is reported, not kept."""
        bans, problems = compile_config_bans([("192.0.2.0/24", "abuse"), ("did:plc:x", ""), ("*@*", "everyone"),
                                              ("nonsense", "x")])
        self.assertEqual(sorted((b.kind, b.mask, b.origin) for b in bans),
                         [(DLINE, "192.0.2.0/24", "config"), (KLINE, "did:plc:x", "config")])
        self.assertEqual(len(problems), 2)
        self.assertIsNotNone(bans.dline_for("192.0.2.9", 0))


class ConfigFileTests(unittest.TestCase):
    """The config file's [[kline]] blocks are refused at load when a mask is not a ban KLINE/DLINE would accept."""

    def test_bad_kline_block_refused(self) -> None:
        """``*@*`` or a /0 network in a [[kline]] block: ConfigError naming the block; good ones load."""
        from freeq.config import ConfigError, parse_kline_blocks

        good = parse_kline_blocks([{"mask": "*@192.0.2.0/24", "reason": "abuse"}, {"mask": "did:plc:x", "reason": "x"}])
        self.assertEqual(len(good), 2)
        for mask in ("*@*", "0.0.0.0/0", "did:plc:"):
            with self.assertRaises(ConfigError) as caught:
                parse_kline_blocks([{"mask": mask, "reason": "r"}])
            self.assertIn("[[kline]] #1", str(caught.exception))
