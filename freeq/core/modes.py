"""MODE: user modes, and channel modes as the pure :func:`freeq.state.modes.apply_modes` turned into lines.

Mixed into :class:`freeq.core.server.IRCServer`; federation calls :meth:`ModeCommands.broadcast_modes`
for peers' mode changes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

from freeq.irc.names import fold, is_channel
from freeq.irc.parser import Message, build
from freeq.state.channel import FLAG_MODES, LIST_MODES, PREFIX_MODES, Channel
from freeq.state.masks import MAX_MASK_LENGTH, MAX_MASK_WILDCARDS, mask_problem, normalize_mask
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore

    class _Server(ServerCore, Protocol):
        def _visible_channel(self, chan: Channel, user: User) -> bool: ...

        def channel_changed(self, chan: Channel) -> None: ...

        def _override_refuser(self, chan: Channel) -> Optional[str]: ...

        def _override_refused(self, user: User, chan: Channel, command: str,
                              refuser: Optional[str] = None) -> bool: ...
else:
    _Server = object


class ModeCommands(_Server):
    """The MODE command for users and channels."""

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
        is_op = chan.is_op(user) or user.is_oper
        # A server operator's override must be applied by every server sharing the channel, or not at all.
        refuser = self._override_refuser(chan) if is_op and not chan.is_op(user) else None
        if refuser is not None:
            is_op = False
        cfg = self.config
        now = self.clock.seconds()
        adding = True
        params = iter(args[1:])
        applied: list[tuple[str, str, Optional[str]]] = []
        did_ops_changed = False
        arg_changes = 0
        denied = False
        for ch in args[0]:
            if ch in "+-":
                adding = ch == "+"
                continue
            if ch in LIST_MODES:
                mask = next(params, None)
                if mask is None or not mask.strip():
                    if adding or mask is None:
                        self._send_list(user, chan, ch)
                    continue
                if not is_op:
                    denied = True
                    continue
                if arg_changes >= cfg.max_modes:
                    continue
                arg_changes += 1
                mask = normalize_mask(mask.strip())
                if " " in mask or mask[0] == ":":
                    continue  # could not be echoed as one middle parameter (324/367, MODE)
                if adding and self._mask_refused(user, f"MODE {chan.name} +{ch}", mask):
                    # Echoed cut to the cap so the reply stays a sane line; the text says which cap.
                    self.num(user, "696", chan.name, ch, mask[:MAX_MASK_LENGTH],
                             f"Mask refused: {mask_problem(mask)} (at most {MAX_MASK_LENGTH} characters "
                             f"and {MAX_MASK_WILDCARDS} wildcards)")
                    continue
                if adding:
                    res = chan.list_add(ch, mask, user.hostmask, now, cfg.max_list_entries)
                    if res is None:
                        self.num(user, "478", chan.name, mask, "Channel list is full")
                    elif res:
                        applied.append(("+", ch, mask))
                else:
                    stored = chan.list_remove(ch, mask)
                    if stored is not None:
                        applied.append(("-", ch, stored))
                continue
            if ch in PREFIX_MODES:
                nick = next(params, None)
                if nick is None:
                    self.num(user, "461", "MODE", "Not enough parameters")
                    continue
                if not is_op:
                    denied = True
                    continue
                if arg_changes >= cfg.max_modes:
                    continue
                arg_changes += 1
                target = self.users.get(fold(nick))
                if target is None:
                    self.num(user, "401", nick, "No such nick/channel")
                    continue
                if target not in chan.members:
                    self.num(user, "441", target.nick, chan.name, "They aren't on that channel")
                    continue
                bit = PREFIX_MODES[ch]
                if ch == "o" and not adding and target.account and target.account == chan.founder \
                        and target is not user and not user.is_oper:
                    self.num(user, "482", chan.name, "You cannot deop the channel founder")
                    continue
                old = chan.members[target]
                new = old | bit if adding else old & ~bit
                if ch == "o" and target.account:
                    # +o/-o on an account holder is remembered by DID (the founder stays a DID op).
                    if adding and target.account not in chan.did_ops:
                        chan.did_ops[target.account] = (user.hostmask, int(now))
                        did_ops_changed = True
                    elif not adding and target.account in chan.did_ops and target.account != chan.founder:
                        del chan.did_ops[target.account]
                        did_ops_changed = True
                if new != old:
                    for device in self.group(target):
                        if device in chan.members:
                            chan.members[device] = new
                    applied.append(("+" if adding else "-", ch, target.nick))
                continue
            if ch == "k":
                key = next(params, None)
                if adding and key is None:
                    self.num(user, "461", "MODE", "Not enough parameters")
                    continue
                if not is_op:
                    denied = True
                    continue
                if adding:
                    key = key.strip() if key else ""
                    if not key or "," in key or " " in key or key[0] == ":" or len(key) > 23:
                        shown = key if key and " " not in key and key[0] != ":" else "*"
                        self.num(user, "696", chan.name, "k", shown, "Invalid key (1-23 characters, no comma or space)")
                        continue
                    chan.key = key
                    applied.append(("+", "k", key))
                elif chan.key is not None:
                    chan.key = None
                    applied.append(("-", "k", "*"))
                continue
            if ch == "l":
                if adding:
                    raw = next(params, None)
                    if raw is None:
                        self.num(user, "461", "MODE", "Not enough parameters")
                        continue
                    if not is_op:
                        denied = True
                        continue
                    try:
                        limit = int(raw)
                    except ValueError:
                        limit = 0
                    if limit <= 0 or limit > 1_000_000:
                        self.num(user, "696", chan.name, "l", raw, "Invalid limit")
                        continue
                    chan.limit = limit
                    applied.append(("+", "l", str(limit)))
                else:
                    if not is_op:
                        denied = True
                        continue
                    if chan.limit is not None:
                        chan.limit = None
                        applied.append(("-", "l", None))
                continue
            if ch in FLAG_MODES:
                if not is_op:
                    denied = True
                    continue
                if adding and ch not in chan.modes:
                    chan.modes.add(ch)
                    applied.append(("+", ch, None))
                elif not adding and ch in chan.modes:
                    chan.modes.discard(ch)
                    applied.append(("-", ch, None))
                continue
            self.num(user, "472", ch, "is unknown mode char to me")
        if denied:
            if refuser is not None:
                self._override_refused(user, chan, "MODE", refuser)
            elif user not in chan.members:
                self.num(user, "442", chan.name, "You're not on that channel")
            else:
                self.num(user, "482", chan.name, "You're not channel operator")
        if applied or did_ops_changed:
            if did_ops_changed or any(ch not in PREFIX_MODES for _s, ch, _a in applied):
                self.channel_changed(chan)
        if applied:
            self.broadcast_modes(user.hostmask, chan, applied, extra=None if user in chan.members else user)
        self.s2s_notify("mode", user, chan, applied)

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

    def _send_list(self, user: User, chan: Channel, mode: str) -> None:
        codes = {"b": ("367", "368", "End of channel ban list"),
                 "e": ("348", "349", "End of channel exception list"),
                 "I": ("346", "347", "End of channel invite list")}[mode]
        if user not in chan.members and not user.is_oper and mode != "b" and not chan.is_op(user):
            self.num(user, "482", chan.name, "You're not channel operator")
            return
        if mode in "eI" and not chan.is_op(user) and not user.is_oper:
            self.num(user, "482", chan.name, "You're not channel operator")
            return
        for entry in chan.lists[mode]:
            user.write(build(self.name, codes[0], user.nick, chan.name, entry.mask, entry.setter, str(entry.set_at)))
        self.num(user, codes[1], chan.name, codes[2])
