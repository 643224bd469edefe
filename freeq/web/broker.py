"""The auth broker endpoints: ``POST /auth/broker/web-token`` and ``POST /auth/broker/session``.

An external broker (which did the AT Protocol OAuth dance) vouches for a DID with the reference's
shared-secret scheme (client-protocol.md §12.3)::

    X-Broker-Timestamp: <unix seconds>
    X-Broker-Signature: base64url-no-pad(HMAC-SHA256(secret, "ts=" + <timestamp header> + "\\n" + body))

Fixes over the reference: the MAC is compared in constant time, and a MAC is accepted once: every
accepted signature is remembered until its timestamp leaves the window, so a captured request
cannot be replayed (a broker that must send the same body twice in one second adds a unique field,
e.g. ``"request_id"``, which the endpoints ignore). Without ``--broker-shared-secret`` both routes
answer ``403``. Missing or bad headers, a timestamp more than ``window`` seconds away, a wrong MAC
or a replay answer ``401``; a body that is not the expected JSON ``400``.
"""
from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
import re
from typing import TYPE_CHECKING, Any, Optional

from twisted.logger import Logger
from twisted.web.resource import Resource

from freeq.auth.did import valid_handle
from freeq.web.http import error_response, json_response

if TYPE_CHECKING:
    from freeq.web.proxy import ProxyPolicy
    from freeq.web.tokens import BearerTokenStore, WebTokenStore

log = Logger()

WINDOW = 60
_TIMESTAMP = re.compile(r"-?\d{1,15}\Z")
_BSKY_SUFFIXES = (".bsky.social", ".bsky.app", ".bsky.team", ".bsky.network")
_MAX_FIELD = 16384


def broker_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Broker-Signature`` value for ``body`` sent with ``X-Broker-Timestamp: timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), b"ts=" + timestamp.encode("ascii") + b"\n" + body, hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")


def nick_for_handle(handle: Optional[str]) -> Optional[str]:
    """The nick the reference derives from a handle: the handle without a Bluesky-hosted suffix."""
    if not handle:
        return None
    for suffix in _BSKY_SUFFIXES:
        if handle.lower().endswith(suffix):
            return handle[: -len(suffix)]
    return handle


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class BrokerResource(Resource):
    """``/auth/broker/<route>``: HMAC-authenticated, replay-protected broker calls."""

    isLeaf = True

    def __init__(self, secret: Optional[str], clock: Any, web_tokens: "WebTokenStore",
                 bearer_tokens: "BearerTokenStore", proxies: "ProxyPolicy", metrics: Any = None,
                 window: int = WINDOW, max_remembered: int = 100000) -> None:
        super().__init__()
        self.secret = secret or None
        self.clock = clock
        self.web_tokens = web_tokens
        self.bearer_tokens = bearer_tokens
        self.proxies = proxies
        self.metrics = metrics
        self.window = window
        self.max_remembered = max_remembered
        self._seen: set[bytes] = set()
        self._expiry: list[tuple[int, bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        route = b"/".join(request.postpath).decode("latin-1")
        if route not in ("web-token", "session"):
            return error_response(request, 404, "No such broker route")
        if self.secret is None:
            return error_response(request, 403, "Broker auth not configured")
        body = request.content.read()
        ip = self.proxies.for_request(request)
        try:
            self._authenticate(request, body)
            data = _json_object(body)
            did = _did(data)
            if route == "web-token":
                return self._web_token(request, data, did, ip)
            return self._session(request, data, did, ip)
        except _Refused as e:
            if e.code == 401:
                if self.metrics is not None:
                    self.metrics.broker_rejected += 1
                log.warn("broker request to {route} from {ip} refused: {why}", route=route, ip=ip, why=e.message)
            return error_response(request, e.code, e.message)

    # -- authentication ----------------------------------------------------------
    def _authenticate(self, request: Any, body: bytes) -> None:
        assert self.secret is not None
        now = int(self.clock.seconds())
        self._forget_expired(now)
        ts_raw = request.getHeader(b"x-broker-timestamp")
        sig_raw = request.getHeader(b"x-broker-signature")
        if not sig_raw:
            raise _Refused(401, "Missing X-Broker-Signature")
        if not ts_raw:
            raise _Refused(401, "Missing X-Broker-Timestamp")
        ts_text = ts_raw.decode("latin-1")
        if not _TIMESTAMP.match(ts_text):
            raise _Refused(401, "X-Broker-Timestamp is not a Unix time in seconds")
        ts = int(ts_text)
        if abs(now - ts) > self.window:
            raise _Refused(401, "X-Broker-Timestamp is outside the allowed window")
        expected = broker_signature(self.secret, ts_text, body).encode("ascii")
        if not hmac.compare_digest(sig_raw.strip(), expected):
            raise _Refused(401, "Bad X-Broker-Signature")
        self._remember(expected, ts)

    def _forget_expired(self, now: int) -> None:
        """Drop remembered MACs whose timestamps are out of the window (the skew check refuses them now)."""
        while self._expiry and self._expiry[0][0] < now:
            self._seen.discard(heapq.heappop(self._expiry)[1])

    def _remember(self, mac: bytes, ts: int) -> None:
        """Accept ``mac`` once; it is forgotten when ``ts`` is out of the window anyway."""
        key = hashlib.sha256(mac).digest()
        if key in self._seen:
            raise _Refused(401, "Replayed request")
        if len(self._seen) >= self.max_remembered:
            raise _Refused(503, "Too many broker requests; try again shortly")
        self._seen.add(key)
        heapq.heappush(self._expiry, (ts + self.window, key))

    # -- routes -------------------------------------------------------------------
    def _web_token(self, request: Any, data: dict[str, Any], did: str, ip: str) -> bytes:
        handle = _optional_str(data, "handle")
        if handle is not None:
            checked = valid_handle(handle)
            if checked is None:  # a handle ends up in IRC lines (WHOIS 320): never an unchecked string
                log.warn("broker handle for {did} (from {ip}) refused: not an AT Protocol handle", did=did, ip=ip)
                raise _Refused(400, "Invalid handle: not an AT Protocol handle")
            handle = checked
        token = self.web_tokens.mint(did, handle)
        log.info("broker minted a web token for {did} (from {ip})", did=did, ip=ip)
        return json_response(request, 200, {"token": token, "nick": nick_for_handle(handle), "did": did,
                                            "handle": handle})

    def _session(self, request: Any, data: dict[str, Any], did: str, ip: str) -> bytes:
        # freeq keeps no server-side PDS session (it has no uploads or PDS writes): the credentials are
        # validated for shape and dropped, never stored or logged. The broker gets a REST bearer token.
        for field in ("pds_url", "access_token", "dpop_key_b64"):
            if not _optional_str(data, field):
                raise _Refused(400, f"Missing {field}")
        pds_url = _optional_str(data, "pds_url") or ""
        if not pds_url.startswith(("https://", "http://")):
            raise _Refused(400, "pds_url must be an http(s) URL")
        for field in ("handle", "dpop_nonce", "granted_scope"):
            _optional_str(data, field)
        log.info("broker pushed a session for {did} (from {ip})", did=did, ip=ip)
        return json_response(request, 200, {"ok": True, "upload_token": self.bearer_tokens.mint(did)})


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _Refused(400, "Body is not JSON") from None
    if not isinstance(data, dict):
        raise _Refused(400, "Body must be a JSON object")
    return data


def _did(data: dict[str, Any]) -> str:
    did = data.get("did")
    if not isinstance(did, str) or not did.startswith("did:") or len(did) > 2048 or any(c.isspace() for c in did):
        raise _Refused(400, "Missing or invalid did")
    return did


def _optional_str(data: dict[str, Any], field: str) -> Optional[str]:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_FIELD:
        raise _Refused(400, f"Invalid {field}")
    return value
