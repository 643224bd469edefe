"""MODE: user modes, and channel modes as the pure :func:`freeq.state.modes.apply_modes` turned into lines.

Mixed into :class:`freeq.core.server.IRCServer`; federation calls :meth:`ModeCommands.broadcast_modes`
for peers' mode changes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from freeq.irc.names import fold, is_channel
from freeq.irc.parser import Message, build
from freeq.opers import ALL_PRIVILEGES
from freeq.state.channel import Channel
from freeq.state.masks import MAX_MASK_LENGTH, MAX_MASK_WILDCARDS
from freeq.state.modes import (
    FOUNDER, HIDDEN_VALUE, INVALID, LIST, LIST_FULL, LIST_REFUSED, MASK_REFUSED, NEED_PARAMS, NO_SUCH_NICK,
    NOT_MEMBER, UNKNOWN, ModeReply, apply_modes,
)
from freeq.state.rules import NOT_ON_CHANNEL, mode_refusal
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.core.shared import OverrideRefused, ServerCore as _Server
else:
    _Server = object

#: The replies listing a channel list: entry numeric, end numeric, end text.
_LIST_REPLIES = {"b": ("367", "368", "End of channel ban list"),
                 "e": ("348", "349", "End of channel exception list"),
                 "I": ("346", "347", "End of channel invite list")}


class ModeCommands(_Server):
    """The MODE command for users and channels."""

    if TYPE_CHECKING:  # what this group calls in the other groups
        _visible_channel: Callable[[Channel, User], bool]  # channels
        channel_changed: Callable[[Channel], None]  # channels
        _override_refuser: Callable[[Channel], Optional[str]]  # operator
        _override_refused: OverrideRefused  # operator
        oper_log: Callable[..., None]  # operator

    def irc_MODE(self, user: User, msg: Message) -> None:
        if not msg.params:
            self.num(user, "461", "MODE", "Not enough parameters")
            return
        target = msg.params[0]
        if is_channel(target):
            self._channel_mode(user, target, msg.params[1:])
        else:
            self._user_mode(user, target, msg.params[1:])

    def _user_mode(self, user: User, target: str, args: list[str]) -> None:
        other = self.users.get(fold(target))
        if other is None:
            self.num(user, "401", target, "No such nick/channel")
            return
        if other is not user:
            self.num(user, "502", "Can't change mode for other users")
            return
        if not args:
            user.write(build(self.name, "221", user.nick, "+" + "".join(sorted(user.modes))))
            return
        adding = True
        added: list[str] = []
        removed: list[str] = []
        unknown = False
        for ch in args[0]:
            if ch in "+-":
                adding = ch == "+"
            elif ch in "iwB":
                if self.set_user_mode(user, ch, adding):
                    (added if adding else removed).append(ch)
            elif ch == "o":
                if not adding and self.set_user_mode(user, "o", False):  # opers may drop +o; only OPER grants it
                    user.set_oper(None, ALL_PRIVILEGES)  # forget the account: --oper-dids may grant +o again
                    removed.append("o")
            else:
                unknown = True
        if unknown:
            self.num(user, "501", "Unknown MODE flag")
        if added or removed:
            change = ("+" + "".join(added) if added else "") + ("-" + "".join(removed) if removed else "")
            user.write(build(user.hostmask, "MODE", user.nick, change))

    def set_user_mode(self, user: User, mode: str, on: bool) -> bool:
        """Set or clear user mode ``mode`` (no message is sent); return whether it changed.

        Modes are replaced rather than mutated (idle users share one empty set), and the
        LUSERS counts follow ``+i`` and ``+o`` of registered local connections.
        """
        if (mode in user.modes) == on:
            return False
        user.modes = user.modes | {mode} if on else user.modes - {mode}
        if mode in "io" and user.registered and user in self.connections:
            delta = 1 if on else -1
            if mode == "i":
                self.invisible_count += delta
            else:
                self.oper_count += delta
        return True

    def _channel_mode(self, user: User, name: str, args: list[str]) -> None:
        chan = self.channels.get(fold(name))
        if chan is None or (not self._visible_channel(chan, user) and not user.is_oper):
            self.num(user, "403", name, "No such channel")
            return
        if not args:
            modes, margs = chan.mode_string(user in chan.members or user.is_oper)
            user.write(build(self.name, "324", user.nick, chan.name, modes, *margs))
            user.write(build(self.name, "329", user.nick, chan.name, str(chan.created)))
            return
        refusal = mode_refusal(chan, user)
        # A server operator's override must be applied by every server sharing the channel, or not at all.
        overriding = refusal is not None and user.oper_holds("override")
        refuser = self._override_refuser(chan) if overriding else None
        cfg = self.config
        outcome = apply_modes(chan, user, args[0], args[1:], self.clock.seconds(),
                              authorized=refusal is None or (overriding and refuser is None), users=self.users,
                              devices=self.group, max_changes=cfg.max_modes, max_list_entries=cfg.max_list_entries)
        for reply in outcome.replies:
            self._mode_reply(user, chan, reply)
        if outcome.denied:
            if refuser is not None:
                self._override_refused(user, chan, "MODE", refuser)
            elif refusal == NOT_ON_CHANNEL:
                self.num(user, "442", chan.name, "You're not on that channel")
            else:
                self.num(user, "482", chan.name, "You're not channel operator")
        if overriding and refuser is None and outcome.applied:
            self.oper_log(user, "override", command="MODE", channel=chan.name,
                          modes=" ".join(f"{sign}{ch}" for sign, ch, _arg in outcome.applied)[:200])
        if outcome.persist:
            self.channel_changed(chan)
        if outcome.applied:
            self.broadcast_modes(user.hostmask, chan, outcome.applied, extra=None if user in chan.members else user)
        self.s2s_notify("mode", user, chan, outcome.applied)

    def _mode_reply(self, user: User, chan: Channel, reply: ModeReply) -> None:
        """One reply of :func:`freeq.state.modes.apply_modes` to the user who sent the MODE, as its numeric."""
        kind, mode, arg = reply.kind, reply.mode, reply.arg or ""
        if kind == LIST:
            codes = _LIST_REPLIES[mode]
            for entry in reply.entries:
                user.write(build(self.name, codes[0], user.nick, chan.name, entry.mask, entry.setter,
                                 str(entry.set_at)))
            self.num(user, codes[1], chan.name, codes[2])
        elif kind == LIST_REFUSED:
            self.num(user, "482", chan.name, "You're not channel operator")
        elif kind == NEED_PARAMS:
            self.num(user, "461", "MODE", "Not enough parameters")
        elif kind == UNKNOWN:
            self.num(user, "472", mode, "is unknown mode char to me")
        elif kind == NO_SUCH_NICK:
            self.num(user, "401", arg, "No such nick/channel")
        elif kind == NOT_MEMBER:
            self.num(user, "441", arg, chan.name, "They aren't on that channel")
        elif kind == FOUNDER:
            self.num(user, "482", chan.name, "You cannot deop the channel founder")
        elif kind == INVALID:
            # The state layer already hid what cannot be echoed; an empty value still needs its slot.
            self.num(user, "696", chan.name, mode, arg or HIDDEN_VALUE, reply.text)
        elif kind == MASK_REFUSED:
            # Counted and logged like any refused mask; echoed cut to the cap so the reply stays a sane line.
            self._mask_refused(user, f"MODE {chan.name} +{mode}", arg)
            self.num(user, "696", chan.name, mode, arg[:MAX_MASK_LENGTH],
                     f"Mask refused: {reply.text} (at most {MAX_MASK_LENGTH} characters "
                     f"and {MAX_MASK_WILDCARDS} wildcards)")
        elif kind == LIST_FULL:
            self.num(user, "478", chan.name, arg, "Channel list is full")

    def broadcast_modes(self, source: str, chan: Channel, applied: list[tuple[str, str, Optional[str]]],
                        extra: Optional[User] = None) -> None:
        """Tell ``chan``'s members (and ``extra``) the mode changes ``applied`` by ``source`` (local or federated)."""
        # Group into lines of at most MODES argument-taking changes.
        letters = ""
        sign = ""
        args: list[str] = []
        for s, ch, arg in applied:
            if s != sign:
                letters += s
                sign = s
            letters += ch
            if arg is not None:
                args.append(arg)
        members_line = build(source, "MODE", chan.name, letters, *args)
        self.broadcast(chan.members, members_line)
        if extra is not None:
            extra.write(members_line)
