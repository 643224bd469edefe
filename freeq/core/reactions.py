"""Reactions: TAGMSG with ``+draft/react`` / ``+react`` (and ``+draft/reply`` / ``+reply`` naming the message),
and ``+freeq.at/unreact`` to take one back, for local users and peers' events.

Mixed into :class:`freeq.core.server.IRCServer`. Both spellings are relayed (IRCv3 clients read the
``draft/`` ones, the freeq SDK the short ones). A reaction that names a stored message is kept (at
most ``MAX_REACTIONS_PER_USER`` per user and ``MAX_REACTIONS_PER_MESSAGE`` per message: beyond, ``FAIL
REACT TOO_MANY_REACTIONS`` and nothing is relayed) and shows in history as ``+freeq.at/reactions``.
Clients without message-tags get ``PRIVMSG <target> :\\x01ACTION reacted with <emoji>\\x01`` instead. A
kept reaction keeps its msgid: ``REDACT`` (or ``+draft/delete``) of it removes it, by the reactor or a
channel operator (the IRCv3 message-redaction use case).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.logger import Logger

from freeq.core.shared import SEND_REFUSAL
from freeq.irc.names import fold, is_channel
from freeq.irc.parser import build_text
from freeq.state.redaction import REACT_TAGS, REPLY_TAGS, UNREACT_TAG, normalise_pairs, valid_msgid, valid_reaction
from freeq.state.rules import channel_history_key, dm_history_key, send_refusal, status_recipients, status_target
from freeq.state.user import TC_TAGS, User
from freeq.store.redaction import TOO_MANY

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
else:
    _Server = object

log = Logger()



def _reaction(tags: dict[str, str]) -> tuple[str, bool]:
    """The emoji of a react or unreact message, and whether it is an unreact."""
    if UNREACT_TAG in tags:
        return tags[UNREACT_TAG], True
    return tags.get(REACT_TAGS[0], tags.get(REACT_TAGS[1], "")), False


class ReactionCommands(_Server):
    """React and unreact (local and from peers): checks, persistence, relay and the plain-client fallback."""

    if TYPE_CHECKING:  # what this group calls in the other groups
        deliver: Callable[..., str]  # messages

    def start_reaction(self, user: User, target: str, tags: dict[str, str], now: float) -> None:
        """A local user's react/unreact TAGMSG to ``target`` (one target)."""
        emoji, unreact = _reaction(tags)
        if not valid_reaction(emoji):
            self.fail(user, "REACT", "INVALID_REACTION", target,
                      "A reaction is one emoji of at most 64 bytes, without spaces, ':', ';' or ','")
            return
        reply = tags.get(REPLY_TAGS[0], tags.get(REPLY_TAGS[1]))
        normalise_pairs(tags)
        status_min, name = status_target(target)
        if is_channel(name):
            chan = self.channels.get(fold(name))
            if chan is None:
                self.num(user, "403", name, "No such channel")
                return
            refused = send_refusal(chan, user)
            if refused is not None:
                self.num(user, "404", chan.name, SEND_REFUSAL[refused])
                return
            shown = (target[0] + chan.name) if status_min else chan.name
            recipients = list(status_recipients(chan, status_min))
            key = channel_history_key(chan, "PRIVMSG", status_min)
            other = None
        else:
            other = self.users.get(fold(name))
            if other is None or not other.registered:
                self.num(user, "401", target, "No such nick/channel")
                return
            shown = other.nick
            recipients = list(set(self.group(other)) | set(self.group(user)))
            key = dm_history_key("PRIVMSG", user, other)
            chan = None

        msgid = self.ulid.new()  # kept with the reaction: REDACT of this msgid removes it

        def relay(outcome: object = None) -> None:
            if user not in self.connections:
                return
            if outcome == TOO_MANY:
                self.fail(user, "REACT", "TOO_MANY_REACTIONS", shown, reply or "*",
                          "Too many reactions on this message")
                return
            self.deliver(user, "TAGMSG", shown, "", tags, recipients, to_self=other is user, msgid=msgid, now=now)
            if not unreact:
                self._reaction_fallback(user, shown, emoji, recipients)
            if chan is not None:
                self.s2s_notify("message", user, "TAGMSG", shown, chan, "", tags, msgid)
            else:
                self.s2s_notify("dm", user, "TAGMSG", other, "", tags, msgid)

        if key is None or reply is None or self.store is None:
            relay()
            return
        d = self._store_reaction(key, reply, emoji, user, msgid, unreact, now)
        d.addCallback(relay)
        d.addErrback(lambda f: log.failure("Storing a reaction by {nick} failed", f, nick=user.nick))

    def _store_reaction(self, key: str, reply: str, emoji: str, actor: User, msgid: str, unreact: bool,
                        now: float) -> Any:
        """Add (or with ``unreact`` remove) ``actor``'s reaction ``emoji`` to message ``reply`` of conversation
        ``key`` in the store; the Deferred fires with the store's outcome (e.g. too many reactions)."""
        assert self.store is not None
        if unreact:
            return self.store.remove_reaction(key, reply, emoji, actor.nick, actor.account)
        return self.store.add_reaction(key, reply, now, emoji, actor.nick, actor.account, msgid)

    def _reaction_fallback(self, sender: User, target: str, emoji: str, recipients: list[User]) -> None:
        """Recipients without message-tags see the reaction as an ACTION (built once, if anyone needs it)."""
        line: Optional[bytes] = None
        for u in recipients:
            if u is sender or u.tagclass & TC_TAGS:
                continue
            if line is None:
                line = build_text(sender.hostmask, "PRIVMSG", target, f"\x01ACTION reacted with {emoji}\x01")
            u.write(line)

    def remote_reaction(self, actor: User, key: Optional[str], shown: str, tags: dict[str, str], msgid: str,
                        local: list[User], now: float) -> None:
        """A peer's react/unreact, past its send checks: the same bounds, then delivery to ``local`` users."""
        emoji, unreact = _reaction(tags)
        if not valid_reaction(emoji):
            log.warn("Federated reaction by {nick} rejected: not a valid reaction", nick=actor.nick)
            return
        reply = tags.get(REPLY_TAGS[0], tags.get(REPLY_TAGS[1]))
        if reply is not None and not valid_msgid(reply):
            log.warn("Federated reaction by {nick} rejected: bad reply reference", nick=actor.nick)
            return
        normalise_pairs(tags)
        recipients = [u for u in local if u is not actor]

        def relay(outcome: object = None) -> None:
            if outcome == TOO_MANY:
                log.warn("Federated reaction by {nick} to {msgid} not applied: too many reactions", nick=actor.nick,
                         msgid=reply)
                return
            self.deliver(actor, "TAGMSG", shown, "", tags, recipients, msgid=msgid, now=now)
            if not unreact:
                self._reaction_fallback(actor, shown, emoji, recipients)

        if key is None or reply is None or self.store is None:
            relay()
            return
        d = self._store_reaction(key, reply, emoji, actor, msgid, unreact, now)
        d.addCallback(relay)
        d.addErrback(lambda f: log.failure("Storing a federated reaction failed", f))
