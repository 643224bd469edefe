"""Registration over real loopback sockets: NICK/USER, the welcome burst, PASS, CAP, PING and QUIT."""
from __future__ import annotations

import re
from typing import Any

from twisted.trial import unittest

from tests.support import IRCClient, Line, ServerFixture, asynctest, sleep, start_server


async def start(case: unittest.TestCase, **overrides: Any) -> ServerFixture:
    """A loopback server with flood control off unless asked for."""
    overrides.setdefault("flood_rate", 0)
    return await start_server(case, **overrides)


def numeric(code: str, *params: str) -> Any:
    """A predicate for numeric ``code`` whose parameters after the target start with ``params``."""
    return lambda l: l.command == code and l.params[1:1 + len(params)] == list(params)


async def register(c: IRCClient, nick: str, user: str = "tester") -> list[Line]:
    """Send NICK/USER on a raw connection; return the burst up to the end of the MOTD."""
    c.nick = nick
    c.send(f"NICK {nick}")
    c.send(f"USER {user} 0 * :Real Name")
    return await c.collect_until(lambda l: l.command in ("376", "422"))


async def join(c: IRCClient, channel: str) -> None:
    """Join ``channel`` and wait for the end of NAMES."""
    c.send(f"JOIN {channel}")
    await c.expect(lambda l: l.command == "366" and l.params[1] == channel)


def isupport(lines: list[Line]) -> dict[str, str]:
    """The ISUPPORT tokens of a burst as a dict (a token without ``=`` maps to ``""``)."""
    tokens: dict[str, str] = {}
    for line in lines:
        if line.command == "005":
            for tok in line.params[1:-1]:
                key, _, value = tok.partition("=")
                tokens[key] = value
    return tokens


def cap_tokens(line: Line) -> set[str]:
    """The capability names (without values) of a ``CAP ... LS/LIST/ACK`` line."""
    return {t.split("=", 1)[0] for t in line.params[-1].split()}


class WelcomeBurstTests(unittest.TestCase):
    """What a client receives when NICK and USER complete registration."""

    @asynctest
    async def test_burst_order_and_contents(self) -> None:
        """NICK+USER yields 001-004, 005, LUSERS and 422 (no MOTD), in that order, addressed to the nick."""
        srv = await start(self)
        c = await srv.connect()
        lines = await register(c, "alice")
        codes = [l.command for l in lines]
        expected = ["001", "002", "003", "004", "005", "251", "252", "253", "254", "255", "265", "266", "422"]
        collapsed = [code for i, code in enumerate(codes) if i == 0 or code != codes[i - 1]]
        self.assertEqual(collapsed, expected)
        for line in lines:
            self.assertEqual(line.source, "freeq")
            self.assertEqual(line.params[0], "alice")
        welcome = lines[0]
        self.assertIn("alice!~tester@freeq/guest", welcome.params[-1])
        self.assertEqual(lines[3].params[1], "freeq")
        self.assertGreaterEqual(len(lines[3].params), 6)
        self.assertLessEqual(set("Biow"), set(lines[3].params[3]))
        self.assertLessEqual(set("beIiklmnopstv"), set(lines[3].params[4]))

    @asynctest
    async def test_motd_is_sent_when_configured(self) -> None:
        """With a configured MOTD the burst ends 375, one 372 per line, 376 (and no 422)."""
        srv = await start(self, motd=("first line", "second line"))
        c = await srv.connect()
        lines = await register(c, "alice")
        motd = [l for l in lines if l.command in ("375", "372", "376", "422")]
        self.assertEqual([l.command for l in motd], ["375", "372", "372", "376"])
        self.assertEqual([l.params[-1] for l in motd[1:3]], ["- first line", "- second line"])
        c.send("MOTD")
        await c.expect("375")
        await c.expect(numeric("372", "- first line"))
        await c.expect("376")

    @asynctest
    async def test_lusers_counts(self) -> None:
        """LUSERS in the burst counts registered clients, unregistered connections and channels."""
        srv = await start(self)
        alice = await srv.client("alice")
        await join(alice, "#one")
        await srv.connect()  # an unregistered connection
        c = await srv.connect()
        lines = await register(c, "bob")
        by_code = {l.command: l for l in lines}
        self.assertIn("There are 2 users", by_code["251"].params[-1])
        self.assertEqual(by_code["252"].params[1], "0")
        self.assertEqual(by_code["253"].params[1], "1")
        self.assertEqual(by_code["254"].params[1], "1")
        self.assertIn("I have 2 clients", by_code["255"].params[-1])
        # <current> <max>: the max is the peak count since start-up (issue #12), not --max-clients.
        self.assertEqual(by_code["265"].params[1:3], ["2", "2"])
        self.assertEqual(by_code["266"].params[1:3], ["2", "2"])

    @asynctest
    async def test_isupport_tokens(self) -> None:
        """005 advertises every token clients rely on, with the configured values."""
        srv = await start(self)
        c = await srv.connect()
        tokens = isupport(await register(c, "alice"))
        self.assertEqual(tokens["CASEMAPPING"], "ascii")
        self.assertEqual(tokens["CHANTYPES"], "#&")
        self.assertEqual(tokens["CHANMODES"], "beI,k,l,imnpst")
        self.assertEqual(tokens["PREFIX"], "(ov)@+")
        self.assertEqual(tokens["NICKLEN"], "64")
        self.assertEqual(tokens["CHANNELLEN"], "64")
        self.assertEqual(tokens["TOPICLEN"], "390")
        self.assertEqual(tokens["KICKLEN"], "390")
        self.assertEqual(tokens["AWAYLEN"], "390")
        self.assertEqual(tokens["MODES"], "4")
        self.assertEqual(tokens["NETWORK"], "freeq")
        self.assertEqual(tokens["STATUSMSG"], "@+")
        self.assertEqual(tokens["EXCEPTS"], "e")
        self.assertEqual(tokens["INVEX"], "I")
        self.assertEqual(tokens["MONITOR"], "100")
        self.assertEqual(tokens["BOT"], "B")
        self.assertEqual(tokens["WHOX"], "")
        self.assertTrue(set("MNU") <= set(tokens["ELIST"]), tokens["ELIST"])
        targmax = dict(item.split(":", 1) for item in tokens["TARGMAX"].split(","))
        self.assertEqual(targmax["PRIVMSG"], "4")
        self.assertEqual(targmax["NOTICE"], "4")

    @asynctest
    async def test_isupport_follows_config_and_fits_lines(self) -> None:
        """005 values come from the config; every 005 line fits 512 bytes and 15 parameters."""
        srv = await start(self, network_name="TestNet", topic_len=100, nick_len=30, max_modes=6,
                          max_channels_per_user=7, max_targets=3)
        c = await srv.connect()
        lines = await register(c, "alice")
        tokens = isupport(lines)
        self.assertEqual(tokens["NETWORK"], "TestNet")
        self.assertEqual(tokens["TOPICLEN"], "100")
        self.assertEqual(tokens["NICKLEN"], "30")
        self.assertEqual(tokens["MODES"], "6")
        self.assertEqual(tokens["CHANLIMIT"], "#&:7")
        self.assertIn("PRIVMSG:3", tokens["TARGMAX"])
        self.assertIn("TestNet", lines[0].params[-1])
        for line in lines:
            if line.command == "005":
                self.assertLessEqual(len(line.raw.encode()) + 2, 512)
                self.assertLessEqual(len(line.params), 15)
                self.assertEqual(line.params[-1], "are supported by this server")


class NickTests(unittest.TestCase):
    """NICK validation, collisions and changes."""

    @asynctest
    async def test_nick_of_64_bytes_is_accepted(self) -> None:
        """A nick of exactly NICKLEN (64) bytes registers."""
        srv = await start(self)
        nick = "n" * 64
        c = await srv.connect()
        lines = await register(c, nick)
        self.assertEqual(lines[0].command, "001")
        self.assertEqual(lines[0].params[0], nick)

    @asynctest
    async def test_nick_of_65_bytes_is_erroneous(self) -> None:
        """A 65-byte nick gets 432 and registration does not complete."""
        srv = await start(self)
        c = await srv.connect()
        c.send("NICK " + "n" * 65)
        c.send("USER u 0 * :R")
        line = await c.expect("432")
        self.assertEqual(line.params[:2], ["*", "n" * 65])
        await c.expect_not("001")
        c.send("NICK short")
        await c.expect("001")

    @asynctest
    async def test_multibyte_nick_counts_bytes(self) -> None:
        """NICKLEN is in bytes: 32 two-byte characters fit, 33 do not."""
        srv = await start(self)
        c = await srv.connect()
        c.send("NICK " + "é" * 33)
        await c.expect("432")
        lines = await register(c, "é" * 32)
        self.assertEqual(lines[0].params[0], "é" * 32)

    @asynctest
    async def test_handle_and_unicode_nicks_are_valid(self) -> None:
        """AT Protocol handles (dots) and non-ASCII letters are valid nicks, usable as message targets."""
        srv = await start(self)
        handle = await srv.client("alice.bsky.social")
        cafe = await srv.client("café")
        handle.send("PRIVMSG café :bonjour")
        line = await cafe.expect("PRIVMSG")
        self.assertEqual(line.source, "alice.bsky.social!~alice@freeq/guest")
        self.assertEqual(line.params, ["café", "bonjour"])

    @asynctest
    async def test_erroneous_nicks(self) -> None:
        """Nicks with a comma, a channel prefix, a leading digit or a wildcard get 432."""
        srv = await start(self)
        c = await srv.client("alice")
        for bad in ("bad,nick", "#chan", "1abc", "-dash", "a*b", "a!b", "a@b"):
            c.send(f"NICK {bad}")
            line = await c.expect("432")
            self.assertEqual(line.params[:2], ["alice", bad])
        await c.expect_not("NICK")

    @asynctest
    async def test_nick_without_parameter(self) -> None:
        """NICK with no parameter gets 431, before and after registration."""
        srv = await start(self)
        raw = await srv.connect()
        raw.send("NICK")
        line = await raw.expect("431")
        self.assertEqual(line.params[0], "*")
        c = await srv.client("alice")
        c.send("NICK")
        line = await c.expect("431")
        self.assertEqual(line.params[0], "alice")

    @asynctest
    async def test_nick_in_use_before_registration(self) -> None:
        """A taken nick (any case) gets 433 before registration; another nick then registers."""
        srv = await start(self)
        await srv.client("alice")
        c = await srv.connect()
        c.send("NICK ALICE")
        c.send("USER u 0 * :R")
        line = await c.expect("433")
        self.assertEqual(line.params[:2], ["*", "ALICE"])
        await c.expect_not("001")
        c.send("NICK alice2")
        line = await c.expect("001")
        self.assertEqual(line.params[0], "alice2")

    @asynctest
    async def test_nick_in_use_after_registration(self) -> None:
        """Changing to a taken nick gets 433 and changes nothing."""
        srv = await start(self)
        alice = await srv.client("alice")
        await srv.client("bob")
        alice.send("NICK Bob")
        line = await alice.expect("433")
        self.assertEqual(line.params[:2], ["alice", "Bob"])
        await alice.expect_not("NICK")
        alice.send("WHOIS alice")
        await alice.expect("311")

    @asynctest
    async def test_nick_change_echoed_once_to_self_and_each_co_member(self) -> None:
        """A nick change reaches the user and every co-member exactly once, even across two shared channels."""
        srv = await start(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        carol = await srv.client("carol")
        dave = await srv.client("dave")
        for c in (alice, bob):
            await join(c, "#one")
            await join(c, "#two")
        await join(carol, "#one")
        await join(dave, "#elsewhere")
        await sleep(0.1)
        for c in (alice, bob, carol, dave):
            c.skip()
        alice.send("NICK alicia")
        for c in (alice, bob, carol):
            line = await c.expect("NICK")
            self.assertEqual(line.source, "alice!~alice@freeq/guest")
            self.assertEqual(line.params, ["alicia"])
        await sleep(0.2)
        for c in (alice, bob, carol):
            self.assertEqual([l for l in c.lines[c.cursor:] if l.command == "NICK"], [])
        self.assertEqual([l for l in dave.lines[dave.cursor:] if l.command == "NICK"], [])

    @asynctest
    async def test_old_nick_is_released_after_change(self) -> None:
        """After a nick change the old nick is free and the new one is taken."""
        srv = await start(self)
        alice = await srv.client("alice")
        alice.send("NICK alicia")
        await alice.expect("NICK")
        other = await srv.client("alice")
        other.send("NICK alicia")
        await other.expect("433")

    @asynctest
    async def test_case_only_nick_change(self) -> None:
        """Changing only the case of one's nick is allowed and announced."""
        srv = await start(self)
        alice = await srv.client("alice")
        alice.send("NICK Alice")
        line = await alice.expect("NICK")
        self.assertEqual(line.params, ["Alice"])
        self.assertEqual(line.source, "alice!~alice@freeq/guest")


class RegistrationRulesTests(unittest.TestCase):
    """What is allowed before registration, and what is allowed only once."""

    @asynctest
    async def test_commands_before_registration_get_451(self) -> None:
        """Known commands other than the registration ones get 451 before registration."""
        srv = await start(self)
        c = await srv.connect()
        for command in ("JOIN #x", "PRIVMSG bob :hi", "WHOIS bob", "MODE #x"):
            c.send(command)
            line = await c.expect("451")
            self.assertEqual(line.params[0], "*")
        await c.expect_not(lambda l: l.command in ("JOIN", "403", "401"))

    @asynctest
    async def test_unknown_command_gets_421(self) -> None:
        """An unknown command after registration gets 421 naming it."""
        srv = await start(self)
        c = await srv.client("alice")
        c.send("FROBNICATE now")
        line = await c.expect("421")
        self.assertEqual(line.params[:2], ["alice", "FROBNICATE"])

    @asynctest
    async def test_user_twice_gets_462(self) -> None:
        """A second USER gets 462, both before and after registration; the first one counts."""
        srv = await start(self)
        c = await srv.connect()
        c.send("USER first 0 * :First")
        c.send("USER second 0 * :Second")
        await c.expect("462")
        c.send("NICK alice")
        welcome = await c.expect("001")
        self.assertIn("alice!~first@freeq/guest", welcome.params[-1])
        c.send("USER third 0 * :Third")
        line = await c.expect("462")
        self.assertEqual(line.params[0], "alice")

    @asynctest
    async def test_user_needs_four_parameters(self) -> None:
        """USER with too few parameters gets 461 and does not register."""
        srv = await start(self)
        c = await srv.connect()
        c.send("NICK alice")
        c.send("USER only")
        line = await c.expect("461")
        self.assertEqual(line.params[1], "USER")
        await c.expect_not("001")


class PasswordTests(unittest.TestCase):
    """PASS when the server requires a password."""

    @asynctest
    async def test_missing_password_is_refused(self) -> None:
        """Without PASS, registration ends in 464, ERROR and a closed connection."""
        srv = await start(self, server_password="sekrit")
        c = await srv.connect()
        c.send("NICK alice")
        c.send("USER u 0 * :R")
        await c.expect("464")
        line = await c.expect("ERROR")
        self.assertIn("Closing Link", line.params[0])
        await c.closed
        self.assertFalse(any(l.command == "001" for l in c.lines))

    @asynctest
    async def test_wrong_password_is_refused(self) -> None:
        """A wrong PASS ends in 464, ERROR and a closed connection, and frees the nick."""
        srv = await start(self, server_password="sekrit")
        c = await srv.connect()
        c.send("PASS wrong")
        c.send("NICK alice")
        c.send("USER u 0 * :R")
        await c.expect("464")
        await c.expect("ERROR")
        await c.closed
        self.assertNotIn("alice", srv.server.users)

    @asynctest
    async def test_right_password_registers(self) -> None:
        """The right PASS lets registration complete; a later PASS gets 462."""
        srv = await start(self, server_password="sekrit")
        c = await srv.connect()
        c.send("PASS sekrit")
        lines = await register(c, "alice")
        self.assertEqual(lines[0].command, "001")
        c.send("PASS sekrit")
        await c.expect("462")

    @asynctest
    async def test_password_ignored_when_not_configured(self) -> None:
        """Without a server password any PASS is accepted."""
        srv = await start(self)
        c = await srv.connect()
        c.send("PASS whatever")
        lines = await register(c, "alice")
        self.assertEqual(lines[0].command, "001")


class CapTests(unittest.TestCase):
    """IRCv3 capability negotiation."""

    @asynctest
    async def test_cap_ls_single_line_with_bare_sasl(self) -> None:
        """CAP LS (no version) answers on one line with the core capabilities and a value-less sasl."""
        srv = await start(self)
        c = await srv.connect()
        c.send("CAP LS")
        line = await c.expect("CAP")
        self.assertEqual(line.params[:2], ["*", "LS"])
        self.assertEqual(len(line.params), 3)
        caps = cap_tokens(line)
        self.assertIn("sasl", caps)
        self.assertNotIn("sasl=ATPROTO-CHALLENGE", line.params[2].split())
        for cap in ("message-tags", "server-time", "echo-message", "labeled-response", "batch",
                    "multi-prefix", "extended-join", "away-notify", "invite-notify", "userhost-in-names"):
            self.assertIn(cap, caps)
        await c.expect_not("CAP")

    @asynctest
    async def test_cap_ls_302_enables_cap_notify(self) -> None:
        """CAP LS 302 implicitly enables cap-notify, which then cannot be disabled."""
        srv = await start(self)
        c = await srv.connect()
        c.send("CAP LS 302")
        await c.expect("CAP")
        c.send("CAP LIST")
        line = await c.expect(lambda l: l.command == "CAP" and l.params[1] == "LIST")
        self.assertEqual(cap_tokens(line), {"cap-notify"})
        c.send("CAP REQ :-cap-notify")
        line = await c.expect(lambda l: l.command == "CAP" and l.params[1] == "NAK")
        self.assertEqual(line.params[2], "-cap-notify")

    @asynctest
    async def test_cap_req_is_all_or_nothing(self) -> None:
        """A REQ naming one unknown cap is NAKed whole and enables nothing; a valid REQ is ACKed."""
        srv = await start(self)
        c = await srv.connect()
        c.send("CAP LS")
        await c.expect("CAP")
        c.send("CAP REQ :message-tags no-such-cap")
        line = await c.expect("CAP")
        self.assertEqual(line.params[1:], ["NAK", "message-tags no-such-cap"])
        c.send("CAP LIST")
        line = await c.expect("CAP")
        self.assertEqual(line.params[1], "LIST")
        self.assertEqual(cap_tokens(line), set())
        c.send("CAP REQ :message-tags server-time")
        line = await c.expect("CAP")
        self.assertEqual(line.params[1:], ["ACK", "message-tags server-time"])
        c.send("CAP REQ :-server-time")
        line = await c.expect("CAP")
        self.assertEqual(line.params[1:], ["ACK", "-server-time"])
        c.send("CAP LIST")
        line = await c.expect("CAP")
        self.assertEqual(cap_tokens(line), {"message-tags"})

    @asynctest
    async def test_registration_held_until_cap_end(self) -> None:
        """NICK and USER during CAP negotiation do not register; CAP END does."""
        srv = await start(self)
        c = await srv.connect()
        c.send("CAP LS 302")
        c.send("NICK alice")
        c.send("USER u 0 * :R")
        await c.expect("CAP")
        c.send("CAP REQ :server-time")
        await c.expect(lambda l: l.command == "CAP" and l.params[1] == "ACK")
        await c.expect_not("001")
        c.send("CAP END")
        line = await c.expect("001")
        self.assertEqual(line.params[0], "alice")
        await c.expect(lambda l: l.command in ("376", "422"))

    @asynctest
    async def test_cap_req_alone_holds_registration(self) -> None:
        """A CAP REQ without LS also suspends registration until CAP END."""
        srv = await start(self)
        c = await srv.connect()
        c.send("CAP REQ :message-tags")
        c.send("NICK alice")
        c.send("USER u 0 * :R")
        await c.expect(lambda l: l.command == "CAP" and l.params[1] == "ACK")
        await c.expect_not("001")
        c.send("CAP END")
        await c.expect("001")

    @asynctest
    async def test_cap_after_registration(self) -> None:
        """CAP LS and REQ still work after registration, addressed to the nick, without a new welcome."""
        srv = await start(self)
        c = await srv.client("alice")
        c.send("CAP LS 302")
        # The list is over 400 bytes since issue #12, so it comes in several LS lines ("*" on all but the last).
        lines = await c.collect_until(lambda l: l.command == "CAP" and l.params[2:3] != ["*"])
        self.assertEqual({tuple(l.params[:2]) for l in lines}, {("alice", "LS")})
        self.assertIn("message-tags", [tok for l in lines for tok in cap_tokens(l)])
        c.send("CAP REQ :echo-message")
        line = await c.expect("CAP")
        self.assertEqual(line.params[:2], ["alice", "ACK"])
        c.send("CAP END")
        await c.expect_not("001")
        c.send("PRIVMSG alice :me")
        echo = await c.expect("PRIVMSG")
        self.assertEqual(echo.params, ["alice", "me"])

    @asynctest
    async def test_invalid_cap_subcommand(self) -> None:
        """An unknown CAP subcommand gets 410 naming it."""
        srv = await start(self)
        c = await srv.connect()
        c.send("CAP FROB")
        line = await c.expect("410")
        self.assertEqual(line.params[:2], ["*", "FROB"])


class PingQuitTests(unittest.TestCase):
    """Keepalive and leaving."""

    @asynctest
    async def test_ping_before_and_after_registration(self) -> None:
        """PING is answered with PONG carrying the token, before and after registration."""
        srv = await start(self)
        c = await srv.connect()
        c.send("PING :early token")
        line = await c.expect("PONG")
        self.assertEqual(line.source, "freeq")
        self.assertEqual(line.params, ["freeq", "early token"])
        await register(c, "alice")
        c.send("PING later")
        line = await c.expect("PONG")
        self.assertEqual(line.params, ["freeq", "later"])
        c.send("PING")
        await c.expect("409")

    @asynctest
    async def test_quit_reason_relayed_and_error_sent(self) -> None:
        """QUIT with a reason reaches co-members as 'Quit: reason'; the quitter gets ERROR and is closed."""
        srv = await start(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        carol = await srv.client("carol")
        await join(alice, "#q")
        await join(bob, "#q")
        bob.send("QUIT :gone fishing")
        line = await alice.expect("QUIT")
        self.assertEqual(line.source, "bob!~bob@freeq/guest")
        self.assertEqual(line.params, ["Quit: gone fishing"])
        error = await bob.expect("ERROR")
        self.assertIn("Quit: gone fishing", error.params[0])
        await bob.closed
        await carol.expect_not("QUIT")  # alice saw the QUIT: the server has handled it
        again = await srv.client("bob")
        self.assertEqual(again.nick, "bob")

    @asynctest
    async def test_quit_without_reason(self) -> None:
        """QUIT without a reason is relayed as plain 'Quit'."""
        srv = await start(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        await join(alice, "#q")
        await join(bob, "#q")
        bob.send("QUIT")
        line = await alice.expect("QUIT")
        self.assertEqual(line.params, ["Quit"])

    @asynctest
    async def test_disconnect_without_quit_is_relayed(self) -> None:
        """A dropped connection is seen by co-members as a QUIT."""
        srv = await start(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        await join(alice, "#q")
        await join(bob, "#q")
        bob.disconnect()
        line = await alice.expect("QUIT")
        self.assertEqual(line.source, "bob!~bob@freeq/guest")
        self.assertTrue(re.search(r"\S", line.params[0]))
