"""Unit tests of the pure S2S pieces: framing, ordering, token bucket, clocks and the merge rules."""
from __future__ import annotations

import json
import os
import random
import struct
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from freeq.s2s import protocol as P
from freeq.s2s.federation import Federation
from freeq.s2s.protocol import EventSigner, FrameDecoder, FrameError, SequenceTracker, TokenBucket
from freeq.s2s.state import ChannelCRDT, HybridClock, materialize
from freeq.state.channel import Channel


class FramingTests(unittest.TestCase):
    """Length-prefixed frames with a hard maximum."""

    def test_split_and_joined_frames(self) -> None:
        """Frames survive arbitrary chunking; several in one chunk come out in order."""
        frames = [P.encode_message({"type": "ping", "n": i}) for i in range(5)]
        data = b"".join(frames)
        decoder = FrameDecoder()
        out: list[bytes] = []
        for i in range(0, len(data), 3):
            out.extend(decoder.feed(data[i:i + 3]))
        self.assertEqual([json.loads(p)["n"] for p in out], list(range(5)))

    def test_oversized_refused_before_payload(self) -> None:
        """A header over the maximum raises at once, without waiting for (or buffering) the payload."""
        decoder = FrameDecoder(max_size=1000)
        with self.assertRaises(FrameError) as cm:
            decoder.feed(struct.pack(">I", 1001))
        self.assertIn("exceeds the maximum of 1000", str(cm.exception))
        self.assertRaises(FrameError, P.encode_message, {"type": "ping", "x": "y" * 2000}, 1000)

    def test_decode_rejects_garbage(self) -> None:
        """Non-JSON, non-objects and unknown types are protocol errors."""
        for payload in (b"\xff", b"[1]", b'{"type": "shutdown"}', b"{}"):
            self.assertRaises(P.ProtocolError, P.decode_message, payload)


class EnvelopeTests(unittest.TestCase):
    """Signatures bind an event to its origin."""

    def test_sign_verify_tamper(self) -> None:
        """A signed event verifies; changing any field or the origin breaks it."""
        signer = EventSigner(os.urandom(32))
        ev = signer.sign({"type": "msg", "origin": signer.server_id, "seq": 1, "text": "hi"})
        self.assertTrue(P.verify_event(ev))
        self.assertFalse(P.verify_event(dict(ev, text="ho")))
        self.assertFalse(P.verify_event(dict(ev, origin=EventSigner(os.urandom(32)).server_id)))
        self.assertFalse(P.verify_event(dict(ev, sig="AAAA")))

    def test_sequence_tracker(self) -> None:
        """In order, gap, replay, out of order, stale and new epochs."""
        t = SequenceTracker()
        o = "a" * 64
        self.assertEqual(t.check(o, "*", 5, 1), P.ACCEPT)
        t.record(o, "*", 5, 1)
        self.assertEqual(t.check(o, "*", 5, 2), P.ACCEPT)
        self.assertEqual(t.check(o, "*", 5, 4), P.GAP)
        t.record(o, "*", 5, 4)
        self.assertEqual(t.check(o, "*", 5, 3), P.REPLAY)
        self.assertEqual(t.check(o, "*", 5, 4), P.REPLAY)
        self.assertEqual(t.check(o, "*", 4, 99), P.STALE)
        self.assertEqual(t.check(o, "*", 6, 1), P.NEW_EPOCH)
        self.assertEqual(t.check(o, "b" * 64, 5, 1), P.ACCEPT)  # streams are independent

    def test_token_bucket(self) -> None:
        """A burst of ``rate`` then ``rate`` per second."""
        bucket = TokenBucket(100, 0.0)
        self.assertEqual(sum(bucket.take(0.0) for _ in range(150)), 100)
        self.assertEqual(sum(bucket.take(0.5) for _ in range(100)), 50)


class ClockTests(unittest.TestCase):
    """Hybrid logical clocks never go backwards and refuse the far future."""

    def test_monotonic_and_observe(self) -> None:
        clock = Clock()
        clock.advance(1000)
        h = HybridClock("n1", clock.seconds)
        a, b = h.tick(), h.tick()
        self.assertLess(a, b)
        h.observe((2_000_000, 7, "n2"))  # a peer ahead of us (within the drift bound)
        self.assertGreater(h.tick(), (2_000_000, 7, "n2"))
        self.assertRaises(P.ProtocolError, h.check, [10**13, 0, "x"])
        self.assertRaises(P.ProtocolError, h.check, [1, 0])


def _random_op(rng: random.Random, crdt: ChannelCRDT, chan: Channel, clock: HybridClock, node: int) -> list[Any]:
    """Change the model channel the way a local command would, and capture the ops."""
    choice = rng.randrange(6)
    if choice == 0:
        chan.topic, chan.topic_setter, chan.topic_time = f"topic {rng.random():.6f}", f"n{node}", rng.randrange(10**6)
    elif choice == 1:
        m = rng.choice("imnpst")
        chan.modes ^= {m}
    elif choice == 2:
        chan.key = rng.choice([None, "k1", "k2"])
        chan.limit = rng.choice([None, 5, 10])
    elif choice == 3:
        chan.list_add("b", f"{rng.choice('abcde')}!*@*", f"n{node}", rng.randrange(5), 100)
    elif choice == 4 and chan.lists["b"]:
        chan.list_remove("b", rng.choice(chan.lists["b"]).mask)
    elif choice == 5:
        did = f"did:plc:{rng.choice('xyz')}"
        if did in chan.did_ops and rng.random() < 0.5:
            del chan.did_ops[did]
        else:
            chan.did_ops[did] = (f"n{node}", rng.randrange(5))
    return crdt.capture(chan, clock)


class ConvergenceTests(unittest.TestCase):
    """Replicas that see the same ops, in any order and with duplicates, agree."""

    def test_random_partitions_converge(self) -> None:
        for seed in range(30):
            rng = random.Random(seed)
            clock = Clock()
            clock.advance(1_700_000_000)
            n = 3
            clocks = [HybridClock(f"n{i}", clock.seconds) for i in range(n)]
            crdts = [ChannelCRDT.defaults() for _ in range(n)]
            chans = [Channel("#c", 0) for _ in range(n)]
            for c in chans:
                c.modes = {"n", "t"}
            log: list[list[list[Any]]] = [[] for _ in range(n)]  # ops originated at each replica
            for _round in range(8):
                for _ in range(rng.randrange(1, 6)):  # concurrent changes while partitioned
                    i = rng.randrange(n)
                    clock.advance(rng.random() / 100)
                    log[i].extend(_random_op(rng, crdts[i], chans[i], clocks[i], i))
                # heal a random pair (or everyone), delivering ops in a shuffled order, with duplicates
                pairs = [(rng.randrange(n), rng.randrange(n))] if rng.random() < 0.6 else \
                    [(i, j) for i in range(n) for j in range(n)]
                for i, j in pairs:
                    ops = crdts[i].dump() + crdts[i].dump()[: rng.randrange(3)]
                    rng.shuffle(ops)
                    for op in ops:
                        crdts[j].apply(op, clocks[j])
                    materialize(crdts[j], chans[j])
            everything = [op for i in range(n) for op in crdts[i].dump()]
            for j in range(n):
                ops = list(everything)
                rng.shuffle(ops)
                for op in ops:
                    crdts[j].apply(op, clocks[j])
                materialize(crdts[j], chans[j])
            views = [(sorted(c.modes), c.key, c.limit, c.topic, sorted(e.mask for e in c.lists["b"]),
                      sorted(c.did_ops)) for c in chans]
            self.assertEqual(views[0], views[1], f"seed {seed}")
            self.assertEqual(views[0], views[2], f"seed {seed}")

    def test_removed_ban_not_resurrected_by_restart(self) -> None:
        """A replica re-adopting its persisted ban gets the same tag, so a removal seen elsewhere still wins."""
        clock = Clock()
        clock.advance(1_700_000_000)
        h1, h2 = HybridClock("a", clock.seconds), HybridClock("b", clock.seconds)
        a, b = Channel("#c", 0), Channel("#c", 0)
        ca, cb = ChannelCRDT.adopt(a), ChannelCRDT.adopt(b)
        a.list_add("b", "x!*@*", "op", 100, 100)
        for op in ca.capture(a, h1):
            cb.apply(op, h2)
        materialize(cb, b)
        b.list_remove("b", "x!*@*")
        removal = cb.capture(b, h2)
        # A restarts: its persisted channel still has the ban, its CRDT metadata is gone.
        restarted = ChannelCRDT.adopt(a)
        for op in removal:
            restarted.apply(op, h1)
        materialize(restarted, a)
        self.assertEqual(a.lists["b"], [])


class _FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.closed: list[tuple[int, str]] = []

    def send(self, link_id: int, data: bytes) -> None:
        self.sent.append((link_id, data))

    def close_link(self, link_id: int, reason: str, code: int = 2) -> None:
        self.closed.append((link_id, reason))


class KeepaliveTests(unittest.TestCase):
    """Links are pinged and a silent link is closed (driven by a Clock)."""

    def test_ping_then_timeout(self) -> None:
        from tests.support import make_config
        from freeq.core.server import IRCServer

        clock = Clock()
        server = IRCServer(make_config(), clock)
        transport = _FakeTransport()
        fed = Federation(server, transport, EventSigner(os.urandom(32)), clock, ping_interval=10, ping_timeout=30)
        peer = EventSigner(os.urandom(32))
        fed.link_up(1, peer.server_id, incoming=True)
        fed.link_frames(1, [P.encode_message(P.make_hello(peer.server_id, "p", "freeq", 1))[4:]])
        self.assertEqual(fed.links[1].state, "open")
        clock.advance(10)
        fed.tick()
        self.assertTrue(any(json.loads(d[4:]).get("type") == "ping" for _l, d in transport.sent))
        clock.advance(25)
        fed.tick()
        self.assertEqual(transport.closed, [(1, "ping timeout")])
