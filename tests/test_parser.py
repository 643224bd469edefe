"""Unit tests for the wire-level helpers: the IRC line parser and builder, ULIDs and name rules."""
from __future__ import annotations

from twisted.trial import unittest

from freeq.irc import ulid
from freeq.irc.names import fold, is_channel, valid_channel, valid_nick
from freeq.irc.parser import (
    Message, build, build_text, escape_tag_value, format_tags, parse, unescape_tag_value,
)
from freeq.irc.ulid import ULIDGenerator

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class ParseTagsTests(unittest.TestCase):
    """IRCv3 message tags on incoming lines."""

    def test_escapes(self) -> None:
        """Every defined escape (\\: \\s \\\\ \\r \\n) decodes to its character."""
        msg = parse(r"@k=a\:b\sc\\d\re\nf PING x")
        assert msg is not None
        self.assertEqual(msg.tags, {"k": "a;b c\\d\re\nf"})

    def test_unknown_escape_keeps_character(self) -> None:
        """An unknown escape such as \\b drops the backslash and keeps the character."""
        msg = parse(r"@k=a\bc PING x")
        assert msg is not None
        self.assertEqual(msg.tags, {"k": "abc"})

    def test_trailing_backslash_dropped(self) -> None:
        """A lone backslash at the end of a value is dropped."""
        msg = parse("@k=abc\\ PING x")
        assert msg is not None
        self.assertEqual(msg.tags, {"k": "abc"})

    def test_key_without_value(self) -> None:
        """A key with no ``=`` and a key with an empty value both map to the empty string."""
        msg = parse("@a;b=;c=1 PING x")
        assert msg is not None
        self.assertEqual(msg.tags, {"a": "", "b": "", "c": "1"})

    def test_empty_items_and_empty_keys_skipped(self) -> None:
        """Empty tag items (``;;``) and items with an empty key (``=v``) are ignored."""
        msg = parse("@;a=1;;=v;b=2; PING x")
        assert msg is not None
        self.assertEqual(msg.tags, {"a": "1", "b": "2"})

    def test_client_only_tag_and_vendor_key(self) -> None:
        """Client-only (``+``) and vendor-prefixed keys are kept verbatim."""
        msg = parse("@+example.com/foo=bar;+typing=active TAGMSG #c")
        assert msg is not None
        self.assertEqual(msg.tags, {"+example.com/foo": "bar", "+typing": "active"})

    def test_no_tags_is_none(self) -> None:
        """A line without ``@`` has ``tags`` set to ``None``, not an empty dict."""
        msg = parse("PING x")
        assert msg is not None
        self.assertIsNone(msg.tags)

    def test_escape_helpers_round_trip(self) -> None:
        """escape_tag_value and unescape_tag_value are inverses for every special character."""
        raw = "a; b\\c\rd\ne"
        escaped = escape_tag_value(raw)
        self.assertEqual(escaped, "a\\:\\sb\\\\c\\rd\\ne")
        self.assertEqual(unescape_tag_value(escaped), raw)


class ParseTests(unittest.TestCase):
    """Source, command and parameter parsing."""

    def test_source_prefix(self) -> None:
        """A leading ``:source`` is split off without its colon."""
        msg = parse(":nick!user@host PRIVMSG #c :hi")
        assert msg is not None
        self.assertEqual(msg.source, "nick!user@host")
        self.assertEqual(msg.command, "PRIVMSG")
        self.assertEqual(msg.params, ["#c", "hi"])

    def test_tags_and_source(self) -> None:
        """Tags, then source, then command are all recognised together."""
        msg = parse("@time=x :srv NOTICE me :text here")
        assert msg is not None
        self.assertEqual((msg.tags, msg.source, msg.command, msg.params),
                         ({"time": "x"}, "srv", "NOTICE", ["me", "text here"]))

    def test_command_upper_cased(self) -> None:
        """The command is upper-cased; parameters keep their case."""
        msg = parse("privmsg #Chan :Hello")
        assert msg is not None
        self.assertEqual(msg.command, "PRIVMSG")
        self.assertEqual(msg.params, ["#Chan", "Hello"])

    def test_numeric_command(self) -> None:
        """A three-digit numeric is a command like any other."""
        msg = parse(":srv 001 me :Welcome")
        assert msg is not None
        self.assertEqual(msg.command, "001")
        self.assertEqual(msg.params, ["me", "Welcome"])

    def test_multiple_spaces_between_params(self) -> None:
        """Runs of spaces between tags, source, command and middle params count as one separator."""
        msg = parse("@a=1   :src   MODE   #c   +o    nick   :x  y")
        assert msg is not None
        self.assertEqual(msg.tags, {"a": "1"})
        self.assertEqual(msg.source, "src")
        self.assertEqual(msg.command, "MODE")
        self.assertEqual(msg.params, ["#c", "+o", "nick", "x  y"])

    def test_leading_spaces_before_command(self) -> None:
        """Spaces before the command (with no tags or source) are skipped."""
        msg = parse("   PING x")
        assert msg is not None
        self.assertEqual((msg.command, msg.params), ("PING", ["x"]))

    def test_trailing_with_spaces_and_colons(self) -> None:
        """The trailing parameter keeps inner spaces, a leading colon after the first and later ``:``."""
        msg = parse("PRIVMSG #c ::) smile :again  ")
        assert msg is not None
        self.assertEqual(msg.params, ["#c", ":) smile :again  "])

    def test_colon_inside_middle_param(self) -> None:
        """A colon that does not start a parameter is part of that parameter."""
        msg = parse("PRIVMSG a:b c:d")
        assert msg is not None
        self.assertEqual(msg.params, ["a:b", "c:d"])

    def test_empty_trailing(self) -> None:
        """``:`` alone is an empty trailing parameter, distinct from no parameter."""
        msg = parse("TOPIC #c :")
        assert msg is not None
        self.assertEqual(msg.params, ["#c", ""])
        msg2 = parse("TOPIC #c")
        assert msg2 is not None
        self.assertEqual(msg2.params, ["#c"])

    def test_trailing_only_param(self) -> None:
        """A trailing parameter straight after the command is the only parameter."""
        msg = parse("QUIT :bye now")
        assert msg is not None
        self.assertEqual(msg.params, ["bye now"])

    def test_trailing_whitespace_without_colon_ignored(self) -> None:
        """Trailing spaces after the last middle parameter do not create an empty parameter."""
        msg = parse("NICK alice   ")
        assert msg is not None
        self.assertEqual(msg.params, ["alice"])

    def test_fifteen_plus_params(self) -> None:
        """More than 15 parameters are all returned; the parser does not cap them."""
        words = [f"p{i}" for i in range(17)]
        msg = parse("CMD " + " ".join(words) + " :last one")
        assert msg is not None
        self.assertEqual(msg.params, words + ["last one"])
        self.assertEqual(len(msg.params), 18)

    def test_lines_without_command_are_none(self) -> None:
        """Empty lines and lines with only tags, only a source or no command before the trailing give ``None``."""
        for line in ("", "   ", "@a=1", "@a=1 ", "@a=1    ", ":src", ":src ", ":src   ",
                     "@a=1 :src", "@a=1 :src ", ":src :x y", "  :x y", "@a=1 :src :x"):
            self.assertIsNone(parse(line), line)

    def test_unicode_params(self) -> None:
        """Non-ASCII text passes through unchanged."""
        msg = parse("PRIVMSG #café :héllo wörld ✓")
        assert msg is not None
        self.assertEqual(msg.params, ["#café", "héllo wörld ✓"])


class BuildTests(unittest.TestCase):
    """Serialising lines for the wire."""

    def test_plain_line_crlf(self) -> None:
        """A simple line is CRLF-terminated bytes with no colon on a plain last word."""
        self.assertEqual(build("srv", "PONG", "srv", "token"), b":srv PONG srv token\r\n")

    def test_no_source_no_params(self) -> None:
        """Without source or params only the command is written."""
        self.assertEqual(build(None, "PING"), b"PING\r\n")
        self.assertEqual(build("", "PING"), b"PING\r\n")

    def test_colon_rules(self) -> None:
        """The last param gets ``:`` when empty, containing a space or starting with ``:``; only then."""
        self.assertEqual(build(None, "X", "a", ""), b"X a :\r\n")
        self.assertEqual(build(None, "X", "a", "b c"), b"X a :b c\r\n")
        self.assertEqual(build(None, "X", "a", ":b"), b"X a ::b\r\n")
        self.assertEqual(build(None, "X", "a", "b:c"), b"X a b:c\r\n")

    def test_build_text_always_colon(self) -> None:
        """build_text puts a colon on the last parameter even when it is one word."""
        self.assertEqual(build_text("srv", "NOTICE", "me", "hi"), b":srv NOTICE me :hi\r\n")
        self.assertEqual(build_text(None, "ERROR", "x"), b"ERROR :x\r\n")

    def test_tags_escaped(self) -> None:
        """Tag values are escaped and empty-valued tags are written as bare keys."""
        line = build("s", "TAGMSG", "#c", tags={"a": "x y;z\\", "b": "", "c": "\r\n"})
        self.assertEqual(line, b"@a=x\\sy\\:z\\\\;b;c=\\r\\n :s TAGMSG #c\r\n")
        line2 = build_text("s", "PRIVMSG", "#c", "hi", tags={"k": "v"})
        self.assertEqual(line2, b"@k=v :s PRIVMSG #c :hi\r\n")

    def test_empty_tags_dict_omitted(self) -> None:
        """An empty tag dict writes no ``@`` section."""
        self.assertEqual(build(None, "PING", "x", tags={}), b"PING x\r\n")

    def test_format_tags(self) -> None:
        """format_tags joins ``k=v`` pairs with ``;`` and no leading ``@``."""
        self.assertEqual(format_tags({"a": "1", "b": ""}), "a=1;b")

    def test_utf8(self) -> None:
        """Text is encoded as UTF-8; an unencodable lone surrogate becomes ``?`` rather than raising."""
        self.assertEqual(build_text(None, "PRIVMSG", "#c", "é✓"), "PRIVMSG #c :é✓\r\n".encode("utf-8"))
        self.assertEqual(build_text(None, "PRIVMSG", "#c", "a\udc80b"), b"PRIVMSG #c :a?b\r\n")


class RoundTripTests(unittest.TestCase):
    """build() then parse() gives back what went in."""

    def _round(self, data: bytes) -> Message:
        self.assertTrue(data.endswith(b"\r\n"))
        msg = parse(data[:-2].decode("utf-8"))
        assert msg is not None
        return msg

    def test_round_trip_params(self) -> None:
        """Awkward last parameters (empty, spaced, colon-led) survive build then parse."""
        for last in ("", "a b", ":x", "::", "plain", " lead", "trail "):
            msg = self._round(build("src", "PRIVMSG", "#c", last))
            self.assertEqual(msg.params, ["#c", last], repr(last))
            self.assertEqual(msg.source, "src")

    def test_round_trip_tags(self) -> None:
        """Tag values with every special character survive build then parse."""
        tags = {"a": "; \\\r\n", "b": "", "+c/d": "é"}
        msg = self._round(build_text("s", "PRIVMSG", "#c", "hi there", tags=tags))
        self.assertEqual(msg.tags, tags)
        self.assertEqual(msg.params, ["#c", "hi there"])

    def test_round_trip_build_text(self) -> None:
        """build_text output parses back to the same parameters."""
        msg = self._round(build_text("srv", "005", "me", "A=1", "B", "are supported"))
        self.assertEqual(msg.params, ["me", "A=1", "B", "are supported"])


class FakeNow:
    """A settable clock for ULIDGenerator."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def decode_crockford(text: str) -> int:
    """Decode a Crockford base32 string to an int."""
    value = 0
    for ch in text:
        value = value * 32 + CROCKFORD.index(ch)
    return value


class ULIDTests(unittest.TestCase):
    """The msgid generator."""

    def test_shape(self) -> None:
        """A ULID is 26 characters from the Crockford alphabet (no I, L, O, U)."""
        u = ULIDGenerator(FakeNow(1700000000.5)).new()
        self.assertEqual(len(u), 26)
        self.assertTrue(set(u) <= set(CROCKFORD), u)

    def test_time_prefix_decodes_to_ms(self) -> None:
        """The first 10 characters decode to the millisecond timestamp from ``now``."""
        u = ULIDGenerator(FakeNow(1700000000.123)).new()
        self.assertEqual(decode_crockford(u[:10]), 1700000000123)

    def test_monotonic_within_millisecond(self) -> None:
        """Many ULIDs in one millisecond are strictly increasing and share the time prefix."""
        gen = ULIDGenerator(FakeNow(1700000000.0))
        ids = [gen.new() for _ in range(200)]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), 200)
        self.assertEqual({i[:10] for i in ids}, {ids[0][:10]})
        self.assertEqual(decode_crockford(ids[1][10:]) - decode_crockford(ids[0][10:]), 1)

    def test_increasing_across_milliseconds(self) -> None:
        """A later millisecond sorts after the earlier one."""
        now = FakeNow(1700000000.0)
        gen = ULIDGenerator(now)
        a = gen.new()
        now.t += 0.001
        b = gen.new()
        self.assertLess(a, b)
        self.assertEqual(decode_crockford(b[:10]) - decode_crockford(a[:10]), 1)

    def test_clock_going_backwards_stays_monotonic(self) -> None:
        """If ``now`` steps back, IDs keep the last millisecond and still increase."""
        now = FakeNow(1700000000.5)
        gen = ULIDGenerator(now)
        a = gen.new()
        now.t -= 10
        b = gen.new()
        self.assertLess(a, b)
        self.assertEqual(a[:10], b[:10])

    def test_random_part_overflow_stays_monotonic(self) -> None:
        """When the 80-bit random part is at its maximum, the next ID in that ms still sorts later."""
        self.patch(ulid.os, "urandom", lambda n: b"\xff" * n)
        gen = ULIDGenerator(FakeNow(1700000000.0))
        a = gen.new()
        b = gen.new()
        self.assertLess(a, b)
        self.assertEqual(decode_crockford(b[:10]), decode_crockford(a[:10]) + 1)


class NameTests(unittest.TestCase):
    """Nick and channel rules with the ascii casemapping."""

    def test_fold_ascii_only(self) -> None:
        """fold lower-cases ASCII letters only; ``[]\\~`` and non-ASCII are untouched."""
        self.assertEqual(fold("NiCK[]\\~"), "nick[]\\~")
        self.assertEqual(fold("ÉCOLE"), "École")

    def test_valid_nick_basic(self) -> None:
        """Ordinary nicks, with IRC specials, dashes and digits after the first, are valid."""
        for nick in ("alice", "a", "Bob_", "[x]", "a-1", "x\\y|z^", "`tick", "{b}"):
            self.assertTrue(valid_nick(nick, 64), nick)

    def test_valid_nick_dots_and_unicode(self) -> None:
        """AT Protocol handles with dots and non-ASCII nicks are valid."""
        self.assertTrue(valid_nick("alice.bsky.social", 64))
        self.assertTrue(valid_nick("café", 64))
        self.assertTrue(valid_nick("日本", 64))

    def test_valid_nick_length_in_bytes(self) -> None:
        """The limit counts UTF-8 bytes, not characters."""
        self.assertTrue(valid_nick("a" * 64, 64))
        self.assertFalse(valid_nick("a" * 65, 64))
        self.assertTrue(valid_nick("é" * 32, 64))  # 64 bytes
        self.assertFalse(valid_nick("é" * 33, 64))  # 66 bytes, 33 characters
        self.assertFalse(valid_nick("a" + "é" * 32, 64))  # 65 bytes
        self.assertFalse(valid_nick("", 64))

    def test_valid_nick_forbidden_characters(self) -> None:
        """IRC syntax characters, whitespace, controls, DEL and U+FFFD are rejected anywhere."""
        for ch in " ,*?!@#&:$%+~\x00\x01\t\r\n\x7f\ufffd":
            self.assertFalse(valid_nick("ab" + ch + "c", 64), repr(ch))

    def test_valid_nick_c1_controls_rejected(self) -> None:
        """C1 control characters (U+0080..U+009F) are controls and are rejected too."""
        for ch in ("\x80", "\x85", "\x9f"):
            self.assertFalse(valid_nick("ab" + ch, 64), repr(ch))

    def test_valid_nick_bad_first_character(self) -> None:
        """A nick may not start with a digit, a dash or a channel prefix."""
        for nick in ("1abc", "9", "-abc", "#abc", "&abc"):
            self.assertFalse(valid_nick(nick, 64), nick)

    def test_valid_channel(self) -> None:
        """Channels need a ``#``/``&`` prefix, a name, no space/comma/BEL/controls, and fit in bytes."""
        self.assertTrue(valid_channel("#freeq", 64))
        self.assertTrue(valid_channel("&local", 64))
        self.assertTrue(valid_channel("#café", 64))
        self.assertTrue(valid_channel("#" + "a" * 63, 64))
        self.assertFalse(valid_channel("#" + "a" * 64, 64))
        self.assertFalse(valid_channel("#" + "é" * 32, 64))  # 65 bytes
        for bad in ("#", "", "chan", "!chan", "#a b", "#a,b", "#a\x07", "#a\x00", "#a\r", "#a\x01"):
            self.assertFalse(valid_channel(bad, 64), repr(bad))

    def test_is_channel(self) -> None:
        """is_channel looks only at the prefix."""
        self.assertTrue(is_channel("#x"))
        self.assertTrue(is_channel("&x"))
        self.assertTrue(is_channel("#"))
        self.assertFalse(is_channel("x#"))
        self.assertFalse(is_channel(""))
