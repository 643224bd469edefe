"""``draft/channel-rename`` (https://ircv3.net/specs/extensions/channel-rename): RENAME keeps a channel's
state (members, modes, topic, lists, founder and DID operators) under a new name.

Members with the cap see ``RENAME <old> <new> :<reason>``; the others see themselves PART the old name and
JOIN the new one, followed by its topic and NAMES, as the spec's fallback says. The persisted channel moves
to the new name. History kept before the rename stays under the old name (chunks are sealed with the
conversation as associated data, so moving them means re-encrypting each one; documented in docs/ircv3.md).

With federation, the rename reaches every server sharing the channel as a ``rename`` event
(:mod:`freeq.s2s.rename`), which applies it through :meth:`RenameCommands.rename_channel` as well; a RENAME is
refused when a server sharing the channel would not apply channel changes from this one (it would split the
channel).

Mixed into :class:`freeq.core.server.IRCServer`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from twisted.logger import Logger

from freeq.core.shared import truncate
from freeq.irc.names import fold, is_channel, valid_channel
from freeq.irc.parser import Message, build, build_text
from freeq.state.channel import Channel
from freeq.state.rules import mode_refusal
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
else:
    _Server = object

log = Logger()

CAP = "draft/channel-rename"

#: Seconds before a channel may be renamed again: each rename sends every member without the cap a PART,
#: a JOIN and the whole NAMES list (quadratic in the members), so an operator cannot repeat it at will.
RENAME_INTERVAL = 60.0

#: The most channels whose last rename is remembered (entries older than RENAME_INTERVAL are dropped
#: first; past this many recent renames on the server, RENAME is refused until some expire).
RENAMES_REMEMBERED = 10_000


class RenameCommands(_Server):
    """The RENAME command."""

    #: folded channel name -> when it was last renamed (to that name); made on first use.
    _renamed: Optional[dict[str, float]] = None

    if TYPE_CHECKING:  # what this group calls in the other groups
        _channel_refused: Callable[[User, Channel, Optional[str], str], bool]  # operator
        _override_refuser: Callable[[Channel], Optional[str]]  # operator
        _send_names: Callable[[User, Channel], None]  # channels
        channel_changed: Callable[[Channel], None]  # channels

    def irc_RENAME(self, user: User, msg: Message) -> None:
        if len(msg.params) < 2 or not msg.params[0] or not msg.params[1]:
            self.num(user, "461", "RENAME", "Not enough parameters")
            return
        old_name, new_name = msg.params[0], msg.params[1]
        reason = truncate(msg.params[2], self.config.kick_len) if len(msg.params) > 2 else ""
        chan = self.channels.get(fold(old_name))
        if chan is None:
            self.num(user, "403", old_name, "No such channel")
            return
        if self._channel_refused(user, chan, mode_refusal(chan, user), "RENAME"):
            return
        problem = self._rename_problem(chan, new_name)
        if problem is not None:
            code, text = problem
            shown = new_name if valid_channel(new_name, self.config.channel_len) else "*"  # never echo junk
            self.fail(user, "RENAME", code, chan.name, shown, text)
            return
        old = chan.name
        self.rename_channel(chan, new_name, reason, user.hostmask)
        self.s2s_notify("rename", user, chan, old, reason)  # freeq.s2s.rename: the peers sharing it follow
        log.info("{nick} renamed {old} to {new}", nick=user.nick, old=old, new=chan.name)

    def _rename_problem(self, chan: Channel, new_name: str) -> Optional[tuple[str, str]]:
        """Why ``chan`` may not become ``new_name`` (a FAIL code and text), or ``None``."""
        if not is_channel(new_name) or not valid_channel(new_name, self.config.channel_len):
            return ("CANNOT_RENAME", "Invalid channel name")
        if new_name[0] != chan.name[0]:
            return ("CANNOT_RENAME", "A rename cannot change the channel's type")
        if new_name == chan.name:
            return ("CANNOT_RENAME", "The channel already has this name")
        other = self.channels.get(fold(new_name))
        if other is not None and other is not chan:
            return ("CHANNEL_NAME_IN_USE", "Channel already exists")
        too_soon = self.rename_too_soon(chan)
        if too_soon is not None:
            return ("CANNOT_RENAME", too_soon)
        refuser = self._override_refuser(chan)  # a server with members that does not take channel changes from us
        if refuser is not None:
            return ("CANNOT_RENAME", f"{refuser} shares the channel and does not accept channel changes from "
                                     f"{self.name}")
        return None

    def rename_too_soon(self, chan: Channel, slack: float = 0.0) -> Optional[str]:
        """Why ``chan`` may not be renamed yet (renamed in the last RENAME_INTERVAL seconds, less ``slack``, or the
        bounded record of recent renames is full), or ``None``. Federation asks it too (freeq.s2s.rename), with
        some slack for the delays of events on their way."""
        now = self.clock.seconds()
        renamed = self._renamed
        if renamed is None:
            return None
        last = renamed.get(chan.folded)
        if last is not None and now - last < RENAME_INTERVAL - slack:
            return f"The channel was renamed less than {int(RENAME_INTERVAL)} seconds ago"
        if len(renamed) >= RENAMES_REMEMBERED:
            for folded, when in list(renamed.items()):
                if now - when >= RENAME_INTERVAL:
                    del renamed[folded]
            if len(renamed) >= RENAMES_REMEMBERED:
                return "Too many channels were renamed in the last minute, try again later"
        return None

    def rename_channel(self, chan: Channel, new_name: str, reason: str, source: str) -> None:
        """Give ``chan`` the name ``new_name`` (checked by the caller) and tell its members (``source``:
        who renamed it)."""
        old_name, old_folded = chan.name, chan.folded
        new_folded = fold(new_name)
        if self._renamed is None:
            self._renamed = {}
        self._renamed.pop(old_folded, None)
        self._renamed[new_folded] = self.clock.seconds()
        del self.channels[old_folded]
        chan.name = new_name
        chan.folded = new_folded
        self.channels[new_folded] = chan
        for member in chan.members:
            member.channels.pop(old_folded, None)
            member.channels[new_folded] = chan
        if old_folded != new_folded:
            for holder in self.users.values():
                if old_folded in holder.invites:
                    holder.forget_invite(old_folded)
                    holder.invites.add(new_folded)
            since = self.empty_since.pop(old_folded, None)
            if since is not None:
                self.empty_since[new_folded] = since
            if chan.persisted and self.store is not None:
                chan.persisted = False
                self.store.delete_channel(old_folded)
        self.channel_changed(chan)
        self.on_channel_renamed(chan, old_folded)  # hook point (freeq.core.server)
        rename = build_text(source, "RENAME", old_name, new_name, reason)
        for member in list(chan.members):
            if CAP in member.caps:
                member.write(rename)
                continue
            # The spec's fallback: the member leaves the old name and joins the new one (with its burst).
            member.write(build_text(member.hostmask, "PART", old_name, f"Channel renamed to {new_name}"
                                    + (f": {reason}" if reason else "")))
            if "extended-join" in member.caps:
                member.write(build_text(member.hostmask, "JOIN", new_name, member.account or "*", member.realname))
            else:
                member.write(build(member.hostmask, "JOIN", new_name))
            if chan.topic:
                self.num(member, "332", new_name, chan.topic)
                member.write(build(self.name, "333", member.nick, new_name, chan.topic_setter, str(chan.topic_time)))
            self._send_names(member, chan)
