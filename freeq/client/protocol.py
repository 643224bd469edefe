"""A Twisted IRC client for freeq: capability negotiation, SASL ``ATPROTO-CHALLENGE``, events, commands.

:class:`FreeqClient` is one connection. It frames and parses lines (with
:func:`freeq.irc.parser.parse`), negotiates IRCv3 capabilities (``CAP LS 302``, then a ``CAP REQ``
for the wanted ones the server offers), authenticates with a :class:`freeq.client.auth.Credential`
(chunked ``AUTHENTICATE``, DPoP nonce retries), registers, answers ``PING``, and after a
successful login registers a fresh Ed25519 session key with ``MSGSIG`` so its own ``PRIVMSG``\\s
carry a ``+freeq.at/sig`` it made itself.

What happens is published as :class:`Event`\\s (``client.on_message.add(callback)`` or
``await client.on_message.wait(predicate)``); commands are methods (:meth:`FreeqClient.join`,
:meth:`FreeqClient.say`, …), those with an answer return a ``Deferred``.

Behaviour on SASL failure: a token credential (``pds-session``, ``pds-oauth``) never becomes a
guest silently — :attr:`FreeqClient.registered` fails with :class:`SASLFailed` and the client
quits; a signer (``crypto``) does the same unless ``guest_fallback=True``, in which case it ends
capability negotiation and continues as a guest.
"""
from __future__ import annotations

import calendar
import time as _time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Optional, TypeVar

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from freeq.client.auth import MECHANISM, Credential, b64url, b64url_decode, chunk_payload
from freeq.irc.parser import Message, build, parse
from freeq.signing import SIG_TAG, canonical, verify as verify_signature

log = Logger()

T = TypeVar("T")

#: Capabilities requested by default, when the server offers them.
DEFAULT_CAPS: tuple[str, ...] = (
    "message-tags", "server-time", "account-notify", "account-tag", "extended-join", "away-notify",
    "multi-prefix", "cap-notify",
)
#: Longest line accepted from the server (tags included) before the connection is dropped.
MAX_LINE_BYTES = 16384
#: How many ``DPOP_NONCE`` rounds one exchange may take before the client gives up.
MAX_DPOP_ROUNDS = 5
#: How many times a refused nick is retried with ``_`` appended during registration.
MAX_NICK_RETRIES = 5

_JOIN_ERRORS = frozenset({"403", "405", "437", "471", "473", "474", "475", "476", "477", "479", "489"})
_NICK_ERRORS = frozenset({"431", "432", "433", "436", "437"})


class ClientError(Exception):
    """Base class of the SDK's errors."""


class SASLFailed(ClientError):
    """Authentication did not succeed (904/905/906, no SASL offered, or too many DPoP rounds)."""

    def __init__(self, reason: str, numeric: Optional[str] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.numeric = numeric


class IRCError(ClientError):
    """The server refused a command with an error numeric (e.g. 474 for a banned JOIN)."""

    def __init__(self, numeric: str, params: list[str]) -> None:
        super().__init__(f"{numeric} {' '.join(params[1:])}")
        self.numeric = numeric
        self.params = params


class ConnectionClosed(ClientError):
    """The connection ended (``text`` is the server's ``ERROR`` line, if it sent one)."""

    def __init__(self, text: str = "connection closed") -> None:
        super().__init__(text)
        self.text = text


class OneShot:
    """A result that arrives once and that any number of Deferreds can observe, before or after.

    A failure nobody asked for is not reported as an unhandled error.
    """

    def __init__(self) -> None:
        self.done = False
        self._result: Any = None
        self._waiters: list[defer.Deferred] = []

    def fire(self, result: Any) -> None:
        """Set the result (a value or a ``Failure``); later calls are ignored."""
        if self.done:
            return
        self.done = True
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def when(self) -> defer.Deferred:
        """A ``Deferred`` for the result."""
        if self.done:
            return defer.fail(self._result) if isinstance(self._result, Failure) else defer.succeed(self._result)
        d: defer.Deferred = defer.Deferred(lambda _d: self._waiters.remove(_d) if _d in self._waiters else None)
        self._waiters.append(d)
        return d


class Event(Generic[T]):
    """A named happening: callbacks are called with each value, waiters get the first match.

    ``event.add(cb)`` (also usable as a decorator) subscribes; ``event.wait(pred, timeout)``
    returns a ``Deferred`` for the next value ``pred`` accepts. A callback that raises is logged
    and does not stop the others or the connection.
    """

    def __init__(self, name: str, clock: Any) -> None:
        self.name = name
        self._clock = clock
        self._callbacks: list[Callable[[T], Any]] = []
        self._waiters: list[tuple[Callable[[T], bool], defer.Deferred]] = []

    def add(self, callback: Callable[[T], Any]) -> Callable[[T], Any]:
        """Call ``callback(value)`` for every value from now on; returns ``callback``."""
        self._callbacks.append(callback)
        return callback

    __call__ = add

    def remove(self, callback: Callable[[T], Any]) -> None:
        """Stop calling ``callback``."""
        self._callbacks.remove(callback)

    def wait(self, predicate: Optional[Callable[[T], bool]] = None, timeout: Optional[float] = 10.0) -> defer.Deferred:
        """A ``Deferred`` that fires with the next value ``predicate`` accepts (any, if omitted).

        It fails with ``twisted.internet.defer.TimeoutError`` after ``timeout`` seconds (``None``:
        wait for ever), and with :class:`ConnectionClosed` if the connection ends first.
        """
        d: defer.Deferred = defer.Deferred(lambda _d: self._drop(_d))
        self._waiters.append((predicate or (lambda _v: True), d))
        if timeout is not None:
            d.addTimeout(timeout, self._clock)
        return d

    def _drop(self, d: defer.Deferred) -> None:
        self._waiters = [(p, w) for p, w in self._waiters if w is not d]

    def fire(self, value: T) -> None:
        """Deliver ``value`` to the callbacks and the matching waiters."""
        for callback in list(self._callbacks):
            try:
                callback(value)
            except Exception:
                log.failure("{event} callback failed", event=self.name)
        for entry in list(self._waiters):
            predicate, d = entry
            try:
                ok = predicate(value)
            except Exception:
                log.failure("{event} wait predicate failed", event=self.name)
                ok = False
            if ok and entry in self._waiters:
                self._waiters.remove(entry)
                d.callback(value)

    def fail_waiters(self, reason: Exception) -> None:
        """Fail every pending waiter (the connection is gone)."""
        waiters, self._waiters = self._waiters, []
        for _pred, d in waiters:
            d.errback(Failure(reason))


def split_prefix(source: Optional[str]) -> tuple[str, str, str]:
    """``nick!user@host`` → ``(nick, user, host)`` (missing parts are ``""``)."""
    if not source:
        return "", "", ""
    nick, _, rest = source.partition("!")
    user, _, host = rest.partition("@")
    if not rest and "@" in nick:
        nick, _, host = nick.partition("@")
    return nick, user, host


def parse_server_time(value: Optional[str]) -> Optional[float]:
    """The Unix time of an IRCv3 ``time`` tag (``YYYY-MM-DDTHH:MM:SS.sssZ``), or ``None``."""
    if not value:
        return None
    try:
        head, _, frac = value.rstrip("Z").partition(".")
        secs = calendar.timegm(_time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        return secs + (float("0." + frac) if frac.isdigit() else 0.0)
    except ValueError:
        return None


@dataclass
class ChatMessage:
    """A ``PRIVMSG`` or ``NOTICE`` as received, with the tags freeq attaches surfaced."""

    command: str
    source: str
    nick: str
    target: str
    text: str
    tags: dict[str, str]
    #: The channel, or the sender's nick for a private message: where a reply goes.
    reply_to: str
    #: Whether the message is our own (``echo-message``).
    own: bool = False

    @property
    def msgid(self) -> Optional[str]:
        """The server's message id (``msgid`` tag)."""
        return self.tags.get("msgid")

    @property
    def time(self) -> Optional[str]:
        """The server's receive time (``time`` tag, ``server-time`` cap)."""
        return self.tags.get("time")

    @property
    def account(self) -> Optional[str]:
        """The sender's DID (``account`` tag, ``account-tag`` cap); ``None`` for guests."""
        return self.tags.get("account")

    @property
    def signature(self) -> Optional[str]:
        """The ``+freeq.at/sig`` value, if any."""
        return self.tags.get(SIG_TAG)

    @property
    def is_channel(self) -> bool:
        """Whether it was sent to a channel."""
        name = self.target.lstrip("@+%~&")[:1] or self.target[:1]
        return name != "" and name in "#&"

    def verify(self, public_key: bytes) -> bool:
        """Whether :attr:`signature` is valid under ``public_key`` (a 32-byte Ed25519 key: the server's
        message-signing key or the sender's ``MSGSIG`` key).

        Needs the ``account`` and ``time`` tags (caps ``message-tags``, ``account-tag`` and
        ``server-time``); the target is tried as received and lower-cased (the server signs
        channel names normalised).
        """
        sig, did, when = self.signature, self.account, parse_server_time(self.time)
        if not sig or not did or when is None:
            return False
        second = int(when)
        bare = self.target.lstrip("@+") if self.is_channel else self.target
        targets = dict.fromkeys([self.target, bare.lower()])
        return any(verify_signature(public_key, sig, did, t, self.text, second) for t in targets)


@dataclass
class JoinEvent:
    """Someone (maybe us) joined a channel; ``account`` is the DID from ``extended-join`` (else ``None``)."""

    nick: str
    source: str
    channel: str
    account: Optional[str] = None
    realname: Optional[str] = None
    own: bool = False


@dataclass
class PartEvent:
    """Someone (maybe us) left a channel: ``PART`` or, with ``kicked_by``, ``KICK``."""

    nick: str
    source: str
    channel: str
    reason: Optional[str] = None
    own: bool = False
    kicked_by: Optional[str] = None


@dataclass
class AccountEvent:
    """``account-notify``: ``nick`` is now logged in as ``account`` (``None``: logged out)."""

    nick: str
    account: Optional[str]


@dataclass
class ChannelState:
    """What the client knows of a channel it is in: members with their status prefixes, topic."""

    name: str
    members: dict[str, str] = field(default_factory=dict)  # nick -> prefix characters ("@", "+", "")
    topic: Optional[str] = None


@dataclass
class WhoisReply:
    """The collected answer to :meth:`FreeqClient.whois`."""

    nick: str
    found: bool = False
    user: Optional[str] = None
    host: Optional[str] = None
    realname: Optional[str] = None
    server: Optional[str] = None
    account: Optional[str] = None
    channels: list[str] = field(default_factory=list)
    lines: list[Message] = field(default_factory=list)


class FreeqClient(Protocol):
    """One IRC connection to a freeq (or any IRCv3) server.

    :param nick: the nick to register with (``_`` is appended if it is refused during registration;
        the server may also rename a guest whose nick belongs to a DID).
    :param credential: authenticate with SASL ``ATPROTO-CHALLENGE`` (else register as a guest).
    :param caps: capabilities to request when offered (``sasl`` is added when authenticating).
    :param guest_fallback: a refused *signer* continues as a guest instead of failing.
    :param auto_msgsig: after a login, register a fresh Ed25519 session key with ``MSGSIG`` and sign
        outgoing ``PRIVMSG``/``NOTICE`` with it.
    :param clock: the reactor (time source for timeouts and signatures).
    """

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
    # Commands
    # ------------------------------------------------------------------
    def join(self, channel: str, key: Optional[str] = None) -> defer.Deferred:
        """Join ``channel``; fires with its :class:`ChannelState` once the names list is complete,
        fails with :class:`IRCError` if the server refuses (e.g. 474 banned, 475 bad key)."""
        if self.fold(channel) in self.channels:
            return defer.succeed(self.channels[self.fold(channel)])
        d: defer.Deferred = defer.Deferred()
        self._pending_joins.setdefault(self.fold(channel), []).append(d)
        if key is None:
            self.send("JOIN", channel)
        else:
            self.send("JOIN", channel, key)
        return d

    def part(self, channel: str, reason: Optional[str] = None) -> defer.Deferred:
        """Leave ``channel``; fires with the :class:`PartEvent` (or fails with :class:`IRCError`)."""
        d: defer.Deferred = defer.Deferred()
        self._pending_parts.setdefault(self.fold(channel), []).append(d)
        if reason:
            self.send("PART", channel, reason)
        else:
            self.send("PART", channel)
        return d

    def say(self, target: str, text: str) -> None:
        """``PRIVMSG`` ``text`` to a channel or nick (one message per line of ``text``), signed with the
        session key when ``MSGSIG`` was accepted."""
        self._chat("PRIVMSG", target, text)

    def notice(self, target: str, text: str) -> None:
        """``NOTICE`` ``text`` to a channel or nick (signed like :meth:`say`)."""
        self._chat("NOTICE", target, text)

    def _chat(self, command: str, target: str, text: str) -> None:
        for line in text.replace("\r\n", "\n").split("\n"):
            if not line:
                continue
            tags = None
            sig = self.sign(target, line)
            if sig is not None:
                tags = {SIG_TAG: sig}
            self.send(command, target, line, tags=tags)

    def sign(self, target: str, text: str, timestamp: Optional[float] = None) -> Optional[str]:
        """The ``+freeq.at/sig`` value for ``text`` to ``target`` (``None`` when not signing): Ed25519 over
        ``did \\0 target \\0 text \\0 unix-seconds`` with the session key, where a channel target is
        case-folded without its status prefix (the server's canonical form) and a nick is as typed."""
        if not (self.msgsig_active and self.session_key is not None and self.account
                and "message-tags" in self.caps):
            return None
        second = int(self.clock.seconds() if timestamp is None else timestamp)
        return b64url(self.session_key.sign(canonical(self.account, self.canonical_target(target), text, second)))

    def canonical_target(self, target: str) -> str:
        """The target as it is signed: a channel (status prefix removed) case-folded, a nick unchanged."""
        name = target.lstrip(self._prefix_symbols()) if len(target) > 1 else target
        if name[:1] and name[0] in self.isupport.get("CHANTYPES", "#&"):
            return self.fold(name)
        return target

    @property
    def session_public_key(self) -> Optional[bytes]:
        """The raw 32-byte public half of :attr:`session_key`."""
        if self.session_key is None:
            return None
        return self.session_key.public_key().public_bytes_raw()

    def change_nick(self, nick: str) -> defer.Deferred:
        """``NICK``; fires with the new nick when the server confirms, fails with :class:`IRCError` (e.g. 433)."""
        if self._pending_nick is not None:
            return defer.fail(ClientError("a nick change is already in progress"))
        d: defer.Deferred = defer.Deferred()
        self._pending_nick = (nick, d)
        self.send("NICK", nick)
        return d

    def whois(self, nick: str) -> defer.Deferred:
        """``WHOIS``; fires with a :class:`WhoisReply` at 318 (``found`` false after 401)."""
        key = self.fold(nick)
        if key in self._pending_whois:
            return defer.fail(ClientError(f"a WHOIS for {nick} is already in progress"))
        d: defer.Deferred = defer.Deferred()
        self._pending_whois[key] = (WhoisReply(nick), d)
        self.send("WHOIS", nick)
        return d

    def quit(self, reason: str = "Leaving", timeout: float = 5.0) -> defer.Deferred:
        """``QUIT``; fires when the connection is closed (closed by us after ``timeout`` seconds)."""
        if self.is_connected:
            self.send("QUIT", reason)
            self._quit_timer = self.clock.callLater(timeout, self._force_close)
        return self.closed

    def _force_close(self) -> None:
        self._drop()

    def fold(self, name: str) -> str:
        """Case-fold a nick or channel name with the server's ``CASEMAPPING``."""
        folded = name.lower() if self.isupport.get("CASEMAPPING") == "unicode" else name.translate(_ASCII_FOLD)
        if self.isupport.get("CASEMAPPING", "ascii") in ("rfc1459", "strict-rfc1459"):
            folded = folded.translate(_RFC1459_FOLD)
        return folded

    def is_me(self, nick: str) -> bool:
        """Whether ``nick`` is this client's current nick."""
        return self.fold(nick) == self.fold(self.nick)

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

    def irc_CAP(self, msg: Message) -> None:
        if len(msg.params) < 3:
            return
        sub = msg.params[1].upper()
        if sub == "LS":
            more = len(msg.params) >= 4 and msg.params[2] == "*"
            self._ls_tokens.extend(msg.params[-1].split())
            if not more:
                self._cap_ls_done()
        elif sub in ("ACK", "NAK"):
            names = msg.params[-1].split()
            if sub == "ACK":
                for name in names:
                    if name.startswith("-"):
                        self.caps.discard(name[1:])
                    else:
                        self.caps.add(name)
            if self._req_pending <= 0:
                return
            self._req_pending -= 1
            if sub == "NAK" and not self._req_split and len(names) > 1:
                # Some cap in the batch was refused: ask for each alone rather than lose them all.
                self._req_split = True
                self._req_pending = len(names)
                for name in names:
                    self.send("CAP", "REQ", name)
                return
            if self._req_pending == 0:
                self._caps_negotiated()
        elif sub == "NEW":
            for token in msg.params[-1].split():
                name, _, value = token.partition("=")
                self.caps_available[name] = value
        elif sub == "DEL":
            for name in msg.params[-1].split():
                self.caps_available.pop(name, None)
                self.caps.discard(name)

    def _cap_ls_done(self) -> None:
        tokens, self._ls_tokens = self._ls_tokens, []
        for token in tokens:
            name, _, value = token.partition("=")
            self.caps_available[name] = value
        if not self._negotiating or self.welcomed:
            return
        wanted = [c for c in self.wanted_caps if c in self.caps_available and c != "sasl"]
        if self.credential is not None and self._sasl_offered():
            wanted.append("sasl")
        if not wanted:
            self._caps_negotiated()
            return
        self._req_pending = 1
        self.send("CAP", "REQ", " ".join(wanted))

    def _sasl_offered(self) -> bool:
        if "sasl" not in self.caps_available:
            return False
        value = self.caps_available["sasl"]
        return not value or MECHANISM in value.upper().split(",")

    def _caps_negotiated(self) -> None:
        if self.credential is None:
            self._end_negotiation()
        elif "sasl" in self.caps:
            self._start_sasl()
        else:
            self._sasl_failed("server does not offer SASL " + MECHANISM, None)

    def _end_negotiation(self) -> None:
        if self._negotiating:
            self._negotiating = False
            if not self.welcomed:
                self.send("CAP", "END")

    # ------------------------------------------------------------------
    # SASL
    # ------------------------------------------------------------------
    def _start_sasl(self) -> None:
        self._sasl_state = "authenticating"
        self._challenge_chunks = []
        self._dpop_rounds = 0
        self.send("AUTHENTICATE", MECHANISM)

    def irc_AUTHENTICATE(self, msg: Message) -> None:
        if self._sasl_state != "authenticating" or not msg.params or self.credential is None:
            return
        chunk = msg.params[0]
        if chunk != "+":
            self._challenge_chunks.append(chunk)
            if len(chunk) == 400:
                return  # more to come (or a "+")
        data, self._challenge_chunks = "".join(self._challenge_chunks), []
        try:
            challenge = b64url_decode(data)
        except ValueError:
            self.sasl_error = "server sent an undecodable challenge"
            self.send("AUTHENTICATE", "*")
            return
        for piece in chunk_payload(self.credential.payload(challenge)):
            self.send("AUTHENTICATE", piece)

    def _sasl_notice(self, text: str) -> bool:
        """Handle the DPoP nonce relay; returns whether the notice was consumed."""
        if self._sasl_state != "authenticating" or not text.startswith("DPOP_NONCE "):
            return False
        nonce = text[len("DPOP_NONCE "):].strip()
        self._dpop_rounds += 1
        if self._dpop_rounds > MAX_DPOP_ROUNDS:
            self.sasl_error = "too many DPoP nonce rounds"
            self.send("AUTHENTICATE", "*")
            return True
        if self.credential is not None and nonce:
            self.credential.dpop_nonce(nonce)
        return True

    def _sasl_failed(self, reason: str, numeric: Optional[str]) -> None:
        self._sasl_state = "failed"
        self.sasl_error = reason
        cred = self.credential
        if cred is not None and not cred.is_token and self.guest_fallback:
            log.info("SASL failed ({reason}); continuing as a guest", reason=reason)
            self._end_negotiation()
            return
        log.info("SASL failed: {reason}", reason=reason)
        self._registered.fire(Failure(SASLFailed(reason, numeric)))
        if self.is_connected:
            self.quit("Authentication failed")

    def _sasl_numeric(self, code: str, msg: Message) -> None:
        text = msg.params[-1] if msg.params else ""
        if code == "900":
            did = msg.params[2] if len(msg.params) > 3 else ""
            self.account = did if did.startswith("did:") else (self.credential.did if self.credential else did)
        elif code == "901":
            self.account = None
        elif code == "903":
            self._sasl_state = "done"
            if self.account is None and self.credential is not None:
                self.account = self.credential.did
            self._end_negotiation()
            if self.welcomed:
                self._register_session_key()
        elif code in ("902", "904", "905", "906"):
            if self._sasl_state == "authenticating":
                self._sasl_failed(self.sasl_error if code == "906" and self.sasl_error else text, code)
        elif code == "907":
            if self._sasl_state == "authenticating":
                self._sasl_state = "done"
                self._end_negotiation()
        elif code == "908":
            self.sasl_mechanisms = msg.params[1].split(",") if len(msg.params) > 2 else []

    def _register_session_key(self) -> None:
        if not self.auto_msgsig or not self.account or self.session_key is not None:
            return
        self.session_key = ed25519.Ed25519PrivateKey.generate()
        self.send("MSGSIG", b64url(self.session_public_key or b""))

    def irc_MSGSIG(self, msg: Message) -> None:
        if msg.params and msg.params[0].upper() == "OK" and self.session_key is not None:
            self.msgsig_active = True

    def irc_FAIL(self, msg: Message) -> None:
        if msg.params and msg.params[0].upper() == "MSGSIG":
            log.info("server refused the MSGSIG session key: {text}", text=msg.params[-1])
            self.msgsig_active = False

    # ------------------------------------------------------------------
    # Numerics
    # ------------------------------------------------------------------
    def _numeric(self, msg: Message) -> None:
        code = msg.command
        p = msg.params
        if code.startswith("90"):
            self._sasl_numeric(code, msg)
        elif code == "001":
            self.welcomed = True
            self._negotiating = False
            if p:
                self.nick = p[0]
            self.server_name = msg.source
            if self._sasl_state == "done":
                self._register_session_key()
        elif code == "005":
            for token in p[1:-1]:
                name, _, value = token.partition("=")
                if name.startswith("-"):
                    self.isupport.pop(name[1:], None)
                else:
                    self.isupport[name] = value
        elif code in ("376", "422"):
            if self.credential is not None and self.account is None and self._sasl_state != "failed" \
                    and not self._registered.done:
                # Never a silent guest: the server skipped SASL (no CAP support, or it registered us anyway).
                self._sasl_failed("the server completed registration without SASL", None)
            self._registered.fire(self)
        elif code in _NICK_ERRORS:
            self._nick_error(msg)
        elif code in _JOIN_ERRORS and len(p) > 1:
            self._fail_pending(self._pending_joins, p[1], IRCError(code, p))
        elif code == "442" and len(p) > 1:
            self._fail_pending(self._pending_parts, p[1], IRCError(code, p))
        elif code == "332" and len(p) > 2:
            state = self.channels.get(self.fold(p[1]))
            if state is not None:
                state.topic = p[2]
        elif code == "353" and len(p) > 3:
            state = self.channels.get(self.fold(p[2]))
            if state is not None:
                prefixes = self._prefix_symbols()
                for item in p[3].split():
                    i = 0
                    while i < len(item) and item[i] in prefixes:
                        i += 1
                    nick = item[i:].split("!", 1)[0]
                    state.members[nick] = item[:i]
        elif code == "366" and len(p) > 1:
            key = self.fold(p[1])
            state = self.channels.get(key)
            if state is not None:
                for d in self._pending_joins.pop(key, []):
                    d.callback(state)
        self._whois_numeric(code, msg)

    def _fail_pending(self, table: dict[str, list[defer.Deferred]], name: str, error: Exception) -> None:
        waiting = table.get(self.fold(name))
        if waiting:
            d = waiting.pop(0)
            if not waiting:
                del table[self.fold(name)]
            d.errback(Failure(error))

    def _nick_error(self, msg: Message) -> None:
        if self._pending_nick is not None:
            _nick, d = self._pending_nick
            self._pending_nick = None
            d.errback(Failure(IRCError(msg.command, msg.params)))
            return
        if self.welcomed:
            return
        if self._nick_retries >= MAX_NICK_RETRIES:
            self._registered.fire(Failure(IRCError(msg.command, msg.params)))
            self.quit("No usable nick")
            return
        self._nick_retries += 1
        self.nick = (self.nick + "_")[-64:]
        self.send("NICK", self.nick)

    def _whois_numeric(self, code: str, msg: Message) -> None:
        p = msg.params
        if len(p) < 2 or not self._pending_whois:
            return
        entry = self._pending_whois.get(self.fold(p[1]))
        if entry is None:
            return
        reply, d = entry
        reply.lines.append(msg)
        if code == "311" and len(p) > 5:
            reply.found = True
            reply.user, reply.host, reply.realname = p[2], p[3], p[-1]
        elif code == "312" and len(p) > 2:
            reply.server = p[2]
        elif code == "330" and len(p) > 2:
            reply.account = p[2]
        elif code == "319" and len(p) > 2:
            reply.channels.extend(p[2].split())
        elif code == "318":
            del self._pending_whois[self.fold(p[1])]
            d.callback(reply)

    def _prefix_symbols(self) -> str:
        prefix = self.isupport.get("PREFIX", "(ov)@+")
        return prefix.partition(")")[2] or "@+"

    def _prefix_modes(self) -> dict[str, str]:
        prefix = self.isupport.get("PREFIX", "(ov)@+")
        letters, _, symbols = prefix[1:].partition(")")
        return dict(zip(letters, symbols))

    # ------------------------------------------------------------------
    # Messages and membership
    # ------------------------------------------------------------------
    def irc_NOTICE(self, msg: Message) -> None:
        text = msg.params[-1] if len(msg.params) > 1 else ""
        if self._sasl_notice(text):
            return
        if text.startswith("API-BEARER ") and (msg.source is None or "!" not in msg.source):
            self.bearer_token = text.split(" ", 1)[1].strip() or None
            return
        self._chat_in("NOTICE", msg, self.on_notice)

    def irc_PRIVMSG(self, msg: Message) -> None:
        self._chat_in("PRIVMSG", msg, self.on_message)

    def _chat_in(self, command: str, msg: Message, event: "Event[ChatMessage]") -> None:
        if len(msg.params) < 2:
            return
        nick, _user, _host = split_prefix(msg.source)
        target = msg.params[0]
        own = bool(nick) and self.is_me(nick)
        channel = target.lstrip(self._prefix_symbols())
        if channel[:1] and channel[0] in "#&":
            reply_to = channel
        else:
            reply_to = target if own else nick
        event.fire(ChatMessage(command, msg.source or "", nick, target, msg.params[1], dict(msg.tags or {}),
                               reply_to, own))

    def irc_JOIN(self, msg: Message) -> None:
        if not msg.params:
            return
        nick, _u, _h = split_prefix(msg.source)
        channel = msg.params[0]
        account = realname = None
        if len(msg.params) >= 3:  # extended-join: JOIN <channel> <account|*> :<realname>
            account = None if msg.params[1] == "*" else msg.params[1]
            realname = msg.params[2]
        elif msg.tags and "account" in msg.tags:
            account = msg.tags["account"]
        own = self.is_me(nick)
        key = self.fold(channel)
        if own:
            self.channels[key] = ChannelState(channel)
        state = self.channels.get(key)
        if state is not None:
            state.members[nick] = ""
        self.on_join.fire(JoinEvent(nick, msg.source or "", channel, account, realname, own))

    def irc_PART(self, msg: Message) -> None:
        if not msg.params:
            return
        nick, _u, _h = split_prefix(msg.source)
        channel = msg.params[0]
        own = self.is_me(nick)
        event = PartEvent(nick, msg.source or "", channel, msg.params[1] if len(msg.params) > 1 else None, own)
        self._left(channel, nick, own)
        if own:
            waiting = self._pending_parts.get(self.fold(channel))
            if waiting:
                d = waiting.pop(0)
                if not waiting:
                    del self._pending_parts[self.fold(channel)]
                d.callback(event)
        self.on_part.fire(event)

    def irc_KICK(self, msg: Message) -> None:
        if len(msg.params) < 2:
            return
        kicker, _u, _h = split_prefix(msg.source)
        channel, nick = msg.params[0], msg.params[1]
        own = self.is_me(nick)
        self._left(channel, nick, own)
        self.on_part.fire(PartEvent(nick, msg.source or "", channel, msg.params[2] if len(msg.params) > 2 else None,
                                    own, kicked_by=kicker))

    def _left(self, channel: str, nick: str, own: bool) -> None:
        key = self.fold(channel)
        if own:
            self.channels.pop(key, None)
            return
        state = self.channels.get(key)
        if state is not None:
            for member in list(state.members):
                if self.fold(member) == self.fold(nick):
                    del state.members[member]

    def irc_QUIT(self, msg: Message) -> None:
        nick, _u, _h = split_prefix(msg.source)
        for state in self.channels.values():
            for member in list(state.members):
                if self.fold(member) == self.fold(nick):
                    del state.members[member]
        self.on_quit.fire((nick, msg.params[0] if msg.params else ""))

    def irc_NICK(self, msg: Message) -> None:
        if not msg.params:
            return
        old, _u, _h = split_prefix(msg.source)
        new = msg.params[0]
        if self.is_me(old):
            self.nick = new
            if self._pending_nick is not None and self.fold(self._pending_nick[0]) == self.fold(new):
                d = self._pending_nick[1]
                self._pending_nick = None
                d.callback(new)
        for state in self.channels.values():
            for member in list(state.members):
                if self.fold(member) == self.fold(old):
                    state.members[new] = state.members.pop(member)
        self.on_nick.fire((old, new))

    def irc_ACCOUNT(self, msg: Message) -> None:
        if not msg.params:
            return
        nick, _u, _h = split_prefix(msg.source)
        account = None if msg.params[0] == "*" else msg.params[0]
        self.on_account.fire(AccountEvent(nick, account))

    def irc_MODE(self, msg: Message) -> None:
        if len(msg.params) < 2 or not msg.params[0] or msg.params[0][0] not in "#&":
            return
        state = self.channels.get(self.fold(msg.params[0]))
        if state is None:
            return
        prefix_modes = self._prefix_modes()
        chanmodes = self.isupport.get("CHANMODES", "beI,k,l,imnpst").split(",")
        always_arg = set("".join(chanmodes[:2])) | set(prefix_modes)
        set_arg = set(chanmodes[2]) if len(chanmodes) > 2 else set()
        args = list(msg.params[2:])
        adding = True
        for ch in msg.params[1]:
            if ch in "+-":
                adding = ch == "+"
                continue
            if ch in always_arg or (adding and ch in set_arg):
                arg = args.pop(0) if args else ""
                if ch in prefix_modes:
                    symbol = prefix_modes[ch]
                    for member in state.members:
                        if self.fold(member) == self.fold(arg):
                            have = state.members[member].replace(symbol, "")
                            state.members[member] = (symbol + have) if adding else have


_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_RFC1459_FOLD = str.maketrans("[]\\~", "{}|^")


def _safe_username(nick: str) -> str:
    name = "".join(ch for ch in nick if ch.isascii() and (ch.isalnum() or ch in "-_."))
    return (name or "freeq")[:10]


class FreeqClientFactory(Factory):
    """Builds one :class:`FreeqClient` per connection with the given keyword arguments.

    ``factory.client`` is the latest protocol built (what :func:`freeq.client.connect.connect` returns).
    """

    protocol = FreeqClient  # type: ignore[assignment]

    def __init__(self, nick: str, **kwargs: Any) -> None:
        self.nick = nick
        self.kwargs = kwargs
        self.client: Optional[FreeqClient] = None

    def buildProtocol(self, addr: Any) -> FreeqClient:
        """A new client for this connection."""
        client = FreeqClient(self.nick, **self.kwargs)
        client.factory = self
        self.client = client
        return client


__all__ = [
    "DEFAULT_CAPS", "ClientError", "SASLFailed", "IRCError", "ConnectionClosed", "Event", "ChatMessage",
    "JoinEvent", "PartEvent", "AccountEvent", "ChannelState", "WhoisReply", "FreeqClient", "FreeqClientFactory",
    "split_prefix", "parse_server_time",
]
