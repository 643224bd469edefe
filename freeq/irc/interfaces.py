"""The one interface every client transport implements (TCP, TLS, WebSocket)."""
from __future__ import annotations

from zope.interface import Attribute, Interface


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
