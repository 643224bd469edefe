"""Start-up check of the open-file limit (``RLIMIT_NOFILE``) against the connection limits (issue #10 item 4).

Every connection is a file descriptor. With the common soft limit of 1,024, ``--max-clients``
of 10,000 is a promise the process cannot keep: past 1,024 sockets ``accept`` fails with
``EMFILE`` for everyone. At start-up :func:`ensure_fd_limit` computes what the limits need
(``--max-clients`` + ``--web-max-connections`` when the web listener is on + :data:`FD_MARGIN`),
raises the soft limit to the hard limit when the soft one is lower, and refuses to start (a
:class:`~freeq.config.ConfigError`, printed as one ``freeq:`` line) when even the hard limit is
too low.
"""
from __future__ import annotations

from typing import Any, Optional

from freeq.config import Config, ConfigError

#: Descriptors for everything that is not a client: the database and its WAL, the listeners,
#: log files, the iroh endpoint's sockets, DID/PDS fetches, the pid and lock files.
FD_MARGIN = 64


def needed_fds(config: Config) -> int:
    """Descriptors the configured connection limits can use at once."""
    web = config.web_max_connections if config.web_listen is not None else 0
    return config.max_clients + web + FD_MARGIN


def plan_fd_limit(needed: int, soft: int, hard: int, infinity: int = -1) -> Optional[int]:
    """The soft limit to set (``None``: keep it); :class:`ConfigError` when the hard limit is too low.

    ``infinity`` is ``resource.RLIM_INFINITY``. Raising goes to the hard limit (or to ``needed``
    when the hard limit is unlimited, since Linux refuses an unlimited soft ``NOFILE``).
    """
    if soft == infinity or soft >= needed:
        return None
    if hard != infinity and hard < needed:
        raise ConfigError(
            f"open-file limit too low: the hard RLIMIT_NOFILE is {hard} but --max-clients, "
            f"--web-max-connections and {FD_MARGIN} spare need {needed}; lower --max-clients or "
            "--web-max-connections, or raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)")
    return needed if hard == infinity else hard


def ensure_fd_limit(config: Config, resource_module: Any = None) -> Optional[tuple[int, int]]:
    """Apply :func:`plan_fd_limit` to this process; ``(old, new)`` soft limits when it raised them."""
    if resource_module is None:
        try:
            import resource as resource_module
        except ImportError:  # not a POSIX system: nothing to check
            return None
    soft, hard = resource_module.getrlimit(resource_module.RLIMIT_NOFILE)
    new = plan_fd_limit(needed_fds(config), soft, hard, resource_module.RLIM_INFINITY)
    if new is None:
        return None
    try:
        resource_module.setrlimit(resource_module.RLIMIT_NOFILE, (new, hard))
    except (ValueError, OSError) as e:
        raise ConfigError(f"open-file limit: cannot raise the soft RLIMIT_NOFILE from {soft} to {new} ({e}); "
                          "lower --max-clients or --web-max-connections") from None
    return soft, new
