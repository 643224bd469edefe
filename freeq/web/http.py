"""HTTP plumbing shared by the web listener's resources: JSON replies, security headers, limits.

:class:`WebRequest` puts the security headers on every response, refuses bodies larger than the
site's limit (``413``) without buffering them, and applies the per-IP request rate limit
(``429``) before any resource runs.
"""
from __future__ import annotations

import io
import json
from collections import OrderedDict
from typing import Any, Optional

from twisted.logger import Logger
from twisted.web import server

from freeq.state.flood import TokenBucket

log = Logger()

#: Sent with every response of the web listener.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"Referrer-Policy", b"strict-origin-when-cross-origin"),
    (b"Cross-Origin-Opener-Policy", b"same-origin"),
    (b"Content-Security-Policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
     b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    (b"Permissions-Policy", b"camera=(), microphone=(), geolocation=()"),
)
HSTS = (b"Strict-Transport-Security", b"max-age=63072000; includeSubDomains")

#: Bytes of a request body discarded past the limit before the connection is cut.
_DISCARD_SLACK = 1 << 20


def json_response(request: Any, code: int, body: Any) -> bytes:
    """Serialise ``body`` as the JSON response with status ``code``."""
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def error_response(request: Any, code: int, message: str, headers: Optional[dict[bytes, bytes]] = None) -> bytes:
    """A JSON error ``{"error": message}`` with status ``code``."""
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    return json_response(request, code, {"error": message})


def bearer_token(request: Any) -> Optional[str]:
    """The token of an ``Authorization: Bearer <token>`` header; ``None`` without the header, ``""`` if malformed."""
    value = request.getHeader(b"authorization")
    if not value:
        return None
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


class RateLimiter:
    """A token bucket per client IP (``burst`` requests, refilled at ``rate`` per second).

    At most ``max_ips`` buckets are kept; the least recently used goes first.
    """

    def __init__(self, clock: Any, burst: int = 60, rate: float = 1.0, max_ips: int = 50000) -> None:
        self.clock = clock
        self.burst = burst
        self.rate = rate
        self.max_ips = max_ips
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, ip: str) -> bool:
        """Spend one request for ``ip``; ``False`` when it is over its rate."""
        now = self.clock.seconds()
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = self._buckets[ip] = TokenBucket(self.burst, self.rate, now)
            while len(self._buckets) > self.max_ips:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(ip)
        return bucket.take(now)


class WebRequest(server.Request):
    """A request with the web listener's policies applied before routing (see the module doc)."""

    _too_large = False
    _received = 0

    def _limit(self) -> int:
        return int(getattr(getattr(self.channel, "site", None), "max_body_bytes", 65536))

    def gotLength(self, length: Optional[int]) -> None:
        if length is not None and length > self._limit():
            self._too_large = True
            self.content = io.BytesIO()  # type: ignore[assignment]
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if not self._too_large and self._received > self._limit():
            self._too_large = True
            self.content = io.BytesIO()  # type: ignore[assignment]
        if self._too_large:
            if self._received > self._limit() + _DISCARD_SLACK and self.channel.transport is not None:
                self.channel.transport.abortConnection()
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.setHeader(name, value)
        if self.isSecure():
            self.setHeader(*HSTS)
        site = getattr(self.channel, "site", None)
        if self._too_large:
            self._reply_now(413, "Request body too large")
            return
        check = getattr(site, "check_rate", None)
        if check is not None and not check(self):
            self._reply_now(429, "Rate limit exceeded", {b"Retry-After": b"1"})
            return
        super().process()

    def _reply_now(self, code: int, message: str, headers: Optional[dict[bytes, bytes]] = None) -> None:
        body = error_response(self, code, message, headers)
        self.setHeader(b"Content-Length", str(len(body)).encode())
        self.write(body)
        self.finish()
