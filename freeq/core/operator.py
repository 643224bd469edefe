"""Operator commands: OPER, KILL, SQUIT, CONNECT, WALLOPS, and the refusal of a server operator's
override that a server sharing the channel would not apply.

Mixed into :class:`freeq.core.server.IRCServer`.
"""
from __future__ import annotations

import hmac
import math
from typing import TYPE_CHECKING, Callable, Optional

from twisted.internet import threads
from twisted.logger import Logger

from freeq.core.shared import truncate
from freeq.irc.names import fold
from freeq.irc.parser import Message, build, build_text
from freeq.opers import ALL_PRIVILEGES, OperAccount, find_account, verify_password
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

#: Most [[oper]] password checks (scrypt, ~16 MiB and tens of ms each, in the reactor's thread pool) at once,
#: server-wide; one per address (IPv6 /64) at a time. Others are answered 263 and may try again.
MAX_OPER_CHECKS = 2


class OperatorCommands(_Server):
    """OPER and the commands it unlocks; the check that a channel override would be applied everywhere."""

    if TYPE_CHECKING:  # what this group calls in the other groups
        set_user_mode: Callable[[User, str, bool], bool]  # modes
        oper_dids: set[str]  # server: DIDs made operators on SASL success

    @property
    def oper_checks(self) -> set[str]:
        """The addresses (``ip_key``) with an [[oper]] password check running in a thread (made on first use:
        the server's constructor knows nothing of it)."""
        checks = self.__dict__.get("_oper_checks")
        if checks is None:
            checks = self.__dict__["_oper_checks"] = set()
        return checks

    def oper_may(self, user: User, privilege: str) -> bool:
        """Whether ``user`` is a server operator holding ``privilege`` (one of ``freeq.opers.PRIVILEGES``)."""
        return user.oper_holds(privilege)

    def _oper_refused(self, user: User, privilege: str) -> bool:
        """Answer 481 and return True unless ``user`` is a server operator holding ``privilege``."""
        if user.oper_holds(privilege):
            return False
        if user.is_oper:
            self.num(user, "481", f"Permission Denied- Your operator account lacks the {privilege} privilege")
        else:
            self.num(user, "481", "Permission Denied- You're not an IRC operator")
        return True

    def oper_log(self, user: User, action: str, **fields: object) -> None:
        """Log an operator action at info with the oper's account name, nick and IP (issue #13 item 3);
        ``fields`` add detail (named fields, shown in the text as ``key value``)."""
        extra = "".join(f", {key} {{{key}}}" for key in fields)
        log.info("oper action {action} by {nick} (oper {oper}) from {ip}" + extra, action=action, nick=user.nick,
                 oper=self._oper_label(user), ip=user.ip, **fields)

    def _oper_label(self, user: User) -> str:
        """How the log names ``user``'s operator account: its [[oper]] name, or how it became an operator."""
        if user.oper_name is not None:
            return user.oper_name
        if user.account is not None and user.account in self.oper_dids:
            return f"oper-dids {user.account}"
        return "shared password"

    def irc_OPER(self, user: User, msg: Message) -> None:
        """``OPER <name> <password>``: become a server operator as [[oper]] account ``name`` (host masks, then
        its DID or scrypt password, checked in a thread), or with the shared ``--oper-password`` under any
        other name. Failures answer 491/464 and count towards the address's back-off and the connection's
        three strikes."""
        if len(msg.params) < 2:
            self.num(user, "461", "OPER", "Not enough parameters")
            return
        cfg = self.config  # a reload replaces it: accounts are looked up at each OPER
        accounts: tuple[OperAccount, ...] = cfg.opers
        if cfg.oper_password is None and not accounts:
            self.num(user, "491", "No O-lines for your host")
            log.warn("OPER attempt by {nick} but no oper password or [[oper]] account is configured", nick=user.nick)
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
        if key in self.oper_checks:
            # One password check per address at a time: its outcome decides the back-off of the next one.
            self.num(user, "263", "OPER", "An OPER from your address is being checked; try again in a moment")
            return
        name = msg.params[0]
        account = find_account(accounts, name)
        if account is None:
            if cfg.oper_password is not None:
                if hmac.compare_digest(msg.params[1].encode(), cfg.oper_password.encode()):
                    self._oper_succeeded(user, None, ALL_PRIVILEGES, name)
                else:
                    self._oper_failed(user, name, "464", None)
            else:
                self._oper_failed(user, name, "491", "no such account")
            return
        if not account.matches_host(user.nick, user.username, user.ip, user.host):
            self._oper_failed(user, name, "491", f"account {account.name}: host not allowed")
            return
        if account.did is not None and user.account == account.did:
            self._oper_succeeded(user, account.name, account.privileges, name, how="DID")
            return
        if account.password_hash is None:
            self._oper_failed(user, name, "464", f"account {account.name}: not signed in as its DID")
            return
        if len(self.oper_checks) >= MAX_OPER_CHECKS:
            # scrypt costs ~16 MiB and tens of ms each: a bounded number at a time, the rest try again.
            self.metric("oper_throttled")
            self.num(user, "263", "OPER", "Too many OPER checks in progress; try again in a few seconds")
            return
        self.oper_checks.add(key)
        d = threads.deferToThread(verify_password, msg.params[1], account.password_hash)
        d.addBoth(self._oper_checked, user, account, key)

    def _oper_checked(self, result: object, user: User, account: OperAccount, key: str) -> None:
        """The thread's verdict on an account's password: apply it if the user is still here and the account
        unchanged by a reload meanwhile (else refused)."""
        self.oper_checks.discard(key)
        if not isinstance(result, bool):
            log.failure("OPER password check failed", failure=result)  # type: ignore[arg-type]
            result = False
        current = find_account(self.config.opers, account.name)
        if result and current == account:
            if user in self.connections:
                self._oper_succeeded(user, account.name, account.privileges, account.name, how="password")
            return
        why = "wrong password" if current == account else "account changed by a reload"
        self._oper_failed(user, account.name, "464", f"account {account.name}: {why}")

    def _oper_succeeded(self, user: User, account: Optional[str], privileges: frozenset[str], name: str,
                        how: str = "shared password") -> None:
        """Make ``user`` a server operator of ``account`` (None: the shared password) with ``privileges``."""
        self.oper_throttle.succeed(ip_key(user.ip))
        user.set_oper(account, privileges)
        self.set_user_mode(user, "o", True)
        self.num(user, "381", "You are now an IRC operator")
        user.write(build(user.hostmask, "MODE", user.nick, "+o"))
        self.oper_log(user, "OPER", name=name[:64], by=how, privileges=" ".join(sorted(privileges)) or "none")

    def _oper_failed(self, user: User, name: str, numeric: str, why: Optional[str]) -> None:
        """Refuse an OPER (491 wrong host or no account, 464 wrong password): count it for the address's
        back-off, log it at warn with the IP (rate-limited), and strike the connection."""
        here = user in self.connections
        if here:
            if numeric == "491":
                self.num(user, "491", "No O-lines for your host")
            else:
                self.num(user, "464", "Password incorrect")
        self.metric("oper_failures")
        outcome = self.oper_throttle.fail(ip_key(user.ip), self.clock.seconds())
        if outcome.log:
            # At most one line per address per 10 s (twistd writes every level, so the others are only
            # counted), with the IP first for fail2ban:  failregex = failed OPER from <HOST> as
            detail = "{why}; " if why else ""
            text = "failed OPER from {ip} as {name} (" + detail + "nick {nick}, failures {n})"
            if outcome.suppressed:
                text = ("failed OPER from {ip} as {name} (" + detail +
                        "nick {nick}, failures {n}, {suppressed} more suppressed)")
            log.warn(text, ip=user.ip, name=name[:64], nick=user.nick, n=outcome.failures,
                     suppressed=outcome.suppressed, why=why, security="oper_failure")  # a security event (freeq.logs)
        if here:
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
        if self._oper_refused(user, "kill"):
            return
        victim = self.users.get(fold(msg.params[0]))
        if victim is None or not victim.registered:
            self.num(user, "401", msg.params[0], "No such nick/channel")
            return
        reason = truncate(msg.params[1], self.config.kick_len) if len(msg.params) > 1 else user.nick
        if self.federation is not None and self.federation.is_remote(victim):
            # Only the victim's home server can disconnect it, if it accepts our operators' actions.
            outcome = self.federation.remote_kill(user, victim, reason)
            self.oper_log(user, "KILL", victim=victim.nick, reason=reason, applied=outcome.ok)
            if outcome.ok:
                self.notice(user, outcome.text)
            else:
                self.num(user, "481", outcome.text)
            return
        victim.write(build_text(user.hostmask, "KILL", victim.nick, reason))
        self.oper_log(user, "KILL", victim=victim.nick, victim_ip=victim.ip, reason=reason)
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
        if self.oper_may(user, "override"):
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
            self.oper_log(user, "override", command=command, channel=chan.name)
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
        result = federation.hold(msg.params[0], reason or "no reason given", user)
        self.oper_log(user, "SQUIT", server=msg.params[0][:64], reason=reason, result=result.text)
        self._link_reply(user, msg.params[0], result)

    def irc_CONNECT(self, user: User, msg: Message) -> None:
        """``CONNECT <server>``: an operator releases a peer held by ``SQUIT`` (by name or endpoint id)."""
        federation = self._link_command(user, msg, "CONNECT")
        if federation is None:
            return
        result = federation.release(msg.params[0], user)
        self.oper_log(user, "CONNECT", server=msg.params[0][:64], result=result.text)
        self._link_reply(user, msg.params[0], result)

    def _link_command(self, user: User, msg: Message, command: str) -> Optional[FederationControl]:
        """The federation for an operator's SQUIT/CONNECT, or ``None`` once 461, 481 or 402 is answered."""
        if not msg.params or not msg.params[0]:
            self.num(user, "461", command, "Not enough parameters")
            return None
        if self._oper_refused(user, "link"):
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
        if self._oper_refused(user, "wallops"):
            return
        self.oper_log(user, "WALLOPS", text=msg.params[0][:200])
        data = build_text(user.hostmask, "WALLOPS", msg.params[0])
        for other in self.connections:
            if other.registered and "w" in other.modes:
                other.write(data)
