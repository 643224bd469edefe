"""Channel commands: JOIN, PART, NAMES, TOPIC, LIST, INVITE, KICK, and the channel table's upkeep
(leaving, persisting, restoring).

Mixed into :class:`freeq.core.server.IRCServer`. Who may join, set the topic, invite or kick is decided
by :mod:`freeq.state.rules`; this module turns the answers into numerics and lines.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from twisted.logger import Logger

from freeq.core.shared import prefix_chars, truncate
from freeq.irc.names import fold, is_channel, valid_channel
from freeq.irc.parser import Message, build, build_text
from freeq.state.channel import OP, Channel, ChannelRecord
from freeq.state.masks import compile_glob
from freeq.state.rules import (
    consume_invite, grant_invite, invite_refusal, is_did_op, join_refusal, kick_refusal, topic_refusal,
)
from freeq.state.throttle import ip_key
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.core.shared import OverrideRefused, ServerCore as _Server
else:
    _Server = object

log = Logger()

#: The numeric refusing a JOIN, by the mode that refuses it (freeq.state.rules.join_refusal).
_JOIN_NUMERIC = {"k": "475", "l": "471", "b": "474", "i": "473"}


class ChannelCommands(_Server):
    """Joining and leaving channels, their names, topics, listing, invites and kicks."""

    if TYPE_CHECKING:  # what this group calls in the other groups
        _channel_refused: Callable[[User, Channel, Optional[str], str], bool]  # operator
        _override_refused: OverrideRefused  # operator

    def part_channel(self, chan: Channel, user: User) -> None:
        """Take ``user`` out of ``chan`` (a PART, KICK or federated leave); an empty channel without state goes."""
        chan.remove(user)
        if not chan.members and not chan.has_state():
            self.forget_channel(chan)
        elif not chan.members and chan.founder is None:
            self.empty_since[chan.folded] = self.clock.seconds()  # kept until --channel-expiry (sweep)

    def forget_channel(self, chan: Channel) -> None:
        """``chan`` is gone (empty and stateless, expired, or refused in a burst): out of the table and the
        store, and the features that keep something per channel drop it (``on_channel_gone``)."""
        if self.channels.get(chan.folded) is chan:
            del self.channels[chan.folded]
        if chan.persisted and self.store is not None:
            chan.persisted = False
            self.store.delete_channel(chan.folded)
        self.on_channel_gone(chan)

    def channel_changed(self, chan: Channel) -> None:
        """Persist a channel whose modes, topic or lists changed (or forget it when nothing is left)."""
        if self.store is None:
            return
        if chan.has_state():
            chan.persisted = True
            self.store.save_channel(chan.record())
        elif chan.persisted:
            chan.persisted = False
            self.store.delete_channel(chan.folded)

    def load_channels(self, records: Iterable[ChannelRecord]) -> None:
        """Restore persisted channels at start-up (empty until someone joins)."""
        for rec in records:
            chan = Channel.from_record(rec)
            self.channels[chan.folded] = chan
            if chan.founder is None:
                self.empty_since[chan.folded] = self.clock.seconds()  # the expiry starts again at start-up
        self.after_channels_loaded()  # hook point (freeq.core.server)

    def irc_JOIN(self, user: User, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self.num(user, "461", "JOIN", "Not enough parameters")
            return
        if msg.params[0] == "0":
            for chan in list(user.channels.values()):
                data = build_text(user.hostmask, "PART", chan.name, "Left all channels")
                self.broadcast(chan.members, data)
                self.s2s_notify("part", user, chan, "Left all channels")
                for device in self.group(user):
                    if device in chan.members:
                        self.part_channel(chan, device)
            return
        names = msg.params[0].split(",")
        keys = msg.params[1].split(",") if len(msg.params) > 1 else []
        for i, name in enumerate(names[:50]):
            self._join(user, name, keys[i] if i < len(keys) else None)

    def _join(self, user: User, name: str, key: Optional[str]) -> None:
        cfg = self.config
        if not name:
            return
        if not is_channel(name):
            self.num(user, "403", name, "No such channel")
            return
        if not valid_channel(name, cfg.channel_len):
            self.num(user, "479", name, "Illegal channel name")
            return
        folded = fold(name)
        chan = self.channels.get(folded)
        if chan is not None and user in chan.members:
            return
        if len(user.channels) >= cfg.max_channels_per_user and not user.is_oper:
            self.num(user, "405", name, "You have joined too many channels")
            return
        now = self.clock.seconds()
        status = 0
        if chan is None:
            if not user.is_oper and not self._may_create_channel(user, name, now):
                return
            chan = Channel(name, now)
            chan.modes.update("nt")
            self.channels[folded] = chan
            self.s2s_notify("channel_created", chan)
            status = OP
            if user.account:
                # The first DID to create a channel founds it: persistent ops across reconnects and restarts.
                chan.founder = user.account
                chan.did_ops[user.account] = (user.hostmask, int(now))
                self.channel_changed(chan)
        elif is_did_op(chan, user):
            status = OP  # founder and DID operators pass +k/+l/+b/+i
            consume_invite(chan, user)
        else:
            # A persisted channel is never "new" again: its key, bans and invite-only still apply.
            refused = join_refusal(chan, user, key)
            if refused is not None:
                self.num(user, _JOIN_NUMERIC[refused], chan.name, f"Cannot join channel (+{refused})")
                return
            consume_invite(chan, user)
            if not chan.members and chan.founder is None:
                status = OP  # first into an empty channel nobody owns
        devices = self.group(user)
        for device in devices:
            chan.add(device, status)
        plain = build(user.hostmask, "JOIN", chan.name)
        extended = build_text(user.hostmask, "JOIN", chan.name, user.account or "*", user.realname)
        self.broadcast(chan.members, extended, cap="extended-join", fallback=plain)
        if user.away is not None:
            self.broadcast((m for m in chan.members if m not in devices),
                           build_text(user.hostmask, "AWAY", user.away), cap="away-notify")
        for device in devices:
            if chan.topic:
                self.num(device, "332", chan.name, chan.topic)
                device.write(build(self.name, "333", device.nick, chan.name, chan.topic_setter, str(chan.topic_time)))
            self._send_names(device, chan)
        for hook in self.hooks:
            try:
                hook.on_join(user, chan)
            except Exception:
                log.failure("plugin on_join failed")
        self.s2s_notify("join", user, chan, key)
        self.after_join(user, chan)  # hook point (freeq.core.server)

    def _may_create_channel(self, user: User, name: str, now: float) -> bool:
        """Whether ``user`` may create one more channel now (its address's and account's quota); else 479."""
        keys = [ip_key(user.ip)]
        if user.account:
            keys.append("account " + user.account)
        verdict = self.channel_quota.take(keys, now)
        if verdict.allowed:
            return True
        self.metric("channel_create_refusals")
        wait = math.ceil(verdict.wait)
        self.num(user, "479", name, f"Too many channels created, try again in {wait} seconds")
        if verdict.log:
            log.warn("Channel creation refused for {nick} from {ip} (account {account}): over its quota "
                     "({burst} at once, then one per {interval} seconds; {suppressed} more refused since the last "
                     "line)",
                     nick=user.nick, ip=user.ip, account=user.account or "none", burst=self.config.channel_create_burst,
                     interval=self.config.channel_create_interval, suppressed=verdict.suppressed)
        return False

    def irc_PART(self, user: User, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self.num(user, "461", "PART", "Not enough parameters")
            return
        reason = truncate(msg.params[1], self.config.kick_len) if len(msg.params) > 1 else ""
        for name in msg.params[0].split(","):
            if not name:
                continue
            chan = self.channels.get(fold(name))
            if chan is None:
                self.num(user, "403", name, "No such channel")
                continue
            if user not in chan.members:
                self.num(user, "442", chan.name, "You're not on that channel")
                continue
            if reason:
                data = build_text(user.hostmask, "PART", chan.name, reason)
            else:
                data = build(user.hostmask, "PART", chan.name)
            self.broadcast(chan.members, data)
            self.s2s_notify("part", user, chan, reason)
            for device in self.group(user):
                if device in chan.members:
                    self.part_channel(chan, device)

    def _visible_channel(self, chan: Channel, user: User) -> bool:
        return user in chan.members or not (chan.modes & {"s", "p"})

    def _names_symbol(self, chan: Channel) -> str:
        if "s" in chan.modes:
            return "@"
        if "p" in chan.modes:
            return "*"
        return "="

    def _send_names(self, user: User, chan: Channel) -> None:
        self.before_names(user, chan)  # hook point (freeq.core.server)
        if self._visible_channel(chan, user):
            multi = "multi-prefix" in user.caps
            uhnames = "userhost-in-names" in user.caps
            show_invisible = user in chan.members
            names = []
            users = self.users
            for member, status in chan.members.items():
                if not show_invisible and "i" in member.modes:
                    continue
                if users.get(member.folded) is not member:
                    continue  # another device of a listed nick
                names.append(prefix_chars(status, multi) + (member.hostmask if uhnames else member.nick))
            head = f":{self.name} 353 {user.nick} {self._names_symbol(chan)} {chan.name} :"
            budget = 510 - len(head.encode())
            line: list[str] = []
            size = 0
            for name in names:
                n = len(name.encode()) + 1
                if line and size + n > budget:
                    user.write((head + " ".join(line) + "\r\n").encode())
                    line, size = [], 0
                line.append(name)
                size += n
            if line:
                user.write((head + " ".join(line) + "\r\n").encode())
        self.num(user, "366", chan.name, "End of /NAMES list.")

    def irc_NAMES(self, user: User, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self.num(user, "366", "*", "End of /NAMES list.")
            return
        # NAMES #a,#b: a 353/366 set per channel, at most TARGMAX (--max-targets) of them.
        for name in [n for n in msg.params[0].split(",") if n][: self.config.max_targets]:
            chan = self.channels.get(fold(name))
            if chan is None:
                self.num(user, "366", name, "End of /NAMES list.")
            else:
                self._send_names(user, chan)

    def irc_TOPIC(self, user: User, msg: Message) -> None:
        if not msg.params:
            self.num(user, "461", "TOPIC", "Not enough parameters")
            return
        chan = self.channels.get(fold(msg.params[0]))
        if chan is None or (not self._visible_channel(chan, user) and not user.is_oper):
            self.num(user, "403", msg.params[0], "No such channel")
            return
        if len(msg.params) == 1:
            if user not in chan.members and "s" in chan.modes:
                self.num(user, "442", chan.name, "You're not on that channel")
            elif chan.topic:
                self.num(user, "332", chan.name, chan.topic)
                user.write(build(self.name, "333", user.nick, chan.name, chan.topic_setter, str(chan.topic_time)))
            else:
                self.num(user, "331", chan.name, "No topic is set")
            return
        if self._channel_refused(user, chan, topic_refusal(chan, user), "TOPIC"):
            return
        chan.topic = truncate(msg.params[1], self.config.topic_len)
        chan.topic_setter = user.hostmask
        chan.topic_time = int(self.clock.seconds())
        self.channel_changed(chan)
        self.s2s_notify("topic", user, chan)
        data = build_text(user.hostmask, "TOPIC", chan.name, chan.topic)
        self.broadcast(chan.members, data)
        if user not in chan.members:
            user.write(data)

    def irc_LIST(self, user: User, msg: Message) -> None:
        now = self.clock.seconds()
        filters: list[Callable[[Channel], bool]] = []
        wanted: Optional[list[str]] = None
        if msg.params and msg.params[0]:
            items = msg.params[0].split(",")
            if any(self._mask_refused(user, "LIST", item) for item in items):
                self.num(user, "321", "Channel", "Users  Name")
                self.num(user, "323", "End of /LIST")
                return
            for item in items:
                f = self._elist_filter(item, now)
                if f is not None:
                    filters.append(f)
                elif is_channel(item) and "*" not in item and "?" not in item:
                    wanted = (wanted or []) + [item]  # a channel name; "#c*n2" is a mask, matched below
                else:
                    glob = compile_glob(item)

                    def by_name(c: Channel, glob: Any = glob) -> bool:
                        return bool(glob.match(c.folded))

                    filters.append(by_name)
        self.num(user, "321", "Channel", "Users  Name")
        if wanted is not None:
            chans: Iterable[Channel] = [c for c in (self.channels.get(fold(n)) for n in wanted) if c is not None]
        else:
            chans = list(self.channels.values())
        for chan in chans:
            if not chan.members or not self._visible_channel(chan, user):
                continue
            if user not in chan.members and "s" in chan.modes:
                continue
            if not all(f(chan) for f in filters):
                continue
            modes, _ = chan.mode_string(False)
            self.num(user, "322", chan.name, str(len(chan.members)), f"[{modes}] {chan.topic}")
        self.num(user, "323", "End of /LIST")

    @staticmethod
    def _elist_filter(item: str, now: float) -> Optional[Callable[[Channel], bool]]:
        try:
            if item.startswith(">"):
                n = int(item[1:])
                return lambda c: len(c.members) > n
            if item.startswith("<"):
                n = int(item[1:])
                return lambda c: len(c.members) < n
            if item[:2] in ("C>", "C<", "T>", "T<"):
                minutes = int(item[2:])
                cutoff = now - minutes * 60
                if item[0] == "C":
                    return (lambda c: c.created < cutoff) if item[1] == ">" else (lambda c: c.created > cutoff)
                return (lambda c: bool(c.topic) and c.topic_time < cutoff) if item[1] == ">" else (
                    lambda c: bool(c.topic) and c.topic_time > cutoff)
        except ValueError:
            return lambda c: False
        if item.startswith("!"):
            glob = compile_glob(item[1:])
            return lambda c: not glob.match(c.folded)
        return None

    def irc_INVITE(self, user: User, msg: Message) -> None:
        if not msg.params:
            if not user.invites:
                self.num(user, "337", "End of /INVITE list")
                return
            for folded in sorted(user.invites):
                chan = self.channels.get(folded)
                if chan is not None:
                    self.num_raw(user, "336", chan.name)
            self.num(user, "337", "End of /INVITE list")
            return
        if len(msg.params) < 2:
            self.num(user, "461", "INVITE", "Not enough parameters")
            return
        nick, name = msg.params[0], msg.params[1]
        target = self.users.get(fold(nick))
        if target is None or not target.registered:
            self.num(user, "401", nick, "No such nick/channel")
            return
        chan = self.channels.get(fold(name))
        if chan is None:
            self.num(user, "403", name, "No such channel")
            return
        if self._channel_refused(user, chan, invite_refusal(chan, user), "INVITE"):
            return
        if target in chan.members:
            self.num(user, "443", target.nick, chan.name, "is already on channel")
            return
        grant_invite(chan, target, self.config.max_invites_per_user)
        self.s2s_notify("invite", user, target, chan)
        self.num_raw(user, "341", target.nick, chan.name)
        target.write(build(user.hostmask, "INVITE", target.nick, chan.name))
        if target.away is not None:
            self.num(user, "301", target.nick, target.away)
        notify = build(user.hostmask, "INVITE", target.nick, chan.name)
        for member, status in chan.members.items():
            if member is not user and status & OP and "invite-notify" in member.caps:
                member.write(notify)

    def irc_KICK(self, user: User, msg: Message) -> None:
        if len(msg.params) < 2:
            self.num(user, "461", "KICK", "Not enough parameters")
            return
        chans = msg.params[0].split(",")
        nicks = msg.params[1].split(",")[: self.config.max_targets]
        reason = truncate(msg.params[2], self.config.kick_len) if len(msg.params) > 2 and msg.params[2] else user.nick
        if len(chans) == 1:
            pairs = [(chans[0], n) for n in nicks]
        elif len(chans) == len(nicks):
            pairs = list(zip(chans, nicks))
        else:
            self.num(user, "461", "KICK", "Not enough parameters")
            return
        for name, nick in pairs:
            chan = self.channels.get(fold(name))
            if chan is None:
                self.num(user, "403", name, "No such channel")
                continue
            refusal = kick_refusal(chan, user)
            if refusal is not None and not user.oper_holds("override"):
                self._channel_refused(user, chan, refusal, "KICK")
                continue
            victim = self.users.get(fold(nick))
            if victim is None or victim not in chan.members:
                self.num(user, "441", nick, chan.name, "They aren't on that channel")
                continue
            if refusal is not None and self._override_refused(user, chan, "KICK"):
                continue
            data = build_text(user.hostmask, "KICK", chan.name, victim.nick, reason)
            self.broadcast(chan.members, data)
            if user not in chan.members:
                user.write(data)
            for device in self.group(victim):
                if device in chan.members:
                    self.part_channel(chan, device)
            self.s2s_notify("kick", user, chan, victim, reason)
