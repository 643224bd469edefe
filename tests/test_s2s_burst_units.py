"""Unit tests of the pure parts of bursts (:mod:`freeq.s2s.burst`) and of the burst records, in memory.

The pieces: chunking under the frame limit, member entries (built and read back), server entries, the
collection of a burst's parts, and the user records (with their signed proofs) a burst carries.
"""
from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from freeq.s2s import burst, proofs
from freeq.s2s import protocol as P
from freeq.s2s.federation import Federation
from freeq.s2s.peers import BurstParts, PeerLink, RemoteSession
from freeq.s2s.protocol import EventSigner, ProtocolError
from freeq.state.channel import OP, VOICE, Channel
from freeq.state.user import User

PEER = EventSigner(os.urandom(32))


def size(item: Any) -> int:
    """What :func:`burst.chunks` counts for an item: its JSON bytes and a separator."""
    return len(json.dumps(item, ensure_ascii=False).encode("utf-8")) + 1


class ChunkTests(unittest.TestCase):
    """:func:`burst.chunks`: lists whose JSON stays under a budget, in order."""

    def test_nothing(self) -> None:
        self.assertEqual(burst.chunks([]), [])

    def test_all_in_one_when_small(self) -> None:
        self.assertEqual(burst.chunks([1, 2, 3]), [[1, 2, 3]])

    def test_split_under_the_budget_in_order(self) -> None:
        items = [{"n": n, "text": "é" * 30} for n in range(50)]
        out = burst.chunks(items, budget=400)
        self.assertGreater(len(out), 1)
        self.assertEqual([item for chunk in out for item in chunk], items)
        for chunk in out:
            self.assertLessEqual(sum(size(item) for item in chunk), 400)

    def test_an_item_over_the_budget_travels_alone(self) -> None:
        big = "x" * 500
        self.assertEqual(burst.chunks([1, big, 2], budget=100), [[1], [big], [2]])


class MemberEntryTests(unittest.TestCase):
    """:func:`burst.member_entry` and :func:`burst.burst_members`: a member as a burst carries it, and back."""

    join = {"type": "join", "sig": "j"}
    invite = {"type": "invite", "sig": "i"}
    grant = {"type": "mode", "sig": "m"}

    def test_without_join_only_uid_and_status(self) -> None:
        self.assertEqual(burst.member_entry("u1", OP | VOICE, None, self.invite, self.grant), ["u1", "ov"])

    def test_trailing_nulls_left_out(self) -> None:
        self.assertEqual(burst.member_entry("u1", 0, self.join, None, None), ["u1", "", self.join])
        self.assertEqual(burst.member_entry("u1", VOICE, self.join, self.invite, None),
                         ["u1", "v", self.join, self.invite])

    def test_status_proof_after_a_null_invite(self) -> None:
        self.assertEqual(burst.member_entry("u1", OP, self.join, None, self.grant),
                         ["u1", "o", self.join, None, self.grant])

    def test_no_status_no_status_proof(self) -> None:
        """A member without status carries no status proof (a kept one would prove nothing)."""
        self.assertEqual(burst.member_entry("u1", 0, self.join, self.invite, self.grant),
                         ["u1", "", self.join, self.invite])

    def test_read_back(self) -> None:
        entries = [burst.member_entry("u1", OP, self.join, None, self.grant),
                   burst.member_entry("u2", VOICE, None, None, None),
                   burst.member_entry("u3", 0, self.join, self.invite, None)]
        self.assertEqual(burst.burst_members(entries, {"u1", "u2", "u3"}), {
            "u1": (OP, self.join, None, self.grant), "u2": (VOICE, None, None, None),
            "u3": (0, self.join, self.invite, None)})

    def test_only_users_the_burst_brought(self) -> None:
        self.assertEqual(list(burst.burst_members([["u1", ""], ["u2", "o"]], {"u2"})), ["u2"])

    def test_malformed_entries(self) -> None:
        """Checked for every entry, also of users the burst did not bring."""
        for bad in ("u1", ["u1"], ["u1", "", 1, 2, 3, 4], [7, ""], ["u1", "q"], ["u1", None]):
            with self.assertRaises(ProtocolError):
                burst.burst_members([bad], set())


class ServerEntryTests(unittest.TestCase):
    """:func:`burst.checked_server_entry`: a burst's server entry, well-formed or refused."""

    def entry(self, **changes: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"id": PEER.server_id, "name": "peer.example", "epoch": 5, "hops": 0, "opers": True}
        base.update(changes)
        return base

    def test_good_entry(self) -> None:
        self.assertEqual(burst.checked_server_entry(self.entry()), PEER.server_id)

    def test_bad_entries(self) -> None:
        for bad in ([PEER.server_id], self.entry(id="not-an-id"), self.entry(name=None), self.entry(name="a b"),
                    self.entry(name="x!y"), self.entry(name="n" * 64), self.entry(epoch="5"), self.entry(hops=-1),
                    self.entry(hops=1000), self.entry(hops=None)):
            with self.assertRaises(ProtocolError, msg=repr(bad)):
                burst.checked_server_entry(bad)


class CollectPartTests(unittest.TestCase):
    """:func:`burst.collect_part`: the parts of a burst gathered until its end."""

    def setUp(self) -> None:
        self.acc = BurstParts()

    def collect(self, part: str, **fields: Any) -> bool:
        return burst.collect_part(self.acc, {"type": "burst", "part": part, **fields}, 50)

    def test_parts_gathered_until_end(self) -> None:
        servers = [{"id": PEER.server_id}]
        self.assertFalse(self.collect("servers", servers=servers, marks=[[PEER.server_id, "*", 5, 9]]))
        self.assertFalse(self.collect("users", users=[{"uid": "a"}]))
        self.assertFalse(self.collect("users", users=[{"uid": "b"}]))
        self.assertTrue(self.collect("end"))
        self.assertEqual(self.acc.servers, servers)
        self.assertEqual(self.acc.marks, [(PEER.server_id, "*", 5, 9)])
        self.assertEqual([u["uid"] for u in self.acc.users], ["a", "b"])

    def test_channel_parts_join_by_folded_name(self) -> None:
        self.collect("channel", name="#Chan", created=100, ops=[["a"]])
        self.collect("channel", name="#chan", created=True, members=[["u1", ""]])
        self.assertEqual(self.acc.channels, {"#chan": {"name": "#Chan", "created": 100, "ops": [["a"]],
                                                       "members": [["u1", ""]]}})

    def test_malformed_parts(self) -> None:
        for part, fields in [("users", {"users": {}}), ("users", {"users": [{}] * 1001}),
                             ("servers", {"servers": [{}] * 10001}), ("channel", {"name": "nochan"}),
                             ("channel", {"name": "#c", "ops": "x"}), ("channel", {"name": "#c", "members": 5}),
                             ("middle", {})]:
            with self.assertRaises(ProtocolError, msg=part):
                self.collect(part, **fields)

    def test_too_many_users_over_parts(self) -> None:
        self.acc.users = [{}] * 499500
        with self.assertRaises(ProtocolError):
            self.collect("users", users=[{}] * 501)


class _Transport:
    """Collects what federation sends (no network)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    def send(self, link_id: int, data: bytes) -> None:
        self.sent.append((link_id, data))

    def close_link(self, link_id: int, reason: str, code: int = 2) -> None:
        pass


class _Conn:
    """A local client's connection, as far as bursts look at it."""

    secure = False
    ip = "127.0.0.1"

    def close(self) -> None:
        pass


class BurstRecordTests(unittest.TestCase):
    """The user records a burst carries, each with the origin-signed events that prove it."""

    def setUp(self) -> None:
        from freeq.core.server import IRCServer
        from tests.support import make_config

        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = IRCServer(make_config(), self.clock)
        self.transport = _Transport()
        self.fed = Federation(self.server, self.transport, EventSigner(os.urandom(32)), self.clock)
        self.link = PeerLink(1, PEER.server_id, False, "full", self.clock.seconds(), 100.0)

    def local_user(self, nick: str) -> User:
        user = User(_Conn(), lambda data: None, "127.0.0.1", self.clock.seconds(), self.server.name)
        user.registered = user.nick_given = user.user_given = True
        user.set_nick(nick)
        self.server.users[user.folded] = user
        return user

    def test_local_user_record_is_proven_by_a_signed_user_event(self) -> None:
        """A local user changed without a hook still gets a proof: a stand-in user event signed now."""
        alice = self.local_user("alice")
        records, included = self.fed._burst_records([alice], self.link)
        self.assertEqual(included, {alice})
        [rec] = records
        proof, nick_proof = rec.pop("proof"), rec.pop("nick_proof")
        self.assertIsNone(nick_proof)
        self.assertEqual((rec["nick"], rec["origin"], rec["uid"]), ("alice", self.fed.me, self.fed.uid(alice)))
        self.assertIsNone(proofs.user_proof_problem(proof, "user", rec))
        self.assertEqual(proof["seq"], 0)  # a stand-in is never accepted live
        self.assertEqual(proofs.proven_record(proof, None), rec)

    def test_relayed_user_without_a_kept_proof_is_left_out(self) -> None:
        """A user of another server travels only with its origin's signed events; none kept: left out."""
        remote = User(RemoteSession(PEER.server_id, f"{PEER.server_id[:16]}.1.1"), lambda data: None, "",
                      self.clock.seconds(), "peer")
        remote.registered = True
        remote.set_nick("faraway")
        records, included = self.fed._burst_records([remote], self.link)
        self.assertEqual((records, included), ([], set()))

    def test_send_burst_frames_in_order(self) -> None:
        """Servers (with this server first), users, channels with their members, the bans (over a full link, even
        none: freeq.s2s.bans), then the end."""
        alice = self.local_user("alice")
        chan = Channel("#room", self.clock.seconds())
        chan.add(alice, OP)
        self.server.channels[chan.folded] = chan
        self.fed._send_burst(self.link)
        frames = [P.decode_message(data[4:]) for _link, data in self.transport.sent]
        self.assertEqual([f["part"] for f in frames], ["servers", "users", "channel", "channel", "bans", "end"])
        self.assertEqual(frames[4]["bans"], [])
        self.assertEqual(frames[0]["servers"][0]["id"], self.fed.me)
        self.assertEqual([u["nick"] for u in frames[1]["users"]], ["alice"])
        members = burst.burst_members(frames[3]["members"], {self.fed.uid(alice)})
        bits, join, invite, status = members[self.fed.uid(alice)]
        self.assertEqual((bits, invite, status), (OP, None, None))
        self.assertIsNone(proofs.join_problem(join, self.fed.me, self.fed.uid(alice), "#room"))
