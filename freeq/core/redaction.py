"""Edits and deletes: IRCv3 ``draft/message-redaction`` (REDACT) and the freeq ``+draft/edit`` (on PRIVMSG)
and ``+draft/delete`` (on TAGMSG) tags, for local users and for peers' events.

Mixed into :class:`freeq.core.server.IRCServer`. The message an edit or delete names is looked up in
the store (its conversation only), then :mod:`freeq.state.redaction` says whether the user may: its
author (by DID, or by nick for a guest's message) may edit and delete, a channel operator may delete.
Refusals are standard replies: ``FAIL REDACT INVALID_TARGET|UNKNOWN_MSGID|REDACT_FORBIDDEN`` (the
spec's codes) and ``FAIL EDIT|DELETE INVALID_TARGET|MESSAGE_NOT_FOUND|AUTHOR_MISMATCH`` (freeq's).

An edit is delivered like a message (new msgid, ``+draft/edit=<original msgid>``, a signature over the
new text) and kept as an edit row; a delete is delivered as ``REDACT`` to clients that negotiated
``draft/message-redaction`` and as ``TAGMSG +draft/delete=<msgid>`` to other message-tags clients
(plain clients get nothing, as the spec allows), and kept as a delete row. Both reach peers as
ordinary ``msg`` events carrying the tags; :meth:`RedactionCommands.apply_remote_action` applies a
peer's through the same rules.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Union

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from freeq.core.shared import server_time, truncate
from freeq.irc.names import fold, is_channel
from freeq.irc.parser import Message, build
from freeq.signing import SIG_TAG
from freeq.state.channel import Channel
from freeq.state.redaction import (
    DELETE_TAG, EDIT_TAG, REACT_TAGS, REASON_TAG, REPLY_TAGS, UNREACT_TAG, delete_refusal, edit_refusal,
    drop_stray_actions, normalise_pairs, valid_msgid)
from freeq.state.rules import dm_history_key, send_refusal
from freeq.state.user import TC_TAGS, User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
    from freeq.store.chunks import StoredMessage
else:
    _Server = object

log = Logger()

#: The capability of the IRCv3 message-redaction draft.
REDACTION_CAP = "draft/message-redaction"
#: A reason is cut to this many bytes.
MAX_REASON_BYTES = 400
#: Codes of the standard replies, per command: (not found, not allowed).
_CODES = {"REDACT": ("UNKNOWN_MSGID", "REDACT_FORBIDDEN"), "EDIT": ("MESSAGE_NOT_FOUND", "AUTHOR_MISMATCH"),
          "DELETE": ("MESSAGE_NOT_FOUND", "AUTHOR_MISMATCH")}
_TEXTS = {"UNKNOWN_MSGID": "This message does not exist or is too old",
          "MESSAGE_NOT_FOUND": "This message does not exist or is too old",
          "REDACT_FORBIDDEN": "You are not authorised to delete this message",
          "AUTHOR_MISMATCH": "You are not the author of this message"}

#: Where an edit or delete applies: (history key, channel or None, the other party of a DM or None, target shown).
Place = tuple[str, Optional[Channel], Optional[User], str]


class RedactionCommands(_Server):
    """REDACT, and the edit/delete tags on PRIVMSG and TAGMSG (local and from peers)."""

    if TYPE_CHECKING:  # what this group calls in the other groups
        signature_tag: Callable[[User, str, str, str, Optional[str], float], Optional[str]]  # identity
        deliver: Callable[..., str]  # messages
        _hook_message: Callable[[User, str, str, str], Optional[str]]  # messages
        start_reaction: Callable[[User, str, dict[str, str], float], None]  # reactions
        _flush_label: Callable[[User, str, list[bytes]], None]  # server
        current_label: Optional[str]  # server: the label of the command being handled

    def irc_REDACT(self, user: User, msg: Message) -> Optional[Deferred]:
        """``REDACT <target> <msgid> [:reason]``; answered once the store has found the message (a labelled
        request gets its echo or FAIL with the label then)."""
        p = msg.params
        if len(p) < 2 or not p[0] or not p[1]:
            self.fail(user, "REDACT", "NEED_MORE_PARAMS", "REDACT", "Missing parameters")
            return None
        reason = truncate(p[2], MAX_REASON_BYTES) if len(p) > 2 else ""
        return self._start_delete(user, "REDACT", p[0], p[1], reason, self.current_label)

    def _labelled(self, user: User, label: Optional[str], fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)``; with a ``label``, what it writes to ``user`` is that label's answer."""
        if label is None:
            fn(*args)
            return
        lines: list[bytes] = []
        real = user.write
        user.write = lines.append
        try:
            fn(*args)
        finally:
            if user.write == lines.append:
                user.write = real
        if user in self.connections:
            self._flush_label(user, label, lines)

    # -- the hook from PRIVMSG/NOTICE/TAGMSG ---------------------------------------------------------
    def tagged_action(self, user: User, command: str, targets: str, text: str, tags: dict[str, str],
                      client_sig: Optional[str], now: float) -> bool:
        """A message carrying one of ``freeq.state.redaction.ACTION_TAGS``: run an edit, delete or
        reaction and return True, or normalise the react/reply tags (in place) and return False for the
        ordinary path. A malformed reply reference is refused (True)."""
        kind = None
        if command == "PRIVMSG" and EDIT_TAG in tags:
            kind = "EDIT"
        elif command == "TAGMSG" and DELETE_TAG in tags:
            kind = "DELETE"
        elif command == "TAGMSG" and (UNREACT_TAG in tags or REACT_TAGS[0] in tags or REACT_TAGS[1] in tags):
            kind = "REACT"
        if kind is not None and "," in targets:
            self.fail(user, kind, "INVALID_TARGET", targets, "Give one target")
            return True
        if kind == "EDIT":
            self._start_edit(user, targets, text, tags, client_sig, now)
            return True
        if kind == "DELETE":
            self._start_delete(user, "DELETE", targets, tags[DELETE_TAG], "")
            return True
        reply = tags.get(REPLY_TAGS[0], tags.get(REPLY_TAGS[1]))
        if reply is not None and not valid_msgid(reply):
            if command != "NOTICE":  # a NOTICE is never answered with an error
                self.fail(user, command, "INVALID_PARAMS", targets, "The reply tag must name a msgid")
            return True
        if kind == "REACT":
            self.start_reaction(user, targets, tags, now)
            return True
        drop_stray_actions(tags)
        normalise_pairs(tags, react=command == "TAGMSG")
        return False

    # -- where ------------------------------------------------------------------------------------
    def _place(self, user: User, command: str, target: str) -> Optional[Place]:
        """The conversation ``target`` names for ``user``, or ``None`` after a ``FAIL ... INVALID_TARGET``:
        a channel it is on, or an online user it shares stored history with (two accounts)."""
        if is_channel(target):
            chan = self.channels.get(fold(target))
            if chan is not None and user in chan.members:
                return chan.folded, chan, None, chan.name
        else:
            other = self.users.get(fold(target))
            if other is not None and other.registered:
                key = dm_history_key("PRIVMSG", user, other)
                if key is not None:
                    return key, None, other, other.nick
        self.fail(user, command, "INVALID_TARGET", target, f"You cannot change messages in {target}")
        return None

    def _not_found(self, user: User, command: str, target: str, msgid: str) -> None:
        code = _CODES[command][0]
        self.fail(user, command, code, target, msgid, _TEXTS[code])

    def _lookup_failed(self, failure: Any, user: User, command: str, target: str) -> None:
        log.failure("{command} lookup failed for {nick}", failure, command=command, nick=user.nick)
        if user in self.connections:
            self.fail(user, command, "MESSAGE_ERROR", target, "The message could not be looked up")

    # -- delete -----------------------------------------------------------------------------------
    def _start_delete(self, user: User, command: str, target: str, msgid: str, reason: str,
                      label: Optional[str] = None) -> Optional[Deferred]:
        place = self._place(user, command, target)
        if place is None:
            return None
        if not valid_msgid(msgid) or self.store is None:
            self._not_found(user, command, place[3], msgid)
            return None
        d = self.store.find_message(place[0], msgid)
        d.addCallback(lambda m: self._labelled(user, label, self._delete_found, m, user, command, place, msgid,
                                               reason))
        d.addErrback(lambda f: self._labelled(user, label, self._lookup_failed, f, user, command, place[3]))
        return d

    def _delete_found(self, m: Optional["StoredMessage"], user: User, command: str, place: Place, msgid: str,
                      reason: str) -> None:
        if user not in self.connections:
            return
        key, chan, other, shown = place
        if m is None:
            self._not_found(user, command, shown, msgid)
            return
        if chan is not None and user not in chan.members:
            self.fail(user, command, "INVALID_TARGET", shown, f"You cannot change messages in {shown}")
            return
        if delete_refusal(m.account, m.sender, user, chan) is not None:
            code = _CODES[command][1]
            self.fail(user, command, code, shown, msgid, _TEXTS[code])
            return
        now = self.clock.seconds()
        assert self.store is not None
        self.store.add_delete(key, m.msgid, now, user.hostmask, user.account, reason).addErrback(
            lambda f: log.failure("Storing a delete failed", f))
        recipients = chan.members if chan is not None else set(self.group(other)) | set(self.group(user))  # type: ignore[arg-type]
        new_msgid = self.ulid.new()
        self.announce_delete(user, shown, m.msgid, reason, recipients, new_msgid, now)
        tags = {DELETE_TAG: m.msgid}
        if reason:
            tags[REASON_TAG] = reason
        if chan is not None:
            self.s2s_notify("message", user, "TAGMSG", chan.name, chan, "", tags, new_msgid)
        else:
            self.s2s_notify("dm", user, "TAGMSG", other, "", tags, new_msgid)
        log.info("{nick} deleted {msgid} in {target}", nick=user.nick, msgid=m.msgid, target=shown)

    def announce_delete(self, sender: User, target: str, msgid: str, reason: str, recipients: Iterable[User],
                        new_msgid: str, now: float, echo: bool = True) -> None:
        """Tell ``recipients`` (and the sender, if it asked for echoes or negotiated redaction) that
        ``msgid`` was deleted: ``REDACT`` for ``draft/message-redaction`` clients, ``TAGMSG
        +draft/delete`` for other message-tags clients, nothing for plain ones."""
        lines: dict[tuple[bool, bool], bytes] = {}
        when = server_time(now)
        for u in set(recipients) | ({sender} if echo else set()):
            if not u.tagclass & TC_TAGS:
                continue
            redact = REDACTION_CAP in u.caps
            if u is sender and not redact and "echo-message" not in u.caps:
                continue
            timed = "server-time" in u.caps
            data = lines.get((redact, timed))
            if data is None:
                tags = {"msgid": new_msgid}
                if timed:
                    tags["time"] = when
                if sender.account and "account-tag" in u.caps:
                    tags["account"] = sender.account
                if redact:
                    params = [target, msgid] + ([reason] if reason else [])
                    data = build(sender.hostmask, "REDACT", *params, tags=tags)
                else:
                    tags[DELETE_TAG] = msgid
                    data = build(sender.hostmask, "TAGMSG", target, tags=tags)
                lines[(redact, timed)] = data
            u.write(data)

    # -- edit -------------------------------------------------------------------------------------
    def _start_edit(self, user: User, target: str, text: str, tags: dict[str, str], client_sig: Optional[str],
                    now: float) -> None:
        place = self._place(user, "EDIT", target)
        if place is None:
            return
        chan = place[1]
        if chan is not None:
            refused = send_refusal(chan, user)
            if refused is not None:
                self.num(user, "404", chan.name, "Cannot send to channel")
                return
        if self.hooks:
            reason = self._hook_message(user, "PRIVMSG", target, text)
            if reason:
                self.num(user, "404", target, reason)
                return
        msgid = tags[EDIT_TAG]
        if not valid_msgid(msgid) or self.store is None:
            self._not_found(user, "EDIT", place[3], msgid)
            return
        d = self.store.find_message(place[0], msgid)
        d.addCallback(self._edit_found, user, place, msgid, text, tags, client_sig, now)
        d.addErrback(self._lookup_failed, user, "EDIT", place[3])

    def _edit_found(self, m: Optional["StoredMessage"], user: User, place: Place, msgid: str, text: str,
                    client_tags: dict[str, str], client_sig: Optional[str], now: float) -> None:
        if user not in self.connections:
            return
        key, chan, other, shown = place
        if m is None or m.command != "PRIVMSG":
            self._not_found(user, "EDIT", shown, msgid)
            return
        if edit_refusal(m.account, m.sender, user) is not None:
            self.fail(user, "EDIT", "AUTHOR_MISMATCH", shown, msgid, _TEXTS["AUTHOR_MISMATCH"])
            return
        if chan is not None and (user not in chan.members or send_refusal(chan, user) is not None):
            self.num(user, "404", shown, "Cannot send to channel")
            return
        if other is not None and (not other.registered or self.users.get(other.folded) is not other):
            self.num(user, "401", shown, "No such nick/channel")
            return
        tags = dict(client_tags)
        tags[EDIT_TAG] = m.msgid
        normalise_pairs(tags, react=False)
        if user.account:
            sig = self.signature_tag(user, chan.folded if chan is not None else shown, shown, text, client_sig, now)
            if sig:
                tags[SIG_TAG] = sig
        if chan is not None:
            new_msgid = self.deliver(user, "PRIVMSG", shown, text, tags, chan.members, now=now)
            self.s2s_notify("message", user, "PRIVMSG", shown, chan, text, tags, new_msgid)
        else:
            assert other is not None
            recipients = set(self.group(other)) | set(self.group(user))
            new_msgid = self.deliver(user, "PRIVMSG", shown, text, tags, recipients, to_self=other is user, now=now)
            self.s2s_notify("dm", user, "PRIVMSG", other, text, tags, new_msgid)
        assert self.store is not None
        self.store.add_edit(key, m.msgid, new_msgid, now, user.hostmask, user.account, text, tags, shown).addErrback(
            lambda f: log.failure("Storing an edit failed", f))

    # -- from peers -------------------------------------------------------------------------------
    def apply_remote_action(self, actor: User, command: str, key: Optional[str], chan: Optional[Channel],
                            shown: str, text: str, tags: dict[str, str], msgid: str,
                            recipients: Iterable[User], now: float) -> bool:
        """A peer's message that carries an edit, delete or reaction tag, already past the send checks:
        apply it through the same rules as a local one (looked up in our store under ``key``; without
        it, an edit or delete is not applied here) and deliver it to ``recipients`` (local users).
        Returns False when it is not such a message (the caller delivers it as usual)."""
        local = list(recipients)
        if command == "TAGMSG" and (UNREACT_TAG in tags or REACT_TAGS[0] in tags or REACT_TAGS[1] in tags):
            self.remote_reaction(actor, key, shown, tags, msgid, local, now)  # type: ignore[attr-defined]
            return True
        edit = command == "PRIVMSG" and EDIT_TAG in tags
        delete = command == "TAGMSG" and DELETE_TAG in tags
        if not (edit or delete):
            drop_stray_actions(tags)
            normalise_pairs(tags, react=command == "TAGMSG")
            return False
        ref = tags[EDIT_TAG if edit else DELETE_TAG]
        if edit and "\n" in text:  # an edit is one line (a multiline body cannot be delivered as one PRIVMSG)
            log.warn("Federated edit of {msgid} by {nick} rejected: more than one line", msgid=ref, nick=actor.nick)
            return True
        if key is None or self.store is None or not valid_msgid(ref):
            log.warn("Federated {kind} of {msgid} by {nick} not applied: not in stored history here",
                     kind="edit" if edit else "delete", msgid=ref, nick=actor.nick)
            return True
        d = self.store.find_message(key, ref)
        d.addCallback(self._remote_found, actor, edit, key, chan, shown, text, tags, msgid, ref, local, now)
        d.addErrback(lambda f: log.failure("Federated edit/delete lookup failed", f))
        return True

    def _remote_found(self, m: Optional["StoredMessage"], actor: User, edit: bool, key: str,
                      chan: Optional[Channel], shown: str, text: str, tags: dict[str, str], msgid: str, ref: str,
                      local: list[User], now: float) -> None:
        kind = "edit" if edit else "delete"
        if m is None:
            log.warn("Federated {kind} of {msgid} by {nick} not applied: no such message here", kind=kind,
                     msgid=ref, nick=actor.nick)
            return
        refusal: Union[str, None] = (edit_refusal(m.account, m.sender, actor) if edit
                                     else delete_refusal(m.account, m.sender, actor, chan))
        if refusal is not None:
            log.warn("Federated {kind} of {msgid} by {nick} rejected: {reason}", kind=kind, msgid=ref,
                     nick=actor.nick, reason=refusal)
            return
        assert self.store is not None
        if edit:
            tags[EDIT_TAG] = m.msgid
            normalise_pairs(tags, react=False)
            self.deliver(actor, "PRIVMSG", shown, text, tags, local, msgid=msgid, now=now)
            self.store.add_edit(key, m.msgid, msgid, now, actor.hostmask, actor.account, text, tags, shown).addErrback(
                lambda f: log.failure("Storing a federated edit failed", f))
            return
        reason = truncate(tags.get(REASON_TAG, ""), MAX_REASON_BYTES)
        self.store.add_delete(key, m.msgid, now, actor.hostmask, actor.account, reason).addErrback(
            lambda f: log.failure("Storing a federated delete failed", f))
        self.announce_delete(actor, shown, m.msgid, reason, [u for u in local if u is not actor], msgid, now,
                             echo=False)
