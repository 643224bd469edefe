"""A connected (or registering) user, as plain data."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from freeq.irc.names import fold
from freeq.opers import ALL_PRIVILEGES

if TYPE_CHECKING:
    from freeq.state.channel import Channel

#: Bits of :attr:`User.tagclass`: which server tags a recipient gets on a message.
TC_TAGS = 1  # message-tags: client tags, msgid, bot, account when account-tag
TC_TIME = 2  # server-time
TC_ACCOUNT = 4  # account-tag

GUEST_HOST = "freeq/guest"

#: What a user starts with: shared, so an idle connection carries no empty sets of its own.
NO_MODES: frozenset[str] = frozenset()
NO_CAPS: frozenset[str] = frozenset()


class User:
    """One client session. Holds no transport: ``write`` is a callable that the
    connection layer installs (a byte sink), and ``conn`` is opaque to the model.

    Most users never have modes, invites or MONITOR entries, so those cost nothing until used:
    ``modes`` is a frozenset replaced on change (set it through ``IRCServer.set_user_mode``,
    which keeps the LUSERS counts), and ``invites``/``monitoring`` are made on first access
    (:meth:`invited_to`, :meth:`forget_invite` and :meth:`monitored_nicks` read without making them).
    """

    __slots__ = (
        "write", "conn", "nick", "folded", "username", "realname", "host", "ip",
        "account", "modes", "away", "caps", "tagclass", "channels", "registered",
        "signon", "last_active", "last_spoke", "cap_version", "cap_negotiating", "nick_given",
        "user_given", "pass_ok", "_monitoring", "_invites", "server", "hostmask", "sasl", "handle", "session_key",
        "oper_name", "oper_privileges", "__weakref__",
    )

    def __init__(self, conn: Any, write: Callable[[bytes], None], ip: str, now: float, server: str) -> None:
        self.conn = conn
        self.write = write
        self.ip = ip  # never shown to other clients
        self.nick = "*"
        self.folded = "*"
        self.username = "~u"
        self.realname = ""
        self.host = GUEST_HOST
        self.account: Optional[str] = None
        self.modes: frozenset[str] | set[str] = NO_MODES
        self.away: Optional[str] = None
        self.caps: frozenset[str] = NO_CAPS
        self.tagclass = 0
        self.channels: dict[str, "Channel"] = {}
        self.registered = False
        self.signon = now
        self.last_active = now  # any line (keepalive, ping timeout)
        self.last_spoke = now  # PRIVMSG/NOTICE only (WHOIS idle time)
        self.cap_version = 0
        self.cap_negotiating = False
        self.nick_given = False
        self.user_given = False
        self.pass_ok = False
        self._monitoring: Optional[dict[str, str]] = None
        self._invites: Optional[set[str]] = None
        self.server = server
        self.hostmask = "*!~u@" + GUEST_HOST
        self.sasl: Any = None  # freeq.auth.sasl.SaslExchange once AUTHENTICATE is used
        self.handle: Optional[str] = None  # AT Protocol handle of the account
        self.session_key: Optional[bytes] = None  # MSGSIG Ed25519 public key
        # While +o: the [[oper]] account it OPERed as (None: the shared --oper-password or --oper-dids) and what
        # it may do (freeq.opers.PRIVILEGES; every one unless an account narrows them). Read through oper_holds.
        self.oper_name: Optional[str] = None
        self.oper_privileges: frozenset[str] = ALL_PRIVILEGES

    @property
    def monitoring(self) -> dict[str, str]:
        """The nicks this user MONITORs: folded nick -> the spelling it gave (made on first access)."""
        watched = self._monitoring
        if watched is None:
            watched = self._monitoring = {}
        return watched

    @monitoring.setter
    def monitoring(self, value: dict[str, str]) -> None:
        self._monitoring = value

    def monitored_nicks(self) -> list[str]:
        """The folded nicks of :attr:`monitoring`, without making the dict."""
        return list(self._monitoring) if self._monitoring else []

    @property
    def invites(self) -> set[str]:
        """The folded channels this user was INVITEd to (made on first access)."""
        invites = self._invites
        if invites is None:
            invites = self._invites = set()
        return invites

    @invites.setter
    def invites(self, value: set[str]) -> None:
        self._invites = value

    def invited_to(self, folded: str) -> bool:
        """Whether an INVITE to channel ``folded`` is pending."""
        return self._invites is not None and folded in self._invites

    def forget_invite(self, folded: str) -> None:
        """Drop a pending INVITE to channel ``folded`` (the set goes when it is empty)."""
        invites = self._invites
        if invites:
            invites.discard(folded)
            if not invites:
                self._invites = None

    def set_nick(self, nick: str) -> None:
        """Change the nick (the registry's map is updated by :class:`ServerState`)."""
        self.nick = nick
        self.folded = fold(nick)
        self._remask()

    def set_userhost(self, username: str, host: str) -> None:
        """Change the visible user and host (the cloak)."""
        self.username = username
        self.host = host
        self._remask()

    def _remask(self) -> None:
        self.hostmask = f"{self.nick}!{self.username}@{self.host}"

    def set_caps(self, caps: frozenset[str]) -> None:
        """Replace the enabled capabilities and recompute the tag class used on fan-out."""
        self.caps = caps
        tc = 0
        if "message-tags" in caps:
            tc |= TC_TAGS
        if "server-time" in caps:
            tc |= TC_TIME
        if "account-tag" in caps:
            tc |= TC_ACCOUNT
        self.tagclass = tc

    @property
    def is_oper(self) -> bool:
        """Whether this user is a server operator (user mode ``+o``)."""
        return "o" in self.modes

    def oper_holds(self, privilege: str) -> bool:
        """Whether this user is a server operator holding ``privilege`` (one of ``freeq.opers.PRIVILEGES``)."""
        return "o" in self.modes and privilege in self.oper_privileges

    def set_oper(self, name: Optional[str], privileges: frozenset[str]) -> None:
        """Record the oper account and privileges of an OPER (the ``+o`` itself goes through set_user_mode)."""
        self.oper_name = name
        self.oper_privileges = privileges

    @property
    def is_bot(self) -> bool:
        """Whether this user marked itself a bot (user mode ``+B``)."""
        return "B" in self.modes

    def __repr__(self) -> str:
        return f"<User {self.nick}>"
