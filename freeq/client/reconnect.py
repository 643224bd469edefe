"""Stay connected: reconnect with back-off, log in again, rejoin, and fetch what was missed.

:class:`Reconnector` keeps one :class:`freeq.client.protocol.FreeqClient` connected to a server. When the
connection drops (not when :meth:`Reconnector.stop` closed it) it waits :func:`backoff_delay` seconds
(doubling from ``min_delay`` up to ``max_delay``, with a little jitter), connects again, authenticates
with a credential from ``credential_factory`` (a fresh one each time: a web token works once) or the
fixed ``credential``, rejoins the channels the client was in, and for each asks ``CHATHISTORY AFTER`` the
last message it had seen there (by msgid, else by time). What comes back is published on
:attr:`Reconnector.on_caught_up` as a :class:`CatchUp` per channel (and remembered as seen). Each new
client is announced on :attr:`Reconnector.on_client` before its channels are rejoined, so callbacks can be
attached to it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

from twisted.internet import defer
from twisted.logger import Logger

from freeq.client.auth import Credential
from freeq.client.connection import DEFAULT_CAPS
from freeq.client.events import Event
from freeq.client.history import history_ref
from freeq.client.model import ChatMessage

log = Logger()

#: Most channels rejoined (and caught up) after a reconnect.
MAX_REJOIN = 100
#: Most messages fetched per channel after a reconnect (the server caps it too).
CATCH_UP_LIMIT = 100


def backoff_delay(attempt: int, min_delay: float = 1.0, max_delay: float = 60.0, factor: float = 2.0,
                  jitter: float = 0.1, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect ``attempt`` (1 for the first): ``min_delay * factor**(attempt-1)``,
    at most ``max_delay``, plus up to ``jitter`` of itself (so many clients do not return at once)."""
    if attempt < 1 or min_delay < 0 or max_delay < min_delay or factor < 1 or not 0 <= jitter <= 1:
        raise ValueError("attempt >= 1, 0 <= min_delay <= max_delay, factor >= 1, 0 <= jitter <= 1")
    base = min_delay * factor ** min(attempt - 1, 64)
    base = min(base, max_delay)
    return base + base * jitter * rand()


@dataclass(frozen=True)
class CatchUp:
    """The messages of ``channel`` that arrived while we were away (oldest first)."""

    channel: str
    messages: list[ChatMessage] = field(default_factory=list)


@dataclass
class _Seen:
    msgid: Optional[str] = None
    time: Optional[str] = None


CredentialSource = Callable[[], Union[Credential, defer.Deferred, None]]


class Reconnector:
    """Keeps a client connected to ``host:port`` (the arguments of :func:`freeq.client.connect.connect`).

    :param credential_factory: called before every connection for the credential to log in with (may return
        a ``Deferred``); overrides ``credential``.
    :param channels: channels to join on the first connection (later: those the client was in).
    :param min_delay, max_delay, factor, jitter: the back-off (see :func:`backoff_delay`).
    :param max_attempts: give up after this many failed connections in a row (``None``: never).
    """

    def __init__(self, reactor: Any, host: str, port: int, nick: str, *, tls: bool = False,
                 credential: Optional[Credential] = None, credential_factory: Optional[CredentialSource] = None,
                 caps: Iterable[str] = DEFAULT_CAPS, channels: Iterable[str] = (), min_delay: float = 1.0,
                 max_delay: float = 60.0, factor: float = 2.0, jitter: float = 0.1,
                 max_attempts: Optional[int] = None, catch_up_limit: int = CATCH_UP_LIMIT,
                 **client_kwargs: Any) -> None:
        backoff_delay(1, min_delay, max_delay, factor, jitter)  # validates the back-off
        self.reactor = reactor
        self.host, self.port, self.nick, self.tls = host, port, nick, tls
        self.credential = credential
        self.credential_factory = credential_factory
        self.caps = tuple(caps)
        self.min_delay, self.max_delay, self.factor, self.jitter = min_delay, max_delay, factor, jitter
        self.max_attempts = max_attempts
        self.catch_up_limit = max(1, min(int(catch_up_limit), 1000))
        self.client_kwargs = client_kwargs
        #: The current client (``None`` while disconnected).
        self.client: Any = None
        #: Channels to be in (as named when joined).
        self.channels: list[str] = list(channels)[:MAX_REJOIN]
        #: How many times the connection came back.
        self.reconnects = 0
        self.attempts = 0
        self.stopped = False
        self._seen: dict[str, _Seen] = {}
        self._timer: Any = None
        self.on_client: Event[Any] = Event("client", reactor)
        self.on_caught_up: Event[CatchUp] = Event("caught-up", reactor)
        self.on_gave_up: Event[Exception] = Event("gave-up", reactor)

    # ------------------------------------------------------------------
    def start(self) -> defer.Deferred:
        """Connect (once, no retry); fires with the client after the channels were joined."""
        return defer.ensureDeferred(self._connect(catch_up=False))

    def stop(self) -> defer.Deferred:
        """Stop reconnecting and quit; fires when the connection is closed."""
        self.stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        client = self.client
        if client is not None and client.is_connected:
            return client.quit("Leaving")  # type: ignore[no-any-return]
        return defer.succeed(None)

    def last_seen(self, channel: str) -> Optional[str]:
        """The CHATHISTORY reference of the last message seen in ``channel`` (``None``: none)."""
        seen = self._seen.get(channel.lower())
        return history_ref(seen.msgid, seen.time) if seen is not None and (seen.msgid or seen.time) else None

    # ------------------------------------------------------------------
    async def _connect(self, catch_up: bool) -> Any:
        from freeq.client.connect import connect

        credential = self.credential
        if self.credential_factory is not None:
            made: Any = self.credential_factory()
            credential = await made if isinstance(made, defer.Deferred) else made
        client = await connect(self.reactor, self.host, self.port, self.nick, tls=self.tls, credential=credential,
                               caps=self.caps, **self.client_kwargs)
        if self.stopped:  # stop() was called while this connection was being made
            await client.quit("Leaving")
            return client
        self.client = client
        self.attempts = 0
        client.on_message.add(self._remember)
        client.on_notice.add(self._remember)
        client.closed.addCallback(self._lost, client)
        self.on_client.fire(client)
        for channel in list(self.channels):
            try:
                await client.join(channel)
            except Exception as e:  # banned, keyed, gone: the others are still rejoined
                log.info("rejoining {channel} failed: {error}", channel=channel, error=str(e)[:200])
        if catch_up:
            await self._catch_up(client)
        return client

    def _remember(self, message: ChatMessage) -> None:
        channel = message.reply_to
        if channel[:1] not in "#&":
            return
        if channel not in self.channels and len(self.channels) < MAX_REJOIN:
            self.channels.append(channel)
        if message.msgid or message.time:
            self._seen[channel.lower()] = _Seen(message.msgid, message.time)

    async def _catch_up(self, client: Any) -> None:
        if "batch" not in client.caps or "draft/chathistory" not in client.caps_available:
            return
        for channel in list(self.channels):
            ref = self.last_seen(channel)
            if ref is None or client.fold(channel) not in client.channels:
                continue
            try:
                messages = await client.history(channel, "AFTER", ref, self.catch_up_limit)
            except Exception as e:
                log.info("catching up on {channel} failed: {error}", channel=channel, error=str(e)[:200])
                continue
            for message in messages:
                self._remember(message)
            self.on_caught_up.fire(CatchUp(channel, messages))

    def _lost(self, _result: Any, client: Any) -> None:
        if client is not self.client:
            return
        # Channels we were in when the connection went (those we parted are forgotten).
        if client.channels:
            self.channels = [state.name for state in client.channels.values()][:MAX_REJOIN]
        self.client = None
        if not self.stopped:
            self._schedule()

    def _schedule(self) -> None:
        self.attempts += 1
        if self.max_attempts is not None and self.attempts > self.max_attempts:
            log.info("giving up reconnecting to {host}:{port} after {n} attempts", host=self.host, port=self.port,
                     n=self.attempts - 1)
            self.on_gave_up.fire(ConnectionError("gave up reconnecting"))
            return
        delay = backoff_delay(self.attempts, self.min_delay, self.max_delay, self.factor, self.jitter)
        log.info("connection to {host}:{port} lost; reconnecting in {delay:.1f}s", host=self.host, port=self.port,
                 delay=delay)
        self._timer = self.reactor.callLater(delay, self._retry)

    def _retry(self) -> None:
        if self.stopped:
            return
        d = defer.ensureDeferred(self._connect(catch_up=True))

        def back(client: Any) -> None:
            self.reconnects += 1

        def failed(failure: Any) -> None:
            log.info("reconnecting to {host}:{port} failed: {error}", host=self.host, port=self.port,
                     error=str(failure.value)[:200])
            if not self.stopped and self.client is None:
                self._schedule()

        d.addCallbacks(back, failed)


__all__ = ["Reconnector", "CatchUp", "backoff_delay", "CATCH_UP_LIMIT", "MAX_REJOIN"]
