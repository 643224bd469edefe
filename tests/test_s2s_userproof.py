"""User records in a burst are proven by their origin: a record of a user of a server behind the peer
carries the origin-signed ``user`` event (and a later ``nick`` event) it rests on, and the user's fields
are taken from those, so a neighbour can neither invent users of the servers behind it nor alter them.
The peer's own users stay vouched by the peer."""
from __future__ import annotations

import time
from typing import Any, Optional

from twisted.trial import unittest

from freeq.s2s.protocol import EventSigner
from tests.s2s_support import LogCapture, RawPeer, keys, link_raw_peer, settle, start_line, wait_for
from tests.support import asynctest


def signed(signer: EventSigner, kind: str, fields: dict[str, Any], hlc_ms: int, origin: Optional[str] = None,
           epoch: int = 1) -> dict[str, Any]:
    """An event of ``kind`` at ``hlc_ms`` on the clock of ``origin`` (default: the signer), never sent live."""
    origin = origin or signer.server_id
    event = {"type": kind, "origin": origin, "epoch": epoch, "seq": 0, "to": None, "hlc": [hlc_ms, 0, origin[:16]]}
    event.update(fields)
    return signer.sign(event)


def fields_of(uid: str, nick: str, **extra: Any) -> dict[str, Any]:
    """The fields of a user record (no origin)."""
    fields = {"uid": uid, "nick": nick, "nick_ts": int(time.time() * 1000), "user": "~" + nick[:8],
              "host": "freeq/guest", "real": nick, "account": None, "handle": None, "away": None, "modes": "",
              "signon": int(time.time()), "owns": False}
    fields.update(extra)
    return fields


def names(node: Any, channel: str) -> set[str]:
    """Nicks of the members of ``channel`` on ``node``."""
    chan = node.server.channels.get(channel.lower())
    return {u.nick for u in chan.members} if chan is not None else set()


class HostilePeerTests(unittest.TestCase):
    """A ``full`` peer cannot speak for the users of a server behind it."""

    timeout = 40

    def burst(self, mallory: RawPeer, carl_id: str, users: list[dict[str, Any]],
              members: list[list[Any]]) -> None:
        """A complete burst: mallory, with carl's server behind it, ``users`` and #chan's ``members``."""
        mallory.send({"type": "burst", "part": "servers", "marks": [],
                      "servers": [{"id": mallory.id, "name": mallory.name, "epoch": mallory.epoch, "hops": 0},
                                  {"id": carl_id, "name": "c.test", "epoch": 1, "hops": 1}]})
        mallory.send({"type": "burst", "part": "users", "users": users})
        mallory.send({"type": "burst", "part": "channel", "name": "#chan", "created": int(time.time()), "ops": [],
                      "members": members})
        mallory.send({"type": "burst", "part": "end"})

    @asynctest
    async def test_users_of_another_origin_need_its_signed_events(self) -> None:
        """Mallory bursts users of server C (behind it): without a user event, with one not signed by C, of
        another user, or with a forged nick event, they are refused (logged, counted, not created, their
        memberships dropped); with C's signed events they are created as those events say, whatever the record
        claims (the later of the user and nick events gives the nick). Mallory's own user needs no proof. A
        later burst cannot roll a user back to older signed events or drop a later nick event."""
        logs = LogCapture(self)
        b, mallory, bob = await link_raw_peer(self, "b.test", "bob")
        (kc, idc), = keys(1)
        carl = EventSigner(kc)
        now = int(time.time() * 1000)

        def uid(n: int) -> str:
            return f"{idc[:16]}.{idc[:4]}.{n}"

        def user_event(n: int, nick: str, at: int = now, signer: EventSigner = carl, of: Optional[int] = None,
                       **extra: Any) -> dict[str, Any]:
            return signed(signer, "user", fields_of(uid(of if of is not None else n), nick, **extra), at, origin=idc)

        def nick_event(n: int, nick: str, at: int, signer: EventSigner = carl) -> dict[str, Any]:
            return signed(signer, "nick", {"uid": uid(n), "nick": nick, "nick_ts": at, "owns": False}, at, origin=idc)

        def entry(n: int, nick: str, proof: Any = None, nick_proof: Any = None, **claims: Any) -> dict[str, Any]:
            rec = fields_of(uid(n), nick, **claims) | {"origin": idc}
            if proof is not None:
                rec["proof"], rec["nick_proof"] = proof, nick_proof
            return rec

        forged = {  # n -> (entry, the reason it is refused)
            1: (entry(1, "carol1"), "forged: no user event"),
            2: (entry(2, "carol2", user_event(2, "carol2", signer=mallory.signer)),
                "forged: bad signature on the user event"),
            3: (entry(3, "carol3", user_event(3, "carol3", of=9)), "forged: user event of another user"),
            4: (entry(4, "carol4", user_event(4, "carol4"), nick_event(4, "carol4b", now + 5, signer=mallory.signer)),
                "forged: bad signature on the nick event"),
        }
        c5 = user_event(5, "carol5", host="c/host")
        good = [
            # The record claims another nick, a DID and a host: the signed user event says otherwise.
            entry(5, "founder", c5, account="did:plc:evil", host="evil/host"),
            entry(6, "carol6", user_event(6, "carol6"), nick_event(6, "carol6b", now + 5)),  # a later nick
            entry(7, "carol7", user_event(7, "carol7", at=now + 5), nick_event(7, "old7", now)),  # an earlier nick
        ]
        own = fields_of(mallory.uid(1), "mal") | {"origin": mallory.id}
        members: list[list[Any]] = [
            [uid(n), "", signed(carl, "join", {"uid": uid(n), "channel": "#chan", "status": "", "ops": []}, now)]
            for n in range(1, 8)]
        members.append([mallory.uid(1), "", mallory.event("join", {"uid": mallory.uid(1), "channel": "#chan",
                                                                   "status": "", "ops": []}, seq=0)])
        self.burst(mallory, idc, [e for e, _ in forged.values()] + good + [own], members)
        await wait_for(lambda: names(b, "#chan") == {"bob", "mal", "carol5", "carol6b", "carol7"},
                       what="the proven users and mal in #chan")
        for n, (_entry, reason) in forged.items():
            await logs.wait("S2S user from peer", mallory.id, f"rejected: {reason}", uid(n))
            self.assertIsNone(b.federation.user_by_uid(uid(n)))
        self.assertEqual(b.federation.stats.get("rejected:forged"), 4)
        carol5 = b.server.users["carol5"]
        self.assertEqual((carol5.account, carol5.host, carol5.conn.origin), (None, "c/host", idc))
        self.assertFalse(b.knows("founder"))
        self.assertEqual(b.federation.user_proofs[uid(5)], c5)
        self.assertEqual(b.federation.nick_proofs[uid(6)]["nick"], "carol6b")
        # Again, with an older signed state of carol5 (away, another account) and carol6 without its nick event.
        stale = user_event(5, "carol5", at=now - 1000, away="stale", account="did:plc:old")
        bursts = b.federation.stats["bursts"]
        self.burst(mallory, idc, [entry(5, "carol5", stale, away="stale"), entry(6, "carol6", user_event(6, "carol6")),
                                  good[2], own], members[4:])
        await wait_for(lambda: b.federation.stats["bursts"] > bursts, what="the second burst")
        carol5 = b.server.users["carol5"]
        self.assertEqual((carol5.away, carol5.account, carol5.host), (None, None, "c/host"))
        self.assertTrue(b.knows("carol6b"))
        self.assertFalse(b.knows("carol6"))
        self.assertEqual(names(b, "#chan"), {"bob", "mal", "carol5", "carol6b", "carol7"})
        self.assertEqual(b.federation.stats.get("rejected:forged"), 4)


class LineTests(unittest.TestCase):
    """In a line A-B-C, B's bursts to C carry A's signed events for A's users."""

    timeout = 60

    @asynctest
    async def test_users_of_a_reach_c_with_their_proofs(self) -> None:
        """alice (on A) changes away state and nick while B-C is split: after the heal C shows her as A's events
        say (the nick from the later nick event). While A-B is split (A alone) she changes nick again and dave
        registers: A's proofs are stand-ins (seq 0), and after the heal C has both right. Nothing is refused."""
        logs = LogCapture(self)
        a, b, c = await start_line(self, "a.test", "b.test", "c.test")
        alice = await a.client("alice")
        alice.send("JOIN #c")
        await alice.expect("366")
        uid = a.federation.uid(a.server.users["alice"])
        await wait_for(lambda: c.knows("alice") and "alice" in names(c, "#c"), what="alice on C")
        b.bridge.hold_peer(c.id)
        c.bridge.hold_peer(b.id)
        await wait_for(lambda: not b.linked(c) and not c.linked(b), what="B-C split")
        alice.send("AWAY :lunch")
        await alice.expect("306")
        alice.send("NICK alice2")
        await alice.expect("NICK")
        await wait_for(lambda: b.knows("alice2") and b.server.users["alice2"].away == "lunch", what="alice2 on B")
        c.bridge.release_peer(b.id)
        b.bridge.release_peer(c.id)
        await wait_for(lambda: b.linked(c) and c.linked(b), what="B-C relink")
        await settle(a, b, c)
        await wait_for(lambda: c.knows("alice2") and "alice2" in names(c, "#c"), what="alice2 on C")
        self.assertEqual(c.server.users["alice2"].away, "lunch")
        proof, nick_proof = c.federation.user_proofs[uid], c.federation.nick_proofs[uid]
        self.assertEqual((proof["origin"], proof["nick"], proof["away"]), (a.id, "alice", "lunch"))
        self.assertEqual((nick_proof["origin"], nick_proof["nick"]), (a.id, "alice2"))
        self.assertGreater(nick_proof["seq"], 0)  # the live event, kept by B
        # A alone: its changes are proven by stand-ins.
        a.bridge.hold_peer(b.id)
        b.bridge.hold_peer(a.id)
        await wait_for(lambda: not a.linked(b) and not b.linked(a), what="A-B split")
        await wait_for(lambda: not c.knows("alice2"), what="alice2 split away from C")
        alice.send("NICK alice3")
        await alice.expect("NICK")
        dave = await a.client("dave")
        dave.send("JOIN #c")
        await dave.expect("366")
        dave_uid = a.federation.uid(a.server.users["dave"])
        b.bridge.release_peer(a.id)
        a.bridge.release_peer(b.id)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="A-B relink")
        await settle(a, b, c)
        await wait_for(lambda: names(c, "#c") == {"alice3", "dave"}, what="alice3 and dave in #c on C")
        self.assertEqual(c.server.users["alice3"].away, "lunch")
        self.assertEqual((c.federation.nick_proofs[uid]["nick"], c.federation.nick_proofs[uid]["seq"]), ("alice3", 0))
        self.assertEqual((c.federation.user_proofs[dave_uid]["origin"], c.federation.user_proofs[dave_uid]["seq"]),
                         (a.id, 0))
        self.assertEqual(logs.find("S2S user from peer"), [])
        self.assertEqual(logs.find("left out"), [])
