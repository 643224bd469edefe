"""Registration and the user's own state: PASS, NICK, USER, CAP, PING, PONG, QUIT, the welcome burst
(ISUPPORT, LUSERS, MOTD), AWAY and SETNAME, and host and account changes.

Mixed into :class:`freeq.core.server.IRCServer`.
"""
from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Callable, Optional

from twisted.logger import Logger

from freeq.core.caps import CAPABILITIES, cap_ls_tokens
from freeq.core.history import MAX_LIMIT as HISTORY_LIMIT
from freeq.core.shared import CHANNEL_MODES, USER_MODES, VERSION, truncate
from freeq.irc.names import fold, nick_problem
from freeq.irc.parser import Message, build, build_text
from freeq.logs import log_quit
from freeq.state.channel import PREFIX_MODES
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
else:
    _Server = object

log = Logger()

#: The text of 422 when no message of the day is configured (``--motd``/``--motd-file``).
NO_MOTD = "There is no message of the day"


class RegistrationCommands(_Server):
    """From the first line to a registered user, and the commands that change the user's own state."""

    #: The most local registered users at once since start-up, and the most users on the network at once
    #: (LUSERS 265/266); set on the instance when they first rise.
    peak_local_users: int = 0
    peak_global_users: int = 0

    #: The port of the TLS listener that STS advertises to plain connections (``None``: no TLS listener);
    #: set by the composition root (:func:`freeq.tap.build_service`), when bound if it listens on port 0.
    tls_port: Optional[int] = None

    if TYPE_CHECKING:  # what this group calls in the other groups
        monitor_notify: Callable[[str, Optional[User]], None]  # monitor
        monitor_extended: Callable[[User, bytes, str], None]  # monitor
        nick_owner: Callable[[str], Optional[str]]  # identity
        enforce_nick_ownership: Callable[[User], None]  # identity
        sasl_mechanisms: Callable[[], str]  # identity
        ban_refused: Callable[[User], bool]  # bans

    def _make_isupport(self) -> list[list[str]]:
        c = self.config
        tokens = [
            f"AWAYLEN={c.away_len}", "BOT=B", "CASEMAPPING=ascii", f"CHANLIMIT=#&:{c.max_channels_per_user}",
            "CHANMODES=beI,k,l,imnpst", f"CHANNELLEN={c.channel_len}", "CHANTYPES=#&", "ELIST=CMNTU",
            "EXCEPTS=e", "INVEX=I", f"KICKLEN={c.kick_len}", f"MAXLIST=beI:{c.max_list_entries}",
            f"MAXTARGETS={c.max_targets}", f"MODES={c.max_modes}", f"MONITOR={c.max_monitor}",
            f"NETWORK={c.network_name}", f"NICKLEN={c.nick_len}", "PREFIX=(ov)@+", "SAFELIST",
            "STATUSMSG=@+", f"CHATHISTORY={HISTORY_LIMIT}", "MSGREFTYPES=msgid,timestamp",
            f"TARGMAX=PRIVMSG:{c.max_targets},NOTICE:{c.max_targets},TAGMSG:{c.max_targets},JOIN:,PART:,"
            f"KICK:{c.max_targets},WHOIS:{c.max_targets},NAMES:{c.max_targets},LIST:1,MONITOR:{c.max_monitor},USERHOST:5,ISON:",
            f"TOPICLEN={c.topic_len}", f"USERLEN={c.user_len}", "UTF8ONLY", "WHOX",
        ]
        return [tokens[i:i + 12] for i in range(0, len(tokens), 12)]

    def _try_register(self, user: User) -> None:
        if user.registered or user.cap_negotiating or not (user.nick_given and user.user_given):
            return
        if user.sasl is not None and user.sasl.in_progress:
            return  # registration waits for the SASL exchange
        if self.config.server_password is not None and not user.pass_ok:
            self.num(user, "464", "Password incorrect")
            self.close(user, "Bad password")
            return
        if self.ban_refused(user):  # K-lines and D-lines (freeq.core.bans): after SASL, so the DID is known
            return
        primary = self.primary_session(user.account) if user.account else None
        if primary is not None:
            # Another device of this DID is online: share its nick (and, below, its channels).
            if self.users.get(user.folded) is user:
                del self.users[user.folded]
            user.set_nick(primary.nick)
        else:
            self.enforce_nick_ownership(user)
        user.registered = True
        self._count_registered(user, 1)
        if user.account:
            self.sessions.setdefault(user.account, []).append(user)
        nick = user.nick
        self.num(user, "001", f"Welcome to the {self.config.network_name} IRC Network {user.hostmask}")
        self.num(user, "002", f"Your host is {self.name}, running version {VERSION}")
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        self.num(user, "003", f"This server was created {started}")
        user.write(build(self.name, "004", nick, self.name, VERSION, USER_MODES, CHANNEL_MODES, "beIklov"))
        self._send_isupport(user)
        self._send_lusers(user)
        self.before_motd(user)  # hook point (freeq.core.server)
        self._send_motd(user)
        if user.modes:
            user.write(build(user.nick, "MODE", user.nick, "+" + "".join(sorted(user.modes))))
        if primary is not None:
            self._attach_session(user, primary)
        else:
            self.monitor_notify(user.folded, user)
        log.info("{nick} registered from {ip}", nick=nick, ip=user.ip)
        self.s2s_notify("register", user)
        self.after_register(user)  # hook point (freeq.core.server)
        for hook in self.hooks:
            try:
                hook.on_register(user)
            except Exception:
                log.failure("plugin on_register failed")

    def note_departure(self, user: User, reason: str) -> None:
        """A client connection is leaving the model (any cause): count it and log its quit line (unless
        ``--log-connections off``). Called by ``IRCServer.disconnect``."""
        self.metric("client_quits")
        log_quit(log, self.config, user.nick, user.ip, reason, user.registered)

    def learn_tls_port(self, port: int) -> None:
        """The TLS listener is bound on ``port``: STS advertises it from now on."""
        self.tls_port = port

    def _sts_tokens(self, user: User) -> list[str]:
        """The ``sts`` token of ``user``'s ``CAP LS`` (302 and later, values are needed): ``sts=port=<TLS
        port>`` on a plain connection that can reconnect with TLS (not WebSocket), ``sts=duration=<s>`` on
        a TLS one; nothing without a TLS listener or with ``--sts-duration 0``. Not in CAPABILITIES, so a
        ``CAP REQ sts`` is NAKed (clients must not request it)."""
        duration = self.config.sts_duration
        if not duration or self.tls_port is None or user.cap_version < 302:
            return []
        conn = user.conn
        if not getattr(conn, "sts_applies", False):
            return []
        if getattr(conn, "secure", False):
            return [f"sts=duration={duration}"]
        return [f"sts=port={self.tls_port}"]

    def _send_isupport(self, user: User) -> None:
        for chunk in self._isupport:
            user.write(build_text(self.name, "005", user.nick, *chunk, "are supported by this server"))

    def _count_registered(self, user: User, delta: int) -> None:
        """A local connection registered (``delta`` 1) or went away registered (-1): the LUSERS counts."""
        self.registered_count += delta
        if self.registered_count > self.peak_local_users:
            self.peak_local_users = self.registered_count
        if "i" in user.modes:
            self.invisible_count += delta
        if "o" in user.modes:
            self.oper_count += delta

    def _send_lusers(self, user: User) -> None:
        total = self.registered_count
        # Global figures add the users and servers federation knows (remote users count as visible: their
        # +i is not tracked here); the global peak is kept apart from the local one.
        remote, servers, links = self.federation.network_counts() if self.federation is not None else (0, 0, 0)
        global_total = total + remote
        if global_total > self.peak_global_users:
            self.peak_global_users = global_total
        peak_local = max(self.peak_local_users, total)
        invisible = self.invisible_count
        opers = self.oper_count
        unknown = len(self.connections) - total
        self.num(user, "251", f"There are {global_total - invisible} users and {invisible} invisible on "
                              f"{servers + 1} servers")
        self.num(user, "252", str(opers), "operator(s) online")
        self.num(user, "253", str(unknown), "unknown connection(s)")
        self.num(user, "254", str(self.channels.formed), "channels formed")
        self.num(user, "255", f"I have {total} clients and {links} servers")
        # 265/266 <current> <max>: the max is the highest count seen since start-up, not a configured cap.
        self.num(user, "265", str(total), str(peak_local), f"Current local users {total}, max {peak_local}")
        self.num(user, "266", str(global_total), str(self.peak_global_users),
                 f"Current global users {global_total}, max {self.peak_global_users}")

    def _send_motd(self, user: User) -> None:
        if not self.motd:
            # None configured is not an error: 422 (clients end registration on it) without "File is missing".
            self.num(user, "422", NO_MOTD)
            return
        self.num(user, "375", f"- {self.name} Message of the day - ")
        for line in self.motd:
            self.num(user, "372", f"- {line}")
        self.num(user, "376", "End of /MOTD command.")

    def irc_PASS(self, user: User, msg: Message) -> None:
        if user.registered:
            self.num(user, "462", "You may not reregister")
            return
        if not msg.params:
            self.num(user, "461", "PASS", "Not enough parameters")
            return
        expected = self.config.server_password
        if expected is not None:
            user.pass_ok = hmac.compare_digest(msg.params[0].encode(), expected.encode())

    def irc_NICK(self, user: User, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self.num(user, "431", "No nickname given")
            return
        nick = msg.params[0]
        problem = nick_problem(nick, self.config.nick_len)
        if problem is not None:
            self.num(user, "432", nick, problem)
            return
        folded = fold(nick)
        holder = self.users.get(folded)
        if holder is not None and holder is not user:
            self.num(user, "433", nick, "Nickname is already in use")
            return
        if nick == user.nick:
            return
        owner = self.nick_owner(nick)
        if user.registered and owner is not None and owner != user.account:
            self.num(user, "433", nick, "Nickname is registered to another identity")
            return
        lookalike = self.nick_owners.lookalike(nick, user.account)
        if lookalike is not None:
            # Before registration too: a guest cannot hold a look-alike even for the moment.
            self.num(user, "433", nick, f"Nickname looks like {lookalike[0]}, which is registered to another identity")
            return
        old_folded, old_mask = user.folded, user.hostmask
        if not user.registered:
            if self.users.get(old_folded) is user:
                del self.users[old_folded]
            user.set_nick(nick)
            self.users[folded] = user
            user.nick_given = True
            self._try_register(user)
            return
        data = build_text(old_mask, "NICK", nick)
        devices = self.group(user)
        holder = self.users.get(old_folded)
        primary = holder if holder in devices else user
        self.broadcast(self.co_members(user) | set(devices), data)
        self.whowas.append((user.nick, user.username, user.host, user.realname, self.clock.seconds()))
        if old_folded != folded and holder is primary:
            del self.users[old_folded]
        for device in devices:
            device.set_nick(nick)
        self.users[folded] = primary
        if old_folded != folded:
            # After the rename: a watcher that is this user (watching its old nick) is addressed by its new one.
            self.monitor_notify(old_folded, None)
            self.monitor_notify(folded, primary)
        self.s2s_notify("nick", primary, old_mask)

    def irc_USER(self, user: User, msg: Message) -> None:
        if user.registered or user.user_given:
            self.num(user, "462", "You may not reregister")
            return
        if len(msg.params) < 4 or not msg.params[0] or not msg.params[3]:
            # An empty realname is a missing parameter (Modern IRC: USER needs four non-empty ones).
            self.num(user, "461", "USER", "Not enough parameters")
            return
        ident = "".join(ch for ch in msg.params[0] if ch.isascii() and (ch.isalnum() or ch in "-_."))
        ident = ident[: self.config.user_len - 1] or "u"
        user.set_userhost("~" + ident, user.host)
        user.realname = truncate(msg.params[3], self.config.realname_len)
        user.user_given = True
        self._try_register(user)

    def irc_CAP(self, user: User, msg: Message) -> None:
        if not msg.params:
            self.num(user, "461", "CAP", "Not enough parameters")
            return
        sub = msg.params[0].upper()
        me = user.nick
        if sub == "LS":
            version = 0
            if len(msg.params) > 1 and msg.params[1].isdigit():
                version = int(msg.params[1])
            if version > user.cap_version:
                user.cap_version = version
            if not user.registered:
                user.cap_negotiating = True
            if user.cap_version >= 302 and "cap-notify" not in user.caps:
                user.set_caps(user.caps | {"cap-notify"})
            tokens = cap_ls_tokens(user.cap_version >= 302, {"sasl": self.sasl_mechanisms()}) + self._sts_tokens(user)
            line = " ".join(tokens)
            # One line whenever it fits in 512 bytes: the freeq JavaScript SDK reads each LS line as the last.
            room = 510 - len(f":{self.name} CAP {me} LS :".encode("utf-8"))
            if len(line.encode("utf-8")) <= room or user.cap_version < 302:
                user.write(build_text(self.name, "CAP", me, "LS", line))
            else:
                chunk: list[str] = []
                for tok in tokens:
                    if chunk and len(" ".join(chunk + [tok]).encode("utf-8")) > room - 2:
                        user.write(build_text(self.name, "CAP", me, "LS", "*", " ".join(chunk)))
                        chunk = []
                    chunk.append(tok)
                user.write(build_text(self.name, "CAP", me, "LS", " ".join(chunk)))
        elif sub == "LIST":
            user.write(build_text(self.name, "CAP", me, "LIST", " ".join(sorted(user.caps))))
        elif sub == "REQ":
            if not user.registered:
                user.cap_negotiating = True
            raw = msg.params[1] if len(msg.params) > 1 else ""
            enable: set[str] = set()
            disable: set[str] = set()
            ok = bool(raw.strip())
            for item in raw.split():
                name = item[1:] if item.startswith("-") else item
                if name not in CAPABILITIES:
                    ok = False
                    break
                if item.startswith("-"):
                    if name == "cap-notify" and user.cap_version >= 302:
                        ok = False
                        break
                    disable.add(name)
                else:
                    enable.add(name)
            if not ok:
                user.write(build_text(self.name, "CAP", me, "NAK", raw))
                return
            user.set_caps(frozenset((user.caps | enable) - disable))
            user.write(build_text(self.name, "CAP", me, "ACK", raw.strip()))
            self.on_caps_changed(user)  # hook point (freeq.core.server)
        elif sub == "END":
            if not user.registered:
                user.cap_negotiating = False
                sasl = user.sasl
                if sasl is not None and sasl.in_progress and not sasl.verifying:
                    # IRCv3 SASL: ending negotiation mid-exchange aborts it (registration would hang otherwise).
                    sasl.abort()
                    self.num(user, "906", "SASL authentication aborted")
                self._try_register(user)
        else:
            self.num(user, "410", sub, "Invalid CAP command")

    def irc_PING(self, user: User, msg: Message) -> None:
        if not msg.params:
            self.num(user, "409", "No origin specified")
            return
        user.write(build(self.name, "PONG", self.name, msg.params[0]))

    def irc_PONG(self, user: User, msg: Message) -> None:
        return None

    def irc_QUIT(self, user: User, msg: Message) -> None:
        reason = truncate(msg.params[0], self.config.kick_len) if msg.params else ""
        quit_reason = f"Quit: {reason}" if reason else "Quit"
        self.close(user, quit_reason)

    def irc_MOTD(self, user: User, msg: Message) -> None:
        self._send_motd(user)

    def irc_LUSERS(self, user: User, msg: Message) -> None:
        self._send_lusers(user)

    def irc_AWAY(self, user: User, msg: Message) -> None:
        text = msg.params[0] if msg.params else ""
        if text:
            user.away = truncate(text, self.config.away_len)
            self.num(user, "306", "You have been marked as being away")
            data = build_text(user.hostmask, "AWAY", user.away)
        else:
            user.away = None
            self.num(user, "305", "You are no longer marked as being away")
            data = build(user.hostmask, "AWAY")
        self.broadcast(self.co_members(user), data, cap="away-notify")
        self.monitor_extended(user, data, "away-notify")
        self.s2s_notify("user", user)

    def irc_SETNAME(self, user: User, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self.fail(user, "SETNAME", "INVALID_REALNAME", "Realname is not valid")
            return
        if len(msg.params[0].encode()) > self.config.realname_len:
            self.fail(user, "SETNAME", "INVALID_REALNAME", "Realname is too long")
            return
        user.realname = msg.params[0]
        self.s2s_notify("user", user)
        data = build_text(user.hostmask, "SETNAME", user.realname)
        if "setname" in user.caps:
            user.write(data)
        self.broadcast(self.co_members(user), data, cap="setname")
        self.monitor_extended(user, data, "setname")

    def change_host(self, user: User, username: str, host: str) -> None:
        """Change a user's visible user@host (e.g. a new cloak after authentication).

        ``chghost`` clients see ``CHGHOST``; others see the user quit and rejoin,
        with its channel status restored, as the IRCv3 spec recommends.
        """
        old_mask = user.hostmask
        user.set_userhost(username, host)
        self.s2s_notify("user", user)
        if not user.registered:
            return
        chg = build(old_mask, "CHGHOST", username, host)
        if "chghost" in user.caps:
            user.write(chg)
        quit_line = build_text(old_mask, "QUIT", "Changing host")
        for other in self.co_members(user):
            if "chghost" in other.caps:
                other.write(chg)
            else:
                other.write(quit_line)
        self.monitor_extended(user, chg, "chghost")
        for chan in user.channels.values():
            status = chan.members[user]
            join = build(user.hostmask, "JOIN", chan.name)
            ext = build_text(user.hostmask, "JOIN", chan.name, user.account or "*", user.realname)
            prefix = "".join(ch for ch, bit in PREFIX_MODES.items() if status & bit)
            for other in chan.members:
                if other is user or "chghost" in other.caps:
                    continue
                other.write(ext if "extended-join" in other.caps else join)
                if user.away is not None and "away-notify" in other.caps:
                    other.write(build_text(user.hostmask, "AWAY", user.away))
                if prefix:
                    other.write(build(self.name, "MODE", chan.name, "+" + prefix, *([user.nick] * len(prefix))))

    def set_account(self, user: User, account: Optional[str]) -> None:
        """Log ``user`` in to ``account`` (``None`` logs out); ``account-notify`` co-members are told.

        The identity layer calls this on SASL success; ``account-tag`` and
        ``extended-join`` pick the account up from ``User.account``.
        """
        if user.account == account:
            return
        user.account = account
        self.s2s_notify("user", user)
        if user.registered:
            data = build(user.hostmask, "ACCOUNT", account or "*")
            self.broadcast(self.co_members(user), data, cap="account-notify")
            self.monitor_extended(user, data, "account-notify")
            if "account-notify" in user.caps:
                user.write(data)
        self.on_account_changed(user, account)  # hook point (freeq.core.server)
