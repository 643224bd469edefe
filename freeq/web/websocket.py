"""IRC over WebSocket at ``/irc``: IRCv3 ``binary.ircv3.net`` / ``text.ircv3.net``, or no subprotocol.

One IRC line per WebSocket message in both directions, without CRLF. Inbound, a message is
fed to the same line framing as TCP with a ``\\n`` appended, so a message that carries several
CRLF-separated lines is split into those lines (as the reference server does), each checked
against the line limits (417) and the flood control on its own. Outbound, each line is one
message: binary frames of the raw bytes under ``binary.ircv3.net``; text frames (invalid UTF-8
replaced) under ``text.ircv3.net`` and when the client asked for no subprotocol.

Before the upgrade, :class:`IRCWebSocketResource` checks ``Origin`` (when
``--web-allowed-origins`` is set), resolves the client address (``X-Forwarded-For`` /
``Forwarded`` only from ``--trusted-proxies``) and takes a slot in the per-IP limiter shared
with TCP and TLS; over the limit the request is answered ``429`` and no IRC session exists.
"""
from __future__ import annotations

from typing import Any, Optional

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from freeq.irc.interfaces import IRCHandler
from freeq.net.connection import SERVER_FULL, TOO_FAST, ClientConnection, ConnectionLimiter, OutputFlusher, log_refusal
from freeq.web.http import error_response
from freeq.web.proxy import ProxyPolicy

log = Logger()

BINARY = "binary.ircv3.net"
TEXT = "text.ircv3.net"
SUBPROTOCOLS = (BINARY, TEXT)


class IRCWebSocketProtocol(ClientConnection, WebSocketServerProtocol):  # type: ignore[misc]
    """One IRC client over a WebSocket; the same connection logic and limits as TCP."""

    factory: "IRCWebSocketFactory"
    binary = False

    def __init__(self) -> None:
        WebSocketServerProtocol.__init__(self)
        self._init_connection(False)
        self._sink = self._send_lines

    # -- the WebSocket side ----------------------------------------------------
    def onConnect(self, request: ConnectionRequest) -> Optional[str]:
        """Pick the subprotocol: the client's first of ours; none (text frames) if it offered none of ours."""
        for proto in request.protocols:
            if proto in SUBPROTOCOLS:
                self.binary = proto == BINARY
                return proto
        return None

    def onOpen(self) -> None:
        try:
            # twisted.web's HTTP channel was the transport's producer until the upgrade.
            self.transport.unregisterProducer()
        except Exception:
            pass
        try:
            self._start()
        except Exception:
            log.failure("WebSocket session from {ip} failed to start", ip=self.ip)
            self.transport.abortConnection()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            self._feed(payload + b"\n")
        except Exception:
            log.failure("WebSocket input from {ip} failed", ip=self.ip)
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        try:
            WebSocketServerProtocol.connectionLost(self, reason)
        finally:
            self._teardown()

    # -- ClientConnection hooks ------------------------------------------------
    def _lose(self) -> None:
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendClose(1000)
        else:
            self.dropConnection(abort=False)

    def _send_lines(self, data: bytes) -> None:
        """The sink of the buffered output (one or more CRLF-terminated lines): each line becomes one message."""
        if self.state != WebSocketServerProtocol.STATE_OPEN:
            return
        for line in data.split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                continue
            if self.binary:
                self.sendMessage(line, isBinary=True)
                continue
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                line = line.decode("utf-8", "replace").encode("utf-8")
            self.sendMessage(line, isBinary=False)


class IRCWebSocketFactory(WebSocketServerFactory):
    """Builds :class:`IRCWebSocketProtocol`; shares the server, limiter and clock with the TCP listeners."""

    protocol = IRCWebSocketProtocol  # type: ignore[assignment]

    def __init__(self, server: IRCHandler, limiter: ConnectionLimiter, clock: Any, reactor: Any) -> None:
        super().__init__(reactor=reactor)
        self.server = server
        self.limiter = limiter
        self.clock = clock
        self.config = server.config
        # A connection's lines of one reactor turn reach _send_lines together; each still gets its own frame.
        self.flusher = OutputFlusher(reactor)
        # Bigger than any line we accept (those get 417 like on TCP), small enough to bound memory.
        hard_limit = 4 * (self.config.max_line_bytes + self.config.max_tag_bytes)
        self.setProtocolOptions(
            maxFramePayloadSize=hard_limit,
            maxMessagePayloadSize=hard_limit,
            perMessageCompressionAccept=lambda offers: None,  # no compression: no inflate bombs, less CPU
            failByDrop=False,  # protocol errors (e.g. 1009 too big) are told to the client in a close frame
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
            trustXForwardedFor=0,  # the resource resolves the client address itself
        )


class _Admitted:
    """Builds the protocol for one request that already holds a limiter slot for ``ip``."""

    def __init__(self, factory: IRCWebSocketFactory, ip: str, secure: bool) -> None:
        self.factory = factory
        self.ip = ip
        self.secure = secure
        self.built = False

    def buildProtocol(self, addr: Any) -> IRCWebSocketProtocol:
        proto: IRCWebSocketProtocol = self.factory.buildProtocol(addr)  # type: ignore[assignment]
        proto.ip = self.ip
        proto.secure = self.secure
        proto._counted = True  # the slot is released when this connection is lost
        self.built = True
        return proto


class IRCWebSocketResource(Resource):
    """``/irc``: checks Origin, client address and the per-IP limit, then hands the socket to Autobahn."""

    isLeaf = True

    def __init__(self, factory: IRCWebSocketFactory, proxies: ProxyPolicy,
                 allowed_origins: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.factory = factory
        self.proxies = proxies
        self.allowed_origins = frozenset(o.strip().rstrip("/").lower() for o in allowed_origins)

    def render_GET(self, request: Any) -> Any:
        upgrade = (request.getHeader(b"upgrade") or b"").decode("latin-1").lower()
        if "websocket" not in upgrade:
            request.setHeader(b"Upgrade", b"websocket")
            return error_response(request, 426, "This is the IRC WebSocket endpoint; upgrade to WebSocket")
        ip = self.proxies.for_request(request)
        origin = request.getHeader(b"origin")
        if self.allowed_origins and origin is not None:
            text = origin.decode("latin-1").strip().rstrip("/").lower()
            if text not in self.allowed_origins:
                log.info("WebSocket from {ip} refused: origin {origin} not allowed", ip=ip, origin=text[:200])
                return error_response(request, 403, "Origin not allowed")
        limiter = self.factory.limiter
        if not limiter.check_rate(self.factory.server, ip, self.factory.clock.seconds(), "WebSocket upgrade"):
            return error_response(request, 429, TOO_FAST)
        reason = limiter.acquire(ip)
        if reason is not None:
            log_refusal(self.factory.server, ip, reason, "WebSocket upgrade")
            return error_response(request, 503 if reason == SERVER_FULL else 429, reason)
        admitted = _Admitted(self.factory, ip, self.proxies.is_secure(request))
        try:
            # The socket outlives this request: twisted.web's idle timeout must not fire on it later.
            request.channel.setTimeout(None)
            result = WebSocketResource(admitted).render(request)
        except BaseException:
            if not admitted.built:
                limiter.release(ip)
            raise
        if result is not NOT_DONE_YET and not admitted.built:
            limiter.release(ip)
        return result
