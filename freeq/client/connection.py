"""The connection half of :class:`freeq.client.protocol.FreeqClient`: its state, line framing,
sending, dispatch of received lines to ``irc_<COMMAND>`` methods, and the server's case mapping."""
from __future__ import annotations

from typing import Any, Iterable, Optional

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from freeq.client.auth import Credential
from freeq.client.errors import ConnectionClosed, SASLFailed
from freeq.client.events import Event, OneShot
from freeq.client.model import AccountEvent, ChannelState, ChatMessage, JoinEvent, PartEvent, WhoisReply
from freeq.irc.parser import Message, build, parse

log = Logger()

#: Capabilities requested by default, when the server offers them.
DEFAULT_CAPS: tuple[str, ...] = (
    "message-tags", "server-time", "account-notify", "account-tag", "extended-join", "away-notify",
    "multi-prefix", "cap-notify",
    # Modern chat (issue #12): the SDK has helpers for each (freeq.client.multiline, edits, markers, history).
    "batch", "labeled-response", "draft/chathistory", "draft/multiline", "draft/message-redaction",
    "draft/read-marker", "draft/metadata-2", "extended-monitor",
)
#: (``echo-message`` is not requested by default: it changes what the server sends back; ask for it with
#: ``caps=DEFAULT_CAPS + ("echo-message",)`` to learn the msgids of one's own messages.)
#: Longest line accepted from the server (tags included) before the connection is dropped.
MAX_LINE_BYTES = 16384

_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_RFC1459_FOLD = str.maketrans("[]\\~", "{}|^")


def _safe_username(nick: str) -> str:
    name = "".join(ch for ch in nick if ch.isascii() and (ch.isalnum() or ch in "-_."))
    return (name or "freeq")[:10]


class ClientConnection(Protocol):
    """A client's state, framing, sending and dispatch; :class:`freeq.client.protocol.FreeqClient` adds
    capability negotiation, SASL, commands and what it makes of the server's lines (its parameters
    are documented there)."""

    def __init__(self, nick: str, *, username: Optional[str] = None, realname: str = "freeq sdk",
                 credential: Optional[Credential] = None, caps: Iterable[str] = DEFAULT_CAPS,
                 password: Optional[str] = None, guest_fallback: bool = False, auto_msgsig: bool = True,
                 clock: Any = None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock: Any = clock
        self.nick = nick
        self.username = username or _safe_username(nick)
        self.realname = realname
        self.credential = credential
        self.wanted_caps = tuple(caps)
        self.password = password
        self.guest_fallback = guest_fallback
        self.auto_msgsig = auto_msgsig
        #: Capabilities the server offers (name -> value) and those enabled on this connection.
        self.caps_available: dict[str, str] = {}
        self.caps: set[str] = set()
        self.isupport: dict[str, str] = {}
        self.server_name: Optional[str] = None
        #: The DID this connection is logged in as (``None``: guest).
        self.account: Optional[str] = None
        #: The ``API-BEARER`` token the server issued after login, if any.
        self.bearer_token: Optional[str] = None
        #: Why SASL failed (the 904 text), if it did.
        self.sasl_error: Optional[str] = None
        self.sasl_mechanisms: Optional[list[str]] = None
        self.session_key: Optional[ed25519.Ed25519PrivateKey] = None
        #: Whether the server accepted :attr:`session_key` (``MSGSIG OK``); outgoing messages are signed then.
        self.msgsig_active = False
        self.welcomed = False
        self.error_text: Optional[str] = None
        self.channels: dict[str, ChannelState] = {}
        #: Fires with the client after the welcome burst (end of MOTD); fails on SASL failure or disconnect.
        self._registered = OneShot()
        #: Fires (with ``None``) when the connection is gone.
        self._closed = OneShot()
        self.is_connected = False
        self.on_raw: Event[Message] = Event("raw", self.clock)
        self.on_message: Event[ChatMessage] = Event("message", self.clock)
        self.on_notice: Event[ChatMessage] = Event("notice", self.clock)
        self.on_join: Event[JoinEvent] = Event("join", self.clock)
        self.on_part: Event[PartEvent] = Event("part", self.clock)
        self.on_quit: Event[tuple[str, str]] = Event("quit", self.clock)
        self.on_nick: Event[tuple[str, str]] = Event("nick", self.clock)
        self.on_account: Event[AccountEvent] = Event("account", self.clock)
        self._events = (self.on_raw, self.on_message, self.on_notice, self.on_join, self.on_part, self.on_quit,
                        self.on_nick, self.on_account)
        self._buffer = b""
        self._ls_tokens: list[str] = []
        self._negotiating = False
        self._req_pending = 0
        self._req_split = False
        self._sasl_state = "idle"  # idle | authenticating | done | failed
        self._challenge_chunks: list[str] = []
        self._dpop_rounds = 0
        self._nick_retries = 0
        self._pending_joins: dict[str, list[defer.Deferred]] = {}
        self._pending_parts: dict[str, list[defer.Deferred]] = {}
        self._pending_nick: Optional[tuple[str, defer.Deferred]] = None
        self._pending_whois: dict[str, tuple[WhoisReply, defer.Deferred]] = {}
        self._quit_timer: Any = None

    @property
    def registered(self) -> defer.Deferred:
        """A new ``Deferred`` for the end of registration: fires with the client after the welcome burst
        (end of MOTD), fails with :class:`SASLFailed`, :class:`IRCError` or :class:`ConnectionClosed`."""
        return self._registered.when()

    @property
    def closed(self) -> defer.Deferred:
        """A new ``Deferred`` that fires (with ``None``) when the connection is gone."""
        return self._closed.when()

    # ------------------------------------------------------------------
    # Transport
    # ------------------------------------------------------------------
    def connectionMade(self) -> None:
        self.is_connected = True
        if self.password is not None:
            self.send("PASS", self.password)
        self._negotiating = True
        self.send("CAP", "LS", "302")
        self.send("NICK", self.nick)
        self.send("USER", self.username, "0", "*", self.realname)

    def dataReceived(self, data: bytes) -> None:
        buf = self._buffer + data
        while True:
            idx = buf.find(b"\n")
            if idx < 0:
                break
            raw, buf = buf[:idx], buf[idx + 1:]
            if len(raw) > MAX_LINE_BYTES:
                log.warn("dropping an over-long line from the server ({n} bytes)", n=len(raw))
                continue
            self._line(raw.rstrip(b"\r").decode("utf-8", "replace"))
            if not self.is_connected:
                return
        if len(buf) > MAX_LINE_BYTES:
            log.warn("server sent {n} bytes without a line end; closing", n=len(buf))
            buf = b""
            self._drop()
        self._buffer = buf

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.is_connected = False
        if self._quit_timer is not None and self._quit_timer.active():
            self._quit_timer.cancel()
        error = ConnectionClosed(self.error_text or "connection closed")
        if not self._registered.done:
            if self._sasl_state == "failed" and self.sasl_error:
                self._registered.fire(Failure(SASLFailed(self.sasl_error)))
            else:
                self._registered.fire(Failure(error))
        for waiting in list(self._pending_joins.values()) + list(self._pending_parts.values()):
            for d in waiting:
                d.errback(Failure(error))
        self._pending_joins.clear()
        self._pending_parts.clear()
        if self._pending_nick is not None:
            self._pending_nick[1].errback(Failure(error))
            self._pending_nick = None
        for _reply, d in self._pending_whois.values():
            d.errback(Failure(error))
        self._pending_whois.clear()
        for event in self._events:
            event.fail_waiters(error)
        self._closed.fire(None)

    def _line(self, text: str) -> None:
        msg = parse(text)
        if msg is None:
            return
        try:
            self._dispatch(msg)
        except Exception:
            # Our state may be inconsistent now: drop this connection rather than carry on.
            log.failure("failed to handle {line!r}; closing", line=text[:200])
            self._drop()
            return
        self.on_raw.fire(msg)

    # ------------------------------------------------------------------
    # Sending
    # ------------------------------------------------------------------
    def send(self, command: str, *params: str, tags: Optional[dict[str, str]] = None) -> None:
        """Send one command; the last parameter may contain spaces, the others may not.

        Raises ``ValueError`` for parameters that would break the line (CR, LF, NUL; a space or a
        leading ``:`` in a middle parameter; an empty middle parameter).
        """
        for i, p in enumerate(params):
            if any(c in p for c in "\r\n\0"):
                raise ValueError("IRC parameters cannot contain CR, LF or NUL")
            if i < len(params) - 1 and (not p or " " in p or p.startswith(":")):
                raise ValueError(f"middle parameter {p!r} must be one non-empty word")
        self._write(build(None, command, *params, tags=tags))

    def raw(self, line: str) -> None:
        """Send ``line`` verbatim (CRLF added); raises ``ValueError`` if it contains CR, LF or NUL."""
        if any(c in line for c in "\r\n\0"):
            raise ValueError("a raw line cannot contain CR, LF or NUL")
        self._write(line.encode("utf-8") + b"\r\n")

    def _write(self, data: bytes) -> None:
        transport: Any = self.transport
        if transport is None or not self.is_connected:
            raise ConnectionClosed("not connected")
        transport.write(data)

    def _drop(self) -> None:
        transport: Any = self.transport
        if transport is not None and self.is_connected:
            transport.loseConnection()

    # ------------------------------------------------------------------
    # Dispatch
    # ------------------------------------------------------------------
    def _dispatch(self, msg: Message) -> None:
        handler = getattr(self, "irc_" + msg.command, None)
        if handler is not None:
            handler(msg)
        elif msg.command.isdigit() and len(msg.command) == 3:
            self._numeric(msg)

    def irc_PING(self, msg: Message) -> None:
        self.send("PONG", msg.params[0] if msg.params else "")

    def irc_ERROR(self, msg: Message) -> None:
        self.error_text = msg.params[0] if msg.params else "ERROR"
        log.info("server closed the connection: {text}", text=self.error_text)

    def _numeric(self, msg: Message) -> None:
        """A numeric reply (three digits) with no ``irc_`` method; :class:`FreeqClient` reads them."""

    # ------------------------------------------------------------------
    # The server's conventions (ISUPPORT)
    # ------------------------------------------------------------------
    def fold(self, name: str) -> str:
        """Case-fold a nick or channel name with the server's ``CASEMAPPING``."""
        folded = name.lower() if self.isupport.get("CASEMAPPING") == "unicode" else name.translate(_ASCII_FOLD)
        if self.isupport.get("CASEMAPPING", "ascii") in ("rfc1459", "strict-rfc1459"):
            folded = folded.translate(_RFC1459_FOLD)
        return folded

    def is_me(self, nick: str) -> bool:
        """Whether ``nick`` is this client's current nick."""
        return self.fold(nick) == self.fold(self.nick)

    def _prefix_symbols(self) -> str:
        prefix = self.isupport.get("PREFIX", "(ov)@+")
        return prefix.partition(")")[2] or "@+"

    def _prefix_modes(self) -> dict[str, str]:
        prefix = self.isupport.get("PREFIX", "(ov)@+")
        letters, _, symbols = prefix[1:].partition(")")
        return dict(zip(letters, symbols))

