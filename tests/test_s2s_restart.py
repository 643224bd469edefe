"""Restarts during a partition: the channel CRDT state is persisted, so nothing resurrects and newer wins."""
from __future__ import annotations

import binascii
import json
import os
import time
from typing import Any, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq.config import Config, Listen
from freeq.core.server import IRCServer
from freeq.s2s.federation import Federation, FederationService
from freeq.s2s.protocol import EventSigner, ProtocolError
from freeq.s2s.state import ChannelCRDT, HybridClock, materialize
from freeq.state.channel import Channel
from freeq.store import keys
from freeq.store.db import Store
from freeq.tap import build_service
from tests.s2s_support import Node, channel_view, settle, start_node, wait_for
from tests.support import ServerFixture, asynctest, make_config, sleep


class RestartableNode:
    """A federated server built by :func:`freeq.tap.build_service` on a data directory it keeps across restarts.

    Its iroh key lives in the data directory (``iroh-key.secret``), so it keeps its endpoint id.
    """

    def __init__(self, case: unittest.TestCase, name: str, allowed: list[str]) -> None:
        self.case = case
        self.name = name
        self.allowed = allowed
        self.data_dir = os.path.abspath(case.mktemp())
        os.makedirs(self.data_dir, mode=0o700)
        self.key = os.urandom(32)
        keys.write_secret_atomically(os.path.join(self.data_dir, keys.IROH_KEY), binascii.hexlify(self.key))
        self.id = EventSigner(self.key).server_id
        self.top: Optional[MultiService] = None
        self.fixture: Optional[ServerFixture] = None

    async def start(self) -> Node:
        """Start the whole service tree (store, IRC listener, federation) on the data directory."""
        config = Config(listen=Listen("127.0.0.1", 0), tls_listen=None, data_dir=self.data_dir, flood_rate=0,
                        server_name=self.name, iroh=True, iroh_host="127.0.0.1", iroh_port=0,
                        iroh_relay_mode="disabled", s2s_allowed_peers=tuple(self.allowed))
        top = self.top = build_service(config, reactor)
        top.startService()
        ports: list[Any] = []

        def got_port(port: Any) -> Any:
            ports.append(port)
            return port

        federation: Optional[FederationService] = None
        for svc in top:
            if isinstance(svc, StreamServerEndpointService):
                svc._waitingForPort.addCallback(got_port)
            if isinstance(svc, FederationService):
                federation = svc
        assert federation is not None and len(ports) == 1
        server = top.irc_server  # type: ignore[attr-defined]
        self.fixture = ServerFixture(server, ports[0].getHost().port, None, [], [], reactor)
        self.case.addCleanup(self.stop)
        return Node(self.name, self.fixture, federation.federation, federation.bridge, self.key)

    async def stop(self) -> None:
        """Stop like twistd does (clients closed, states and channels flushed, data directory unlocked)."""
        top, self.top = self.top, None
        if top is None:
            return
        await top.stopService()
        assert self.fixture is not None
        await self.fixture.stop()


class RestartTests(unittest.TestCase):
    """A is restarted on its data directory while split from B; after healing, both agree."""

    timeout = 60

    async def pair(self) -> tuple[RestartableNode, Node, Node]:
        """A (restartable) linked to B; returns (A's handle, A, B)."""
        kb = os.urandom(32)
        idb = EventSigner(kb).server_id
        ra = RestartableNode(self, "a.test", [idb])
        a = await ra.start()
        b = await start_node(self, "b.test", allowed=[ra.id], key=kb)
        a.link_to(b)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="link a-b")
        await settle(a, b)
        return ra, a, b

    async def split(self, a: Node, b: Node) -> None:
        a.bridge.hold_peer(b.id)
        b.bridge.hold_peer(a.id)
        await wait_for(lambda: not a.linked(b) and not b.linked(a), what="split")

    async def restart(self, ra: RestartableNode, b: Node) -> Node:
        """Restart A; B still holds it, so it stays split."""
        await ra.stop()
        a = await ra.start()
        await sleep(0.3)
        self.assertFalse(a.linked(b))
        return a

    async def heal(self, a: Node, b: Node) -> None:
        b.bridge.release_peer(a.id)
        a.link_to(b)
        await wait_for(lambda: a.linked(b) and b.linked(a), what="relink")
        await settle(a, b)

    @asynctest
    async def test_removed_ban_stays_removed_after_restart_and_heal(self) -> None:
        """A ban removed during a split, then a restart of the remover: the relink does not bring it back."""
        ra, a, b = await self.pair()
        alice = await a.client("alice")
        bob = await b.client("bob")
        alice.send("JOIN #r")
        await alice.expect("366")
        await wait_for(lambda: "#r" in b.server.channels, what="#r on B")
        bob.send("JOIN #r")
        await bob.expect("366")
        alice.send("MODE #r +bb bad!*@* kept!*@*")
        await wait_for(lambda: len(b.server.channels["#r"].lists["b"]) == 2, what="bans on B")
        await self.split(a, b)
        alice.send("MODE #r -b bad!*@*")
        await alice.expect(r"MODE #r -b bad!\*@\*")
        a = await self.restart(ra, b)
        self.assertEqual([e.mask for e in a.server.channels["#r"].lists["b"]], ["kept!*@*"])
        self.assertTrue(any(a.federation.crdts["#r"].tombs["b"].keys()))  # the removal survived the restart
        await self.heal(a, b)
        await wait_for(lambda: channel_view(b, "#r")["lists"]["b"] == ["kept!*@*"], what="removal reaching B")
        va, vb = channel_view(a, "#r"), channel_view(b, "#r")
        self.assertEqual(va, vb)
        self.assertEqual(va["lists"]["b"], ["kept!*@*"])
        self.assertEqual(dict(va["members"]), {"bob": 0})
        # A second restart (linked) changes nothing: the saved state still holds the removal.
        await self.split(a, b)
        a = await self.restart(ra, b)
        await self.heal(a, b)
        self.assertEqual(channel_view(a, "#r"), vb)
        self.assertEqual(channel_view(b, "#r"), vb)

    @asynctest
    async def test_newer_local_topic_survives_restart_during_split(self) -> None:
        """A's topic, set after B's during a split (same second), still wins after A restarts and the link heals."""
        ra, a, b = await self.pair()
        alice = await a.client("alice")
        bob = await b.client("bob")
        alice.send("JOIN #t")
        await alice.expect("366")
        alice.send("MODE #t -t")
        await wait_for(lambda: "#t" in b.server.channels and "t" not in b.server.channels["#t"].modes,
                       what="#t -t on B")
        bob.send("JOIN #t")
        await bob.expect("366")
        await self.split(a, b)
        # Both changes in the same second: stamps re-derived from the persisted topic time (seconds)
        # would make A's newer topic lose to B's older one.
        await wait_for(lambda: time.time() % 1 < 0.5, what="the start of a second")
        bob.send("TOPIC #t :older from B")
        await bob.expect("TOPIC")
        await sleep(0.02)
        alice.send("TOPIC #t :newer from A")
        await alice.expect("TOPIC")
        a = await self.restart(ra, b)
        self.assertEqual(a.server.channels["#t"].topic, "newer from A")
        await self.heal(a, b)
        await wait_for(lambda: b.server.channels["#t"].topic == "newer from A", what="A's topic on B")
        va, vb = channel_view(a, "#t"), channel_view(b, "#t")
        self.assertEqual(va, vb)
        self.assertEqual(va["topic"], "newer from A")


def _sample_state(clock: HybridClock) -> ChannelCRDT:
    """A state with registers, founder, creator, live list entries and tombstones."""
    chan = Channel("#c", 1_700_000_000)
    crdt = ChannelCRDT()
    chan.modes = {"n", "t", "m"}
    chan.key, chan.limit = "sekrit", 10
    chan.topic, chan.topic_setter, chan.topic_time = "hello", "alice", 1_700_000_010
    chan.founder = "did:plc:abcdefghijklmnopqrstuvwx"
    chan.list_add("b", "x!*@*", "alice", 1_700_000_020, 100)
    chan.list_add("b", "y!*@*", "alice", 1_700_000_021, 100)
    chan.list_add("e", "ok!*@*", "alice", 1_700_000_022, 100)
    chan.did_ops["did:plc:bcdefghijklmnopqrstuvwxy"] = ("alice", 1_700_000_023)
    crdt.capture(chan, clock)
    crdt.apply(["created", "0123456789abcdef.x.1", list(clock.tick())], clock)
    chan.list_remove("b", "x!*@*")
    crdt.capture(chan, clock)
    return crdt


class SerializationTests(unittest.TestCase):
    """The stored form of a channel's CRDT state round-trips and is validated like peer input."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_100)
        self.hlc = HybridClock("a", self.clock.seconds)

    def test_round_trip(self) -> None:
        """Registers with stamps, founder, creator, adds with tags and tombstones all survive."""
        crdt = _sample_state(self.hlc)
        again = ChannelCRDT.deserialize(crdt.serialize(), HybridClock("b", self.clock.seconds))
        self.assertEqual(again.dump(), crdt.dump())
        self.assertEqual(again.regs, crdt.regs)
        self.assertEqual((again.founder, again.creator), (crdt.founder, crdt.creator))
        self.assertEqual(again.tombs, crdt.tombs)
        self.assertTrue(again.tombs["b"])
        self.assertEqual(again.max_stamp(), crdt.max_stamp())
        chan = Channel("#c", 0)
        materialize(again, chan)
        self.assertEqual([e.mask for e in chan.lists["b"]], ["y!*@*"])
        self.assertEqual((chan.key, chan.limit, chan.topic), ("sekrit", 10, "hello"))

    def test_corrupt_states_refused(self) -> None:
        """Non-JSON, unknown formats, malformed ops and stamps far in the future raise ProtocolError."""
        good = json.loads(_sample_state(self.hlc).serialize())
        future = [int(self.clock.seconds() * 1000) + 3_600_000, 0, "a"]
        for text in ("{not json", "[]", json.dumps({"v": 99, "ops": []}),
                     json.dumps({"v": 1, "ops": good["ops"] + [["set", "topic", "no list", [1, 0, "a"]]]}),
                     json.dumps({"v": 1, "ops": [["set", "mode:m", True, future]]}),
                     json.dumps({"v": 1, "ops": [["rem", "b", [""]]]}), None):
            self.assertRaises(ProtocolError, ChannelCRDT.deserialize, text, self.hlc)


class _Transport:
    def send(self, link_id: int, data: bytes) -> None:
        pass

    def close_link(self, link_id: int, reason: str, code: int = 2) -> None:
        pass


class LoadTests(unittest.TestCase):
    """Federation.load_state with a real (in-memory) store."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_100)
        self.store = Store.open(":memory:", reactor)
        self.store.start()
        self.addCleanup(self.store.stop)
        self.server = IRCServer(make_config(), self.clock, store=self.store)
        self.log = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def federation(self) -> Federation:
        fed = Federation(self.server, _Transport(), EventSigner(os.urandom(32)), self.clock)
        fed.load_state(self.store)
        return fed

    def channel(self, name: str) -> Channel:
        chan = Channel(name, 1_700_000_000)
        chan.modes = {"n", "t"}
        chan.topic, chan.topic_setter, chan.topic_time = "persisted", "alice", 1_700_000_050
        self.server.channels[chan.folded] = chan
        return chan

    @asynctest
    async def test_corrupt_row_falls_back_to_adoption(self) -> None:
        """A corrupt saved state is logged and ignored: the channel is adopted from its record and re-saved."""
        chan = self.channel("#x")
        self.store.save_channel_crdt("#x", '{"v": 1, "ops": [["set", "topic", 42, [1, 0, "z"]]]}')
        self.store.save_channel_crdt("#gone", "garbage")
        await self.store.flush()
        fed = self.federation()
        lines = [formatEvent(e) for e in self.log]
        self.assertTrue([line for line in lines if "S2S saved state of channel #x is unusable" in line
                         and "adopting the persisted channel instead" in line], lines)
        self.assertEqual(fed.crdts["#x"].dump(), ChannelCRDT.adopt(chan).dump())
        fed.persist()
        await self.store.flush()
        rows = self.store.load_channel_crdts()
        self.assertNotIn("#gone", rows)  # a corrupt row of no channel is deleted
        self.assertEqual(ChannelCRDT.deserialize(rows["#x"], fed.hlc).dump(), fed.crdts["#x"].dump())

    @asynctest
    async def test_saved_state_used_clock_advanced_and_local_changes_restamped(self) -> None:
        """A saved state replaces adoption; the clock passes its stamps; offline record changes are re-stamped."""
        chan = self.channel("#y")
        hlc = HybridClock("peer", lambda: self.clock.seconds() + 60)  # a stamp a minute ahead of our wall clock
        saved = ChannelCRDT.adopt(chan)
        chan.list_add("b", "x!*@*", "alice", 1_700_000_060, 100)
        saved.capture(chan, hlc)
        chan.list_remove("b", "x!*@*")
        saved.capture(chan, hlc)
        self.store.save_channel_crdt("#y", saved.serialize())
        await self.store.flush()
        # Changed while federation was off: the record has a new topic.
        chan.topic, chan.topic_time = "changed offline", 1_700_000_070
        fed = self.federation()
        crdt = fed.crdts["#y"]
        self.assertEqual(crdt.tombs, saved.tombs)  # the removal is remembered, unlike adoption
        stamp, value = crdt.regs["topic"]
        self.assertEqual(value, ["changed offline", "alice", 1_700_000_070])
        self.assertGreater(stamp, saved.max_stamp())
        self.assertGreater(fed.hlc.tick(), saved.max_stamp())
        self.assertTrue([e for e in self.log if "restored the saved state of 1 channel" in formatEvent(e)])
        fed.persist()
        await self.store.flush()
        self.assertEqual(ChannelCRDT.deserialize(self.store.load_channel_crdts()["#y"], fed.hlc).dump(), crdt.dump())

    @asynctest
    async def test_forgotten_channel_state_deleted_removals_kept(self) -> None:
        """A vanished channel's saved state is deleted, unless it holds tombstones (a removal to remember)."""
        plain = ChannelCRDT.adopt(Channel("#plain", 1_700_000_000))
        removed = _sample_state(HybridClock("a", self.clock.seconds))
        self.store.save_channel_crdt("#plain", plain.serialize())
        self.store.save_channel_crdt("#removed", removed.serialize())
        await self.store.flush()
        fed = self.federation()  # neither channel exists on this server any more
        fed.tick()
        fed.persist()
        await self.store.flush()
        self.assertEqual(set(self.store.load_channel_crdts()), {"#removed"})
        self.assertEqual(fed.crdts["#removed"].tombs, removed.tombs)
