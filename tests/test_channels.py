"""Channels over real loopback sockets: JOIN/PART, INVITE, TOPIC, NAMES, LIST, MODE and KICK."""
from __future__ import annotations

from typing import Any, Optional

from twisted.trial import unittest

from tests.support import IRCClient, Line, ServerFixture, asynctest, sleep, start_server


async def start(case: unittest.TestCase, **overrides: Any) -> ServerFixture:
    """A loopback server with flood control off unless asked for."""
    overrides.setdefault("flood_rate", 0)
    return await start_server(case, **overrides)


def numeric(code: str, *params: str) -> Any:
    """A predicate for numeric ``code`` whose parameters after the target start with ``params``."""
    return lambda l: l.command == code and l.params[1:1 + len(params)] == list(params)


async def join(c: IRCClient, channel: str, key: str = "") -> list[Line]:
    """Join ``channel`` (with ``key``), wait for the end of NAMES and return what arrived on the way."""
    c.send(f"JOIN {channel} {key}".rstrip())
    return await c.collect_until(lambda l: l.command == "366" and l.params[1].lower() == channel.lower())


async def settle(*clients: IRCClient) -> None:
    """Let in-flight lines arrive, then mark everything read."""
    await sleep(0.05)
    for c in clients:
        c.skip()


async def names(c: IRCClient, channel: str) -> list[str]:
    """Send NAMES and return every entry of the 353 replies."""
    c.send(f"NAMES {channel}")
    lines = await c.collect_until("366")
    return [n for l in lines if l.command == "353" for n in l.params[-1].split()]


async def setup_channel(srv: ServerFixture, channel: str, op: str, *others: str,
                        caps: Optional[dict[str, tuple[str, ...]]] = None) -> list[IRCClient]:
    """Register ``op`` (who creates ``channel``) and ``others`` (who join it); return them, all caught up."""
    clients = []
    for nick in (op,) + others:
        c = await srv.client(nick, caps=(caps or {}).get(nick, ()))
        await join(c, channel)
        clients.append(c)
    await settle(*clients)
    return clients


def mode_line(channel: str, *params: str) -> Any:
    """A predicate for ``MODE channel params...``."""
    return lambda l: l.command == "MODE" and l.params == [channel, *params]


class JoinTests(unittest.TestCase):
    """JOIN: creation, echo, NAMES, topic and the admission checks."""

    @asynctest
    async def test_creator_gets_op_and_default_modes(self) -> None:
        """The first joiner gets the JOIN echo, 353 with @nick, 366, and the channel is +nt."""
        srv = await start(self)
        alice = await srv.client("alice")
        lines = await join(alice, "#new")
        self.assertEqual(lines[0].raw, ":alice!~alice@freeq/guest JOIN #new")
        names_line = next(l for l in lines if l.command == "353")
        self.assertEqual(names_line.params, ["alice", "=", "#new", "@alice"])
        self.assertEqual(lines[-1].params[:2], ["alice", "#new"])
        alice.send("MODE #new")
        line = await alice.expect("324")
        self.assertEqual(line.params[1:], ["#new", "+nt"])
        line = await alice.expect("329")
        self.assertEqual(line.params[1], "#new")
        self.assertTrue(line.params[2].isdigit())

    @asynctest
    async def test_join_is_echoed_to_members(self) -> None:
        """A second joiner is announced to members and sees both names, op first with its prefix."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#c", "alice")
        bob = await srv.client("bob")
        lines = await join(bob, "#c")
        self.assertEqual(lines[0].raw, ":bob!~bob@freeq/guest JOIN #c")
        entries = [n for l in lines if l.command == "353" for n in l.params[-1].split()]
        self.assertEqual(sorted(entries), ["@alice", "bob"])
        line = await alice.expect("JOIN")
        self.assertEqual(line.raw, ":bob!~bob@freeq/guest JOIN #c")

    @asynctest
    async def test_join_twice_is_silent(self) -> None:
        """Joining a channel one is already in produces nothing."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#c", "alice")
        alice.send("JOIN #c")
        await alice.expect_not(lambda l: l.command in ("JOIN", "353", "366"))

    @asynctest
    async def test_topic_sent_on_join(self) -> None:
        """A joiner gets 332 and 333 (setter and time) before NAMES when a topic is set."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#c", "alice")
        alice.send("TOPIC #c :the topic here")
        await alice.expect("TOPIC")
        bob = await srv.client("bob")
        lines = await join(bob, "#c")
        codes = [l.command for l in lines]
        self.assertLess(codes.index("332"), codes.index("353"))
        topic = lines[codes.index("332")]
        self.assertEqual(topic.params, ["bob", "#c", "the topic here"])
        who = lines[codes.index("333")]
        self.assertEqual(who.params[1:3], ["#c", "alice!~alice@freeq/guest"])
        self.assertTrue(who.params[3].isdigit())

    @asynctest
    async def test_join_with_keys(self) -> None:
        """With +k, no key or a wrong key gets 475; the right key (also in a key list) joins."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#locked", "alice")
        alice.send("MODE #locked +k s3cret")
        await alice.expect(mode_line("#locked", "+k", "s3cret"))
        bob = await srv.client("bob")
        bob.send("JOIN #locked")
        line = await bob.expect("475")
        self.assertEqual(line.params[:2], ["bob", "#locked"])
        bob.send("JOIN #locked wrong")
        await bob.expect("475")
        bob.send("JOIN #open,#locked x,s3cret")
        await bob.expect(lambda l: l.command == "JOIN" and l.params == ["#open"])
        await bob.expect(lambda l: l.command == "JOIN" and l.params == ["#locked"])
        await alice.expect(lambda l: l.command == "JOIN" and (l.source or "").startswith("bob!"))

    @asynctest
    async def test_join_zero_parts_all(self) -> None:
        """JOIN 0 parts every channel, each PART seen by that channel's members."""
        srv = await start(self)
        alice = await srv.client("alice")
        bob = await srv.client("bob")
        for chan in ("#a", "#b", "#c"):
            await join(alice, chan)
        await join(bob, "#b")
        await settle(alice, bob)
        alice.send("JOIN 0")
        parted = set()
        for _ in range(3):
            line = await alice.expect("PART")
            self.assertEqual(line.source, "alice!~alice@freeq/guest")
            parted.add(line.params[0])
        self.assertEqual(parted, {"#a", "#b", "#c"})
        line = await bob.expect("PART")
        self.assertEqual(line.params[0], "#b")
        self.assertEqual(srv.server.users["alice"].channels, {})
        self.assertEqual(set(srv.server.channels), {"#b"})

    @asynctest
    async def test_invalid_channel_names(self) -> None:
        """A name without a channel prefix gets 403; one longer than CHANNELLEN gets 479."""
        srv = await start(self)
        alice = await srv.client("alice")
        alice.send("JOIN test")
        line = await alice.expect("403")
        self.assertEqual(line.params[:2], ["alice", "test"])
        too_long = "#" + "x" * 64
        alice.send(f"JOIN {too_long}")
        line = await alice.expect("479")
        self.assertEqual(line.params[1], too_long)
        longest = "#" + "x" * 63
        lines = await join(alice, longest)
        self.assertEqual(lines[0].params, [longest])
        self.assertNotIn(too_long, srv.server.channels)

    @asynctest
    async def test_limit_full(self) -> None:
        """With +l reached, a further JOIN gets 471; after -l it succeeds."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        alice.send("MODE #c +l 2")
        await alice.expect(mode_line("#c", "+l", "2"))
        carol = await srv.client("carol")
        carol.send("JOIN #c")
        line = await carol.expect("471")
        self.assertEqual(line.params[1], "#c")
        alice.send("MODE #c -l")
        await alice.expect(mode_line("#c", "-l"))
        await join(carol, "#c")

    @asynctest
    async def test_channels_per_user_limit(self) -> None:
        """Beyond max_channels_per_user a JOIN gets 405, and CHANLIMIT says so."""
        srv = await start(self, max_channels_per_user=2)
        alice = await srv.connect()
        alice.send("NICK alice")
        alice.send("USER a 0 * :A")
        burst = await alice.collect_until("422")
        self.assertTrue(any("CHANLIMIT=#&:2" in l.params for l in burst if l.command == "005"))
        await join(alice, "#one")
        await join(alice, "#two")
        alice.send("JOIN #three")
        line = await alice.expect("405")
        self.assertEqual(line.params[:2], ["alice", "#three"])
        alice.send("PART #one")
        await alice.expect("PART")
        await join(alice, "#three")

    @asynctest
    async def test_case_insensitive_channel_names(self) -> None:
        """#CaseTest and #casetest are one channel, which keeps its first spelling."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#CaseTest", "alice")
        bob = await srv.client("bob")
        lines = await join(bob, "#casetest")
        self.assertEqual(lines[0].params, ["#CaseTest"])
        self.assertEqual(sorted(n for l in lines if l.command == "353" for n in l.params[-1].split()),
                         ["@alice", "bob"])
        line = await alice.expect("JOIN")
        self.assertEqual(line.params, ["#CaseTest"])
        bob.send("PRIVMSG #CASETEST :hi")
        line = await alice.expect("PRIVMSG")
        self.assertEqual(line.params, ["#CaseTest", "hi"])
        self.assertEqual(list(srv.server.channels), ["#casetest"])

    @asynctest
    async def test_extended_join(self) -> None:
        """extended-join clients see 'JOIN #c * :realname' for a guest; plain clients see 'JOIN #c'."""
        srv = await start(self)
        alice, carol = await setup_channel(srv, "#c", "alice", "carol", caps={"alice": ("extended-join",)})
        bob = await srv.client("bob", realname="Bob the Builder")
        await join(bob, "#c")
        line = await alice.expect("JOIN")
        self.assertEqual(line.raw, ":bob!~bob@freeq/guest JOIN #c * :Bob the Builder")
        line = await carol.expect("JOIN")
        self.assertEqual(line.raw, ":bob!~bob@freeq/guest JOIN #c")

    @asynctest
    async def test_away_notify_on_join(self) -> None:
        """When an away user joins, away-notify members get its AWAY right after the JOIN; others do not."""
        srv = await start(self)
        alice, carol = await setup_channel(srv, "#c", "alice", "carol", caps={"alice": ("away-notify",)})
        bob = await srv.client("bob")
        bob.send("AWAY :out to lunch")
        await bob.expect("306")
        await join(bob, "#c")
        await alice.expect("JOIN")
        line = await alice.expect(lambda l: True)
        self.assertEqual(line.raw, ":bob!~bob@freeq/guest AWAY :out to lunch")
        await carol.expect("JOIN")
        await carol.expect_not("AWAY", after=(bob,))
        await bob.expect_not("AWAY")

    @asynctest
    async def test_empty_channel_is_destroyed(self) -> None:
        """The last PART destroys a channel with nothing to keep: it leaves LIST and the next joiner recreates it."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#gone", "alice", "bob")
        bob.send("PART #gone")
        await alice.expect("PART")
        self.assertIn("#gone", srv.server.channels)
        alice.send("PART #gone")
        await alice.expect("PART")
        self.assertNotIn("#gone", srv.server.channels)
        alice.send("LIST")
        lines = await alice.collect_until("323")
        self.assertEqual([l for l in lines if l.command == "322"], [])
        lines = await join(bob, "#gone")
        self.assertIn("@bob", [n for l in lines if l.command == "353" for n in l.params[-1].split()])
        bob.send("MODE #gone")
        line = await bob.expect("324")
        self.assertEqual(line.params[2:], ["+nt"])

    @asynctest
    async def test_quit_of_last_member_destroys_channel(self) -> None:
        """A disconnect that empties a channel destroys it too."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#gone", "alice")
        alice.send("QUIT :bye")
        await alice.closed
        self.assertEqual(srv.server.channels, {})


class InviteTests(unittest.TestCase):
    """+i, INVITE, invite-notify, the INVITE list and +I."""

    @asynctest
    async def test_invite_only_needs_an_invite(self) -> None:
        """+i refuses with 473; INVITE (341 to inviter, INVITE to invitee) lets one join once."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#vip", "alice")
        alice.send("MODE #vip +i")
        await alice.expect(mode_line("#vip", "+i"))
        bob = await srv.client("bob")
        bob.send("JOIN #vip")
        line = await bob.expect("473")
        self.assertEqual(line.params[:2], ["bob", "#vip"])
        alice.send("INVITE bob #vip")
        line = await alice.expect("341")
        self.assertEqual(line.params, ["alice", "bob", "#vip"])
        line = await bob.expect("INVITE")
        self.assertEqual(line.raw, ":alice!~alice@freeq/guest INVITE bob #vip")
        await join(bob, "#vip")
        bob.send("PART #vip")
        await bob.expect("PART")
        bob.send("JOIN #vip")
        await bob.expect("473")

    @asynctest
    async def test_invite_list(self) -> None:
        """INVITE with no parameters lists pending invites (336) and ends with 337."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#vip", "alice")
        bob = await srv.client("bob")
        bob.send("INVITE")
        lines = await bob.collect_until("337")
        self.assertEqual([l.command for l in lines], ["337"])
        alice.send("INVITE bob #vip")
        await bob.expect("INVITE")
        bob.send("INVITE")
        lines = await bob.collect_until("337")
        self.assertEqual([(l.command, l.params) for l in lines if l.command == "336"], [("336", ["bob", "#vip"])])

    @asynctest
    async def test_invite_notify_reaches_ops_with_the_cap(self) -> None:
        """invite-notify ops see the INVITE; ops without the cap do not."""
        srv = await start(self)
        alice, carol, dave = await setup_channel(srv, "#c", "alice", "carol", "dave",
                                                 caps={"carol": ("invite-notify",)})
        alice.send("MODE #c +oo carol dave")
        await carol.expect("MODE")
        await dave.expect("MODE")
        bob = await srv.client("bob")
        alice.send("INVITE bob #c")
        line = await carol.expect("INVITE")
        self.assertEqual(line.raw, ":alice!~alice@freeq/guest INVITE bob #c")
        await dave.expect_not("INVITE", after=(alice,))
        await alice.expect_not("INVITE")
        await bob.expect("INVITE")

    @asynctest
    async def test_invite_errors(self) -> None:
        """INVITE: 442 from a non-member, 443 for a member, 482 from a non-op on +i, 401 and 403 for unknowns."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        carol = await srv.client("carol")
        carol.send("INVITE bob #c")
        line = await carol.expect("442")
        self.assertEqual(line.params[:2], ["carol", "#c"])
        alice.send("INVITE bob #c")
        line = await alice.expect("443")
        self.assertEqual(line.params[:3], ["alice", "bob", "#c"])
        alice.send("MODE #c +i")
        await bob.expect(mode_line("#c", "+i"))
        bob.send("INVITE carol #c")
        line = await bob.expect("482")
        self.assertEqual(line.params[:2], ["bob", "#c"])
        await carol.expect_not("INVITE", after=(bob,))
        alice.send("INVITE nobody #c")
        await alice.expect(numeric("401", "nobody"))
        alice.send("INVITE carol #nowhere")
        await alice.expect(numeric("403", "#nowhere"))

    @asynctest
    async def test_non_op_may_invite_when_not_invite_only(self) -> None:
        """Without +i any member may invite."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        carol = await srv.client("carol")
        bob.send("INVITE carol #c")
        await bob.expect(numeric("341", "carol", "#c"))
        await carol.expect("INVITE")

    @asynctest
    async def test_invex_lets_matching_users_in(self) -> None:
        """+I lets matching users past +i without an invite; others still get 473."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#c", "alice")
        alice.send("MODE #c +iI bob")
        line = await alice.expect("MODE")
        self.assertEqual(line.params, ["#c", "+iI", "bob!*@*"])
        bob = await srv.client("bob")
        await join(bob, "#c")
        carol = await srv.client("carol")
        carol.send("JOIN #c")
        await carol.expect("473")


class BanTests(unittest.TestCase):
    """+b and +e on JOIN."""

    @asynctest
    async def test_ban_blocks_join_unless_excepted(self) -> None:
        """A +b match gets 474 on JOIN; a +e match gets through regardless."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#c", "alice")
        alice.send("MODE #c +b *!*@freeq/guest")
        await alice.expect(mode_line("#c", "+b", "*!*@freeq/guest"))
        bob = await srv.client("bob")
        carol = await srv.client("carol")
        bob.send("JOIN #c")
        line = await bob.expect("474")
        self.assertEqual(line.params[:2], ["bob", "#c"])
        alice.send("MODE #c +e Carol")
        await alice.expect(mode_line("#c", "+e", "Carol!*@*"))
        await join(carol, "#c")
        bob.send("JOIN #c")
        await bob.expect("474")
        alice.send("MODE #c -b *!*@FREEQ/GUEST")
        await alice.expect(mode_line("#c", "-b", "*!*@freeq/guest"))
        await join(bob, "#c")

    @asynctest
    async def test_ban_by_nick_pattern(self) -> None:
        """A wildcard nick ban matches only the nicks it names."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#c", "alice")
        alice.send("MODE #c +b b?b*")
        await alice.expect(mode_line("#c", "+b", "b?b*!*@*"))
        bobby = await srv.client("bobby")
        bobby.send("JOIN #c")
        await bobby.expect("474")
        carol = await srv.client("carol")
        await join(carol, "#c")


class PartTests(unittest.TestCase):
    """PART and its errors."""

    @asynctest
    async def test_part_with_reason_is_relayed(self) -> None:
        """PART with a reason reaches all members (and the parter) with the reason."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        bob.send("PART #c :see you  later")
        for c in (alice, bob):
            line = await c.expect("PART")
            self.assertEqual(line.raw, ":bob!~bob@freeq/guest PART #c :see you  later")
        self.assertEqual(list(srv.server.channels["#c"].members), [srv.server.users["alice"]])

    @asynctest
    async def test_part_without_reason(self) -> None:
        """PART without a reason has just the channel."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        bob.send("PART #c")
        line = await alice.expect("PART")
        self.assertEqual(line.params, ["#c"])

    @asynctest
    async def test_part_errors(self) -> None:
        """PART of a channel one is not in gets 442; of a missing channel 403."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#c", "alice")
        bob = await srv.client("bob")
        bob.send("PART #c")
        line = await bob.expect("442")
        self.assertEqual(line.params[:2], ["bob", "#c"])
        bob.send("PART #nowhere")
        line = await bob.expect("403")
        self.assertEqual(line.params[:2], ["bob", "#nowhere"])
        await alice.expect_not("PART", after=(bob,))


class TopicTests(unittest.TestCase):
    """TOPIC query and change."""

    @asynctest
    async def test_topic_query_and_set(self) -> None:
        """TOPIC: 331 when unset; set is broadcast; query then gives 332 and 333."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        bob.send("TOPIC #c")
        line = await bob.expect("331")
        self.assertEqual(line.params[:2], ["bob", "#c"])
        alice.send("TOPIC #c :Welcome to  #c")
        for c in (alice, bob):
            line = await c.expect("TOPIC")
            self.assertEqual(line.raw, ":alice!~alice@freeq/guest TOPIC #c :Welcome to  #c")
        bob.send("TOPIC #c")
        line = await bob.expect("332")
        self.assertEqual(line.params, ["bob", "#c", "Welcome to  #c"])
        line = await bob.expect("333")
        self.assertEqual(line.params[1:3], ["#c", "alice!~alice@freeq/guest"])
        outsider = await srv.client("carol")
        outsider.send("TOPIC #c")
        await outsider.expect("332")

    @asynctest
    async def test_topic_protected_by_t(self) -> None:
        """Under +t a non-op gets 482; after -t anyone in the channel may set it; outsiders get 442."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        bob.send("TOPIC #c :mine")
        line = await bob.expect("482")
        self.assertEqual(line.params[:2], ["bob", "#c"])
        await alice.expect_not("TOPIC", after=(bob,))
        alice.send("MODE #c -t")
        await bob.expect(mode_line("#c", "-t"))
        bob.send("TOPIC #c :mine")
        line = await alice.expect("TOPIC")
        self.assertEqual(line.params, ["#c", "mine"])
        carol = await srv.client("carol")
        carol.send("TOPIC #c :outside")
        await carol.expect(numeric("442", "#c"))

    @asynctest
    async def test_topic_is_truncated_to_topiclen(self) -> None:
        """A topic longer than TOPICLEN bytes is cut, without splitting a character."""
        srv = await start(self, topic_len=10)
        (alice,) = await setup_channel(srv, "#c", "alice")
        alice.send("TOPIC #c :0123456789abcdef")
        line = await alice.expect("TOPIC")
        self.assertEqual(line.params, ["#c", "0123456789"])
        alice.send("TOPIC #c :012345678é")
        line = await alice.expect("TOPIC")
        self.assertEqual(line.params, ["#c", "012345678"])

    @asynctest
    async def test_clear_topic(self) -> None:
        """'TOPIC #c :' clears the topic; a later query gets 331."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#c", "alice")
        alice.send("TOPIC #c :something")
        await alice.expect("TOPIC")
        alice.send("TOPIC #c :")
        line = await alice.expect("TOPIC")
        self.assertEqual(line.params, ["#c", ""])
        alice.send("TOPIC #c")
        await alice.expect("331")


class NamesTests(unittest.TestCase):
    """NAMES replies."""

    @asynctest
    async def test_multi_prefix_and_userhost_in_names(self) -> None:
        """multi-prefix shows '@+', plain shows the highest prefix, userhost-in-names shows full masks."""
        srv = await start(self)
        alice, multi, uh = await setup_channel(srv, "#c", "alice", "multi", "uh",
                                               caps={"multi": ("multi-prefix",), "uh": ("userhost-in-names",)})
        alice.send("MODE #c +v alice")
        await alice.expect("MODE")
        self.assertEqual(sorted(await names(multi, "#c")), ["@+alice", "multi", "uh"])
        self.assertEqual(sorted(await names(alice, "#c")), ["@alice", "multi", "uh"])
        self.assertEqual(sorted(await names(uh, "#c")),
                         ["@alice!~alice@freeq/guest", "multi!~multi@freeq/guest", "uh!~uh@freeq/guest"])

    @asynctest
    async def test_secret_channel_hidden_from_non_members(self) -> None:
        """NAMES of a +s channel shows nobody to outsiders (just 366) and uses '@' for members."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#hidden", "alice")
        alice.send("MODE #hidden +s")
        await alice.expect("MODE")
        bob = await srv.client("bob")
        bob.send("NAMES #hidden")
        lines = await bob.collect_until("366")
        self.assertEqual([l.command for l in lines], ["366"])
        alice.send("NAMES #hidden")
        line = await alice.expect("353")
        self.assertEqual(line.params[1:], ["@", "#hidden", "@alice"])

    @asynctest
    async def test_long_names_split_into_lines_of_at_most_512_bytes(self) -> None:
        """Many long names are split across several 353 lines, each at most 512 bytes, losing nobody."""
        srv = await start(self)
        nicks = [f"{chr(ord('a') + i)}{'x' * 59}{i:03d}" for i in range(12)]
        clients = await setup_channel(srv, "#big", *nicks, caps={nicks[0]: ("userhost-in-names",)})
        for c in (clients[0], clients[1]):
            c.send("NAMES #big")
            lines = await c.collect_until("366")
            replies = [l for l in lines if l.command == "353"]
            self.assertGreater(len(replies), 1)
            for l in replies:
                self.assertLessEqual(len(l.raw.encode()) + 2, 512)
                self.assertEqual(l.params[1:3], ["=", "#big"])
            got = sorted(n.lstrip("@+").split("!")[0] for l in replies for n in l.params[-1].split())
            self.assertEqual(got, sorted(nicks))

    @asynctest
    async def test_names_of_unknown_channel(self) -> None:
        """NAMES of a channel that does not exist is just 366."""
        srv = await start(self)
        alice = await srv.client("alice")
        alice.send("NAMES #none")
        lines = await alice.collect_until("366")
        self.assertEqual([(l.command, l.params[1]) for l in lines], [("366", "#none")])


class ListTests(unittest.TestCase):
    """LIST and its ELIST filters."""

    async def _channels(self, c: IRCClient, arg: str = "") -> dict[str, Line]:
        c.send(f"LIST {arg}".rstrip())
        lines = await c.collect_until("323")
        self.assertEqual(lines[0].command, "321")
        return {l.params[1]: l for l in lines if l.command == "322"}

    @asynctest
    async def test_list_and_secret_channels(self) -> None:
        """LIST gives 321, a 322 per visible channel with count, modes and topic, then 323; +s is members-only."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#pub", "alice", "bob")
        alice.send("TOPIC #pub :hello world")
        await alice.expect("TOPIC")
        await join(alice, "#sec")
        alice.send("MODE #sec +s")
        await alice.expect("MODE")
        carol = await srv.client("carol")
        seen = await self._channels(carol)
        self.assertEqual(set(seen), {"#pub"})
        self.assertEqual(seen["#pub"].params[2:], ["2", "[+nt] hello world"])
        self.assertEqual(set(await self._channels(alice)), {"#pub", "#sec"})

    @asynctest
    async def test_elist_filters(self) -> None:
        """LIST >n, <n, a mask, a negated mask and a channel name each select the right channels."""
        srv = await start(self)
        alice, bob, carol = await setup_channel(srv, "#three", "alice", "bob", "carol")
        await join(alice, "#two")
        await join(bob, "#two")
        await join(alice, "#one-foo")
        self.assertEqual(set(await self._channels(alice, ">2")), {"#three"})
        self.assertEqual(set(await self._channels(alice, ">1")), {"#three", "#two"})
        self.assertEqual(set(await self._channels(alice, "<2")), {"#one-foo"})
        self.assertEqual(set(await self._channels(alice, "<3")), {"#two", "#one-foo"})
        self.assertEqual(set(await self._channels(alice, "*foo*")), {"#one-foo"})
        self.assertEqual(set(await self._channels(alice, "!*foo*")), {"#three", "#two"})
        self.assertEqual(set(await self._channels(alice, "#TWO")), {"#two"})
        self.assertEqual(set(await self._channels(alice, ">1,*t*")), {"#three", "#two"})


class ModeTests(unittest.TestCase):
    """Channel MODE queries and changes."""

    @asynctest
    async def test_mode_query_shows_key_only_to_members(self) -> None:
        """324 shows the key to members and '*' to outsiders; 329 follows with the creation time."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#c", "alice")
        alice.send("MODE #c +kl pw 10")
        line = await alice.expect("MODE")
        self.assertEqual(line.params, ["#c", "+kl", "pw", "10"])
        alice.send("MODE #c")
        line = await alice.expect("324")
        self.assertEqual(line.params[1:], ["#c", "+ntkl", "pw", "10"])
        created = await alice.expect("329")
        bob = await srv.client("bob")
        bob.send("MODE #c")
        line = await bob.expect("324")
        self.assertEqual(line.params[1:], ["#c", "+ntkl", "*", "10"])
        line = await bob.expect("329")
        self.assertEqual(line.params[1:], created.params[1:])

    @asynctest
    async def test_op_and_voice(self) -> None:
        """+o, -o and +v are broadcast to every member and change NAMES."""
        srv = await start(self)
        alice, bob, carol = await setup_channel(srv, "#c", "alice", "bob", "carol")
        alice.send("MODE #c +o bob")
        for c in (alice, bob, carol):
            line = await c.expect("MODE")
            self.assertEqual(line.raw, ":alice!~alice@freeq/guest MODE #c +o bob")
        bob.send("MODE #c +v carol")
        line = await alice.expect("MODE")
        self.assertEqual(line.raw, ":bob!~bob@freeq/guest MODE #c +v carol")
        alice.send("MODE #c -o bob")
        await carol.expect(mode_line("#c", "-o", "bob"))
        self.assertEqual(sorted(await names(carol, "#c")), ["+carol", "@alice", "bob"])
        bob.send("MODE #c +v bob")
        await bob.expect("482")

    @asynctest
    async def test_aggregated_mode_line(self) -> None:
        """Several changes in one MODE are broadcast as one line, e.g. '+ov bob bob' and '+nt-s'."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        alice.send("MODE #c +ov bob bob")
        line = await bob.expect("MODE")
        self.assertEqual(line.raw, ":alice!~alice@freeq/guest MODE #c +ov bob bob")
        alice.send("MODE #c +ims")
        await bob.expect(mode_line("#c", "+ims"))
        alice.send("MODE #c -mi+p-o bob")
        line = await bob.expect("MODE")
        self.assertEqual(line.params, ["#c", "-mi+p-o", "bob"])
        await bob.expect_not("MODE", after=(alice,))

    @asynctest
    async def test_redundant_changes_are_not_broadcast(self) -> None:
        """Setting a mode that is already set produces no MODE line."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        alice.send("MODE #c +nt")
        alice.send("MODE #c +o alice")
        await bob.expect_not("MODE", after=(alice,))

    @asynctest
    async def test_list_modes(self) -> None:
        """+b/+e/+I entries are listed with 367/368, 348/349 and 346/347; -b removes an entry."""
        srv = await start(self)
        (alice,) = await setup_channel(srv, "#c", "alice")
        alice.send("MODE #c +beI bad!*@* good!*@* friend!*@*")
        line = await alice.expect("MODE")
        self.assertEqual(line.params, ["#c", "+beI", "bad!*@*", "good!*@*", "friend!*@*"])
        for letter, entry, end, mask in (("b", "367", "368", "bad!*@*"), ("e", "348", "349", "good!*@*"),
                                         ("I", "346", "347", "friend!*@*")):
            alice.send(f"MODE #c {letter}")
            lines = await alice.collect_until(end)
            entries = [l for l in lines if l.command == entry]
            self.assertEqual(len(entries), 1)
            self.assertEqual(entries[0].params[1:4], ["#c", mask, "alice!~alice@freeq/guest"])
            self.assertTrue(entries[0].params[4].isdigit())
            self.assertEqual(lines[-1].params[1], "#c")
        alice.send("MODE #c -b bad!*@*")
        await alice.expect(mode_line("#c", "-b", "bad!*@*"))
        alice.send("MODE #c +b")
        lines = await alice.collect_until("368")
        self.assertEqual([l.command for l in lines], ["368"])

    @asynctest
    async def test_mode_errors(self) -> None:
        """Non-ops get 482; unknown letters 472; +o on a non-member 441 and on an unknown nick 401."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        carol = await srv.client("carol")
        bob.send("MODE #c +m")
        line = await bob.expect("482")
        self.assertEqual(line.params[:2], ["bob", "#c"])
        bob.send("MODE #c +o bob")
        await bob.expect("482")
        await alice.expect_not("MODE", after=(bob,))
        alice.send("MODE #c +Z")
        line = await alice.expect("472")
        self.assertEqual(line.params[:2], ["alice", "Z"])
        alice.send("MODE #c +o carol")
        line = await alice.expect("441")
        self.assertEqual(line.params[:3], ["alice", "carol", "#c"])
        alice.send("MODE #c +o ghost")
        line = await alice.expect("401")
        self.assertEqual(line.params[:2], ["alice", "ghost"])
        alice.send("MODE #nowhere +m")
        await alice.expect(numeric("403", "#nowhere"))
        await carol.expect_not("MODE", after=(alice,))

    @asynctest
    async def test_unknown_letter_does_not_stop_the_rest(self) -> None:
        """An unknown letter gets 472 while the known letters around it still apply."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        alice.send("MODE #c +mZi")
        await alice.expect(numeric("472", "Z"))
        line = await bob.expect("MODE")
        self.assertEqual(line.params, ["#c", "+mi"])

    @asynctest
    async def test_modes_limit_on_argument_modes(self) -> None:
        """At most MODES (4) argument-taking changes apply per command."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        alice.send("MODE #c +bbbbb a b c d e")
        line = await bob.expect("MODE")
        self.assertEqual(line.params, ["#c", "+bbbb", "a!*@*", "b!*@*", "c!*@*", "d!*@*"])
        self.assertEqual([e.mask for e in srv.server.channels["#c"].lists["b"]],
                         ["a!*@*", "b!*@*", "c!*@*", "d!*@*"])

    @asynctest
    async def test_key_and_limit_set_and_unset(self) -> None:
        """+k/-k and +l/-l set and clear the key and the limit."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        alice.send("MODE #c +k pass")
        await bob.expect(mode_line("#c", "+k", "pass"))
        alice.send("MODE #c -k pass")
        line = await bob.expect("MODE")
        self.assertEqual(line.params[:2], ["#c", "-k"])
        alice.send("MODE #c +l 5")
        await bob.expect(mode_line("#c", "+l", "5"))
        alice.send("MODE #c -l")
        await bob.expect(mode_line("#c", "-l"))
        alice.send("MODE #c")
        line = await alice.expect("324")
        self.assertEqual(line.params[2:], ["+nt"])

    @asynctest
    async def test_invalid_key_or_limit(self) -> None:
        """A key with a comma or a non-numeric/zero limit gets 696 and changes nothing."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        alice.send("MODE #c +k a,b")
        line = await alice.expect("696")
        self.assertEqual(line.params[1:3], ["#c", "k"])
        alice.send("MODE #c +k " + "k" * 24)
        await alice.expect(numeric("696", "#c", "k"))
        for bad in ("abc", "0", "-3"):
            alice.send(f"MODE #c +l {bad}")
            line = await alice.expect("696")
            self.assertEqual(line.params[1:4], ["#c", "l", bad])
        await bob.expect_not("MODE", after=(alice,))
        alice.send("MODE #c")
        line = await alice.expect("324")
        self.assertEqual(line.params[2:], ["+nt"])

    @asynctest
    async def test_key_and_mask_must_fit_one_parameter(self) -> None:
        """A key or mask with a space or a leading ':' is refused, so 324, 367 and MODE stay well-formed."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        alice.send("MODE #c +k :two words")
        line = await alice.expect("696")
        self.assertEqual(line.params[1:4], ["#c", "k", "*"])
        alice.send("MODE #c +k ::lead")
        line = await alice.expect("696")
        self.assertEqual(line.params[1:4], ["#c", "k", "*"])
        alice.send("MODE #c +b :x y")
        alice.send("MODE #c +b ::n!u@h")
        await bob.expect_not("MODE", after=(alice,))
        alice.send("MODE #c +bl good 5")
        await bob.expect(mode_line("#c", "+bl", "good!*@*", "5"))
        alice.send("MODE #c")
        line = await alice.expect("324")
        self.assertEqual(line.params[1:], ["#c", "+ntl", "5"])
        alice.send("MODE #c b")
        lines = await alice.collect_until("368")
        self.assertEqual([l.params[2] for l in lines if l.command == "367"], ["good!*@*"])

    @asynctest
    async def test_list_full(self) -> None:
        """Beyond max_list_entries a further +b gets 478 naming the channel."""
        srv = await start(self, max_list_entries=2)
        (alice,) = await setup_channel(srv, "#c", "alice")
        alice.send("MODE #c +bb one two")
        await alice.expect("MODE")
        alice.send("MODE #c +b three")
        line = await alice.expect("478")
        self.assertEqual(line.params[:2], ["alice", "#c"])
        await alice.expect_not("MODE")
        self.assertEqual(len(srv.server.channels["#c"].lists["b"]), 2)

    @asynctest
    async def test_exception_and_invex_lists_are_op_only(self) -> None:
        """Listing +e or +I as a non-op gets 482; the ban list is readable by members."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        bob.send("MODE #c e")
        await bob.expect(numeric("482", "#c"))
        bob.send("MODE #c I")
        await bob.expect(numeric("482", "#c"))
        bob.send("MODE #c b")
        await bob.expect(numeric("368", "#c"))


class KickTests(unittest.TestCase):
    """KICK and its errors."""

    @asynctest
    async def test_kick_single(self) -> None:
        """An op's KICK reaches every member including the victim, who is then removed."""
        srv = await start(self)
        alice, bob, carol = await setup_channel(srv, "#c", "alice", "bob", "carol")
        alice.send("KICK #c bob :behave")
        for c in (alice, bob, carol):
            line = await c.expect("KICK")
            self.assertEqual(line.raw, ":alice!~alice@freeq/guest KICK #c bob :behave")
        self.assertEqual(sorted(await names(carol, "#c")), ["@alice", "carol"])
        bob.send("PRIVMSG #c :still here?")
        await bob.expect(numeric("404", "#c"))

    @asynctest
    async def test_kick_multiple_and_default_reason(self) -> None:
        """KICK with several nicks kicks each; without a reason the kicker's nick is the reason."""
        srv = await start(self)
        alice, bob, carol, dave = await setup_channel(srv, "#c", "alice", "bob", "carol", "dave")
        alice.send("KICK #c bob,carol")
        first = await dave.expect("KICK")
        second = await dave.expect("KICK")
        self.assertEqual([first.params, second.params], [["#c", "bob", "alice"], ["#c", "carol", "alice"]])
        self.assertEqual(sorted(await names(dave, "#c")), ["@alice", "dave"])

    @asynctest
    async def test_kick_errors(self) -> None:
        """KICK: 482 from a non-op, 441 for a non-member victim, 442 from a non-member, 403 for no channel."""
        srv = await start(self)
        alice, bob = await setup_channel(srv, "#c", "alice", "bob")
        carol = await srv.client("carol")
        bob.send("KICK #c alice")
        line = await bob.expect("482")
        self.assertEqual(line.params[:2], ["bob", "#c"])
        alice.send("KICK #c carol")
        line = await alice.expect("441")
        self.assertEqual(line.params[:3], ["alice", "carol", "#c"])
        carol.send("KICK #c bob")
        line = await carol.expect("442")
        self.assertEqual(line.params[:2], ["carol", "#c"])
        carol.send("KICK #nowhere bob")
        line = await carol.expect("403")
        self.assertEqual(line.params[:2], ["carol", "#nowhere"])
        await bob.expect_not("KICK", after=(alice, carol))
        self.assertEqual(len(srv.server.channels["#c"].members), 2)
