"""WEBIRC: a trusted gateway names the client it carries (https://ircv3.net/specs/extensions/webirc).

``WEBIRC <password> <gateway> <hostname> <ip> [:<options>]`` is accepted only as a connection's first
command (before CAP, PASS, NICK, USER and AUTHENTICATE), only from an address listed in a ``[[webirc]]``
block of the config (``Config.webirc``, read at each use, so a reload applies to the next client) and only
with that block's password (:mod:`freeq.gateways`). Then the connection's address becomes the client's:
the per-IP limit and connection rate count it (the slot moves from the gateway's host, which counts only in
the total, see :meth:`freeq.net.connection.ClientConnection.rebind_ip`), plugins' ``on_connect`` are asked
about it, and everything that reads ``user.ip`` afterwards (D-lines and K-lines at registration, the OPER
and channel-creation throttles, SASL's back-off, WHOIS 338/378 to operators) sees the client, not the
gateway. The hostname the gateway sent is kept on the connection (``conn.webirc``) when it is a plausible DNS
name, else the IP; the visible host stays the cloak as for every client.

The ``secure`` option (the client reached the gateway over TLS) is believed only when the gateway's own
connection to this server is secure too (TLS, or loopback): over plaintext the claim travelled in the clear
next to the password and is worth nothing. Without the option the connection is not secure, whatever the
gateway's own link is (the client's leg was plaintext).

A wrong password, an unlisted address, an invalid IP, a WEBIRC that is not the first command or comes twice:
``ERROR`` and the connection is closed, logged at warn with the peer's address (never the password).
A malformed command (too few parameters) is answered ``461`` and changes nothing.

Mixed into :class:`freeq.core.server.IRCServer`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from twisted.logger import Logger

from freeq.gateways import believe_secure, check_webirc, clean_hostname, clean_ip, parse_options
from freeq.irc.parser import Message
from freeq.logs import security_event
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
else:
    _Server = object

log = Logger()


class WebircCommands(_Server):
    """The WEBIRC command (see the module doc)."""

    if TYPE_CHECKING:  # what this group calls in the other groups and server.py
        metrics: Any  # freeq.metrics.Metrics (None in some unit tests)

        def check_connect(self, ip: str) -> Optional[str]: ...

    def irc_WEBIRC(self, user: User, msg: Message) -> None:
        conn = user.conn
        if user.registered:
            self.num(user, "462", "You may not reregister")
            return
        if len(msg.params) < 4:
            self.num(user, "461", "WEBIRC", "Not enough parameters")
            return
        peer = user.ip
        if conn is None or getattr(conn, "webirc", None) is not None:
            self._webirc_refused(user, peer, "", "WEBIRC was already given", "WebIRC already used")
            return
        if user.nick_given or user.user_given or user.pass_ok or user.cap_version or user.cap_negotiating \
                or user.sasl is not None:
            self._webirc_refused(user, peer, "", "WEBIRC after other registration commands",
                                 "WEBIRC must be the first command")
            return
        password, _gateway_word, hostname, ip_text = msg.params[:4]
        gateway, why = check_webirc(self.config.webirc, peer, password)
        if gateway is None:
            self._webirc_refused(user, peer, "", why, "Invalid WebIRC password or gateway address")
            return
        ip = clean_ip(ip_text)
        if ip is None:
            self._webirc_refused(user, peer, gateway.name, "not an IP address", "Invalid WebIRC client address")
            return
        host = clean_hostname(hostname, ip)
        options = parse_options(msg.params[4]) if len(msg.params) > 4 else {}
        rebind = getattr(conn, "rebind_ip", None)
        reason = rebind(ip) if rebind is not None else None
        if reason is not None:
            self.metric("webirc_refused")
            self.close(user, reason)  # the limiter logged and counted it
            return
        user.ip = ip
        secure = believe_secure(options, bool(getattr(conn, "secure", False)), peer)
        conn.secure = secure
        conn.webirc = (gateway.name, peer, host)
        self.metric("webirc_accepted")
        log.info("WEBIRC: gateway {gateway} at {gateway_ip} vouches for {ip} ({host}; secure: {secure})",
                 gateway=gateway.name, gateway_ip=peer, ip=ip, host=host, secure=secure)
        refused = self.check_connect(ip)
        if refused is not None:
            log.info("plugin refused WebIRC client {ip}: {reason}", ip=ip, reason=refused)
            self.close(user, refused)

    def _webirc_refused(self, user: User, peer: str, gateway: str, why: str, told: str) -> None:
        """Log (warn, with the peer's address), count and close a refused WEBIRC; the client is told ``told``."""
        security_event(log, "webirc_refused", peer, "WEBIRC refused from {ip}: {why}", metrics=self.metrics,
                       why=why, gateway=gateway or None)
        self.close(user, told)

    def webirc_origin(self, user: User) -> Optional[tuple[str, str, str]]:
        """``(gateway name, gateway address, client hostname)`` of a connection that came through WEBIRC."""
        conn = user.conn
        return getattr(conn, "webirc", None) if conn is not None else None
