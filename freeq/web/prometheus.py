"""``/metrics``: one server's state and counters in the Prometheus text format.

A custom collector reads the live model and :class:`freeq.metrics.Metrics` at scrape time into a
registry that belongs to this listener (never the library's global one), so several servers in one
process (tests) each report their own numbers.

With ``--metrics-token`` a scrape must send ``Authorization: Bearer <token>`` (anything else: ``401``);
with ``--metrics-addr`` the route is served on its own listener (:func:`freeq.web.site.build_metrics_site`)
and not on the web listener. With neither, ``/metrics`` is open on the web listener as it always was
(``freeq-admin audit`` warns about that on a public address).
"""
from __future__ import annotations

import hmac
from typing import Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.web.resource import Resource

from freeq.logs import SECURITY_KINDS
from freeq.web.http import bearer_token, error_response
from freeq.web.websocket import IRCWebSocketProtocol

#: Counter attributes of Metrics exposed as ``freeq_<name>_total``, with their help text.
COUNTERS = (
    ("messages", "Messages (PRIVMSG, NOTICE, TAGMSG) delivered."),
    ("unsafe_lines", "Replies not sent because they would have carried CR, LF or NUL (wire guard)."),
    ("masks_refused", "WHO/LIST/LINKS masks and ban/exception/invex masks refused: over the length or wildcard cap."),
    ("sasl_success", "Successful SASL authentications."),
    ("sasl_failure", "Failed SASL authentications."),
    ("oper_failures", "OPER attempts with a wrong password."),
    ("oper_throttled", "OPER attempts refused unchecked during their address's back-off wait."),
    ("per_ip_refusals", "Connections and WebSocket upgrades refused by the per-IP limit."),
    ("connection_rate_refusals", "Connections and WebSocket upgrades refused for coming too fast from one address."),
    ("channel_create_refusals", "JOINs refused because the address or account created too many channels."),
    ("channels_expired", "Empty channels without a founder DID forgotten after --channel-expiry."),
    ("s2s_rejected", "Rejected server-to-server connections."),
    ("s2s_dropped", "Server-to-server events dropped by the per-peer rate limit."),
    ("s2s_events_rejected", "Server-to-server events rejected (forged, replayed, unauthorised, malformed)."),
    ("s2s_oper_refused", "Server-operator overrides and KILLs refused: another server would not apply them."),
    ("s2s_oper_applied", "Server-operator overrides and KILLs of federated peers' operators applied here."),
    ("web_requests", "Requests to the API, broker, metrics and WebSocket routes."),
    ("web_rate_limited", "Web requests refused by the per-IP request rate limit."),
    ("web_connections_refused", "HTTP connections refused by --web-max-connections or --web-max-connections-per-ip."),
    ("web_timeouts", "HTTP connections closed for idling, sending a request too slowly or not reading a reply."),
    ("web_bad_paths", "Web requests answered 400 for a NUL or undecodable byte in the path."),
    ("web_errors", "Web requests that failed with an unhandled exception (answered 500)."),
    ("broker_rejected", "Auth broker requests refused (bad, skewed or replayed signatures)."),
    ("webirc_accepted", "WEBIRC commands accepted: a trusted gateway named its client's address."),
    ("webirc_refused", "WEBIRC commands refused (wrong password, unlisted address, bad client address, too late)."),
    ("kline_hits", "Connections refused or closed by a K-line (user@host or DID ban)."),
    ("dline_hits", "Connections refused or closed by a D-line (IP or network ban)."),
    ("client_connects", "Client connections admitted (TCP, TLS, WebSocket)."),
    ("client_quits", "Client connections gone (quit, error, kill, timeout), registered or not."),
)


class ServerCollector:
    """Reads one server's model and counters when Prometheus scrapes."""

    def __init__(self, server: Any, metrics: Any, clock: Any) -> None:
        self.server = server
        self.metrics = metrics
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        server = self.server
        users = list(server.connections)
        web = sum(1 for u in users if isinstance(u.conn, IRCWebSocketProtocol))
        yield GaugeMetricFamily("freeq_connections", "Client connections (all transports).", value=len(users))
        yield GaugeMetricFamily("freeq_websocket_connections", "Client connections over WebSocket.", value=web)
        yield GaugeMetricFamily("freeq_registered_users", "Registered clients.",
                                value=sum(1 for u in users if u.registered))
        yield GaugeMetricFamily("freeq_channels", "Channels with members.",
                                value=sum(1 for c in server.channels.values() if c.members))
        yield GaugeMetricFamily("freeq_web_connections", "Open HTTP connections of the web listener (not upgraded).",
                                value=getattr(self.metrics, "web_connections", 0))
        yield GaugeMetricFamily("freeq_s2s_peers", "Linked federation peers.",
                                value=getattr(self.metrics, "s2s_peers", 0))
        security = CounterMetricFamily("freeq_security_events", "Security events logged at warn, by kind "
                                       "(docs/logging.md).", labels=["kind"])
        for kind in SECURITY_KINDS:
            count = getattr(self.metrics, "security_count", None)
            security.add_metric([kind], count(kind) if count is not None else 0)
        yield security
        for name, text in COUNTERS:
            yield CounterMetricFamily("freeq_" + name, text, value=getattr(self.metrics, name, 0))
        yield GaugeMetricFamily("freeq_uptime_seconds", "Seconds since the server started.",
                                value=max(0.0, self.clock.seconds() - server.started))


def token_matches(expected: str, request: Any) -> bool:
    """Whether ``request`` carries ``Authorization: Bearer <expected>``, compared in constant time."""
    given = bearer_token(request)
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


class MetricsResource(Resource):
    """``GET /metrics``: open, or only with ``Authorization: Bearer <--metrics-token>`` when one is set.

    The token is read from the server's config at each request, so a reload that changes it applies at once.
    """

    isLeaf = True

    def __init__(self, server: Any, metrics: Any, clock: Any) -> None:
        super().__init__()
        self.irc = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServerCollector(server, metrics, clock))  # type: ignore[arg-type]

    def render_GET(self, request: Any) -> bytes:
        expected = getattr(self.irc.config, "metrics_token", None)
        if expected and not token_matches(expected, request):
            return error_response(request, 401, "Bearer token required",
                                  {b"WWW-Authenticate": b'Bearer realm="metrics"'})
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"Cache-Control", b"no-store")
        return generate_latest(self.registry)
