"""``twistd freeq``: command-line options, validation into one frozen :class:`Config`, and wiring.

This is the composition root: the only module that builds and connects the
server's parts.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from zope.interface import implementer

from freeq.config import Config, ConfigError, parse_listen
from freeq.core.server import IRCServer
from freeq.net.connection import ConnectionLimiter, IRCFactory
from freeq.state.flood import ConnectionRate
from freeq.state.links import FederationControl

if TYPE_CHECKING:
    from freeq.core.rehash import ReloadOutcome
    from freeq.s2s.federation import FederationFactory

log = Logger()
_D = Config()

#: (flag, default, help, Config field, converter) for every valued option.
_INT = "int"
_FLOAT = "float"
_STR = "str"
OPTIONS: list[tuple[str, Any, str, str, str]] = [
    ("listen-addr", "127.0.0.1:6667", "Plain IRC listener, HOST:PORT ('none' to disable).", "listen", "listen"),
    ("tls-listen-addr", "127.0.0.1:6697", "TLS IRC listener, HOST:PORT; active when --tls-cert and --tls-key are given.",
     "tls_listen", "listen"),
    ("tls-cert", None, "TLS certificate chain (PEM).", "tls_cert", _STR),
    ("tls-key", None, "TLS private key (PEM).", "tls_key", _STR),
    ("sts-duration", _D.sts_duration, "STS policy duration in seconds, advertised on TLS connections (plain ones "
     "are told the TLS port); 0 = do not advertise STS.", "sts_duration", _INT),
    ("server-name", _D.server_name, "Server name: the prefix of server messages.", "server_name", _STR),
    ("network-name", _D.network_name, "Network name (ISUPPORT NETWORK).", "network_name", _STR),
    ("server-description", None, "One line describing this server in LINKS, INFO and WHOIS (default: "
     "'NETWORK-NAME IRC server').", "server_description", _STR),
    ("motd", None, "Message of the day text ('|' separates lines).", "motd", _STR),
    ("motd-file", None, "Read the message of the day from this file (overrides --motd).", "motd", _STR),
    ("data-dir", _D.data_dir, "Directory for the database and key files (created 0700).", "data_dir", _STR),
    ("db-path", None, "SQLite database (default: DATA_DIR/freeq.db; ':memory:' keeps it in memory; 'none' stores "
     "nothing).", "db_path",
     _STR),
    ("max-messages-per-channel", _D.max_messages_per_channel,
     "History kept per channel or conversation, newest first (0 = unlimited).", "max_messages_per_channel", _INT),
    ("message-retention-days", _D.message_retention_days, "Delete history older than this many days (0 = never).",
     "message_retention_days", _FLOAT),
    ("server-password", None, "Require this PASS from every client (env SERVER_PASSWORD).", "server_password", _STR),
    ("oper-password", None, "Password for the OPER command (env OPER_PASSWORD).", "oper_password", _STR),
    ("oper-backoff-base", _D.oper_backoff_base, "Seconds an address waits after its first failed OPER; doubles "
     "with each failure (0 disables the back-off).", "oper_backoff_base", _FLOAT),
    ("oper-backoff-max", _D.oper_backoff_max, "Longest wait, in seconds, between OPER attempts of one address.",
     "oper_backoff_max", _FLOAT),
    ("max-connections-per-ip", _D.max_connections_per_ip, "Concurrent connections per IP, TCP, TLS and WebSocket together.",
     "max_connections_per_ip", _INT),
    ("max-clients", _D.max_clients, "Concurrent connections in total.", "max_clients", _INT),
    ("max-channels-per-user", _D.max_channels_per_user, "Channels one user may join (CHANLIMIT).",
     "max_channels_per_user", _INT),
    ("channel-create-burst", _D.channel_create_burst, "New channels one address (IPv6 /64) or account may create "
     "at once (0 = no cap; opers exempt).", "channel_create_burst", _INT),
    ("channel-create-interval", _D.channel_create_interval, "Seconds after which one more new channel is allowed "
     "once the burst is spent.", "channel_create_interval", _FLOAT),
    ("channel-expiry", _D.channel_expiry, "Seconds an empty channel without a founder DID is kept (topic, modes, "
     "bans) before it is forgotten (0 = forever).", "channel_expiry", _FLOAT),
    ("max-targets", _D.max_targets, "Targets per PRIVMSG/NOTICE/KICK/WHOIS (TARGMAX).", "max_targets", _INT),
    ("max-list-entries", _D.max_list_entries, "Entries per ban/exception/invex list (MAXLIST).", "max_list_entries",
     _INT),
    ("max-monitor", _D.max_monitor, "Nicks one client may MONITOR.", "max_monitor", _INT),
    ("nick-len", _D.nick_len, "Longest nick in bytes (NICKLEN, 9-64).", "nick_len", _INT),
    ("channel-len", _D.channel_len, "Longest channel name in bytes (CHANNELLEN).", "channel_len", _INT),
    ("topic-len", _D.topic_len, "Longest topic in bytes (TOPICLEN).", "topic_len", _INT),
    ("registration-timeout", _D.registration_timeout, "Seconds a client has to complete registration.",
     "registration_timeout", _FLOAT),
    ("close-grace", _D.close_grace, "Seconds a closing connection may take to send what is queued (ERROR included) "
     "before it is aborted.", "close_grace", _FLOAT),
    ("ping-interval", _D.ping_interval, "Seconds of silence before the server sends PING.", "ping_interval", _FLOAT),
    ("ping-timeout", _D.ping_timeout, "Seconds of silence before the client is dropped (Ping timeout).",
     "ping_timeout", _FLOAT),
    ("connection-rate-burst", _D.connection_rate_burst, "New IRC connections (TCP, TLS, WebSocket) one address "
     "(IPv6 /64) may open in a burst.", "connection_rate_burst", _INT),
    ("connection-rate", _D.connection_rate, "New IRC connections per second one address (IPv6 /64) may open once "
     "the burst is spent; faster ones are refused (0 = no throttle).", "connection_rate", _FLOAT),
    ("flood-burst", _D.flood_burst, "Flood control: commands a client may send in a burst.", "flood_burst", _INT),
    ("flood-rate", _D.flood_rate, "Flood control: commands per second sustained (0 disables flood control).",
     "flood_rate", _FLOAT),
    ("flood-queue", _D.flood_queue, "Flood control: commands held back (fake lag) before 'Excess Flood'.",
     "flood_queue", _INT),
    ("challenge-timeout-secs", _D.challenge_timeout, "SASL challenge lifetime in seconds.", "challenge_timeout",
     _FLOAT),
    ("plc-directory-url", _D.plc_directory_url, "PLC directory used to resolve did:plc identities.",
     "plc_directory_url", _STR),
    ("sasl-plain", "on", "SASL PLAIN with a Bluesky handle and app password, checked at the user's PDS: on|off.",
     "sasl_plain", "onoff"),
    ("handle-resolver-url", _D.handle_resolver_url, "Service asked to resolve handles for SASL PLAIN "
     "(com.atproto.identity.resolveHandle).", "handle_resolver_url", _STR),
    ("oper-dids", None, "Comma-separated DIDs made server operators on SASL success (env OPER_DIDS).", "oper_dids",
     "list"),
    ("web-addr", None, "HTTP/WebSocket listener HOST:PORT (or just PORT for 127.0.0.1): /irc, /api/v1, the web client.",
     "web_listen", "weblisten"),
    ("web-tls-cert", None, "TLS certificate (PEM) for the web listener (wss:// and https://).", "web_tls_cert", _STR),
    ("web-tls-key", None, "TLS private key (PEM) for the web listener.", "web_tls_key", _STR),
    ("web-static-dir", None, "Serve this directory at / instead of the bundled web client.", "web_static_dir", _STR),
    ("web-allowed-origins", None, "Comma-separated Origins allowed to open /irc (default: any).",
     "web_allowed_origins", "list"),
    ("trusted-proxies", None, "Comma-separated proxy IPs/CIDRs whose X-Forwarded-For/Forwarded is believed.",
     "trusted_proxies", "list"),
    ("broker-shared-secret", None, "Enables /auth/broker/* (env BROKER_SHARED_SECRET).", "broker_shared_secret",
     _STR),
    ("metrics-token", None, "Require 'Authorization: Bearer TOKEN' on /metrics (env METRICS_TOKEN; at least 16 "
     "characters).", "metrics_token", _STR),
    ("metrics-addr", None, "Serve /metrics on its own listener HOST:PORT (or just PORT for 127.0.0.1) instead of "
     "the web listener.", "metrics_listen", "weblisten"),
    ("web-max-connections-per-ip", _D.web_max_connections_per_ip, "Open HTTP connections per peer address on the web "
     "listener (a trusted proxy counts only in the total); over it the connection gets 503 and is closed.",
     "web_max_connections_per_ip", _INT),
    ("web-max-connections", _D.web_max_connections, "Open HTTP connections on the web listener in total (upgraded "
     "WebSockets count as IRC clients instead).", "web_max_connections", _INT),
    ("web-idle-timeout", _D.web_idle_timeout, "Seconds a web connection may wait without a request (new or "
     "keep-alive) before it is closed.", "web_idle_timeout", _FLOAT),
    ("web-request-timeout", _D.web_request_timeout, "Seconds a request's line, headers and body may take to arrive "
     "from its first byte (slow clients are cut).", "web_request_timeout", _FLOAT),
    ("sendq-bytes", _D.sendq_bytes, "Bytes queued for a slow reader beyond the socket buffer before it is dropped.",
     "sendq_bytes", _INT),
    ("log-format", _D.log_format, "Log lines as 'text' (twistd's format) or 'json' (one JSON object per line: "
     "timestamp, level, namespace, message and the event's fields; see docs/logging.md).", "log_format", _STR),
    ("log-connections", "on", "Log each client connection and quit at info: on|off (counted in /metrics either "
     "way).", "log_connections", "onoff"),
    ("iroh-port", _D.iroh_port, "UDP port of the iroh S2S endpoint (0: any free port).", "iroh_port", _INT),
    ("iroh-host", _D.iroh_host, "Address the iroh S2S endpoint binds to.", "iroh_host", _STR),
    ("iroh-relay-mode", _D.iroh_relay_mode,
     "iroh relays: 'default' (n0 relays and discovery) or 'disabled' (peers need ID@HOST:PORT).", "iroh_relay_mode",
     _STR),
    ("s2s-peers", None, "Comma-separated peers to link to: ENDPOINT_ID or ENDPOINT_ID@HOST:PORT (must be allowed).",
     "s2s_peers", "s2s-peers"),
    ("s2s-allowed-peers", None, "Comma-separated endpoint ids allowed to link, in and out (none: federation closed).",
     "s2s_allowed_peers", "s2s-ids"),
    ("s2s-peer-trust", None, "Comma-separated ID=full|relay|readonly (default full).", "s2s_peer_trust",
     "s2s-trust"),
    ("s2s-rate", _D.s2s_rate, "Events per second accepted from each peer (token bucket; excess dropped).", "s2s_rate",
     _FLOAT),
    ("s2s-max-remote-users", _D.s2s_max_remote_users, "Most remote users one peer link may introduce (excess refused).",
     "s2s_max_remote_users", _INT),
]


class Options(usage.Options):
    """Options of ``twistd freeq``; every flag documents its default."""

    synopsis = "[options]"
    longdesc = (
        "Runs the freeq IRC server. Listeners default to loopback. Invalid values stop start-up "
        "with a one-line message."
    )
    optParameters = [[name, None, default, doc] for name, default, doc, _f, _c in OPTIONS] + [
        ["config", None, None, "TOML config file whose keys are these flags' names; flags given here override it "
         "(env FREEQ_CONFIG; see docs/configuration.md). Re-read on REHASH and SIGHUP."]]
    optFlags = [
        ["allow-private-network", None,
         "Allow DID-document and PDS requests to loopback, private and link-local addresses (off: SSRF guard)."],
        ["accept-data-loss", None,
         "Start even if the database is behind its high-water mark or missing while key files exist (see "
         "docs/persistence.md); use once, then remove."],
        ["iroh", None, "Enable federation: run the iroh S2S endpoint (logs its endpoint id)."],
        ["s2s-open-federation", None, "Accept S2S links from any peer (default: only --s2s-allowed-peers)."],
        ["sasl-plain-insecure", None, "Allow SASL PLAIN (a password) over plaintext TCP from non-loopback "
         "addresses (default: TLS or loopback only)."],
    ]

    def __init__(self) -> None:
        #: The flags given on the command line (a config file may set the others; see config_from_options).
        self.explicit: set[str] = set()
        super().__init__()
        self["plugin"] = []
        self.explicit.discard("plugin")

    def __setitem__(self, key: str, value: Any) -> None:
        # usage.Options stores each parsed flag through this (its defaults go in with dict.update, not here).
        super().__setitem__(key, value)
        self.explicit.add(key)

    def opt_plugin(self, name: str) -> None:
        """Enable the operator plugin NAME (repeatable; see docs/plugins.md)."""
        self["plugin"].append(name)


def _convert(flag: str, value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == _INT:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"--{flag}: expected a whole number, got {value!r}") from None
    if kind == _FLOAT:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"--{flag}: expected a number, got {value!r}") from None
    if kind == "list":
        return tuple(x.strip() for x in str(value).split(",") if x.strip())
    if kind in ("s2s-peers", "s2s-ids", "s2s-trust"):
        from freeq.config import parse_endpoint_id, parse_peer_trust, parse_s2s_peer

        parse = {"s2s-peers": parse_s2s_peer, "s2s-ids": parse_endpoint_id, "s2s-trust": parse_peer_trust}[kind]
        return tuple(parse("--" + flag, x) for x in str(value).split(",") if x.strip())
    if kind == "onoff":
        word = str(value).strip().lower()
        if word not in ("on", "off", "yes", "no", "true", "false", "1", "0"):
            raise ConfigError(f"--{flag}: expected on or off, got {value!r}")
        return word in ("on", "yes", "true", "1")
    if kind == "weblisten":
        text = str(value).strip()
        return parse_listen("--" + flag, "127.0.0.1:" + text if text.isdigit() else text)
    if kind == "listen":
        if str(value).lower() in ("", "none", "off"):
            return None
        return parse_listen("--" + flag, str(value))
    return str(value)


def _explicit_flags(options: Mapping[str, Any]) -> set[str]:
    """The flags of ``options`` given on the command line (a plain mapping: every key it has, but an empty --plugin)."""
    explicit = getattr(options, "explicit", None)
    found = set(explicit) if explicit is not None else {k for k, v in options.items() if v is not None}
    if options.get("plugin"):
        found.add("plugin")
    else:
        found.discard("plugin")
    return found


def _env_flags() -> dict[str, str]:
    """flag -> the environment variable it falls back to, as its help says (``... (env SERVER_PASSWORD)``)."""
    out = {}
    for flag, _default, doc, _field, _kind in OPTIONS:
        at = doc.find("(env ")
        if at >= 0:
            name = doc[at + 5:].split(")", 1)[0].split(";", 1)[0].split(",", 1)[0].strip()
            if name.isidentifier() and name.isupper():
                out[flag] = name
    return out


def config_from_options(options: Mapping[str, Any], environ: Mapping[str, str]) -> Config:
    """Validate parsed options, the environment and the config file (``--config``) into a frozen :class:`Config`.

    Precedence: a flag given on the command line, then its environment variable (``SERVER_PASSWORD``, ...),
    then the config file's key, then the flag's default. Raises :class:`ConfigError` with a one-line message
    for any bad value (naming the file and key when the value came from the file).
    """
    from freeq.config import BLOCKS
    from freeq.configfile import config_path, read_config_file

    path = config_path(options, environ)
    if path is None:
        return _build_config(options, environ, {})
    flags = [str(f[0]) for f in Options.optFlags]
    settings = read_config_file(path, {f: kind for f, _d, _h, _field, kind in OPTIONS}, flags, BLOCKS)
    explicit = _explicit_flags(options)
    env_flags = _env_flags()
    overridden = explicit | {f for f, var in env_flags.items() if environ.get(var)}
    merged: dict[str, Any] = dict(options)
    for flag, value in settings.values.items():
        if flag not in overridden:
            merged[flag] = value
    extra: dict[str, Any] = {"config_path": path}
    for name, (field, parse) in BLOCKS.items():
        if name in settings.blocks:
            try:
                extra[field] = parse(settings.blocks[name])
            except ConfigError as e:
                text = str(e)
                raise ConfigError(f"{path}: {text}" if f"[[{name}]]" in text else f"{path}: [[{name}]]: {text}") \
                    from None
    try:
        return _build_config(merged, environ, extra)
    except ConfigError as e:
        raise ConfigError(settings.locate(str(e), overridden)) from None


def _build_config(options: Mapping[str, Any], environ: Mapping[str, str], extra: Mapping[str, Any]) -> Config:
    """The :class:`Config` of flag values ``options`` (merged with the file's), the environment and the fields
    ``extra`` (the file's blocks and path), validated."""
    values: dict[str, Any] = {}
    for flag, _default, _doc, field, kind in OPTIONS:
        if flag in ("motd", "motd-file"):
            continue
        values[field] = _convert(flag, options.get(flag), kind)
    for field in ("tls_cert", "tls_key", "server_password", "oper_password", "db_path", "oper_dids", "web_tls_cert",
                  "web_tls_key", "web_static_dir", "web_allowed_origins", "trusted_proxies", "broker_shared_secret",
                  "metrics_token"):
        if values.get(field) is None:
            values.pop(field, None)
    if values.get("server_description") is None:
        values.pop("server_description", None)  # not given: the Config default ("<network> IRC server")
    if options.get("server-password") is None and environ.get("SERVER_PASSWORD"):
        values["server_password"] = environ["SERVER_PASSWORD"]
    if options.get("oper-password") is None and environ.get("OPER_PASSWORD"):
        values["oper_password"] = environ["OPER_PASSWORD"]
    if options.get("oper-dids") is None and environ.get("OPER_DIDS"):
        values["oper_dids"] = _convert("oper-dids", environ["OPER_DIDS"], "list")
    if options.get("broker-shared-secret") is None and environ.get("BROKER_SHARED_SECRET"):
        values["broker_shared_secret"] = environ["BROKER_SHARED_SECRET"]
    if options.get("metrics-token") is None and environ.get("METRICS_TOKEN"):
        values["metrics_token"] = environ["METRICS_TOKEN"]
    values["allow_private_network"] = bool(options.get("allow-private-network"))
    values["iroh"] = bool(options.get("iroh"))
    values["accept_data_loss"] = bool(options.get("accept-data-loss"))
    values["s2s_open_federation"] = bool(options.get("s2s-open-federation"))
    values["sasl_plain_insecure"] = bool(options.get("sasl-plain-insecure"))
    if values.get("sasl_plain") is None:
        values.pop("sasl_plain", None)
    if values.get("log_connections") is None:
        values.pop("log_connections", None)
    for field in ("s2s_peers", "s2s_allowed_peers", "s2s_peer_trust"):
        if values.get(field) is None:
            values.pop(field, None)
    motd = _read_motd(options.get("motd"), options.get("motd-file"))
    values["motd"] = motd
    values["plugins"] = tuple(options.get("plugin") or ())
    values.update(extra)
    return Config(**values).validate()


def _read_motd(text: Optional[str], path: Optional[str]) -> tuple[str, ...]:
    if path:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                data = f.read(64 * 1024)
        except OSError as e:
            raise ConfigError(f"--motd-file: cannot read {path}: {e.strerror}") from None
        return tuple(line.rstrip("\r")[:400] for line in data.splitlines()[:200])
    if text:
        return tuple(line[:400] for line in text.split("|"))
    return ()


def prepare_data_dir(path: str) -> None:
    """Create the data directory (0700) if missing; fail clearly if it is not usable."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--data-dir: cannot create {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"--data-dir: {path} is not writable")


class StartupError(SystemExit, Exception):
    """A start-up failure after ``makeService`` (a socket that cannot be bound), as one ``freeq:`` line.

    A ``SystemExit``, so the process exits 1 printing only the message (no traceback); also an
    ``Exception``, so twistd's daemon mode reports it through its status pipe and removes the pid
    file (with a bare ``SystemExit`` the waiting parent process would hang).
    """


class _TopService(service.MultiService):
    """The service tree. A socket that cannot be bound when twistd starts it (port in use, address
    not on this host) stops start-up with one ``freeq:`` line naming the flag, like a bad value."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.listen_flags = {(x.host, x.port): flag for x, flag in (
            (config.listen, "listen-addr"), (config.tls_listen, "tls-listen-addr"),
            (config.web_listen, "web-addr"), (config.metrics_listen, "metrics-addr")) if x is not None}

    #: The observer twistd is to log through (text or ``--log-format json``; see :mod:`freeq.logs`), offered to the
    #: application when the tree joins it, before twistd starts logging.
    log_observer: Any = None

    def setServiceParent(self, parent: Any) -> None:
        if self.log_observer is not None:
            from freeq.logs import offer_log_observer

            offer_log_observer(parent, self.log_observer)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        from twisted.internet.error import CannotListenError

        from freeq.s2s.bridge import IrohBindError

        try:
            super().privilegedStartService()
        except CannotListenError as e:
            flag = self.listen_flags.get((e.interface, e.port))
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            where = f"--{flag}: " if flag else ""
            raise StartupError(f"freeq: {where}cannot listen on {e.interface}:{e.port}: {reason}") from None
        except IrohBindError as e:
            raise StartupError(f"freeq: --iroh-host/--iroh-port: {e}") from None


class _ShutdownService(service.Service):
    """Tells every client the server is stopping before the listeners close."""

    def __init__(self, server: IRCServer) -> None:
        self.server = server

    def stopService(self) -> Any:
        self.server.shutdown()
        return super().stopService()


def make_did_access(config: Config, reactor: Any) -> tuple[Any, Any]:
    """The SSRF-guarded HTTP client and the caching DID resolver that the SASL verifier and the profile reader
    share: ``(http, resolver)``."""
    from freeq.auth.did import DIDResolver
    from freeq.auth.http import SafeHTTPClient

    http = SafeHTTPClient(reactor, allow_private=config.allow_private_network, timeout=config.http_timeout)
    resolver = DIDResolver(http, reactor, plc_directory_url=config.plc_directory_url, ttl=config.did_cache_ttl)
    return http, resolver


def make_verifier(config: Config, reactor: Any, did_access: Optional[tuple[Any, Any]] = None) -> Any:
    """The SASL verification backend over ``did_access`` (:func:`make_did_access`, made here when not given)."""
    from freeq.auth.verify import ChallengeVerifier

    http, resolver = did_access or make_did_access(config, reactor)
    return ChallengeVerifier(resolver, http)


def make_profile_fetcher(did_access: tuple[Any, Any], clock: Any) -> Any:
    """The Bluesky profile reader (draft/metadata-2 defaults) over the verifier's HTTP client and DID cache."""
    from freeq.auth.profile import ProfileFetcher

    http, resolver = did_access
    return ProfileFetcher(resolver, http, clock)


def make_plain_verifier(config: Config, clock: Any, net_reactor: Any) -> Any:
    """The SASL PLAIN backend (``None`` when ``--sasl-plain off``): the same SSRF-guarded HTTP and DID
    resolution as :func:`make_verifier`, failure back-off on the server's ``clock``."""
    if not config.sasl_plain:
        return None
    from freeq.auth.did import DIDResolver
    from freeq.auth.http import SafeHTTPClient
    from freeq.auth.plain import PlainVerifier

    http = SafeHTTPClient(net_reactor, allow_private=config.allow_private_network, timeout=config.http_timeout)
    resolver = DIDResolver(http, net_reactor, plc_directory_url=config.plc_directory_url, ttl=config.did_cache_ttl)
    return PlainVerifier(resolver, http, clock, handle_resolver_url=config.handle_resolver_url)


def make_irc_server(config: Config, reactor: Any, store: Any = None, persistence: Any = None,
                    net_reactor: Any = None,
                    federation: Optional[Callable[[IRCServer], FederationControl]] = None,
                    ) -> tuple[IRCServer, ConnectionLimiter]:
    """Build the IRC server (plugins, store, signer, SASL verifier, federation) and the shared connection limiter.

    ``reactor`` is the server's clock; ``net_reactor`` (default: the same) does the HTTP of DID
    resolution, so tests can drive time with a ``Clock`` while still talking to loopback servers.
    ``federation`` (:func:`make_federation_factory`) builds the server's federation in its constructor.
    """
    from freeq.plugins import PluginError, load_plugins

    try:
        plugins = load_plugins(config.plugins)
    except PluginError as e:
        raise ConfigError(str(e)) from None
    if persistence is not None and store is None:
        store = persistence.store
    from freeq.metrics import Metrics
    from freeq.web.tokens import BearerTokenStore, WebTokenStore

    did_access = make_did_access(config, net_reactor or reactor)
    server = IRCServer(config, reactor, store=store, signer=persistence.signer if persistence is not None else None,
                       verifier=make_verifier(config, net_reactor or reactor, did_access), metrics=Metrics(),
                       web_tokens=WebTokenStore(reactor), bearer_tokens=BearerTokenStore(reactor),
                       profiles=make_profile_fetcher(did_access, reactor), federation=federation)
    server.plain_verifier = make_plain_verifier(config, reactor, net_reactor or reactor)
    if store is not None:
        server.load_channels(store.load_channels())
        server.nick_owners.update(store.load_nick_owners())  # through the look-alike index
        server.oper_dids |= store.load_oper_dids()
        server.load_bans(store.load_bans(reactor.seconds()))  # K-lines and D-lines, expired ones pruned (issue #13)
    server.hooks.extend(p.make_hook(server) for p in plugins)  # a hook is made for the server it serves
    rate = ConnectionRate(config.connection_rate_burst, config.connection_rate) if config.connection_rate else None
    return server, ConnectionLimiter(config.max_connections_per_ip, config.max_clients, rate)


def make_federation_factory(config: Config, reactor: Any) -> "FederationFactory":
    """The factory of the S2S bridge and federation (key: ``iroh-key.secret`` in the data directory), which
    the server's constructor calls; its ``service()`` then joins the service tree."""
    from freeq.s2s.federation import make_federation
    from freeq.store.keys import KeyFileError, load_iroh_key

    try:
        key = load_iroh_key(config.data_dir)
    except KeyFileError as e:
        raise ConfigError(str(e)) from None
    return make_federation(reactor, key)


@implementer(IStreamServerEndpoint)
class _PortReporting:
    """A server endpoint that tells ``on_port`` the port it bound (the TLS port STS advertises, which a
    listener on port 0 only knows once bound)."""

    def __init__(self, endpoint: Any, on_port: Callable[[int], None]) -> None:
        self.endpoint = endpoint
        self.on_port = on_port

    def listen(self, factory: Any) -> Any:
        """Listen on the wrapped endpoint; report the bound port, then pass the listening port on."""
        def bound(port: Any) -> Any:
            self.on_port(port.getHost().port)
            return port

        return self.endpoint.listen(factory).addCallback(bound)


class ConfigReloader:
    """Live reload (issue #13 item 1), in one place: re-read the configuration (the config file with the original
    command line and environment), validate it, keep what needs a restart, and apply the rest without dropping
    clients: the server (:meth:`freeq.core.rehash.RehashCommands.apply_config`), the connection limiter, the
    listeners' factories and certificates, the web listeners' limits and proxies, and the federation.

    ``REHASH`` (through ``IRCServer.reloader``) and SIGHUP (:class:`_ReloadSignalService`) call :meth:`reload`.
    """

    def __init__(self, top: service.MultiService, server: IRCServer, limiter: ConnectionLimiter,
                 source: Callable[[], Config]) -> None:
        self.top = top
        self.server = server
        self.limiter = limiter
        self.source = source

    def _tls_holders(self) -> list[tuple[Any, str, str]]:
        """(reloadable TLS context factory, its certificate field, its key field) of each TLS listener."""
        out = []
        for svc in self.top:
            tls = getattr(svc, "tls", None)
            if tls is not None:
                prefix = "web_" if tls.cert_flag == "--web-tls-cert" else ""
                out.append((tls, prefix + "tls_cert", prefix + "tls_key"))
        return out

    def reload(self, origin: str) -> "ReloadOutcome":
        """Reload now (``origin`` says why, for the log). A bad configuration is refused with one line (logged
        at error) and the running one is kept."""
        from freeq.core.rehash import ReloadOutcome, keep_restart_fields
        from freeq.fdlimit import needed_fds

        old = self.server.config
        try:
            new = self.source()
            # A TLS listener that was off (or on) stays so until a restart; new paths for one that is on are used.
            toggled = tuple(f for pair in (("tls_cert", "tls_key"), ("web_tls_cert", "web_tls_key"))
                            if bool(getattr(old, pair[0])) != bool(getattr(new, pair[0])) for f in pair)
            new, kept = keep_restart_fields(old, new, toggled)
            if needed_fds(new) > needed_fds(old):
                _check_fd_limit(new)
            certificates = [(tls, tls.load(getattr(new, cert), getattr(new, key)), getattr(new, cert),
                             getattr(new, key)) for tls, cert, key in self._tls_holders()]
        except ConfigError as e:
            log.error("configuration reload ({origin}) refused, the running configuration is kept: {error}",
                      origin=origin, error=str(e))
            return ReloadOutcome(False, str(e))
        except Exception:
            log.failure("configuration reload ({origin}) failed; the running configuration is kept", origin=origin)
            return ReloadOutcome(False, "internal error (see the server log)")
        for tls, options, cert, key in certificates:
            tls.use(options, cert, key)
        self._apply(old, new)
        log.info("configuration reloaded ({origin}) from {path}", origin=origin, path=new.config_path or "flags")
        if kept:
            log.warn("configuration reload ({origin}): {fields} changed but need a restart; the running values are "
                     "kept", origin=origin, fields=", ".join(kept))
        return ReloadOutcome(True, kept=kept)

    def _apply(self, old: Config, new: Config) -> None:
        self.server.apply_config(new)
        limiter = self.limiter
        limiter.per_ip, limiter.total = new.max_connections_per_ip, new.max_clients
        if (old.connection_rate, old.connection_rate_burst) != (new.connection_rate, new.connection_rate_burst):
            limiter.rate = ConnectionRate(new.connection_rate_burst, new.connection_rate) if new.connection_rate \
                else None
        from freeq.web.proxy import ProxyPolicy
        from freeq.web.site import WebSite

        for svc in self.top:
            factory = getattr(svc, "factory", None)
            if isinstance(factory, IRCFactory):
                factory.config = new  # flood and send-queue limits of new and open connections
            elif isinstance(factory, WebSite):
                if hasattr(svc, "tls"):  # the web listener (the --metrics-addr one has bounds of its own)
                    factory.connections.per_ip = new.web_max_connections_per_ip
                    factory.connections.total = new.web_max_connections
                factory.idle_timeout, factory.request_timeout = new.web_idle_timeout, new.web_request_timeout
                factory.proxies.networks = ProxyPolicy(new.trusted_proxies).networks
                irc = factory.resource.children.get(b"irc") if hasattr(factory.resource, "children") else None
                if irc is not None and hasattr(irc, "factory"):
                    irc.factory.config = new  # WebSocket clients' flood and send-queue limits
        if (old.flood_burst, old.flood_rate) != (new.flood_burst, new.flood_rate):
            for user in list(self.server.connections):  # open connections too, not only the next ones
                retune = getattr(user.conn, "retune_flood", None)
                if retune is not None:
                    retune(new.flood_burst, new.flood_rate)
        reconfigure = getattr(self.server.federation, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(new)


class _ReloadSignalService(service.Service):
    """SIGHUP reloads the configuration: the handler only schedules :meth:`ConfigReloader.reload` in the reactor
    thread (``callFromThread``), never runs it inside the signal handler."""

    def __init__(self, reloader: ConfigReloader, reactor: Any) -> None:
        self.reloader = reloader
        self.reactor = reactor
        self.previous: Any = None
        self.installed = False

    def on_signal(self, signum: int, frame: Any) -> None:
        """The SIGHUP handler."""
        self.reactor.callFromThread(self.reloader.reload, "SIGHUP")

    def startService(self) -> None:
        super().startService()
        import signal

        if hasattr(signal, "SIGHUP"):
            try:
                self.previous = signal.signal(signal.SIGHUP, self.on_signal)
                self.installed = True
            except ValueError:  # not the main thread (an embedding): REHASH still reloads
                log.warn("SIGHUP reload not installed: not running in the main thread")

    def stopService(self) -> Any:
        if self.installed:
            import signal

            signal.signal(signal.SIGHUP, self.previous if self.previous is not None else signal.SIG_DFL)
            self.installed = False
        return super().stopService()


def build_service(config: Config, reactor: Any,
                  reload_source: Optional[Callable[[], Config]] = None) -> service.MultiService:
    """Wire the whole server from a validated config into one service tree.

    ``reload_source`` builds the configuration anew on REHASH and SIGHUP (:func:`makeService` passes one that
    re-reads the config file with the original flags and environment); without it a reload re-reads
    ``config.config_path`` alone, if set, else keeps ``config`` (certificates and limits are re-applied).
    """
    from freeq.store.service import StoreService, open_persistence

    prepare_data_dir(config.data_dir)
    top = _TopService(config)
    persistence = open_persistence(config, reactor, reactor.seconds())
    top.persistence = persistence  # type: ignore[attr-defined]
    StoreService(persistence.store, persistence.lock_fd).setServiceParent(top)  # added first, so it stops last (after a final flush)
    federation = make_federation_factory(config, reactor) if config.iroh else None
    server, limiter = make_irc_server(config, reactor, persistence=persistence, federation=federation)
    top.irc_server = server  # type: ignore[attr-defined]
    if config.listen is not None:
        factory = IRCFactory(server, limiter, reactor, secure=False, reactor=reactor)
        svc = StreamServerEndpointService(config.listen.endpoint(reactor), factory)
        svc._raiseSynchronously = True
        svc.setServiceParent(top)
    if config.tls_listen is not None and config.tls_cert and config.tls_key:
        from freeq.net.tls import ReloadableTLS

        tls = ReloadableTLS(config.tls_cert, config.tls_key)  # re-read by ConfigReloader
        factory = IRCFactory(server, limiter, reactor, secure=True, reactor=reactor)
        if config.tls_listen.port:
            server.tls_port = config.tls_listen.port  # known before the bind; port 0 is learnt when bound
        endpoint = _PortReporting(config.tls_listen.endpoint(reactor, tls), server.learn_tls_port)
        svc = StreamServerEndpointService(endpoint, factory)
        svc._raiseSynchronously = True
        svc.tls = tls  # type: ignore[attr-defined]
        svc.setServiceParent(top)
    sweeper = TimerService(config.sweep_interval, server.sweep)
    sweeper.clock = reactor
    sweeper.setServiceParent(top)
    if config.web_listen is not None:
        from freeq.web.site import build_web_service

        build_web_service(config, reactor, server, limiter, persistence).setServiceParent(top)
    if config.metrics_listen is not None:
        from freeq.web.site import build_metrics_service

        build_metrics_service(config, reactor, server).setServiceParent(top)
    if federation is not None:
        federation.service().setServiceParent(top)
    reloader = ConfigReloader(top, server, limiter, reload_source or _file_reload_source(config))
    server.reloader = reloader.reload
    top.reloader = reloader  # type: ignore[attr-defined]
    _ReloadSignalService(reloader, reactor).setServiceParent(top)
    _ShutdownService(server).setServiceParent(top)
    log.info("freeq {name} configured: plain {plain}, TLS {tls}", name=config.server_name,
             plain=str(config.listen) if config.listen else "off",
             tls=str(config.tls_listen) if config.tls_listen and config.tls_cert else "off")
    from freeq.audit import log_audit

    log_audit(config, known_flags=[row[0] for row in OPTIONS])  # the freeq-admin audit findings, one line each
    return top


def _file_reload_source(config: Config) -> Callable[[], Config]:
    """What a reload reads when no command line is known: ``config``'s file alone, or ``config`` itself."""
    path = config.config_path
    if path is None:
        return lambda: config
    return lambda: config_from_options({"config": path}, {})


def _check_fd_limit(config: Config) -> None:
    """Make sure the open-file limit covers the connection limits (raise the soft limit, or refuse)."""
    from freeq.fdlimit import ensure_fd_limit, needed_fds

    raised = ensure_fd_limit(config)
    if raised is not None:
        log.info("raised the open-file soft limit from {old} to {new} (the connection limits need {needed})",
                 old=raised[0], new=raised[1], needed=needed_fds(config))


def makeService(options: Options) -> service.MultiService:
    """The twistd entry point: validate, then wire. Bad config exits with one line."""
    from twisted.internet import reactor

    try:
        environ = dict(os.environ)  # a reload reads the environment the server started with
        config = config_from_options(options, environ)
        _check_fd_limit(config)
        top = build_service(config, reactor, lambda: config_from_options(options, environ))
    except ConfigError as e:
        raise SystemExit(f"freeq: {e}")
    from freeq.logs import twistd_observer

    # Both formats write through our observer (where twistd would): JSON lines, or twistd's own text lines with
    # the timestamp formatted once a second (the connection lines' cost; bench/README.md "Operations").
    top.log_observer = twistd_observer(getattr(options, "parent", None), config.log_format)  # type: ignore[attr-defined]
    return top
