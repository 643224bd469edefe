"""Client connections: what every transport shares, and the IRC line protocol over TCP and TLS.

:class:`ClientConnection` holds the transport-independent half of a client connection: the
shared per-IP limit, line framing, flood control (fake lag, then ``Excess Flood``), the send
queue bounded through the transport's producer pause, and teardown. :class:`IRCProtocol`
puts it on a TCP/TLS byte stream; :mod:`freeq.web.websocket` puts it on WebSocket messages.

It only frames, parses, throttles and dispatches; every IRC decision is made by
:class:`freeq.core.server.IRCServer`.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from freeq.config import Config
from freeq.core.server import IRCServer
from freeq.irc.interfaces import IClientConnection
from freeq.irc.parser import build_text, parse
from freeq.state.flood import TokenBucket
from freeq.state.user import User

log = Logger()

SERVER_FULL = "Server is full"

#: Commands that never cost flood tokens.
FLOOD_EXEMPT = frozenset({"PONG", "PING"})


class ConnectionLimiter:
    """Counts concurrent connections per IP and in total, across all listeners."""

    def __init__(self, per_ip: int, total: int) -> None:
        self.per_ip = per_ip
        self.total = total
        self.counts: dict[str, int] = {}
        self.current = 0

    def acquire(self, ip: str) -> Optional[str]:
        """Reserve a slot for ``ip``; return a refusal reason when over a limit."""
        if self.current >= self.total:
            return SERVER_FULL
        n = self.counts.get(ip, 0)
        if n >= self.per_ip:
            return "Too many connections from your IP"
        self.counts[ip] = n + 1
        self.current += 1
        return None

    def release(self, ip: str) -> None:
        """Free the slot reserved by :meth:`acquire`."""
        n = self.counts.get(ip, 0) - 1
        if n <= 0:
            self.counts.pop(ip, None)
        else:
            self.counts[ip] = n
        self.current -= 1


def log_refusal(server: IRCServer, ip: str, reason: str, what: str = "connection") -> None:
    """Log (and count) a connection refused by the :class:`ConnectionLimiter`."""
    if reason == SERVER_FULL:
        log.warn("client limit reached: refusing {what} from {ip} ({reason})", what=what, ip=ip, reason=reason)
    else:
        log.warn("per-IP limit reached: refusing {what} from {ip} ({reason})", what=what, ip=ip, reason=reason)
        server.metric("per_ip_refusals")


@implementer(IClientConnection, IPushProducer)
class ClientConnection:
    """The transport-independent half of a client connection (a mixin).

    A subclass sets ``factory`` (with ``server``, ``limiter``, ``clock`` and ``config``), has a
    byte ``transport`` (the socket: flow control and aborts go there), sets ``_sink`` to the
    callable that sends bytes to the peer, calls :meth:`_admit` and :meth:`_start` when the
    connection opens, feeds input to :meth:`_feed` and calls :meth:`_teardown` when it is gone.
    :meth:`_lose` is the graceful close; override it where the transport has its own.
    """

    factory: Any
    transport: Any
    user: Optional[User] = None
    ip = ""
    secure = False
    ping_sent = False
    oper_failures = 0
    _paused = False
    _overflow = 0
    _discarding = False
    _closed = False
    _drain_call: Any = None
    _counted = False
    _lost_reason = "Connection closed"
    _sink: Callable[[bytes], None]

    def _init_connection(self, secure: bool) -> None:
        self.secure = secure
        self._buffer = b""
        self._pending: deque[Any] = deque()
        self._bucket: Optional[TokenBucket] = None

    # -- opening and closing -------------------------------------------------
    def _admit(self, ip: str) -> bool:
        """Take a slot for ``ip`` in the limiter shared by all listeners; refuse when over a limit."""
        self.ip = ip
        reason = self.factory.limiter.acquire(ip)
        if reason is not None:
            log_refusal(self.factory.server, ip, reason)
            self._refuse(reason)
            return False
        self._counted = True
        return True

    def _start(self) -> None:
        """The connection is admitted: ask plugins, then create the model's user writing to ``_sink``."""
        factory = self.factory
        reason = factory.server.check_connect(self.ip)
        if reason is not None:
            log.info("plugin refused connection from {ip}: {reason}", ip=self.ip, reason=reason)
            self._refuse(reason)
            return
        cfg = factory.config
        self._bucket = TokenBucket(cfg.flood_burst, cfg.flood_rate, factory.clock.seconds())
        self.transport.registerProducer(self, True)
        self.user = factory.server.connect(self, self._sink, self.ip)

    def _refuse(self, reason: str) -> None:
        self._closed = True
        self._sink(build_text(None, "ERROR", f"Closing Link: {reason}"))
        self._lose()

    def _lose(self) -> None:
        """Close gracefully once what is written has been sent."""
        self.transport.loseConnection()

    def _teardown(self) -> None:
        """The transport is gone: free the limiter slot and remove the user from the model."""
        if self._drain_call is not None and self._drain_call.active():
            self._drain_call.cancel()
        self._drain_call = None
        self._pending.clear()
        if self._counted:
            self._counted = False
            self.factory.limiter.release(self.ip)
        user = self.user
        if user is not None:
            self.user = None
            user.write = _drop
            self.factory.server.disconnect(user, self._lost_reason)
            user.conn = None

    def close(self) -> None:
        """Flush and close (called by the server after it wrote ``ERROR``)."""
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        if self.user is not None:
            self.user.write = _drop
        try:
            self.transport.unregisterProducer()
        except RuntimeError:
            pass
        self._lose()

    # -- output: a send queue bounded by --sendq-bytes ------------------------
    def pauseProducing(self) -> None:
        """The transport's buffer is full: count further bytes against the send queue."""
        if self._paused:
            return  # Twisted calls this on every write while the buffer stays full
        self._paused = True
        self._overflow = 0
        user = self.user
        if user is not None and user.write == self._sink:
            user.write = self._queued_write

    def resumeProducing(self) -> None:
        """The transport drained: write straight through again."""
        self._paused = False
        self._overflow = 0
        user = self.user
        if user is not None and user.write == self._queued_write:
            user.write = self._sink

    def stopProducing(self) -> None:
        pass

    def _queued_write(self, data: bytes) -> None:
        self._overflow += len(data)
        if self._overflow > self.factory.config.sendq_bytes:
            user = self.user
            log.warn("SendQ exceeded for {nick} from {ip}; dropping", nick=user.nick if user else "*", ip=self.ip)
            self._closed = True
            if user is not None:
                user.write = _drop
            # Leave the model to _teardown: we may be inside a fan-out over this user's channels.
            self._lost_reason = "SendQ exceeded"
            self.transport.abortConnection()
            return
        self._sink(data)

    # -- input: framing --------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        """Split input into lines (bounded buffer, bare ``\\n`` accepted) and handle each."""
        if self._closed or self.user is None:
            return
        cfg = self.factory.config
        limit = cfg.max_line_bytes + cfg.max_tag_bytes
        buf = self._buffer + data if self._buffer else data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            raw = buf[start:end]
            start = end + 1
            if self._discarding:
                self._discarding = False
                continue
            self._line(raw, cfg)
            if self._closed:
                return
        rest = buf[start:]
        if len(rest) > limit:
            if not self._discarding:
                self._too_long()
                self._discarding = True
            rest = b""
        self._buffer = rest

    def _too_long(self) -> None:
        user = self.user
        if user is not None:
            user.write(build_text(self.factory.server.name, "417", user.nick, "Input line was too long"))

    def _line(self, raw: bytes, cfg: Config) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            return
        if raw[:1] == b"@":
            sp = raw.find(b" ")
            tag_len = sp if sp >= 0 else len(raw)
            if tag_len > cfg.max_tag_bytes or len(raw) - tag_len - 1 > cfg.max_line_bytes - 2:
                self._too_long()
                return
        elif len(raw) > cfg.max_line_bytes - 2:
            self._too_long()
            return
        if b"\x00" in raw or b"\r" in raw:
            raw = raw.replace(b"\x00", b"").replace(b"\r", b"")
        msg = parse(raw.decode("utf-8", "replace"))
        if msg is None:
            return
        if self._pending:
            self._queue(msg)
            return
        bucket = self._bucket
        if bucket is not None and msg.command not in FLOOD_EXEMPT and not bucket.take(self.factory.clock.seconds()):
            self._queue(msg)
            return
        self._dispatch(msg)

    def _dispatch(self, msg: Any) -> None:
        user = self.user
        if user is None:
            return
        try:
            self.factory.server.handle(user, msg)
        except Exception:
            log.failure("error handling {command} from {nick}", command=msg.command, nick=user.nick)
            self.factory.server.close(user, "Internal error")

    # -- flood control: fake lag, then Excess Flood --------------------------------
    def _queue(self, msg: Any) -> None:
        self._pending.append(msg)
        if len(self._pending) > self.factory.config.flood_queue:
            user = self.user
            log.warn("Excess flood from {nick} at {ip}", nick=user.nick if user else "*", ip=self.ip)
            if user is not None:
                self.factory.server.close(user, "Excess Flood")
            return
        if self._drain_call is None:
            self.transport.pauseProducing()
            self._schedule_drain()

    def _schedule_drain(self) -> None:
        assert self._bucket is not None
        delay = max(self._bucket.wait_time(), 0.01)
        self._drain_call = self.factory.clock.callLater(delay, self._drain)

    def _drain(self) -> None:
        self._drain_call = None
        bucket = self._bucket
        clock = self.factory.clock
        while self._pending and not self._closed:
            msg = self._pending[0]
            if msg.command not in FLOOD_EXEMPT and bucket is not None and not bucket.take(clock.seconds()):
                self._schedule_drain()
                return
            self._pending.popleft()
            self._dispatch(msg)
        if not self._closed:
            self.transport.resumeProducing()


class IRCProtocol(ClientConnection, Protocol):
    """One client connection speaking IRC lines over TCP or TLS."""

    factory: "IRCFactory"

    def __init__(self, secure: bool) -> None:
        self._init_connection(secure)

    def connectionMade(self) -> None:
        self._sink = self.transport.write
        peer = self.transport.getPeer()
        if self._admit(getattr(peer, "host", "unknown")):
            self._start()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._teardown()

    def dataReceived(self, data: bytes) -> None:
        self._feed(data)


def _drop(data: bytes) -> None:
    """The sink of a closed connection."""


class IRCFactory(Factory):
    """Makes :class:`IRCProtocol` instances for one listener; all listeners share the server and limiter."""

    def __init__(self, server: IRCServer, limiter: ConnectionLimiter, clock: Any, secure: bool = False) -> None:
        self.server = server
        self.limiter = limiter
        self.clock = clock
        self.config = server.config
        self.secure = secure

    def buildProtocol(self, addr: Any) -> IRCProtocol:
        proto = IRCProtocol(self.secure)
        proto.factory = self
        return proto
