"""SASL ``PLAIN`` with a Bluesky identity: a handle (or DID) and an app password, checked at the user's PDS.

The client sends ``authzid NUL authcid NUL password`` (RFC 4616), base64 (standard alphabet),
chunked as any SASL response. ``authcid`` is an atproto handle or a DID; ``authzid`` must be
empty or equal ``authcid``. :class:`PlainVerifier` then

1. refuses at once while the client's address or the named account is backing off after failures
   (:class:`PlainThrottle`, exponential back-off per IP and per account);
2. resolves a handle to a DID with ``com.atproto.identity.resolveHandle`` at the configured
   resolver service (``--handle-resolver-url``), and checks that the DID document names that
   handle in ``alsoKnownAs`` (so a resolver can only point a handle at a DID that claims it);
3. resolves the DID document (:class:`freeq.auth.did.DIDResolver`, cached) and takes its PDS;
4. ``POST <pds>/xrpc/com.atproto.server.createSession`` with ``{"identifier": <did>, "password": …}``
   through :class:`freeq.auth.http.SafeHTTPClient` (SSRF guard, no redirects, size cap, one
   deadline: as for the ATPROTO-CHALLENGE PDS methods);
5. requires the session's ``did`` to equal the resolved DID, then ends the session at once
   (``com.atproto.server.deleteSession`` with its refresh token; a failure there is ignored) and
   forgets both tokens.

The password lives only in local variables and the request body: it is never stored, logged or
put into an exception or a failure reason. A failure's ``reason`` (logged) and ``reply`` (the 904
text) are fixed, short strings.

Who may use PLAIN at all is :func:`plain_allowed` (TLS, loopback, or ``--sasl-plain-insecure``).
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger

from freeq.auth.did import DIDResolutionError, DIDResolver, is_valid_did, pds_endpoint, valid_handle
from freeq.auth.http import HTTPFetchError, SafeHTTPClient, UnsafeURLError
from freeq.state.throttle import FailureThrottle, ip_key

log = Logger()

MECHANISM = "PLAIN"
MAX_PAYLOAD = 4096  # base64 characters of one PLAIN response (a did:web authcid can be long)
MAX_PASSWORD = 1024  # bytes; app passwords are 19 characters
RESOLVE_HANDLE_PATH = "/xrpc/com.atproto.identity.resolveHandle"
CREATE_SESSION_PATH = "/xrpc/com.atproto.server.createSession"
DELETE_SESSION_PATH = "/xrpc/com.atproto.server.deleteSession"
_MAX_TOKEN = 8192

FAILED = "SASL authentication failed"
BAD_CREDENTIALS = "SASL authentication failed (invalid handle or app password)"
NOT_FOUND = "SASL authentication failed (handle or DID could not be resolved)"
PDS_DOWN = "SASL authentication failed (your PDS could not be reached)"


class BadPlain(ValueError):
    """The PLAIN response is malformed; ``str()`` is a short reason that holds no part of it."""


@dataclass(frozen=True)
class PlainCredentials:
    """A decoded PLAIN response. ``repr`` hides the password."""

    authcid: str  # a lower-cased handle, or a DID
    password: str

    def __repr__(self) -> str:
        return f"PlainCredentials(authcid={self.authcid!r}, password=<hidden>)"


def parse_plain(payload: str) -> PlainCredentials:
    """Decode a complete base64 PLAIN response into its credentials; raise :class:`BadPlain`.

    ``authzid`` must be empty or equal ``authcid`` (one cannot log in as someone else), the
    ``authcid`` must be an atproto handle or a DID, the password non-empty and bounded.
    """
    if len(payload) > MAX_PAYLOAD:
        raise BadPlain("response too long")
    try:
        raw = base64.b64decode(payload, validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise BadPlain("not base64 UTF-8") from None
    parts = text.split("\0")
    if len(parts) != 3:
        raise BadPlain("expected authzid NUL authcid NUL password")
    authzid, authcid, password = parts
    if not password:
        raise BadPlain("empty password")
    if len(password.encode("utf-8")) > MAX_PASSWORD:
        raise BadPlain("password too long")
    identity = valid_handle(authcid.removeprefix("@"))
    if identity is None:
        if not is_valid_did(authcid) or authcid.startswith("did:key:"):
            raise BadPlain("the username must be a Bluesky handle or a DID")
        identity = authcid
    if authzid and authzid.removeprefix("@").lower() != identity.lower():
        raise BadPlain("authorization identity must be empty or the same as the username")
    return PlainCredentials(identity, password)


def plain_allowed(secure: bool, ip: str, insecure: bool) -> bool:
    """Whether a connection may send a password: over TLS, from loopback, or when the operator said so."""
    if secure or insecure:
        return True
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class PlainThrottle:
    """Back-off after failed PLAIN logins, per client address (IPv6 by /64) and per account.

    Two :class:`FailureThrottle` tables: after failure ``n`` of a key its next attempt is refused
    unchecked for ``base * 2**(n-1)`` seconds (capped). An account is keyed by the name given
    (handle or DID) and, once resolved, by its DID, so switching spellings gains nothing.
    """

    def __init__(self, base: float = 2.0, cap: float = 900.0, max_keys: int = 10000) -> None:
        self.by_ip = FailureThrottle(base=base, cap=cap, max_keys=max_keys)
        self.by_account = FailureThrottle(base=base, cap=cap, max_keys=max_keys)

    def wait(self, ip: str, accounts: tuple[str, ...], now: float) -> float:
        """Seconds before an attempt from ``ip`` for any of ``accounts`` is checked (0: go ahead)."""
        waits = [self.by_ip.wait(ip_key(ip), now)]
        waits.extend(self.by_account.wait(a.lower(), now) for a in accounts)
        return max(waits)

    def fail(self, ip: str, accounts: tuple[str, ...], now: float) -> None:
        """Record a failed attempt."""
        self.by_ip.fail(ip_key(ip), now)
        for account in accounts:
            self.by_account.fail(account.lower(), now)

    def succeed(self, ip: str, accounts: tuple[str, ...]) -> None:
        """A successful login clears the account's record (the address keeps its own)."""
        for account in accounts:
            self.by_account.succeed(account.lower())


@dataclass(frozen=True)
class PlainResult:
    """Outcome of one PLAIN login: ``did`` on success, else ``reason`` (for the log) and ``reply`` (the 904)."""

    did: Optional[str] = None
    handle: Optional[str] = None
    reason: Optional[str] = None
    reply: str = FAILED

    @property
    def ok(self) -> bool:
        """Whether the PDS accepted the password for the resolved DID."""
        return self.did is not None


class _Fail(Exception):
    """Internal: ends a login with a log reason and a 904 text (neither holds the password)."""

    def __init__(self, reason: str, reply: str = FAILED, count: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        self.count = count


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


class PlainVerifier:
    """Checks PLAIN credentials at the account's own PDS (see the module docstring).

    ``clock`` drives the back-off (the server's clock); ``http`` and ``resolver`` do the network.
    """

    def __init__(self, resolver: DIDResolver, http: SafeHTTPClient, clock: Any,
                 handle_resolver_url: str = "https://public.api.bsky.app",
                 throttle: Optional[PlainThrottle] = None) -> None:
        self._resolver = resolver
        self._http = http
        self._clock = clock
        self.handle_resolver_url = handle_resolver_url.rstrip("/")
        self.throttle = throttle if throttle is not None else PlainThrottle()

    def verify(self, credentials: PlainCredentials, ip: str) -> defer.Deferred[PlainResult]:
        """Log ``credentials`` in from ``ip``; always succeeds with a :class:`PlainResult`."""
        return defer.Deferred.fromCoroutine(self._verify(credentials, ip))

    async def _verify(self, credentials: PlainCredentials, ip: str) -> PlainResult:
        accounts: tuple[str, ...] = (credentials.authcid,)
        try:
            wait = self.throttle.wait(ip, accounts, self._clock.seconds())
            if wait > 0:
                raise _Fail("throttled", f"SASL authentication failed (too many failed attempts; try again in "
                                         f"{int(wait) + 1} seconds)", count=False)
            did = credentials.authcid
            handle: Optional[str] = None
            if not did.startswith("did:"):
                handle = did
                did = await self._resolve_handle(handle)
                accounts = (handle, did)
                wait = self.throttle.wait(ip, accounts, self._clock.seconds())
                if wait > 0:
                    raise _Fail("throttled", f"SASL authentication failed (too many failed attempts; try again "
                                             f"in {int(wait) + 1} seconds)", count=False)
            pds = await self._pds_of(did, handle)
            result = await self._create_session(pds, did, credentials.password)
        except _Fail as e:
            if e.count:
                self.throttle.fail(ip, accounts, self._clock.seconds())
            result = PlainResult(reason=e.reason, reply=e.reply)
        except Exception:
            # The traceback names no local values; the password is only ever in locals and the body.
            log.failure("SASL PLAIN verification crashed for {account}", account=credentials.authcid)
            self.throttle.fail(ip, accounts, self._clock.seconds())
            result = PlainResult(reason="internal error")
        if result.ok:
            self.throttle.succeed(ip, accounts)
            log.info("SASL PLAIN verified {did} ({handle}) at its PDS", did=result.did, handle=result.handle)
        else:
            log.info("SASL PLAIN failed for {account} from {ip}: {reason}", account=credentials.authcid, ip=ip,
                     reason=result.reason)
        return result

    async def _resolve_handle(self, handle: str) -> str:
        url = f"{self.handle_resolver_url}{RESOLVE_HANDLE_PATH}?handle={quote(handle, safe='')}"
        try:
            answer = await self._http.get(url, headers={"Accept": "application/json"})
        except (UnsafeURLError, HTTPFetchError) as e:
            raise _Fail(f"handle resolution failed: {e}", NOT_FOUND) from None
        if not 200 <= answer.status < 300:
            raise _Fail(f"handle resolution failed: HTTP {answer.status}", NOT_FOUND)
        did = _json_object(answer.body).get("did")
        if not is_valid_did(did) or str(did).startswith("did:key:"):
            raise _Fail("handle resolver answered no usable DID", NOT_FOUND)
        return str(did)

    async def _pds_of(self, did: str, handle: Optional[str]) -> str:
        try:
            doc = await self._resolver.resolve(did)
        except DIDResolutionError as e:
            raise _Fail(f"DID resolution failed: {e}", NOT_FOUND) from None
        if handle is not None:
            aliases = doc.get("alsoKnownAs")
            claimed = {valid_handle(a[len("at://"):]) for a in aliases if isinstance(a, str)
                       and a.startswith("at://")} if isinstance(aliases, list) else set()
            if handle not in claimed:
                raise _Fail("the DID document does not claim the handle", NOT_FOUND)
        pds = pds_endpoint(doc)
        if pds is None:
            raise _Fail("DID document lists no PDS", NOT_FOUND)
        return pds.rstrip("/")

    async def _create_session(self, pds: str, did: str, password: str) -> PlainResult:
        body = json.dumps({"identifier": did, "password": password}).encode("utf-8")
        try:
            answer = await self._http.post(pds + CREATE_SESSION_PATH, body,
                                           headers={"Content-Type": "application/json",
                                                    "Accept": "application/json"})
        except UnsafeURLError as e:
            raise _Fail(f"PDS address refused: {e}", PDS_DOWN) from None
        except HTTPFetchError as e:
            raise _Fail(f"PDS request failed: {e}", PDS_DOWN) from None
        session = _json_object(answer.body)
        if answer.status in (400, 401):
            if session.get("error") == "AuthFactorTokenRequired":
                raise _Fail("PDS asks for a sign-in code",
                            "SASL authentication failed (use an app password, not the account password)")
            raise _Fail(f"PDS refused the credentials (HTTP {answer.status})", BAD_CREDENTIALS)
        if not 200 <= answer.status < 300:
            raise _Fail(f"PDS rejected the session (HTTP {answer.status})", PDS_DOWN)
        refresh = session.get("refreshJwt")
        try:
            if session.get("did") != did:
                raise _Fail("PDS session belongs to a different DID")
            if session.get("active") is False:
                raise _Fail("account is not active", "SASL authentication failed (account deactivated)")
            return PlainResult(did=did, handle=valid_handle(session.get("handle")))
        finally:
            await self._end_session(pds, refresh)

    async def _end_session(self, pds: str, refresh: Any) -> None:
        """Revoke the session just made (best effort): freeq keeps no PDS tokens."""
        if not isinstance(refresh, str) or not refresh or len(refresh) > _MAX_TOKEN or not refresh.isascii() \
                or not refresh.isprintable() or " " in refresh:
            return
        try:
            await self._http.post(pds + DELETE_SESSION_PATH, b"", headers={"Authorization": f"Bearer {refresh}"})
        except (UnsafeURLError, HTTPFetchError):
            log.debug("deleteSession at {pds} failed; the session expires on its own", pds=pds)


__all__ = [
    "MECHANISM", "PlainCredentials", "PlainResult", "PlainThrottle", "PlainVerifier", "BadPlain", "parse_plain",
    "plain_allowed",
]
