"""Operational counters of one server, as plain integers.

The server and its connections only add to these (``server.metric("messages")``); nothing here
imports a metrics library or keeps global state, so many servers can live in one process (tests).
:mod:`freeq.web.prometheus` turns one :class:`Metrics` and its server into Prometheus text.
"""
from __future__ import annotations

#: Security event kinds (:data:`freeq.logs.SECURITY_KINDS`) counted by a counter that is older than the
#: ``freeq_security_events_total`` family; that counter stays and the family reads it.
SECURITY_COUNTERS = {
    "oper_failure": "oper_failures",
    "sasl_failure": "sasl_failure",
    "per_ip_limit": "per_ip_refusals",
    "connection_rate": "connection_rate_refusals",
    "s2s_rejected": "s2s_rejected",
    "kline_hit": "kline_hits",
    "dline_hit": "dline_hits",
    "webirc_refused": "webirc_refused",
}


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
        self.kline_hits = 0  # connections refused or closed by a K-line (freeq.core.bans)
        self.dline_hits = 0  # connections refused or closed by a D-line
        self.client_connects = 0  # client connections admitted (TCP, TLS, WebSocket)
        self.client_quits = 0  # client connections gone (QUIT, error, kill, timeout), registered or not
        self.webirc_accepted = 0  # WEBIRC accepted: a gateway named its client (freeq.core.webirc)
        self.webirc_refused = 0  # WEBIRC refused: wrong password or address, bad client IP, too late, over a limit
        # Security events (freeq.logs.security_event) without a counter of their own above, by kind.
        self.security_events: dict[str, int] = {}

    def count_security(self, kind: str) -> None:
        """Count one security event of ``kind`` (kinds that predate the family keep their own counter)."""
        legacy = SECURITY_COUNTERS.get(kind)
        if legacy is not None:
            setattr(self, legacy, getattr(self, legacy, 0) + 1)
        else:
            self.security_events[kind] = self.security_events.get(kind, 0) + 1

    def security_count(self, kind: str) -> int:
        """Security events of ``kind`` since start (``freeq_security_events_total{kind=...}``)."""
        legacy = SECURITY_COUNTERS.get(kind)
        if legacy is not None:
            return int(getattr(self, legacy, 0))
        return self.security_events.get(kind, 0)

    def snapshot(self) -> dict[str, int]:
        """Every value by name (for logs and tests)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}
