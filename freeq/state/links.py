"""What the IRC core sees of federation: value types and the interface it calls (no s2s import).

The core tells federation of local changes (``notify``) and answers LINKS, SQUIT, CONNECT, KILL of a
remote user and server-operator overrides through :class:`FederationControl`;
:class:`freeq.s2s.federation.Federation` implements it. Keeping the interface here lets the core depend
on the state layer only (issue #11's layer order).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol

from freeq.state.channel import Channel
from freeq.state.user import User


@dataclass(frozen=True)
class LinkView:
    """One server in the LINKS view: its name and endpoint id, the server it is linked through, its distance
    in hops (0: this server) and, for a direct link, the local trust level of that link."""

    name: str
    server_id: str
    uplink: str
    hops: int
    trust: Optional[str]


@dataclass(frozen=True)
class HeldPeer:
    """A peer an operator held with SQUIT: not dialled nor accepted until CONNECT."""

    peer_id: str
    name: str
    reason: str
    by: str
    since: float


@dataclass(frozen=True)
class LinkControl:
    """The outcome of SQUIT or CONNECT: what to tell the operator, and whether the target is unknown (402)."""

    ok: bool
    text: str
    no_such_server: bool = False


class FederationControl(Protocol):
    """The federation operations the IRC core uses."""

    def notify(self, event: str, *args: Any) -> None:
        """A local state change (``IRCServer.s2s_notify``): ``register``, ``nick``, ``join``, ``mode``... with
        its arguments."""

    def is_remote(self, user: User) -> bool:
        """Whether ``user`` lives on another server."""

    def links_view(self) -> list[LinkView]:
        """Every server of the federation as seen from here, this one first."""

    def network_counts(self) -> tuple[int, int, int]:
        """``(users on other servers, other servers, servers linked directly)`` as known here, cheaply (LUSERS
        runs at every registration)."""

    def held_view(self) -> list[HeldPeer]:
        """The peers held by an operator, oldest first."""

    def hold(self, target: str, reason: str, by: User) -> LinkControl:
        """An operator's SQUIT of a direct link."""

    def release(self, target: str, by: User) -> LinkControl:
        """An operator's CONNECT of a held peer."""

    def override_refuser(self, chan: Channel) -> Optional[str]:
        """The server sharing ``chan`` that would not apply a server operator's override, or ``None``."""

    def remote_kill(self, oper: User, victim: User, reason: str) -> LinkControl:
        """A local operator's KILL of a remote user."""
