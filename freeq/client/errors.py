"""The client SDK's errors."""
from __future__ import annotations

from typing import Optional


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

