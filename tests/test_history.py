"""CHATHISTORY over real sockets: every subcommand, limits, errors, batches, labels and tags."""
from __future__ import annotations

from typing import Optional

from twisted.internet.task import Clock
from twisted.trial import unittest

from freeq.core.history import format_ms
from tests.support import IRCClient, Line, ServerFixture, asynctest, start_server

T0 = 1_700_000_000.0
STEP = 0.125  # exactly representable, so every message gets its own millisecond
FULL = ("batch", "message-tags", "server-time", "echo-message", "draft/chathistory", "labeled-response",
        "account-tag")


class HistoryTests(unittest.TestCase):
    """The draft/chathistory command against the in-memory store of a real server."""

    async def start(self, caps: tuple[str, ...] = FULL) -> tuple[ServerFixture, IRCClient, IRCClient]:
        """A server on a controlled clock; alice and bob (both with ``caps``) in #c."""
        self.clock = Clock()
        self.clock.advance(T0)
        self.srv = await start_server(self, clock=self.clock, flood_rate=0)
        alice = await self.srv.client("alice", caps=FULL)
        bob = await self.srv.client("bob", caps=caps)
        for c in (alice, bob):
            c.send("JOIN #c")
            await c.expect("366")
            c.skip()
        return self.srv, alice, bob

    async def say(self, client: IRCClient, target: str, text: str, command: str = "PRIVMSG",
                  tags: str = "") -> tuple[str, str]:
        """Send a message with echo-message, wait for the echo, step the clock; return (msgid, time)."""
        client.send(f"{tags}{command} {target} :{text}")
        line = await client.expect(lambda l: l.command == command and l.params[-1] == text)
        self.clock.advance(STEP)
        return line.tags["msgid"], line.tags["time"]

    async def many(self, client: IRCClient, n: int, target: str = "#c") -> list[tuple[str, str]]:
        return [await self.say(client, target, f"m{i}") for i in range(n)]

    async def batch(self, client: IRCClient, command: str, label: Optional[str] = None) -> tuple[Line, list[Line]]:
        """Send a CHATHISTORY command; return the batch opener and the lines inside the batch."""
        client.skip()
        client.send((f"@label={label} " if label else "") + command)
        opener = await client.expect("BATCH")
        self.assertTrue(opener.params[0].startswith("+"), opener)
        ref = opener.params[0][1:]
        lines = await client.collect_until(lambda l: l.command == "BATCH" and l.params == ["-" + ref])
        inner = lines[:-1]
        for line in inner:
            self.assertEqual(line.tags.get("batch"), ref)
        return opener, inner

    async def texts(self, client: IRCClient, command: str) -> list[str]:
        _opener, inner = await self.batch(client, command)
        return [l.params[-1] for l in inner]

    @asynctest
    async def test_isupport_and_cap_advertised(self) -> None:
        """ISUPPORT carries CHATHISTORY=100 and MSGREFTYPES; CAP LS offers draft/chathistory and batch."""
        srv = await start_server(self)
        c = await srv.client("alice", caps=("batch",))
        tokens = [p for l in c.lines if l.command == "005" for p in l.params]
        self.assertIn("CHATHISTORY=100", tokens)
        self.assertIn("MSGREFTYPES=msgid,timestamp", tokens)
        ls = " ".join(p for l in c.lines if l.command == "CAP" and l.params[1:2] == ["LS"] for p in l.params)
        self.assertIn("draft/chathistory", ls.split())

    @asynctest
    async def test_latest_star(self) -> None:
        """LATEST * returns the newest messages, oldest first, in a chathistory batch with msgid and time."""
        _srv, alice, bob = await self.start()
        sent = await self.many(alice, 6)
        opener, inner = await self.batch(bob, "CHATHISTORY LATEST #c * 4")
        self.assertEqual(opener.params[1:], ["chathistory", "#c"])
        self.assertEqual([l.params for l in inner], [["#c", f"m{i}"] for i in range(2, 6)])
        self.assertEqual([l.tags["msgid"] for l in inner], [m for m, _t in sent[2:]])
        self.assertEqual([l.tags["time"] for l in inner], [t for _m, t in sent[2:]])
        self.assertTrue(all(l.command == "PRIVMSG" and l.source == "alice!~alice@freeq/guest" for l in inner))

    @asynctest
    async def test_latest_after_timestamp(self) -> None:
        """LATEST with a timestamp returns only newer messages (newest ones when capped), ascending."""
        _srv, alice, bob = await self.start()
        sent = await self.many(alice, 6)
        self.assertEqual(await self.texts(bob, f"CHATHISTORY LATEST #c timestamp={sent[1][1]} 10"),
                         ["m2", "m3", "m4", "m5"])
        self.assertEqual(await self.texts(bob, f"CHATHISTORY LATEST #c timestamp={sent[1][1]} 2"), ["m4", "m5"])
        self.assertEqual(await self.texts(bob, f"CHATHISTORY LATEST #c msgid={sent[3][0]} 10"), ["m4", "m5"])

    @asynctest
    async def test_before_and_after(self) -> None:
        """BEFORE/AFTER with msgid= and timestamp= exclude the reference and are always ascending."""
        _srv, alice, bob = await self.start()
        sent = await self.many(alice, 8)
        self.assertEqual(await self.texts(bob, f"CHATHISTORY BEFORE #c msgid={sent[5][0]} 3"), ["m2", "m3", "m4"])
        self.assertEqual(await self.texts(bob, f"CHATHISTORY BEFORE #c timestamp={sent[5][1]} 10"),
                         ["m0", "m1", "m2", "m3", "m4"])
        self.assertEqual(await self.texts(bob, f"CHATHISTORY AFTER #c msgid={sent[2][0]} 3"), ["m3", "m4", "m5"])
        self.assertEqual(await self.texts(bob, f"CHATHISTORY AFTER #c timestamp={sent[5][1]} 10"), ["m6", "m7"])
        self.assertEqual(await self.texts(bob, "CHATHISTORY AFTER #c msgid=01UNKNOWNMSGID 10"), [])
        self.assertEqual(await self.texts(bob, f"CHATHISTORY BEFORE #c msgid={sent[0][0]} 10"), [])

    @asynctest
    async def test_around(self) -> None:
        """AROUND a msgid gives messages on both sides of it, including it, ascending."""
        _srv, alice, bob = await self.start()
        sent = await self.many(alice, 9)
        self.assertEqual(await self.texts(bob, f"CHATHISTORY AROUND #c msgid={sent[4][0]} 4"),
                         ["m2", "m3", "m4", "m5"])
        self.assertEqual(await self.texts(bob, f"CHATHISTORY AROUND #c msgid={sent[0][0]} 4"),
                         ["m0", "m1", "m2", "m3"])
        # by timestamp: up to half at or before it, the rest after it (only two are left after m6)
        self.assertEqual(await self.texts(bob, f"CHATHISTORY AROUND #c timestamp={sent[6][1]} 5"),
                         ["m5", "m6", "m7", "m8"])

    @asynctest
    async def test_between_both_directions(self) -> None:
        """BETWEEN is exclusive of both ends; forward keeps the oldest, backward the newest; both ascending."""
        _srv, alice, bob = await self.start()
        sent = await self.many(alice, 10)
        a, b = sent[1], sent[8]
        self.assertEqual(await self.texts(bob, f"CHATHISTORY BETWEEN #c msgid={a[0]} msgid={b[0]} 3"),
                         ["m2", "m3", "m4"])
        self.assertEqual(await self.texts(bob, f"CHATHISTORY BETWEEN #c msgid={b[0]} msgid={a[0]} 3"),
                         ["m5", "m6", "m7"])
        self.assertEqual(await self.texts(bob, f"CHATHISTORY BETWEEN #c timestamp={a[1]} timestamp={b[1]} 100"),
                         [f"m{i}" for i in range(2, 8)])
        self.assertEqual(await self.texts(bob, f"CHATHISTORY BETWEEN #c timestamp={b[1]} msgid={a[0]} 100"),
                         [f"m{i}" for i in range(2, 8)])

    @asynctest
    async def test_targets(self) -> None:
        """TARGETS lists the user's channels and account DMs with their latest message time, newest first."""
        srv, alice, bob = await self.start()
        srv.server.users["alice"].account = "did:plc:alice"
        srv.server.users["bob"].account = "did:plc:bob"
        alice.send("JOIN #d")
        await alice.expect("366")
        await self.say(alice, "#c", "in c")
        _m, t_d = await self.say(alice, "#d", "in d")
        _m, t_dm = await self.say(alice, "bob", "hi bob")
        start, end = format_ms(int(T0 * 1000) - 1000), format_ms(int((T0 + 100) * 1000))
        opener, inner = await self.batch(alice, f"CHATHISTORY TARGETS timestamp={start} timestamp={end} 10")
        self.assertEqual(opener.params[1:], ["draft/chathistory-targets"])
        self.assertEqual([l.params for l in inner],
                         [["TARGETS", "bob", t_dm], ["TARGETS", "#d", t_d], ["TARGETS", "#c", inner[2].params[2]]])
        # bob is not in #d; he sees #c and the conversation with alice (named after her).
        _o, inner = await self.batch(bob, f"CHATHISTORY TARGETS timestamp={end} timestamp={start} 10")
        self.assertEqual([l.params[1] for l in inner], ["alice", "#c"])
        _o, inner = await self.batch(alice, f"CHATHISTORY TARGETS timestamp={start} timestamp={end} 1")
        self.assertEqual([l.params[1] for l in inner], ["bob"])
        _o, inner = await self.batch(alice, f"CHATHISTORY TARGETS timestamp={t_d} timestamp={end} 10")
        self.assertEqual([l.params[1] for l in inner], ["bob"])

    @asynctest
    async def test_limit_capped_at_100(self) -> None:
        """A limit above 100 (or 0, meaning the maximum) returns at most 100 messages."""
        _srv, alice, bob = await self.start()
        await self.many(alice, 105)
        big = await self.texts(bob, "CHATHISTORY LATEST #c * 500")
        self.assertEqual(big, [f"m{i}" for i in range(5, 105)])
        self.assertEqual(len(await self.texts(bob, "CHATHISTORY LATEST #c * 0")), 100)
        self.assertEqual(len(await self.texts(bob, "CHATHISTORY LATEST #c * 100")), 100)
        self.assertEqual(len(await self.texts(bob, "CHATHISTORY LATEST #c * 99")), 99)

    @asynctest
    async def test_errors(self) -> None:
        """Missing parameters, bad limits and references, and forbidden targets are standard FAIL replies."""
        srv, alice, bob = await self.start()
        carol = await srv.client("carol", caps=("batch",))
        alice.send("JOIN #secret")
        await alice.expect("366")
        cases = [
            ("CHATHISTORY", ["NEED_MORE_PARAMS", "CHATHISTORY"]),
            ("CHATHISTORY LATEST #c *", ["NEED_MORE_PARAMS", "LATEST"]),
            ("CHATHISTORY BETWEEN #c timestamp=2023-01-01T00:00:00.000Z 10", ["NEED_MORE_PARAMS", "BETWEEN"]),
            ("CHATHISTORY FROBNICATE #c * 10", ["INVALID_PARAMS", "FROBNICATE"]),
            ("CHATHISTORY LATEST #c * abc", ["INVALID_PARAMS", "LATEST", "abc"]),
            ("CHATHISTORY LATEST #c * -1", ["INVALID_PARAMS", "LATEST", "-1"]),
            ("CHATHISTORY BEFORE #c * 10", ["INVALID_PARAMS", "BEFORE", "*"]),
            ("CHATHISTORY BEFORE #c foo=bar 10", ["INVALID_PARAMS", "BEFORE", "foo=bar"]),
            ("CHATHISTORY AFTER #c timestamp=yesterday 10", ["INVALID_PARAMS", "AFTER", "timestamp=yesterday"]),
            ("CHATHISTORY AROUND #c msgid= 10", ["INVALID_PARAMS", "AROUND", "msgid="]),
            ("CHATHISTORY TARGETS * * 10", ["INVALID_PARAMS", "TARGETS"]),
            ("CHATHISTORY LATEST #secret * 10", ["INVALID_TARGET", "LATEST", "#secret"]),
            ("CHATHISTORY LATEST #nowhere * 10", ["INVALID_TARGET", "LATEST", "#nowhere"]),
            ("CHATHISTORY LATEST alice * 10", ["INVALID_TARGET", "LATEST", "alice"]),  # guests have no DM history
        ]
        for command, expected in cases:
            bob.skip()
            bob.send(command)
            line = await bob.expect("FAIL")
            self.assertEqual(line.params[:len(expected) + 1], ["CHATHISTORY"] + expected, command)
        # carol is in no channel: #c is as invisible to her as a nonexistent one
        carol.send("CHATHISTORY LATEST #c * 10")
        line = await carol.expect("FAIL")
        self.assertEqual(line.params[:3], ["CHATHISTORY", "INVALID_TARGET", "LATEST"])
        # History is answered on the DB thread, after any barrier PING: a later query on the same (one, FIFO)
        # thread is the barrier. Its empty TARGETS batch closes after anything the first query could send.
        carol.send("CHATHISTORY TARGETS timestamp=2023-01-01T00:00:00.000Z timestamp=2030-01-01T00:00:00.000Z 10")
        await carol.expect_not("PRIVMSG", until=lambda l: l.command == "BATCH" and l.params[0].startswith("-"))

    @asynctest
    async def test_account_dm_history_only_for_its_parties(self) -> None:
        """A DM between accounts is retrievable by both parties; a third account only sees its own DMs."""
        srv, alice, bob = await self.start()
        carol = await srv.client("carol", caps=FULL)
        for nick, did in (("alice", "did:plc:a"), ("bob", "did:plc:b"), ("carol", "did:plc:c")):
            srv.server.users[nick].account = did
        await self.say(alice, "bob", "private one")
        await self.say(bob, "alice", "private two")
        self.assertEqual(await self.texts(alice, "CHATHISTORY LATEST bob * 10"), ["private one", "private two"])
        _o, inner = await self.batch(bob, "CHATHISTORY LATEST alice * 10")
        self.assertEqual([((l.source or "").split("!")[0], l.params) for l in inner],
                         [("alice", ["bob", "private one"]), ("bob", ["alice", "private two"])])
        self.assertEqual(await self.texts(carol, "CHATHISTORY LATEST alice * 10"), [])
        self.assertEqual(await self.texts(carol, "CHATHISTORY LATEST bob * 10"), [])

    @asynctest
    async def test_no_batch_without_batch_cap(self) -> None:
        """A client without the batch cap gets the bare messages (no BATCH lines, no batch tag)."""
        _srv, alice, bob = await self.start(caps=("message-tags",))
        sent = await self.many(alice, 3)
        await bob.expect(lambda l: l.command == "PRIVMSG" and l.params[-1] == "m2")  # the live copy
        bob.send("CHATHISTORY LATEST #c * 10")
        lines = [await bob.expect("PRIVMSG") for _ in range(3)]
        self.assertEqual([l.params[-1] for l in lines], ["m0", "m1", "m2"])
        self.assertEqual([l.tags["msgid"] for l in lines], [m for m, _t in sent])
        self.assertFalse(any("batch" in l.tags or "time" in l.tags for l in lines))
        await bob.expect_not("BATCH")  # the reply arrived: the callback that wrote it (and would write BATCH) has run

    @asynctest
    async def test_tags_follow_caps(self) -> None:
        """msgid and client tags need message-tags, time needs server-time (or a batch), account needs account-tag."""
        srv = await start_server(self, flood_rate=0)
        alice = await srv.client("alice", caps=FULL)
        srv.server.users["alice"].account = "did:plc:alice"
        plain = await srv.client("plain")
        tagged = await srv.client("tagged", caps=("message-tags", "server-time", "account-tag"))
        batched = await srv.client("batched", caps=("batch",))
        for c in (alice, plain, tagged, batched):
            c.send("JOIN #t")
            await c.expect("366")
        alice.send("@+example.com/mood=happy PRIVMSG #t :tagged hello")
        echo = await alice.expect("PRIVMSG")
        for c in (plain, tagged, batched):
            await c.expect("PRIVMSG")
            c.skip()

        plain.send("CHATHISTORY LATEST #t * 10")
        line = await plain.expect("PRIVMSG")
        self.assertEqual(line.tags, {})
        self.assertEqual(line.raw, ":alice!~alice@freeq/guest PRIVMSG #t :tagged hello")

        tagged.send("CHATHISTORY LATEST #t * 10")
        line = await tagged.expect("PRIVMSG")
        self.assertEqual(line.tags, {"msgid": echo.tags["msgid"], "time": echo.tags["time"],
                                     "account": "did:plc:alice", "+example.com/mood": "happy",
                                     "+freeq.at/sig": echo.tags["+freeq.at/sig"]})

        _o, inner = await self.batch(batched, "CHATHISTORY LATEST #t * 10")
        self.assertEqual(len(inner), 1)
        self.assertEqual(set(inner[0].tags), {"batch", "time"})

    @asynctest
    async def test_label_on_batch_opener(self) -> None:
        """A labeled CHATHISTORY is answered by one batch whose opener carries the label (also when empty)."""
        _srv, alice, bob = await self.start()
        await self.many(alice, 2)
        opener, inner = await self.batch(bob, "CHATHISTORY LATEST #c * 10", label="req1")
        self.assertEqual(opener.tags.get("label"), "req1")
        self.assertEqual(len(inner), 2)
        self.assertFalse(any("label" in l.tags for l in inner))
        await bob.expect_not(lambda l: l.command == "ACK" or l.tags.get("label") == "req1")  # as above: the batch arrived, its callback has run
        bob.send("JOIN #empty")
        await bob.expect("366")
        opener, inner = await self.batch(bob, "CHATHISTORY LATEST #empty * 10", label="req2")
        self.assertEqual(opener.tags.get("label"), "req2")
        self.assertEqual(inner, [])
        # An error reply is labeled as a single line.
        bob.skip()
        bob.send("@label=req3 CHATHISTORY LATEST #nowhere * 10")
        fail = await bob.expect("FAIL")
        self.assertEqual(fail.tags.get("label"), "req3")

    @asynctest
    async def test_statusmsg_not_stored_notice_stored(self) -> None:
        """Messages to @#chan or +#chan are not kept in history; NOTICEs to the channel are."""
        _srv, alice, bob = await self.start()
        await self.say(alice, "#c", "public one")
        await self.say(alice, "@#c", "ops only")
        await self.say(alice, "+#c", "voiced only")
        await self.say(alice, "#c", "a notice", command="NOTICE")
        _o, inner = await self.batch(bob, "CHATHISTORY LATEST #c * 10")
        self.assertEqual([(l.command, l.params[-1]) for l in inner],
                         [("PRIVMSG", "public one"), ("NOTICE", "a notice")])

    @asynctest
    async def test_tagmsg_not_stored(self) -> None:
        """TAGMSG (typing notifications, other client tags) is not conversation: history keeps none of it,
        the same rule as for TAGMSG arriving from a federated server (freeq.state.rules.channel_history_key)."""
        _srv, alice, bob = await self.start()
        await self.say(alice, "#c", "before")
        alice.send("@+typing=active TAGMSG #c")
        await bob.expect("TAGMSG")
        await self.say(alice, "#c", "after")
        self.assertEqual(await self.texts(bob, "CHATHISTORY LATEST #c * 10"), ["before", "after"])

    @asynctest
    async def test_history_survives_leaving_and_rejoining(self) -> None:
        """History belongs to the channel: a member who leaves and rejoins sees it again."""
        _srv, alice, bob = await self.start()
        await self.many(alice, 3)
        bob.send("PART #c")
        await bob.expect("PART")
        bob.send("CHATHISTORY LATEST #c * 10")
        line = await bob.expect("FAIL")
        self.assertEqual(line.params[1], "INVALID_TARGET")
        bob.send("JOIN #c")
        await bob.expect("366")
        self.assertEqual(await self.texts(bob, "CHATHISTORY LATEST #C * 10"), ["m0", "m1", "m2"])
