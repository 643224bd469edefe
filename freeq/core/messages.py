"""Messages: PRIVMSG, NOTICE and TAGMSG to channels (with STATUSMSG) and to users, and the fan-out.

Mixed into :class:`freeq.core.server.IRCServer`. :meth:`MessageCommands.deliver` is the hot path of
fan-out (federation calls it too): one serialisation per tag class, then one write per recipient.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Optional

from twisted.logger import Logger

from freeq.core.shared import SEND_REFUSAL, server_time
from freeq.irc.names import fold, is_channel
from freeq.irc.parser import Message, build, build_text
from freeq.signing import SIG_TAG
from freeq.state.redaction import ACTION_TAGS
from freeq.state.rules import channel_history_key, dm_history_key, send_refusal, status_recipients, status_target
from freeq.state.user import TC_ACCOUNT, TC_TAGS, TC_TIME, User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
else:
    _Server = object

log = Logger()


class MessageCommands(_Server):
    """PRIVMSG, NOTICE, TAGMSG: permission, signatures, fan-out, federation and history."""

    if TYPE_CHECKING:  # what this group calls in the other groups
        signature_tag: Callable[[User, str, str, str, Optional[str], float], Optional[str]]  # identity
        multiline_line: Callable[[User, Message, str], bool]  # multiline
        write_unlabelled: Callable[[User, bytes], None]  # server
        tagged_action: Callable[[User, str, str, str, dict[str, str], Optional[str], float], bool]  # redaction
        deliver_multiline: Callable[..., str]  # multiline

    def irc_PRIVMSG(self, user: User, msg: Message) -> None:
        self._message(user, msg, "PRIVMSG")

    def irc_NOTICE(self, user: User, msg: Message) -> None:
        self._message(user, msg, "NOTICE")

    def irc_TAGMSG(self, user: User, msg: Message) -> None:
        self._message(user, msg, "TAGMSG")

    def _message(self, user: User, msg: Message, command: str) -> None:
        if msg.tags and "batch" in msg.tags and self.multiline_line(user, msg, command):
            return  # a line of an open draft/multiline batch: kept for its BATCH -
        notice = command == "NOTICE"
        tagmsg = command == "TAGMSG"
        now = self.clock.seconds()  # one time per message: the time tag, the signature and history agree
        if not tagmsg:
            user.last_spoke = user.last_active  # WHOIS idle counts from the last message, not PINGs
        params = msg.params
        if not params or not params[0]:
            if not notice:
                self.num(user, "411", f"No recipient given ({command})")
            return
        if tagmsg:
            text = ""
        elif len(params) < 2 or params[1] == "":
            if not notice:
                self.num(user, "412", "No text to send")
            return
        else:
            text = params[1]
        client_tags: dict[str, str] = {}
        if msg.tags:
            for k, v in msg.tags.items():
                if k[:1] == "+":
                    client_tags[k] = v
        # A client never supplies the signature tag: the server verifies or makes it (guests get none).
        client_sig = client_tags.pop(SIG_TAG, None)
        if tagmsg and not client_tags:
            return
        # Edits, deletes, reactions and replies (freeq.core.redaction); ordinary messages pay one empty-dict test.
        if client_tags and not ACTION_TAGS.isdisjoint(client_tags) and self.tagged_action(
                user, command, params[0], text, client_tags, client_sig, now):
            return
        targets = params[0].split(",")
        if len(targets) > self.config.max_targets:
            self.num(user, "407", params[0], f"Too many recipients. Only {self.config.max_targets} processed")
            targets = targets[: self.config.max_targets]
        for target in targets:
            if not target:
                continue
            if self.hooks and not tagmsg:
                reason = self._hook_message(user, command, target, text)
                if reason:
                    if not notice:
                        self.num(user, "404", target, reason)
                    continue
            status_min, name = status_target(target)
            tags = client_tags
            if user.account and not tagmsg:
                sig = self.signature_tag(user, fold(name) if is_channel(name) else name, name, text, client_sig, now)
                if sig:
                    tags = dict(client_tags)
                    tags[SIG_TAG] = sig
            if is_channel(name):
                self._channel_message(user, command, target, name, status_min, text, tags, notice, now)
            else:
                self._private_message(user, command, target, text, tags, notice, now)

    def _hook_message(self, user: User, command: str, target: str, text: str) -> Optional[str]:
        for hook in self.hooks:
            try:
                reason = hook.on_message(user, command, target, text)
            except Exception:
                log.failure("plugin on_message failed")
                continue
            if reason:
                return str(reason)
        return None

    def _channel_message(self, user: User, command: str, target: str, name: str, status_min: int,
                         text: str, client_tags: dict[str, str], notice: bool, now: float,
                         multiline: bool = False) -> None:
        """One message (``multiline``: an assembled draft/multiline body) to channel ``name``: the send rule,
        fan-out, federation and history."""
        chan = self.channels.get(fold(name))
        if chan is None:
            if not notice:
                self.num(user, "403", name, "No such channel")
            return
        refused = send_refusal(chan, user)
        if refused is not None:
            if not notice:
                self.num(user, "404", chan.name, SEND_REFUSAL[refused])
            return
        target_display = (target[0] + chan.name) if status_min else chan.name
        if multiline:
            msgid = self.deliver_multiline(user, command, target_display, text, client_tags,
                                           status_recipients(chan, status_min), now=now)
            self.s2s_notify("multiline_message", user, command, target_display, chan, text, client_tags, msgid)
        else:
            msgid = self.deliver(user, command, target_display, text, client_tags,
                                 status_recipients(chan, status_min), now=now)
            self.s2s_notify("message", user, command, target_display, chan, text, client_tags, msgid)
        key = channel_history_key(chan, command, status_min)
        if self.store is not None and key is not None:
            self.store.append_message(key, msgid, now, command, user.hostmask, user.account,
                                      chan.name, text, client_tags)

    def _private_message(self, user: User, command: str, target: str, text: str,
                         client_tags: dict[str, str], notice: bool, now: float, multiline: bool = False) -> None:
        """One message (``multiline``: an assembled body) to a user: every device of both sides, federation
        and history."""
        nick = target.split("@", 1)[0] if "@" in target else target
        other = self.users.get(fold(nick))
        if other is None or not other.registered:
            if not notice:
                self.num(user, "401", target, "No such nick/channel")
            return
        if command == "PRIVMSG" and other.away is not None:
            self.num(user, "301", other.nick, other.away)
        # Every device of the recipient gets it, and so do the sender's other devices (the conversation
        # stays in sync); deliver() skips the sending connection itself unless it asked for echo-message.
        recipients = set(self.group(other)) | set(self.group(user))
        if multiline:
            msgid = self.deliver_multiline(user, command, other.nick, text, client_tags, recipients,
                                           to_self=other is user, now=now)
            self.s2s_notify("multiline_dm", user, command, other, text, client_tags, msgid)
        else:
            msgid = self.deliver(user, command, other.nick, text, client_tags, recipients, to_self=other is user,
                                 now=now)
            self.s2s_notify("dm", user, command, other, text, client_tags, msgid)
        key = dm_history_key(command, user, other)
        if self.store is not None and key is not None:
            self.store.append_message(key, msgid, now, command,
                                      user.hostmask, user.account, other.nick, text, client_tags)

    def deliver(self, sender: User, command: str, target: str, text: str, client_tags: dict[str, str],
                recipients: Iterable[User], to_self: bool = False, msgid: Optional[str] = None,
                now: Optional[float] = None) -> str:
        """Fan one message out. Serialised once per distinct tag class, then one write per recipient.

        The sender is skipped unless it negotiated ``echo-message`` (then it gets
        its own copy, with the same ``msgid``). ``now`` is the message's time: pass the one used
        for its signature and its history row so that all three agree.
        """
        self.metric("messages")
        if now is None:
            now = self.clock.seconds()
        msgid = msgid or self.ulid.new()
        variants: list[Optional[bytes]] = [None] * 8
        tagmsg = command == "TAGMSG"
        source = sender.hostmask
        echo = to_self or "echo-message" in sender.caps

        def render(tc: int) -> bytes:
            tags: dict[str, str] = {}
            if tc & TC_TAGS:
                tags.update(client_tags)
                tags["msgid"] = msgid
                if sender.is_bot:
                    tags["bot"] = ""
            if tc & TC_TIME:
                tags["time"] = server_time(now)
            if tc & TC_ACCOUNT and sender.account:
                tags["account"] = sender.account
            if tagmsg:
                return build(source, "TAGMSG", target, tags=tags or None)
            return build_text(source, command, target, text, tags=tags or None)

        if tagmsg:
            for u in recipients:
                if u is sender or not u.tagclass & TC_TAGS:
                    continue
                data = variants[u.tagclass]
                if data is None:
                    data = variants[u.tagclass] = render(u.tagclass)
                u.write(data)
        else:
            for u in recipients:
                if u is sender:
                    continue
                data = variants[u.tagclass]
                if data is None:
                    data = variants[u.tagclass] = render(u.tagclass)
                u.write(data)
        if echo and (not tagmsg or sender.tagclass & TC_TAGS):
            data = variants[sender.tagclass]
            if data is None:
                data = render(sender.tagclass)
            if to_self:
                # To oneself: the delivery is a side effect, never part of a labelled reply; with echo-message
                # the echo follows as the reply (labeled-response), so the client gets both.
                self.write_unlabelled(sender, data)
                if "echo-message" in sender.caps:
                    sender.write(data)
            else:
                sender.write(data)
        return msgid
