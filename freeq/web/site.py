"""The web listener (``--web-addr``): one ``twisted.web`` Site carrying every web route.

=================================  ==========================================================
``/``                              the bundled web client (or ``--web-static-dir``)
``/irc``                           IRC over WebSocket (:mod:`freeq.web.websocket`)
``/api/v1/...``                    the REST API (:mod:`freeq.web.rest`)
``/auth/broker/...``               the auth broker (:mod:`freeq.web.broker`)
``/metrics``                       Prometheus text (:mod:`freeq.web.prometheus`)
=================================  ==========================================================

Every response carries the security headers and ``Server: freeq`` (no version); request bodies
are capped; the API, broker, metrics and WebSocket routes are rate-limited per client IP (static
files are not). Connections are bounded per TCP peer address and in total
(``--web-max-connections-per-ip``, ``--web-max-connections``; a refused one is answered ``503``
and closed) and timed (``--web-idle-timeout``, ``--web-request-timeout``): see
:class:`freeq.web.http.WebConnection`.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.logger import Logger
from twisted.web import resource, server, static

from freeq.config import Config
from freeq.core.server import IRCServer
from freeq.net.connection import ConnectionLimiter
from freeq.metrics import Metrics
from freeq.web.broker import BrokerResource
from freeq.web.http import RateLimiter, RefusedConnection, WebConnection, WebRequest
from freeq.web.limits import WEB_FULL, LogThrottle, WebConnectionLimiter, peer_ip
from freeq.web.prometheus import MetricsResource
from freeq.web.proxy import ProxyPolicy
from freeq.web.rest import APIv1
from freeq.web.websocket import IRCWebSocketFactory, IRCWebSocketResource

log = Logger()
#: The web listener's access log (one line per request; see :meth:`WebSite.log`).
access_log = Logger(namespace="freeq.web.access")

#: The bundled client, shipped as package data.
BUNDLED_CLIENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
#: Largest request body accepted (the API takes only small JSON bodies).
MAX_BODY_BYTES = 64 * 1024
#: Per-IP request rate limit on the dynamic routes: a burst, then this many per second.
RATE_BURST = 60
RATE_PER_SECOND = 2.0
_LIMITED_PREFIXES = (b"/api/", b"/auth/", b"/metrics", b"/irc")
#: Open connections of the --metrics-addr listener, per peer and in all: a few scrapers need a few (and the
#: open-file margin of freeq.fdlimit covers them).
METRICS_MAX_PER_IP = 4
METRICS_MAX_CONNECTIONS = 16


def _printable(value: Any, limit: int) -> str:
    """``value`` (bytes or text) as at most ``limit`` characters of printable ASCII (escapes for the rest)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return text[:limit].encode("unicode_escape").decode("ascii").replace('"', '\\"')


def _peer(request: Any) -> str:
    return str(getattr(request.getClientAddress(), "host", None) or "-")


class StaticFiles(static.File):
    """Static files without directory listings."""

    def directoryListing(self) -> resource.Resource:
        return resource.NoResource("No such file")


class _Folder(resource.Resource):
    """A path segment that only holds children (``/api``, ``/auth``): 404 by itself."""

    def render(self, request: Any) -> bytes:
        return resource.NoResource("No such resource").render(request)


def _mount(parent: resource.Resource, path: bytes, child: Any) -> None:
    # Resource implements IResource through zope (which plain mypy does not see).
    parent.putChild(path, child)


class WebSite(server.Site):
    """The Site with the listener's policies (see :class:`freeq.web.http.WebRequest`)."""

    requestFactory = WebRequest
    displayTracebacks = False

    def __init__(self, root: resource.Resource, proxies: ProxyPolicy, rate: RateLimiter, metrics: Metrics,
                 max_body_bytes: int = MAX_BODY_BYTES, reactor: Any = None,
                 connections: Optional[WebConnectionLimiter] = None, idle_timeout: float = 30.0,
                 request_timeout: float = 10.0) -> None:
        if reactor is None:
            super().__init__(root)
        else:
            super().__init__(root, reactor=reactor)
        self.proxies = proxies
        self.rate = rate
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.connections = connections if connections is not None else WebConnectionLimiter(32, 1000)
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        # Refusals, time-outs, bad paths and failures: one line per kind every 10 s at most.
        self.log_throttle = LogThrottle(self.reactor, 10.0)

    def buildProtocol(self, addr: Any) -> Any:
        """Admit the connection against the web limits (by TCP peer; a trusted proxy only in the total)."""
        ip = peer_ip(str(getattr(addr, "host", None) or "unknown"))
        reason = self.connections.acquire(ip, per_ip_exempt=self.proxies.is_trusted(ip))
        if reason is not None:
            self.metrics.web_connections_refused += 1
            held = self.log_throttle.allow(("refused", reason))
            if held is not None:
                log.warn("web connection from {ip} refused: {reason} (limit {limit}; {held} more refused since the "
                         "last line)", ip=ip, reason=reason, held=held,
                         limit=self.connections.total if reason == WEB_FULL else self.connections.per_ip)
            return RefusedConnection(reason, self.reactor)
        http = super().buildProtocol(addr)
        if http is None:
            self.connections.release(ip)
            return None
        self.metrics.web_connections = self.connections.open
        return WebConnection(self, http, ip)

    def registerProtocol(self, conn: WebConnection) -> None:
        """Called by the connection when it starts (the slot was taken in :meth:`buildProtocol`)."""

    def unregisterProtocol(self, conn: WebConnection) -> None:
        """Called by the connection when it is lost."""
        self.release_connection(conn)

    def release_connection(self, conn: WebConnection) -> None:
        """Give back the slot of ``conn`` (once: on close, or earlier on a WebSocket upgrade)."""
        if not conn.released:
            conn.released = True
            self.connections.release(conn.ip)
            self.metrics.web_connections = self.connections.open

    def log(self, request: Any) -> None:
        """The access log: one structured line per request, naming the client as :class:`ProxyPolicy` resolves it
        (the forwarded address behind a trusted proxy, else the TCP peer), never the proxy in its place.
        Everything taken from the request is shortened and escaped (no control characters reach the log)."""
        access_log.info('{ip} "{method} {uri} {protocol}" {code} {length} "{referrer}" "{agent}"',
                        ip=self.proxies.for_request(request), peer=_printable(_peer(request), 64),
                        method=_printable(request.method, 16), uri=_printable(request.uri, 512),
                        protocol=_printable(request.clientproto, 16), code=request.code,
                        length=request.sentLength or "-",
                        referrer=_printable(request.getHeader(b"referer") or b"-", 256),
                        agent=_printable(request.getHeader(b"user-agent") or b"-", 256))

    def check_rate(self, request: Any) -> bool:
        """Whether ``request`` is within its client's rate (static files always are)."""
        if not request.path.startswith(_LIMITED_PREFIXES):
            return True
        self.metrics.web_requests += 1
        if self.rate.allow(self.proxies.for_request(request)):
            return True
        self.metrics.web_rate_limited += 1
        return False


def build_web_site(config: Config, clock: Any, irc: IRCServer, limiter: ConnectionLimiter,
                   persistence: Any = None, reactor: Any = None, *, rate_burst: int = RATE_BURST,
                   rate_per_second: float = RATE_PER_SECOND, max_body_bytes: int = MAX_BODY_BYTES) -> WebSite:
    """Assemble the Site for ``irc``; ``clock`` is the server's time, ``reactor`` does the networking."""
    if reactor is None:
        reactor = clock
    # Built once by the composition root (freeq.tap.make_irc_server) and shared with the IRC side.
    metrics, web_tokens, bearer_tokens = irc.metrics, irc.web_tokens, irc.bearer_tokens
    if metrics is None or web_tokens is None or bearer_tokens is None:
        raise ValueError("build_web_site needs an IRCServer built with metrics and token stores (freeq.tap)")
    signer = persistence.signer if persistence is not None else getattr(irc, "signer", None)
    store = persistence.store if persistence is not None else irc.store
    # Read once: keys change only at start-up (before the DB thread runs in production).
    signing_keys = store.signing_keys() if store is not None else []
    proxies = ProxyPolicy(config.trusted_proxies)

    root: resource.Resource = StaticFiles(config.web_static_dir or BUNDLED_CLIENT)
    ws_factory = IRCWebSocketFactory(irc, limiter, clock, reactor)
    _mount(root, b"irc", IRCWebSocketResource(ws_factory, proxies, config.web_allowed_origins))
    api = _Folder()
    _mount(api, b"v1", APIv1(irc, bearer_tokens, signer, signing_keys, clock, config.web_allowed_origins))
    _mount(root, b"api", api)
    auth = _Folder()
    broker = BrokerResource(config.broker_shared_secret, clock, web_tokens, bearer_tokens, proxies, metrics)
    _mount(auth, b"broker", broker)
    _mount(root, b"auth", auth)
    if config.metrics_listen is None:  # else /metrics has its own listener (build_metrics_site)
        _mount(root, b"metrics", MetricsResource(irc, metrics, clock))
    return WebSite(root, proxies, RateLimiter(clock, rate_burst, rate_per_second), metrics, max_body_bytes,
                   reactor=reactor,
                   connections=WebConnectionLimiter(config.web_max_connections_per_ip, config.web_max_connections),
                   idle_timeout=config.web_idle_timeout, request_timeout=config.web_request_timeout)


def build_web_service(config: Config, reactor: Any, server: IRCServer, limiter: ConnectionLimiter,
                      persistence: Any) -> StreamServerEndpointService:
    """The web listener as a service: HTTP, or HTTPS/wss with ``--web-tls-cert``/``--web-tls-key``."""
    assert config.web_listen is not None
    tls: Optional[Any] = None
    if config.web_tls_cert and config.web_tls_key:
        from freeq.net.tls import ReloadableTLS

        # Re-read on REHASH/SIGHUP (freeq.tap reload): the service's ``tls`` attribute below.
        tls = ReloadableTLS(config.web_tls_cert, config.web_tls_key, "--web-tls-cert", "--web-tls-key")
    if config.web_static_dir and not os.path.isdir(config.web_static_dir):
        from freeq.config import ConfigError

        raise ConfigError(f"--web-static-dir: {config.web_static_dir} is not a directory")
    site = build_web_site(config, reactor, server, limiter, persistence)
    svc = StreamServerEndpointService(config.web_listen.endpoint(reactor, tls), site)
    svc.tls = tls  # type: ignore[attr-defined]  # the reloadable certificate (None: plain HTTP)
    svc._raiseSynchronously = True
    log.info("web listener on {scheme}://{addr} (static: {static}, broker: {broker})",
             scheme="https" if tls else "http", addr=str(config.web_listen),
             static=config.web_static_dir or "bundled client",
             broker="on" if config.broker_shared_secret else "off")
    return svc


def build_metrics_site(config: Config, clock: Any, irc: IRCServer, reactor: Any = None) -> WebSite:
    """The Site of ``--metrics-addr``: only ``/metrics`` (the token rule applies there too), with the web
    listener's headers, request rate limit, timeouts and access log, and connection bounds of its own
    (:data:`METRICS_MAX_PER_IP`, :data:`METRICS_MAX_CONNECTIONS`)."""
    if reactor is None:
        reactor = clock
    if irc.metrics is None:
        raise ValueError("build_metrics_site needs an IRCServer built with metrics (freeq.tap)")
    root = _Folder()
    _mount(root, b"metrics", MetricsResource(irc, irc.metrics, clock))
    proxies = ProxyPolicy(config.trusted_proxies)
    return WebSite(root, proxies, RateLimiter(clock, RATE_BURST, RATE_PER_SECOND), irc.metrics, MAX_BODY_BYTES,
                   reactor=reactor, connections=WebConnectionLimiter(METRICS_MAX_PER_IP, METRICS_MAX_CONNECTIONS),
                   idle_timeout=config.web_idle_timeout, request_timeout=config.web_request_timeout)


def build_metrics_service(config: Config, reactor: Any, server: IRCServer) -> StreamServerEndpointService:
    """The ``--metrics-addr`` listener as a service (plain HTTP: meant for loopback or a private network)."""
    assert config.metrics_listen is not None
    svc = StreamServerEndpointService(config.metrics_listen.endpoint(reactor),
                                      build_metrics_site(config, reactor, server))
    svc._raiseSynchronously = True
    log.info("metrics listener on http://{addr}/metrics (token: {token})", addr=str(config.metrics_listen),
             token="required" if config.metrics_token else "none")
    return svc
