"""Cloaking: no client ever sees a client's IP address, whatever it asks and whatever happens.

Every test client connects from 127.0.0.1; the server must only ever show the
cloak (``freeq/guest``, or a host set through ``change_host``).
"""
from __future__ import annotations

import re

from twisted.trial import unittest

from tests.support import IRCClient, Line, ServerFixture, asynctest, start_server

IP = "127.0.0.1"
GUEST = "freeq/guest"
#: A dotted quad other than the documented WHOX placeholder 255.255.255.255.
DOTTED_QUAD = re.compile(r"(?<![\d.])(?!255\.255\.255\.255(?![\d.]))\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
ALL_CAPS = ("userhost-in-names", "extended-join", "away-notify", "chghost", "multi-prefix", "message-tags",
            "server-time", "echo-message", "invite-notify", "account-notify", "setname", "batch",
            "labeled-response")


async def sync(*clients: IRCClient) -> None:
    """Round-trip a PING on each client so every earlier line from the server has arrived."""
    for c in clients:
        c.send("PING :sync")
        await c.expect(lambda l: l.command == "PONG" and l.params[-1] == "sync")


async def join(c: IRCClient, chan: str) -> None:
    """Join ``chan`` and wait for the end of NAMES."""
    c.send(f"JOIN {chan}")
    await c.expect(lambda l: l.command == "366" and l.params[1] == chan)


def source_host(line: Line) -> str:
    """The host part of a ``nick!user@host`` source ('' for server sources)."""
    src = line.source or ""
    return src.rpartition("@")[2] if "!" in src else ""


class CloakingTests(unittest.TestCase):
    """The client's address never leaves the server."""

    def assert_no_ip(self, srv: ServerFixture) -> int:
        """Assert that no line any client received shows an IP; return how many lines were checked."""
        checked = 0
        for c in srv.clients:
            for line in c.lines:
                checked += 1
                self.assertNotIn(IP, line.raw, f"{c.nick} saw an IP: {line.raw!r}")
                self.assertIsNone(DOTTED_QUAD.search(line.raw), f"{c.nick} saw an address: {line.raw!r}")
        return checked

    @asynctest
    async def test_long_session_never_shows_ip(self) -> None:
        """A session touching every command that shows hosts never sends 127.0.0.1 to anyone."""
        srv = await start_server(self, tls=True, oper_password="pw", flood_rate=0)
        alice = await srv.client("alice", caps=ALL_CAPS)
        bob = await srv.client("bob")
        carol = await srv.client("carol", caps=("userhost-in-names", "extended-join"), tls=True)
        oper = await srv.client("oper", caps=("userhost-in-names",))
        victim = await srv.client("victim")
        quitter = await srv.client("quitter", caps=("extended-join",))
        watcher = await srv.client("watcher")
        everyone = [alice, bob, carol, oper, victim, quitter, watcher]

        # MONITOR before and after nicks exist (730 carries full hostmasks).
        watcher.send("MONITOR + alice,bob,victim,quitter,late")
        await watcher.expect("730")
        late = await srv.client("late")
        line = await watcher.expect(lambda l: l.command == "730" and l.params[1].startswith("late!"))
        self.assertEqual(line.params[1], "late!~late@" + GUEST)
        watcher.send("MONITOR S")
        await watcher.expect("730")

        # JOIN (plain and extended), NAMES with userhost-in-names.
        for c in (alice, bob, carol, oper, victim, quitter, late):
            await join(c, "#cloak")
        carol.send("NAMES #cloak")
        names = await carol.expect("353")
        hostmasks = names.params[-1].split()
        self.assertGreaterEqual(len(hostmasks), 2)
        for entry in hostmasks:
            self.assertTrue(entry.endswith("@" + GUEST), entry)
        await carol.expect("366")

        # Messages, INVITE (with invite-notify), AWAY.
        alice.send("PRIVMSG #cloak :hello all")
        await bob.expect("PRIVMSG")
        bob.send("PRIVMSG alice :private hello")
        line = await alice.expect("PRIVMSG")
        self.assertEqual(source_host(line), GUEST)
        alice.send("NOTICE bob :a notice")
        await bob.expect("NOTICE")
        alice.send("MODE #cloak +i")
        await alice.expect("MODE")
        outsider = await srv.client("outsider", caps=("userhost-in-names",))
        everyone.append(outsider)
        alice.send("INVITE outsider #cloak")
        line = await outsider.expect("INVITE")
        self.assertEqual(source_host(line), GUEST)
        await alice.expect("341")
        await join(outsider, "#cloak")
        bob.send("AWAY :away from keyboard")
        await alice.expect("AWAY")

        # WHO, WHOX with the IP and host fields, WHOIS, USERHOST.
        for query in ("WHO #cloak", "WHO *", "WHO bob", "WHO *guest*"):
            bob.send(query)
            for row in (l for l in await bob.collect_until("315") if l.command == "352"):
                self.assertEqual(row.params[3], GUEST, row.raw)
        bob.send("WHO #cloak %tcuihnr,99")
        rows = [l for l in await bob.collect_until("315") if l.command == "354"]
        self.assertEqual(len(rows), 8)
        for row in rows:
            self.assertEqual(row.params[4:6], ["255.255.255.255", GUEST], row.raw)
        bob.send("WHO * %ih")
        for row in (l for l in await bob.collect_until("315") if l.command == "354"):
            self.assertEqual(row.params[1:], ["255.255.255.255", GUEST])
        for nick in ("alice", "carol", "bob"):
            bob.send(f"WHOIS {nick}")
            line = await bob.expect("311")
            self.assertEqual(line.params[3], GUEST)
            await bob.expect("318")
        bob.send("WHOIS alice alice")
        await bob.expect("318")
        bob.send("USERHOST alice bob carol oper")
        line = await bob.expect("302")
        for reply in line.params[-1].split():
            self.assertTrue(reply.endswith("@" + GUEST), reply)

        # OPER, KILL (the victim's ERROR, the co-members' QUIT), QUIT, WHOWAS.
        oper.send("OPER admin pw")
        await oper.expect("381")
        oper.send("KILL victim :cloak test")
        await victim.expect("KILL")
        line = await victim.expect("ERROR")
        self.assertIn(GUEST, line.params[0])
        await victim.closed
        await alice.expect(lambda l: l.command == "QUIT" and (l.source or "").startswith("victim!"))
        quitter.send("QUIT :goodbye")
        line = await quitter.expect("ERROR")
        self.assertIn(GUEST, line.params[0])
        await quitter.closed
        await bob.expect(lambda l: l.command == "QUIT" and (l.source or "").startswith("quitter!"))
        await watcher.expect("731")
        alice.send("NICK alice2")
        await alice.expect("NICK")
        for gone in ("victim", "quitter", "alice"):
            bob.send(f"WHOWAS {gone}")
            line = await bob.expect("314")
            self.assertEqual(line.params[3], GUEST)
            await bob.expect("369")

        # CHGHOST (modern and fallback) and extended-join after it.
        srv.server.change_host(srv.server.users["carol"], "~carol", "carol/cloak")
        line = await alice.expect("CHGHOST")
        self.assertEqual(line.params, ["~carol", "carol/cloak"])
        await bob.expect(lambda l: l.command == "JOIN" and l.source == "carol!~carol@carol/cloak")
        await join(carol, "#second")
        await join(alice, "#second")
        carol.send("WHO #second %ih")
        rows = [l for l in await carol.collect_until("315") if l.command == "354"]
        self.assertEqual(sorted(r.params[2] for r in rows), sorted([GUEST, "carol/cloak"]))
        carol.send("TOPIC #second :cloaked topic")
        carol.send("TOPIC #second")
        await carol.expect("333")
        carol.send("LUSERS")
        await carol.expect("266")
        await sync(*(c for c in everyone if not c.is_closed), late)

        # Every user-sourced line shows a cloak, and nothing anywhere shows an address.
        for c in srv.clients:
            for line in c.lines:
                if "!" in (line.source or ""):
                    self.assertIn(source_host(line), (GUEST, "carol/cloak"), line.raw)
        self.assertGreater(self.assert_no_ip(srv), 300)

    @asynctest
    async def test_who_cannot_search_by_ip(self) -> None:
        """WHO with an IP or IP glob matches nobody, so WHO is no oracle for addresses."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        await srv.client("bob")
        for mask in (IP, "*127*", "*.0.0.*"):
            alice.send(f"WHO {mask}")
            lines = await alice.collect_until("315")
            self.assertEqual([l.raw for l in lines if l.command == "352"], [], mask)

    @asynctest
    async def test_own_view_is_cloaked(self) -> None:
        """Even a client's own welcome, WHOIS and ERROR show only its cloak."""
        srv = await start_server(self)
        alice = await srv.client("alice")
        welcome = alice.lines[0]
        self.assertEqual(welcome.command, "001")
        self.assertTrue(welcome.params[-1].endswith("alice!~alice@" + GUEST), welcome.raw)
        alice.send("WHOIS alice")
        line = await alice.expect("311")
        self.assertEqual(line.params[3], GUEST)
        alice.send("QUIT")
        line = await alice.expect("ERROR")
        self.assertIn(GUEST, line.params[0])
        await alice.closed
        self.assert_no_ip(srv)

    @asynctest
    async def test_unregistered_and_refused_connections(self) -> None:
        """Errors before registration and connection refusals do not echo the address either."""
        srv = await start_server(self, max_connections_per_ip=2)
        raw = await srv.connect()
        raw.send("PRIVMSG x :y")
        await raw.expect("451")
        second = await srv.connect()
        third = await srv.connect()
        line = await third.expect("ERROR")
        self.assertIn("Too many connections", line.params[0])
        await third.closed
        raw.send("QUIT")
        await raw.expect("ERROR")
        second.disconnect()
        self.assert_no_ip(srv)
