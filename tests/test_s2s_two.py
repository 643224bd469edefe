"""Two federated servers on loopback: messages, presence and channel state cross the link."""
from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from tests.s2s_support import LogCapture, Node, start_pair, wait_for
from tests.support import asynctest


class TwoServerTests(unittest.TestCase):
    """A and B linked over real iroh endpoints on 127.0.0.1 (relays off)."""

    timeout = 30

    async def pair(self) -> tuple[Node, Node, Any, Any]:
        """A and B linked, alice on A and bob on B, both in #fed (alice created it)."""
        self.logs = LogCapture(self)
        return await start_pair(self)

    @asynctest
    async def test_channel_message(self) -> None:
        """A message from a client on A reaches a client on B in the shared channel, and back."""
        a, b, alice, bob = await self.pair()
        alice.send("PRIVMSG #fed :hello from A")
        line = await bob.expect("PRIVMSG")
        self.assertEqual(line.params, ["#fed", "hello from A"])
        self.assertTrue(line.source.startswith("alice!"))
        bob.send("PRIVMSG #fed :hi from B")
        line = await alice.expect("PRIVMSG")
        self.assertEqual(line.params, ["#fed", "hi from B"])

    @asynctest
    async def test_names_who_whois_show_remote_users(self) -> None:
        """Remote users are listed by NAMES and WHO, and WHOIS names their server."""
        a, b, alice, bob = await self.pair()
        bob.send("NAMES #fed")
        names = await bob.expect("353")
        self.assertEqual(sorted(names.params[-1].split()), ["@alice", "bob"])
        bob.send("WHO #fed")
        lines = await bob.collect_until("315")
        who = {l.params[5]: l.params[4] for l in lines if l.command == "352"}
        self.assertEqual(who, {"alice": "a.test", "bob": "b.test"})
        bob.send("WHOIS alice")
        lines = await bob.collect_until("318")
        server = [l for l in lines if l.command == "312"][0]
        self.assertEqual(server.params[2], "a.test")
        self.assertIn("@#fed", [l for l in lines if l.command == "319"][0].params[-1])

    @asynctest
    async def test_private_message_routed_to_home_server(self) -> None:
        """A DM to a remote nick reaches it (and only its server); replies come back; msgid is kept."""
        a, b, alice, bob = await self.pair()
        bob.send("CAP REQ :message-tags")
        await bob.expect(r"CAP bob ACK")
        alice.send("PRIVMSG bob :psst")
        line = await bob.expect("PRIVMSG")
        self.assertEqual(line.params, ["bob", "psst"])
        self.assertEqual(line.tags.get("+freeq.at/origin"), "a.test")
        self.assertEqual(len(line.tags.get("msgid", "")), 26)
        bob.send("PRIVMSG alice :back")
        line = await alice.expect("PRIVMSG")
        self.assertEqual(line.params, ["alice", "back"])
        self.assertEqual(a.federation.stats.get("applied:msg", 0), 1)
        self.assertEqual(b.federation.stats.get("applied:msg", 0), 1)

    @asynctest
    async def test_dm_without_shared_channel_and_unknown_nick(self) -> None:
        """DMs need no shared channel; an unknown nick is 401 locally, not broadcast."""
        a, b, alice, bob = await self.pair()
        carol = await b.client("carol")
        await wait_for(lambda: a.knows("carol"), what="carol on A")
        alice.send("PRIVMSG carol :no channel needed")
        line = await carol.expect("PRIVMSG")
        self.assertEqual(line.params[-1], "no channel needed")
        alice.send("PRIVMSG nobody :hello?")
        await alice.expect("401")

    @asynctest
    async def test_nick_change_part_and_quit(self) -> None:
        """NICK, PART and QUIT on B are seen on A; the nick map follows."""
        a, b, alice, bob = await self.pair()
        bob.send("NICK robert")
        line = await alice.expect("NICK")
        self.assertEqual((line.source.split("!")[0], line.params), ("bob", ["robert"]))
        self.assertTrue(a.knows("robert"))
        self.assertFalse(a.knows("bob"))
        bob.send("PART #fed :bye now")
        line = await alice.expect("PART")
        self.assertEqual(line.params, ["#fed", "bye now"])
        bob.send("JOIN #fed")
        await alice.expect("JOIN")
        bob.send("QUIT :gone fishing")
        line = await alice.expect("QUIT")
        self.assertEqual(line.params, ["Quit: gone fishing"])
        await wait_for(lambda: not a.knows("robert"), what="robert gone from A")
        alice.send("NAMES #fed")
        self.assertEqual((await alice.expect("353")).params[-1], "@alice")

    @asynctest
    async def test_topic_and_modes(self) -> None:
        """The op on A sets a topic and modes; B shows and enforces them; a non-op on B is refused locally."""
        a, b, alice, bob = await self.pair()
        alice.send("TOPIC #fed :federated topic")
        line = await bob.expect("TOPIC")
        self.assertEqual(line.params, ["#fed", "federated topic"])
        alice.send("MODE #fed +mk sekrit")
        line = await bob.expect("MODE")
        self.assertEqual(line.params, ["#fed", "+mk", "sekrit"])
        chan = b.server.channels["#fed"]
        self.assertEqual((chan.modes >= {"m", "n", "t"}, chan.key), (True, "sekrit"))
        bob.send("TOPIC #fed :bob's topic")
        await bob.expect("482")
        bob.send("PRIVMSG #fed :can I talk?")
        await bob.expect("404")
        alice.send("MODE #fed +v bob")
        line = await bob.expect("MODE")
        self.assertEqual(line.params, ["#fed", "+v", "bob"])
        bob.send("PRIVMSG #fed :now I can")
        self.assertEqual((await alice.expect("PRIVMSG")).params[-1], "now I can")
        alice.send("MODE #fed -mk sekrit")
        line = await bob.expect("MODE")
        self.assertEqual(line.params[:2], ["#fed", "-km"] if line.params[1] == "-km" else ["#fed", "-mk"])
        self.assertIsNone(b.server.channels["#fed"].key)

    @asynctest
    async def test_op_remote_user_then_remote_op_acts(self) -> None:
        """A's op gives bob (on B) +o; bob's MODE and TOPIC from B are then accepted on A."""
        a, b, alice, bob = await self.pair()
        alice.send("MODE #fed +o bob")
        await bob.expect(r"MODE #fed \+o bob")
        await alice.expect(r"MODE #fed \+o bob")
        bob.send("MODE #fed +i")
        line = await alice.expect("MODE")
        self.assertEqual((line.source.split("!")[0], line.params), ("bob", ["#fed", "+i"]))
        self.assertIn("i", a.server.channels["#fed"].modes)
        bob.send("TOPIC #fed :set by the remote op")
        self.assertEqual((await alice.expect("TOPIC")).params[-1], "set by the remote op")

    @asynctest
    async def test_kick_and_ban_remote_user(self) -> None:
        """A's op bans and kicks bob (on B): bob sees the KICK and cannot rejoin on B (+b)."""
        a, b, alice, bob = await self.pair()
        alice.send("MODE #fed +b bob!*@*")
        line = await bob.expect("MODE")
        self.assertEqual(line.params, ["#fed", "+b", "bob!*@*"])
        alice.send("KICK #fed bob :out")
        line = await bob.expect("KICK")
        self.assertEqual(line.params, ["#fed", "bob", "out"])
        await wait_for(lambda: a.server.users["bob"] not in a.server.channels["#fed"].members, what="bob gone on A")
        bob.send("JOIN #fed")
        await bob.expect("474")
        alice.send("MODE #fed -b bob!*@*")
        await wait_for(lambda: not b.server.channels["#fed"].lists["b"], what="unban on B")
        bob.send("JOIN #fed")
        await alice.expect(r":bob!\S+ JOIN #fed")

    @asynctest
    async def test_invite_only_across_servers(self) -> None:
        """+i set on A keeps bob's second nick out on B until A's op invites it."""
        a, b, alice, bob = await self.pair()
        carol = await b.client("carol")
        alice.send("MODE #fed +i")
        await bob.expect("MODE")
        carol.send("JOIN #fed")
        await carol.expect("473")
        await wait_for(lambda: a.knows("carol"), what="carol on A")
        alice.send("INVITE carol #fed")
        await alice.expect("341")
        line = await carol.expect("INVITE")
        self.assertEqual(line.params, ["carol", "#fed"])
        carol.send("JOIN #fed")
        await alice.expect(r":carol!\S+ JOIN #fed")

    @asynctest
    async def test_away_and_realname_follow(self) -> None:
        """AWAY and SETNAME on B update the remote user on A."""
        a, b, alice, bob = await self.pair()
        bob.send("AWAY :lunch")
        await bob.expect("306")
        await wait_for(lambda: a.server.users["bob"].away == "lunch", what="away on A")
        alice.send("PRIVMSG bob :there?")
        self.assertEqual((await alice.expect("301")).params[-1], "lunch")

    @asynctest
    async def test_large_burst_is_chunked(self) -> None:
        """A burst of hundreds of users with long fields and a long ban list fits the frame limit."""
        from tests.s2s_support import keys, start_node

        (ka, ida), (kb, idb) = keys(2)
        a = await start_node(self, "a.test", allowed=[idb], key=ka)
        b = await start_node(self, "b.test", allowed=[ida], key=kb)
        server = a.server
        chan = None
        for i in range(600):
            user = server.connect(None, lambda data: None, "127.0.0.1")
            user.set_nick(f"user{i}")
            user.realname = "r" * 190
            user.away = "a" * 390
            user.registered = user.nick_given = user.user_given = True
            server.users[user.folded] = user
            server.s2s_notify("register", user)
            if chan is None:
                server._join(user, "#big", None)
                chan = server.channels["#big"]
                for j in range(150):
                    chan.list_add("b", f"mask{j}-{'x' * 150}!*@*", user.hostmask, 0, 500)
            else:
                chan.add(user, 0)
        a.link_to(b)
        await wait_for(lambda: len(b.server.channels.get("#big", chan).members) == 600 and b.knows("user599"),
                       what="the whole burst applied on B")
        self.assertEqual(len(b.server.channels["#big"].lists["b"]), 150)
        self.assertEqual(b.server.users["user42"].away, "a" * 390)
