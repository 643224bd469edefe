"""The interfaces between client transports (TCP, TLS, WebSocket) and the IRC logic."""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from zope.interface import Attribute, Interface

from freeq.irc.parser import Message


class IClientConnection(Interface):
    """A client connection as the IRC logic sees it: a byte sink, a close, and peer facts.

    Writing goes through ``User.write`` (installed by the connection) so the
    fan-out path is one call per recipient.
    """

    ip = Attribute("The peer's IP address (never shown to other clients).")
    secure = Attribute("True when the transport is encrypted (TLS, wss).")
    ping_sent = Attribute("Whether a keepalive PING is outstanding.")

    def close() -> None:  # type: ignore[misc]
        """Flush what is queued and close the connection."""


class IRCHandler(Protocol):
    """What a client transport needs of the IRC logic (:class:`freeq.core.server.IRCServer` is one).

    Transports (``freeq.net``, ``freeq.web.websocket``) depend on this, not on the core's class, so
    the connection code sees six calls and two attributes rather than the whole server.
    """

    name: str
    config: Any

    def check_connect(self, ip: str) -> Optional[str]:
        """Ask plugins whether a connection from ``ip`` may proceed; a reason refuses it."""

    def connect(self, conn: Any, write: Callable[[bytes], None], ip: str) -> Any:
        """A new connection: create its (unregistered) user and return it."""

    def handle(self, user: Any, msg: Message) -> None:
        """Dispatch one parsed line from ``user``."""

    def disconnect(self, user: Any, reason: str) -> None:
        """The connection is gone: remove the user and tell who should know."""

    def close(self, user: Any, reason: str, quit_reason: Optional[str] = None) -> None:
        """Send ``ERROR`` and close the connection."""

    def metric(self, name: str) -> None:
        """Count one event in the server's metrics."""

    def in_multiline_batch(self, user: Any, msg: Message) -> bool:
        """Whether ``msg`` belongs to a ``draft/multiline`` batch ``user`` has open (it costs no flood token)."""
