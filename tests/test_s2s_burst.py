"""Memberships in a burst are checked like live joins: each carries its origin-signed join event, a
membership new here is checked against +b/+i/+k/+l (refused ones are undone at the home server), its
operator status follows the live-join rules, and a relink restores what was accepted before; a +i
membership can carry the signed invite that admitted it, which counts here if its inviter is an
operator here. A peer can introduce no more than ``--s2s-max-remote-users`` users."""
from __future__ import annotations

import time
from functools import partial
from typing import Any, Optional

from twisted.trial import unittest

from freeq.s2s.protocol import EventSigner
from freeq.state.channel import OP, VOICE
from tests.s2s_support import (
    LogCapture,
    Node,
    RawPeer,
    keys,
    link_raw_peer,
    settle,
    start_line,
    start_node,
    start_raw_peer,
    wait_for,
)
from tests.support import asynctest


def record(mallory: RawPeer, n: int, nick: str) -> dict[str, Any]:
    """A burst user record for mallory's user ``n``."""
    return {"uid": mallory.uid(n), "origin": mallory.id, "nick": nick, "nick_ts": int(time.time() * 1000),
            "user": "~" + nick[:8], "host": "freeq/guest", "real": nick, "account": None, "handle": None,
            "away": None, "modes": "", "signon": int(time.time()), "owns": False}


def join_event(mallory: RawPeer, n: int, channel: str, signer: Optional[EventSigner] = None,
               key: Optional[str] = None) -> dict[str, Any]:
    """A join event of mallory's user ``n``, signed (by mallory unless ``signer``) but never sent live."""
    fields: dict[str, Any] = {"uid": mallory.uid(n), "channel": channel, "status": "", "ops": []}
    if key is not None:
        fields["key"] = key
    return mallory.event("join", fields, seq=0, signer=signer)


def burst(mallory: RawPeer, users: list[dict[str, Any]], channels: dict[str, list[list[Any]]]) -> None:
    """Send a complete burst: mallory alone, ``users``, and the member lists of ``channels``."""
    mallory.send({"type": "burst", "part": "servers",
                  "servers": [{"id": mallory.id, "name": mallory.name, "epoch": mallory.epoch, "hops": 0}],
                  "marks": []})
    mallory.send({"type": "burst", "part": "users", "users": users})
    for name, members in channels.items():
        mallory.send({"type": "burst", "part": "channel", "name": name, "created": int(time.time()), "ops": [],
                      "members": members})
    mallory.send({"type": "burst", "part": "end"})


def names(node: Node, channel: str) -> dict[str, int]:
    """Members of ``channel`` on ``node``: nick -> status bits."""
    chan = node.server.channels.get(channel.lower())
    return {u.nick: st for u, st in chan.members.items()} if chan is not None else {}


async def names_seen(client: Any, channel: str) -> list[str]:
    """NAMES as a local client sees it."""
    client.send(f"NAMES {channel}")
    return sorted((await client.expect(lambda l: l.command == "353" and l.params[2] == channel)).params[-1].split())


class BurstBase(unittest.TestCase):
    timeout = 40

    async def linked(self, **overrides: Any) -> tuple[Node, RawPeer, Any]:
        """Server B (bob is op of #chan) linked to mallory, a scripted ``full`` peer."""
        self.logs = LogCapture(self)
        (kb, _idb), (km, idm) = keys(2)
        b = await start_node(self, "b.test", allowed=[idm], key=kb, **overrides)
        mallory = await start_raw_peer(self, "mallory", key=km)
        mallory.bridge.add_peer(b.address())
        await wait_for(lambda: mallory.links, what="mallory's link")
        mallory.hello()
        await wait_for(lambda: b.federation.open_links(), what="handshake")
        await wait_for(lambda: any(f.get("part") == "end" for f in mallory.frames), what="B's burst")
        bob = await b.client("bob")
        bob.send("JOIN #chan")
        await bob.expect("366")
        return b, mallory, bob

    async def channel(self, bob: Any, name: str, modes: str = "") -> None:
        """Bob creates ``name`` (op) with ``modes``."""
        bob.send(f"JOIN {name}")
        await bob.expect("366")
        if modes:
            bob.send(f"MODE {name} {modes}")
            await bob.expect("MODE")


class BurstMembershipTests(BurstBase):
    """A hostile full peer cannot burst its users past the local channel rules."""

    @asynctest
    async def test_burst_membership_checked_against_i_k_b(self) -> None:
        """Bursted into +i, +k (wrong key) and +b channels: not a member, logged, and refused at the origin;
        the right key and an open channel are accepted."""
        b, mallory, bob = await self.linked()
        for name, modes in (("#inv", "+i"), ("#key", "+k sesame"), ("#ban", "+b mal!*@*"), ("#key2", "+k sesame"),
                            ("#open", "")):
            await self.channel(bob, name, modes)
        given = {"#key": "wrong", "#key2": "sesame"}
        joins = {name: join_event(mallory, 1, name, key=given.get(name)) for name in ("#inv", "#key", "#ban", "#key2",
                                                                                      "#open")}
        burst(mallory, [record(mallory, 1, "mal")], {name: [[mallory.uid(1), "", ev]] for name, ev in joins.items()})
        await wait_for(lambda: "mal" in names(b, "#open") and "mal" in names(b, "#key2"), what="accepted memberships")
        for name, reason in (("#inv", "+i (not invited)"), ("#key", "+k (bad key)"), ("#ban", "+b (banned)")):
            await self.logs.wait("S2S burst membership from peer", mallory.id, f"rejected: unauthorized: {reason}",
                                 name)
            self.assertEqual(await names_seen(bob, name), ["@bob"])

            def refusal_of(channel: str = name) -> Optional[dict[str, Any]]:
                return next((f for f in mallory.frames if f.get("type") == "refuse" and f.get("channel") == channel),
                            None)

            refusal = await wait_for(refusal_of, what=f"refuse {name}")
            self.assertEqual((refusal["to"], refusal["origin"], refusal["uid"], refusal["join"], refusal["reason"]),
                             (mallory.id, b.id, mallory.uid(1), joins[name]["sig"], reason.split()[0]))
        self.assertEqual(await names_seen(bob, "#open"), ["@bob", "mal"])
        self.assertGreaterEqual(b.federation.stats.get("rejected:unauthorized", 0), 3)
        # A relink (the same burst again) still does not let mal in, and refuses again.
        burst(mallory, [record(mallory, 1, "mal")], {name: [[mallory.uid(1), "", ev]] for name, ev in joins.items()})
        await wait_for(lambda: sum(f.get("type") == "refuse" for f in mallory.frames) >= 6, what="refused again")
        for name in ("#inv", "#key", "#ban"):
            self.assertNotIn("mal", names(b, name))
        self.assertIn("mal", names(b, "#open"))

    @asynctest
    async def test_forged_or_missing_join_event(self) -> None:
        """A membership without its join event, with one signed by another key, of another channel, of
        another user, or tampered with, is rejected; a proper one is accepted."""
        b, mallory, bob = await self.linked()
        (_k, _id), = keys(1)
        other = EventSigner(_k)
        tampered = join_event(mallory, 5, "#chan")
        tampered["status"] = "o"
        members: list[list[Any]] = [
            [mallory.uid(1), ""],  # no join event at all
            [mallory.uid(2), "", join_event(mallory, 2, "#chan", signer=other)],
            [mallory.uid(3), "", join_event(mallory, 3, "#elsewhere")],
            [mallory.uid(4), "", join_event(mallory, 1, "#chan")],
            [mallory.uid(5), "", tampered],
            [mallory.uid(6), "", join_event(mallory, 6, "#chan")],
        ]
        users = [record(mallory, n, f"mal{n}") for n in range(1, 7)]
        burst(mallory, users, {"#chan": members})
        await wait_for(lambda: "mal6" in names(b, "#chan"), what="mal6 in #chan")
        for reason in ("forged: no join event", "forged: bad signature on the join event",
                       "forged: join event of another channel", "forged: join event of another user"):
            await self.logs.wait("S2S burst membership from peer", mallory.id, reason, "#chan")
        self.assertEqual(len(self.logs.find("S2S burst membership from peer", "forged:")), 5)
        self.assertEqual(sorted(names(b, "#chan")), ["bob", "mal6"])
        self.assertEqual(await names_seen(bob, "#chan"), ["@bob", "mal6"])
        self.assertFalse(any(f.get("type") == "refuse" for f in mallory.frames))  # nothing to undo

    @asynctest
    async def test_operator_status_of_a_new_membership(self) -> None:
        """"o" for a new membership of an existing channel is dropped (logged); in a channel new here it is kept."""
        b, mallory, bob = await self.linked()
        burst(mallory, [record(mallory, 1, "mal")], {"#chan": [[mallory.uid(1), "o", join_event(mallory, 1, "#chan")]],
                                                    "#fresh": [[mallory.uid(1), "o", join_event(mallory, 1, "#fresh")]]})
        await wait_for(lambda: "mal" in names(b, "#chan") and "mal" in names(b, "#fresh"), what="mal's memberships")
        self.assertEqual(names(b, "#chan")["mal"], 0)
        self.assertEqual(names(b, "#fresh")["mal"], OP)
        await self.logs.wait("S2S burst membership from peer", mallory.id,
                             "rejected: unauthorized: status +o not proven: no status proof", "#chan")
        # B logged its verdict while applying mallory's burst, and writes any MODE it causes then: nothing is in
        # flight, so a barrier on bob is sound (before NAMES, which would move the cursor past such a line).
        await bob.expect_not(r"MODE #chan \+o")
        self.assertEqual(await names_seen(bob, "#chan"), ["@bob", "mal"])


class BurstLimitTests(BurstBase):
    """--s2s-max-remote-users."""

    @asynctest
    async def test_users_over_the_cap_are_refused(self) -> None:
        """A burst of five users behind a link capped at three: three exist, the rest are refused (logged,
        counted), as is a later ``user`` event; events of refused users are dropped as unknown users."""
        b, mallory, bob = await self.linked(s2s_max_remote_users=3)
        self.assertEqual(b.federation.max_remote_users, 3)
        burst(mallory, [record(mallory, n, f"mal{n}") for n in range(1, 6)],
              {"#chan": [[mallory.uid(n), "", join_event(mallory, n, "#chan")] for n in range(1, 6)]})
        line = await self.logs.wait("S2S user from peer", mallory.id, "rejected: limit:")
        self.assertIn("2 user(s)", line)
        await wait_for(lambda: len(names(b, "#chan")) == 4, what="three members from mallory")
        known = sorted(n for n in (f"mal{i}" for i in range(1, 6)) if b.knows(n))
        self.assertEqual(known, ["mal1", "mal2", "mal3"])
        self.assertEqual(sorted(names(b, "#chan")), ["bob", "mal1", "mal2", "mal3"])
        self.assertEqual(b.federation.stats.get("rejected:limit"), 2)
        # Live: a sixth user is refused too; its join is dropped (unknown user).
        mallory.send(mallory.user(6, "mal6"))
        mallory.send(mallory.event("join", {"uid": mallory.uid(6), "channel": "#chan", "status": "", "ops": []}))
        await wait_for(lambda: b.federation.stats.get("rejected:limit") == 3, what="live user refused")
        await wait_for(lambda: b.federation.stats.get("unknown_user", 0) >= 1, what="its join dropped")
        self.assertFalse(b.knows("mal6"))
        self.assertEqual(await names_seen(bob, "#chan"), ["@bob", "mal1", "mal2", "mal3"])
        # A user who quits frees a place.
        mallory.send(mallory.event("quit", {"uid": mallory.uid(1), "reason": "bye"}))
        mallory.send(mallory.user(7, "mal7"))
        await wait_for(lambda: b.knows("mal7"), what="mal7 admitted")
        self.assertFalse(b.knows("mal1"))


    @asynctest
    async def test_remote_user_held_to_chanlimit(self) -> None:
        """A remote user may be in at most --max-channels-per-user channels here, whether it joins live or
        by burst, in channels old or new here: the excess join is refused (logged, answered with a
        ``refuse`` of reason ``limit``) and no channel is made for it."""
        b, mallory, bob = await self.linked(max_channels_per_user=2)
        mallory.send(mallory.user(1, "mal"))
        await wait_for(lambda: b.knows("mal"), what="mal on B")
        for name in ("#one", "#two", "#three"):
            mallory.send(mallory.event("join", {"uid": mallory.uid(1), "channel": name, "status": "", "ops": []}))
        line = await self.logs.wait("join from peer", "unauthorized: limit", "#three")
        self.assertIn("in 2 channels already", line)
        self.assertEqual(sorted(c.name for c in b.server.users["mal"].channels.values()), ["#one", "#two"])
        self.assertNotIn("#three", b.server.channels)
        refusal = await wait_for(lambda: next((f for f in mallory.frames if f.get("type") == "refuse"
                                               and f.get("channel") == "#three"), None), what="refuse #three")
        self.assertEqual((refusal["reason"], refusal["to"], refusal["uid"]), ("limit", mallory.id, mallory.uid(1)))
        # By burst: mal2 is listed in three channels new here; only two take it.
        burst(mallory, [record(mallory, 1, "mal"), record(mallory, 2, "mal2")],
              {name: [[mallory.uid(1), "", join_event(mallory, 1, name)]] if name != "#new3" else []
               for name in ("#one", "#two")}
              | {name: [[mallory.uid(2), "", join_event(mallory, 2, name)]] for name in ("#new1", "#new2", "#new3")})
        await self.logs.wait("burst membership from peer", "unauthorized: limit", "#new3")
        await wait_for(lambda: b.knows("mal2"), what="mal2 on B")
        self.assertEqual(sorted(c.name for c in b.server.users["mal2"].channels.values()), ["#new1", "#new2"])
        self.assertNotIn("#new3", b.server.channels)

    @asynctest
    async def test_memberless_channels_from_bursts_are_capped(self) -> None:
        """State-only channel entries (no member here) make at most MAX_MEMBERLESS_CHANNELS channels."""
        from freeq.s2s import burst as fedmod

        self.patch(fedmod, "MAX_MEMBERLESS_CHANNELS", 2)
        b, mallory, bob = await self.linked()
        before = len(b.server.channels) - b.server.channels.formed
        self.assertEqual(before, 0)
        mallory.send({"type": "burst", "part": "servers",
                      "servers": [{"id": mallory.id, "name": mallory.name, "epoch": mallory.epoch, "hops": 0}],
                      "marks": []})
        mallory.send({"type": "burst", "part": "users", "users": []})
        stamp = [int(time.time() * 1000), 0, mallory.id[:16]]
        for n in range(1, 5):
            mallory.send({"type": "burst", "part": "channel", "name": f"#empty{n}", "created": int(time.time()),
                          "ops": [["set", "topic", [f"topic {n}", "mal", int(time.time())], stamp]], "members": []})
        mallory.send({"type": "burst", "part": "end"})
        await self.logs.wait("burst channel from peer", "limit: 2 channels without members")
        made = sorted(n for n in b.server.channels if n.startswith("#empty"))
        self.assertEqual(len(made), 2)


class RelinkTests(unittest.TestCase):
    """Memberships accepted before a netsplit come back with their status, unchecked."""

    timeout = 40

    @asynctest
    async def test_invited_membership_and_op_survive_a_relink(self) -> None:
        """bob (on B) is invited into +i #inv on A and given op; after a split and heal he is back in #inv
        on A, still op, and alice (the creator) is back on B with op; nothing is refused."""
        logs = LogCapture(self)
        a, b = await start_line(self, "a.test", "b.test")
        alice = await a.client("alice")
        bob = await b.client("bob")
        alice.send("JOIN #inv")
        await alice.expect("366")
        alice.send("MODE #inv +i")
        await alice.expect("MODE")
        await wait_for(lambda: "i" in b.server.channels.get("#inv", a.server.channels["#inv"]).modes
                       and "#inv" in b.server.channels, what="+i on B")
        bob.send("JOIN #inv")
        await bob.expect("473")  # not invited
        alice.send("INVITE bob #inv")
        await bob.expect("INVITE")
        bob.send("JOIN #inv")
        await bob.expect("366")
        await alice.expect(r":bob!\S+ JOIN #inv")
        alice.send("MODE #inv +o bob")
        await bob.expect(r"MODE #inv \+o bob")
        self.assertEqual(names(a, "#inv"), {"alice": OP, "bob": OP})
        a.bridge.hold_peer(b.id)
        b.bridge.hold_peer(a.id)
        await wait_for(lambda: not a.linked(b) and not b.linked(a), what="split")
        await alice.expect(r":bob!\S+ QUIT")
        self.assertEqual(names(a, "#inv"), {"alice": OP})
        b.bridge.release_peer(a.id)
        a.bridge.release_peer(b.id)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="relink")
        await settle(a, b)
        await wait_for(lambda: names(a, "#inv") == {"alice": OP, "bob": OP}, what="bob back in #inv on A, op")
        self.assertEqual(names(b, "#inv"), {"alice": OP, "bob": OP})
        await alice.expect(r":bob!\S+ JOIN #inv")
        await alice.expect(r"MODE #inv \+o bob")
        self.assertEqual(logs.find("burst membership from peer"), [])
        # A KICK would follow A's refusal of B's burst, sent before A showed alice the JOIN and +o; alice's
        # message comes after it over the same link.
        alice.send("PRIVMSG #inv :after the heal")
        await bob.expect_not("KICK", until="PRIVMSG #inv :after the heal")
        # A real part ends it: a rejoin needs a new invite again.
        bob.send("PART #inv")
        await wait_for(lambda: "bob" not in names(a, "#inv"), what="bob parted on A")
        bob.send("JOIN #inv")
        await bob.expect("473")

    @asynctest
    async def test_join_during_a_split_refused_after_the_heal(self) -> None:
        """carol (on A) joins #inv during a split while B makes it +i: after the heal B refuses the bursted
        membership and A takes carol out (KICK from b.test), so both sides agree."""
        logs = LogCapture(self)
        a, b = await start_line(self, "a.test", "b.test")
        alice = await a.client("alice")
        bob = await b.client("bob")
        carol = await a.client("carol")
        alice.send("JOIN #inv")
        await alice.expect("366")
        await wait_for(lambda: "#inv" in b.server.channels, what="#inv on B")
        bob.send("JOIN #inv")
        await bob.expect("366")
        await alice.expect(r":bob!\S+ JOIN #inv")
        alice.send("MODE #inv +o bob")
        await bob.expect(r"MODE #inv \+o bob")
        a.bridge.hold_peer(b.id)
        b.bridge.hold_peer(a.id)
        await wait_for(lambda: not a.linked(b) and not b.linked(a), what="split")
        bob.send("MODE #inv +i")
        await bob.expect(r"MODE #inv \+i")
        carol.send("JOIN #inv")
        await carol.expect("366")  # A does not know about +i yet
        b.bridge.release_peer(a.id)
        a.bridge.release_peer(b.id)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="relink")
        kick = await carol.expect("KICK")
        self.assertTrue(kick.raw.startswith(":b.test KICK "), kick.raw)
        self.assertEqual(kick.params, ["#inv", "carol", "Cannot join channel (+i) on b.test"])
        await settle(a, b)
        await wait_for(lambda: names(a, "#inv") == names(b, "#inv") == {"alice": OP, "bob": OP},
                       what="the same members on both sides")
        self.assertIn("i", a.server.channels["#inv"].modes)
        await logs.wait("S2S burst membership from peer", a.id, "rejected: unauthorized: +i (not invited)", "carol")
        await logs.wait("join of carol to #inv refused by b.test (+i)")
        # alice's message comes over the same link after A's burst (which carried carol's membership).
        alice.send("PRIVMSG #inv :after the heal")
        await bob.expect_not(r":carol!\S+ JOIN #inv", until="PRIVMSG #inv :after the heal")


def invite_event(mallory: RawPeer, inviter: int, target: str, channel: str,
                 signer: Optional[EventSigner] = None) -> dict[str, Any]:
    """An invite by mallory's user ``inviter`` of uid ``target``, signed (by mallory unless ``signer``), never sent."""
    return mallory.event("invite", {"uid": mallory.uid(inviter), "channel": channel, "target": target}, seq=0,
                         signer=signer)


class InviteProofTests(BurstBase):
    """A bursted membership of a +i channel can carry the signed invite that admitted it; it stands for
    an invite given here only if an operator here could have given it."""

    @asynctest
    async def test_invite_event_checked(self) -> None:
        """mal0 is op of +i #inv (and of +ik #ik) here. Bursted with an invite by mal0, mal1 is accepted; an
        invite by a non-operator, a forged one, one for another uid or another channel are refused (logged
        with the reason, undone at the origin), and an invite does not answer +k."""
        b, mallory, bob = await self.linked()
        await self.channel(bob, "#inv")
        await self.channel(bob, "#ik")
        (k_other, _id), = keys(1)
        joins0 = {name: join_event(mallory, 0, name) for name in ("#inv", "#ik")}
        burst(mallory, [record(mallory, 0, "mal0")], {name: [[mallory.uid(0), "", ev]] for name, ev in joins0.items()})
        await wait_for(lambda: "mal0" in names(b, "#inv") and "mal0" in names(b, "#ik"), what="mal0 in")
        bob.send("MODE #inv +io mal0")
        await bob.expect(r"MODE #inv \+io mal0")
        bob.send("MODE #ik +iko sesame mal0")
        await bob.expect(r"MODE #ik \+iko sesame mal0")
        cases = {  # n -> (channel, invite event, the reason it is refused, or None)
            1: ("#inv", invite_event(mallory, 0, mallory.uid(1), "#inv"), None),
            2: ("#inv", invite_event(mallory, 3, mallory.uid(2), "#inv"), "inviter is not a channel operator here"),
            4: ("#inv", invite_event(mallory, 0, mallory.uid(4), "#inv", signer=EventSigner(k_other)),
                "bad signature on the invite event"),
            5: ("#inv", invite_event(mallory, 0, mallory.uid(1), "#inv"), "invite event for another user"),
            6: ("#inv", invite_event(mallory, 0, mallory.uid(6), "#ik"), "invite event of another channel"),
            7: ("#ik", invite_event(mallory, 0, mallory.uid(7), "#ik"), "+k (bad key)"),
        }
        members: dict[str, list[list[Any]]] = {name: [[mallory.uid(0), "o", ev]] for name, ev in joins0.items()}
        joins = {}
        for n, (name, invite, _why) in cases.items():
            joins[n] = join_event(mallory, n, name)
            members[name].append([mallory.uid(n), "", joins[n], invite])
        burst(mallory, [record(mallory, n, f"mal{n}") for n in range(8)], members)
        await wait_for(lambda: "mal1" in names(b, "#inv"), what="mal1 admitted by mal0's invite")
        await self.logs.wait("burst membership of mal1 in #inv accepted by the invite of", mallory.uid(0))

        def refusal_of(uid: str) -> Optional[dict[str, Any]]:
            return next((f for f in mallory.frames if f.get("type") == "refuse" and f.get("uid") == uid), None)

        for n, (name, _invite, why) in cases.items():
            if why is None:
                continue
            if why.startswith("+k"):
                code = "+k"
                await self.logs.wait("S2S burst membership from peer", mallory.id, f"rejected: unauthorized: {why}",
                                     f"mal{n}")
            else:
                code = "+i"
                await self.logs.wait("S2S burst membership from peer", mallory.id,
                                     f"rejected: unauthorized: +i (not invited) and its invite event is refused: "
                                     f"{why}", f"mal{n}", name)
            refusal = await wait_for(partial(refusal_of, mallory.uid(n)), what=f"refusal of mal{n}")
            self.assertEqual((refusal["join"], refusal["reason"]), (joins[n]["sig"], code))
        self.assertEqual(sorted(names(b, "#inv")), ["bob", "mal0", "mal1"])
        self.assertEqual(sorted(names(b, "#ik")), ["bob", "mal0"])
        self.assertEqual(await names_seen(bob, "#inv"), ["@bob", "@mal0", "mal1"])
        self.assertFalse(any(f.get("type") == "refuse" and f.get("uid") == mallory.uid(1) for f in mallory.frames))
        self.assertEqual(len(self.logs.find("accepted by the invite of")), 1)  # mal1's only
        # The admitting invite is kept with the membership, so this server's own bursts carry it on.
        self.assertEqual(b.federation.member_invites.get((mallory.uid(1), "#inv")), cases[1][1])

    @asynctest
    async def test_invite_not_accepted_from_a_relay_peer(self) -> None:
        """Over a ``relay`` link (no invite events), a carried invite by an operator here does not count."""
        logs = LogCapture(self)
        b, mallory, bob = await link_raw_peer(self, "b.test", "bob", trust="relay")
        await self.channel(bob, "#inv")
        join0 = join_event(mallory, 0, "#inv")
        burst(mallory, [record(mallory, 0, "mal0")], {"#inv": [[mallory.uid(0), "", join0]]})
        await wait_for(lambda: "mal0" in names(b, "#inv"), what="mal0 in #inv")
        bob.send("MODE #inv +io mal0")
        await bob.expect(r"MODE #inv \+io mal0")
        join1 = join_event(mallory, 1, "#inv")
        burst(mallory, [record(mallory, n, f"mal{n}") for n in range(2)],
              {"#inv": [[mallory.uid(0), "o", join0],
                        [mallory.uid(1), "", join1, invite_event(mallory, 0, mallory.uid(1), "#inv")]]})
        await logs.wait("S2S burst membership from peer", mallory.id, "rejected: unauthorized: +i (not invited) and "
                        "its invite event is refused: invite events are not accepted from a relay peer", "mal1")
        self.assertEqual(sorted(names(b, "#inv")), ["bob", "mal0"])
        self.assertEqual(logs.find("accepted by the invite of"), [])


class InviteDuringSplitTests(unittest.TestCase):
    """An invite given during a netsplit travels with the membership it admitted."""

    timeout = 40

    async def invite_during_split(self, a: Node, b: Node, *others: Node) -> Any:
        """alice makes +i #c on A (known everywhere); during a split of A and B she invites bob (on A), who
        joins; then the split heals and everything settles. Returns bob's client."""
        alice = await a.client("alice")
        bob = await a.client("bob")
        alice.send("JOIN #c")
        await alice.expect("366")
        alice.send("MODE #c +i")
        await alice.expect(r"MODE #c \+i")
        await wait_for(lambda: all("#c" in n.server.channels and "i" in n.server.channels["#c"].modes
                                   and "alice" in names(n, "#c") for n in (b,) + others), what="+i #c everywhere")
        a.bridge.hold_peer(b.id)
        b.bridge.hold_peer(a.id)
        await wait_for(lambda: not a.linked(b) and not b.linked(a), what="split")
        alice.send("INVITE bob #c")
        await bob.expect("INVITE")
        bob.send("JOIN #c")
        await bob.expect("366")
        b.bridge.release_peer(a.id)
        a.bridge.release_peer(b.id)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="relink")
        await settle(a, b, *others)
        return bob

    @asynctest
    async def test_invited_during_a_split_kept_after_the_heal(self) -> None:
        """alice (op of +i #c, on A) invites bob (on A) during a split and bob joins: after the heal B, which
        never saw the invite, accepts bob's membership on the strength of alice's signed invite: bob is in
        #c on both sides, nothing is refused, nobody is kicked."""
        logs = LogCapture(self)
        a, b = await start_line(self, "a.test", "b.test")
        bob = await self.invite_during_split(a, b)
        await wait_for(lambda: names(b, "#c") == {"alice": OP, "bob": 0}, what="bob in #c on B")
        # A KICK would follow B's refusal, sent while B took bob in (above); a message from a client of B
        # comes after it over the same link.
        brian = await b.client("brian")
        brian.send("PRIVMSG bob :after the heal")
        await bob.expect_not("KICK", until="PRIVMSG bob :after the heal")
        self.assertEqual(names(a, "#c"), {"alice": OP, "bob": 0})
        self.assertEqual(logs.find("burst membership from peer"), [])
        self.assertEqual(logs.find("refused by"), [])
        await logs.wait("burst membership of bob in #c accepted by the invite of")

    @asynctest
    async def test_invite_carried_on_through_a_line(self) -> None:
        """In a line A-B-C, A splits from B; bob (on A) is invited into +i #c and joins. After the heal B accepts
        him by the invite and its own burst carries the invite on to C, which accepts him too."""
        logs = LogCapture(self)
        a, b, c = await start_line(self, "a.test", "b.test", "c.test")
        bob = await self.invite_during_split(a, b, c)
        await wait_for(lambda: names(b, "#c") == names(c, "#c") == {"alice": OP, "bob": 0}, what="bob in #c on B, C")
        # As above, from the far end: a message from C passes B after anything B or C sent bob's way.
        cora = await c.client("cora")
        cora.send("PRIVMSG bob :after the heal")
        await bob.expect_not("KICK", until="PRIVMSG bob :after the heal")
        self.assertEqual(names(a, "#c"), {"alice": OP, "bob": 0})
        self.assertEqual(logs.find("burst membership from peer"), [])
        self.assertEqual(len(logs.find("burst membership of bob in #c accepted by the invite of")), 2)  # B and C


def mode_event(mallory: RawPeer, actor: int, channel: str, status: list[list[str]],
               signer: Optional[EventSigner] = None) -> dict[str, Any]:
    """A mode event by mallory's user ``actor`` with member status changes ``status``, signed (by mallory unless
    ``signer``) but never sent live: a status proof."""
    return mallory.event("mode", {"uid": mallory.uid(actor), "channel": channel, "ops": [], "status": status},
                         seq=0, signer=signer)


class StatusProofTests(BurstBase):
    """Status a burst gives beyond what this server granted needs a signed grant by an operator here."""

    async def own_channel(self, b: Node, mallory: RawPeer, n: int) -> dict[int, dict[str, Any]]:
        """mal0 creates #own here by a burst (op: the channel is new here); mal1..mal<n> are plain members.
        Returns their join events by user number."""
        joins = {i: join_event(mallory, i, "#own") for i in range(n + 1)}
        burst(mallory, [record(mallory, i, f"mal{i}") for i in range(n + 1)],
              {"#own": [[mallory.uid(i), "o" if i == 0 else "", joins[i]] for i in range(n + 1)]})
        await wait_for(lambda: len(names(b, "#own")) == n + 1, what="mallory's users in #own")
        self.assertEqual(names(b, "#own"), {f"mal{i}": OP if i == 0 else 0 for i in range(n + 1)})
        return joins

    @asynctest
    async def test_status_not_raised_without_proof(self) -> None:
        """mal1 and mal2, plain members of #chan here, re-bursted as "o" and "ov" without a status proof stay
        plain (logged); status the burst no longer lists is still taken away."""
        b, mallory, bob = await self.linked()
        joins = {n: join_event(mallory, n, "#chan") for n in (1, 2, 3)}
        users = [record(mallory, n, f"mal{n}") for n in (1, 2, 3)]
        burst(mallory, users, {"#chan": [[mallory.uid(n), "", joins[n]] for n in (1, 2, 3)]})
        await wait_for(lambda: len(names(b, "#chan")) == 4, what="mal1..3 in #chan")
        bob.send("MODE #chan +v mal3")
        await bob.expect(r"MODE #chan \+v mal3")
        burst(mallory, users, {"#chan": [[mallory.uid(1), "o", joins[1]], [mallory.uid(2), "ov", joins[2]],
                                         [mallory.uid(3), "", joins[3]]]})
        await self.logs.wait("S2S burst membership from peer", mallory.id,
                             "rejected: unauthorized: status +o not proven: no status proof", "mal1", "#chan")
        await self.logs.wait("S2S burst membership from peer", mallory.id,
                             "rejected: unauthorized: status +ov not proven: no status proof", "mal2", "#chan")
        await wait_for(lambda: names(b, "#chan")["mal3"] == 0, what="mal3's voice taken away")
        self.assertEqual(names(b, "#chan"), {"bob": OP, "mal1": 0, "mal2": 0, "mal3": 0})
        await bob.expect_not(r"MODE #chan \+")  # as in test_operator_status_of_a_new_membership
        self.assertEqual(await names_seen(bob, "#chan"), ["@bob", "mal1", "mal2", "mal3"])

    @asynctest
    async def test_status_proven_by_an_operator_here(self) -> None:
        """mal0 is op of #own here (it created it here). A burst giving "o" to mal1 (a member), mal2 (new here)
        and mal3 (granted by mal1, who is op only by his own proof in the same burst) with mode events by their
        granters is accepted; the proofs are kept and carried on in this server's bursts, as is the mode
        event of a local grant."""
        b, mallory, bob = await self.linked()
        joins = await self.own_channel(b, mallory, 1)
        joins[2], joins[3] = join_event(mallory, 2, "#own"), join_event(mallory, 3, "#own")
        proofs = {1: mode_event(mallory, 0, "#own", [["+", "o", mallory.uid(1)]]),
                  2: mode_event(mallory, 0, "#own", [["+", "v", mallory.uid(2)], ["+", "o", mallory.uid(2)]]),
                  3: mode_event(mallory, 1, "#own", [["+", "o", mallory.uid(3)]])}
        status = {0: "o", 1: "o", 2: "ov", 3: "o"}
        order = (0, 3, 2, 1)  # mal3's granter comes after him
        burst(mallory, [record(mallory, n, f"mal{n}") for n in order],
              {"#own": [[mallory.uid(n), status[n], joins[n], None, proofs[n]] if n in proofs
                        else [mallory.uid(n), status[n], joins[n]] for n in order]})
        await wait_for(lambda: len(names(b, "#own")) == 4, what="mal2 and mal3 in #own")
        self.assertEqual(names(b, "#own"), {"mal0": OP, "mal1": OP, "mal2": OP | VOICE, "mal3": OP})
        self.assertEqual(self.logs.find("burst membership from peer"), [])
        chan = b.server.channels["#own"]
        for n, proof in proofs.items():
            self.assertEqual(b.federation.member_status.get((mallory.uid(n), "#own")), proof)
            user = b.server.users[f"mal{n}"]
            self.assertEqual(b.federation._member_entry(user, chan.members[user], chan)[4], proof)
        # A local grant: the mode event B sent is carol's status proof in B's bursts.
        carol = await b.client("carol")
        carol.send("JOIN #chan")
        await carol.expect("366")
        bob.send("MODE #chan +o carol")
        await carol.expect(r"MODE #chan \+o carol")
        carol_uid = b.federation.uid(b.server.users["carol"])
        sent = await wait_for(lambda: next((f for f in mallory.frames if f.get("type") == "mode"
                                            and ["+", "o", carol_uid] in f.get("status", [])), None), what="mode")
        entry = b.federation._member_entry(b.server.users["carol"], OP, b.server.channels["#chan"])
        self.assertEqual(entry[3:], [None, sent])

    @asynctest
    async def test_bad_status_proofs_refused(self) -> None:
        """Status proofs by a non-operator, an unknown granter, signed by another key, for another uid or
        channel, granting other status, or that are not mode events, raise nothing (logged with the reason)."""
        b, mallory, bob = await self.linked()
        joins = await self.own_channel(b, mallory, 8)
        (k_other, _id), = keys(1)
        cases = {  # n -> (status proof, why it is refused)
            1: (mode_event(mallory, 2, "#own", [["+", "o", mallory.uid(1)]]), "granter is not a channel operator here"),
            2: (mode_event(mallory, 9, "#own", [["+", "o", mallory.uid(2)]]), "granter unknown here"),
            3: (mode_event(mallory, 0, "#own", [["+", "o", mallory.uid(3)]], signer=EventSigner(k_other)),
                "bad signature on the status proof"),
            4: (mode_event(mallory, 0, "#own", [["+", "o", mallory.uid(1)]]), "status proof for another user"),
            5: (mode_event(mallory, 0, "#chan", [["+", "o", mallory.uid(5)]]), "status proof of another channel"),
            6: (mode_event(mallory, 0, "#own", [["+", "v", mallory.uid(6)]]), "the status proof grants other status"),
            7: (mode_event(mallory, 0, "#own", [["+", "o", mallory.uid(7)], ["-", "o", mallory.uid(7)]]),
                "status proof for another user"),
            8: (join_event(mallory, 8, "#own"), "status proof is not a mode event"),
        }
        members: list[list[Any]] = [[mallory.uid(0), "o", joins[0]]]
        for n, (proof, _why) in cases.items():
            members.append([mallory.uid(n), "o", joins[n], None, proof])
        burst(mallory, [record(mallory, n, f"mal{n}") for n in range(9)], {"#own": members})
        for n, (_proof, why) in cases.items():
            await self.logs.wait("S2S burst membership from peer", mallory.id,
                                 f"rejected: unauthorized: status +o not proven: {why}", f"nick=mal{n} ")
        self.assertEqual(names(b, "#own"), {f"mal{i}": OP if i == 0 else 0 for i in range(9)})
        self.assertEqual([k for k in b.federation.member_status if k[1] == "#own"], [])

    @asynctest
    async def test_status_not_raised_by_a_relay_peer(self) -> None:
        """Over a ``relay`` link a status proof by an operator here counts only if this server signed it: mal1 is
        not opped by mal0's grant, nor voiced without proof; a grant B itself made and signed does count."""
        logs = LogCapture(self)
        b, mallory, bob = await link_raw_peer(self, "b.test", "bob", trust="relay")
        joins = {n: join_event(mallory, n, "#chan") for n in (0, 1, 2)}
        users = [record(mallory, n, f"mal{n}") for n in (0, 1, 2)]
        burst(mallory, users, {"#chan": [[mallory.uid(n), "", joins[n]] for n in (0, 1, 2)]})
        await wait_for(lambda: len(names(b, "#chan")) == 4, what="mal0..2 in #chan")
        bob.send("MODE #chan +oo mal0 mal2")
        await bob.expect(r"MODE #chan \+oo mal0 mal2")
        own = b.federation.member_status[(mallory.uid(2), "#chan")]
        self.assertEqual(own["origin"], b.id)
        bob.send("MODE #chan -o mal2")
        await bob.expect(r"MODE #chan -o mal2")
        burst(mallory, users, {"#chan": [[mallory.uid(0), "o", joins[0]],
                                         [mallory.uid(1), "ov", joins[1], None,
                                          mode_event(mallory, 0, "#chan", [["+", "o", mallory.uid(1)]])],
                                         [mallory.uid(2), "o", joins[2], None, own]]})
        await logs.wait("S2S burst membership from peer", mallory.id, "rejected: unauthorized: status +ov not proven: "
                        "status proofs are not accepted from a relay peer", "mal1")
        await wait_for(lambda: names(b, "#chan")["mal2"] == OP, what="mal2 re-opped by B's own grant")
        self.assertEqual(names(b, "#chan"), {"bob": OP, "mal0": OP, "mal1": 0, "mal2": OP})


class StatusDuringSplitTests(unittest.TestCase):
    """A status given during a netsplit travels with the membership, proven by the grant's signed event."""

    timeout = 40

    async def split_and_op(self, a: Node, b: Node, *others: Node) -> tuple[Any, Any]:
        """alice creates #c on A, bob (on A) joins, and a user of each other server (so #c stays there during
        the split); during a split of A and B alice gives bob +o; then the split heals."""
        alice = await a.client("alice")
        bob = await a.client("bob")
        alice.send("JOIN #c")
        await alice.expect("366")
        # #c must reach every server before anyone joins there, or that join creates it too (a creation race).
        await wait_for(lambda: all("alice" in names(node, "#c") for node in (b,) + others), what="#c created")
        for client in [bob] + [await node.client(f"user{i}") for i, node in enumerate((b,) + others)]:
            client.send("JOIN #c")
            await client.expect("366")
        expected = {"alice": OP, "bob": 0} | {f"user{i}": 0 for i in range(1 + len(others))}
        await wait_for(lambda: all(names(node, "#c") == expected for node in (a, b) + others), what="#c everywhere")
        a.bridge.hold_peer(b.id)
        b.bridge.hold_peer(a.id)
        await wait_for(lambda: not a.linked(b) and not b.linked(a), what="split")
        alice.send("MODE #c +o bob")
        await bob.expect(r"MODE #c \+o bob")
        stand_in = a.federation.member_status[(a.federation.uid(a.server.users["bob"]), "#c")]
        self.assertEqual((stand_in["type"], stand_in["seq"]), ("mode", 0))  # no link: signed for the purpose
        b.bridge.release_peer(a.id)
        a.bridge.release_peer(b.id)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="relink")
        return alice, bob

    @asynctest
    async def test_op_given_during_a_split_kept_after_the_heal(self) -> None:
        """After the heal bob is op of #c on B too: alice, his granter, is op there."""
        logs = LogCapture(self)
        a, b = await start_line(self, "a.test", "b.test")
        await self.split_and_op(a, b)
        await settle(a, b)
        await wait_for(lambda: names(b, "#c") == {"alice": OP, "bob": OP, "user0": 0}, what="bob op on B")
        self.assertEqual(names(a, "#c"), {"alice": OP, "bob": OP, "user0": 0})
        self.assertEqual(logs.find("burst membership from peer"), [])

    @asynctest
    async def test_op_given_during_a_split_carried_through_a_line(self) -> None:
        """In a line A-B-C, A splits from B and alice ops bob: after the heal B's burst carries the proof on to C."""
        logs = LogCapture(self)
        a, b, c = await start_line(self, "a.test", "b.test", "c.test")
        await self.split_and_op(a, b, c)
        await settle(a, b, c)
        await wait_for(lambda: names(b, "#c") == names(c, "#c") == {"alice": OP, "bob": OP, "user0": 0, "user1": 0},
                       what="bob op on B, C")
        self.assertEqual(logs.find("burst membership from peer"), [])
