"""REHASH and live reload of the configuration (issue #13 item 1): the server's part.

Mixed into :class:`freeq.core.server.IRCServer`. The composition root (:func:`freeq.tap.build_service`) sets
:attr:`RehashCommands.reloader`, the one function that re-reads the config file with the original command
line and environment, validates it and applies it everywhere (listeners' certificates, connection limits,
federation, and this server through :meth:`RehashCommands.apply_config`). ``REHASH`` and SIGHUP both call it.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from typing import TYPE_CHECKING, Callable, Optional

from twisted.logger import Logger

from freeq.config import Config
from freeq.irc.parser import Message, build
from freeq.state.user import User

if TYPE_CHECKING:
    from freeq.core.shared import ServerCore as _Server
else:
    _Server = object

log = Logger()

#: Config fields that cannot change while the server runs (sockets, storage, identity, the objects built
#: once at start-up): a reload keeps their running values and names the changed ones in a warn line.
RESTART_FIELDS = (
    "listen", "tls_listen", "web_listen", "metrics_listen", "data_dir", "db_path", "server_name", "iroh",
    "iroh_port", "iroh_host", "iroh_relay_mode", "plugins", "accept_data_loss", "max_messages_per_channel",
    "message_retention_days", "sasl_plain", "allow_private_network", "plc_directory_url", "handle_resolver_url",
    "http_timeout", "did_cache_ttl", "web_static_dir", "web_allowed_origins", "broker_shared_secret",
    "max_line_bytes", "max_tag_bytes", "log_format",
)


@dataclasses.dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: ``ok`` (applied) or refused with ``error`` (one line); ``kept`` names the changed
    fields that need a restart (their running values were kept)."""

    ok: bool
    error: str = ""
    kept: tuple[str, ...] = ()


def keep_restart_fields(old: Config, new: Config, extra: tuple[str, ...] = ()) -> tuple[Config, tuple[str, ...]]:
    """``new`` with the running value of every field of :data:`RESTART_FIELDS` (and ``extra``) that it changes,
    and the flag names of those fields."""
    changed = {}
    for name in RESTART_FIELDS + extra:
        if hasattr(old, name) and getattr(old, name) != getattr(new, name):
            changed[name] = getattr(old, name)
    if not changed:
        return new, ()
    return dataclasses.replace(new, **changed), tuple(name.replace("_", "-") for name in changed)


class RehashCommands(_Server):
    """``REHASH`` (opers with the ``rehash`` privilege) and :meth:`apply_config`, the server's side of a reload."""

    #: Set by the composition root: reload the configuration (the same function SIGHUP calls). ``None`` (a
    #: server built without the service tree): REHASH is answered that reloading is not available.
    reloader: Optional[Callable[[str], ReloadOutcome]] = None

    if TYPE_CHECKING:  # what this group calls in the other groups
        oper_may: Callable[[User, str], bool]  # operator
        oper_log: Callable[..., None]  # operator
        enforce_config_bans: Callable[[tuple[tuple[str, str], ...]], int]  # bans
        _make_isupport: Callable[[], list[list[str]]]  # registration
        oper_dids: set[str]  # server
        config: Config  # server (replaced here)
        whowas: deque[tuple[str, str, str, str, float]]  # server (replaced here when its size changes)

    def irc_REHASH(self, user: User, msg: Message) -> None:
        """``REHASH``: 382, then reload; a refused file is one FAIL line and the running config stays."""
        if not self.oper_may(user, "rehash"):
            self.num(user, "481", "Permission Denied- You're not an IRC operator")
            return
        where = self.config.config_path or "*"
        user.write(build(self.name, "382", user.nick, where, "Rehashing"))
        self.oper_log(user, "rehash", config=where)
        reloader = self.reloader
        if reloader is None:
            self.fail(user, "REHASH", "NOT_AVAILABLE", "This server cannot reload its configuration")
            return
        outcome = reloader(f"REHASH by {user.nick}")
        if not outcome.ok:
            self.fail(user, "REHASH", "CONFIG_ERROR", f"Configuration refused, the running one is kept: {outcome.error}")
        elif outcome.kept:
            self.notice(user, f"*** Configuration reloaded; these need a restart and keep their running values: "
                              f"{', '.join(outcome.kept)}")
        else:
            self.notice(user, "*** Configuration reloaded")

    def apply_config(self, config: Config) -> None:
        """Use the validated ``config`` from now on: the limits, MOTD, ISUPPORT and back-offs that were copied
        from the old one at start-up follow it. Connected clients stay."""
        old = self.config
        self.config = config
        self.motd = list(config.motd)
        # DIDs made opers by the old flags go; those granted at run time (the store's) stay.
        self.oper_dids = (self.oper_dids - set(old.oper_dids)) | set(config.oper_dids)
        throttle = self.oper_throttle
        throttle.base, throttle.cap = config.oper_backoff_base, config.oper_backoff_max
        throttle.forget_after = max(throttle.forget_after, config.oper_backoff_max)
        quota = self.channel_quota
        quota.burst, quota.rate = float(config.channel_create_burst), 1.0 / config.channel_create_interval
        if self.whowas.maxlen != config.whowas_size:
            self.whowas = deque(self.whowas, maxlen=config.whowas_size)
        self._isupport = self._make_isupport()
        closed = self.enforce_config_bans(old.config_bans)  # a ban added to the file applies at once, as KLINE does
        if closed:
            log.info("configuration reload: {closed} connection(s) closed by new config bans", closed=closed)
