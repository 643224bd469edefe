"""Example freeq operator plugin: ``--plugin shout-filter`` rejects messages written in capitals.

Imported by every plugin scan (``twistd`` and ``getPlugins``), so it imports only
``freeq.plugins`` and never the reactor.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.plugin import IPlugin
from zope.interface import implementer

from freeq.plugins import BaseHook, IFreeqPlugin

if TYPE_CHECKING:
    from freeq.state.user import User

#: Messages up to this many characters may be in capitals ("OK", "LOL", "BRB").
SHOUT_MIN_LENGTH = 10


class ShoutFilterHook(BaseHook):
    """Rejects PRIVMSG/NOTICE text that is longer than ten characters and entirely upper-case."""

    def on_message(self, user: "User", command: str, target: str, text: str) -> Optional[str]:
        if command in ("PRIVMSG", "NOTICE") and len(text) > SHOUT_MIN_LENGTH and text.isupper():
            return "Please don't shout"
        return None


@implementer(IPlugin, IFreeqPlugin)
class ShoutFilter:
    """The ``shout-filter`` plugin: makes one :class:`ShoutFilterHook` per server."""

    name = "shout-filter"
    description = "Rejects messages longer than 10 characters written in capitals"

    def make_hook(self, server: Any) -> ShoutFilterHook:
        return ShoutFilterHook()


shout_filter = ShoutFilter()
