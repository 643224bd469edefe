"""A Twisted IRC client for freeq: capability negotiation, SASL ``ATPROTO-CHALLENGE``, events, commands.

:class:`FreeqClient` is one connection. It frames and parses lines (with
:func:`freeq.irc.parser.parse`), negotiates IRCv3 capabilities (``CAP LS 302``, then a ``CAP REQ``
for the wanted ones the server offers), authenticates with a :class:`freeq.client.auth.Credential`
(chunked ``AUTHENTICATE``, DPoP nonce retries), registers, answers ``PING``, and after a
successful login registers a fresh Ed25519 session key with ``MSGSIG`` so its own ``PRIVMSG``\\s
carry a ``+freeq.at/sig`` it made itself.

What happens is published as :class:`Event`\\s (``client.on_message.add(callback)`` or
``await client.on_message.wait(predicate)``); commands are methods (:meth:`FreeqClient.join`,
:meth:`FreeqClient.say`, …), those with an answer return a ``Deferred``.

Behaviour on SASL failure: a token credential (``pds-session``, ``pds-oauth``) never becomes a
guest silently — :attr:`FreeqClient.registered` fails with :class:`SASLFailed` and the client
quits; a signer (``crypto``) does the same unless ``guest_fallback=True``, in which case it ends
capability negotiation and continues as a guest.

The client is built in layers: :mod:`freeq.client.connection` (state, framing, sending, dispatch),
:mod:`freeq.client.commands`, :mod:`freeq.client.negotiation` (CAP, SASL, MSGSIG), the modern-chat
helpers (:mod:`freeq.client.multiline`, :mod:`freeq.client.edits`, :mod:`freeq.client.markers`,
:mod:`freeq.client.history`: labeled requests, CHATHISTORY, MONITOR), and here what it makes of numerics,
messages and membership changes. :mod:`freeq.client.reconnect` keeps a client connected and catches up on
what it missed; :mod:`freeq.client.webtoken` logs in with an auth-broker web token. Events and values are in
:mod:`freeq.client.events` and :mod:`freeq.client.model`, errors in :mod:`freeq.client.errors`.
"""
from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from freeq.client.connection import DEFAULT_CAPS, MAX_LINE_BYTES
from freeq.client.edits import EditCommands
from freeq.client.history import HistoryCommands
from freeq.client.markers import MarkerCommands
from freeq.client.errors import ClientError, ConnectionClosed, IRCError, SASLFailed
from freeq.client.events import Event, OneShot
from freeq.client.model import (
    AccountEvent, ChannelState, ChatMessage, JoinEvent, PartEvent, WhoisReply, parse_server_time, split_prefix)
from freeq.client.multiline import MultilineCommands
from freeq.client.negotiation import MAX_DPOP_ROUNDS, ClientNegotiation
from freeq.irc.parser import Message

#: How many times a refused nick is retried with ``_`` appended during registration.
MAX_NICK_RETRIES = 5

_JOIN_ERRORS = frozenset({"403", "405", "437", "471", "473", "474", "475", "476", "477", "479", "489"})
_NICK_ERRORS = frozenset({"431", "432", "433", "436", "437"})


class FreeqClient(HistoryCommands, MarkerCommands, MultilineCommands, EditCommands, ClientNegotiation):  # EditCommands: edit/delete/react (issue #12)
    """One IRC connection to a freeq (or any IRCv3) server.

    :param nick: the nick to register with (``_`` is appended if it is refused during registration;
        the server may also rename a guest whose nick belongs to a DID).
    :param credential: authenticate with SASL ``ATPROTO-CHALLENGE`` (else register as a guest).
    :param caps: capabilities to request when offered (``sasl`` is added when authenticating).
    :param guest_fallback: a refused *signer* continues as a guest instead of failing.
    :param auto_msgsig: after a login, register a fresh Ed25519 session key with ``MSGSIG`` and sign
        outgoing ``PRIVMSG``/``NOTICE`` with it.
    :param clock: the reactor (time source for timeouts and signatures).
    """

    # ------------------------------------------------------------------
    # Numerics
    # ------------------------------------------------------------------
    def _numeric(self, msg: Message) -> None:
        code = msg.command
        p = msg.params
        if code.startswith("90"):
            self._sasl_numeric(code, msg)
        elif code == "001":
            self.welcomed = True
            self._negotiating = False
            if p:
                self.nick = p[0]
            self.server_name = msg.source
            if self._sasl_state == "done":
                self._register_session_key()
        elif code == "005":
            for token in p[1:-1]:
                name, _, value = token.partition("=")
                if name.startswith("-"):
                    self.isupport.pop(name[1:], None)
                else:
                    self.isupport[name] = value
        elif code in ("376", "422"):
            if self.credential is not None and self.account is None and self._sasl_state != "failed" \
                    and not self._registered.done:
                # Never a silent guest: the server skipped SASL (no CAP support, or it registered us anyway).
                self._sasl_failed("the server completed registration without SASL", None)
            self._registered.fire(self)
        elif code in _NICK_ERRORS:
            self._nick_error(msg)
        elif code in _JOIN_ERRORS and len(p) > 1:
            self._fail_pending(self._pending_joins, p[1], IRCError(code, p))
        elif code == "442" and len(p) > 1:
            self._fail_pending(self._pending_parts, p[1], IRCError(code, p))
        elif code == "332" and len(p) > 2:
            state = self.channels.get(self.fold(p[1]))
            if state is not None:
                state.topic = p[2]
        elif code == "353" and len(p) > 3:
            state = self.channels.get(self.fold(p[2]))
            if state is not None:
                prefixes = self._prefix_symbols()
                for item in p[3].split():
                    i = 0
                    while i < len(item) and item[i] in prefixes:
                        i += 1
                    nick = item[i:].split("!", 1)[0]
                    state.members[nick] = item[:i]
        elif code == "366" and len(p) > 1:
            key = self.fold(p[1])
            state = self.channels.get(key)
            if state is not None:
                for d in self._pending_joins.pop(key, []):
                    d.callback(state)
        self._whois_numeric(code, msg)

    def _fail_pending(self, table: dict[str, list[defer.Deferred]], name: str, error: Exception) -> None:
        waiting = table.get(self.fold(name))
        if waiting:
            d = waiting.pop(0)
            if not waiting:
                del table[self.fold(name)]
            d.errback(Failure(error))

    def _nick_error(self, msg: Message) -> None:
        if self._pending_nick is not None:
            _nick, d = self._pending_nick
            self._pending_nick = None
            d.errback(Failure(IRCError(msg.command, msg.params)))
            return
        if self.welcomed:
            return
        if self._nick_retries >= MAX_NICK_RETRIES:
            self._registered.fire(Failure(IRCError(msg.command, msg.params)))
            self.quit("No usable nick")
            return
        self._nick_retries += 1
        self.nick = (self.nick + "_")[-64:]
        self.send("NICK", self.nick)

    def _whois_numeric(self, code: str, msg: Message) -> None:
        p = msg.params
        if len(p) < 2 or not self._pending_whois:
            return
        entry = self._pending_whois.get(self.fold(p[1]))
        if entry is None:
            return
        reply, d = entry
        reply.lines.append(msg)
        if code == "311" and len(p) > 5:
            reply.found = True
            reply.user, reply.host, reply.realname = p[2], p[3], p[-1]
        elif code == "312" and len(p) > 2:
            reply.server = p[2]
        elif code == "330" and len(p) > 2:
            reply.account = p[2]
        elif code == "319" and len(p) > 2:
            reply.channels.extend(p[2].split())
        elif code == "318":
            del self._pending_whois[self.fold(p[1])]
            d.callback(reply)

    # ------------------------------------------------------------------
    # Messages and membership
    # ------------------------------------------------------------------
    def irc_NOTICE(self, msg: Message) -> None:
        text = msg.params[-1] if len(msg.params) > 1 else ""
        if self._sasl_notice(text):
            return
        if text.startswith("API-BEARER ") and (msg.source is None or "!" not in msg.source):
            self.bearer_token = text.split(" ", 1)[1].strip() or None
            return
        self._chat_in("NOTICE", msg, self.on_notice)

    def irc_PRIVMSG(self, msg: Message) -> None:
        self._chat_in("PRIVMSG", msg, self.on_message)

    def _chat_in(self, command: str, msg: Message, event: "Event[ChatMessage]") -> None:
        if len(msg.params) < 2:
            return
        nick, _user, _host = split_prefix(msg.source)
        target = msg.params[0]
        own = bool(nick) and self.is_me(nick)
        channel = target.lstrip(self._prefix_symbols())
        if channel[:1] and channel[0] in "#&":
            reply_to = channel
        else:
            reply_to = target if own else nick
        event.fire(ChatMessage(command, msg.source or "", nick, target, msg.params[1], dict(msg.tags or {}),
                               reply_to, own))

    def irc_JOIN(self, msg: Message) -> None:
        if not msg.params:
            return
        nick, _u, _h = split_prefix(msg.source)
        channel = msg.params[0]
        account = realname = None
        if len(msg.params) >= 3:  # extended-join: JOIN <channel> <account|*> :<realname>
            account = None if msg.params[1] == "*" else msg.params[1]
            realname = msg.params[2]
        elif msg.tags and "account" in msg.tags:
            account = msg.tags["account"]
        own = self.is_me(nick)
        key = self.fold(channel)
        if own:
            self.channels[key] = ChannelState(channel)
        state = self.channels.get(key)
        if state is not None:
            state.members[nick] = ""
        self.on_join.fire(JoinEvent(nick, msg.source or "", channel, account, realname, own))

    def irc_PART(self, msg: Message) -> None:
        if not msg.params:
            return
        nick, _u, _h = split_prefix(msg.source)
        channel = msg.params[0]
        own = self.is_me(nick)
        event = PartEvent(nick, msg.source or "", channel, msg.params[1] if len(msg.params) > 1 else None, own)
        self._left(channel, nick, own)
        if own:
            waiting = self._pending_parts.get(self.fold(channel))
            if waiting:
                d = waiting.pop(0)
                if not waiting:
                    del self._pending_parts[self.fold(channel)]
                d.callback(event)
        self.on_part.fire(event)

    def irc_KICK(self, msg: Message) -> None:
        if len(msg.params) < 2:
            return
        kicker, _u, _h = split_prefix(msg.source)
        channel, nick = msg.params[0], msg.params[1]
        own = self.is_me(nick)
        self._left(channel, nick, own)
        self.on_part.fire(PartEvent(nick, msg.source or "", channel, msg.params[2] if len(msg.params) > 2 else None,
                                    own, kicked_by=kicker))

    def _left(self, channel: str, nick: str, own: bool) -> None:
        key = self.fold(channel)
        if own:
            self.channels.pop(key, None)
            return
        state = self.channels.get(key)
        if state is not None:
            for member in list(state.members):
                if self.fold(member) == self.fold(nick):
                    del state.members[member]

    def irc_QUIT(self, msg: Message) -> None:
        nick, _u, _h = split_prefix(msg.source)
        for state in self.channels.values():
            for member in list(state.members):
                if self.fold(member) == self.fold(nick):
                    del state.members[member]
        self.on_quit.fire((nick, msg.params[0] if msg.params else ""))

    def irc_NICK(self, msg: Message) -> None:
        if not msg.params:
            return
        old, _u, _h = split_prefix(msg.source)
        new = msg.params[0]
        if self.is_me(old):
            self.nick = new
            if self._pending_nick is not None and self.fold(self._pending_nick[0]) == self.fold(new):
                d = self._pending_nick[1]
                self._pending_nick = None
                d.callback(new)
        for state in self.channels.values():
            for member in list(state.members):
                if self.fold(member) == self.fold(old):
                    state.members[new] = state.members.pop(member)
        self.on_nick.fire((old, new))

    def irc_ACCOUNT(self, msg: Message) -> None:
        if not msg.params:
            return
        nick, _u, _h = split_prefix(msg.source)
        account = None if msg.params[0] == "*" else msg.params[0]
        self.on_account.fire(AccountEvent(nick, account))

    def irc_MODE(self, msg: Message) -> None:
        if len(msg.params) < 2 or not msg.params[0] or msg.params[0][0] not in "#&":
            return
        state = self.channels.get(self.fold(msg.params[0]))
        if state is None:
            return
        prefix_modes = self._prefix_modes()
        chanmodes = self.isupport.get("CHANMODES", "beI,k,l,imnpst").split(",")
        always_arg = set("".join(chanmodes[:2])) | set(prefix_modes)
        set_arg = set(chanmodes[2]) if len(chanmodes) > 2 else set()
        args = list(msg.params[2:])
        adding = True
        for ch in msg.params[1]:
            if ch in "+-":
                adding = ch == "+"
                continue
            if ch in always_arg or (adding and ch in set_arg):
                arg = args.pop(0) if args else ""
                if ch in prefix_modes:
                    symbol = prefix_modes[ch]
                    for member in state.members:
                        if self.fold(member) == self.fold(arg):
                            have = state.members[member].replace(symbol, "")
                            state.members[member] = (symbol + have) if adding else have


class FreeqClientFactory(Factory):
    """Builds one :class:`FreeqClient` per connection with the given keyword arguments.

    ``factory.client`` is the latest protocol built (what :func:`freeq.client.connect.connect` returns).
    """

    protocol = FreeqClient  # type: ignore[assignment]

    def __init__(self, nick: str, **kwargs: Any) -> None:
        self.nick = nick
        self.kwargs = kwargs
        self.client: Optional[FreeqClient] = None

    def buildProtocol(self, addr: Any) -> FreeqClient:
        """A new client for this connection."""
        client = FreeqClient(self.nick, **self.kwargs)
        client.factory = self
        self.client = client
        return client


__all__ = [
    "DEFAULT_CAPS", "ClientError", "SASLFailed", "IRCError", "ConnectionClosed", "Event", "ChatMessage",
    "JoinEvent", "PartEvent", "AccountEvent", "ChannelState", "WhoisReply", "FreeqClient", "FreeqClientFactory",
    "split_prefix", "parse_server_time",
    # Also importable from here, as before the client was split into modules.
    "MAX_LINE_BYTES", "MAX_DPOP_ROUNDS", "MAX_NICK_RETRIES", "OneShot",
]
