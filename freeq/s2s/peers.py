"""The records federation keeps of its peers: links, servers, remote users' sessions, bursts being received
and inbound events being applied (plain objects, no behaviour)."""
from __future__ import annotations

from typing import Any, Optional

from freeq.s2s import protocol as P
from freeq.s2s.protocol import TokenBucket


def discard_bytes(_data: bytes) -> None:
    """The byte sink of a remote user: what it must see travels as events to its home server."""


class RemoteSession:
    """The ``conn`` of a user who lives on another server (no transport here)."""

    __slots__ = ("origin", "uid", "ping_sent", "secure", "ip")

    def __init__(self, origin: str, uid: str) -> None:
        self.origin = origin
        self.uid = uid
        self.ping_sent = False
        self.secure = False
        self.ip = ""

    def close(self) -> None:
        """Remote users cannot be disconnected from here."""


class ServerInfo:
    """A server of the federation other than this one, and the link it is reached through.

    ``opers``: whether that server applies the actions of this server's operators (overrides of channel
    operator status, KILL), i.e. every server on the path trusts the one before it ``full`` (as its bursts
    state); until a burst says so, it does not.
    """

    __slots__ = ("server_id", "name", "epoch", "link_id", "hops", "opers")

    def __init__(self, server_id: str, name: str, epoch: int, link_id: int, hops: int, opers: bool = False) -> None:
        self.server_id = server_id
        self.name = name
        self.epoch = epoch
        self.link_id = link_id
        self.hops = hops
        self.opers = opers


class BurstParts:
    """A burst being received (applied only when complete)."""

    __slots__ = ("servers", "marks", "users", "channels", "metadata", "frames", "bans")

    def __init__(self) -> None:
        self.servers: list[dict[str, Any]] = []
        self.marks: list[Any] = []
        self.users: list[dict[str, Any]] = []
        self.channels: dict[str, dict[str, Any]] = {}
        self.metadata: list[Any] = []  # [uid, {key: value}] of the sender's own users (draft/metadata-2)
        self.bans: Optional[list[Any]] = None  # K-/D-line entries (freeq.s2s.bans); None: no bans part was sent
        self.frames = 0


class PeerLink:
    """One link as federation sees it."""

    __slots__ = ("link_id", "peer_id", "incoming", "trust", "state", "name", "bucket", "last_rx", "opened",
                 "burst", "dropped", "last_drop_warn", "rejected", "log_bucket", "malformed",
                 "last_resync", "resync_asked")

    def __init__(self, link_id: int, peer_id: str, incoming: bool, trust: str, now: float, rate: float) -> None:
        self.link_id = link_id
        self.peer_id = peer_id
        self.incoming = incoming
        self.trust = trust
        self.state = "hello"  # -> "open" once both hellos are exchanged and our burst is sent
        self.name = P.short_id(peer_id)
        self.bucket = TokenBucket(rate, now)
        self.last_rx = now
        self.opened = now
        self.burst: Optional[BurstParts] = None
        self.dropped = 0
        self.last_drop_warn = -1e9
        self.rejected = 0
        self.log_bucket = TokenBucket(2.0, now, burst=20.0)
        self.malformed = 0
        self.last_resync = -1e9
        self.resync_asked = -1e9


class EventContext:
    """An inbound event being applied."""

    __slots__ = ("link", "origin", "ev", "kind")

    def __init__(self, link: PeerLink, origin: str, ev: dict[str, Any]) -> None:
        self.link = link
        self.origin = origin
        self.ev = ev
        self.kind = ev["type"]
