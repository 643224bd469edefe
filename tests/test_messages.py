"""Messages over real loopback sockets: PRIVMSG, NOTICE, TAGMSG, tags, echo, labels, STATUSMSG and bots."""
from __future__ import annotations

import re
from typing import Any

from twisted.trial import unittest

from tests.support import IRCClient, ServerFixture, asynctest, sleep, start_server

ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def start(case: unittest.TestCase, **overrides: Any) -> ServerFixture:
    """A loopback server with flood control off unless asked for."""
    overrides.setdefault("flood_rate", 0)
    return await start_server(case, **overrides)


def numeric(code: str, *params: str) -> Any:
    """A predicate for numeric ``code`` whose parameters after the target start with ``params``."""
    return lambda l: l.command == code and l.params[1:1 + len(params)] == list(params)


async def join(c: IRCClient, channel: str) -> None:
    """Join ``channel`` and wait for the end of NAMES."""
    c.send(f"JOIN {channel}")
    await c.expect(lambda l: l.command == "366" and l.params[1] == channel)


async def in_channel(srv: ServerFixture, channel: str, *specs: Any) -> list[IRCClient]:
    """Register clients (a nick, or (nick, caps)) who all join ``channel``, the first as op; all caught up."""
    clients = []
    for spec in specs:
        nick, caps = (spec, ()) if isinstance(spec, str) else spec
        c = await srv.client(nick, caps=caps)
        await join(c, channel)
        clients.append(c)
    await sleep(0.05)
    for c in clients:
        c.skip()
    return clients


class DeliveryTests(unittest.TestCase):
    """PRIVMSG and NOTICE to channels and nicks."""

    @asynctest
    async def test_privmsg_and_notice_to_channel(self) -> None:
        """A channel PRIVMSG/NOTICE reaches every other member, not the sender (without echo-message)."""
        srv = await start(self)
        alice, bob, carol = await in_channel(srv, "#c", "alice", "bob", "carol")
        alice.send("PRIVMSG #c :hello all")
        for c in (bob, carol):
            line = await c.expect("PRIVMSG")
            self.assertEqual(line.raw, ":alice!~alice@freeq/guest PRIVMSG #c :hello all")
        alice.send("NOTICE #c :a notice")
        for c in (bob, carol):
            line = await c.expect("NOTICE")
            self.assertEqual(line.raw, ":alice!~alice@freeq/guest NOTICE #c :a notice")
        await alice.expect_not(lambda l: l.command in ("PRIVMSG", "NOTICE"))

    @asynctest
    async def test_privmsg_and_notice_to_nick(self) -> None:
        """A private PRIVMSG/NOTICE reaches only the target, addressed with its current nick spelling."""
        srv = await start(self)
        alice = await srv.client("alice")
        bob = await srv.client("Bob")
        carol = await srv.client("carol")
        alice.send("PRIVMSG bob :psst")
        line = await bob.expect("PRIVMSG")
        self.assertEqual(line.raw, ":alice!~alice@freeq/guest PRIVMSG Bob :psst")
        alice.send("NOTICE BOB :note")
        line = await bob.expect("NOTICE")
        self.assertEqual(line.params, ["Bob", "note"])
        await carol.expect_not(lambda l: l.command in ("PRIVMSG", "NOTICE"), after=(alice,))

    @asynctest
    async def test_plain_client_sees_no_tags(self) -> None:
        """A client without capabilities gets the exact classic line, whatever tags the sender used."""
        srv = await start(self)
        alice, bob = await in_channel(srv, "#c", ("alice", ("message-tags",)), "bob")
        alice.send("@+example.com/x=1 PRIVMSG #c :text here")
        line = await bob.expect("PRIVMSG")
        self.assertEqual(line.raw, ":alice!~alice@freeq/guest PRIVMSG #c :text here")

    @asynctest
    async def test_formatting_codes_preserved(self) -> None:
        """mIRC bold/colour/italic/underline/reverse/reset codes arrive byte for byte."""
        srv = await start(self)
        alice, bob = await in_channel(srv, "#c", "alice", "bob")
        text = "\x02bold\x02 \x0304,01red\x03 \x1ditalic\x1d \x1funder\x1f \x16rev\x16 \x11mono\x11 \x0freset"
        alice.send(f"PRIVMSG #c :{text}")
        line = await bob.expect("PRIVMSG")
        self.assertEqual(line.params[1], text)

    @asynctest
    async def test_spaces_preserved_in_trailing_text(self) -> None:
        """Runs of spaces, leading/trailing spaces and a leading colon survive in the text."""
        srv = await start(self)
        alice, bob = await in_channel(srv, "#c", "alice", "bob")
        for text in ("a   b    c", "  leading", "trailing   ", ":colon start", "x"):
            alice.send(f"PRIVMSG #c :{text}")
            line = await bob.expect("PRIVMSG")
            self.assertEqual(line.params[1], text)
            self.assertTrue(line.raw.endswith(" :" + text))

    @asynctest
    async def test_single_word_without_colon(self) -> None:
        """A one-word message sent without a colon is delivered as that word."""
        srv = await start(self)
        alice, bob = await in_channel(srv, "#c", "alice", "bob")
        alice.send("PRIVMSG #c word")
        line = await bob.expect("PRIVMSG")
        self.assertEqual(line.params, ["#c", "word"])


class ErrorTests(unittest.TestCase):
    """What a sender is told when a message cannot be delivered."""

    @asynctest
    async def test_unknown_nick(self) -> None:
        """PRIVMSG to an unknown nick gets 401; NOTICE gets no reply at all."""
        srv = await start(self)
        alice = await srv.client("alice")
        alice.send("PRIVMSG ghost :hello?")
        line = await alice.expect("401")
        self.assertEqual(line.params[:2], ["alice", "ghost"])
        alice.send("NOTICE ghost :hello?")
        await alice.expect_not(lambda l: l.command.isdigit())

    @asynctest
    async def test_unknown_channel(self) -> None:
        """PRIVMSG to a channel that does not exist gets 403; NOTICE gets nothing."""
        srv = await start(self)
        alice = await srv.client("alice")
        alice.send("PRIVMSG #nowhere :hello?")
        line = await alice.expect("403")
        self.assertEqual(line.params[:2], ["alice", "#nowhere"])
        alice.send("NOTICE #nowhere :hello?")
        await alice.expect_not(lambda l: l.command.isdigit())

    @asynctest
    async def test_no_external_messages(self) -> None:
        """Under +n an outsider gets 404 and nothing is delivered; after -n it goes through."""
        srv = await start(self)
        alice, bob = await in_channel(srv, "#c", "alice", "bob")
        carol = await srv.client("carol")
        carol.send("PRIVMSG #c :from outside")
        line = await carol.expect("404")
        self.assertEqual(line.params[:2], ["carol", "#c"])
        carol.send("NOTICE #c :from outside")
        await bob.expect_not("PRIVMSG", after=(carol,))
        await bob.expect_not("NOTICE")
        await carol.expect_not("404")
        alice.send("MODE #c -n")
        await bob.expect("MODE")
        carol.send("PRIVMSG #c :from outside")
        line = await bob.expect("PRIVMSG")
        self.assertEqual(line.source, "carol!~carol@freeq/guest")

    @asynctest
    async def test_moderated(self) -> None:
        """Under +m an unvoiced member gets 404; voiced members and ops speak."""
        srv = await start(self)
        alice, bob, carol = await in_channel(srv, "#c", "alice", "bob", "carol")
        alice.send("MODE #c +m")
        await bob.expect("MODE")
        await carol.expect("MODE")
        bob.send("PRIVMSG #c :can I talk?")
        line = await bob.expect("404")
        self.assertEqual(line.params[:2], ["bob", "#c"])
        await carol.expect_not("PRIVMSG", after=(bob,))
        alice.send("MODE #c +v bob")
        await bob.expect("MODE")
        await carol.expect("MODE")
        bob.send("PRIVMSG #c :now I can")
        line = await carol.expect("PRIVMSG")
        self.assertEqual(line.params, ["#c", "now I can"])
        alice.send("PRIVMSG #c :op speaks")
        line = await carol.expect("PRIVMSG")
        self.assertEqual(line.params, ["#c", "op speaks"])

    @asynctest
    async def test_banned_member_cannot_speak_unless_voiced(self) -> None:
        """A banned member gets 404 on PRIVMSG; once voiced the same member can speak."""
        srv = await start(self)
        alice, bob, carol = await in_channel(srv, "#c", "alice", "bob", "carol")
        alice.send("MODE #c +b bob!*@*")
        await carol.expect("MODE")
        bob.send("PRIVMSG #c :muted?")
        line = await bob.expect("404")
        self.assertEqual(line.params[:2], ["bob", "#c"])
        await carol.expect_not("PRIVMSG", after=(bob,))
        alice.send("MODE #c +v bob")
        await carol.expect("MODE")
        bob.send("PRIVMSG #c :voiced now")
        line = await carol.expect("PRIVMSG")
        self.assertEqual(line.params, ["#c", "voiced now"])

    @asynctest
    async def test_banned_but_excepted_member_can_speak(self) -> None:
        """A +e match lets a banned member speak."""
        srv = await start(self)
        alice, bob, carol = await in_channel(srv, "#c", "alice", "bob", "carol")
        alice.send("MODE #c +be *!*@* bob!*@*")
        await carol.expect("MODE")
        bob.send("PRIVMSG #c :excepted")
        line = await carol.expect("PRIVMSG")
        self.assertEqual(line.params, ["#c", "excepted"])

    @asynctest
    async def test_no_recipient_and_no_text(self) -> None:
        """PRIVMSG without a target gets 411, without text 412; NOTICE gets neither."""
        srv = await start(self)
        alice = await srv.client("alice")
        await srv.client("bob")
        alice.send("PRIVMSG")
        line = await alice.expect("411")
        self.assertEqual(line.params[0], "alice")
        alice.send("PRIVMSG bob")
        await alice.expect("412")
        alice.send("PRIVMSG bob :")
        await alice.expect("412")
        alice.send("NOTICE")
        alice.send("NOTICE bob")
        await alice.expect_not(lambda l: l.command in ("411", "412"))

    @asynctest
    async def test_multiple_targets_and_targmax(self) -> None:
        """A comma list reaches each target; beyond TARGMAX (4) 407 is sent and the first 4 are served."""
        srv = await start(self)
        alice = await srv.client("alice")
        others = [await srv.client(n) for n in ("b1", "b2", "b3", "b4", "b5")]
        await join(others[0], "#c")
        alice.send("PRIVMSG b1,b2,#c :to three")
        line = await others[0].expect(lambda l: l.command == "PRIVMSG" and l.params[0] == "b1")
        self.assertEqual(line.params[1], "to three")
        await others[1].expect(lambda l: l.command == "PRIVMSG" and l.params[0] == "b2")
        alice.send("PRIVMSG b1,b2,b3,b4,b5 :to five")
        line = await alice.expect("407")
        self.assertEqual(line.params[0], "alice")
        for c in others[:4]:
            line = await c.expect(lambda l: l.command == "PRIVMSG" and l.params[1] == "to five")
            self.assertEqual(line.params[0], c.nick)
        await others[4].expect_not("PRIVMSG", after=(alice,))

    @asynctest
    async def test_targmax_follows_config(self) -> None:
        """With max_targets=2 a third target triggers 407."""
        srv = await start(self, max_targets=2)
        alice = await srv.client("alice")
        b1 = await srv.client("b1")
        b3 = await srv.client("b3")
        await srv.client("b2")
        alice.send("PRIVMSG b1,b2,b3 :x")
        await alice.expect("407")
        await b1.expect("PRIVMSG")
        await b3.expect_not("PRIVMSG", after=(alice,))

    @asynctest
    async def test_away_reply_on_privmsg_not_notice(self) -> None:
        """PRIVMSG to an away user returns 301 with the away text (and still delivers); NOTICE does not."""
        srv = await start(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        bob.send("AWAY :gone fishing")
        await bob.expect("306")
        alice.send("PRIVMSG bob :you there?")
        line = await alice.expect("301")
        self.assertEqual(line.params, ["alice", "bob", "gone fishing"])
        await bob.expect("PRIVMSG")
        alice.send("NOTICE bob :fyi")
        await bob.expect("NOTICE")
        await alice.expect_not("301")
        bob.send("AWAY")
        await bob.expect("305")
        alice.send("PRIVMSG bob :back?")
        await bob.expect("PRIVMSG")
        await alice.expect_not("301")


class StatusMsgTests(unittest.TestCase):
    """STATUSMSG: messages to @#chan and +#chan."""

    @asynctest
    async def test_statusmsg_reaches_only_the_right_members(self) -> None:
        """@#c reaches ops only; +#c reaches voiced members and ops; the target keeps its prefix."""
        srv = await start(self)
        alice, op2, voiced, plain, sender = await in_channel(srv, "#c", "alice", "op2", "voiced", "plain", "sender")
        alice.send("MODE #c +ov op2 voiced")
        for c in (op2, voiced, plain, sender):
            await c.expect("MODE")
        sender.send("PRIVMSG @#c :ops only")
        for c in (alice, op2):
            line = await c.expect("PRIVMSG")
            self.assertEqual(line.raw, ":sender!~sender@freeq/guest PRIVMSG @#c :ops only")
        sender.send("NOTICE +#c :voice and up")
        for c in (alice, op2, voiced):
            line = await c.expect("NOTICE")
            self.assertEqual(line.params, ["+#c", "voice and up"])
        await plain.expect_not(lambda l: l.command in ("PRIVMSG", "NOTICE"), after=(sender,))
        await voiced.expect_not("PRIVMSG")
        await sender.expect_not(lambda l: l.command in ("PRIVMSG", "NOTICE"))

    @asynctest
    async def test_statusmsg_from_outside_is_refused(self) -> None:
        """An outsider cannot reach @#c of a +n channel."""
        srv = await start(self)
        (alice,) = await in_channel(srv, "#c", "alice")
        carol = await srv.client("carol")
        carol.send("PRIVMSG @#c :sneaky")
        await carol.expect(numeric("404", "#c"))
        await alice.expect_not("PRIVMSG", after=(carol,))


class TagTests(unittest.TestCase):
    """message-tags, msgid, server-time, TAGMSG and echo-message."""

    @asynctest
    async def test_echo_message_has_same_msgid(self) -> None:
        """With echo-message the sender gets its own message back, with the msgid the others got."""
        srv = await start(self)
        alice, bob = await in_channel(srv, "#c", ("alice", ("message-tags", "echo-message")),
                                      ("bob", ("message-tags",)))
        alice.send("PRIVMSG #c :echo me")
        echo = await alice.expect("PRIVMSG")
        got = await bob.expect("PRIVMSG")
        self.assertEqual(echo.source, "alice!~alice@freeq/guest")
        self.assertEqual(echo.params, ["#c", "echo me"])
        self.assertEqual(echo.tags["msgid"], got.tags["msgid"])
        alice.send("PRIVMSG bob :private echo")
        echo = await alice.expect("PRIVMSG")
        got = await bob.expect("PRIVMSG")
        self.assertEqual(echo.params, ["bob", "private echo"])
        self.assertEqual(echo.tags["msgid"], got.tags["msgid"])

    @asynctest
    async def test_echo_message_without_tags_is_plain(self) -> None:
        """echo-message alone echoes the plain line."""
        srv = await start(self)
        alice, bob = await in_channel(srv, "#c", ("alice", ("echo-message",)), "bob")
        alice.send("NOTICE #c :hi")
        echo = await alice.expect("NOTICE")
        self.assertEqual(echo.raw, ":alice!~alice@freeq/guest NOTICE #c :hi")

    @asynctest
    async def test_client_tags_relayed_only_to_tag_capable_clients(self) -> None:
        """Client-only '+' tags (with escaped values) reach message-tags clients and nobody else."""
        srv = await start(self)
        alice, tagged, plain = await in_channel(srv, "#c", ("alice", ("message-tags",)),
                                                ("tagged", ("message-tags",)), "plain")
        alice.send(r"@+example.com/foo=a\sb\:c;+draft/react=👍 PRIVMSG #c :tagged message")
        line = await tagged.expect("PRIVMSG")
        self.assertEqual(line.tags["+example.com/foo"], "a b;c")
        self.assertEqual(line.tags["+draft/react"], "👍")
        line = await plain.expect("PRIVMSG")
        self.assertEqual(line.raw, ":alice!~alice@freeq/guest PRIVMSG #c :tagged message")

    @asynctest
    async def test_server_reserved_tags_from_clients_are_dropped(self) -> None:
        """msgid, time, account and other unprefixed tags a client sends are never relayed."""
        srv = await start(self)
        alice, bob, carol = await in_channel(srv, "#c", ("alice", ("message-tags",)),
                                             ("bob", ("message-tags", "server-time", "account-tag")),
                                             ("carol", ("message-tags",)))
        alice.send("@msgid=FORGED;time=2001-01-01T00:00:00.000Z;account=mallory;batch=x;label=y;+ok=1 "
                   "PRIVMSG #c :forgery")
        line = await bob.expect("PRIVMSG")
        self.assertNotEqual(line.tags["msgid"], "FORGED")
        self.assertRegex(line.tags["msgid"], ULID)
        self.assertNotEqual(line.tags["time"], "2001-01-01T00:00:00.000Z")
        for tag in ("account", "batch", "label"):
            self.assertNotIn(tag, line.tags)
        self.assertEqual(line.tags["+ok"], "1")
        line = await carol.expect("PRIVMSG")
        self.assertEqual(set(line.tags), {"msgid", "+ok"})

    @asynctest
    async def test_msgid_is_a_fresh_ulid_per_message(self) -> None:
        """Every message gets a distinct 26-character ULID msgid."""
        srv = await start(self)
        alice, bob = await in_channel(srv, "#c", "alice", ("bob", ("message-tags",)))
        for i in range(5):
            alice.send(f"PRIVMSG #c :m{i}")
        ids = []
        for i in range(5):
            line = await bob.expect("PRIVMSG")
            self.assertEqual(line.params[1], f"m{i}")
            self.assertRegex(line.tags["msgid"], ULID)
            ids.append(line.tags["msgid"])
        self.assertEqual(len(set(ids)), 5)
        self.assertEqual(ids, sorted(ids))

    @asynctest
    async def test_server_time_without_message_tags(self) -> None:
        """server-time alone adds a millisecond 'time' tag and nothing else."""
        srv = await start(self)
        alice, bob = await in_channel(srv, "#c", "alice", ("bob", ("server-time",)))
        alice.send("@+x=1 PRIVMSG #c :when?")
        line = await bob.expect("PRIVMSG")
        self.assertEqual(set(line.tags), {"time"})
        self.assertRegex(line.tags["time"], TIME)

    @asynctest
    async def test_tagmsg_only_to_tag_clients(self) -> None:
        """TAGMSG reaches message-tags clients only, with its client tags and a msgid."""
        srv = await start(self)
        alice, tagged, plain = await in_channel(srv, "#c", ("alice", ("message-tags", "echo-message")),
                                                ("tagged", ("message-tags",)), "plain")
        alice.send("@+typing=active TAGMSG #c")
        line = await tagged.expect("TAGMSG")
        self.assertEqual(line.params, ["#c"])
        self.assertEqual(line.source, "alice!~alice@freeq/guest")
        self.assertEqual(line.tags["+typing"], "active")
        self.assertRegex(line.tags["msgid"], ULID)
        echo = await alice.expect("TAGMSG")
        self.assertEqual(echo.tags["msgid"], line.tags["msgid"])
        await plain.expect_not("TAGMSG", after=(alice,))

    @asynctest
    async def test_tagmsg_without_client_tags_is_dropped(self) -> None:
        """A TAGMSG carrying no client-only tag is delivered to nobody."""
        srv = await start(self)
        alice, tagged = await in_channel(srv, "#c", ("alice", ("message-tags",)), ("tagged", ("message-tags",)))
        alice.send("TAGMSG #c")
        alice.send("@msgid=abc TAGMSG #c")
        alice.send("@+real=1 TAGMSG tagged")
        line = await tagged.expect("TAGMSG")
        self.assertEqual(line.params, ["tagged"])
        self.assertEqual(line.tags["+real"], "1")
        await tagged.expect_not("TAGMSG", after=(alice,))


class LabeledResponseTests(unittest.TestCase):
    """IRCv3 labeled-response."""

    @asynctest
    async def test_single_reply_carries_the_label(self) -> None:
        """A command with one reply line gets the label on that line (echo, numeric, PONG)."""
        srv = await start(self)
        alice, bob = await in_channel(srv, "#c", ("alice", ("labeled-response", "echo-message", "message-tags")),
                                      "bob")
        alice.send("@label=abc PRIVMSG #c :labelled")
        echo = await alice.expect("PRIVMSG")
        self.assertEqual(echo.tags["label"], "abc")
        self.assertIn("msgid", echo.tags)
        line = await bob.expect("PRIVMSG")
        self.assertEqual(line.raw, ":alice!~alice@freeq/guest PRIVMSG #c :labelled")
        alice.send("@label=p1 PING :tok")
        pong = await alice.expect("PONG")
        self.assertEqual(pong.tags, {"label": "p1"})
        self.assertEqual(pong.params, ["freeq", "tok"])
        alice.send("@label=e1 PRIVMSG ghost :x")
        err = await alice.expect("401")
        self.assertEqual(err.tags, {"label": "e1"})

    @asynctest
    async def test_no_reply_gets_ack(self) -> None:
        """A labelled command that produces no reply is acknowledged with a labelled ACK."""
        srv = await start(self)
        alice, bob = await in_channel(srv, "#c", ("alice", ("labeled-response",)), "bob")
        alice.send("@label=quiet PRIVMSG #c :no echo here")
        ack = await alice.expect("ACK")
        self.assertEqual(ack.tags, {"label": "quiet"})
        self.assertEqual(ack.source, "freeq")
        self.assertEqual(ack.params, [])
        await bob.expect("PRIVMSG")

    @asynctest
    async def test_multi_line_reply_is_batched(self) -> None:
        """A multi-line reply is wrapped in a labelled 'BATCH +x labeled-response' with batch tags on each line."""
        srv = await start(self)
        (alice,) = await in_channel(srv, "#c", ("alice", ("labeled-response", "batch")))
        alice.send(r"@label=m\s1 MODE #c")
        lines = await alice.collect_until(lambda l: l.command == "BATCH" and l.params[0].startswith("-"))
        start_line, *inner, end = lines
        self.assertEqual(start_line.command, "BATCH")
        self.assertEqual(start_line.tags, {"label": "m 1"})
        self.assertEqual(start_line.params[1:], ["labeled-response"])
        ref = start_line.params[0][1:]
        self.assertTrue(start_line.params[0].startswith("+") and ref)
        self.assertEqual([l.command for l in inner], ["324", "329"])
        for l in inner:
            self.assertEqual(l.tags, {"batch": ref})
        self.assertEqual(end.params, ["-" + ref])
        self.assertNotIn("label", end.tags)

    @asynctest
    async def test_multi_line_reply_without_batch(self) -> None:
        """Without the batch cap a multi-line labelled reply arrives unlabelled and unbatched."""
        srv = await start(self)
        (alice,) = await in_channel(srv, "#c", ("alice", ("labeled-response",)))
        alice.send("@label=nb MODE #c")
        first = await alice.expect("324")
        second = await alice.expect("329")
        self.assertEqual((first.tags, second.tags), ({}, {}))
        await alice.expect_not("BATCH")

    @asynctest
    async def test_label_ignored_without_the_cap(self) -> None:
        """A client that did not negotiate labeled-response gets no label and no ACK."""
        srv = await start(self)
        alice = await srv.client("alice", caps=("message-tags",))
        alice.send("@label=x PING :t")
        pong = await alice.expect("PONG")
        self.assertEqual(pong.tags, {})
        await alice.expect_not("ACK")


class BotTests(unittest.TestCase):
    """User mode +B."""

    @asynctest
    async def test_bot_mode_tags_messages_and_whois(self) -> None:
        """MODE me +B marks messages with 'bot' for message-tags clients, and WHOIS shows 335."""
        srv = await start(self)
        robo, tagged, plain = await in_channel(srv, "#c", "robo", ("tagged", ("message-tags",)), "plain")
        robo.send("PRIVMSG #c :before")
        line = await tagged.expect("PRIVMSG")
        self.assertNotIn("bot", line.tags)
        robo.send("MODE robo +B")
        line = await robo.expect("MODE")
        self.assertEqual(line.raw, ":robo!~robo@freeq/guest MODE robo +B")
        robo.send("PRIVMSG #c :beep boop")
        line = await tagged.expect("PRIVMSG")
        self.assertIn("bot", line.tags)
        self.assertEqual(line.tags["bot"], "")
        line = await plain.expect(lambda l: l.command == "PRIVMSG" and l.params[1] == "beep boop")
        self.assertEqual(line.raw, ":robo!~robo@freeq/guest PRIVMSG #c :beep boop")
        plain.send("WHOIS robo")
        lines = await plain.collect_until("318")
        bot = [l for l in lines if l.command == "335"]
        self.assertEqual(len(bot), 1)
        self.assertEqual(bot[0].params[:2], ["plain", "robo"])
        plain.send("WHOIS tagged")
        lines = await plain.collect_until("318")
        self.assertNotIn("335", [l.command for l in lines])
