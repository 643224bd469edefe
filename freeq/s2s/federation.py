"""Federation: the glue between one :class:`~freeq.core.server.IRCServer` and its S2S links.

Runs entirely in the reactor thread. The bridge (:mod:`freeq.s2s.bridge`) reports links and frames;
the server reports local changes through :meth:`Federation.notify` (``IRCServer.s2s_notify``, which calls
the ``local_*`` observers of :mod:`freeq.s2s.outbound`).

* Local change -> signed event -> every open link (flooded through the federation tree; private
  messages are routed towards the server where the nick lives).
* Inbound frame -> rate limit -> envelope checks (signature by the origin, origin behind this link,
  per-origin sequence) -> trust level -> authorisation against the local view -> applied to the model
  (remote users are :class:`~freeq.state.user.User` objects whose ``conn`` is a
  :class:`~freeq.s2s.peers.RemoteSession`) -> forwarded to the other links.
* Link up -> ``hello`` both ways -> ``burst`` (this server's whole view) both ways -> live events.
  Link down -> the users behind it quit with ``*.net *.split`` -> the other links get a new burst.

Topology rule: the federation is a tree. A link that would close a cycle is refused ("loop"), as
classic IRC does; any tree shape (a line A-B-C, a star) works, with events relayed hop by hop.
See docs/federation.md.

:class:`Federation` is the one class other code uses; its parts live in one module each (see
:mod:`freeq.s2s.base` for the order): links, bursts, inbound events, outbound observers, the proofs it
keeps (checked by the pure functions of :mod:`freeq.s2s.proofs`) and the persistence of channel states.
"""
from __future__ import annotations

from typing import Any, Optional

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.logger import Logger

from freeq.s2s.bridge import IrohBridgeService, PeerAddress
from freeq.s2s.links import LinkManagement
from freeq.s2s.protocol import EventSigner

log = Logger()


class Federation(LinkManagement):
    """Federates one IRC server over the links of a transport (the iroh bridge).

    Implements :class:`freeq.state.links.FederationControl`, the interface the IRC core calls.
    """

    def network_counts(self) -> tuple[int, int, int]:
        """``(remote users, other servers, direct links)`` known here (LUSERS 251/255/266)."""
        return len(self.remote), len(self.servers), sum(1 for info in self.servers.values() if info.hops == 1)

    def notify(self, event: str, *args: Any) -> None:
        """A local state change (``IRCServer.s2s_notify``): the observer ``local_<event>`` handles it."""
        getattr(self, "local_" + event)(*args)

    def reconfigure(self, config: Any) -> None:
        """A reloaded config (REHASH, SIGHUP): the allowlist (open federation), peer trust, event rate and
        remote-user cap apply from now on; open links take their peer's new trust, a link to a peer no longer
        allowed is closed, and a newly listed ``--s2s-peers`` entry is dialled."""
        allowed: Optional[frozenset[str]] = None if config.s2s_open_federation else frozenset(config.s2s_allowed_peers)
        bridge = self.transport
        bridge.allowed = allowed  # read by the bridge's thread: one reference swap of an immutable set
        self.trust = dict(config.s2s_peer_trust)
        self.rate = config.s2s_rate
        self.max_remote_users = config.s2s_max_remote_users
        for link in list(self.links.values()):
            link.trust = self.trust.get(link.peer_id, "full")
            if allowed is not None and link.peer_id not in allowed and link.state != "closed":
                log.warn("S2S link to {peer} closed: no longer allowed after a reload", peer=link.peer_id)
                self._close(link, "no longer allowed")
        for pid, host, port in config.s2s_peers:
            if pid not in bridge.peers:
                bridge.add_peer(PeerAddress(pid, host, port))


class FederationService(service.MultiService):
    """The bridge, the keepalive timer and the state writer, started and stopped with the server.

    The channel states saved in the server's store are loaded when it starts, before the bridge (so before
    any link): the server's persisted channels are in place by then."""

    def __init__(self, federation: Federation, bridge: IrohBridgeService, clock: Any,
                 persist_interval: float = 0.2) -> None:
        super().__init__()
        self.federation = federation
        self.bridge = bridge
        bridge.setServiceParent(self)
        timer = TimerService(federation.ping_interval, federation.tick)
        timer.clock = clock
        timer.setServiceParent(self)
        writer = TimerService(persist_interval, federation.persist)
        writer.clock = clock
        writer.setServiceParent(self)
        self._loaded = False

    def startService(self) -> None:
        """Load the saved channel states once, then start the bridge and the timers."""
        if not self._loaded:
            self._loaded = True
            self.federation.load_state(self.federation.server.store)
        super().startService()

    def stopService(self) -> Any:
        """Queue the last changed channel states first: the store (stopped after us) flushes them."""
        try:
            self.federation.persist()
        except Exception:
            log.failure("S2S channel states not saved at shutdown")
        return super().stopService()


class FederationFactory:
    """Builds the federation of an :class:`~freeq.core.server.IRCServer` while the server is constructed.

    The composition root (:func:`freeq.tap.build_service`) passes it to the server's constructor, which
    calls it with itself at the end of ``__init__`` (no collaborator is attached to the server afterwards);
    :meth:`service` is then the federation's service (bridge, keepalive, state writer) for the tree.
    """

    def __init__(self, reactor: Any, secret_key: bytes, *, clock: Any = None, backoff_min: float = 1.0,
                 ping_interval: float = 15.0, max_remote_users: Optional[int] = None) -> None:
        self.reactor = reactor
        self.secret_key = secret_key
        self.clock = clock if clock is not None else reactor
        self.backoff_min = backoff_min
        self.ping_interval = ping_interval
        self.max_remote_users = max_remote_users  # default: the config's --s2s-max-remote-users
        self.federation: Optional[Federation] = None
        self.bridge: Optional[IrohBridgeService] = None

    def __call__(self, server: Any) -> Federation:
        """The bridge and the federation of ``server``, from its validated config."""
        config = server.config
        max_remote_users = self.max_remote_users
        if max_remote_users is None:
            max_remote_users = config.s2s_max_remote_users
        if config.s2s_open_federation:
            allowed: Optional[frozenset[str]] = None
        else:
            allowed = frozenset(config.s2s_allowed_peers)
        peers = tuple(PeerAddress(pid, host, port) for pid, host, port in config.s2s_peers)
        bridge = IrohBridgeService(self.reactor, self.secret_key, peers=peers, allowed=allowed,
                                   bind_host=config.iroh_host, port=config.iroh_port,
                                   relay_mode=config.iroh_relay_mode, backoff_min=self.backoff_min)
        federation = Federation(server, bridge, EventSigner(self.secret_key), self.clock,
                                trust=dict(config.s2s_peer_trust), rate=config.s2s_rate,
                                ping_interval=self.ping_interval, ping_timeout=self.ping_interval * 3,
                                max_remote_users=max_remote_users)
        bridge.listener = federation  # the bridge and the federation need each other: the one cycle
        if allowed is not None and not allowed:
            log.warn("S2S federation is closed: no --s2s-allowed-peers, so every incoming peer is refused "
                     "(give --s2s-allowed-peers, or --s2s-open-federation to accept anyone)")
        elif allowed is None:
            log.warn("S2S open federation: any iroh endpoint may link to this server (--s2s-open-federation)")
        self.federation, self.bridge = federation, bridge
        return federation

    def service(self) -> FederationService:
        """The service of the federation built by the server's constructor."""
        if self.federation is None or self.bridge is None:
            raise RuntimeError("the federation is built by the server's constructor first")
        return FederationService(self.federation, self.bridge, self.clock,
                                 persist_interval=getattr(self.federation.server.store, "flush_interval", 0.2))


def make_federation(reactor: Any, secret_key: bytes, *, clock: Any = None, backoff_min: float = 1.0,
                    ping_interval: float = 15.0, max_remote_users: Optional[int] = None) -> FederationFactory:
    """The factory of the S2S bridge and federation, to pass to the server's constructor (``federation=``): it
    reads the server's config (``--s2s-*``, ``--iroh-*``) when the server calls it."""
    return FederationFactory(reactor, secret_key, clock=clock, backoff_min=backoff_min,
                             ping_interval=ping_interval, max_remote_users=max_remote_users)
