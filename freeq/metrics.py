"""Operational counters of one server, as plain integers.

The server and its connections only add to these (``server.metric("messages")``); nothing here
imports a metrics library or keeps global state, so many servers can live in one process (tests).
:mod:`freeq.web.prometheus` turns one :class:`Metrics` and its server into Prometheus text.
"""
from __future__ import annotations


class Metrics:
    """Counters (monotonic, since start) and the few gauges other layers set."""

    def __init__(self) -> None:
        self.messages = 0  # PRIVMSG/NOTICE/TAGMSG fanned out
        self.unsafe_lines = 0  # replies not sent: they would have carried CR/LF/NUL (the wire guard)
        self.masks_refused = 0  # WHO/LIST/LINKS masks and +b/+e/+I adds over the length/wildcard caps
        self.sasl_success = 0
        self.sasl_failure = 0
        self.oper_failures = 0  # OPER with a wrong password (checked attempts only)
        self.oper_throttled = 0  # OPER refused unchecked: the address is still in its back-off wait
        self.per_ip_refusals = 0  # TCP, TLS and WebSocket together
        self.connection_rate_refusals = 0  # new connections refused by --connection-rate (TCP, TLS, WebSocket)
        self.channel_create_refusals = 0  # JOINs that would create a channel over the address/account quota
        self.channels_expired = 0  # empty channels without a founder forgotten after --channel-expiry
        self.s2s_rejected = 0  # federation connections refused (allowlist, bad handshake)
        self.s2s_peers = 0  # gauge: linked peers, set by the S2S bridge
        self.s2s_dropped = 0  # federation events over a peer's rate limit
        self.s2s_events_rejected = 0  # forged, replayed, unauthorised or malformed federation events
        self.s2s_oper_refused = 0  # operator overrides/KILLs refused: a server sharing the channel would not apply them
        self.s2s_oper_applied = 0  # overrides and KILLs of peers' server operators applied here
        self.web_requests = 0
        self.web_rate_limited = 0
        self.web_connections = 0  # gauge: open plain HTTP connections of the web listener (upgraded WebSockets excluded)
        self.web_connections_refused = 0  # HTTP connections refused by --web-max-connections(-per-ip)
        self.web_timeouts = 0  # HTTP connections closed by --web-idle-timeout / --web-request-timeout / a stalled reply
        self.web_bad_paths = 0  # requests answered 400 for a NUL or undecodable byte in the path
        self.web_errors = 0  # requests that failed with an unhandled exception (answered 500)
        self.broker_rejected = 0

    def snapshot(self) -> dict[str, int]:
        """Every value by name (for logs and tests)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}
