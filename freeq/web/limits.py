"""Bounds on the web listener's connections (issue #10 item 4), as plain objects without I/O.

:class:`WebConnectionLimiter` counts open HTTP connections per TCP peer address and in total
(``--web-max-connections-per-ip``, ``--web-max-connections``); it is separate from the IRC
:class:`freeq.net.connection.ConnectionLimiter`, which a WebSocket joins only once it is upgraded.
:class:`LogThrottle` keeps refusal, time-out and failure lines from flooding the log: at most one
line per key per interval, which says how many it held back.
"""
from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Any, Optional

#: Refusal reasons (also the body of the ``503`` a refused connection gets).
WEB_PER_IP = "Too many web connections from your address"
WEB_FULL = "Web listener full"


def peer_ip(host: str) -> str:
    """The canonical text of a TCP peer address (an IPv4-mapped IPv6 address as IPv4)."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class WebConnectionLimiter:
    """Open web connections per peer address (at most ``per_ip``) and in total (at most ``total``)."""

    def __init__(self, per_ip: int, total: int) -> None:
        self.per_ip = per_ip
        self.total = total
        self.open = 0
        self._by_ip: dict[str, int] = {}

    def acquire(self, ip: str, per_ip_exempt: bool = False) -> Optional[str]:
        """Take a slot for ``ip``; the refusal reason instead when a limit is reached.

        ``per_ip_exempt`` (a trusted reverse proxy, which carries many clients) counts only
        against the total.
        """
        if self.open >= self.total:
            return WEB_FULL
        count = self._by_ip.get(ip, 0)
        if not per_ip_exempt and count >= self.per_ip:
            return WEB_PER_IP
        self._by_ip[ip] = count + 1
        self.open += 1
        return None

    def release(self, ip: str) -> None:
        """Give back a slot taken by :meth:`acquire`."""
        count = self._by_ip.get(ip, 0)
        if count <= 0:
            return
        if count == 1:
            del self._by_ip[ip]
        else:
            self._by_ip[ip] = count - 1
        self.open -= 1

    def count(self, ip: str) -> int:
        """Slots ``ip`` holds now."""
        return self._by_ip.get(ip, 0)


class LogThrottle:
    """At most one log line per key every ``interval`` seconds; counts the lines held back.

    ``clock`` has ``seconds()``; at most ``max_keys`` keys are remembered (oldest forgotten).
    """

    def __init__(self, clock: Any, interval: float = 10.0, max_keys: int = 1024) -> None:
        self.clock = clock
        self.interval = interval
        self.max_keys = max_keys
        self._keys: OrderedDict[Any, list[float]] = OrderedDict()  # key -> [last line at, held back since]

    def allow(self, key: Any) -> Optional[int]:
        """``None`` when this line is to be dropped; else how many lines of ``key`` were dropped before it."""
        now = self.clock.seconds()
        entry = self._keys.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        held = int(entry[1]) if entry is not None else 0
        self._keys[key] = [now, 0]
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return held
