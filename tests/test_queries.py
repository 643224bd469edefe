"""Integration tests over loopback sockets: queries (WHO, WHOIS, WHOWAS, ...), user state
(AWAY, SETNAME, CHGHOST, MONITOR, MODE) and operator commands (OPER, KILL, WALLOPS, overrides).
"""
from __future__ import annotations

from typing import Callable

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.support import IRCClient, Line, ServerFixture, asynctest, start_server

HOST = "freeq/guest"


async def join(c: IRCClient, *channels: str) -> None:
    """Join ``channels`` one by one, waiting for each end of NAMES, then mark everything read."""
    for chan in channels:
        c.send(f"JOIN {chan}")
        await c.expect(lambda l: l.command == "366" and l.params[1] == chan)
    c.skip()


async def sync(*clients: IRCClient) -> None:
    """Round-trip a PING on each client so every earlier line from the server has arrived."""
    for c in clients:
        c.send("PING :sync")
        await c.expect(lambda l: l.command == "PONG" and l.params[-1] == "sync")


def numeric(code: str, *first: str) -> Callable[[Line], bool]:
    """Match numeric ``code`` whose parameters after the recipient start with ``first``."""
    return lambda l: l.command == code and l.params[1:1 + len(first)] == list(first)


def only(lines: list[Line], command: str) -> list[Line]:
    """The lines of ``lines`` with ``command``."""
    return [l for l in lines if l.command == command]


async def make_oper(srv: ServerFixture, c: IRCClient, password: str = "pw") -> None:
    """Make ``c`` a server operator with OPER."""
    c.send(f"OPER admin {password}")
    await c.expect("381")
    await c.expect(lambda l: l.command == "MODE" and l.params == [c.nick, "+o"])
    c.skip()


class WhoTests(unittest.TestCase):
    """WHO and WHOX."""

    @asynctest
    async def test_who_channel_352_format(self) -> None:
        """WHO #chan lists each member in the RFC 2812 352 layout and ends with 315."""
        srv = await start_server(self)
        alice = await srv.client("alice", realname="Alice Liddell")
        bob = await srv.client("bob")
        await join(alice, "#c")
        await join(bob, "#c")
        bob.send("WHO #c")
        lines = await bob.collect_until("315")
        rows = {l.params[5]: l for l in only(lines, "352")}
        self.assertEqual(set(rows), {"alice", "bob"})
        self.assertEqual(rows["alice"].params, ["bob", "#c", "~alice", HOST, "freeq", "alice", "H@", "0 Alice Liddell"])
        self.assertEqual(rows["bob"].params, ["bob", "#c", "~bob", HOST, "freeq", "bob", "H", "0 Test User"])
        self.assertEqual(rows["alice"].source, "freeq")
        self.assertEqual(lines[-1].params[:2], ["bob", "#c"])
        self.assertIn(":0 Alice Liddell", rows["alice"].raw)

    @asynctest
    async def test_who_flags_away_oper_voice(self) -> None:
        """352 flags: G when away, * for opers, + for voice, both prefixes with multi-prefix."""
        srv = await start_server(self, oper_password="pw")
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        carol = await srv.client("carol", caps=("multi-prefix",))
        await join(alice, "#c")
        await join(bob, "#c")
        await join(carol, "#c")
        await make_oper(srv, bob)
        alice.send("MODE #c +vo bob bob")
        alice.send("AWAY :lunch")
        await alice.expect("306")
        carol.send("WHO #c")
        rows = {l.params[5]: l.params[6] for l in only(await carol.collect_until("315"), "352")}
        self.assertEqual(rows, {"alice": "G@", "bob": "H*@+", "carol": "H"})
        alice.send("WHO #c")
        rows = {l.params[5]: l.params[6] for l in only(await alice.collect_until("315"), "352")}
        self.assertEqual(rows["bob"], "H*@")

    @asynctest
    async def test_who_opers_only(self) -> None:
        """WHO <mask> o lists only server operators."""
        srv = await start_server(self, oper_password="pw")
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        await join(alice, "#c")
        await join(bob, "#c")
        await make_oper(srv, bob)
        alice.send("WHO #c o")
        rows = only(await alice.collect_until("315"), "352")
        self.assertEqual([l.params[5] for l in rows], ["bob"])

    @asynctest
    async def test_who_nick(self) -> None:
        """WHO <nick> gives exactly that user, with a channel it is visibly on, then 315."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        await join(bob, "#c")
        alice.send("WHO BOB")
        lines = await alice.collect_until("315")
        rows = only(lines, "352")
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0].params[1:7], ["#c", "~bob", HOST, "freeq", "bob", "H@"])
        self.assertEqual(lines[-1].params[1], "BOB")

    @asynctest
    async def test_who_nick_hides_secret_channel_name(self) -> None:
        """WHO <nick> shows '*' rather than a secret channel the asker is not on."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        await join(bob, "#hidden")
        bob.send("MODE #hidden +s")
        await bob.expect("MODE")
        alice.send("WHO bob")
        rows = only(await alice.collect_until("315"), "352")
        self.assertEqual(rows[0].params[1], "*")

    @asynctest
    async def test_who_mask_glob(self) -> None:
        """WHO with a glob matches nicks (and other fields) by pattern."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        await srv.client("bob")
        await srv.client("bert", realname="Bert Ernie")
        alice.send("WHO b*")
        rows = only(await alice.collect_until("315"), "352")
        self.assertEqual(sorted(l.params[5] for l in rows), ["bert", "bob"])
        alice.send("WHO *ernie*")
        rows = only(await alice.collect_until("315"), "352")
        self.assertEqual([l.params[5] for l in rows], ["bert"])
        alice.send("WHO zz*")
        lines = await alice.collect_until("315")
        self.assertEqual(only(lines, "352"), [])
        self.assertEqual(lines[-1].params[1], "zz*")

    @asynctest
    async def test_who_star(self) -> None:
        """WHO * ends with 315 and lists visible users."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        await srv.client("bob")
        alice.send("WHO *")
        lines = await alice.collect_until("315")
        self.assertEqual(lines[-1].params[:2], ["alice", "*"])
        self.assertIn("bob", [l.params[5] for l in only(lines, "352")])
        alice.send("WHO")
        await alice.expect("315")

    @asynctest
    async def test_who_hides_invisible_from_non_comembers(self) -> None:
        """+i users are hidden from wildcard and channel WHO by users sharing no channel with them."""
        srv = await start_server(self)
        carol = await srv.client("carol")
        dave = await srv.client("dave")
        carol.send("MODE carol +i")
        await carol.expect("MODE")
        await join(carol, "#room")
        for query in ("WHO *", "WHO c*", "WHO #room", "WHO *guest*"):
            dave.send(query)
            rows = only(await dave.collect_until("315"), "352")
            self.assertNotIn("carol", [l.params[5] for l in rows], query)
        dave.send("WHO carol")
        rows = only(await dave.collect_until("315"), "352")
        self.assertEqual([l.params[5] for l in rows], ["carol"], "an exact nick is not a search")
        await join(dave, "#room")
        for query in ("WHO *", "WHO c*", "WHO #room"):
            dave.send(query)
            rows = only(await dave.collect_until("315"), "352")
            self.assertIn("carol", [l.params[5] for l in rows], query)

    @asynctest
    async def test_who_secret_channel_from_outside(self) -> None:
        """WHO on a +s channel the asker is not on lists nobody."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        await join(alice, "#s")
        alice.send("MODE #s +s")
        await alice.expect("MODE")
        bob.send("WHO #s")
        lines = await bob.collect_until("315")
        self.assertEqual(only(lines, "352"), [])

    @asynctest
    async def test_whox_all_fields_in_order(self) -> None:
        """WHOX %tcuihsnfdlaor,42 gives 354 with every field in canonical order and the token."""
        srv = await start_server(self)
        alice = await srv.client("alice", realname="Alice L")
        bob = await srv.client("bob")
        await join(alice, "#c")
        await join(bob, "#c")
        bob.send("WHO #c %tcuihsnfdlaor,42")
        lines = await bob.collect_until("315")
        self.assertEqual(only(lines, "352"), [])
        rows = {l.params[7]: l.params for l in only(lines, "354")}
        self.assertEqual(set(rows), {"alice", "bob"})
        p = rows["alice"]
        self.assertEqual(len(p), 14)
        self.assertEqual(p[:9], ["bob", "42", "#c", "~alice", "255.255.255.255", HOST, "freeq", "alice", "H@"])
        self.assertEqual(p[9], "0")
        self.assertTrue(p[10].isdigit())
        self.assertEqual(p[11:], ["0", "n/a", "Alice L"])
        self.assertEqual(lines[-1].params[1], "#c")

    @asynctest
    async def test_whox_subset_and_no_token(self) -> None:
        """WHOX with a subset of fields returns just those, in canonical order, whatever order was asked."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        await srv.client("bob")
        alice.send("WHO bob %nuh")
        lines = await alice.collect_until("315")
        rows = only(lines, "354")
        self.assertEqual([r.params for r in rows], [["alice", "~bob", HOST, "bob"]])
        alice.send("WHO bob %in")
        rows = only(await alice.collect_until("315"), "354")
        self.assertEqual(rows[0].params, ["alice", "255.255.255.255", "bob"])

    @asynctest
    async def test_whox_with_flags_before_fields(self) -> None:
        """WHOX options may precede the % (e.g. 'o%tn,7'): fields still apply, and o filters opers."""
        srv = await start_server(self, oper_password="pw")
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        await join(alice, "#c")
        await join(bob, "#c")
        await make_oper(srv, bob)
        alice.send("WHO #c o%tn,7")
        lines = await alice.collect_until("315")
        self.assertEqual(only(lines, "352"), [])
        self.assertEqual([l.params for l in only(lines, "354")], [["alice", "7", "bob"]])


class WhoisTests(unittest.TestCase):
    """WHOIS."""

    @asynctest
    async def test_whois_plain_user(self) -> None:
        """WHOIS gives 311 (cloaked host), 319 (with prefixes, no +s channels), 312, 317 and 318, in order."""
        srv = await start_server(self)
        alice = await srv.client("alice", realname="Alice L")
        bob = await srv.client("bob")
        await join(alice, "#pub", "#sec")
        alice.send("MODE #sec +s")
        await alice.expect("MODE")
        bob.send("WHOIS alice")
        lines = await bob.collect_until("318")
        codes = [l.command for l in lines]
        self.assertEqual(codes, ["311", "319", "312", "317", "318"])
        self.assertEqual(lines[0].params, ["bob", "alice", "~alice", HOST, "*", "Alice L"])
        self.assertEqual(lines[1].params, ["bob", "alice", "@#pub"])
        self.assertEqual(lines[2].params[:3], ["bob", "alice", "freeq"])
        idle, signon = lines[3].params[2:4]
        self.assertTrue(idle.isdigit() and signon.isdigit())
        self.assertLess(abs(int(signon) - srv.clock.seconds()), 60)
        self.assertEqual(lines[4].params[:2], ["bob", "alice"])

    @asynctest
    async def test_whois_secret_channel_visible_to_members(self) -> None:
        """A +s channel shows in 319 for the user itself and for co-members."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        await join(alice, "#sec")
        alice.send("MODE #sec +s")
        await alice.expect("MODE")
        await join(bob, "#sec")
        alice.send("WHOIS alice")
        line = await alice.expect("319")
        self.assertEqual(line.params[2], "@#sec")
        bob.send("WHOIS alice")
        line = await bob.expect("319")
        self.assertEqual(line.params[2], "@#sec")

    @asynctest
    async def test_whois_invisible_user_shows_public_channels_only(self) -> None:
        """User mode +i does not hide public channels from WHOIS; +s/+p ones stay hidden from strangers."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        alice.send("MODE alice +i")
        await alice.expect("MODE")
        await join(alice, "#pub")
        await join(alice, "#hidden")
        alice.send("MODE #hidden +s")
        await alice.expect("MODE")
        bob.send("WHOIS alice")
        lines = await bob.collect_until("318")
        self.assertEqual([l.params[2] for l in lines if l.command == "319"], ["@#pub"])

    @asynctest
    async def test_whois_oper_away_tls(self) -> None:
        """WHOIS of a TLS, oper, away user includes 313, 301 and 671."""
        srv = await start_server(self, tls=True, oper_password="pw")
        alice = await srv.client("alice", tls=True)
        bob = await srv.client("bob")
        await make_oper(srv, alice)
        alice.send("AWAY :gone fishing")
        await alice.expect("306")
        bob.send("WHOIS alice")
        lines = await bob.collect_until("318")
        by = {l.command: l for l in lines}
        self.assertEqual(by["313"].params[1], "alice")
        self.assertEqual(by["301"].params[1:], ["alice", "gone fishing"])
        self.assertEqual(by["671"].params[1], "alice")
        self.assertNotIn("319", by)
        alice.send("WHOIS bob")
        lines = await alice.collect_until("318")
        self.assertEqual([l for l in lines if l.command in ("313", "301", "671")], [])

    @asynctest
    async def test_whois_unknown(self) -> None:
        """WHOIS of an unknown nick gives 401 then 318."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        alice.send("WHOIS nobody")
        lines = await alice.collect_until("318")
        self.assertEqual([l.command for l in lines], ["401", "318"])
        self.assertEqual(lines[0].params[1], "nobody")
        self.assertEqual(lines[1].params[1], "nobody")

    @asynctest
    async def test_whois_no_param(self) -> None:
        """WHOIS with no nick gives 431."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        alice.send("WHOIS")
        await alice.expect("431")

    @asynctest
    async def test_whois_server_form(self) -> None:
        """WHOIS <server> <nick> queries the nick."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        await srv.client("bob")
        alice.send("WHOIS freeq bob")
        line = await alice.expect("311")
        self.assertEqual(line.params[1], "bob")
        await alice.expect("318")


class WhowasTests(unittest.TestCase):
    """WHOWAS."""

    @asynctest
    async def test_whowas_after_nick_change(self) -> None:
        """WHOWAS finds the old nick after a nick change: 314, 312, 369."""
        srv = await start_server(self)
        alice = await srv.client("alice", realname="Alice L")
        bob = await srv.client("bob")
        alice.send("NICK alicia")
        await alice.expect("NICK")
        bob.send("WHOWAS alice")
        lines = await bob.collect_until("369")
        self.assertEqual([l.command for l in lines], ["314", "312", "369"])
        self.assertEqual(lines[0].params, ["bob", "alice", "~alice", HOST, "*", "Alice L"])
        self.assertEqual(lines[1].params[:3], ["bob", "alice", "freeq"])
        self.assertEqual(lines[2].params[1], "alice")

    @asynctest
    async def test_whowas_after_quit(self) -> None:
        """WHOWAS finds a nick that quit."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        bob.send("QUIT :bye")
        await bob.closed
        alice.send("WHOWAS bob")
        lines = await alice.collect_until("369")
        self.assertEqual([l.command for l in lines], ["314", "312", "369"])
        self.assertEqual(lines[0].params[1:4], ["bob", "~bob", HOST])

    @asynctest
    async def test_whowas_unknown(self) -> None:
        """WHOWAS of a nick never seen gives 406 then 369."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        alice.send("WHOWAS ghost")
        lines = await alice.collect_until("369")
        self.assertEqual([l.command for l in lines], ["406", "369"])
        self.assertEqual(lines[0].params[1], "ghost")

    @asynctest
    async def test_whowas_count(self) -> None:
        """WHOWAS <nick> <count> limits the entries, newest first."""
        srv = await start_server(self, flood_rate=0)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        for i in range(3):
            bob.send(f"NICK tmp{i}")
            await bob.expect("NICK")
            bob.send("NICK bob")
            await bob.expect("NICK")
        alice.send("WHOWAS bob")
        self.assertEqual(len(only(await alice.collect_until("369"), "314")), 3)
        alice.send("WHOWAS bob 1")
        self.assertEqual(len(only(await alice.collect_until("369"), "314")), 1)


class AwayTests(unittest.TestCase):
    """AWAY and away-notify."""

    @asynctest
    async def test_away_and_back(self) -> None:
        """AWAY :msg gives 306, AWAY gives 305; away-notify co-members see both, others nothing."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        watcher = await srv.client("watcher", caps=("away-notify",))
        plain = await srv.client("plain")
        outsider = await srv.client("outsider", caps=("away-notify",))
        for c in (alice, watcher, plain):
            await join(c, "#c")
        alice.send("AWAY :be right back")
        await alice.expect("306")
        line = await watcher.expect("AWAY")
        self.assertEqual(line.source, "alice!~alice@freeq/guest")
        self.assertEqual(line.params, ["be right back"])
        self.assertIn("AWAY :be right back", line.raw)
        alice.send("AWAY")
        await alice.expect("305")
        line = await watcher.expect("AWAY")
        self.assertEqual(line.params, [])
        self.assertTrue(line.raw.endswith(" AWAY"), line.raw)
        await plain.expect_not("AWAY", after=(alice,))
        await outsider.expect_not("AWAY")
        await alice.expect_not("AWAY")

    @asynctest
    async def test_away_sent_on_join_and_301(self) -> None:
        """An away user joining is announced to away-notify members; PRIVMSG to them gives 301."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        watcher = await srv.client("watcher", caps=("away-notify",))
        await join(watcher, "#c")
        alice.send("AWAY :out")
        await alice.expect("306")
        alice.send("JOIN #c")
        await watcher.expect("JOIN")
        line = await watcher.expect("AWAY")
        self.assertEqual(line.params, ["out"])
        watcher.send("PRIVMSG alice :hi")
        line = await watcher.expect("301")
        self.assertEqual(line.params[1:], ["alice", "out"])


class ServerInfoTests(unittest.TestCase):
    """MOTD, LUSERS, VERSION, TIME, ADMIN, INFO, LINKS, HELP."""

    @asynctest
    async def test_motd_configured(self) -> None:
        """MOTD with a configured text gives 375, one 372 per line, 376."""
        srv = await start_server(self, motd=("a", "b"))
        alice = await srv.client("alice")
        alice.send("MOTD")
        lines = await alice.collect_until("376")
        self.assertEqual([l.command for l in lines], ["375", "372", "372", "376"])
        self.assertEqual([l.params[1] for l in lines[1:3]], ["- a", "- b"])

    @asynctest
    async def test_motd_missing(self) -> None:
        """MOTD without a configured text gives 422."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        alice.send("MOTD")
        line = await alice.expect(lambda l: l.command in ("422", "375"))
        self.assertEqual(line.command, "422")

    @asynctest
    async def test_lusers(self) -> None:
        """LUSERS counts visible, invisible, operators and channels."""
        srv = await start_server(self, oper_password="pw")
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        bob.send("MODE bob +i")
        await bob.expect("MODE")
        await make_oper(srv, alice)
        await join(alice, "#a", "#b")
        alice.send("LUSERS")
        lines = await alice.collect_until("266")
        by = {l.command: l for l in lines}
        self.assertEqual(set(by), {"251", "252", "253", "254", "255", "265", "266"})
        self.assertIn("There are 1 users and 1 invisible", by["251"].params[1])
        self.assertEqual(by["252"].params[1], "1")
        self.assertEqual(by["253"].params[1], "0")
        self.assertEqual(by["254"].params[1], "2")
        self.assertIn("I have 2 clients", by["255"].params[1])
        self.assertEqual(by["265"].params[1:3], ["2", "2"])  # current and peak (issue #12), not --max-clients

    @asynctest
    async def test_version(self) -> None:
        """VERSION gives 351 and then the 005 ISUPPORT lines."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        alice.send("VERSION")
        line = await alice.expect("351")
        self.assertTrue(line.params[1].startswith("freeq-"))
        self.assertEqual(line.params[2], "freeq")
        lines = await alice.collect_until(lambda l: l.command == "005" and "WHOX" in l.params)
        self.assertEqual({l.command for l in lines}, {"005"})
        self.assertIn("NETWORK=freeq", [p for l in lines for p in l.params])

    @asynctest
    async def test_time(self) -> None:
        """TIME gives 391 with the server name and a time string."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        alice.send("TIME")
        line = await alice.expect("391")
        self.assertEqual(line.params[1], "freeq")
        self.assertRegex(line.params[2], r"\d\d:\d\d:\d\d")

    @asynctest
    async def test_admin(self) -> None:
        """ADMIN gives 256-259 with the configured admin info."""
        srv = await start_server(self, admin_info=("Loc One", "Loc Two", "root@example.org"))
        alice = await srv.client("alice")
        alice.send("ADMIN")
        lines = await alice.collect_until("259")
        self.assertEqual([l.command for l in lines], ["256", "257", "258", "259"])
        self.assertEqual(lines[0].params[1], "freeq")
        self.assertEqual([l.params[-1] for l in lines[1:]], ["Loc One", "Loc Two", "root@example.org"])

    @asynctest
    async def test_info(self) -> None:
        """INFO gives at least one 371 then 374."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        alice.send("INFO")
        lines = await alice.collect_until("374")
        self.assertGreaterEqual(len(only(lines, "371")), 1)
        self.assertEqual([l.command for l in lines[:-1]], ["371"] * (len(lines) - 1))

    @asynctest
    async def test_links(self) -> None:
        """LINKS lists this server (364) then 365; a non-matching mask lists nothing."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        alice.send("LINKS")
        lines = await alice.collect_until("365")
        self.assertEqual([l.command for l in lines], ["364", "365"])
        self.assertEqual(lines[0].params[1:3], ["freeq", "freeq"])
        self.assertTrue(lines[0].params[3].startswith("0 "))
        alice.send("LINKS other.example")
        lines = await alice.collect_until("365")
        self.assertEqual([l.command for l in lines], ["365"])

    @asynctest
    async def test_help(self) -> None:
        """HELP gives 704/705/706 for the index and for a topic; an unknown topic gives 524."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        alice.send("HELP")
        lines = await alice.collect_until("706")
        self.assertEqual(lines[0].command, "704")
        self.assertEqual(lines[0].params[1], "*")
        self.assertTrue(all(l.command == "705" for l in lines[1:-1]))
        alice.send("HELP join")
        lines = await alice.collect_until("706")
        self.assertEqual(lines[0].command, "704")
        self.assertEqual(lines[0].params[1], "JOIN")
        self.assertIn("JOIN", lines[0].params[2])
        self.assertEqual(lines[-1].params[1], "JOIN")
        alice.send("HELP FROBNICATE")
        line = await alice.expect(lambda l: l.command in ("524", "704"))
        self.assertEqual(line.command, "524")
        self.assertEqual(line.params[1], "FROBNICATE")


class IsonUserhostTests(unittest.TestCase):
    """ISON and USERHOST."""

    @asynctest
    async def test_ison(self) -> None:
        """ISON replies with the nicks online, in their own case, in one 303."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        await srv.client("Bob")
        alice.send("ISON bob nobody ALICE")
        line = await alice.expect("303")
        self.assertEqual(line.params[1].split(), ["Bob", "alice"])
        alice.send("ISON nobody")
        line = await alice.expect("303")
        self.assertEqual(line.params[1], "")

    @asynctest
    async def test_userhost(self) -> None:
        """USERHOST gives nick=+user@cloak, * for opers, - for away; unknown nicks are skipped."""
        srv = await start_server(self, oper_password="pw")
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        carol = await srv.client("carol")
        await make_oper(srv, bob)
        carol.send("AWAY :zzz")
        await carol.expect("306")
        alice.send("USERHOST alice bob carol nobody")
        line = await alice.expect("302")
        self.assertEqual(line.params[1].split(), [
            "alice=+~alice@freeq/guest", "bob*=+~bob@freeq/guest", "carol=-~carol@freeq/guest"])
        alice.send("USERHOST")
        await alice.expect("461")


class SetnameTests(unittest.TestCase):
    """SETNAME."""

    @asynctest
    async def test_setname_echoed_to_cap_clients(self) -> None:
        """SETNAME is echoed to the sender and to setname co-members; others see nothing; WHOIS shows it."""
        srv = await start_server(self)
        alice = await srv.client("alice", caps=("setname",))
        bob = await srv.client("bob", caps=("setname",))
        carol = await srv.client("carol")
        dave = await srv.client("dave", caps=("setname",))
        for c in (alice, bob, carol):
            await join(c, "#c")
        alice.send("SETNAME :New Name Here")
        line = await alice.expect("SETNAME")
        self.assertEqual(line.source, "alice!~alice@freeq/guest")
        self.assertEqual(line.params, ["New Name Here"])
        line = await bob.expect("SETNAME")
        self.assertEqual(line.params, ["New Name Here"])
        await carol.expect_not("SETNAME", after=(alice,))
        await dave.expect_not("SETNAME")
        carol.send("WHOIS alice")
        line = await carol.expect("311")
        self.assertEqual(line.params[-1], "New Name Here")

    @asynctest
    async def test_setname_too_long(self) -> None:
        """A realname over the limit gives FAIL SETNAME INVALID_REALNAME and changes nothing."""
        srv = await start_server(self, realname_len=20)
        alice = await srv.client("alice", caps=("setname",), realname="Old")
        alice.send("SETNAME :" + "x" * 21)
        line = await alice.expect(lambda l: l.command in ("FAIL", "SETNAME"))
        self.assertEqual(line.command, "FAIL")
        self.assertEqual(line.params[:2], ["SETNAME", "INVALID_REALNAME"])
        self.assertEqual(srv.server.users["alice"].realname, "Old")
        alice.send("SETNAME :")
        line = await alice.expect("FAIL")
        self.assertEqual(line.params[:2], ["SETNAME", "INVALID_REALNAME"])


class ChghostTests(unittest.TestCase):
    """change_host(): CHGHOST for chghost clients, QUIT/JOIN/MODE for the rest."""

    @asynctest
    async def test_chghost_and_fallback(self) -> None:
        """chghost clients see CHGHOST from the old mask; others see QUIT, JOIN and the restored +o."""
        srv = await start_server(self)
        alice = await srv.client("alice", caps=("chghost",))
        modern = await srv.client("modern", caps=("chghost",))
        legacy = await srv.client("legacy")
        extended = await srv.client("extended", caps=("extended-join",))
        await join(alice, "#c")
        for c in (modern, legacy, extended):
            await join(c, "#c")
        await sync(alice, modern, legacy, extended)
        for c in (alice, modern, legacy, extended):
            c.skip()
        srv.server.change_host(srv.server.users["alice"], "~new", "new/host")
        for c in (alice, modern):
            line = await c.expect("CHGHOST")
            self.assertEqual(line.raw, ":alice!~alice@freeq/guest CHGHOST ~new new/host")
        await alice.expect_not(lambda l: l.command in ("QUIT", "JOIN", "MODE"))
        await modern.expect_not(lambda l: l.command in ("QUIT", "JOIN", "MODE"))
        lines = await legacy.collect_until("MODE")
        self.assertEqual([l.raw for l in lines], [
            ":alice!~alice@freeq/guest QUIT :Changing host",
            ":alice!~new@new/host JOIN #c",
            ":freeq MODE #c +o alice",
        ])
        await extended.expect("QUIT")
        line = await extended.expect("JOIN")
        self.assertEqual(line.source, "alice!~new@new/host")
        self.assertEqual(line.params, ["#c", "*", "Test User"])
        await extended.expect(lambda l: l.command == "MODE" and l.params == ["#c", "+o", "alice"])
        await legacy.expect_not("CHGHOST")
        legacy.send("WHOIS alice")
        line = await legacy.expect("311")
        self.assertEqual(line.params[2:4], ["~new", "new/host"])

    @asynctest
    async def test_chghost_plain_member_no_mode(self) -> None:
        """A member without status is re-joined with no MODE line; each shared channel gets a JOIN."""
        srv = await start_server(self)
        owner = await srv.client("owner")
        alice = await srv.client("alice")
        await join(owner, "#a", "#b")
        await join(alice, "#a", "#b")
        await sync(owner)
        owner.skip()
        srv.server.change_host(srv.server.users["alice"], "~x", "x/y")
        await owner.expect("QUIT")
        joins = [await owner.expect("JOIN"), await owner.expect("JOIN")]
        self.assertEqual(sorted(l.params[0] for l in joins), ["#a", "#b"])
        await owner.expect_not(lambda l: l.command in ("MODE", "QUIT"))

    @asynctest
    async def test_chghost_fallback_keeps_away_state(self) -> None:
        """An away user's fallback re-JOIN is followed by AWAY for away-notify clients, as a real join is."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        watcher = await srv.client("watcher", caps=("away-notify",))
        await join(alice, "#c")
        await join(watcher, "#c")
        alice.send("AWAY :napping")
        await watcher.expect("AWAY")
        srv.server.change_host(srv.server.users["alice"], "~z", "z/z")
        await watcher.expect("QUIT")
        await watcher.expect("JOIN")
        line = await watcher.expect(lambda l: l.command in ("AWAY", "MODE"))
        self.assertEqual(line.command, "AWAY")
        self.assertEqual(line.source, "alice!~z@z/z")
        self.assertEqual(line.params, ["napping"])


class MonitorTests(unittest.TestCase):
    """MONITOR."""

    @asynctest
    async def test_monitor_online_offline(self) -> None:
        """730/731 follow a watched nick registering, changing nick away and back, and quitting."""
        srv = await start_server(self)
        watcher = await srv.client("watcher")
        watcher.send("MONITOR + Target")
        line = await watcher.expect("731")
        self.assertEqual(line.params[1], "Target")
        target = await srv.client("target")
        line = await watcher.expect("730")
        self.assertEqual(line.params[1], "target!~target@freeq/guest")
        target.send("NICK other")
        await target.expect("NICK")
        line = await watcher.expect("731")
        self.assertEqual(line.params[1], "Target")  # the spelling the watcher gave, not a folded form
        target.send("NICK TARGET")
        await target.expect("NICK")
        line = await watcher.expect("730")
        self.assertEqual(line.params[1], "TARGET!~target@freeq/guest")
        target.send("QUIT")
        await watcher.expect("731")

    @asynctest
    async def test_monitor_add_online_list_status_remove_clear(self) -> None:
        """MONITOR + reports current state; L lists (732/733); S reports; - and C remove."""
        srv = await start_server(self)
        watcher = await srv.client("watcher")
        await srv.client("bob")
        watcher.send("MONITOR + bob,CaRol")
        line = await watcher.expect("730")
        self.assertEqual(line.params[1], "bob!~bob@freeq/guest")
        line = await watcher.expect("731")
        self.assertEqual(line.params[1], "CaRol")
        watcher.send("MONITOR L")
        lines = await watcher.collect_until("733")
        listed = {n for l in only(lines, "732") for n in l.params[1].split(",")}
        self.assertEqual(listed, {"bob", "CaRol"})
        watcher.send("MONITOR S")
        await watcher.expect(lambda l: l.command == "730" and l.params[1].startswith("bob!"))
        await watcher.expect(lambda l: l.command == "731" and l.params[1] == "CaRol")
        watcher.send("MONITOR - bob")
        watcher.send("MONITOR L")
        lines = await watcher.collect_until("733")
        self.assertEqual([n for l in only(lines, "732") for n in l.params[1].split(",")], ["CaRol"])
        watcher.send("MONITOR C")
        watcher.send("MONITOR L")
        lines = await watcher.collect_until("733")
        self.assertEqual(only(lines, "732"), [])
        await srv.client("carol")
        await watcher.expect_not("730")

    @asynctest
    async def test_monitor_full(self) -> None:
        """Adding beyond max_monitor gives 734 with the limit and the nicks not added."""
        srv = await start_server(self, max_monitor=3)
        watcher = await srv.client("watcher")
        watcher.send("MONITOR + a1,a2")
        await watcher.expect("731")
        watcher.send("MONITOR + a3,a4,a5")
        line = await watcher.expect("734")
        self.assertEqual(line.params[1:3], ["3", "a4,a5"])
        watcher.send("MONITOR L")
        lines = await watcher.collect_until("733")
        self.assertEqual(sorted(n for l in only(lines, "732") for n in l.params[1].split(",")), ["a1", "a2", "a3"])

    @asynctest
    async def test_monitor_needs_params(self) -> None:
        """MONITOR without a subcommand, or + without targets, gives 461."""
        srv = await start_server(self)
        watcher = await srv.client("watcher")
        watcher.send("MONITOR")
        await watcher.expect("461")
        watcher.send("MONITOR +")
        await watcher.expect("461")


class OperTests(unittest.TestCase):
    """OPER."""

    def _log(self) -> Callable[[], list[str]]:
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        return lambda: [formatEvent(e) for e in observer]

    @asynctest
    async def test_oper_not_configured(self) -> None:
        """OPER with no oper password configured gives 491."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        alice.send("OPER admin anything")
        await alice.expect("491")
        self.assertFalse(srv.server.users["alice"].is_oper)

    @asynctest
    async def test_oper_wrong_then_right(self) -> None:
        """A wrong password gives 464 and a log line without the password; the right one gives 381 and +o."""
        logged = self._log()
        # Back-off off: the wait after a failure is tests/test_hardening_oper.py's subject.
        srv = await start_server(self, oper_password="s3cret-pw", oper_backoff_base=0)
        alice = await srv.client("alice")
        alice.send("OPER admin hunter2-guess")
        await alice.expect("464")
        lines = logged()
        self.assertTrue(any("failed OPER" in t and "alice" in t for t in lines), lines)
        self.assertFalse(any("hunter2-guess" in t or "s3cret-pw" in t for t in lines))
        self.assertFalse(srv.server.users["alice"].is_oper)
        alice.send("OPER admin s3cret-pw")
        await alice.expect("381")
        line = await alice.expect("MODE")
        self.assertEqual(line.params, ["alice", "+o"])
        self.assertTrue(srv.server.users["alice"].is_oper)
        self.assertFalse(any("hunter2-guess" in t or "s3cret-pw" in t for t in logged()))

    @asynctest
    async def test_oper_three_failures_disconnect(self) -> None:
        """Three failed OPER attempts close the connection with ERROR."""
        srv = await start_server(self, oper_password="pw", oper_backoff_base=0)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        await join(alice, "#c")
        await join(bob, "#c")
        for _ in range(3):
            alice.send("OPER admin bad")
            await alice.expect("464")
        await alice.expect("ERROR")
        await alice.closed
        await bob.expect(lambda l: l.command == "QUIT" and (l.source or "").startswith("alice!"))
        self.assertNotIn("alice", srv.server.users)

    @asynctest
    async def test_oper_not_enough_params(self) -> None:
        """OPER with fewer than two parameters gives 461."""
        srv = await start_server(self, oper_password="pw")
        alice = await srv.client("alice")
        alice.send("OPER admin")
        line = await alice.expect("461")
        self.assertEqual(line.params[1], "OPER")
        alice.send("OPER")
        await alice.expect("461")


class UserModeTests(unittest.TestCase):
    """User MODE."""

    @asynctest
    async def test_user_modes(self) -> None:
        """221 query; +i/+w/+B echoed; -i; unknown flags give 501; +o cannot be self-granted."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        alice.send("MODE alice")
        line = await alice.expect("221")
        self.assertEqual(line.params[1], "+")
        alice.send("MODE alice +iwB")
        line = await alice.expect("MODE")
        self.assertEqual(line.params, ["alice", "+iwB"])
        alice.send("MODE alice")
        line = await alice.expect("221")
        self.assertEqual(line.params[1], "+Biw")
        alice.send("MODE alice -i")
        line = await alice.expect("MODE")
        self.assertEqual(line.params, ["alice", "-i"])
        alice.send("MODE alice +o")
        alice.send("MODE alice +Z")
        await alice.expect("501")
        alice.send("MODE alice")
        line = await alice.expect("221")
        self.assertEqual(line.params[1], "+Bw")
        self.assertFalse(srv.server.users["alice"].is_oper)

    @asynctest
    async def test_user_mode_other_user(self) -> None:
        """Changing or viewing another user's modes gives 502; an unknown nick gives 401."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        await srv.client("bob")
        alice.send("MODE bob +i")
        await alice.expect("502")
        alice.send("MODE bob")
        await alice.expect("502")
        alice.send("MODE nobody +i")
        await alice.expect("401")
        self.assertNotIn("i", srv.server.users["bob"].modes)

    @asynctest
    async def test_deoper(self) -> None:
        """An operator may drop +o with MODE -o."""
        srv = await start_server(self, oper_password="pw")
        alice = await srv.client("alice")
        await make_oper(srv, alice)
        alice.send("MODE alice -o")
        line = await alice.expect("MODE")
        self.assertEqual(line.params, ["alice", "-o"])
        self.assertFalse(srv.server.users["alice"].is_oper)
        alice.send("MODE alice +o")
        alice.send("MODE alice")
        line = await alice.expect("221")
        self.assertEqual(line.params[1], "+")

    @asynctest
    async def test_bot_mode_in_whois_and_who(self) -> None:
        """+B shows as 335 in WHOIS and as a B flag in WHO."""
        srv = await start_server(self)
        bot = await srv.client("bot")
        alice = await srv.client("alice")
        bot.send("MODE bot +B")
        await bot.expect("MODE")
        alice.send("WHOIS bot")
        lines = await alice.collect_until("318")
        self.assertIn("335", [l.command for l in lines])
        alice.send("WHO bot")
        row = await alice.expect("352")
        self.assertIn("B", row.params[6])


class KillTests(unittest.TestCase):
    """KILL."""

    @asynctest
    async def test_kill_needs_oper(self) -> None:
        """KILL by a non-operator gives 481 and the target stays."""
        srv = await start_server(self, oper_password="pw")
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        alice.send("KILL bob :go")
        await alice.expect("481")
        await sync(bob)
        self.assertFalse(bob.is_closed)
        self.assertIn("bob", srv.server.users)

    @asynctest
    async def test_kill_unknown(self) -> None:
        """KILL of an unknown nick gives 401."""
        srv = await start_server(self, oper_password="pw")
        oper = await srv.client("oper")
        await make_oper(srv, oper)
        oper.send("KILL nobody :x")
        line = await oper.expect("401")
        self.assertEqual(line.params[1], "nobody")

    @asynctest
    async def test_kill(self) -> None:
        """The victim gets KILL and ERROR and is disconnected; co-members see QUIT 'Killed (oper (reason))'."""
        srv = await start_server(self, oper_password="pw")
        oper = await srv.client("oper")
        bob = await srv.client("bob")
        carol = await srv.client("carol")
        await join(bob, "#c")
        await join(carol, "#c")
        await make_oper(srv, oper)
        oper.send("KILL bob :spamming")
        line = await bob.expect("KILL")
        self.assertEqual(line.source, "oper!~oper@freeq/guest")
        self.assertEqual(line.params, ["bob", "spamming"])
        line = await bob.expect("ERROR")
        self.assertIn("Killed", line.params[0])
        await bob.closed
        line = await carol.expect("QUIT")
        self.assertEqual(line.source, "bob!~bob@freeq/guest")
        self.assertEqual(line.params, ["Killed (oper (spamming))"])
        self.assertNotIn("bob", srv.server.users)
        await oper.expect_not("QUIT")


class WallopsTests(unittest.TestCase):
    """WALLOPS."""

    @asynctest
    async def test_wallops(self) -> None:
        """Non-operators get 481; an operator's WALLOPS reaches only +w users."""
        srv = await start_server(self, oper_password="pw")
        oper = await srv.client("oper")
        wuser = await srv.client("wuser")
        plain = await srv.client("plain")
        plain.send("WALLOPS :hello")
        await plain.expect("481")
        wuser.send("MODE wuser +w")
        await wuser.expect("MODE")
        await make_oper(srv, oper)
        oper.send("WALLOPS :server going down")
        line = await wuser.expect("WALLOPS")
        self.assertEqual(line.source, "oper!~oper@freeq/guest")
        self.assertEqual(line.params, ["server going down"])
        await plain.expect_not("WALLOPS", after=(oper,))
        await oper.expect_not("WALLOPS")


class OperOverrideTests(unittest.TestCase):
    """Server operators are not subject to channel-level permission checks."""

    @asynctest
    async def test_oper_outside_channel(self) -> None:
        """An operator outside a channel can set its TOPIC and MODE and KICK its members."""
        srv = await start_server(self, oper_password="pw", flood_rate=0)
        owner = await srv.client("owner")
        bob = await srv.client("bob")
        oper = await srv.client("oper")
        await join(owner, "#c")
        await join(bob, "#c")
        owner.skip()
        await make_oper(srv, oper)
        oper.send("TOPIC #c :oper topic")
        line = await owner.expect("TOPIC")
        self.assertEqual(line.params, ["#c", "oper topic"])
        await oper.expect("TOPIC")
        oper.send("MODE #c +m")
        line = await owner.expect("MODE")
        self.assertEqual(line.params, ["#c", "+m"])
        await oper.expect("MODE")
        oper.send("KICK #c bob :out")
        line = await bob.expect("KICK")
        self.assertEqual(line.params, ["#c", "bob", "out"])
        await owner.expect("KICK")
        await oper.expect("KICK")
        self.assertNotIn(srv.server.users["bob"], srv.server.channels["#c"].members)

    @asynctest
    async def test_oper_outside_secret_channel(self) -> None:
        """An operator outside a +s channel can still set its TOPIC and MODE and KICK its members."""
        srv = await start_server(self, oper_password="pw", flood_rate=0)
        owner = await srv.client("owner")
        bob = await srv.client("bob")
        oper = await srv.client("oper")
        await join(owner, "#s")
        owner.send("MODE #s +s")
        await owner.expect("MODE")
        await join(bob, "#s")
        await make_oper(srv, oper)
        oper.send("TOPIC #s :oper topic")
        line = await oper.expect(lambda l: l.command in ("TOPIC", "403", "442", "482"))
        self.assertEqual(line.command, "TOPIC")
        await owner.expect("TOPIC")
        oper.send("MODE #s +i")
        line = await owner.expect("MODE")
        self.assertEqual(line.params, ["#s", "+i"])
        oper.send("KICK #s bob")
        await bob.expect("KICK")

    @asynctest
    async def test_oper_member_without_status(self) -> None:
        """An operator who is a plain member can change topic and modes and kick the channel op."""
        srv = await start_server(self, oper_password="pw", flood_rate=0)
        owner = await srv.client("owner")
        oper = await srv.client("oper")
        await join(owner, "#c")
        await join(oper, "#c")
        await make_oper(srv, oper)
        oper.send("TOPIC #c :mine now")
        await owner.expect("TOPIC")
        oper.send("MODE #c +o oper")
        line = await owner.expect("MODE")
        self.assertEqual(line.params, ["#c", "+o", "oper"])
        oper.send("KICK #c owner")
        line = await owner.expect("KICK")
        self.assertEqual(line.params[:2], ["#c", "owner"])
        await sync(oper)
        self.assertEqual([l for l in oper.lines if l.command in ("482", "442")], [])

    @asynctest
    async def test_non_oper_outside_channel_refused(self) -> None:
        """Without operator status, the same commands from outside are refused (442)."""
        srv = await start_server(self, flood_rate=0)
        owner = await srv.client("owner")
        bob = await srv.client("bob")
        await join(owner, "#c")
        bob.send("TOPIC #c :nope")
        await bob.expect("442")
        bob.send("MODE #c +m")
        await bob.expect("442")
        bob.send("KICK #c owner")
        await bob.expect("442")
        self.assertEqual(srv.server.channels["#c"].topic, "")

