"""The conformance bugs of issue #12, each over real loopback sockets (pure parts unit-tested directly).

LUSERS peaks, labels on 421 and on messages to oneself, the 4094-byte client tag limit, 696 replies that
keep every parameter, LIST masks that start with ``#``, an empty realname, MONITOR after one's own nick
change, and ``--server-description``.
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.trial import unittest

from freeq.config import Config, ConfigError
from freeq.state.modes import HIDDEN_VALUE, MAX_KEY_LENGTH, shown_value
from freeq.tap import Options, config_from_options
from tests.support import IRCClient, Line, ServerFixture, asynctest, start_server

HOST = "freeq/guest"


async def start(case: unittest.TestCase, **overrides: Any) -> ServerFixture:
    """A loopback server with flood control off (these tests send bursts)."""
    overrides.setdefault("flood_rate", 0)
    return await start_server(case, **overrides)


def numeric(code: str, *first: str) -> Callable[[Line], bool]:
    """Match numeric ``code`` whose parameters after the recipient start with ``first``."""
    return lambda l: l.command == code and l.params[1:1 + len(first)] == list(first)


async def join(c: IRCClient, *channels: str) -> None:
    """Join ``channels`` one by one, waiting for each end of NAMES, then mark everything read."""
    for chan in channels:
        c.send(f"JOIN {chan}")
        await c.expect(lambda l: l.command == "366" and l.params[1] == chan)
    c.skip()


class LusersPeakTests(unittest.TestCase):
    """LUSERS 265/266: ``<current> <max>`` where max is the highest count seen, not ``--max-clients``."""

    @asynctest
    async def test_third_number_is_the_peak(self) -> None:
        """Three users, one leaves: 265 and 266 say 2 now and 3 at most (--max-clients is 50)."""
        srv = await start(self, max_clients=50)
        alice = await srv.client("alice")
        await srv.client("bob")
        carol = await srv.client("carol")
        carol.send("QUIT :bye")
        await carol.closed
        alice.send("LUSERS")
        lines = await alice.collect_until("266")
        by = {l.command: l for l in lines}
        self.assertEqual(by["265"].params[1:], ["2", "3", "Current local users 2, max 3"])
        self.assertEqual(by["266"].params[1:], ["2", "3", "Current global users 2, max 3"])

    @asynctest
    async def test_peak_in_the_welcome_burst(self) -> None:
        """The burst of a newcomer counts it: a lone user sees 1 and 1."""
        srv = await start(self)
        c = await srv.connect()
        c.send("NICK solo")
        c.send("USER solo 0 * :Solo")
        lines = await c.collect_until("422")
        by = {l.command: l for l in lines}
        self.assertEqual(by["265"].params[1:3], ["1", "1"])
        self.assertEqual(by["266"].params[1:3], ["1", "1"])


class LabelTests(unittest.TestCase):
    """labeled-response: 421 carries the label; a message to oneself gives the delivery and the labelled echo."""

    CAPS = ("labeled-response", "batch", "message-tags", "echo-message")

    @asynctest
    async def test_unknown_command_carries_the_label(self) -> None:
        """``@label=u1 FROBNICATE`` gets ``@label=u1 ... 421 alice FROBNICATE``; unlabelled, no tag."""
        srv = await start(self)
        alice = await srv.client("alice", caps=("labeled-response", "batch"))
        alice.send("@label=u1 FROBNICATE now")
        line = await alice.expect("421")
        self.assertEqual(line.tags, {"label": "u1"})
        self.assertEqual(line.params, ["alice", "FROBNICATE", "Unknown command"])
        alice.send("FROBNICATE")
        line = await alice.expect("421")
        self.assertEqual(line.tags, {})

    async def _to_self(self, srv: ServerFixture, command: str, text: str) -> tuple[Line, Line]:
        me = await srv.client(f"me{command.lower()}", caps=self.CAPS)
        tail = f" :{text}" if text else ""
        me.send(f"@label=s1;+t=1 {command} {me.nick}{tail}")
        first = await me.expect(command)
        second = await me.expect(command)
        await me.expect_not(command, after=(me,))
        await me.expect_not("BATCH")
        return first, second

    @asynctest
    async def test_privmsg_to_oneself_delivery_and_labelled_echo(self) -> None:
        """PRIVMSG to oneself with echo-message: the delivery without the label, then the echo with it."""
        srv = await start(self)
        delivery, echo = await self._to_self(srv, "PRIVMSG", "hello me")
        self.assertNotIn("label", delivery.tags)
        self.assertEqual(echo.tags["label"], "s1")
        self.assertEqual(delivery.params, echo.params)
        self.assertEqual(delivery.tags["msgid"], echo.tags["msgid"])
        self.assertEqual(delivery.tags["+t"], "1")

    @asynctest
    async def test_notice_to_oneself_delivery_and_labelled_echo(self) -> None:
        """The same for NOTICE."""
        srv = await start(self)
        delivery, echo = await self._to_self(srv, "NOTICE", "note to self")
        self.assertNotIn("label", delivery.tags)
        self.assertEqual(echo.tags["label"], "s1")

    @asynctest
    async def test_tagmsg_to_oneself_delivery_and_labelled_echo(self) -> None:
        """The same for TAGMSG."""
        srv = await start(self)
        delivery, echo = await self._to_self(srv, "TAGMSG", "")
        self.assertNotIn("label", delivery.tags)
        self.assertEqual(echo.tags["label"], "s1")
        self.assertEqual((delivery.tags["+t"], echo.tags["+t"]), ("1", "1"))

    @asynctest
    async def test_to_oneself_without_echo_message(self) -> None:
        """Without echo-message the delivery is not a response: it comes unlabelled and the label gets an ACK."""
        srv = await start(self)
        me = await srv.client("me", caps=("labeled-response", "batch", "message-tags"))
        me.send("@label=s2 PRIVMSG me :just once")
        delivery = await me.expect("PRIVMSG")
        self.assertNotIn("label", delivery.tags)
        ack = await me.expect("ACK")
        self.assertEqual(ack.tags, {"label": "s2"})
        await me.expect_not("PRIVMSG", after=(me,))


class TagLimitTests(unittest.TestCase):
    """message-tags: a client's tag data (between '@' and the space) is at most 4094 bytes."""

    @asynctest
    async def test_4095_bytes_of_tag_data_get_417_and_are_not_relayed(self) -> None:
        """4095 bytes: 417 and nothing relayed; 4094 bytes: relayed intact; the connection keeps working."""
        srv = await start(self)
        alice = await srv.client("alice", caps=("message-tags",))
        bob = await srv.client("bob", caps=("message-tags",))
        over = "+big=" + "x" * (4095 - len("+big="))
        alice.send(f"@{over} PRIVMSG bob :too much")
        line = await alice.expect("417")
        self.assertEqual(line.params, ["alice", "Input line was too long"])
        await bob.expect_not("PRIVMSG", after=(alice,))
        fits = "+big=" + "y" * (4094 - len("+big="))
        alice.send(f"@{fits} PRIVMSG bob :just fits")
        got = await bob.expect("PRIVMSG")
        self.assertEqual(got.params, ["bob", "just fits"])
        self.assertEqual(len(got.tags["+big"]), 4094 - len("+big="))
        await alice.expect_not("417", after=(alice,))


class InvalidValueTests(unittest.TestCase):
    """696 ``<channel> <mode> <param> <description>`` keeps every parameter; what cannot be echoed is ``*``."""

    @asynctest
    async def test_empty_limit_keeps_the_param_slot(self) -> None:
        """``MODE #c +l :`` (an empty value) gets 696 with ``*`` where the empty value was."""
        srv = await start(self)
        alice = await srv.client("alice")
        await join(alice, "#c")
        alice.send("MODE #c +l :")
        line = await alice.expect("696")
        self.assertEqual(line.params, ["alice", "#c", "l", HIDDEN_VALUE, "Invalid limit"])

    @asynctest
    async def test_limit_that_is_not_one_word(self) -> None:
        """A limit with a space is refused and shown as ``*``, so the reply stays one well-formed line."""
        srv = await start(self)
        alice = await srv.client("alice")
        await join(alice, "#c")
        alice.send("MODE #c +l :12 34")
        line = await alice.expect("696")
        self.assertEqual(line.params, ["alice", "#c", "l", HIDDEN_VALUE, "Invalid limit"])
        alice.send("MODE #c +l many")
        line = await alice.expect("696")
        self.assertEqual(line.params, ["alice", "#c", "l", "many", "Invalid limit"])

    @asynctest
    async def test_over_long_key_is_echoed_as_star(self) -> None:
        """A 24-character key is refused with 696 showing ``*``, not the key; the channel stays keyless."""
        srv = await start(self)
        alice = await srv.client("alice")
        await join(alice, "#c")
        alice.send("MODE #c +k " + "k" * (MAX_KEY_LENGTH + 1))
        line = await alice.expect("696")
        self.assertEqual(line.params[:4], ["alice", "#c", "k", HIDDEN_VALUE])
        self.assertEqual(len(line.params), 5)
        alice.send("MODE #c")
        self.assertEqual((await alice.expect("324")).params[1:], ["#c", "+nt"])

    def test_shown_value(self) -> None:
        """The pure rule: a word within the length is itself; empty, spaced, ':'-led or too long is ``*``."""
        self.assertEqual(shown_value("abc", 3), "abc")
        self.assertEqual(shown_value("a,b", 5), "a,b")
        for bad in ("", "abcd", "a b", ":x"):
            self.assertEqual(shown_value(bad, 3), HIDDEN_VALUE, bad)


class ListMaskTests(unittest.TestCase):
    """LIST with a mask that starts with '#' matches channel names instead of naming one channel."""

    @asynctest
    async def test_hash_mask(self) -> None:
        """``LIST #c*n2`` lists #chan2 and #cxn2 but not #chan3; a plain name still lists just that channel."""
        srv = await start(self)
        alice = await srv.client("alice")
        await join(alice, "#chan2", "#cxn2", "#chan3")
        alice.send("LIST #c*n2")
        lines = await alice.collect_until("323")
        self.assertEqual(sorted(l.params[1] for l in lines if l.command == "322"), ["#chan2", "#cxn2"])
        alice.send("LIST #ch?n3")
        lines = await alice.collect_until("323")
        self.assertEqual([l.params[1] for l in lines if l.command == "322"], ["#chan3"])
        alice.send("LIST #chan3")
        lines = await alice.collect_until("323")
        self.assertEqual([l.params[1] for l in lines if l.command == "322"], ["#chan3"])


class EmptyRealnameTests(unittest.TestCase):
    """``USER u * * :`` is missing its realname."""

    @asynctest
    async def test_empty_realname_is_461(self) -> None:
        """An empty realname gets 461 and no registration; a proper USER afterwards registers."""
        srv = await start(self)
        c = await srv.connect()
        c.nick = "empty"
        c.send("NICK empty")
        c.send("USER u * * :")
        line = await c.expect("461")
        self.assertEqual(line.params[1:], ["USER", "Not enough parameters"])
        await c.expect_not("001", after=(c,))
        c.send("USER u * * :Real Name")
        await c.expect("001")


class MonitorOwnNickTests(unittest.TestCase):
    """MONITOR numerics after a nick change are addressed to the current nick."""

    @asynctest
    async def test_watching_own_nicks_across_a_rename(self) -> None:
        """alice watches alice and alice2, then becomes alice2: 731 and 730 both name alice2 as recipient;
        another watcher of both still gets 731 for the old nick and 730 for the new one."""
        srv = await start(self)
        alice = await srv.client("alice")
        watcher = await srv.client("watcher")
        alice.send("MONITOR + alice,alice2")
        await alice.expect("731")
        watcher.send("MONITOR + alice,alice2")
        await watcher.expect("731")
        watcher.skip()
        alice.send("NICK alice2")
        await alice.expect("NICK")
        offline = await alice.expect("731")
        self.assertEqual(offline.params, ["alice2", "alice"])
        online = await alice.expect("730")
        self.assertEqual(online.params, ["alice2", f"alice2!~alice@{HOST}"])
        self.assertEqual((await watcher.expect("731")).params, ["watcher", "alice"])
        self.assertEqual((await watcher.expect("730")).params, ["watcher", f"alice2!~alice@{HOST}"])


class ServerDescriptionTests(unittest.TestCase):
    """``--server-description``: this server's line in LINKS, INFO and WHOIS 312."""

    @asynctest
    async def test_description_in_links_info_and_whois(self) -> None:
        """With the flag, LINKS, INFO and WHOIS show the text; without it they read as before."""
        await self._default_as_before()
        srv = await start(self, server_description="Test box in Berlin")
        alice = await srv.client("alice")
        alice.send("LINKS")
        line = await alice.expect("364")
        self.assertEqual(line.params[1:], ["freeq", "freeq", "0 Test box in Berlin"])
        alice.send("INFO")
        lines = await alice.collect_until("374")
        self.assertIn("Test box in Berlin", [l.params[1] for l in lines if l.command == "371"])
        alice.send("WHOIS alice")
        line = await alice.expect("312")
        self.assertEqual(line.params[1:], ["alice", "freeq", "Test box in Berlin"])

    async def _default_as_before(self) -> None:
        """Without the flag: '<network> IRC server' in LINKS and WHOIS, and INFO's three lines."""
        srv = await start(self)
        alice = await srv.client("alice")
        alice.send("LINKS")
        self.assertEqual((await alice.expect("364")).params[-1], "0 freeq IRC server")
        alice.send("WHOIS alice")
        self.assertEqual((await alice.expect("312")).params[-1], "freeq IRC server")
        alice.send("INFO")
        lines = await alice.collect_until("374")
        self.assertEqual(len([l for l in lines if l.command == "371"]), 3)

    def test_flag_and_validation(self) -> None:
        """The flag reaches the Config; control characters and over 200 bytes stop start-up."""
        options = Options()
        options.parseOptions(["--server-description", "Fast and friendly"])
        self.assertEqual(config_from_options(options, {}).server_description, "Fast and friendly")
        self.assertEqual(config_from_options(_parsed(), {}).server_description, "")
        for bad in ("two\nlines", "bell\x07", "x" * 201):
            with self.assertRaises(ConfigError) as ctx:
                Config(server_description=bad).validate()
            self.assertIn("--server-description", str(ctx.exception))
        Config(server_description="é" * 100).validate()


def _parsed(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options
