"""The configuration audit (issue #13 item 2): ``freeq-admin audit`` and the summary logged at start-up.

:func:`audit` checks one validated :class:`~freeq.config.Config` (and the command line it came from)
against the hardening guide's configuration checklist and more: TLS on every non-loopback listener,
the federation allowlist, operator authentication and secrets kept off the command line, the modes of
the key files and the data directory, ``/metrics`` and the broker, trusted proxies, the open-file
limit, where the database and its WAL live, and the switches that weaken a guard. Each check gives
one :class:`Finding`: ``ok``, ``warn`` (worth a look; the server runs) or ``fail`` (do not go live
like this; ``freeq-admin audit`` exits 1). Nothing here changes anything, and no finding ever holds
a secret's value.

The Config fields other parts of issue #13 add (the ``/metrics`` bearer token or address) are read
with ``getattr`` and a default, so the audit works with or without them.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import stat
import sys
import textwrap
from typing import Any, Iterable, Optional, Sequence

from twisted.logger import Logger

from freeq.config import Config, Listen
from freeq.store import keys

log = Logger()

OK = "ok"
WARN = "warn"
FAIL = "fail"

#: A flag whose name ends so holds a secret (as in the config file's ``<flag>-file`` rule): on the command
#: line it is visible to every local user in ``ps`` and ``/proc/PID/cmdline``.
SECRET_SUFFIXES = ("-password", "-secret", "-token")
#: Secret flags only worth a warning on the command line: the server password is shared with every client.
SHARED_SECRET_FLAGS = ("server-password",)
#: The environment variables the server reads secrets from (freeq.tap.config_from_options).
SECRET_ENV = {"oper-password": "OPER_PASSWORD", "server-password": "SERVER_PASSWORD",
              "broker-shared-secret": "BROKER_SHARED_SECRET", "metrics-token": "METRICS_TOKEN"}
#: A broker secret shorter than this is guessable enough to warn about.
MIN_BROKER_SECRET = 32
#: Filesystems on which SQLite's WAL (shared memory, POSIX locks) is unsafe.
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "afs", "ceph", "glusterfs")
#: TLS certificates that expire sooner than this many days are warned about.
CERT_WARN_DAYS = 14
#: Longest /proc/self/mounts read (bytes): a host with many mounts is still read in bounded time.
MAX_MOUNTS_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Finding:
    """One row of the audit: the check's name, ok/warn/fail, and what is the case or what to change."""

    check: str
    status: str
    detail: str


def is_loopback(listen: Listen) -> bool:
    """True when the listener is only reachable from this host."""
    try:
        return ipaddress.ip_address(listen.host).is_loopback
    except ValueError:
        return listen.host == "localhost"


def _mode(path: str) -> Optional[int]:
    """The permission bits of ``path`` (following symlinks), or None when it does not exist."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


def is_secret_flag(flag: str) -> bool:
    """Whether the valued flag ``flag`` holds a secret (its name ends in one of :data:`SECRET_SUFFIXES`)."""
    return flag.endswith(SECRET_SUFFIXES)


def secret_flags_on_argv(argv: Sequence[str], known_flags: Iterable[str]) -> list[str]:
    """The secret flags (:func:`is_secret_flag`) given on ``argv``.

    ``known_flags`` are every long option the server takes: like getopt, an unambiguous prefix
    (``--oper-pass``) counts as the flag it abbreviates.
    """
    known = sorted(set(known_flags))
    found: list[str] = []
    for token in argv:
        if not token.startswith("--") or len(token) < 3:
            continue
        name = token[2:].split("=", 1)[0]
        matches = [name] if name in known or is_secret_flag(name) else [f for f in known if f.startswith(name)]
        if len(matches) == 1 and is_secret_flag(matches[0]) and matches[0] not in found:
            found.append(matches[0])
    return found


class Auditor:
    """Runs every check over one config; ``findings`` holds the rows in order."""

    def __init__(self, config: Config, argv: Sequence[str], known_flags: Iterable[str],
                 resource_module: Any = None, now: Optional[float] = None, server: bool = False) -> None:
        self.config = config
        self.argv = list(argv)
        self.known_flags = list(known_flags)
        self.resource_module = resource_module
        self.now = now
        self.server = server
        self.stat = os.stat  # where the database and its WAL live (a test can stand in another device)
        self.findings: list[Finding] = []

    def add(self, check: str, status: str, detail: str) -> None:
        """Record one finding."""
        self.findings.append(Finding(check, status, detail))

    def run(self) -> list[Finding]:
        """Every check, in the order of the table."""
        for check in (self.irc_listeners, self.tls_files, self.web_listener, self.trusted_proxies, self.metrics,
                      self.broker, self.federation, self.oper_auth, self.secrets_on_argv, self.config_file,
                      self.data_dir, self.key_files, self.database, self.fd_limit, self.guards, self.webirc,
                      self.process_user):
            try:
                check()
            except Exception as e:  # one broken check must not hide the others
                self.add(check.__name__.replace("_", "-"), WARN, f"could not be checked ({type(e).__name__}: {e})")
        return self.findings

    # -- listeners --------------------------------------------------------------------------------
    def tls_on(self) -> bool:
        """The TLS IRC listener is active (an address and a certificate/key pair)."""
        c = self.config
        return c.tls_listen is not None and bool(c.tls_cert and c.tls_key)

    def irc_listeners(self) -> None:
        """TLS on every non-loopback IRC listener; a public plain one is tolerated only beside TLS with STS."""
        c = self.config
        tls = self.tls_on()
        if tls and c.tls_listen is not None:
            where = "public" if not is_loopback(c.tls_listen) else "loopback"
            self.add("irc-tls", OK, f"TLS IRC on {c.tls_listen} ({where})")
        if c.listen is None:
            self.add("irc-plain", OK, "plain IRC listener off")
        elif is_loopback(c.listen):
            self.add("irc-plain", OK, f"plain IRC only on loopback ({c.listen})")
        elif tls and c.sts_duration > 0:
            self.add("irc-plain", WARN, f"plain IRC on {c.listen}: STS moves capable clients to TLS, the others "
                     "talk in clear; set --listen-addr none (or 127.0.0.1) unless you must serve them")
        elif tls:
            self.add("irc-plain", FAIL, f"plain IRC on {c.listen} and --sts-duration 0: clients are never told to "
                     "use TLS; set --listen-addr none, or keep STS on")
        else:
            self.add("irc-plain", FAIL, f"plain IRC on {c.listen} with no TLS listener: passwords (PASS, OPER, "
                     "SASL) and messages cross the network in clear; give --tls-cert/--tls-key and set "
                     "--listen-addr none (or 127.0.0.1)")

    def tls_files(self) -> None:
        """The certificate and key files exist, the keys are private, the certificates not (nearly) expired."""
        c = self.config
        pairs = []
        if self.tls_on():
            pairs.append(("tls", c.tls_cert, c.tls_key))
        if c.web_listen is not None and c.web_tls_cert and c.web_tls_key:
            pairs.append(("web-tls", c.web_tls_cert, c.web_tls_key))
        for name, cert, key in pairs:
            assert cert is not None and key is not None
            problems: list[tuple[str, str]] = []
            for path in (cert, key):
                if not os.access(path, os.R_OK):
                    problems.append((FAIL, f"{path} is missing or unreadable by this user"))
            mode = _mode(key)
            if mode is not None and mode & 0o007:
                problems.append((FAIL, f"{key} is readable by every user (mode {mode:04o}); chmod 600"))
            elif mode is not None and mode & 0o070:
                problems.append((WARN, f"{key} is readable by its group (mode {mode:04o}); chmod 600 unless the "
                                       "group is only the server's"))
            expiry = self._cert_expiry(cert)
            if expiry is not None:
                days, when = expiry
                if days < 0:
                    problems.append((FAIL, f"{cert} expired on {when}; renew it (docs/deployment.md)"))
                elif days < CERT_WARN_DAYS:
                    problems.append((WARN, f"{cert} expires on {when} ({days:.0f} days); check the renewal"))
            if not problems:
                self.add(f"{name}-files", OK, f"{cert} readable, {key} private")
            for status, detail in problems:
                self.add(f"{name}-files", status, detail)

    def _cert_expiry(self, path: str) -> Optional[tuple[float, str]]:
        """(days left, date) of the first certificate in ``path``; None if it cannot be read."""
        import time

        from cryptography import x509

        try:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
            cert = x509.load_pem_x509_certificate(data)
        except (OSError, ValueError):
            return None
        end = cert.not_valid_after_utc
        now = self.now if self.now is not None else time.time()
        return (end.timestamp() - now) / 86400, end.strftime("%Y-%m-%d")

    def web_listener(self) -> None:
        """A non-loopback web listener has TLS, or is reached only through a trusted proxy."""
        c = self.config
        if c.web_listen is None:
            self.add("web-tls", OK, "web listener off")
        elif c.web_tls_cert and c.web_tls_key:
            self.add("web-tls", OK, f"web listener on {c.web_listen} with TLS")
        elif is_loopback(c.web_listen):
            self.add("web-tls", OK, f"web listener on loopback ({c.web_listen}); terminate TLS in the reverse proxy")
        elif c.trusted_proxies:
            self.add("web-tls", WARN, f"plain HTTP on {c.web_listen} for a proxy at {', '.join(c.trusted_proxies)}: "
                     "firewall the port so only the proxy reaches it, or bind it to loopback")
        else:
            self.add("web-tls", FAIL, f"plain HTTP/WebSocket on {c.web_listen}: web logins and messages in clear; "
                     "give --web-tls-cert/--web-tls-key, or bind --web-addr to 127.0.0.1 behind a TLS reverse proxy")

    def trusted_proxies(self) -> None:
        """A loopback web listener is normally behind a proxy, which must be trusted; nobody trusts the world."""
        c = self.config
        for net in c.trusted_proxies:
            if ipaddress.ip_network(net, strict=False).prefixlen == 0:
                self.add("trusted-proxies", FAIL, f"--trusted-proxies {net} trusts every address: anyone can forge "
                         "their IP (bans, per-IP limits, logs); list only your proxies' addresses")
                return
        if c.web_listen is None:
            self.add("trusted-proxies", OK, "web listener off")
        elif c.trusted_proxies:
            self.add("trusted-proxies", OK, f"forwarded client addresses believed from {', '.join(c.trusted_proxies)}")
        elif is_loopback(c.web_listen):
            self.add("trusted-proxies", WARN, "web listener on loopback without --trusted-proxies: behind a reverse "
                     "proxy every web client counts as 127.0.0.1 (one per-IP limit for all, no real IPs in logs "
                     "or bans); set --trusted-proxies 127.0.0.1,::1")
        else:
            self.add("trusted-proxies", OK, "no proxy trusted (clients connect directly)")

    def metrics(self) -> None:
        """``/metrics`` is not served to the world without a token, a separate address or a proxy rule."""
        c = self.config
        token = getattr(c, "metrics_token", None)
        separate = getattr(c, "metrics_listen", None)
        if c.web_listen is None:
            self.add("metrics", OK, "web listener off (no /metrics)")
        elif token or separate:
            self.add("metrics", OK, "/metrics needs a bearer token" if token else f"/metrics on {separate} only")
        elif not is_loopback(c.web_listen):
            self.add("metrics", WARN, f"/metrics is open to anyone on {c.web_listen} (user, channel and connection "
                     "counts); set a metrics token or a separate metrics address")
        elif c.trusted_proxies:
            self.add("metrics", WARN, "/metrics is reachable through the reverse proxy unless a proxy rule blocks "
                     "it (docs/deployment.md); or set a metrics token")
        else:
            self.add("metrics", OK, "/metrics on loopback only")

    def broker(self) -> None:
        """The auth broker is only on with a shared secret; a short one is guessable."""
        secret = self.config.broker_shared_secret
        if not secret:
            self.add("broker", OK, "auth broker off (/auth/broker/* disabled without a shared secret)")
        elif len(secret) < MIN_BROKER_SECRET:
            self.add("broker", WARN, f"broker shared secret is shorter than {MIN_BROKER_SECRET} characters; use "
                     "e.g. `openssl rand -hex 32`")
        else:
            self.add("broker", OK, "auth broker on with a shared secret")

    def federation(self) -> None:
        """With iroh on, only allowlisted peers may link; open federation fails."""
        c = self.config
        if not c.iroh:
            self.add("federation", OK, "federation off")
        elif c.s2s_open_federation:
            self.add("federation", FAIL, "--s2s-open-federation: any iroh peer may link and introduce users, "
                     "channels and operator actions; list your peers in --s2s-allowed-peers instead")
        elif c.s2s_allowed_peers:
            self.add("federation", OK, f"links only with {len(c.s2s_allowed_peers)} allowed peer(s)")
        else:
            self.add("federation", OK, "iroh on, no peer allowed (federation closed)")

    # -- operators and secrets ----------------------------------------------------------------------
    def oper_auth(self) -> None:
        """Some operator is configured (accounts, a password or DIDs), so abuse can be acted on."""
        c = self.config
        kinds = []
        if c.opers:
            kinds.append(f"{len(c.opers)} oper account(s)")
        if c.oper_password:
            kinds.append("the shared oper password")
        if c.oper_dids:
            kinds.append(f"{len(c.oper_dids)} oper DID(s)")
        if kinds:
            self.add("oper-auth", OK, "operators: " + ", ".join(kinds))
        else:
            self.add("oper-auth", WARN, "no operator configured: nobody can KILL, ban or REHASH; add [[oper]] "
                     "blocks (freeq-admin hash-password) or --oper-dids")

    def secrets_on_argv(self) -> None:
        """No secret on the command line: ``ps`` shows it to every local user."""
        found = secret_flags_on_argv(self.argv, self.known_flags)
        for flag in found:
            status = WARN if flag in SHARED_SECRET_FLAGS else FAIL
            env = f" or the {SECRET_ENV[flag]} environment variable" if flag in SECRET_ENV else ""
            self.add("secrets-argv", status, f"--{flag} is on the command line, visible in ps to every local user; "
                     f"put it in the config file (the `{flag}-file` key names a file that holds it){env}")
        if not found:
            self.add("secrets-argv", OK, "no secret on the command line")

    def config_file(self) -> None:
        """A config file holding secrets is not readable by other users."""
        path = getattr(self.config, "config_path", None)
        if not path:
            return
        mode = _mode(path)
        if mode is None or not mode & 0o077:
            self.add("config-file", OK, f"{path} is readable by its owner only" if mode is not None else
                     f"{path} (not found by this user)")
            return
        clear, hashes = self._inline_secrets(path)
        readers = "every user" if mode & 0o007 else "its group"
        if clear:
            self.add("config-file", FAIL if mode & 0o007 else WARN, f"{path} holds {', '.join(clear)} and is readable "
                     f"by {readers} (mode {mode:04o}); chmod 600, or move the secrets to `*-file` keys")
        elif hashes and mode & 0o007:
            self.add("config-file", WARN, f"{path} holds oper password hashes and is readable by every user (mode "
                     f"{mode:04o}): they can be attacked offline; chmod 640 (group: the server's) or use password-file")
        else:
            self.add("config-file", OK, f"{path} is readable by {readers} (mode {mode:04o}) but holds no secret inline"
                     + (" (oper password hashes only)" if hashes else ""))

    @staticmethod
    def _inline_secrets(path: str) -> tuple[list[str], bool]:
        """The secret keys given inline (not as ``*-file``) in the TOML config file at ``path``, and whether
        it holds ``[[oper]]`` password hashes inline."""
        import tomllib

        try:
            with open(path, "rb") as f:
                data = tomllib.loads(f.read(1 << 20).decode("utf-8", "replace"))
        except (OSError, ValueError):
            return [], False
        clear = sorted(k for k, v in data.items() if is_secret_flag(k) and v and not isinstance(v, (dict, list)))
        gateways = data.get("webirc")
        if isinstance(gateways, list) and any(isinstance(g, dict) and g.get("password") for g in gateways):
            clear.append("WebIRC passwords")
        opers = data.get("oper")
        hashes = isinstance(opers, list) and any(isinstance(o, dict) and o.get("password") for o in opers)
        return clear, hashes

    # -- files on disk ------------------------------------------------------------------------------
    def data_dir(self) -> None:
        """The data directory is 0700 (it is created so; an existing one may have been loosened)."""
        path = self.config.data_dir
        mode = _mode(path)
        if mode is None:
            self.add("data-dir", OK, f"{path} does not exist yet; the server creates it 0700")
        elif mode & 0o077:
            self.add("data-dir", FAIL, f"{path} has mode {mode:04o}: other users can list or reach the database "
                     f"and keys; chmod 700 {path}")
        else:
            self.add("data-dir", OK, f"{path} is 0700")

    def key_files(self) -> None:
        """Every key file (and the high-water mark) is 0600."""
        d = self.config.data_dir
        if os.path.isdir(d) and not os.access(d, os.R_OK | os.X_OK):
            self.add("key-files", WARN, f"cannot look inside {d} as this user; run the audit as the server's user "
                     "(sudo -u freeq freeq-admin audit ...) or root")
            return
        names = (keys.DB_ENCRYPTION_KEY, keys.DB_ENCRYPTION_KEY + ".new", keys.MSG_SIGNING_KEY,
                 keys.VERIFIER_SIGNING_KEY, keys.IROH_KEY)
        loose = []
        present = 0
        for name in names:
            mode = _mode(os.path.join(d, name))
            if mode is None:
                continue
            present += 1
            if mode & 0o077:
                loose.append(f"{name} ({mode:04o})")
        if loose:
            self.add("key-files", FAIL, f"readable by others: {', '.join(loose)}; chmod 600 {d}/*.secret (the server "
                     "also tightens them at start, but they may already have been copied)")
        elif present:
            self.add("key-files", OK, f"{present} key file(s), all 0600")
        else:
            self.add("key-files", OK, "no key files yet (generated 0600 at first start); back them up after")

    def database(self) -> None:
        """Persistence is on, the database is private, on a local filesystem, and on the same one as its WAL."""
        c = self.config
        path = c.db_path or os.path.join(c.data_dir, "freeq.db")
        if path.lower() == "none" or path == ":memory:":
            self.add("database", WARN, f"--db-path {path}: nothing survives a restart (channels, history, bans)")
            return
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory) and _mode(c.data_dir) is not None:
            self.add("database", FAIL, f"directory {directory} of the database does not exist")
            return
        fstype = filesystem_type(directory) if os.path.isdir(directory) else None
        if fstype in NETWORK_FILESYSTEMS:
            self.add("database", FAIL, f"{path} is on a {fstype} filesystem: SQLite's WAL needs local locks and "
                     "shared memory; move it to a local disk")
            return
        if not os.path.exists(path):
            self.add("database", OK, f"{path} does not exist yet (created 0600 at first start)")
            return
        devices = {"database": self.stat(path).st_dev, "its directory": self.stat(directory).st_dev}
        wal = path + "-wal"
        if os.path.exists(wal):
            devices["its -wal file"] = self.stat(wal).st_dev
        if len(set(devices.values())) > 1:
            self.add("database", FAIL, f"{path} is not on the same filesystem as "
                     f"{' and '.join(k for k, v in devices.items() if v != devices['database'])}: a commit is only "
                     "atomic when the database and its -wal sidecar share one filesystem; do not symlink the "
                     "database, move it (with its -wal and -shm) into the data directory")
            return
        loose = [f"{os.path.basename(p)} ({m:04o})" for p, m in ((p, _mode(p)) for p in self._database_files(path))
                 if m is not None and m & 0o077]
        if loose:
            self.add("database", WARN, f"readable by others: {', '.join(loose)} (channel state and nick owners are in "
                     f"clear); chmod 600 them")
            return
        self.add("database", OK, f"{path}: 0600, local filesystem, same filesystem as its WAL")

    @staticmethod
    def _database_files(path: str) -> list[str]:
        """The database, its high-water mark and the schema-upgrade copies beside it (``<db>.vN.bak``)."""
        directory, base = os.path.split(os.path.abspath(path))
        try:
            names = sorted(os.listdir(directory))[:10000]
        except OSError:
            names = []
        extra = [os.path.join(directory, n) for n in names if n.startswith(base + ".v") and n.endswith(".bak")]
        return [path, path + ".hwm"] + extra

    # -- process ------------------------------------------------------------------------------------
    def fd_limit(self) -> None:
        """``RLIMIT_NOFILE`` covers ``--max-clients`` (and the web listener's connections)."""
        from freeq.fdlimit import FD_MARGIN, needed_fds

        res = self.resource_module
        if res is None:
            try:
                import resource as res
            except ImportError:
                self.add("fd-limit", OK, "no RLIMIT_NOFILE on this system")
                return
        soft, hard = res.getrlimit(res.RLIMIT_NOFILE)
        needed = needed_fds(self.config)
        why = f"--max-clients {self.config.max_clients}" + (
            f" + --web-max-connections {self.config.web_max_connections}" if self.config.web_listen else "") + \
            f" + {FD_MARGIN} spare = {needed}"
        infinity = res.RLIM_INFINITY
        where = "" if self.server else " (as seen by this shell; under systemd LimitNOFILE= decides)"
        if soft == infinity or soft >= needed:
            self.add("fd-limit", OK, f"open-file limit {soft if soft != infinity else 'unlimited'} covers {why}")
        elif hard == infinity or hard >= needed:
            self.add("fd-limit", OK, f"soft open-file limit {soft} < {why}; the server raises it to the hard limit "
                     f"{'unlimited' if hard == infinity else hard} at start{where}")
        else:
            self.add("fd-limit", FAIL, f"hard open-file limit {hard} < {why}: the server refuses to start{where}; "
                     f"set LimitNOFILE={needed} (or more) in the unit, or lower --max-clients")

    def guards(self) -> None:
        """Switches that turn a guard off: each gets a warning while on."""
        c = self.config
        if c.allow_private_network:
            self.add("ssrf-guard", WARN, "--allow-private-network: DID documents and PDS URLs may point the server "
                     "at loopback and private addresses (SSRF); only for tests and closed LANs")
        else:
            self.add("ssrf-guard", OK, "DID/PDS fetches refuse private addresses")
        if c.sasl_plain and c.sasl_plain_insecure:
            self.add("sasl-plain", WARN, "--sasl-plain-insecure: app passwords accepted over plaintext TCP from "
                     "the network; remove it and use TLS")
        else:
            self.add("sasl-plain", OK, "SASL PLAIN only over TLS or from loopback" if c.sasl_plain else
                     "SASL PLAIN off")
        public_plain = c.listen is not None and not is_loopback(c.listen)
        if c.server_password and public_plain:
            self.add("server-password", WARN, f"PASS is required but also accepted in clear on {c.listen}")
        elif c.server_password:
            self.add("server-password", OK, "clients must give the server password (PASS)")
        else:
            self.add("server-password", OK, "no server password (an open server; that is the usual choice)")

    def webirc(self) -> None:
        """WebIRC gateways: their passwords cross the network in clear when a gateway off this host may reach a
        public plain listener (a gateway should use TLS, or sit on this host)."""
        c = self.config
        gateways = getattr(c, "webirc", ())
        if not gateways:
            return
        remote = sorted(g.name for g in gateways if any(not net.is_loopback for net in g.hosts))
        public_plain = c.listen is not None and not is_loopback(c.listen)
        if remote and public_plain:
            self.add("webirc", WARN, f"gateway(s) {', '.join(remote)} connect from other hosts and plain IRC listens "
                     f"on {c.listen}: a gateway using it sends its WEBIRC password in clear; have it use the TLS "
                     "listener (or set --listen-addr none)")
        else:
            self.add("webirc", OK, f"{len(gateways)} WebIRC gateway(s); passwords only over TLS or loopback")

    def process_user(self) -> None:
        """The server does not run as root (only checked at start-up: the CLI may be run by an admin)."""
        if self.server and hasattr(os, "geteuid") and os.geteuid() == 0:
            self.add("process-user", WARN, "the server runs as root; run it as an unprivileged user (docs/deployment.md)")


def filesystem_type(path: str, mounts_file: str = "/proc/self/mounts") -> Optional[str]:
    """The type of the filesystem holding ``path`` (from the longest matching mount point), or None."""
    try:
        with open(mounts_file, "rb") as f:
            data = f.read(MAX_MOUNTS_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    real = os.path.realpath(path)
    best: tuple[int, Optional[str]] = (-1, None)
    for line in data.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best[0]:
            best = (len(point), parts[2])
    return best[1]


def audit(config: Config, argv: Sequence[str] = (), known_flags: Iterable[str] = (),
          resource_module: Any = None, now: Optional[float] = None, server: bool = False) -> list[Finding]:
    """Audit ``config`` (given on the command line ``argv``, whose long options are ``known_flags``)."""
    return Auditor(config, argv, known_flags, resource_module, now, server).run()


def exit_status(findings: Sequence[Finding]) -> int:
    """1 when any finding failed, else 0."""
    return 1 if any(f.status == FAIL for f in findings) else 0


def counts(findings: Sequence[Finding]) -> dict[str, int]:
    """How many findings of each status."""
    return {s: sum(1 for f in findings if f.status == s) for s in (OK, WARN, FAIL)}


def format_table(findings: Sequence[Finding], width: int = 100) -> str:
    """The findings as a text table (check, status, what is the case / what to change) and a summary line."""
    name_w = max([len("check")] + [len(f.check) for f in findings])
    detail_w = max(30, width - name_w - 8)
    out = [f"{'check':<{name_w}}  {'status':<6}  what to change", f"{'-' * name_w}  ------  {'-' * 14}"]
    for f in findings:
        lines = textwrap.wrap(f.detail, detail_w) or [""]
        out.append(f"{f.check:<{name_w}}  {f.status.upper():<6}  {lines[0]}")
        out.extend(f"{'':<{name_w}}  {'':<6}  {rest}" for rest in lines[1:])
    n = counts(findings)
    out.append("")
    out.append(f"{n[OK]} ok, {n[WARN]} warn, {n[FAIL]} fail")
    return "\n".join(out) + "\n"


def log_audit(config: Config, argv: Optional[Sequence[str]] = None, known_flags: Iterable[str] = ()) -> None:
    """At start-up: log one line per warn/fail finding and one summary line. Never raises.

    ``argv`` defaults to this process's command line (``sys.argv``: what ``ps`` shows).
    """
    try:
        findings = audit(config, sys.argv[1:] if argv is None else argv, known_flags, server=True)
    except Exception:
        log.failure("Configuration audit failed")
        return
    for f in findings:
        if f.status == FAIL:
            log.error("Configuration audit: {check} FAIL: {detail}", check=f.check, detail=f.detail)
        elif f.status == WARN:
            log.warn("Configuration audit: {check} warn: {detail}", check=f.check, detail=f.detail)
    n = counts(findings)
    log.info("Configuration audit: {ok} ok, {warn} warn, {fail} fail (freeq-admin audit with the same flags "
             "prints the table)", ok=n[OK], warn=n[WARN], fail=n[FAIL])
