"""``draft/channel-rename`` across federated servers (freeq.s2s.rename), over real loopback sockets and real iroh
links: a rename by an operator reaches the members on the other servers (RENAME with the cap, PART/JOIN without),
the channel lives on under its new name everywhere (messages both ways, state, saved rows), a rename nobody may
make is refused on both sides, a name taken on the far side is undone by the origin, and a restart, a relink or a
rename missed in a split all end with the new name on every server."""
from __future__ import annotations

import os
from typing import Any

from twisted.trial import unittest

from freeq.s2s import proofs
from freeq.s2s.protocol import EventSigner
from freeq.s2s.rename import PEER_RENAMES_BURST, RENAME_CHAIN, chain_problem, clip, rename_event_problem
from freeq.state.channel import Channel
from tests.s2s_support import LogCapture, Node, channel_view, link_raw_peer, settle, start_line, start_node, wait_for
from tests.support import asynctest, sleep
from tests.test_s2s_oper import make_oper
from tests.test_s2s_restart import RestartableNode

CAP = "draft/channel-rename"


def renamed(old: str, new: str) -> Any:
    """A predicate for ``RENAME <old> <new> ...``."""
    return lambda l: l.command == "RENAME" and l.params[:2] == [old, new]


def signed_rename(signer: EventSigner, old: str, new: str, **extra: Any) -> dict[str, Any]:
    """A ``rename`` event signed by ``signer`` (for the pure checks)."""
    event = {"type": "rename", "origin": signer.server_id, "epoch": 1, "seq": 1, "to": None, "hlc": [1, 0, "x"],
             "uid": f"{signer.server_id[:16]}.a.1", "channel": old, "new": new, "reason": ""}
    event.update(extra)
    return signer.sign(event)


class PureTests(unittest.TestCase):
    """The checks of rename events and chains, and proofs naming a former name, without a server."""

    def test_rename_event_problem(self) -> None:
        """A signed rename of a user of its origin passes; a bad signature, an undo, a type change, a renamer of
        another server or an oversized event does not."""
        signer = EventSigner(os.urandom(32))
        good = signed_rename(signer, "#a", "#b")
        self.assertIsNone(rename_event_problem(good, 64))
        self.assertEqual(rename_event_problem(dict(good, reason="changed"), 64), "bad signature on the rename event")
        self.assertEqual(rename_event_problem(signed_rename(signer, "#a", "#b", undo="x"), 64), "not a rename event")
        self.assertEqual(rename_event_problem(signed_rename(signer, "#a", "&b"), 64), "bad channel names")
        self.assertEqual(rename_event_problem(signed_rename(signer, "#a", "#b", uid="0" * 16 + ".a.1"), 64),
                         "renamer does not belong to the rename's origin")
        self.assertEqual(rename_event_problem(signed_rename(signer, "#a", "#b", reason="x" * 5000), 64),
                         "malformed or too large")
        self.assertIsNone(rename_event_problem(signed_rename(signer, "#a", "#b", reason="\x01" * 400), 64))
        self.assertEqual(rename_event_problem(["rename"], 64), "not a rename event")

    def test_chain_problem_and_clip(self) -> None:
        """A chain must lead, rename by rename, to the channel it is listed with; reasons are cut by bytes."""
        signer = EventSigner(os.urandom(32))
        chain = [signed_rename(signer, "#a", "#B"), signed_rename(signer, "#b", "#c")]
        self.assertIsNone(chain_problem(chain, "#c"))
        self.assertEqual(chain_problem(chain, "#d"), "renames lead to another channel")
        self.assertEqual(chain_problem(chain[::-1], "#b"), "renames not in sequence")
        self.assertEqual(clip("é" * 300), "é" * 200)
        self.assertEqual(len(clip("é" * 300 + "x").encode()), 400)
        self.assertGreater(RENAME_CHAIN, 1)

    def test_proofs_of_a_former_name(self) -> None:
        """A join signed for #old proves a membership of #new only when #old is one of #new's former names."""
        signer = EventSigner(os.urandom(32))
        uid = f"{signer.server_id[:16]}.a.1"
        join = signer.sign({"type": "join", "origin": signer.server_id, "epoch": 1, "seq": 1, "to": None,
                            "hlc": [1, 0, "x"], "uid": uid, "channel": "#old", "status": "", "ops": []})
        self.assertEqual(proofs.join_problem(join, signer.server_id, uid, "#new"), "join event of another channel")
        self.assertIsNone(proofs.join_problem(join, signer.server_id, uid, "#new", frozenset({"#old"})))


async def three_members(case: unittest.TestCase, nodes: list[Node], channel: str) -> list[Any]:
    """alice (with the cap) on the first node creates ``channel``; on each other node a member with the cap and,
    on the second, carol without it. Returns [alice, members...] once every join is seen by alice."""
    alice = await nodes[0].client("alice", caps=(CAP,))
    alice.send(f"JOIN {channel}")
    await alice.expect("366")
    for node in nodes[1:]:
        await wait_for(lambda: channel.lower() in node.server.channels, what=f"{channel} on {node.name}")
    clients = [alice]
    names = ["bob", "dave"]
    for i, node in enumerate(nodes[1:]):
        member = await node.client(names[i], caps=(CAP,))
        member.send(f"JOIN {channel}")
        await member.expect("366")
        await alice.expect(lambda l, n=names[i]: l.command == "JOIN" and (l.source or "").startswith(n + "!"))
        clients.append(member)
    carol = await nodes[1].client("carol")
    carol.send(f"JOIN {channel}")
    await carol.expect("366")
    await alice.expect(lambda l: l.command == "JOIN" and (l.source or "").startswith("carol!"))
    clients.append(carol)
    return clients


class FederatedRenameTests(unittest.TestCase):
    """Servers linked in a line: a channel operator's RENAME on one reaches all."""

    timeout = 60

    @asynctest
    async def test_rename_seen_on_the_other_server_and_messages_flow(self) -> None:
        """alice (op on A) renames #fed: bob (cap) on B sees RENAME, carol (no cap) PART/JOIN/NAMES; messages to the
        new name flow both ways; both servers hold the same channel under #moved only, state re-keyed and saved."""
        a, b = await start_line(self, "a.test", "b.test", flood_rate=0)
        alice, bob, carol = await three_members(self, [a, b], "#fed")
        alice.send("MODE #fed +m")
        alice.send("TOPIC #fed :kept")
        for c in (bob, carol):
            await c.expect("TOPIC")
        alice.send("RENAME #fed #moved :tidier")
        await alice.expect(renamed("#fed", "#moved"))
        line = await bob.expect(renamed("#fed", "#moved"))
        self.assertEqual(line.raw, ":alice!~alice@freeq/guest RENAME #fed #moved :tidier")
        lines = await carol.collect_until("366")
        self.assertEqual([l.command for l in lines], ["PART", "JOIN", "332", "333", "353", "366"])
        self.assertEqual(lines[0].raw, ":carol!~carol@freeq/guest PART #fed :Channel renamed to #moved: tidier")
        self.assertEqual(lines[1].params, ["#moved"])
        self.assertEqual(sorted(lines[4].params[-1].split()), ["@alice", "bob", "carol"])
        for node in (a, b):
            self.assertEqual(sorted(node.server.channels), ["#moved"])
            self.assertIn("#moved", node.federation.crdts)
            self.assertNotIn("#fed", node.federation.crdts)
            self.assertFalse([key for key in node.federation.member_joins if key[1] == "#fed"])
        self.assertEqual(channel_view(a, "#moved"), channel_view(b, "#moved"))
        self.assertEqual(channel_view(b, "#moved")["topic"], "kept")
        alice.send("MODE #moved +v bob")  # +m: bob may speak once voiced, by the renamed channel's name
        await bob.expect("MODE")
        bob.send("PRIVMSG #moved :hello from B")
        self.assertEqual((await alice.expect("PRIVMSG")).params, ["#moved", "hello from B"])
        self.assertEqual((await carol.expect("PRIVMSG")).params, ["#moved", "hello from B"])
        alice.send("PRIVMSG #moved :hello from A")
        self.assertEqual((await carol.expect("PRIVMSG")).params, ["#moved", "hello from A"])
        self.assertEqual((await bob.expect("PRIVMSG")).params, ["#moved", "hello from A"])
        carol.send("PRIVMSG #fed :old name?")
        self.assertEqual((await carol.expect("403")).params[1], "#fed")
        b.federation.persist()  # the saved state follows the name (no row for the old one)
        await wait_for(lambda: "#moved" in b.server.store.load_channel_crdts(), what="#moved's state saved on B")
        self.assertNotIn("#fed", b.server.store.load_channel_crdts())

    @asynctest
    async def test_rename_crosses_three_servers(self) -> None:
        """A line A-B-C: a rename on A reaches dave on C through B, and C's members talk under the new name."""
        a, b, c = await start_line(self, "a.test", "b.test", "c.test", flood_rate=0)
        alice, bob, dave, _carol = await three_members(self, [a, b, c], "#three")
        alice.send("RENAME #three #trio")
        await bob.expect(renamed("#three", "#trio"))
        await dave.expect(renamed("#three", "#trio"))
        dave.send("PRIVMSG #trio :from C")
        self.assertEqual((await alice.expect("PRIVMSG")).params, ["#trio", "from C"])
        self.assertEqual((await bob.expect("PRIVMSG")).params, ["#trio", "from C"])
        self.assertEqual(channel_view(a, "#trio"), channel_view(c, "#trio"))

    @asynctest
    async def test_server_operator_override_applied_by_a_full_peer(self) -> None:
        """carol, a server operator on A and no member of #fed, renames it: B (which trusts A fully) applies the
        override and logs it; bob sees the RENAME from carol."""
        logs = LogCapture(self)
        a, b = await start_line(self, "a.test", "b.test", flood_rate=0, oper_password="pw")
        _alice, bob, _carol = await three_members(self, [a, b], "#fed")
        oper = await a.client("oper")
        await make_oper(oper)
        oper.send("RENAME #fed #opered")
        line = await bob.expect(renamed("#fed", "#opered"))
        self.assertTrue((line.source or "").startswith("oper!"))
        await logs.wait("S2S server-operator override: oper (operator of a.test) renames it to #opered on #fed")
        self.assertEqual(sorted(b.server.channels), ["#opered"])

    @asynctest
    async def test_non_operator_refused(self) -> None:
        """bob, no operator of #fed, gets 482 on B, and nothing changes anywhere."""
        a, b = await start_line(self, "a.test", "b.test", flood_rate=0)
        alice, bob, _carol = await three_members(self, [a, b], "#fed")
        bob.send("RENAME #fed #mine")
        self.assertEqual((await bob.expect("482")).params[1], "#fed")
        await alice.expect_not(lambda l: l.command == "RENAME", after=[bob])
        for node in (a, b):
            self.assertEqual(sorted(node.server.channels), ["#fed"])

    @asynctest
    async def test_renamer_no_operator_on_the_far_side_is_undone(self) -> None:
        """B's view has alice without operator status in #fed (the sides disagree): B refuses her rename, and A, told
        so, renames #fed back; bob never sees a rename, alice sees both."""
        a, b = await start_line(self, "a.test", "b.test", flood_rate=0)
        alice, bob, _carol = await three_members(self, [a, b], "#fed")
        chan = b.server.channels["#fed"]
        chan.members[b.server.users["alice"]] = 0
        alice.send("RENAME #fed #moved")
        await alice.expect(renamed("#fed", "#moved"))
        back = await alice.expect(renamed("#moved", "#fed"))
        self.assertEqual(back.raw, ":a.test RENAME #moved #fed :the renamer is not an operator of #fed on b.test")
        await bob.expect_not(lambda l: l.command == "RENAME", after=[alice])
        for node in (a, b):
            self.assertEqual(sorted(node.server.channels), ["#fed"])
        self.assertEqual(b.federation.stats.get("rejected:unauthorized"), 1)

    @asynctest
    async def test_name_taken_on_the_far_side_is_undone(self) -> None:
        """A-B-C: #taken exists on C only (made there while the rename was on its way): C refuses the rename and tells
        A, which renames the channel back; B, which applied it, follows. Every server ends with #three again."""
        a, b, c = await start_line(self, "a.test", "b.test", "c.test", flood_rate=0)
        alice, bob, dave, _carol = await three_members(self, [a, b, c], "#three")
        c.server.channels["#taken"] = Channel("#taken", 0.0)  # created on C; A has not heard of it yet
        alice.send("RENAME #three #taken :clash")
        await alice.expect(renamed("#three", "#taken"))
        await bob.expect(renamed("#three", "#taken"))
        back = await alice.expect(renamed("#taken", "#three"))
        self.assertEqual(back.raw, ":a.test RENAME #taken #three :#taken is in use on c.test")
        await bob.expect(renamed("#taken", "#three"))
        await dave.expect_not(lambda l: l.command == "RENAME", after=[alice, bob])
        for node in (a, b):
            await wait_for(lambda node=node: sorted(node.server.channels) == ["#three"], what=f"#three on {node.name}")
        self.assertEqual(sorted(c.server.channels), ["#taken", "#three"])
        self.assertEqual(channel_view(a, "#three"), channel_view(c, "#three"))
        self.assertEqual(c.federation.stats.get("rejected:conflict"), 1)
        dave.send("PRIVMSG #three :still one channel")
        self.assertEqual((await alice.expect("PRIVMSG")).params, ["#three", "still one channel"])


class ForgedRenameTests(unittest.TestCase):
    """A scripted peer: its renames are applied only over a ``full`` link and from an operator of the channel."""

    timeout = 30

    async def peer_in_chan(self, trust: str = "full") -> tuple[Node, Any, Any]:
        node, mallory, op = await link_raw_peer(self, "a.test", "op", trust=trust)
        mallory.send(mallory.user(1, "mal"))
        await wait_for(lambda: node.knows("mal"), what="mallory's user")
        mallory.send(mallory.event("join", {"uid": mallory.uid(1), "channel": "#chan", "status": "", "ops": []}))
        await wait_for(lambda: node.server.users["mal"] in node.server.channels["#chan"].members, what="mal in #chan")
        return node, mallory, op

    @asynctest
    async def test_rename_by_non_operator_refused(self) -> None:
        """mal is a member of #chan but no operator: its server's rename is refused, and an undo of a rename that
        never happened, or a refusal of a rename that is not ours, changes nothing."""
        node, mallory, op = await self.peer_in_chan()
        op.send("CAP REQ :" + CAP)
        await op.expect("CAP")
        mallory.send(mallory.event("rename", {"uid": mallory.uid(1), "channel": "#chan", "new": "#mine", "reason": ""}))
        mallory.send(mallory.event("rename", {"channel": "#chan", "new": "#old", "reason": "", "undo": "x" * 86}))
        mallory.send(mallory.event("rename_refused", {"channel": "#chan", "new": "#x", "rename": "y" * 86},
                                   to=node.id))
        mallory.send(mallory.user(2, "mal2"))  # in order: once mal2 is known, everything above was read
        await wait_for(lambda: node.knows("mal2"), what="mallory's second user")
        self.assertEqual(sorted(node.server.channels), ["#chan"])
        stats = node.federation.stats
        self.assertEqual((stats.get("rejected:unauthorized"), stats.get("rejected:stale")), (1, 1))
        await op.expect_not(lambda l: l.command == "RENAME")

    @asynctest
    async def test_operator_rename_applied_and_held_to_the_interval(self) -> None:
        """mal creates #mal (operator there): its rename is applied here, op (cap) sees it; a second rename of the same
        channel at once is refused (RENAME_INTERVAL) and mallory is told (``rename_refused``, routed to it)."""
        node, mallory, op = await self.peer_in_chan()
        op.send("CAP REQ :" + CAP)
        await op.expect("CAP")
        mallory.send(mallory.event("join", {"uid": mallory.uid(1), "channel": "#mal", "status": "o", "ops": []}))
        await wait_for(lambda: "#mal" in node.server.channels, what="#mal")
        op.send("JOIN #mal")
        await op.expect("366")
        first = mallory.event("rename", {"uid": mallory.uid(1), "channel": "#mal", "new": "#mal2", "reason": "one"})
        mallory.send(first)
        self.assertEqual((await op.expect("RENAME")).raw, ":mal!~mal@freeq/guest RENAME #mal #mal2 :one")
        self.assertEqual(node.federation.channel_renames["#mal2"], [first])
        second = mallory.event("rename", {"uid": mallory.uid(1), "channel": "#mal2", "new": "#mal3", "reason": ""})
        mallory.send(second)
        refusal = await wait_for(lambda: [f for f in mallory.frames if f.get("type") == "rename_refused"],
                                 what="the refusal")
        self.assertEqual((refusal[0]["channel"], refusal[0]["new"], refusal[0]["rename"], refusal[0]["to"],
                          refusal[0]["why"]), ("#mal2", "#mal3", second["sig"], mallory.id, "limit"))
        self.assertEqual(sorted(node.server.channels), ["#chan", "#mal2"])
        self.assertEqual(node.federation.stats.get("rejected:limit"), 1)

    @asynctest
    async def test_peer_renames_held_to_a_budget(self) -> None:
        """mal creates channels and renames each at once: past PEER_RENAMES_BURST the renames are refused here
        (``limit``) and mallory is told of each, so renames cannot be used as a flood."""
        node, mallory, _op = await self.peer_in_chan()
        count = PEER_RENAMES_BURST + 2
        for i in range(count):
            mallory.send(mallory.event("join", {"uid": mallory.uid(1), "channel": f"#c{i}", "status": "o", "ops": []}))
        for i in range(count):
            mallory.send(mallory.event("rename", {"uid": mallory.uid(1), "channel": f"#c{i}", "new": f"#d{i}",
                                                  "reason": ""}))
        refused = await wait_for(lambda: [f for f in mallory.frames if f.get("type") == "rename_refused"],
                                 what="refusals")
        await sleep(0.2)
        self.assertEqual(sorted(f["channel"] for f in refused), ["#c20", "#c21"])
        self.assertEqual(len([name for name in node.server.channels if name.startswith("#d")]), PEER_RENAMES_BURST)
        self.assertEqual(node.federation.stats.get("rejected:limit"), 2)

    @asynctest
    async def test_local_rename_refused_when_a_sharing_server_would_not_apply_it(self) -> None:
        """mallory's server shares #chan but does not take channel changes from here (its burst said so): op's RENAME
        is refused with CANNOT_RENAME, as applying it here alone would split the channel."""
        node, mallory, op = await self.peer_in_chan()
        op.send("RENAME #chan #new")
        line = await op.expect("FAIL")
        self.assertEqual(line.params[:4], ["RENAME", "CANNOT_RENAME", "#chan", "#new"])
        self.assertIn("mallory shares the channel", line.params[-1])
        self.assertFalse([f for f in mallory.frames if f.get("type") == "rename"])

    @asynctest
    async def test_rename_over_relay_and_readonly_refused(self) -> None:
        """A relay peer cannot rename even a channel its user operates (trust); nor can a readonly one."""
        for trust, refused in (("relay", 1), ("readonly", 3)):  # readonly: the user and nick events too
            node, mallory, op = await link_raw_peer(self, f"{trust}.test", "op", trust=trust)
            mallory.send(mallory.user(1, "mal"))
            mallory.send(mallory.event("rename", {"uid": mallory.uid(1), "channel": "#chan", "new": "#mine",
                                                  "reason": ""}))
            mallory.send(mallory.event("nick", {"uid": mallory.uid(1), "nick": "mal3", "nick_ts": 1}))
            await wait_for(lambda n=node, r=refused: n.federation.stats.get("rejected:trust") == r,
                           what=f"{trust} rename refused")
            if trust == "relay":  # the nick event after it was applied: the rename was read, and refused
                await wait_for(lambda n=node: n.knows("mal3"), what="mal3")
            self.assertEqual(sorted(node.server.channels), ["#chan"])
            self.assertFalse(node.federation.channel_renames)
            op.send("PART #chan")
            await op.expect("PART")


class RenameRelinkTests(unittest.TestCase):
    """The new name outlives restarts and splits."""

    timeout = 90

    @asynctest
    async def test_restart_keeps_the_new_name_and_the_memberships(self) -> None:
        """A renames #r to #r2 and restarts: it reloads #r2, and after the relink B's bob is still a member of #r2 on
        A (his join was signed for #r: B's burst carries the rename, so A takes it as a proof for #r2)."""
        kb = os.urandom(32)
        ra = RestartableNode(self, "a.test", [EventSigner(kb).server_id])
        a = await ra.start()
        b = await start_node(self, "b.test", allowed=[ra.id], key=kb)
        a.link_to(b)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="link a-b")
        await settle(a, b)
        alice = await a.client("alice", caps=(CAP,))
        bob = await b.client("bob", caps=(CAP,))
        alice.send("JOIN #r")
        await alice.expect("366")
        await wait_for(lambda: "#r" in b.server.channels, what="#r on B")
        bob.send("JOIN #r")
        await alice.expect("JOIN")
        alice.send("TOPIC #r :before the restart")
        await bob.expect("TOPIC")
        alice.send("RENAME #r #r2")
        await bob.expect(renamed("#r", "#r2"))
        await sleep(0.3)  # the store's flush
        await ra.stop()
        a = await ra.start()
        b.bridge.release_peer(a.id)
        a.link_to(b)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="relink")
        await settle(a, b)
        self.assertEqual(sorted(a.server.channels), ["#r2"])
        self.assertEqual(a.server.channels["#r2"].topic, "before the restart")
        await wait_for(lambda: [u.nick for u in a.server.channels["#r2"].members] == ["bob"], what="bob in #r2 on A")
        self.assertFalse(a.federation.stats.get("rejected:forged"))
        self.assertEqual(sorted(b.server.channels), ["#r2"])
        alice = await a.client("alice")
        alice.send("JOIN #r2")
        await bob.expect("JOIN")
        bob.send("PRIVMSG #r2 :welcome back")
        self.assertEqual((await alice.expect("PRIVMSG")).params, ["#r2", "welcome back"])

    @asynctest
    async def test_rename_missed_in_a_split_applied_on_relink(self) -> None:
        """alice renames #s during a split from B: on the relink B (which still has #s with bob) applies the rename,
        bob sees it, and both servers agree on #t with alice (still operator) and bob."""
        a, b = await start_line(self, "a.test", "b.test", flood_rate=0)
        alice, bob, _carol = await three_members(self, [a, b], "#s")
        a.bridge.hold_peer(b.id)
        b.bridge.hold_peer(a.id)
        await wait_for(lambda: not a.linked(b) and not b.linked(a), what="split")
        await bob.expect("QUIT")
        alice.send("RENAME #s #t :while apart")
        await alice.expect(renamed("#s", "#t"))
        a.bridge.release_peer(b.id)
        b.bridge.release_peer(a.id)
        a.link_to(b)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="relink")
        await settle(a, b)
        line = await bob.expect(renamed("#s", "#t"))
        self.assertEqual(line.params[2], "while apart")
        for node in (a, b):
            await wait_for(lambda node=node: sorted(node.server.channels) == ["#t"], what=f"#t only on {node.name}")
        await wait_for(lambda: channel_view(a, "#t") == channel_view(b, "#t"), what="the same #t")
        self.assertEqual(sorted(channel_view(b, "#t")["members"]), [("alice", 2), ("bob", 0), ("carol", 0)])
        bob.send("PRIVMSG #t :together again")
        self.assertEqual((await alice.expect("PRIVMSG")).params, ["#t", "together again"])
