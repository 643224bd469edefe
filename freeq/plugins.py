"""Operator plugin hooks: a zope interface found with ``twisted.plugin.getPlugins``.

An operator drops a module into a ``twisted/plugins/`` directory on the Python
path that defines an object providing :class:`IFreeqPlugin` (and
``twisted.plugin.IPlugin``); ``--plugin NAME`` enables it. See docs/plugins.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

if TYPE_CHECKING:
    from freeq.core.server import IRCServer
    from freeq.state.channel import Channel
    from freeq.state.user import User

log = Logger()


class IServerHook(Interface):
    """Hook points the server calls. Every method must return quickly and must not block."""

    def on_connect(ip: str) -> Optional[str]:  # type: ignore[misc]
        """A connection arrived from ``ip``; return a reason string to refuse it, else ``None``."""

    def on_register(user: "User") -> None:  # type: ignore[misc]
        """``user`` completed registration (after the welcome burst)."""

    def on_join(user: "User", channel: "Channel") -> None:  # type: ignore[misc]
        """``user`` joined ``channel``."""

    def on_message(user: "User", command: str, target: str, text: str) -> Optional[str]:  # type: ignore[misc]
        """``user`` sends PRIVMSG/NOTICE ``text`` to ``target``; return a reason to reject it."""


class IFreeqPlugin(Interface):
    """A named plugin that makes an :class:`IServerHook` for a server."""

    name = Attribute("The name given to --plugin.")
    description = Attribute("One line for --help and the logs.")

    def make_hook(server: "IRCServer") -> IServerHook:  # type: ignore[misc]
        """Return the hook object for ``server``."""


@implementer(IServerHook)
class BaseHook:
    """A hook that does nothing: subclass it and override what you need."""

    def on_connect(self, ip: str) -> Optional[str]:
        return None

    def on_register(self, user: "User") -> None:
        return None

    def on_join(self, user: "User", channel: "Channel") -> None:
        return None

    def on_message(self, user: "User", command: str, target: str, text: str) -> Optional[str]:
        return None


class PluginError(ValueError):
    """A ``--plugin`` name does not match any installed plugin."""


def available_plugins() -> dict[str, Any]:
    """All installed freeq plugins by name."""
    from twisted.plugin import getPlugins
    import twisted.plugins

    return {p.name: p for p in getPlugins(IFreeqPlugin, twisted.plugins)}


def load_plugins(names: Sequence[str]) -> list[Any]:
    """Look up the plugins named on the command line; raise :class:`PluginError` for unknown names."""
    if not names:
        return []
    found = available_plugins()
    missing = [n for n in names if n not in found]
    if missing:
        known = ", ".join(sorted(found)) or "none installed"
        raise PluginError(f"--plugin: unknown plugin {', '.join(missing)} (available: {known})")
    return [found[n] for n in names]
