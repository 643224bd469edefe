"""``draft/channel-rename`` (https://ircv3.net/specs/extensions/channel-rename) over real loopback sockets:
RENAME by a channel operator, the RENAME line for members with the cap and the PART/JOIN/topic/NAMES
fallback for the others, the errors and the persisted channel under its new name. Across federated servers:
tests/test_s2s_rename.py."""
from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from freeq.core.rename import RENAME_INTERVAL
from tests.support import asynctest, start_server, start_tree
from tests.test_channels import join, mode_line, setup_channel
from tests.test_persistence import Running, _config

CAP = "draft/channel-rename"


def failed(code: str, *context: str) -> Any:
    """A predicate for ``FAIL RENAME <code> <context...> :...``."""
    return lambda l: l.command == "FAIL" and l.params[:2 + len(context)] == ["RENAME", code, *context]


class RenameTests(unittest.TestCase):
    """One server, no federation."""

    @asynctest
    async def test_cap_members_see_rename_others_part_and_join(self) -> None:
        """alice (op, with the cap) renames #old to #new: she and carol (cap) get RENAME; bob (no cap) gets
        PART #old, JOIN #new, the topic and NAMES; the channel then lives under #new only."""
        srv = await start_server(self, flood_rate=0)
        alice, bob, carol = await setup_channel(srv, "#old", "alice", "bob", "carol",
                                                caps={"alice": (CAP,), "carol": (CAP, "extended-join")})
        alice.send("TOPIC #old :the topic")
        for c in (alice, bob, carol):
            await c.expect("TOPIC")
        alice.send("RENAME #old #new :tidier")
        line = await alice.expect("RENAME")
        self.assertEqual(line.raw, ":alice!~alice@freeq/guest RENAME #old #new :tidier")
        self.assertEqual((await carol.expect("RENAME")).params, ["#old", "#new", "tidier"])
        lines = await bob.collect_until(lambda l: l.command == "366")
        self.assertEqual([l.command for l in lines], ["PART", "JOIN", "332", "333", "353", "366"])
        self.assertEqual(lines[0].raw, ":bob!~bob@freeq/guest PART #old :Channel renamed to #new: tidier")
        self.assertEqual(lines[1].raw, ":bob!~bob@freeq/guest JOIN #new")
        self.assertEqual(lines[2].params, ["bob", "#new", "the topic"])
        self.assertEqual(sorted(lines[4].params[-1].split()), ["@alice", "bob", "carol"])
        await carol.expect_not(lambda l: l.command in ("PART", "JOIN"), after=[alice])
        self.assertEqual(sorted(srv.server.channels), ["#new"])
        bob.send("PRIVMSG #new :still here")
        self.assertEqual((await alice.expect("PRIVMSG")).params, ["#new", "still here"])
        alice.send("MODE #new")
        self.assertEqual((await alice.expect("324")).params[1], "#new")
        bob.send("PRIVMSG #old :gone?")
        self.assertEqual((await bob.expect("403")).params[1], "#old")
        carol.send("PART #new")
        await alice.expect("PART")
        self.assertNotIn("#new", srv.server.users["carol"].channels)

    @asynctest
    async def test_rename_without_reason_has_an_empty_one_and_case_changes_pass(self) -> None:
        """The server's RENAME always has three parameters; a case-only change is a rename too."""
        srv = await start_server(self, flood_rate=0)
        alice, bob = await setup_channel(srv, "#room", "alice", "bob", caps={"alice": (CAP,)})
        alice.send("RENAME #room #Room")
        self.assertEqual((await alice.expect("RENAME")).params, ["#room", "#Room", ""])
        lines = await bob.collect_until("366")
        self.assertEqual(lines[0].raw, ":bob!~bob@freeq/guest PART #room :Channel renamed to #Room")
        self.assertEqual(lines[1].params, ["#Room"])
        self.assertEqual(srv.server.channels["#room"].name, "#Room")

    @asynctest
    async def test_errors(self) -> None:
        """461, 403, 442, 482, CHANNEL_NAME_IN_USE, and CANNOT_RENAME for a type change, a bad name or the
        same name; nothing changes."""
        srv = await start_server(self, flood_rate=0)
        alice, bob = await setup_channel(srv, "#a", "alice", "bob", caps={"alice": (CAP,)})
        await join(alice, "#b")
        outsider = await srv.client("outsider")
        alice.send("RENAME #a")
        self.assertEqual((await alice.expect("461")).params[1], "RENAME")
        alice.send("RENAME #nope #x")
        self.assertEqual((await alice.expect("403")).params[1], "#nope")
        outsider.send("RENAME #a #x")
        self.assertEqual((await outsider.expect("442")).params[1], "#a")
        bob.send("RENAME #a #x")
        self.assertEqual((await bob.expect("482")).params[1], "#a")
        alice.send("RENAME #a #B :taken")
        await alice.expect(failed("CHANNEL_NAME_IN_USE", "#a", "#B"))
        alice.send("RENAME #a &a")
        await alice.expect(failed("CANNOT_RENAME", "#a", "&a"))
        alice.send("RENAME #a :#with space")
        await alice.expect(failed("CANNOT_RENAME", "#a", "*"))
        alice.send("RENAME #a #a")
        await alice.expect(failed("CANNOT_RENAME", "#a", "#a"))
        await bob.expect_not(lambda l: l.command in ("RENAME", "PART", "JOIN"), after=[alice])
        self.assertEqual(sorted(srv.server.channels), ["#a", "#b"])

    @asynctest
    async def test_invites_follow_the_new_name(self) -> None:
        """A pending INVITE to +i #old lets carol into #new after the rename."""
        srv = await start_server(self, flood_rate=0)
        (alice,) = await setup_channel(srv, "#old", "alice", caps={"alice": (CAP,)})
        alice.send("MODE #old +i")
        await alice.expect(mode_line("#old", "+i"))
        carol = await srv.client("carol")
        alice.send("INVITE carol #old")
        await carol.expect("INVITE")
        alice.send("RENAME #old #new")
        await alice.expect("RENAME")
        await join(carol, "#new")
        carol.send("INVITE")
        await carol.expect("337")


    @asynctest
    async def test_a_channel_is_renamed_at_most_once_a_minute(self) -> None:
        """Each rename costs every member without the cap a PART, JOIN and NAMES: a second RENAME of the same
        channel within RENAME_INTERVAL is refused (CANNOT_RENAME); after it, it passes. Other channels are
        not held back."""
        clock = Clock()
        srv = await start_server(self, clock=clock, flood_rate=0)
        alice, bob = await setup_channel(srv, "#one", "alice", "bob", caps={"alice": (CAP,)})
        await join(alice, "#other")
        alice.send("RENAME #one #two")
        await alice.expect("RENAME")
        clock.advance(RENAME_INTERVAL - 1)
        alice.send("RENAME #two #three")
        await alice.expect(failed("CANNOT_RENAME", "#two", "#three"))
        alice.send("RENAME #other #else")
        self.assertEqual((await alice.expect("RENAME")).params[:2], ["#other", "#else"])
        clock.advance(1)
        alice.send("RENAME #two #three")
        self.assertEqual((await alice.expect("RENAME")).params[:2], ["#two", "#three"])
        self.assertEqual(sorted(srv.server.channels), ["#else", "#three"])


    @asynctest
    async def test_the_record_of_recent_renames_is_bounded(self) -> None:
        """With room for one recent rename, a second channel waits until the first entry is old enough to
        be dropped."""
        from freeq.core import rename

        self.patch(rename, "RENAMES_REMEMBERED", 1)
        clock = Clock()
        srv = await start_server(self, clock=clock, flood_rate=0)
        (alice,) = await setup_channel(srv, "#a", "alice", caps={"alice": (CAP,)})
        await join(alice, "#b")
        alice.send("RENAME #a #a2")
        await alice.expect("RENAME")
        alice.send("RENAME #b #b2")
        await alice.expect(failed("CANNOT_RENAME", "#b", "#b2"))
        clock.advance(RENAME_INTERVAL)
        alice.send("RENAME #b #b2")
        await alice.expect("RENAME")
        self.assertEqual(len(srv.server._renamed or {}), 1)


class RenamePersistenceTests(unittest.TestCase):
    """The persisted channel moves to the new name; the old one is forgotten (a real restart)."""

    @asynctest
    async def test_renamed_channel_state_survives_restart_under_the_new_name(self) -> None:
        """Topic and modes of #before come back as #after; #before does not come back."""
        data_dir = os.path.abspath(self.mktemp())

        async def start() -> Running:
            top, port = start_tree(_config(data_dir))
            running = Running(top, port)
            self.addCleanup(lambda: defer.ensureDeferred(running.stop()))
            return running

        run = await start()
        alice = await run.client("alice", caps=(CAP,))
        await join(alice, "#before")
        alice.send("TOPIC #before :moving")
        await alice.expect("TOPIC")
        alice.send("MODE #before +s")
        await alice.expect(mode_line("#before", "+s"))
        alice.send("RENAME #before #after")
        await alice.expect("RENAME")
        await run.stop()
        run = await start()
        self.assertNotIn("#before", run.server.channels)
        chan = run.server.channels["#after"]
        self.assertEqual((chan.name, chan.topic), ("#after", "moving"))
        self.assertIn("s", chan.modes)
