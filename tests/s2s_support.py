"""Test support for federation: real freeq servers linked by real iroh endpoints on 127.0.0.1.

Relays are disabled and peers are dialled at their direct loopback addresses, so nothing here needs
the network. :class:`RawPeer` is a real iroh endpoint that speaks the S2S protocol under the test's
control (the "hostile peer"): it sends whatever frames the test builds.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher, formatEvent
from twisted.trial import unittest

from freeq.s2s import protocol as P
from freeq.s2s.bridge import IrohBridgeService, PeerAddress
from freeq.s2s.federation import Federation, make_federation
from freeq.s2s.protocol import EventSigner
from tests.support import ServerFixture, sleep, start_server


async def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Let the reactor run until ``cond()`` is truthy (polling every 10 ms); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(0.01)


class LogCapture:
    """Collects formatted log lines (and events) while a test runs."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.observe)
        case.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def lines(self) -> list[str]:
        """Every captured message, formatted."""
        return [formatEvent(e) or "" for e in self.events]

    def find(self, *fragments: str) -> list[str]:
        """Captured lines containing every fragment."""
        return [line for line in self.lines() if all(f in line for f in fragments)]

    async def wait(self, *fragments: str, timeout: float = 10.0) -> str:
        """Wait for a line containing every fragment; return it."""
        found = await wait_for(lambda: self.find(*fragments), timeout, f"log line with {fragments}")
        return str(found[0])


class Node:
    """One federated server: the IRC fixture, its federation and its bridge."""

    def __init__(self, name: str, fixture: ServerFixture, federation: Federation, bridge: IrohBridgeService,
                 key: bytes) -> None:
        self.name = name
        self.fixture = fixture
        self.server = fixture.server
        self.federation = federation
        self.bridge = bridge
        self.key = key
        self.id = bridge.endpoint_id

    @property
    def port(self) -> int:
        """The UDP port the endpoint is bound to (127.0.0.1)."""
        for addr in self.bridge.bound:
            if addr.startswith("127.0.0.1:"):
                return int(addr.rsplit(":", 1)[1])
        raise AssertionError(f"no loopback address in {self.bridge.bound}")

    def address(self) -> PeerAddress:
        """How other nodes dial this one."""
        return PeerAddress(self.id, "127.0.0.1", self.port)

    def link_to(self, other: "Node") -> None:
        """Dial ``other`` (both must allow each other)."""
        self.bridge.add_peer(other.address())

    def linked(self, other: "Node") -> bool:
        """Whether an open link to ``other`` exists."""
        return any(link.peer_id == other.id and link.state == "open" for link in self.federation.links.values())

    def knows(self, nick: str) -> bool:
        """Whether ``nick`` (remote) is known here."""
        user = self.server.users.get(nick.lower())
        return user is not None and self.federation.is_remote(user)

    async def client(self, nick: str, caps: tuple[str, ...] = ()) -> Any:
        """A registered client on this server."""
        return await self.fixture.client(nick, caps=caps)


async def start_node(case: unittest.TestCase, name: str, allowed: Optional[list[str]] = None,
                     key: Optional[bytes] = None, trust: Optional[dict[str, str]] = None, rate: float = 100.0,
                     open_federation: bool = False, **overrides: Any) -> Node:
    """Start a server named ``name`` with federation on 127.0.0.1 (relays off); cleaned up after the test."""
    key = key or os.urandom(32)
    factory = make_federation(reactor, key, backoff_min=0.1, ping_interval=5.0)
    fixture = await start_server(case, federation=factory, server_name=name, iroh=True, iroh_host="127.0.0.1",
                                 iroh_port=0, iroh_relay_mode="disabled", s2s_allowed_peers=tuple(allowed or ()),
                                 s2s_peer_trust=tuple((trust or {}).items()), s2s_rate=rate,
                                 s2s_open_federation=open_federation, **overrides)
    svc = factory.service()
    svc.startService()
    case.addCleanup(svc.stopService)
    return Node(name, fixture, svc.federation, svc.bridge, key)


def keys(n: int) -> list[tuple[bytes, str]]:
    """``n`` fresh keys with their endpoint ids."""
    out = []
    for _ in range(n):
        k = os.urandom(32)
        out.append((k, EventSigner(k).server_id))
    return out


async def start_line(case: unittest.TestCase, *names: str, **overrides: Any) -> list[Node]:
    """Servers linked in a line (A-B, B-C, ...), each allowing only its neighbours; waits for the links."""
    ks = keys(len(names))
    nodes = []
    for i, name in enumerate(names):
        allowed = [ks[j][1] for j in (i - 1, i + 1) if 0 <= j < len(names)]
        nodes.append(await start_node(case, name, allowed=allowed, key=ks[i][0], **overrides))
    for a, b in zip(nodes, nodes[1:]):
        a.link_to(b)
    for a, b in zip(nodes, nodes[1:]):
        await wait_for(lambda: a.linked(b) and b.linked(a), what=f"link {a.name}-{b.name}")
    await settle(*nodes)
    return nodes


async def settle(*nodes: Node, timeout: float = 10.0) -> None:
    """Wait until every open link has finished its bursts (nothing pending in a burst)."""
    await sleep(0.05)
    await wait_for(lambda: all(link.burst is None for n in nodes for link in n.federation.links.values()), timeout,
                   "bursts to finish")
    await sleep(0.05)


class RawPeer:
    """A real iroh endpoint speaking S2S under test control (a hostile or scripted server)."""

    def __init__(self, bridge: IrohBridgeService, key: bytes, name: str) -> None:
        self.bridge = bridge
        self.signer = EventSigner(key)
        self.id = self.signer.server_id
        self.name = name
        self.epoch = int(time.time() * 1000)
        self.seq = 0
        self.frames: list[dict[str, Any]] = []
        self.links: dict[int, str] = {}
        self.down: list[tuple[str, str]] = []
        self.rejected: list[tuple[str, str]] = []
        bridge.listener = self  # type: ignore[assignment]

    # LinkListener
    def link_up(self, link_id: int, peer_id: str, incoming: bool) -> None:
        self.links[link_id] = peer_id

    def link_frames(self, link_id: int, payloads: list[bytes]) -> None:
        for p in payloads:
            try:
                self.frames.append(P.decode_message(p))
            except P.ProtocolError:
                pass

    def link_down(self, link_id: int, peer_id: str, reason: str) -> None:
        self.links.pop(link_id, None)
        self.down.append((peer_id, reason))

    def link_rejected(self, peer_id: str, reason: str) -> None:
        self.rejected.append((peer_id, reason))

    # Scripting
    @property
    def link_id(self) -> int:
        assert self.links, "not linked"
        return next(iter(self.links))

    def send_raw(self, data: bytes) -> None:
        """Send raw bytes on the link (no framing added)."""
        self.bridge.send(self.link_id, data)

    def send(self, obj: dict[str, Any]) -> None:
        """Send one frame."""
        self.bridge.send(self.link_id, P.encode_message(obj))

    def hello(self) -> None:
        """Our side of the handshake, with an empty burst listing only ourselves."""
        self.send(P.make_hello(self.id, self.name, "freeq", self.epoch))
        self.send({"type": "burst", "part": "servers",
                   "servers": [{"id": self.id, "name": self.name, "epoch": self.epoch, "hops": 0}], "marks": []})
        self.send({"type": "burst", "part": "end"})

    def event(self, kind: str, fields: dict[str, Any], seq: Optional[int] = None, signer: Optional[EventSigner] = None,
              origin: Optional[str] = None, to: Optional[str] = None) -> dict[str, Any]:
        """Build a signed event (by default: the next of our own stream)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        ev = {"type": kind, "origin": origin or self.id, "epoch": self.epoch, "seq": seq, "to": to,
              "hlc": [int(time.time() * 1000), 0, self.id[:16]]}
        ev.update(fields)
        (signer or self.signer).sign(ev)
        return ev

    def uid(self, n: int) -> str:
        """A uid of one of our users."""
        return f"{self.id[:16]}.{P.short_id(self.id)[:4]}.{n}"

    def user(self, n: int, nick: str, **extra: Any) -> dict[str, Any]:
        """A ``user`` event introducing our user ``n``."""
        fields = {"uid": self.uid(n), "nick": nick, "nick_ts": int(time.time() * 1000), "user": "~" + nick[:8],
                  "host": "freeq/guest", "real": nick, "account": None, "handle": None, "away": None, "modes": "",
                  "signon": int(time.time()), "owns": False}
        fields.update(extra)
        return self.event("user", fields)


async def start_raw_peer(case: unittest.TestCase, name: str = "mallory", key: Optional[bytes] = None,
                         allowed: Optional[frozenset[str]] = None) -> RawPeer:
    """Start a scripted peer endpoint on 127.0.0.1 (it accepts anyone unless ``allowed`` is given)."""
    key = key or os.urandom(32)
    bridge = IrohBridgeService(reactor, key, allowed=allowed, bind_host="127.0.0.1", port=0, relay_mode="disabled",
                               backoff_min=0.1)
    peer = RawPeer(bridge, key, name)
    bridge.startService()
    case.addCleanup(bridge.stopService)
    return peer


async def link_raw_peer(case: unittest.TestCase, name: str, nick: str, trust: Optional[str] = None,
                        rate: float = 100.0) -> tuple[Node, RawPeer, Any]:
    """Server ``name`` linked to mallory, a scripted peer, after the handshake and burst; ``nick`` is a
    local client that has joined (and so is op of) ``#chan``. Returns (node, mallory, client)."""
    (kn, _idn), (km, idm) = keys(2)
    node = await start_node(case, name, allowed=[idm], key=kn, rate=rate, trust={idm: trust} if trust else None)
    mallory = await start_raw_peer(case, "mallory", key=km)
    mallory.bridge.add_peer(node.address())
    await wait_for(lambda: mallory.links, what="mallory's link")
    mallory.hello()
    await wait_for(lambda: any(l.state == "open" for l in node.federation.links.values()), what="handshake")
    await wait_for(lambda: any(f.get("part") == "end" for f in mallory.frames), what=f"{name}'s burst")
    client = await node.client(nick)
    client.send("JOIN #chan")
    await client.expect("366")
    return node, mallory, client


async def start_pair(case: unittest.TestCase, both_dial: bool = False, **overrides: Any) -> tuple[Node, Node, Any, Any]:
    """A and B linked (B dials A too with ``both_dial``), alice on A and bob on B, both in #fed (alice
    created it, so #fed reached B before bob joined). Returns (a, b, alice, bob)."""
    a, b = await start_line(case, "a.test", "b.test", **overrides)
    if both_dial:
        b.link_to(a)
    alice = await a.client("alice")
    bob = await b.client("bob")
    alice.send("JOIN #fed")
    await alice.expect("366")
    await wait_for(lambda: "#fed" in b.server.channels, what="#fed on B")
    bob.send("JOIN #fed")
    await bob.expect("366")
    await alice.expect(r":bob!\S+ JOIN #fed")
    return a, b, alice, bob


def channel_view(node: Node, name: str) -> dict[str, Any]:
    """Everything about a channel that must converge across servers (empty if the channel is unknown)."""
    chan = node.server.channels.get(name.lower())
    if chan is None:
        return {}
    return {
        "modes": sorted(chan.modes), "key": chan.key, "limit": chan.limit, "topic": chan.topic,
        "lists": {m: sorted(e.mask for e in entries) for m, entries in chan.lists.items()},
        "founder": chan.founder, "did_ops": sorted(chan.did_ops),
        "members": sorted((u.nick, st) for u, st in chan.members.items() if node.server.users.get(u.folded) is u),
    }


def named(lines: list[Any], command: str) -> list[Any]:
    """Lines of a client with the given command."""
    return [line for line in lines if line.command == command]


__all__ = ["wait_for", "LogCapture", "Node", "start_node", "start_line", "settle", "RawPeer", "start_raw_peer",
           "keys", "defer", "named", "channel_view"]
