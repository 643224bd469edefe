"""Network bans over real sockets (issue #13 item 4): KLINE, DLINE, UNKLINE, UNDLINE, STATS k/d, enforcement at
accept and at registration (after SASL for DIDs), disconnection of matching users, expiry, the config file's
bans, persistence across a restart, and the real address in WHOIS for operators."""
from __future__ import annotations

import dataclasses
import os
import sqlite3
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.config import Config, Listen
from freeq.core import bans as core_bans
from tests.support import IRCClient, ServerFixture, asynctest, start_server, start_tree
from tests.test_persistence import Running
from tests.test_sasl import authenticate, new_credential, open_negotiation

OPER_PASSWORD = "hunter2-oper"


async def oper(srv: ServerFixture, nick: str = "boss", source: str = "127.0.0.1") -> IRCClient:
    """A registered client (from loopback address ``source``) made a server operator with the shared password."""
    c = await srv.client(nick, source=source)
    c.send(f"OPER {nick} {OPER_PASSWORD}")
    await c.expect("381")
    c.skip()
    return c


async def refused(srv: ServerFixture, user: str) -> IRCClient:
    """A connection registering with ``USER user``, run until the server closes it."""
    c = await srv.connect()
    c.send(f"NICK {user}")
    c.send(f"USER {user} 0 * :Real")
    await c.closed
    return c


def hits(events: list[Any], text: str) -> list[Any]:
    """The warn-level log events whose text contains ``text``."""
    return [e for e in events if e.get("log_level") == LogLevel.warn and text in formatEvent(e)]


class KlineTests(unittest.TestCase):
    """K-lines: refused at registration, existing users closed, lifted, listed, gated, bounded."""

    async def start(self, **overrides: Any) -> ServerFixture:
        overrides.setdefault("flood_rate", 0)
        return await start_server(self, oper_password=OPER_PASSWORD, **overrides)

    @asynctest
    async def test_kline_refuses_registration_and_is_logged(self) -> None:
        """A K-lined user@host gets 465 and ERROR (K-lined: reason) instead of 001; the hit is logged at warn with
        the IP first (fail2ban) and counted."""
        srv = await self.start()
        boss = await oper(srv)
        boss.send("KLINE victim@127.0.0.1 :spamming the network")
        notice = await boss.expect("NOTICE")
        self.assertIn("Added K-line on victim@127.0.0.1 permanently: spamming the network", notice.params[-1])
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        c = await refused(srv, "victim")
        commands = [l.command for l in c.lines]
        self.assertIn("465", commands)
        self.assertNotIn("001", commands)
        error = [l for l in c.lines if l.command == "ERROR"][-1]
        self.assertIn("(K-lined: spamming the network)", error.params[-1])
        logged = hits(events, "K-line hit from 127.0.0.1")
        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["ip"], "127.0.0.1")
        self.assertEqual(srv.server.metrics.kline_hits, 1)
        other = await srv.client("someone")  # another username at the same address is fine
        other.send("PING x")
        await other.expect("PONG")

    @asynctest
    async def test_kline_closes_connected_user_and_unkline_lets_back(self) -> None:
        """KLINE closes a matching user already connected (co-members see "K-lined"); UNKLINE lets it back."""
        srv = await self.start()
        boss = await oper(srv)
        victim = await srv.client("victim")
        victim.send("JOIN #room")
        await victim.expect("366")
        boss.send("JOIN #room")
        await boss.expect("366")
        boss.skip()
        boss.send("KLINE victim@127.0.0.1 :bye")
        await victim.expect("465")
        error = await victim.expect("ERROR")
        self.assertIn("K-lined: bye", error.params[-1])
        await victim.closed
        quit_line = await boss.expect("QUIT")
        self.assertEqual(quit_line.params[-1], "K-lined")
        notice = await boss.expect("NOTICE")
        self.assertIn("1 connection(s) closed", notice.params[-1])
        boss.send("UNKLINE victim@127.0.0.1")
        notice = await boss.expect("NOTICE")
        self.assertIn("Removed K-line on victim@127.0.0.1", notice.params[-1])
        back = await srv.client("victim")
        back.send("PING x")
        await back.expect("PONG")
        boss.send("UNKLINE victim@127.0.0.1")
        notice = await boss.expect("NOTICE")
        self.assertIn("no K-line on victim@127.0.0.1", notice.params[-1])

    @asynctest
    async def test_stats_lists_stored_and_config_bans(self) -> None:
        """STATS k: 216 per K-line (temporary ones lowercase, config ones marked), then 219; STATS d: 225 per
        D-line; other letters end at once; STATS u gives the uptime."""
        srv = await self.start(config_bans=(("*@192.0.2.0/24", "from the file"), ("198.51.100.0/24", "file dline")))
        boss = await oper(srv)
        boss.send("KLINE 30 spam*@*.example.net :temporary")
        await boss.expect("NOTICE")
        boss.send("KLINE did:plc:abcdefghijklmnopqrstuvwx :an account")
        await boss.expect("NOTICE")
        boss.send("DLINE 203.0.113.0/24 :a network")
        await boss.expect("NOTICE")
        boss.send("STATS k")
        lines = await boss.collect_until("219")
        rows = [l.params[1:5] for l in lines if l.command == "216"]
        self.assertIn(["k", "*.example.net", "*", "spam*"], rows)
        self.assertIn(["K", "did:plc:abcdefghijklmnopqrstuvwx", "*", "*"], rows)
        self.assertIn(["K", "192.0.2.0/24", "*", "*"], rows)
        texts = {l.params[2]: l.params[-1] for l in lines if l.command == "216"}
        self.assertIn("[config file] from the file", texts["192.0.2.0/24"])
        self.assertIn("temporary (set by boss!", texts["*.example.net"])
        self.assertIn("30 minute(s) left", texts["*.example.net"])
        self.assertEqual(lines[-1].params[1], "k")
        boss.send("STATS d")
        lines = await boss.collect_until("219")
        self.assertEqual(sorted(l.params[1:3] for l in lines if l.command == "225"),
                         [["D", "198.51.100.0/24"], ["D", "203.0.113.0/24"]])
        self.patch(core_bans, "MAX_STATS_LINES", 1)  # bounded output: the rest is counted in a NOTICE
        boss.send("STATS d")
        notice = await boss.expect("NOTICE")
        self.assertIn("STATS d: 2 D-lines, the first 1 listed", notice.params[-1])
        lines = await boss.collect_until("219")
        self.assertEqual(len([l for l in lines if l.command == "225"]), 1)
        boss.send("STATS u")
        up = await boss.expect("242")
        self.assertIn("Server Up 0 days", up.params[-1])
        boss.send("STATS x")
        end = await boss.expect(lambda l: l.command in ("219", "216", "225"))
        self.assertEqual(end.command, "219")

    @asynctest
    async def test_non_operators_get_481(self) -> None:
        """KLINE, DLINE, UNKLINE, UNDLINE and STATS k/d need a server operator (481); nothing is banned."""
        srv = await self.start()
        pleb = await srv.client("pleb")
        for line in ("KLINE x@host.example :no", "DLINE 192.0.2.1 :no", "UNKLINE x@host.example",
                     "UNDLINE 192.0.2.1"):
            pleb.send(line)
            await pleb.expect("481")
        pleb.send("STATS k")
        await pleb.expect("481")
        await pleb.expect("219")
        self.assertEqual(len(srv.server.network_bans), 0)

    @asynctest
    async def test_bad_input_is_refused_clearly(self) -> None:
        """Too wide masks, bad DIDs and networks, a duration over a year, a missing mask: a NOTICE or 461 saying
        why; nothing is banned; the cap on the number of bans refuses more with a NOTICE."""
        srv = await self.start()
        boss = await oper(srv)
        for line, why in (("KLINE *@* :all", "too wide"), ("KLINE did:plc: :x", "not a valid DID"),
                          ("DLINE 0.0.0.0/0 :all", "too wide"), ("DLINE host.example :x", "not an IP address"),
                          ("KLINE 9999999 x@host.example :long", "at most 365 days")):
            boss.send(line)
            notice = await boss.expect("NOTICE")
            self.assertIn(why, notice.params[-1], line)
        boss.send("KLINE")
        await boss.expect("461")
        self.assertEqual(len(srv.server.network_bans), 0)
        self.patch(core_bans, "MAX_BANS", 2)
        boss.send("DLINE 192.0.2.1 :one")
        boss.send("DLINE 192.0.2.2 :two")
        boss.send("DLINE 192.0.2.3 :three")
        await boss.expect("NOTICE")
        await boss.expect("NOTICE")
        notice = await boss.expect("NOTICE")
        self.assertIn("refused, 2 bans are held already", notice.params[-1])
        boss.send("DLINE 192.0.2.2 :replaced")  # the same mask replaces: no room needed
        notice = await boss.expect("NOTICE")
        self.assertIn("Updated D-line on 192.0.2.2", notice.params[-1])

    @asynctest
    async def test_reason_is_made_safe_and_bounded(self) -> None:
        """A reason with control characters or over 200 bytes is cleaned and cut before it is kept or sent."""
        srv = await self.start()
        boss = await oper(srv)
        boss.send("KLINE victim@127.0.0.1 :" + "\x01é" * 120)
        await boss.expect("NOTICE")
        ban = srv.server.network_bans.get("K", "victim@127.0.0.1")
        assert ban is not None
        self.assertLessEqual(len(ban.reason.encode()), 200)
        self.assertNotIn("\x01", ban.reason)

    @asynctest
    async def test_did_kline_refuses_after_sasl(self) -> None:
        """A DID K-line refuses the account at registration end, once SASL said who it is (903, then 465)."""
        srv = await self.start()
        boss = await oper(srv)
        cred = new_credential()
        boss.send(f"KLINE {cred.did} :that account")
        await boss.expect("NOTICE")
        c = await open_negotiation(srv, "alice")
        line = await authenticate(c, cred)
        self.assertEqual(line.command, "903")
        c.send("CAP END")
        await c.expect("465")
        error = await c.expect("ERROR")
        self.assertIn("K-lined: that account", error.params[-1])
        await c.closed
        self.assertNotIn("001", [l.command for l in c.lines])
        guest = await srv.client("guest")  # the same address without that account is fine
        guest.send("PING x")
        await guest.expect("PONG")

    @asynctest
    async def test_temporary_kline_expires(self) -> None:
        """A K-line of 1 minute refuses until the clock passes it, then lets the user in (and leaves STATS)."""
        clock = Clock()
        clock.advance(1_700_000_000)
        srv = await self.start(clock=clock)
        boss = await oper(srv)
        boss.send("KLINE 1 victim@127.0.0.1 :cool down")
        await boss.expect("NOTICE")
        c = await refused(srv, "victim")
        self.assertIn("465", [l.command for l in c.lines])
        clock.advance(61)
        srv.server.sweep()  # the periodic sweep forgets it (and deletes its row)
        self.assertEqual(len(srv.server.network_bans), 0)
        back = await srv.client("victim")
        back.send("PING x")
        await back.expect("PONG")
        boss.send("STATS k")
        lines = await boss.collect_until("219")
        self.assertEqual([l for l in lines if l.command == "216"], [])
        self.assertEqual(len(srv.server.network_bans), 0)


class DlineTests(unittest.TestCase):
    """D-lines refuse connections at accept, before registration."""

    @asynctest
    async def test_config_dline_refused_at_accept(self) -> None:
        """A config-file D-line: the connection gets ERROR (D-lined: reason) and is closed before any line is
        read; logged at warn with the IP, counted."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        srv = await start_server(self, config_bans=(("127.0.0.0/8", "no loopback"),))
        c = await srv.connect()
        await c.closed
        self.assertEqual([l.command for l in c.lines], ["ERROR"])
        self.assertEqual(c.lines[0].params[-1], "Closing Link: 127.0.0.1 (D-lined: no loopback)")
        self.assertEqual(len(hits(events, "D-line hit from 127.0.0.1")), 1)
        self.assertEqual(srv.server.metrics.dline_hits, 1)
        self.assertEqual(len(srv.server.connections), 0)

    @asynctest
    async def test_dline_command_closes_and_refuses(self) -> None:
        """DLINE on an address (from an operator on another one, 127.0.0.2) closes its connections and refuses
        new ones at accept; once lifted with UNDLINE, connections are accepted again."""
        srv = await start_server(self, oper_password=OPER_PASSWORD, flood_rate=0)
        boss = await oper(srv, source="127.0.0.2")
        victim = await srv.client("victim")
        boss.send("DLINE 127.0.0.1 :whole host")
        error = await victim.expect("ERROR")
        self.assertIn("D-lined: whole host", error.params[-1])
        await victim.closed
        c = await srv.connect()
        await c.closed
        self.assertEqual(c.lines[0].params[-1], "Closing Link: 127.0.0.1 (D-lined: whole host)")
        boss.send("UNDLINE 127.0.0.1")
        await boss.expect(lambda l: l.command == "NOTICE" and "Removed D-line on 127.0.0.1" in l.params[-1])
        ok = await srv.client("victim")
        ok.send("PING x")
        await ok.expect("PONG")

    @asynctest
    async def test_undline(self) -> None:
        """UNDLINE lifts a D-line (normalised like DLINE); a config-file one cannot be lifted by command."""
        srv = await start_server(self, oper_password=OPER_PASSWORD, flood_rate=0,
                                 config_bans=(("198.51.100.0/24", "file"),))
        boss = await oper(srv)
        boss.send("DLINE 192.0.2.9/24 :net")
        notice = await boss.expect("NOTICE")
        self.assertIn("D-line on 192.0.2.0/24", notice.params[-1])
        boss.send("UNDLINE 192.0.2.0/24")
        notice = await boss.expect("NOTICE")
        self.assertIn("Removed D-line on 192.0.2.0/24", notice.params[-1])
        boss.send("UNDLINE 198.51.100.0/24")
        notice = await boss.expect("NOTICE")
        self.assertIn("banned in the config file", notice.params[-1])


    @asynctest
    async def test_config_bans_follow_a_reload(self) -> None:
        """A reload replaces server.config: its [[kline]] bans apply to the next connection, and dropped ones
        no longer do (the compiled list follows the config in force)."""
        srv = await start_server(self)
        first = await srv.client("early")
        srv.server.config = dataclasses.replace(srv.server.config, config_bans=(("127.0.0.1", "reloaded"),))
        c = await srv.connect()
        await c.closed
        self.assertEqual(c.lines[0].params[-1], "Closing Link: 127.0.0.1 (D-lined: reloaded)")
        first.send("PING x")  # replacing server.config alone closes nobody (apply_config does: below)
        await first.expect("PONG")
        srv.server.config = dataclasses.replace(srv.server.config, config_bans=())
        ok = await srv.client("later")
        ok.send("PING x")
        await ok.expect("PONG")


    @asynctest
    async def test_reload_closes_users_a_new_config_ban_covers(self) -> None:
        """apply_config (REHASH, SIGHUP) with a [[kline]] the file did not have before closes the connected users it
        covers, as KLINE does; others stay."""
        srv = await start_server(self, flood_rate=0)
        victim = await srv.client("victim")
        other = await srv.client("other")
        srv.server.apply_config(dataclasses.replace(srv.server.config, config_bans=(("victim@127.0.0.1", "gone"),)))
        await victim.closed
        self.assertIn("(K-lined: gone)", [l for l in victim.lines if l.command == "ERROR"][-1].params[-1])
        other.send("PING x")
        await other.expect("PONG")
        srv.server.apply_config(dataclasses.replace(srv.server.config))  # the same bans again: nobody closed
        other.send("PING y")
        await other.expect("PONG")


class SelfBanTests(unittest.TestCase):
    """An operator cannot ban its own connection by accident."""

    @asynctest
    async def test_kline_and_dline_matching_the_setter_are_refused(self) -> None:
        """KLINE boss@127.0.0.1 and DLINE 127.0.0.1 from boss's own connection are refused with a NOTICE; nothing
        is held and boss stays."""
        srv = await start_server(self, oper_password=OPER_PASSWORD, flood_rate=0)
        boss = await oper(srv)
        for line in ("KLINE *@127.0.0.1 :oops", "DLINE 127.0.0.0/8 :oops"):
            boss.send(line)
            notice = await boss.expect("NOTICE")
            self.assertIn("matches your own connection", notice.params[-1])
        self.assertEqual(len(srv.server.network_bans), 0)
        boss.send("PING x")
        await boss.expect("PONG")


class WhoisTests(unittest.TestCase):
    """The real address is shown to server operators only."""

    @asynctest
    async def test_whois_real_host_to_opers_only(self) -> None:
        """An operator's WHOIS has 378 and 338 with the IP; a user's (even of itself) has neither."""
        srv = await start_server(self, oper_password=OPER_PASSWORD, flood_rate=0)
        boss = await oper(srv)
        alice = await srv.client("alice")
        boss.send("WHOIS alice")
        lines = await boss.collect_until("318")
        by = {l.command: l.params for l in lines}
        self.assertEqual(by["378"][1:], ["alice", "is connecting from *@127.0.0.1 127.0.0.1"])
        self.assertEqual(by["338"][1:], ["alice", "~alice@127.0.0.1", "127.0.0.1", "actually using host"])
        for asker, nick in ((alice, "alice"), (alice, "boss")):
            asker.send(f"WHOIS {nick}")
            lines = await asker.collect_until("318")
            self.assertFalse([l for l in lines if l.command in ("338", "378") or "127.0.0.1" in l.raw])


class RestartTests(unittest.TestCase):
    """Bans are kept in the database: a restart on the same data directory keeps them, expired rows go."""

    @asynctest
    async def test_bans_survive_restart_and_expired_rows_are_pruned(self) -> None:
        data_dir = os.path.abspath(self.mktemp())

        def config() -> Config:
            return Config(listen=Listen("127.0.0.1", 0), tls_listen=None, data_dir=data_dir, flood_rate=0,
                          connection_rate=0, oper_password=OPER_PASSWORD)

        async def start() -> Running:
            top, port = start_tree(config())
            running = Running(top, port)
            self.addCleanup(lambda: defer.ensureDeferred(running.stop()))
            return running

        first = await start()
        boss = await oper(first.fixture)
        boss.send("KLINE victim@127.0.0.1 :kept")
        await boss.expect("NOTICE")
        boss.send("DLINE 600 192.0.2.0/24 :kept for ten hours")
        await boss.expect("NOTICE")
        await first.stop()
        db = os.path.join(data_dir, "freeq.db")
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("INSERT INTO network_bans(kind, mask, id, reason, setter, set_at, expires, origin) "
                         "VALUES ('D', '198.51.100.0/24', 'old', 'gone', 'x', 1, 2, '')")
        conn.close()

        second = await start()
        bans = second.server.network_bans
        self.assertEqual(sorted((b.kind, b.mask, b.reason) for b in bans),
                         [("D", "192.0.2.0/24", "kept for ten hours"), ("K", "victim@127.0.0.1", "kept")])
        c = await refused(second.fixture, "victim")
        self.assertIn("465", [l.command for l in c.lines])
        rows = second.store.conn.execute("SELECT mask FROM network_bans ORDER BY mask").fetchall()
        self.assertEqual([r[0] for r in rows], ["192.0.2.0/24", "victim@127.0.0.1"])
