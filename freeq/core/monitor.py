"""MONITOR: watch lists of nicks, told when they come online (730) or go offline (731).

Mixed into :class:`freeq.core.server.IRCServer`; registration, NICK and QUIT call :meth:`monitor_notify`,
and so does federation for remote users.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional

from freeq.irc.names import fold, valid_nick
from freeq.irc.parser import Message, build_text
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
else:
    _Server = object


class MonitorCommands(_Server):
    """The MONITOR command and the notifications of its watchers."""

    def irc_MONITOR(self, user: User, msg: Message) -> None:
        if not msg.params:
            self.num(user, "461", "MONITOR", "Not enough parameters")
            return
        sub = msg.params[0]
        limit = self.config.max_monitor
        if sub == "+":
            if len(msg.params) < 2:
                self.num(user, "461", "MONITOR", "Not enough parameters")
                return
            added: list[tuple[str, str]] = []
            targets = [t for t in msg.params[1].split(",") if t]
            for i, nick in enumerate(targets):
                folded = fold(nick)
                if folded in user.monitoring:
                    continue
                if len(user.monitoring) >= limit:
                    self.num(user, "734", str(limit), ",".join(targets[i:]), "Monitor list is full.")
                    break
                if not valid_nick(nick, self.config.nick_len):
                    continue
                user.monitoring[folded] = nick
                self.monitors.setdefault(folded, set()).add(user)
                added.append((folded, nick))
            self._monitor_status(user, added)
        elif sub == "-":
            if len(msg.params) < 2:
                self.num(user, "461", "MONITOR", "Not enough parameters")
                return
            for nick in msg.params[1].split(","):
                self._unmonitor(user, [fold(nick)])
        elif sub in ("C", "c"):
            self._unmonitor(user, list(user.monitoring))
        elif sub in ("L", "l"):
            names = sorted(user.monitoring.values(), key=fold)
            for i in range(0, len(names), 20):
                self.num(user, "732", ",".join(names[i:i + 20]))
            self.num(user, "733", "End of MONITOR list")
        elif sub in ("S", "s"):
            self._monitor_status(user, sorted(user.monitoring.items()))

    def _monitor_status(self, user: User, watched: Iterable[tuple[str, str]]) -> None:
        """Tell ``user`` which of these (folded nick, nick) are online (730) and which offline (731)."""
        online, offline = [], []
        for folded, nick in watched:
            other = self.users.get(folded)
            if other is not None and other.registered:
                online.append(other.hostmask)
            else:
                offline.append(nick)
        if online:
            self.num(user, "730", ",".join(online))
        if offline:
            self.num(user, "731", ",".join(offline))

    def _unmonitor(self, user: User, folded_nicks: Iterable[str]) -> None:
        """Stop ``user`` watching these (folded) nicks."""
        for folded in folded_nicks:
            if folded not in user.monitoring:
                continue
            user.monitoring.pop(folded, None)
            watchers = self.monitors.get(folded)
            if watchers is not None:
                watchers.discard(user)
                if not watchers:
                    del self.monitors[folded]

    def monitor_notify(self, folded: str, online: Optional[User]) -> None:
        """Tell MONITOR watchers of nick ``folded`` that it came online (``online``) or went offline (``None``)."""
        watchers = self.monitors.get(folded)
        if not watchers:
            return
        for w in watchers:
            if online is not None:
                self.num(w, "730", online.hostmask)
                if online.away is not None and "extended-monitor" in w.caps and "away-notify" in w.caps:
                    w.write(build_text(online.hostmask, "AWAY", online.away))  # already away (a remote user)
            else:
                self.num(w, "731", w.monitoring.get(folded, folded))

    def monitor_extended(self, user: User, data: bytes, cap: str) -> None:
        """``extended-monitor``: send ``data``, an ``away-notify`` / ``account-notify`` / ``chghost`` /
        ``setname`` line (``cap``) about ``user``, to its MONITOR watchers that negotiated both
        ``extended-monitor`` and ``cap``, as if they shared a channel. Watchers that do share one
        got it with the channel's members already, so they are skipped (never twice)."""
        watchers = self.monitors.get(user.folded)
        if not watchers:
            return
        channels = user.channels.keys()
        for w in watchers:
            if w is user or "extended-monitor" not in w.caps or cap not in w.caps:
                continue
            if not channels.isdisjoint(w.channels.keys()):
                continue
            w.write(data)
