"""Client connections: what every transport shares, and the IRC line protocol over TCP and TLS.

:class:`ClientConnection` holds the transport-independent half of a client connection: the
shared per-IP limit, line framing, flood control (fake lag, then ``Excess Flood``), buffered
output with a bounded send queue, and teardown. :class:`IRCProtocol`
puts it on a TCP/TLS byte stream; :mod:`freeq.web.websocket` puts it on WebSocket messages.

Output is coalesced: ``User.write`` appends to the connection's buffer, and an
:class:`OutputFlusher` hands each connection's buffered lines to its transport in one write
once per reactor turn. A fan-out to 1,000 members thus costs one list append per member
instead of one transport write (and its epoll bookkeeping) per member per message.

It only frames, parses, throttles and dispatches; every IRC decision is made by the
:class:`freeq.irc.interfaces.IRCHandler` it is given (:class:`freeq.core.server.IRCServer`).
"""
from __future__ import annotations

import socket
from collections import deque
from typing import Any, Callable, Optional, cast

from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from freeq.config import Config
from freeq.gateways import is_gateway_host
from freeq.irc.interfaces import IClientConnection, IRCHandler
from freeq.irc.parser import build_text, parse
from freeq.logs import log_connect, security_event
from freeq.state.flood import ConnectionRate, TokenBucket
from freeq.state.multiline import BATCH_LINE_BYTES
from freeq.state.throttle import ip_key
from freeq.state.user import User

log = Logger()

SERVER_FULL = "Server is full"
#: Refusal reason of the connection-rate throttle (after the address in ``ERROR :Closing Link:``).
TOO_FAST = "Connecting too fast"

#: Commands that never cost flood tokens. PING does (issue #10 item 5): a PONG per PING is free output
#: for a flooder; a PONG answers the server's own keepalive and must never be held back.
FLOOD_EXEMPT = frozenset({"PONG"})
#: Multiline batch lines cost one flood token per this many bytes of text (a full 40,000-byte batch: about
#: ten tokens, within the default burst of 20) ...
BATCH_TOKEN_BYTES = 4096
#: ... counting each line as this many bytes more (its prefix and tags when it is fanned out), so that 100
#: one-character lines are not free either.
BATCH_LINE_OVERHEAD = 64


class ConnectionLimiter:
    """Counts concurrent connections per IP and in total, and new connections per address, across all listeners.

    ``rate`` (optional) throttles how fast one address (IPv6: its /64) may open connections;
    :meth:`check_rate` asks it, logs (rate-limited) and counts its refusals.
    """

    def __init__(self, per_ip: int, total: int, rate: Optional[ConnectionRate] = None) -> None:
        self.per_ip = per_ip
        self.total = total
        self.counts: dict[str, int] = {}
        self.current = 0
        self.rate = rate

    def check_rate(self, server: IRCHandler, ip: str, now: float, what: str = "connection") -> bool:
        """Count a new connection from ``ip`` against its address's rate; False (logged, counted) when too fast."""
        rate = self.rate
        if rate is None:
            return True
        key = ip_key(ip)
        if rate.allow(key, now):
            return True
        server.metric("connection_rate_refusals")
        held = rate.log_refusal(key, now)
        if held is not None:
            security_event(log, "connection_rate", ip, "connection rate exceeded: refusing {what} from {ip} ({key} "
                           "over {burst} then {rate}/s; {held} more refused since the last line)", what=what,
                           key=key, burst=rate.burst, rate=rate.rate, held=held)
        return False

    def acquire(self, ip: str, per_ip_exempt: bool = False) -> Optional[str]:
        """Reserve a slot for ``ip``; return a refusal reason when over a limit. ``per_ip_exempt`` (a WebIRC
        gateway's host, whose clients are counted by their own address once WEBIRC names it) counts only in
        the total."""
        if self.current >= self.total:
            return SERVER_FULL
        if per_ip_exempt:
            self.current += 1
            return None
        n = self.counts.get(ip, 0)
        if n >= self.per_ip:
            return "Too many connections from your IP"
        self.counts[ip] = n + 1
        self.current += 1
        return None

    def move(self, old: str, new: str, old_exempt: bool = False) -> Optional[str]:
        """Count a connection held for ``old`` (per-IP exempt or not) against ``new`` instead, the total unchanged
        (WEBIRC); a refusal reason when ``new`` is at its per-IP limit, and then nothing changes."""
        n = self.counts.get(new, 0)
        if n >= self.per_ip:
            return "Too many connections from your IP"
        self.counts[new] = n + 1
        self.current += 1
        self.release(old, old_exempt)
        return None

    def release(self, ip: str, per_ip_exempt: bool = False) -> None:
        """Free the slot reserved by :meth:`acquire`."""
        if per_ip_exempt:
            self.current -= 1
            return
        n = self.counts.get(ip, 0) - 1
        if n <= 0:
            self.counts.pop(ip, None)
        else:
            self.counts[ip] = n
        self.current -= 1


class OutputFlusher:
    """Writes every connection's buffered output once per reactor turn.

    The first buffered write of a turn marks its connection dirty and schedules one
    ``callLater(0)`` on the real reactor (never on an injected fake clock: output must not wait
    for fake time); the call joins each dirty connection's lines and writes them at once.
    """

    def __init__(self, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self._dirty: list[ClientConnection] = []
        self._call: Any = None

    def mark(self, conn: "ClientConnection") -> None:
        """``conn`` has buffered output: write it at the start of the next reactor turn."""
        self._dirty.append(conn)
        if self._call is None:
            self._call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Write out every dirty connection (those marked while this runs go in the next turn)."""
        self._call = None
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            try:
                conn.flush_output()
            except Exception:
                log.failure("writing to {ip} failed", ip=conn.ip)
                conn.abort_output()


def log_refusal(server: IRCHandler, ip: str, reason: str, what: str = "connection") -> None:
    """Log (and count) a connection refused by the :class:`ConnectionLimiter`."""
    if reason == SERVER_FULL:
        log.warn("client limit reached: refusing {what} from {ip} ({reason})", what=what, ip=ip, reason=reason)
    else:
        server.metric("per_ip_refusals")
        security_event(log, "per_ip_limit", ip, "per-IP limit reached: refusing {what} from {ip} ({reason})",
                       what=what, reason=reason)


@implementer(IClientConnection, IPushProducer)
class ClientConnection:
    """The transport-independent half of a client connection (a mixin).

    A subclass sets ``factory`` (with ``server``, ``limiter``, ``clock``, ``config`` and
    ``flusher``), has a byte ``transport`` (the socket: flow control and aborts go there), sets
    ``_sink`` to the callable that sends bytes to the peer, calls :meth:`_admit` and
    :meth:`_start` when the connection opens, feeds input to :meth:`_feed` and calls
    :meth:`_teardown` when it is gone. :meth:`_lose` is the graceful close; override it where the
    transport has its own.

    The model writes to :meth:`_write`, which buffers; ``_sink`` gets one call per reactor turn
    with the lines written during that turn joined (several CRLF-terminated lines).

    The send queue is bounded in one of two ways. By default the connection is a streaming
    producer of its transport: when the transport's buffer fills it calls :meth:`pauseProducing`
    and the bytes written until it drains count against ``--sendq-bytes``. A subclass that sets
    ``_socket`` (plain TCP) is a pull producer instead: output goes straight to the socket with
    ``send()`` while the transport holds nothing, and only what the socket does not take goes
    to the transport, counted until the transport reports it drained (:meth:`resumeProducing`).
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
    #: Text bytes of multiline batch lines not yet paid for with a flood token (see ``_flood_free``).
    _batch_bytes = 0
    _closed = False
    _drain_call: Any = None
    _counted = False
    _lost_reason = "Connection closed"
    #: The abort that follows a graceful close after ``--close-grace``.
    _grace_call: Any = None
    _gone = False
    _sink: Callable[[bytes], None]
    #: Lines written since the last flush; None while nothing is buffered (and the connection is not dirty).
    _out: Optional[list[bytes]] = None
    #: The fake-lag queue: a deque (~760 bytes) made on first use, since most connections never need one.
    _pending: Any = ()
    #: The connected socket, when output may be sent on it directly (plain TCP; see the class docstring).
    _socket: Any = None
    #: Bytes handed to the transport since it was last empty (with ``_socket`` only); 0 = it holds nothing.
    _backlog = 0
    #: The limiter slot counts only in the total: the peer is a WebIRC gateway's host (freeq.gateways).
    _slot_exempt = False
    #: After WEBIRC (freeq.core.webirc): the gateway's name, its address, and the hostname it gave the client.
    webirc: Optional[tuple[str, str, str]] = None

    @property
    def transport_name(self) -> str:
        """How the client connects, for the connection log line: ``tcp``, ``tls`` or ``websocket``."""
        if not getattr(self, "sts_applies", False):
            return "websocket"  # only the TCP/TLS line protocol can be told to reconnect with TLS
        return "tls" if self.secure else "tcp"

    def _init_connection(self, secure: bool) -> None:
        self.secure = secure
        self._buffer = b""
        self._bucket: Optional[TokenBucket] = None

    # -- opening and closing -------------------------------------------------
    def _admit(self, ip: str) -> bool:
        """Take a slot for ``ip`` in the limiter shared by all listeners; refuse when over a limit."""
        self.ip = ip
        factory = self.factory
        # A WebIRC gateway carries many clients: its connections are rate-limited and counted per IP by the
        # client address WEBIRC gives (rebind_ip), and here only in the total (read live: a reload applies).
        gateway = bool(factory.server.config.webirc) and is_gateway_host(factory.server.config.webirc, ip)
        if not gateway and not factory.limiter.check_rate(factory.server, ip, factory.clock.seconds()):
            self._refuse(f"{ip} ({TOO_FAST})")
            return False
        reason = factory.limiter.acquire(ip, per_ip_exempt=gateway)
        if reason is not None:
            log_refusal(self.factory.server, ip, reason)
            self._refuse(reason)
            return False
        self._counted = True
        self._slot_exempt = gateway
        return True

    def rebind_ip(self, ip: str) -> Optional[str]:
        """WEBIRC named this connection's client: count it against ``ip`` (rate and per-IP limit) instead of the
        gateway's address, and take ``ip`` as its address; the refusal reason instead (logged and counted,
        nothing changed)."""
        factory = self.factory
        limiter = factory.limiter
        if not limiter.check_rate(factory.server, ip, factory.clock.seconds(), "WebIRC client"):
            return TOO_FAST
        if self._counted:
            reason = limiter.move(self.ip, ip, self._slot_exempt)
            if reason is not None:
                log_refusal(factory.server, ip, reason, "WebIRC client")
                return reason
        self.ip = ip
        self._slot_exempt = False
        return None

    def retune_flood(self, burst: int, rate: float) -> None:
        """A reload changed ``--flood-burst``/``--flood-rate``: apply them to this open connection (tokens held
        beyond the new burst are dropped)."""
        bucket = self._bucket
        if bucket is not None:
            bucket.burst, bucket.rate = float(burst), rate
            bucket.tokens = min(bucket.tokens, bucket.burst)

    def _start(self) -> None:
        """The connection is admitted: ask plugins, then create the model's user writing to ``_sink``."""
        factory = self.factory
        banned = factory.server.dline_refusal(self.ip)  # D-lines (freeq.core.bans: logged and counted there)
        if banned is not None:
            self._refuse(f"{self.ip} ({banned})")
            return
        reason = factory.server.check_connect(self.ip)
        if reason is not None:
            log.info("plugin refused connection from {ip}: {reason}", ip=self.ip, reason=reason)
            self._refuse(reason)
            return
        cfg = factory.config
        self._bucket = TokenBucket(cfg.flood_burst, cfg.flood_rate, factory.clock.seconds())
        # A pull producer is told each time the transport has sent everything (see the class docstring).
        self.transport.registerProducer(self, self._socket is None)
        self.user = factory.server.connect(self, self._write, self.ip)
        factory.server.metric("client_connects")
        log_connect(log, factory.server.config, self.ip, self.secure, self.transport_name)

    def _refuse(self, reason: str) -> None:
        self._closed = True
        self._sink(build_text(None, "ERROR", f"Closing Link: {reason}"))
        self._lose_with_grace()

    def _lose(self) -> None:
        """Close gracefully once what is written has been sent."""
        self.transport.loseConnection()

    def _lose_with_grace(self) -> None:
        """Close gracefully, and abort if the connection is still there after ``--close-grace`` seconds.

        A graceful close waits for the peer: to read what is queued (a client that stopped reading
        never does) or to finish a TLS handshake (one that never sent a ClientHello never does).
        """
        self._lose()
        if self._grace_call is None and not self._gone:
            self._grace_call = self.factory.clock.callLater(self.factory.config.close_grace, self._grace_expired)

    def _grace_expired(self) -> None:
        self._grace_call = None
        if self._gone:
            return
        log.info("connection from {ip} did not close within {grace} seconds; aborting", ip=self.ip,
                 grace=self.factory.config.close_grace)
        self.transport.abortConnection()

    def _teardown(self) -> None:
        """The transport is gone: free the limiter slot and remove the user from the model."""
        self._gone = True
        for call in (self._drain_call, self._grace_call):
            if call is not None and call.active():
                call.cancel()
        self._drain_call = self._grace_call = None
        self._pending = ()
        self._out = None
        self._socket = None
        if self._counted:
            self._counted = False
            self.factory.limiter.release(self.ip, self._slot_exempt)
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
        self.flush_output()  # what is buffered (the ERROR line last) goes out before the close
        if self._closed:
            return  # that was more than the send queue holds: the flush aborted the connection
        self._closed = True
        self._pending = ()
        if self.user is not None:
            self.user.write = _drop
        try:
            self.transport.unregisterProducer()
        except RuntimeError:
            pass
        self._lose_with_grace()

    # -- output: buffered per turn, a send queue bounded by --sendq-bytes -------
    def _write(self, data: bytes) -> None:
        """The byte sink the model writes to: buffer until this turn's flush."""
        out = self._out
        if out is None:
            self._out = [data]
            self.factory.flusher.mark(self)
        else:
            out.append(data)

    def flush_output(self) -> None:
        """Send what is buffered in one write (called by the :class:`OutputFlusher`, and by :meth:`close`)."""
        out = self._out
        if out is None:
            return
        self._out = None
        data = out[0] if len(out) == 1 else b"".join(out)
        sock = self._socket
        if sock is None:
            self._sink(data)
            return
        if not self._backlog:
            # The transport holds nothing, so nothing can overtake: one send() now instead of
            # registering for writability and sending on the next turn (two epoll_ctl and a turn).
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0  # EAGAIN, or a dead socket: the transport finds and reports the error itself
            if sent == len(data):
                return
            if sent:
                data = data[sent:]
        self._backlog += len(data)
        if self._backlog > self.factory.config.sendq_bytes:
            self._sendq_exceeded()
            return
        self._sink(data)

    def abort_output(self) -> None:
        """Writing failed unexpectedly: drop this connection (the model is told when it is lost)."""
        self._out = None
        self._closed = True
        if self.user is not None:
            self.user.write = _drop
        self.transport.abortConnection()

    def _sendq_exceeded(self) -> None:
        user = self.user
        log.warn("SendQ exceeded for {nick} from {ip}; dropping", nick=user.nick if user else "*", ip=self.ip)
        self._closed = True
        self._out = None
        if user is not None:
            user.write = _drop
        # Leave the model to _teardown: we may be inside a fan-out over this user's channels.
        self._lost_reason = "SendQ exceeded"
        self.transport.abortConnection()

    def pauseProducing(self) -> None:
        """The transport's buffer is full: count further bytes against the send queue."""
        if self._paused:
            return  # Twisted calls this on every write while the buffer stays full
        self._paused = True
        self._overflow = 0
        user = self.user
        if user is not None and user.write == self._write:
            user.write = self._queued_write

    def resumeProducing(self) -> None:
        """The transport drained (a pull producer hears this each time it has sent everything)."""
        self._paused = False
        self._overflow = 0
        self._backlog = 0
        user = self.user
        if user is not None and user.write == self._queued_write:
            user.write = self._write

    def stopProducing(self) -> None:
        pass

    def _queued_write(self, data: bytes) -> None:
        self._overflow += len(data)
        if self._overflow > self.factory.config.sendq_bytes:
            self._sendq_exceeded()
            return
        self._write(data)

    # -- input: framing --------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        """Split input into lines (bounded buffer, bare ``\\n`` accepted) and handle each."""
        if self._closed or self.user is None:
            return
        cfg = self.factory.config
        limit = cfg.max_line_bytes + cfg.max_tag_bytes + 2  # the longest line: '@', tag data, space, the rest
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
        # a long line of a multiline batch (checked once: a continuing line was let through before)
        if len(rest) > limit and (self._discarding or not (
                (start == 0 and len(self._buffer) > limit) or self._batch_room(rest, cfg))):
            if not self._discarding:
                self._too_long()
                self._discarding = True
            rest = b""
        self._buffer = rest

    def _batch_room(self, raw: bytes, cfg: Config) -> bool:
        """Whether a line over the usual bound (complete, or still arriving) may be longer: a ``PRIVMSG``/``NOTICE``
        of a ``draft/multiline`` batch its user has open, up to ``BATCH_LINE_BYTES`` after the tags (the freeq
        JavaScript SDK sends lines of up to 6400 bytes there; the batch's own limits bound the total). Only
        lines over the bound are parsed for this."""
        sp = raw.find(b" ")
        if raw[:1] != b"@" or sp < 0 or sp - 1 > cfg.max_tag_bytes or len(raw) - sp - 1 > BATCH_LINE_BYTES \
                or b"batch=" not in raw[:sp]:
            return False
        msg = parse(raw.decode("utf-8", "replace"))
        return msg is not None and msg.command in ("PRIVMSG", "NOTICE") and self._in_batch(msg)

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
            tag_len = sp if sp >= 0 else len(raw)  # with the '@'
            if (tag_len - 1 > cfg.max_tag_bytes or len(raw) - tag_len - 1 > cfg.max_line_bytes - 2) \
                    and not self._batch_room(raw, cfg):
                self._too_long()
                return
        elif len(raw) > cfg.max_line_bytes - 2:
            self._too_long()
            return
        if b"\x00" in raw or b"\r" in raw:
            raw = raw.replace(b"\x00", b"").replace(b"\r", b"")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._not_utf8(raw)
            return
        msg = parse(text)
        if msg is None:
            return
        if self._pending:
            self._queue(msg)
            return
        bucket = self._bucket
        if bucket is not None and msg.command not in FLOOD_EXEMPT and not self._flood_free(msg) \
                and not bucket.take(self.factory.clock.seconds()):
            self._queue(msg)
            return
        self._dispatch(msg)

    def _not_utf8(self, raw: bytes) -> None:
        """A line that is not UTF-8 (the server advertises ``UTF8ONLY``): never dispatched, answered with
        ``FAIL <command> INVALID_UTF8`` in its turn (it costs a flood token like any line)."""
        msg = parse(raw.decode("utf-8", "replace"))
        if msg is None:
            return
        refused = _NotUTF8(msg.command)
        bucket = self._bucket
        if self._pending or (bucket is not None and not bucket.take(self.factory.clock.seconds())):
            self._queue(refused)
            return
        self._refuse_not_utf8(refused)

    def _refuse_not_utf8(self, refused: "_NotUTF8") -> None:
        user = self.user
        if user is not None:
            user.write(build_text(self.factory.server.name, "FAIL", refused.name, "INVALID_UTF8",
                                  "Message rejected, your IRC software MUST use UTF-8 encoding on this network"))

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
    def _in_batch(self, msg: Any) -> bool:
        """Whether ``msg`` is a line (or the ``BATCH -``) of a ``draft/multiline`` batch its user has open. Lines
        without a ``batch`` tag, BATCH aside, skip the ask."""
        tags = msg.tags
        if not (tags and "batch" in tags) and msg.command != "BATCH":
            return False
        return self.factory.server.in_multiline_batch(self.user, msg)

    def _flood_free(self, msg: Any) -> bool:
        """Whether ``msg`` passes flood control without a token: the lines of an open multiline batch pay by
        size, one token per ``BATCH_TOKEN_BYTES`` of text (plus ``BATCH_LINE_OVERHEAD`` a line), not one a line
        (a 100-line batch would otherwise meet Excess Flood at line 61) and not nothing (one token would then
        buy 40 kB delivered to every member, enough to push readers over their send queue). ``BATCH +`` costs
        a token, ``BATCH -`` none. A line that has to wait for its token may be counted again when the queue
        retries it: that errs on the side of charging more."""
        if not self._in_batch(msg):
            return False
        if msg.command == "BATCH":
            return True
        params = msg.params
        spent = self._batch_bytes + BATCH_LINE_OVERHEAD + (len(params[-1]) if params else 0)
        if spent < BATCH_TOKEN_BYTES:
            self._batch_bytes = spent
            return True
        self._batch_bytes = spent - BATCH_TOKEN_BYTES
        return False

    def _queue(self, msg: Any) -> None:
        if not self._pending:
            self._pending = deque()
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
            if msg.command not in FLOOD_EXEMPT and bucket is not None and not self._flood_free(msg) \
                    and not bucket.take(clock.seconds()):
                self._schedule_drain()
                return
            self._pending.popleft()
            if msg.__class__ is _NotUTF8:
                self._refuse_not_utf8(msg)
            else:
                self._dispatch(msg)
        self._pending = ()  # drained (or closed): give the deque back
        if not self._closed:
            self.transport.resumeProducing()


class _NotUTF8:
    """A queued line that was not UTF-8: only its command word is kept, to name it in the ``FAIL``."""

    __slots__ = ("name", "command", "tags")

    def __init__(self, command: str) -> None:
        # Echo a plausible command word only: anything else from the undecodable line is named "*".
        ok = 0 < len(command) <= 32 and command.isascii() and command.isalnum()
        self.name = command if ok else "*"
        # Read like a Message's by the queue's checks: no command and no tags, so it always costs a token
        # (a "BATCH" that is not UTF-8 is not a line of a batch).
        self.command = ""
        self.tags = None


class IRCProtocol(ClientConnection, Protocol):
    """One client connection speaking IRC lines over TCP or TLS."""

    factory: "IRCFactory"
    #: A client here can reconnect to the TLS listener, so STS applies (not to WebSocket connections).
    sts_applies = True

    def __init__(self, secure: bool) -> None:
        self._init_connection(secure)

    def connectionMade(self) -> None:
        self._sink = self.transport.write
        # Plain TCP only: the TLS layer must never be bypassed. A TLS wrapper also claims
        # ITCPTransport, so both the listener's own flag and the handle's type are checked (under
        # TLS getHandle() is the OpenSSL connection, not a socket).
        if not self.secure and ITCPTransport.providedBy(self.transport):
            handle = cast(Any, self.transport).getHandle()  # ISystemHandle, also provided by TCP transports
            if isinstance(handle, socket.socket):
                self._socket = handle
        # Lines go out once per reactor turn already; Nagle would hold a small reply until the
        # client's delayed ACK (~40 ms) whenever an earlier segment is still unacknowledged.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)  # TLS passes it to the TCP transport
        if no_delay is not None:
            try:
                no_delay(True)
            except OSError:
                pass  # not a TCP socket (a UNIX socket)
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

    def __init__(self, server: IRCHandler, limiter: ConnectionLimiter, clock: Any, secure: bool = False,
                 reactor: Any = None, flusher: Optional[OutputFlusher] = None) -> None:
        self.server = server
        self.limiter = limiter
        self.clock = clock
        self.config = server.config
        self.secure = secure
        self.flusher = flusher if flusher is not None else OutputFlusher(reactor)

    def buildProtocol(self, addr: Any) -> IRCProtocol:  # type: ignore[override]
        proto = IRCProtocol(self.secure)
        proto.factory = self
        return proto
