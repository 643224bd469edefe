"""HTTP plumbing shared by the web listener's resources: JSON replies, security headers, limits.

:class:`WebRequest` puts the security headers (and ``Server: freeq``, no version) on every
response, refuses bodies larger than the site's limit (``413``) without buffering them, answers
``400`` for a path with a NUL or undecodable byte, applies the per-IP request rate limit
(``429``) before any resource runs, and turns an unhandled exception into a JSON ``500`` with one
rate-limited log line (no traceback).

:class:`WebConnection` wraps each accepted HTTP connection: it holds the connection's slot in the
site's :class:`freeq.web.limits.WebConnectionLimiter` and its timers. A connection waiting for a
request is closed after ``--web-idle-timeout``; once a request's first byte arrives, its line,
headers and body must all be in within ``--web-request-timeout`` (a slowloris trickling a byte a
second is cut then, whatever twisted.web's own idle timer, which every byte resets, would do);
a reply the client does not read within :data:`REPLY_TIMEOUT` is aborted. A WebSocket upgrade
(Autobahn swaps the wrapped protocol) gives the slot back and stops the timers: the IRC
connection limiter and the IRC timers own that socket from then on.
"""
from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from http import HTTPStatus
from typing import Any, Optional, cast
from urllib.parse import unquote_to_bytes

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web import server
from twisted.web.http import RESPONSES

from freeq.state.flood import TokenBucket

log = Logger()

#: Sent with every response of the web listener.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"Referrer-Policy", b"strict-origin-when-cross-origin"),
    (b"Cross-Origin-Opener-Policy", b"same-origin"),
    (b"Content-Security-Policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
     b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"Permissions-Policy", b"camera=(), microphone=(), geolocation=()"),
)
HSTS = (b"Strict-Transport-Security", b"max-age=63072000; includeSubDomains")
#: The ``Server`` header of every response: the software, never its version.
SERVER_HEADER = b"freeq"
#: Seconds a reply may take to be sent once its request is in (a client that stops reading is aborted).
REPLY_TIMEOUT = 60.0
#: Seconds a graceful close may take before the socket is aborted.
ABORT_GRACE = 2.0

#: Bytes of a request body discarded past the limit before the connection is cut.
_DISCARD_SLACK = 1 << 20


def reason_phrase(code: int) -> Optional[bytes]:
    """The status line's reason phrase for ``code``: twisted.web's, else the standard one (twisted.web has no
    ``429`` and would send ``429 Unknown Status``); ``None`` for a code nobody names."""
    known = RESPONSES.get(code)
    if known is not None:
        return known
    try:
        return HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        return None


def json_response(request: Any, code: int, body: Any) -> bytes:
    """Serialise ``body`` as the JSON response with status ``code``."""
    request.setResponseCode(code, reason_phrase(code))
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def error_response(request: Any, code: int, message: str, headers: Optional[dict[bytes, bytes]] = None) -> bytes:
    """A JSON error ``{"error": message}`` with status ``code``."""
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    return json_response(request, code, {"error": message})


def bearer_token(request: Any) -> Optional[str]:
    """The token of an ``Authorization: Bearer <token>`` header; ``None`` without the header, ``""`` if malformed."""
    value = request.getHeader(b"authorization")
    if not value:
        return None
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


class RateLimiter:
    """A token bucket per client IP (``burst`` requests, refilled at ``rate`` per second).

    At most ``max_ips`` buckets are kept; the least recently used goes first.
    """

    def __init__(self, clock: Any, burst: int = 60, rate: float = 1.0, max_ips: int = 50000) -> None:
        self.clock = clock
        self.burst = burst
        self.rate = rate
        self.max_ips = max_ips
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, ip: str) -> bool:
        """Spend one request for ``ip``; ``False`` when it is over its rate."""
        now = self.clock.seconds()
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = self._buckets[ip] = TokenBucket(self.burst, self.rate, now)
            while len(self._buckets) > self.max_ips:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(ip)
        return bucket.take(now)


def bad_path(path: bytes) -> bool:
    """Whether ``path`` (percent-decoded) holds a NUL or is not UTF-8: no resource can serve it."""
    if b"%" not in path and b"\x00" not in path and path.isascii():
        return False
    raw = unquote_to_bytes(path)
    if b"\x00" in raw:
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _route(request: Any) -> str:
    """The first path segment of ``request`` (what the failure lines are grouped by), shortened."""
    first = request.path.split(b"/", 2)[1] if request.path.startswith(b"/") else request.path
    return first[:32].decode("latin-1").encode("unicode_escape").decode("ascii")


def _client(request: Any) -> str:
    return str(getattr(request.getClientAddress(), "host", None) or "unknown")


def _throttled(site: Any, key: Any) -> Optional[int]:
    """:meth:`freeq.web.limits.LogThrottle.allow` of the site (everything passes without one)."""
    throttle = getattr(site, "log_throttle", None)
    return 0 if throttle is None else throttle.allow(key)


def _count(site: Any, name: str) -> None:
    metrics = getattr(site, "metrics", None)
    if metrics is not None:
        setattr(metrics, name, getattr(metrics, name) + 1)


def report_failure(request: Any, failure: Any) -> None:
    """Count and log an unhandled exception of ``request``: one line, at most one per
    (exception type, route) every few seconds, naming where it was raised; never a traceback
    (an unauthenticated request must not be able to write kilobytes of log)."""
    site = getattr(request.channel, "site", None)
    _count(site, "web_errors")
    error = getattr(failure.type, "__name__", "error")
    route = _route(request)
    held = _throttled(site, ("failure", error, route))
    if held is None:
        return
    where = "?"
    if failure.frames:
        func, path, line = failure.frames[-1][:3]
        where = f"{os.path.basename(path)}:{line} in {func}"
    error_text = repr(failure.value)[:200]
    log.error("web request {method} /{route} from {ip} failed: {error_text} at {where} "
              "({held} more like it since the last line)", method=request.method.decode("latin-1")[:16],
              route=route, ip=_client(request), error_text=error_text, where=where, held=held)


class WebConnection(ProtocolWrapper):
    """One accepted web connection: its slot in the site's web limiter and its timers (see the module doc)."""

    IDLE, READING, REPLYING, UPGRADED = "idle", "reading", "replying", "upgraded"
    transport: Any

    def __init__(self, site: Any, wrapped: Any, ip: str) -> None:
        self._http = wrapped
        self._wrapped: Any = None
        self.state = self.IDLE
        self._timer: Any = None
        self.released = False
        super().__init__(site, wrapped)
        self.site = site
        self.ip = ip

    @property  # type: ignore[override]
    def wrappedProtocol(self) -> Any:
        return self._wrapped

    @wrappedProtocol.setter
    def wrappedProtocol(self, protocol: Any) -> None:
        self._wrapped = protocol
        if protocol is not None and protocol is not self._http:
            self.upgraded()  # Autobahn swapped us to its protocol (plain TCP)

    def makeConnection(self, transport: Any) -> None:
        """Start the idle timer and connect the HTTP channel to the real transport.

        The channel gets the socket (or the TLS layer) itself, not this wrapper: Autobahn's
        WebSocket takeover needs the TLS protocol as its transport (channel binding), and swaps
        either the TLS layer's or this wrapper's protocol; :meth:`WebRequest.process` notices the
        takeover either way and calls :meth:`upgraded`.
        """
        Protocol.makeConnection(self, transport)
        self._arm(self.site.idle_timeout)
        # _GenericHTTPChannelProtocol hands requests the HTTPChannel it wraps (as request.channel).
        channel = getattr(self._http, "_channel", self._http)
        channel.web_connection = self
        self._http.makeConnection(transport)

    def upgraded(self) -> None:
        """The socket left HTTP (WebSocket): stop the timers and give back the web slot."""
        if self.state != self.UPGRADED:
            self.state = self.UPGRADED
            self._arm(None)
            self.site.release_connection(self)

    def dataReceived(self, data: bytes) -> None:
        if self.state == self.IDLE:
            self.state = self.READING
            self._arm(self.site.request_timeout)
        super().dataReceived(data)

    def request_received(self) -> None:
        """The whole request is in; its reply is being made."""
        if self.state != self.UPGRADED:
            self.state = self.REPLYING
            self._arm(REPLY_TIMEOUT)

    def request_done(self) -> None:
        """The reply is finished; the connection waits for the next request (keep-alive)."""
        if self.state == self.REPLYING:
            self.state = self.IDLE
            self._arm(self.site.idle_timeout)

    def connectionLost(self, reason: Any = None) -> None:
        self._arm(None)
        super().connectionLost(reason)

    def _arm(self, seconds: Optional[float]) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None if seconds is None else self.site.reactor.callLater(seconds, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self.transport is None or self.state == self.UPGRADED:
            return
        why = {self.IDLE: "idle", self.READING: "request too slow", self.REPLYING: "reply not read"}[self.state]
        _count(self.site, "web_timeouts")
        held = _throttled(self.site, ("timeout", why))
        if held is not None:
            log.info("web connection from {ip} closed: {why} ({held} more since the last line)",
                     ip=self.ip, why=why, held=held)
        if self.state == self.IDLE:
            self.transport.loseConnection()
            self._timer = self.site.reactor.callLater(ABORT_GRACE, self._abort)
        else:
            self._abort()

    def _abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abortConnection()


class RefusedConnection(Protocol):
    """Answers a connection over the web limits ``503`` (without reading it) and closes it."""

    def __init__(self, reason: str, clock: Any) -> None:
        self.reason = reason
        self.clock = clock
        self._abort: Any = None

    transport: Any

    def connectionMade(self) -> None:
        body = json.dumps({"error": self.reason}).encode("utf-8")
        self.transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nServer: " + SERVER_HEADER + b"\r\nConnection: close\r\n"
            b"Retry-After: 10\r\nContent-Type: application/json; charset=utf-8\r\nCache-Control: no-store\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.transport.loseConnection()
        self._abort = self.clock.callLater(ABORT_GRACE, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        """The request is not read."""

    def connectionLost(self, reason: Any = None) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        self._abort = None


def _connection(request: Any) -> Optional[WebConnection]:
    return getattr(request.channel, "web_connection", None)


class WebRequest(server.Request):
    """A request with the web listener's policies applied before routing (see the module doc)."""

    _too_large = False
    _received = 0

    def _limit(self) -> int:
        return int(getattr(getattr(self.channel, "site", None), "max_body_bytes", 65536))

    def gotLength(self, length: Optional[int]) -> None:
        if length is not None and length > self._limit():
            self._too_large = True
            self.content = io.BytesIO()  # type: ignore[assignment]
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if not self._too_large and self._received > self._limit():
            self._too_large = True
            self.content = io.BytesIO()  # type: ignore[assignment]
        if self._too_large:
            if self._received > self._limit() + _DISCARD_SLACK and self.channel.transport is not None:
                cast(Any, self.channel.transport).abortConnection()  # a TCP/TLS transport
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        conn = _connection(self)
        if conn is not None:
            conn.request_received()
        for name, value in SECURITY_HEADERS:
            self.setHeader(name, value)
        if self.isSecure():
            self.setHeader(*HSTS)
        site = getattr(self.channel, "site", None)
        if self._too_large:
            self._reply_now(413, "Request body too large")
            return
        check = getattr(site, "check_rate", None)
        if check is not None and not check(self):
            self._reply_now(429, "Rate limit exceeded", {b"Retry-After": b"1"})
            return
        if bad_path(self.path):
            # static.File would raise on the NUL (500 and a traceback); no route has such a name.
            _count(site, "web_bad_paths")
            held = _throttled(site, ("bad path",))
            if held is not None:
                log.info("web request from {ip} refused: NUL or undecodable byte in the path {path} "
                         "({held} more since the last line)", ip=_client(self),
                         path=self.path[:120].decode("latin-1").encode("unicode_escape").decode("ascii"), held=held)
            self._reply_now(400, "Bad request path")
            return
        channel = self.channel  # a finished request forgets its channel
        super().process()
        if conn is not None and channel.transport is None:
            conn.upgraded()  # a resource (the /irc WebSocket) took the socket over
            # Such a request never finishes, so twisted.web would not log it: the access log gets it here.
            self.code = 101
            log_request = getattr(site, "log", None)
            if log_request is not None:
                log_request(self)

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            # twisted.web sets "TwistedWeb/<version>" in process(); the first write sends the headers.
            self.responseHeaders.setRawHeaders(b"Server", [SERVER_HEADER])
        super().write(data)

    def finish(self) -> None:
        conn = _connection(self)
        if conn is not None:
            # Before finishing: a pipelined request may be processed (and mark its reply) inside finish().
            conn.request_done()
        super().finish()

    def processingFailed(self, reason: Any) -> Any:
        """An unhandled exception while rendering: one log line (:func:`report_failure`), a JSON ``500``."""
        report_failure(self, reason)
        if self.finished or self._disconnected:
            return reason
        if self.startedWriting:
            self.channel.loseConnection()  # the reply is half sent: end it rather than append to it
            return reason
        self.responseHeaders.removeHeader(b"Content-Encoding")
        self._encoder = None
        self._reply_now(500, "Internal server error")
        return reason

    def _reply_now(self, code: int, message: str, headers: Optional[dict[bytes, bytes]] = None) -> None:
        body = error_response(self, code, message, headers)
        self.setHeader(b"Content-Length", str(len(body)).encode())
        self.write(body)
        self.finish()
