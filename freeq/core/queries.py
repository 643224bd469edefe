"""Queries: WHOIS, WHOWAS, WHO (with WHOX), ISON, USERHOST, and the server's VERSION, TIME, ADMIN, INFO,
LINKS and HELP.

Mixed into :class:`freeq.core.server.IRCServer`.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Optional

from freeq.core.shared import VERSION, prefix_chars
from freeq.irc.names import fold, is_channel
from freeq.irc.parser import Message
from freeq.state.channel import Channel
from freeq.state.masks import compile_glob, fold_text, glob_match
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
else:
    _Server = object


class QueryCommands(_Server):
    """Commands that only read the state: who is who, where, and what this server is."""

    if TYPE_CHECKING:  # what this group calls in the other groups
        _visible_channel: Callable[[Channel, User], bool]  # channels
        _send_isupport: Callable[[User], None]  # registration
        whois_real_host: Callable[[User, User], None]  # bans

    def irc_WHOIS(self, user: User, msg: Message) -> None:
        if not msg.params:
            self.num(user, "431", "No nickname given")
            return
        nicks = msg.params[-1]
        for nick in nicks.split(",")[: self.config.max_targets]:
            if not nick:
                continue
            other = self.users.get(fold(nick))
            if other is None or not other.registered:
                self.num(user, "401", nick, "No such nick/channel")
                self.num(user, "318", nick, "End of /WHOIS list.")
                continue
            self.num(user, "311", other.nick, other.username, other.host, "*", other.realname)
            chans = []
            for chan in other.channels.values():
                # As on Solanum/InspIRCd: +s/+p channels only to co-members; user mode +i hides a user from
                # WHO and NAMES of strangers, but a nick looked up by name shows its public channels.
                if user in chan.members or not (chan.modes & {"s", "p"}):
                    chans.append(prefix_chars(chan.members[other], "multi-prefix" in user.caps) + chan.name)
            if chans:
                self.num(user, "319", other.nick, " ".join(chans))
            self.num(user, "312", other.nick, other.server, self._server_info(
                self.federation is None or not self.federation.is_remote(other)))
            if other.is_oper:
                self.num(user, "313", other.nick, "is an IRC operator")
            self.whois_real_host(user, other)  # 378/338, to operators only (freeq.core.bans)
            if other.account:
                self.num(user, "330", other.nick, other.account, "is logged in as")
                if other.handle:
                    self.num(user, "320", other.nick, f"AT Protocol handle: {other.handle}")
            if other.is_bot:
                self.num(user, "335", other.nick, "is a bot")
            if other.conn is not None and getattr(other.conn, "secure", False):
                self.num(user, "671", other.nick, "is using a secure connection")
            if other.away is not None:
                self.num(user, "301", other.nick, other.away)
            now = self.clock.seconds()
            self.num(user, "317", other.nick, str(int(now - other.last_spoke)), str(int(other.signon)),
                     "seconds idle, signon time")
            self.whois_extra(user, other)  # hook point (freeq.core.server)
            self.num(user, "318", other.nick, "End of /WHOIS list.")

    def irc_WHOWAS(self, user: User, msg: Message) -> None:
        if not msg.params or not msg.params[0]:
            self.num(user, "431", "No nickname given")
            return
        nick = msg.params[0].split(",")[0]
        count = 0
        if len(msg.params) > 1:
            try:
                count = int(msg.params[1])
            except ValueError:
                count = 0
        folded = fold(nick)
        found = 0
        for wnick, wuser, whost, wreal, when in reversed(self.whowas):
            if fold(wnick) != folded:
                continue
            self.num(user, "314", wnick, wuser, whost, "*", wreal)
            self.num(user, "312", wnick, self.name, time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(when)))
            found += 1
            if count > 0 and found >= count or found >= 20:
                break
        if not found:
            self.num(user, "406", nick, "There was no such nickname")
        self.num(user, "369", nick, "End of WHOWAS")

    def irc_WHO(self, user: User, msg: Message) -> None:
        mask = msg.params[0] if msg.params and msg.params[0] else "*"
        fields: Optional[str] = None
        token = ""
        # WHOX: "<flags>[%<fields>[,<token>]]"; flags such as "o" may precede the "%".
        opts, pct, spec = msg.params[1].partition("%") if len(msg.params) > 1 else ("", "", "")
        if pct:
            fields, _, token = spec.partition(",")
            token = token[:3] if token.isdigit() else ""
        only_opers = "o" in opts
        results: list[tuple[User, Optional[Channel]]] = []
        limit = self.config.max_who_results
        if is_channel(mask):
            chan = self.channels.get(fold(mask))
            if chan is not None and self._visible_channel(chan, user):
                inside = user in chan.members
                for member in chan.members:
                    if not inside and "i" in member.modes or self.users.get(member.folded) is not member:
                        continue
                    results.append((member, chan))
        else:
            exact = self.users.get(fold(mask))
            if exact is not None and exact.registered:
                results.append((exact, None))
            elif self._mask_refused(user, "WHO", mask):
                pass  # over the caps: nothing listed, just 315
            else:
                glob = compile_glob(mask)
                shared = self.co_members(user) | {user}
                for other in self.connections:
                    if not other.registered:
                        continue
                    if "i" in other.modes and other not in shared:
                        continue
                    if mask in ("*", "0") or any(glob.match(fold_text(v)) for v in (
                            other.nick, other.username, other.host, other.realname, other.server)):
                        results.append((other, None))
                        if len(results) >= limit:
                            break
        for other, chan in results[:limit]:
            if only_opers and not other.is_oper:
                continue
            if chan is None:
                shown = next((c for c in other.channels.values() if self._visible_channel(c, user)), None)
            else:
                shown = chan
            status = shown.members.get(other, 0) if shown is not None else 0
            flags = ("G" if other.away is not None else "H") + ("*" if other.is_oper else "") + \
                prefix_chars(status, "multi-prefix" in user.caps) + ("B" if other.is_bot else "")
            channame = shown.name if shown is not None else "*"
            if fields is None:
                self.num(user, "352", channame, other.username, other.host, other.server, other.nick, flags,
                         f"0 {other.realname}")
            else:
                out: list[str] = []
                for f in "tcuihsnfdlaor":
                    if f not in fields:
                        continue
                    out.append({
                        "t": token or "0", "c": channame, "u": other.username, "i": "255.255.255.255",
                        "h": other.host, "s": other.server, "n": other.nick, "f": flags, "d": "0",
                        "l": str(int(self.clock.seconds() - other.last_spoke)),
                        "a": other.account or "0", "o": "n/a", "r": other.realname,
                    }[f])
                if out:
                    if "r" in fields:
                        self.num(user, "354", *out)
                    else:
                        self.num_raw(user, "354", *out)
        self.num(user, "315", mask, "End of /WHO list.")

    def irc_ISON(self, user: User, msg: Message) -> None:
        online = []
        for word in " ".join(msg.params).split()[:100]:
            other = self.users.get(fold(word))
            if other is not None and other.registered:
                online.append(other.nick)
        self.num(user, "303", " ".join(online))

    def irc_USERHOST(self, user: User, msg: Message) -> None:
        if not msg.params:
            self.num(user, "461", "USERHOST", "Not enough parameters")
            return
        replies = []
        for nick in msg.params[:5]:
            other = self.users.get(fold(nick))
            if other is None or not other.registered:
                continue
            replies.append(f"{other.nick}{'*' if other.is_oper else ''}={'-' if other.away is not None else '+'}"
                           f"{other.username}@{other.host}")
        self.num(user, "302", " ".join(replies))

    def irc_VERSION(self, user: User, msg: Message) -> None:
        self.num(user, "351", VERSION, self.name, "IRCv3, AT Protocol identity, iroh federation")
        self._send_isupport(user)

    def irc_TIME(self, user: User, msg: Message) -> None:
        now = self.clock.seconds()
        self.num(user, "391", self.name, time.strftime("%A %B %d %Y -- %H:%M:%S UTC", time.gmtime(now)))

    def irc_ADMIN(self, user: User, msg: Message) -> None:
        a = self.config.admin_info
        self.num(user, "256", self.name, "Administrative info")
        self.num(user, "257", a[0])
        self.num(user, "258", a[1])
        self.num(user, "259", a[2])

    def _server_info(self, local: bool) -> str:
        """A server's description: ``--server-description`` for this one (``local``); the other servers of the
        federation do not send theirs, so they keep the default, ``<network> IRC server``."""
        default = f"{self.config.network_name} IRC server"
        return (self.config.server_description or default) if local else default

    def irc_INFO(self, user: User, msg: Message) -> None:
        lines = [f"{VERSION}: an identity-aware, federated IRC server", "Built on Twisted.",
                 f"Up since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self.started))}"]
        if self.config.server_description:
            lines.insert(1, self.config.server_description)  # without the flag INFO reads as it always did
        for line in lines:
            self.num(user, "371", line)
        self.num(user, "374", "End of /INFO list")

    def irc_LINKS(self, user: User, msg: Message) -> None:
        """``LINKS [[<remote>] <mask>]``: every server of the federation (364 each, then 365).

        Every server of the tree has the same view, so ``<remote>`` is answered here (402 when no known
        server matches it). Operators also get each server's endpoint id (and a direct link's trust) in
        the info field, and after 365 a NOTICE per peer held with SQUIT; others never see endpoint ids.
        """
        federation = self.federation
        rows: list[tuple[str, str, int, str, Optional[str]]] = [(self.name, self.name, 0, "", None)]
        if federation is not None:
            rows = [(v.name, v.uplink, v.hops, v.server_id, v.trust) for v in federation.links_view()]
        mask = msg.params[-1] if msg.params and msg.params[-1] else "*"
        if any(self._mask_refused(user, "LINKS", m) for m in msg.params[:2]):
            self.num(user, "365", mask, "End of /LINKS list.")
            return
        if len(msg.params) > 1 and not any(glob_match(msg.params[0], row[0]) for row in rows):
            self.num(user, "402", msg.params[0], "No such server")
            return
        for name, uplink, hops, server_id, trust in rows:
            if not glob_match(mask, name):
                continue
            text = f"{hops} {self._server_info(hops == 0)}"
            if user.is_oper and server_id:
                text += f" [{server_id}" + (f", trust {trust}" if trust else "") + "]"
            self.num(user, "364", name, uplink, text)
        self.num(user, "365", mask, "End of /LINKS list.")
        if user.is_oper and federation is not None:
            now = self.clock.seconds()
            for held in federation.held_view():
                if glob_match(mask, held.name) or glob_match(mask, held.peer_id):
                    self.notice(user, f"Held S2S peer {held.name} ({held.peer_id}) by {held.by} "
                                      f"{int(now - held.since)}s ago: {held.reason}; CONNECT {held.name} releases it")

    def irc_HELP(self, user: User, msg: Message) -> None:
        from freeq.core.help import HELP

        subject = msg.params[0].upper() if msg.params else "*"
        text = HELP.get(subject)
        if text is None:
            self.num(user, "524", subject, "No help available on this topic")
            return
        lines = text.strip("\n").split("\n")
        self.num(user, "704", subject, lines[0])
        for line in lines[1:]:
            self.num(user, "705", subject, line or " ")
        self.num(user, "706", subject, "End of /HELP.")
