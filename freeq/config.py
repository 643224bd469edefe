"""The one validated, frozen configuration object that flows from ``tap`` to the factories."""
from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any, Callable, Optional


#: The longest --server-description, in UTF-8 bytes (it goes out in 364, 371 and 312 lines).
MAX_SERVER_DESCRIPTION = 200

#: The longest --sts-duration: one year, in seconds (a mistaken policy pins clients to TLS that long).
MAX_STS_DURATION = 31536000


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line, fit for the operator."""


@dataclasses.dataclass(frozen=True)
class Listen:
    """A host and port to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def endpoint(self, reactor: Any, tls: Any = None) -> Any:
        """The Twisted server endpoint for this address (TLS with ``tls`` context options)."""
        from twisted.internet import endpoints

        if tls is not None:
            return endpoints.SSL4ServerEndpoint(reactor, self.port, tls, interface=self.host)
        if ":" in self.host:
            return endpoints.TCP6ServerEndpoint(reactor, self.port, interface=self.host)
        return endpoints.TCP4ServerEndpoint(reactor, self.port, interface=self.host)


def parse_listen(flag: str, value: str) -> Listen:
    """Parse ``host:port`` (IPv6 as ``[::1]:6667``); raise :class:`ConfigError` on nonsense."""
    value = value.strip()
    host, sep, port_s = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{flag}: expected HOST:PORT, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"{flag}: {host!r} is not an IP address (use e.g. 127.0.0.1 or 0.0.0.0)") from None
        host = "127.0.0.1"
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{flag}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{flag}: port {port} is out of range 0-65535")
    return Listen(host, port)


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a freeq server. Built once by :func:`freeq.tap.config_from_options`."""

    server_name: str = "freeq"
    network_name: str = "freeq"
    # This server's one-line description in LINKS, INFO and WHOIS (312) of its users; empty: the
    # "<network-name> IRC server" it always was (issue #12).
    server_description: str = ""
    listen: Optional[Listen] = Listen("127.0.0.1", 6667)
    tls_listen: Optional[Listen] = Listen("127.0.0.1", 6697)
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    # STS (https://ircv3.net/specs/extensions/sts, issue #12): with a TLS listener, plain connections are
    # told its port (``sts=port=``) and TLS ones this policy duration in seconds (``sts=duration=``); 0:
    # STS is not advertised.
    sts_duration: int = 2592000
    data_dir: str = "freeq-data"
    db_path: Optional[str] = None  # None: <data_dir>/freeq.db; ":memory:" keeps nothing on disk
    # Start even though the database is behind its high-water mark (freeq.db.hwm) or is missing/empty
    # while key files exist (issue #10 item 11): the loss is accepted and the mark re-baselined.
    accept_data_loss: bool = False
    max_messages_per_channel: int = 10000  # 0 = unlimited
    message_retention_days: float = 0  # 0 = keep forever
    motd: tuple[str, ...] = ()
    server_password: Optional[str] = None
    oper_password: Optional[str] = None
    # Named operator accounts (issue #13 item 3): the config file's [[oper]] blocks (freeq.opers).
    opers: tuple[Any, ...] = ()
    # Network bans from the config file's [[kline]] blocks (issue #13 item 4): (mask, reason) pairs, checked at
    # connect beside the KLINE/DLINE ones stored in the database; reloaded with the file.
    config_bans: tuple[tuple[str, str], ...] = ()
    # Trusted WebIRC gateways from the config file's [[webirc]] blocks (issue #13 item 5; freeq.gateways): read
    # at each WEBIRC, so a reload applies to the next client.
    webirc: tuple[Any, ...] = ()
    # The config file this Config was read from (--config), re-read on REHASH and SIGHUP; None: flags only.
    config_path: Optional[str] = None
    # Failed OPER from one address (IPv6: its /64), across connections (issue #10 item 7): after failure n the
    # address waits min(max, base * 2**(n-1)) seconds before another OPER is even checked; base 0 turns it off.
    oper_backoff_base: float = 1.0
    oper_backoff_max: float = 600.0
    admin_info: tuple[str, str, str] = ("freeq IRC server", "AT Protocol authenticated IRC", "admin@localhost")
    # limits
    max_connections_per_ip: int = 20
    # New connections per address (IPv6: its /64) over TCP, TLS and WebSocket (issue #10 item 6): a token
    # bucket of connection_rate_burst refilled at connection_rate per second; rate 0 turns the throttle off.
    connection_rate_burst: int = 10
    connection_rate: float = 1.0
    max_clients: int = 10000
    max_channels_per_user: int = 100
    # New channels per address (IPv6: its /64) and per account (issue #10 item 14): a burst, then one more
    # every interval seconds (opers exempt); burst 0 turns the cap off.
    channel_create_burst: int = 10
    channel_create_interval: float = 60.0
    # Empty channels without a founder DID are forgotten (memory and database) this many seconds after their
    # last member left (issue #10 item 14); 0 keeps them forever.
    channel_expiry: float = 3600.0
    max_targets: int = 4
    max_list_entries: int = 100
    max_monitor: int = 100
    max_invites_per_user: int = 50
    nick_len: int = 64
    channel_len: int = 64
    topic_len: int = 390
    kick_len: int = 390
    away_len: int = 390
    realname_len: int = 200
    user_len: int = 16
    max_modes: int = 4
    whowas_size: int = 1000
    max_who_results: int = 500
    # framing and timers (seconds)
    max_line_bytes: int = 512
    # Client tag data: the bytes between a line's leading '@' and the space after its tags. The message-tags
    # spec allows a client 4094; more is refused with 417, never relayed (issue #12).
    max_tag_bytes: int = 4094
    registration_timeout: float = 60.0
    # Seconds a closing connection may take to send what is queued before it is aborted (issue #10 items 2, 3).
    close_grace: float = 5.0
    ping_interval: float = 90.0
    ping_timeout: float = 180.0
    sweep_interval: float = 15.0
    # flood control: token bucket; rate 0 disables it
    flood_burst: int = 20
    flood_rate: float = 4.0
    flood_queue: int = 40
    sendq_bytes: int = 1048576
    plugins: tuple[str, ...] = ()
    # logs (issue #13 item 6; docs/logging.md): "text" (twistd's lines) or "json" (one object per line), and
    # whether clients' connect and quit lines are logged at info (the /metrics counters are kept either way)
    log_format: str = "text"
    log_connections: bool = True
    # identity (AT Protocol)
    challenge_timeout: float = 60.0
    plc_directory_url: str = "https://plc.directory"
    allow_private_network: bool = False  # let DID/PDS fetches reach loopback/private addresses (tests, LANs)
    oper_dids: tuple[str, ...] = ()
    did_cache_ttl: float = 300.0
    http_timeout: float = 10.0
    # SASL PLAIN (handle + app password, checked at the user's own PDS; docs/authentication.md). On by default:
    # the password only ever goes to the PDS named in the user's DID document. Plaintext TCP from a
    # non-loopback address is refused unless sasl_plain_insecure.
    sasl_plain: bool = True
    sasl_plain_insecure: bool = False
    handle_resolver_url: str = "https://public.api.bsky.app"  # com.atproto.identity.resolveHandle for PLAIN
    # web listener
    web_listen: Optional[Listen] = None
    web_tls_cert: Optional[str] = None
    web_tls_key: Optional[str] = None
    web_static_dir: Optional[str] = None
    web_allowed_origins: tuple[str, ...] = ()  # empty: any Origin
    trusted_proxies: tuple[str, ...] = ()  # IPs or CIDRs whose X-Forwarded-For / Forwarded is believed
    broker_shared_secret: Optional[str] = None
    # /metrics (issue #13 item 5): a scrape must carry "Authorization: Bearer <metrics_token>" when it is set;
    # with metrics_listen the route has a listener of its own and leaves the web listener. Neither: /metrics
    # is open on the web listener, as before (the audit warns when that listener is public).
    metrics_token: Optional[str] = None
    metrics_listen: Optional[Listen] = None
    # Plain HTTP connections of the web listener (issue #10 item 4), counted per TCP peer address (a trusted
    # proxy only in the total) apart from the IRC limits; an upgraded WebSocket moves to the IRC limiter.
    web_max_connections_per_ip: int = 32
    web_max_connections: int = 1000
    # Seconds a web connection may sit without a request (fresh or keep-alive), and seconds a request
    # (line, headers and body) may take to arrive once its first byte came: a slowloris ends within both.
    web_idle_timeout: float = 30.0
    web_request_timeout: float = 10.0
    # federation (S2S over iroh; see docs/federation.md)
    iroh: bool = False
    iroh_port: int = 0  # UDP; 0 = any free port
    iroh_host: str = "0.0.0.0"
    iroh_relay_mode: str = "default"  # "default" (n0 relays and discovery) or "disabled" (direct addresses only)
    s2s_peers: tuple[tuple[str, Optional[str], Optional[int]], ...] = ()  # (endpoint id, host, port)
    s2s_allowed_peers: tuple[str, ...] = ()
    s2s_peer_trust: tuple[tuple[str, str], ...] = ()  # (endpoint id, full|relay|readonly)
    s2s_open_federation: bool = False  # accept links from any peer (default: closed, allowlist only)
    s2s_rate: float = 100.0  # events per second accepted from each peer
    s2s_max_remote_users: int = 10000  # users one link may introduce (everything behind it)

    def validate(self) -> "Config":
        """Check cross-field rules; raise :class:`ConfigError` with a one-line message."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,62}", self.server_name or ""):
            raise ConfigError(f"--server-name: {self.server_name!r} must be one word (letters, digits, dots, dashes)")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.\-_]{0,62}", self.network_name or ""):
            raise ConfigError(f"--network-name: {self.network_name!r} must be one word (letters, digits, dots, dashes)")
        if len(self.server_description.encode("utf-8")) > MAX_SERVER_DESCRIPTION or any(
                ch < " " or ch == "\x7f" for ch in self.server_description):
            raise ConfigError(f"--server-description: must be one line of at most {MAX_SERVER_DESCRIPTION} bytes "
                              "without control characters")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        if not 0 <= self.sts_duration <= MAX_STS_DURATION:
            raise ConfigError(f"--sts-duration: must be 0 (off) to {MAX_STS_DURATION} seconds, got {self.sts_duration}")
        for name in ("max_connections_per_ip", "max_clients", "max_channels_per_user", "max_targets",
                     "flood_burst", "flood_queue", "sendq_bytes", "nick_len", "channel_len", "topic_len",
                     "max_list_entries", "max_monitor", "whowas_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(self, name)}")
        if self.max_messages_per_channel < 0:
            raise ConfigError(f"--max-messages-per-channel: must be 0 (unlimited) or positive, got {self.max_messages_per_channel}")
        if self.message_retention_days < 0:
            raise ConfigError(f"--message-retention-days: must be 0 (forever) or positive, got {self.message_retention_days}")
        if self.oper_backoff_base < 0:
            raise ConfigError(f"--oper-backoff-base: must be 0 (off) or positive, got {self.oper_backoff_base}")
        if self.oper_backoff_max < self.oper_backoff_base:
            raise ConfigError(f"--oper-backoff-max: must be at least --oper-backoff-base, got {self.oper_backoff_max}")
        if self.channel_create_burst < 0:
            raise ConfigError(f"--channel-create-burst: must be 0 (no cap) or positive, got {self.channel_create_burst}")
        if self.channel_create_interval <= 0:
            raise ConfigError(f"--channel-create-interval: must be positive, got {self.channel_create_interval}")
        if self.channel_expiry < 0:
            raise ConfigError(f"--channel-expiry: must be 0 (never) or positive, got {self.channel_expiry}")
        if self.connection_rate < 0:
            raise ConfigError(f"--connection-rate: must be 0 (off) or positive, got {self.connection_rate}")
        if self.connection_rate and self.connection_rate_burst < 1:
            raise ConfigError(f"--connection-rate-burst: must be at least 1, got {self.connection_rate_burst}")
        if self.close_grace <= 0:
            raise ConfigError(f"--close-grace: must be positive, got {self.close_grace}")
        if self.flood_rate < 0:
            raise ConfigError(f"--flood-rate: must be 0 (off) or positive, got {self.flood_rate}")
        if not 9 <= self.nick_len <= 64:
            raise ConfigError(f"--nick-len: must be between 9 and 64, got {self.nick_len}")
        if not 2 <= self.channel_len <= 64:
            raise ConfigError(f"--channel-len: must be between 2 and 64, got {self.channel_len}")
        for name in ("registration_timeout", "ping_interval", "ping_timeout", "sweep_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be positive, got {getattr(self, name)}")
        if self.ping_timeout <= self.ping_interval:
            raise ConfigError("--ping-timeout must be greater than --ping-interval")
        if self.challenge_timeout <= 0:
            raise ConfigError(f"--challenge-timeout-secs: must be positive, got {self.challenge_timeout}")
        if not self.plc_directory_url.startswith(("https://", "http://")):
            raise ConfigError(f"--plc-directory-url: must be an http(s) URL, got {self.plc_directory_url!r}")
        if not self.handle_resolver_url.startswith(("https://", "http://")):
            raise ConfigError(f"--handle-resolver-url: must be an http(s) URL, got {self.handle_resolver_url!r}")
        for did in self.oper_dids:
            if not did.startswith("did:") or " " in did:
                raise ConfigError(f"--oper-dids: {did!r} is not a DID")
        self._validate_web()
        self._validate_s2s()
        return self

    def _validate_web(self) -> None:
        """The web and metrics listeners, the proxies, the log format, and that some listener is on."""
        for name in ("web_max_connections_per_ip", "web_max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {getattr(self, name)}")
        for name in ("web_idle_timeout", "web_request_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be positive, got {getattr(self, name)}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"--log-format: expected text or json, got {self.log_format!r}")
        if bool(self.web_tls_cert) != bool(self.web_tls_key):
            raise ConfigError("--web-tls-cert and --web-tls-key must be given together")
        if self.metrics_token is not None and (len(self.metrics_token) < 16 or any(
                ch <= " " or ch == "\x7f" for ch in self.metrics_token)):
            raise ConfigError("--metrics-token: must be at least 16 characters without spaces or control characters")
        if self.metrics_listen is not None and self.metrics_listen.port != 0 and self.metrics_listen in (
                self.web_listen, self.listen, self.tls_listen if self.tls_cert else None):
            raise ConfigError(f"--metrics-addr: {self.metrics_listen} is already another listener's address")
        for net in self.trusted_proxies:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ConfigError(f"--trusted-proxies: {net!r} is not an IP address or CIDR") from None
        if self.listen is None and (self.tls_listen is None or not self.tls_cert) and self.web_listen is None:
            # A web-only server (--listen-addr none with --web-addr) is fine: clients come over /irc (issue #13).
            raise ConfigError("no listener: give --listen-addr, --tls-cert/--tls-key for --tls-listen-addr, "
                              "or --web-addr")

    def _validate_s2s(self) -> None:
        if self.iroh_relay_mode not in ("default", "disabled"):
            raise ConfigError(f"--iroh-relay-mode: expected 'default' or 'disabled', got {self.iroh_relay_mode!r}")
        if not 0 <= self.iroh_port <= 65535:
            raise ConfigError(f"--iroh-port: {self.iroh_port} is out of range 0-65535")
        try:
            ipaddress.ip_address(self.iroh_host)
        except ValueError:
            raise ConfigError(f"--iroh-host: {self.iroh_host!r} is not an IP address") from None
        if self.s2s_rate <= 0:
            raise ConfigError(f"--s2s-rate: must be positive, got {self.s2s_rate}")
        if self.s2s_max_remote_users < 1:
            raise ConfigError(f"--s2s-max-remote-users: must be at least 1, got {self.s2s_max_remote_users}")
        for peer in self.s2s_allowed_peers:
            parse_endpoint_id("--s2s-allowed-peers", peer)
        if (self.s2s_peers or self.s2s_allowed_peers or self.s2s_open_federation) and not self.iroh:
            raise ConfigError("--s2s-peers, --s2s-allowed-peers and --s2s-open-federation need --iroh")
        if self.s2s_open_federation and self.s2s_allowed_peers:
            raise ConfigError("--s2s-open-federation and --s2s-allowed-peers exclude each other")
        for peer_id, _host, _port in self.s2s_peers:
            if not self.s2s_open_federation and peer_id not in self.s2s_allowed_peers:
                raise ConfigError(f"--s2s-peers: {peer_id} is not in --s2s-allowed-peers "
                                  "(links are only made to and accepted from allowed peers)")
        for peer_id, level in self.s2s_peer_trust:
            if level not in ("full", "relay", "readonly"):
                raise ConfigError(f"--s2s-peer-trust: {level!r} is not full, relay or readonly")


def parse_endpoint_id(flag: str, value: str) -> str:
    """An iroh endpoint id: 64 hex characters (normalised to lower case)."""
    text = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ConfigError(f"{flag}: {value.strip()[:80]!r} is not an endpoint id (64 hex characters)")
    return text


def parse_s2s_peer(flag: str, value: str) -> tuple[str, Optional[str], Optional[int]]:
    """``<endpoint-id>`` or ``<endpoint-id>@<host>:<port>`` (a direct UDP address)."""
    ident, sep, addr = value.strip().partition("@")
    peer_id = parse_endpoint_id(flag, ident)
    if not sep:
        return (peer_id, None, None)
    listen = parse_listen(flag, addr)
    if listen.port == 0:
        raise ConfigError(f"{flag}: {peer_id[:12]}...@{addr}: a peer address needs a port")
    return (peer_id, listen.host, listen.port)


def parse_peer_trust(flag: str, value: str) -> tuple[str, str]:
    """``<endpoint-id>=full|relay|readonly``."""
    ident, sep, level = value.strip().partition("=")
    if not sep:
        raise ConfigError(f"{flag}: expected ID=full|relay|readonly, got {value.strip()[:80]!r}")
    level = level.strip().lower()
    if level not in ("full", "relay", "readonly"):
        raise ConfigError(f"{flag}: {level!r} is not full, relay or readonly")
    return (parse_endpoint_id(flag, ident), level)


#: Names of ``[[oper]]`` and ``[[webirc]]`` blocks: what logs and replies name them by.
BLOCK_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}\Z")


def block_tables(kind: str, blocks: Any, limit: int) -> list[Any]:
    """The config file's ``[[kind]]`` blocks (none: ``[]``), refused (one line) unless an array of at most
    ``limit`` tables; each table is then checked by :func:`named_block`."""
    if blocks is None:
        return []
    if not isinstance(blocks, (list, tuple)):
        raise ConfigError(f"[[{kind}]]: must be an array of tables")
    if len(blocks) > limit:
        raise ConfigError(f"[[{kind}]]: at most {limit} blocks")
    return list(blocks)


def named_block(kind: str, index: int, block: Any, keys: frozenset[str], seen: set[str]) -> str:
    """Check ``[[kind]]`` block number ``index`` (from 1): a table with a ``name`` of :data:`BLOCK_NAME_RE` not
    used by an earlier block (``seen``, updated) and no key outside ``keys``. Returns where it is for messages
    (``[[kind]] 'name'``); raises :class:`ConfigError` naming the block."""
    where = f"[[{kind}]] block {index}"
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: must be a table")
    name = block.get("name")
    if not isinstance(name, str) or not BLOCK_NAME_RE.match(name):
        raise ConfigError(f"{where}: name: must be 1..32 of A-Z a-z 0-9 _ . -")
    where = f"[[{kind}]] {name!r}"
    unknown = sorted(set(block) - keys)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0][:40]!r} (known: {', '.join(sorted(keys))})")
    if name in seen:
        raise ConfigError(f"{where}: name: used by two blocks")
    seen.add(name)
    return where


#: The longest [[kline]] mask and reason, and the most [[kline]] blocks one file may hold.
MAX_KLINE_MASK = 256
MAX_KLINE_REASON = 300
MAX_KLINE_BLOCKS = 10000


def _kline_text(where: str, block: dict[str, Any], key: str, limit: int, spaces: bool) -> str:
    value = block.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    value = value.strip()
    if len(value.encode("utf-8")) > limit:
        raise ConfigError(f"{where}: {key} is longer than {limit} bytes")
    if any(ch < " " or ch == "\x7f" or (not spaces and ch.isspace()) for ch in value):
        raise ConfigError(f"{where}: {key} may not contain {'control characters' if spaces else 'spaces or control characters'}")
    return value


def parse_kline_blocks(blocks: Any) -> tuple[tuple[str, str], ...]:
    """The config file's ``[[kline]]`` tables (``mask``, ``reason``) as ``(mask, reason)`` pairs (``Config.config_bans``).

    The mask (``user@host``, an IP or CIDR, or a DID: the network-bans engine interprets it) must be one word
    without control characters; the reason one line. Raises :class:`ConfigError` (one line) otherwise.
    """
    if not isinstance(blocks, list):
        raise ConfigError("kline: expected [[kline]] blocks")
    if len(blocks) > MAX_KLINE_BLOCKS:
        raise ConfigError(f"kline: more than {MAX_KLINE_BLOCKS} [[kline]] blocks")
    out = []
    for i, block in enumerate(blocks, 1):
        where = f"[[kline]] #{i}"
        if not isinstance(block, dict):
            raise ConfigError(f"{where}: expected a table")
        unknown = sorted(set(block) - {"mask", "reason"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0][:40]!r} (a kline has mask and reason)")
        mask = _kline_text(where, block, "mask", MAX_KLINE_MASK, spaces=False)
        reason = _kline_text(where, block, "reason", MAX_KLINE_REASON, spaces=True)
        from freeq.state.bans import config_ban_problem  # the rules of KLINE/DLINE (issue #13 item 4)

        problem = config_ban_problem(mask)
        if problem is not None:
            raise ConfigError(f"{where}: {problem}")
        out.append((mask, reason))
    return tuple(out)


def _parse_oper_blocks(blocks: Any) -> tuple[Any, ...]:
    from freeq.opers import parse_oper_blocks  # imported when used: freeq.opers needs this module itself

    return parse_oper_blocks(blocks)


def _parse_webirc_blocks(blocks: Any) -> tuple[Any, ...]:
    from freeq.gateways import parse_webirc_blocks  # imported when used: freeq.gateways needs this module itself

    return parse_webirc_blocks(blocks)


#: The config file's array-of-tables blocks: name -> (the Config field it fills, its parser). A parser takes
#: the list of tables and returns the field's value, raising :class:`ConfigError` with one line.
BLOCKS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "oper": ("opers", _parse_oper_blocks),
    "kline": ("config_bans", parse_kline_blocks),
    "webirc": ("webirc", _parse_webirc_blocks),
}
