"""The commands of :class:`freeq.client.protocol.FreeqClient`: join, part, say, notice, nick, WHOIS, quit,
and the ``MSGSIG`` signature of outgoing messages."""
from __future__ import annotations

from typing import Optional

from twisted.internet import defer

from freeq.client.auth import b64url
from freeq.client.connection import ClientConnection
from freeq.client.errors import ClientError
from freeq.client.model import WhoisReply
from freeq.signing import SIG_TAG, canonical


class ClientCommands(ClientConnection):
    """Commands a client sends; those with an answer return a ``Deferred``."""

    def join(self, channel: str, key: Optional[str] = None) -> defer.Deferred:
        """Join ``channel``; fires with its :class:`ChannelState` once the names list is complete,
        fails with :class:`IRCError` if the server refuses (e.g. 474 banned, 475 bad key)."""
        if self.fold(channel) in self.channels:
            return defer.succeed(self.channels[self.fold(channel)])
        d: defer.Deferred = defer.Deferred()
        self._pending_joins.setdefault(self.fold(channel), []).append(d)
        if key is None:
            self.send("JOIN", channel)
        else:
            self.send("JOIN", channel, key)
        return d

    def part(self, channel: str, reason: Optional[str] = None) -> defer.Deferred:
        """Leave ``channel``; fires with the :class:`PartEvent` (or fails with :class:`IRCError`)."""
        d: defer.Deferred = defer.Deferred()
        self._pending_parts.setdefault(self.fold(channel), []).append(d)
        if reason:
            self.send("PART", channel, reason)
        else:
            self.send("PART", channel)
        return d

    def say(self, target: str, text: str) -> None:
        """``PRIVMSG`` ``text`` to a channel or nick (one message per line of ``text``), signed with the
        session key when ``MSGSIG`` was accepted."""
        self._chat("PRIVMSG", target, text)

    def notice(self, target: str, text: str) -> None:
        """``NOTICE`` ``text`` to a channel or nick (signed like :meth:`say`)."""
        self._chat("NOTICE", target, text)

    def _chat(self, command: str, target: str, text: str) -> None:
        for line in text.replace("\r\n", "\n").split("\n"):
            if not line:
                continue
            tags = None
            sig = self.sign(target, line)
            if sig is not None:
                tags = {SIG_TAG: sig}
            self.send(command, target, line, tags=tags)

    def sign(self, target: str, text: str, timestamp: Optional[float] = None) -> Optional[str]:
        """The ``+freeq.at/sig`` value for ``text`` to ``target`` (``None`` when not signing): Ed25519 over
        ``did \\0 target \\0 text \\0 unix-seconds`` with the session key, where a channel target is
        case-folded without its status prefix (the server's canonical form) and a nick is as typed."""
        if not (self.msgsig_active and self.session_key is not None and self.account
                and "message-tags" in self.caps):
            return None
        second = int(self.clock.seconds() if timestamp is None else timestamp)
        return b64url(self.session_key.sign(canonical(self.account, self.canonical_target(target), text, second)))

    def canonical_target(self, target: str) -> str:
        """The target as it is signed: a channel (status prefix removed) case-folded, a nick unchanged."""
        name = target.lstrip(self._prefix_symbols()) if len(target) > 1 else target
        if name[:1] and name[0] in self.isupport.get("CHANTYPES", "#&"):
            return self.fold(name)
        return target

    @property
    def session_public_key(self) -> Optional[bytes]:
        """The raw 32-byte public half of :attr:`session_key`."""
        if self.session_key is None:
            return None
        return self.session_key.public_key().public_bytes_raw()

    def change_nick(self, nick: str) -> defer.Deferred:
        """``NICK``; fires with the new nick when the server confirms, fails with :class:`IRCError` (e.g. 433)."""
        if self._pending_nick is not None:
            return defer.fail(ClientError("a nick change is already in progress"))
        d: defer.Deferred = defer.Deferred()
        self._pending_nick = (nick, d)
        self.send("NICK", nick)
        return d

    def whois(self, nick: str) -> defer.Deferred:
        """``WHOIS``; fires with a :class:`WhoisReply` at 318 (``found`` false after 401)."""
        key = self.fold(nick)
        if key in self._pending_whois:
            return defer.fail(ClientError(f"a WHOIS for {nick} is already in progress"))
        d: defer.Deferred = defer.Deferred()
        self._pending_whois[key] = (WhoisReply(nick), d)
        self.send("WHOIS", nick)
        return d

    def quit(self, reason: str = "Leaving", timeout: float = 5.0) -> defer.Deferred:
        """``QUIT``; fires when the connection is closed (closed by us after ``timeout`` seconds)."""
        if self.is_connected:
            self.send("QUIT", reason)
            self._quit_timer = self.clock.callLater(timeout, self._force_close)
        return self.closed

    def _force_close(self) -> None:
        self._drop()

