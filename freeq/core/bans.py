"""Network bans (issue #13 item 4): KLINE, DLINE, UNKLINE, UNDLINE and STATS, and their enforcement.

A D-line refuses a connection when it is accepted (:meth:`BanCommands.dline_refusal`, asked by
:mod:`freeq.net.connection` before the connection reaches the model); a K-line when registration completes
(:meth:`BanCommands.ban_refused`, asked by ``_try_register`` after SASL, when the DID is known; D-lines are
asked again there, for an address a gateway vouched for). Adding a ban closes the local connections it
matches. Every hit is logged at warn with the IP first (fail2ban: ``failregex = [KD]-line hit from <HOST>``)
and counted (``kline_hits``, ``dline_hits``).

The bans are a :class:`freeq.state.bans.BanList` (the pure rules and matching) filled from the store at
start-up (:meth:`load_bans`), by operators, and by full-trust peers (:meth:`apply_remote_ban`); the config
file's bans (``Config.config_bans``) are compiled from ``self.config`` when it changes, so a reload applies.

Mixed into :class:`freeq.core.server.IRCServer`.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from twisted.logger import Logger

from freeq.irc.parser import Message
from freeq.logs import security_event
from freeq.state.bans import (
    DLINE, KLINE, MAX_BANS, MAX_SETTER, Ban, BanError, BanList, clean_reason, compile_config_bans, parse_duration,
    parse_mask,
)
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
else:
    _Server = object

log = Logger()

#: What each command adds or removes.
_ADD = {"KLINE": KLINE, "DLINE": DLINE}
_REMOVE = {"UNKLINE": KLINE, "UNDLINE": DLINE}
#: Most bans one ``STATS k``/``STATS d`` lists (about 200 bytes each: the whole list at the cap of 10,000 would pass
#: the default send queue of 1 MiB and disconnect the operator); a NOTICE tells how many more there are.
MAX_STATS_LINES = 2000
#: The word for a kind in replies and logs.
_WORD = {KLINE: "K-line", DLINE: "D-line"}


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _lasting(ban: Ban, now: float) -> str:
    if ban.expires is None:
        return "permanent"
    return f"{max(1, int((ban.expires - now + 59) // 60))} minute(s) left"


class BanCommands(_Server):
    """K-lines and D-lines: the commands, the checks at accept and at registration, federation's entry points."""

    if TYPE_CHECKING:  # what this group calls in the other groups
        oper_may: Callable[[User, str], bool]  # operator
        oper_log: Callable[..., None]  # operator

    # ------------------------------------------------------------------
    # The lists
    # ------------------------------------------------------------------
    @property
    def network_bans(self) -> BanList:
        """The K-lines and D-lines set by operators here and received from peers (made on first use)."""
        bans: Optional[BanList] = self.__dict__.get("_bans")
        if bans is None:
            bans = self.__dict__["_bans"] = BanList()
        return bans

    def config_ban_list(self) -> BanList:
        """The config file's bans, compiled again when a reload brought other ones (bad ones logged once)."""
        pairs = self.config.config_bans
        cached = self.__dict__.get("_config_bans")
        if cached is not None and (cached[0] is pairs or cached[0] == pairs):  # the same Config: no compare
            return cached[1]  # type: ignore[no-any-return]
        compiled, problems = compile_config_bans(pairs)
        for problem in problems:
            log.warn("{problem}", problem=problem)
        self.__dict__["_config_bans"] = (pairs, compiled)
        return compiled

    def load_bans(self, bans: Iterable[Ban]) -> None:
        """Start-up: the bans kept in the store (expired ones already left out)."""
        for ban in bans:
            if len(self.network_bans) < MAX_BANS:
                self.network_bans.add(ban)

    def expire_bans(self, now: float) -> None:
        """Forget (and unstore) the bans that have run out (called by the server's sweep, every 15 s)."""
        for ban in self.network_bans.expired(now):
            self.network_bans.remove(ban.kind, ban.mask)
            if self.store is not None:
                self.store.delete_ban(ban.kind, ban.mask)
            log.info("{what} on {mask} expired", what=_WORD[ban.kind], mask=ban.mask)

    # ------------------------------------------------------------------
    # Enforcement
    # ------------------------------------------------------------------
    def dline_refusal(self, ip: str) -> Optional[str]:
        """Why a connection from ``ip`` is refused at accept (``"D-lined: <reason>"``), or ``None``; a hit is
        logged at warn with the IP and counted."""
        now = self.clock.seconds()
        ban = self.network_bans.dline_for(ip, now) or self.config_ban_list().dline_for(ip, now)
        if ban is None:
            return None
        self._hit(ban, ip, "*")
        return f"D-lined: {ban.reason}"

    def _hit(self, ban: Ban, ip: str, nick: str) -> None:
        word = _WORD[ban.kind]
        self.metric("kline_hits" if ban.kind == KLINE else "dline_hits")
        # A security event (freeq.logs): warn, the IP early (fail2ban: failregex = [KD]-line hit from <HOST>). Counted
        # above only: freeq_security_events_total reads kline_hits/dline_hits for these kinds.
        security_event(log, "kline_hit" if ban.kind == KLINE else "dline_hit", ip,
                       word + " hit from {ip}: {mask} ({reason}), nick {nick}", mask=ban.mask, reason=ban.reason,
                       nick=nick)

    def _ban_for(self, user: User, now: float) -> Optional[Ban]:
        """The live ban (stored or from the config file) that ``user`` falls under, if any."""
        for bans in (self.network_bans, self.config_ban_list()):
            ban = (bans.dline_for(user.ip, now)
                   or bans.kline_for(user.username, user.host, user.ip, user.account, now))
            if ban is not None:
                return ban
        return None

    def ban_refused(self, user: User) -> bool:
        """At registration completion (SASL over, so the DID is known): refuse ``user`` if a K-line (or a D-line:
        a gateway may have given another address) matches, with 465 and ``ERROR``; True when refused."""
        ban = self._ban_for(user, self.clock.seconds())
        if ban is None:
            return False
        self._hit(ban, user.ip, user.nick)
        word = "K-lined" if ban.kind == KLINE else "D-lined"
        self.num(user, "465", f"You are banned from this server: {ban.reason}")
        self.close(user, f"{word}: {ban.reason}")
        return True

    @staticmethod
    def _matches(bans: BanList, user: User, now: float) -> bool:
        """Whether a ban of ``bans`` (built once by the caller, e.g. ``BanList([ban])``) covers ``user``."""
        return (bans.dline_for(user.ip, now) is not None
                or bans.kline_for(user.username, user.host, user.ip, user.account, now) is not None)

    def enforce_config_bans(self, old: tuple[tuple[str, str], ...]) -> int:
        """After a reload: close the connections the config file's bans that were not in ``old`` now cover (as a
        new KLINE does); how many were closed."""
        fresh = set(self.config.config_bans) - set(old)
        if not fresh:
            return 0
        compiled, _problems = compile_config_bans(sorted(fresh))  # the problems are logged by config_ban_list
        return sum(self._enforce(ban) for ban in compiled)

    def _enforce(self, ban: Ban) -> int:
        """Close every local connection ``ban`` matches (a new ban applies at once); how many were closed."""
        now = self.clock.seconds()
        closed = 0
        word = "K-lined" if ban.kind == KLINE else "D-lined"
        single = BanList([ban])  # compiled once for every connection
        for user in list(self.connections):
            if not self._matches(single, user, now):
                continue
            self._hit(ban, user.ip, user.nick)
            if user.registered:
                self.num(user, "465", f"You are banned from this server: {ban.reason}")
            self.close(user, f"{word}: {ban.reason}", quit_reason=word)
            closed += 1
        return closed

    # ------------------------------------------------------------------
    # Adding and removing (operators here, and peers)
    # ------------------------------------------------------------------
    def _store_ban(self, ban: Ban) -> None:
        if self.store is not None:
            self.store.save_ban(ban)

    def _room_for(self, kind: str, mask: str) -> bool:
        """Whether one more ban fits (a ban replacing one on the same mask always does)."""
        if self.network_bans.get(kind, mask) is not None or len(self.network_bans) < MAX_BANS:
            return True
        self.expire_bans(self.clock.seconds())
        return len(self.network_bans) < MAX_BANS

    def add_ban(self, ban: Ban) -> int:
        """Hold, store and enforce ``ban``; return how many local connections it closed."""
        self.network_bans.add(ban)
        self._store_ban(ban)
        return self._enforce(ban)

    def remove_ban(self, kind: str, mask: str) -> Optional[Ban]:
        """Lift the ban on ``(kind, mask)`` (normalised): forget and unstore it; the ban, or ``None``."""
        ban = self.network_bans.remove(kind, mask)
        if ban is not None and self.store is not None:
            self.store.delete_ban(kind, mask)
        return ban

    def apply_remote_ban(self, ban: Ban) -> bool:
        """A ban from a full-trust peer (already validated): held, stored and enforced like a local one. False
        when it is known already (same id: heard live and in a burst) or the list is full (logged)."""
        if ban.id in self.network_bans.ids or ban.expired(self.clock.seconds()):
            return False
        held = self.network_bans.get(ban.kind, ban.mask)
        if held is not None and held.set_at > ban.set_at:
            return False  # the same mask banned again since, here or elsewhere: the later ban stands
        if not self._room_for(ban.kind, ban.mask):
            log.warn("{what} on {mask} from {origin} not kept: {cap} bans held already", what=_WORD[ban.kind],
                     mask=ban.mask, origin=ban.origin, cap=MAX_BANS)
            return False
        closed = self.add_ban(ban)
        log.info("{what} on {mask} from {origin} (set by {setter}) applied: {reason}; {closed} connection(s) "
                 "closed", what=_WORD[ban.kind], mask=ban.mask, origin=ban.origin, setter=ban.setter,
                 reason=ban.reason, closed=closed)
        return True

    def replace_remote_bans(self, origins: set[str], listed: Iterable[Ban]) -> None:
        """A full-trust peer's burst: ``listed`` are all the bans of servers ``origins`` (names). Bans held from
        those servers that it no longer lists were lifted meanwhile and go; new ones are applied. Bans set here
        and config bans are never touched."""
        listed = list(listed)
        keep = {ban.id for ban in listed}
        for ban in self.network_bans:
            if ban.origin in origins and ban.origin not in ("", "config", self.name) and ban.id not in keep:
                self.remove_ban(ban.kind, ban.mask)
                log.info("{what} on {mask} of {origin} lifted while we were apart (not in its burst)",
                         what=_WORD[ban.kind], mask=ban.mask, origin=ban.origin)
        for ban in listed:
            self.apply_remote_ban(ban)

    def apply_remote_unban(self, kind: str, mask: str, origin: str) -> bool:
        """A full-trust peer lifted a ban: forgotten here too (True if one was held)."""
        ban = self.remove_ban(kind, mask)
        if ban is not None:
            log.info("{what} on {mask} lifted by {origin}", what=_WORD[kind], mask=mask, origin=origin)
        return ban is not None

    # ------------------------------------------------------------------
    # Commands
    # ------------------------------------------------------------------
    def irc_KLINE(self, user: User, msg: Message) -> None:
        """``KLINE [minutes] <user@host | DID> :<reason>``: ban a user@host mask or an account, network-wide."""
        self._add_command(user, msg, "KLINE")

    def irc_DLINE(self, user: User, msg: Message) -> None:
        """``DLINE [minutes] <IP | CIDR> :<reason>``: refuse connections from an address or network."""
        self._add_command(user, msg, "DLINE")

    def irc_UNKLINE(self, user: User, msg: Message) -> None:
        """``UNKLINE <mask>``: lift a K-line."""
        self._remove_command(user, msg, "UNKLINE")

    def irc_UNDLINE(self, user: User, msg: Message) -> None:
        """``UNDLINE <mask>``: lift a D-line."""
        self._remove_command(user, msg, "UNDLINE")

    def _ban_gate(self, user: User, msg: Message, command: str, needed: int) -> bool:
        """461 or 481 answered (False), or the operator may go on."""
        if not self.oper_may(user, "ban"):
            self.num(user, "481", "Permission Denied- You're not an IRC operator with the ban privilege")
            return False
        if len(msg.params) < needed or not msg.params[needed - 1]:
            self.num(user, "461", command, "Not enough parameters")
            return False
        return True

    def _add_command(self, user: User, msg: Message, command: str) -> None:
        if not self._ban_gate(user, msg, command, 1):
            return
        kind = _ADD[command]
        params = list(msg.params)
        duration: Optional[int] = None
        if len(params) > 1 and params[0].isdigit():
            try:
                duration = parse_duration(params.pop(0))
            except BanError as e:
                self.notice(user, f"{command}: {e}")
                return
        if not params[0]:
            self.num(user, "461", command, "Not enough parameters")
            return
        try:
            mask = parse_mask(kind, params[0])
        except BanError as e:
            self.notice(user, f"{command}: {e}")
            return
        reason = clean_reason(params[1] if len(params) > 1 else "")
        if not self._room_for(kind, mask):
            self.notice(user, f"{command}: refused, {MAX_BANS} bans are held already; remove some first")
            return
        now = self.clock.seconds()
        ban = Ban(f"{self.ulid.new()}@{self.name}", kind, mask, reason, user.hostmask[:MAX_SETTER], now,
                  now + duration if duration else None, self.name)
        if self._matches(BanList([ban]), user, now):
            # Ending one's own session (and every later one from here) by a typo is refused; ban from another
            # address, or ask another operator.
            self.notice(user, f"{command}: refused, {mask} matches your own connection")
            return
        replaced = self.network_bans.get(kind, mask) is not None
        closed = self.add_ban(ban)
        self.oper_log(user, command, mask=mask, minutes=(duration or 0) // 60, reason=reason)
        self.s2s_notify("ban", ban)
        lasting = f"for {duration // 60} minute(s)" if duration else "permanently"
        self.notice(user, f"{'Updated' if replaced else 'Added'} {_WORD[kind]} on {mask} {lasting}: {reason}"
                          f" ({closed} connection(s) closed)")

    def _remove_command(self, user: User, msg: Message, command: str) -> None:
        if not self._ban_gate(user, msg, command, 1):
            return
        kind = _REMOVE[command]
        raw = msg.params[0]
        try:
            mask = parse_mask(kind, raw)
        except BanError:
            mask = raw  # not a mask one could set now: lift it only if held as given
        ban = self.remove_ban(kind, mask)
        if ban is None:
            if self.config_ban_list().get(kind, mask) is not None:
                self.notice(user, f"{command}: {mask} is banned in the config file; remove it there and reload")
            else:
                self.notice(user, f"{command}: no {_WORD[kind]} on {mask[:100]}")
            return
        self.oper_log(user, command, mask=mask)
        self.s2s_notify("unban", kind, mask)
        self.notice(user, f"Removed {_WORD[kind]} on {mask}")

    def irc_STATS(self, user: User, msg: Message) -> None:
        """``STATS <letter>``: ``k`` K-lines and ``d`` D-lines (operators with the ban privilege), ``u`` uptime;
        any other letter only ends the report (219)."""
        if not msg.params or not msg.params[0]:
            self.num(user, "461", "STATS", "Not enough parameters")
            return
        letter = msg.params[0][0]
        if letter in "kKdD":
            if not self.oper_may(user, "ban"):
                self.num(user, "481", "Permission Denied- You're not an IRC operator with the ban privilege")
            else:
                self._stats_bans(user, KLINE if letter in "kK" else DLINE)
        elif letter == "u":
            up = int(self.clock.seconds() - self.started)
            days, rest = divmod(up, 86400)
            self.num(user, "242", f"Server Up {days} days {rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}")
        self.num(user, "219", letter if letter.isascii() and letter.isalpha() else "*", "End of /STATS report")

    def _stats_bans(self, user: User, kind: str) -> None:
        """216 (K-lines: ``K host * user``) or 225 (D-lines: ``D address``) per ban, stored then config ones;
        a lowercase letter marks a temporary ban."""
        now = self.clock.seconds()
        self.expire_bans(now)
        held = [(ban, "") for ban in self.network_bans if ban.kind == kind]
        held += [(ban, "[config file] ") for ban in self.config_ban_list() if ban.kind == kind]
        if len(held) > MAX_STATS_LINES:
            self.notice(user, f"STATS {kind.lower()}: {len(held)} {_WORD[kind]}s, the first {MAX_STATS_LINES} listed")
            held = held[:MAX_STATS_LINES]
        for ban, mark in held:
            letter = kind if ban.expires is None else kind.lower()
            text = f"{mark}{ban.reason} (set by {ban.setter} on {_when(ban.set_at)}, {_lasting(ban, now)})"
            if ban.origin == "config":
                text = f"{mark}{ban.reason}"
            elif ban.origin and ban.origin != self.name:
                text += f" [from {ban.origin}]"
            if kind == DLINE:
                self.num(user, "225", letter, ban.mask, text)
            elif ban.is_did:
                self.num(user, "216", letter, ban.mask, "*", "*", text)
            else:
                username, _, host = ban.mask.partition("@")
                self.num(user, "216", letter, host, "*", username, text)

    # ------------------------------------------------------------------
    # WHOIS: the real address, to operators only
    # ------------------------------------------------------------------
    def whois_real_host(self, asker: User, target: User) -> None:
        """338 and 378 (the address ``target`` connects from) when ``asker`` is a server operator and ``target``
        a local user: no other reply to any client carries an IP (docs/architecture.md, Privacy)."""
        if not asker.is_oper or not target.ip or target.conn is None:
            return
        if self.federation is not None and self.federation.is_remote(target):
            return
        ip = target.ip if not target.ip.startswith(":") else "0" + target.ip  # a middle parameter cannot start with ":"
        self.num(asker, "378", target.nick, f"is connecting from *@{ip} {ip}")
        self.num(asker, "338", target.nick, f"{target.username}@{ip}", ip, "actually using host")
