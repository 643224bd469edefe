"""Operator commands: OPER, KILL, SQUIT, CONNECT, WALLOPS, and the refusal of a server operator's
override that a server sharing the channel would not apply.

Mixed into :class:`freeq.core.server.IRCServer`.
"""
from __future__ import annotations

import hmac
import math
from typing import TYPE_CHECKING, Callable, Optional

from twisted.logger import Logger

from freeq.core.shared import truncate
from freeq.irc.names import fold
from freeq.irc.parser import Message, build, build_text
from freeq.state.channel import Channel
from freeq.state.links import FederationControl, LinkControl
from freeq.state.rules import NOT_ON_CHANNEL
from freeq.state.throttle import ip_key
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
else:
    _Server = object

log = Logger()


class OperatorCommands(_Server):
    """OPER and the commands it unlocks; the check that a channel override would be applied everywhere."""

    if TYPE_CHECKING:  # what this group calls in the other groups
        set_user_mode: Callable[[User, str, bool], bool]  # modes

    def oper_may(self, user: User, privilege: str) -> bool:
        """Whether ``user`` is a server operator holding ``privilege`` (one of ``freeq.opers.PRIVILEGES``)."""
        return user.is_oper

    def oper_log(self, user: User, action: str, **fields: object) -> None:
        """Log an operator action at info with the oper's name and IP (issue #13 item 3); ``fields`` add detail."""
        log.info("oper action {action} by {nick} from {ip}", action=action, nick=user.nick, ip=user.ip, **fields)

    def irc_OPER(self, user: User, msg: Message) -> None:
        if len(msg.params) < 2:
            self.num(user, "461", "OPER", "Not enough parameters")
            return
        expected = self.config.oper_password
        if expected is None:
            self.num(user, "491", "No O-lines for your host")
            log.warn("OPER attempt by {nick} but no oper password is configured", nick=user.nick)
            return
        key = ip_key(user.ip)
        now = self.clock.seconds()
        wait = self.oper_throttle.wait(key, now)
        if wait > 0:
            # Still in this address's back-off: refused without looking at the password.
            self.metric("oper_throttled")
            self.num(user, "263", "OPER", f"Too many failed OPER attempts from your address; "
                                          f"try again in {math.ceil(wait)} seconds")
            self._oper_strike(user)
            return
        if hmac.compare_digest(msg.params[1].encode(), expected.encode()):
            self.oper_throttle.succeed(key)
            self.set_user_mode(user, "o", True)
            self.num(user, "381", "You are now an IRC operator")
            user.write(build(user.hostmask, "MODE", user.nick, "+o"))
            log.info("{nick} is now an IRC operator (OPER {name})", nick=user.nick, name=msg.params[0])
            return
        self.num(user, "464", "Password incorrect")
        self.metric("oper_failures")
        outcome = self.oper_throttle.fail(key, now)
        if outcome.log:
            # At most one line per address per 10 s (twistd writes every level, so the others are only
            # counted), with the IP first for fail2ban:  failregex = failed OPER from <HOST> as
            text = "failed OPER from {ip} as {name} (nick {nick}, failures {n})"
            if outcome.suppressed:
                text = "failed OPER from {ip} as {name} (nick {nick}, failures {n}, {suppressed} more suppressed)"
            log.warn(text, ip=user.ip, name=msg.params[0][:64], nick=user.nick, n=outcome.failures,
                     suppressed=outcome.suppressed)
        self._oper_strike(user)

    def _oper_strike(self, user: User) -> None:
        """Count a refused OPER against the connection: the third one closes it."""
        failures = getattr(user.conn, "oper_failures", 0) + 1
        if user.conn is not None:
            user.conn.oper_failures = failures
        if failures >= 3:
            self.close(user, "Too many failed OPER attempts")

    def irc_KILL(self, user: User, msg: Message) -> None:
        if len(msg.params) < 1:
            self.num(user, "461", "KILL", "Not enough parameters")
            return
        if not user.is_oper:
            self.num(user, "481", "Permission Denied- You're not an IRC operator")
            return
        victim = self.users.get(fold(msg.params[0]))
        if victim is None or not victim.registered:
            self.num(user, "401", msg.params[0], "No such nick/channel")
            return
        reason = truncate(msg.params[1], self.config.kick_len) if len(msg.params) > 1 else user.nick
        if self.federation is not None and self.federation.is_remote(victim):
            # Only the victim's home server can disconnect it, if it accepts our operators' actions.
            outcome = self.federation.remote_kill(user, victim, reason)
            if outcome.ok:
                self.notice(user, outcome.text)
            else:
                self.num(user, "481", outcome.text)
            return
        victim.write(build_text(user.hostmask, "KILL", victim.nick, reason))
        log.info("{oper} killed {nick}: {reason}", oper=user.nick, nick=victim.nick, reason=reason)
        self.close(victim, f"Killed ({user.nick} ({reason}))")

    def _override_refuser(self, chan: Channel) -> Optional[str]:
        """The server sharing ``chan`` that would not apply a server operator's override from here, if any."""
        return self.federation.override_refuser(chan) if self.federation is not None else None

    def _channel_refused(self, user: User, chan: Channel, refusal: Optional[str], command: str) -> bool:
        """Answer a ``freeq.state.rules`` refusal of ``user``'s ``command`` on ``chan`` (442 not on the channel,
        482 not an operator) and return True; a server operator passes it unless a server sharing the channel
        would not apply the override (``_override_refused``). ``refusal`` None: allowed, False."""
        if refusal is None:
            return False
        if user.is_oper:
            return self._override_refused(user, chan, command)
        if refusal == NOT_ON_CHANNEL:
            self.num(user, "442", chan.name, "You're not on that channel")
        else:
            self.num(user, "482", chan.name, "You're not channel operator")
        return True

    def _override_refused(self, user: User, chan: Channel, command: str, refuser: Optional[str] = None) -> bool:
        """Refuse (482, logged) ``user``'s server-operator override on ``chan`` if a server sharing the channel
        would not apply it (``refuser``, looked up if not given): applied here only, it would split the channel."""
        refuser = refuser or self._override_refuser(chan)
        if refuser is None:
            return False
        self.num(user, "482", chan.name, f"You're not channel operator, and {refuser} (which shares the channel) "
                                         f"does not accept server-operator overrides from {self.name}")
        log.warn("{command} on {channel} by operator {oper} ({account}) refused: {server} shares the channel and "
                 "does not accept server-operator actions from this server", command=command, channel=chan.name,
                 oper=user.nick, account=user.account or "no account", server=refuser)
        self.metric("s2s_oper_refused")
        return True

    def irc_SQUIT(self, user: User, msg: Message) -> None:
        """``SQUIT <server> [:<reason>]``: an operator drops the S2S link to a direct neighbour (server name
        or endpoint id) and holds it, neither dialled nor accepted, until ``CONNECT``."""
        federation = self._link_command(user, msg, "SQUIT")
        if federation is None:
            return
        reason = truncate(msg.params[1], self.config.kick_len) if len(msg.params) > 1 and msg.params[1] else ""
        self._link_reply(user, msg.params[0], federation.hold(msg.params[0], reason or "no reason given", user))

    def irc_CONNECT(self, user: User, msg: Message) -> None:
        """``CONNECT <server>``: an operator releases a peer held by ``SQUIT`` (by name or endpoint id)."""
        federation = self._link_command(user, msg, "CONNECT")
        if federation is None:
            return
        self._link_reply(user, msg.params[0], federation.release(msg.params[0], user))

    def _link_command(self, user: User, msg: Message, command: str) -> Optional[FederationControl]:
        """The federation for an operator's SQUIT/CONNECT, or ``None`` once 461, 481 or 402 is answered."""
        if not msg.params or not msg.params[0]:
            self.num(user, "461", command, "Not enough parameters")
            return None
        if not user.is_oper:
            self.num(user, "481", "Permission Denied- You're not an IRC operator")
            return None
        if self.federation is None:
            self.num(user, "402", msg.params[0], "No such server")
        return self.federation

    def _link_reply(self, user: User, target: str, result: LinkControl) -> None:
        """Answer SQUIT/CONNECT: 402 for an unknown server, otherwise a NOTICE saying what happened."""
        if result.no_such_server:
            self.num(user, "402", target, "No such server")
        else:
            self.notice(user, result.text)

    def irc_WALLOPS(self, user: User, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self.num(user, "461", "WALLOPS", "Not enough parameters")
            return
        if not user.is_oper:
            self.num(user, "481", "Permission Denied- You're not an IRC operator")
            return
        data = build_text(user.hostmask, "WALLOPS", msg.params[0])
        for other in self.connections:
            if other.registered and "w" in other.modes:
                other.write(data)
