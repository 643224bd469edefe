"""A DID's Bluesky profile (``app.bsky.actor.profile/self``), read from its PDS for metadata defaults.

After a DID logs in, the server reads the profile record from the PDS named in the DID document
(``GET <pds>/xrpc/com.atproto.repo.getRecord?repo=<did>&collection=app.bsky.actor.profile&rkey=self``)
through the same :class:`~freeq.auth.http.SafeHTTPClient` (SSRF guard, no redirects, size cap, one
deadline) and :class:`~freeq.auth.did.DIDResolver` (cache) the SASL verifier uses: the composition root
(:func:`freeq.tap.make_irc_server`) makes them once and hands them to both. The display name
and the avatar (as the PDS's ``com.atproto.sync.getBlob`` URL of the avatar blob) become defaults of
the ``display-name`` and ``avatar`` metadata keys (:mod:`freeq.core.metadata`).

Answers, failures included, are cached for ``ttl`` seconds (at most ``max_entries`` DIDs); concurrent
asks for one DID share one fetch. A failure is logged once (at info, per cached answer) and the result is
simply "no profile": it never fails a login.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger

from freeq.auth.did import DIDResolutionError, pds_endpoint
from freeq.auth.http import HTTPFetchError, UnsafeURLError

if TYPE_CHECKING:
    from freeq.auth.did import DIDResolver
    from freeq.auth.http import SafeHTTPClient

log = Logger()

COLLECTION = "app.bsky.actor.profile"
GET_RECORD_PATH = "/xrpc/com.atproto.repo.getRecord"
GET_BLOB_PATH = "/xrpc/com.atproto.sync.getBlob"
#: A display name is cut to this many characters (Bluesky allows 64 graphemes); a CID longer is refused.
MAX_DISPLAY_NAME = 64
MAX_CID = 128
#: The profile record is small; a larger answer is refused by the HTTP client's own cap long before.
_CID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


@dataclass(frozen=True)
class Profile:
    """What the server takes from a profile: each field ``None`` when absent or unusable."""

    display_name: Optional[str]
    avatar: Optional[str]


def clean_display_name(value: Any) -> Optional[str]:
    """A profile's ``displayName`` made safe for the wire: control characters dropped, whitespace trimmed,
    at most :data:`MAX_DISPLAY_NAME` characters; ``None`` if nothing is left."""
    if not isinstance(value, str):
        return None
    text = "".join(ch for ch in value if ch >= " " and ch != "\x7f" and not 0x80 <= ord(ch) < 0xa0)
    text = " ".join(text.split())[:MAX_DISPLAY_NAME]
    return text or None


def avatar_url(pds: str, did: str, avatar: Any) -> Optional[str]:
    """The getBlob URL of an avatar blob (``{"$type": "blob", "ref": {"$link": cid}, ...}``), or ``None``."""
    if not isinstance(avatar, dict):
        return None
    ref = avatar.get("ref")
    cid = ref.get("$link") if isinstance(ref, dict) else None
    if not isinstance(cid, str) or not cid or len(cid) > MAX_CID or not set(cid) <= _CID_CHARS:
        return None
    return f"{pds.rstrip('/')}{GET_BLOB_PATH}?did={quote(did, safe='')}&cid={cid}"


def parse_profile(body: bytes, pds: str, did: str) -> Profile:
    """The :class:`Profile` in a getRecord answer; raises ``ValueError`` when it is not one."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("not JSON") from None
    value = doc.get("value") if isinstance(doc, dict) else None
    if not isinstance(value, dict):
        raise ValueError("no record value")
    return Profile(clean_display_name(value.get("displayName")), avatar_url(pds, did, value.get("avatar")))


class ProfileFetcher:
    """Reads and caches Bluesky profiles (see the module docstring)."""

    def __init__(self, resolver: "DIDResolver", http: "SafeHTTPClient", clock: Any, ttl: float = 3600.0,
                 max_entries: int = 10000) -> None:
        self._resolver = resolver
        self._http = http
        self._clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[float, Optional[Profile]]] = OrderedDict()
        self._waiting: dict[str, list[defer.Deferred[Optional[Profile]]]] = {}

    def fetch(self, did: str) -> defer.Deferred[Optional[Profile]]:
        """The profile of ``did`` (``None`` when it has none or it cannot be read); never fails."""
        entry = self._cache.get(did)
        if entry is not None and self._clock.seconds() < entry[0] + self.ttl:
            self._cache.move_to_end(did)
            return defer.succeed(entry[1])
        d: defer.Deferred[Optional[Profile]] = defer.Deferred()
        waiters = self._waiting.get(did)
        if waiters is not None:
            waiters.append(d)
            return d
        self._waiting[did] = [d]
        work = defer.Deferred.fromCoroutine(self._fetch(did))
        work.addErrback(self._crashed, did)
        work.addCallback(self._done, did)
        return d

    def _crashed(self, failure: Any, did: str) -> None:
        log.failure("profile fetch of {did} crashed", failure, did=did)
        return None

    def _done(self, profile: Optional[Profile], did: str) -> None:
        self._cache[did] = (self._clock.seconds(), profile)
        self._cache.move_to_end(did)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        for d in self._waiting.pop(did, ()):
            d.callback(profile)

    async def _fetch(self, did: str) -> Optional[Profile]:
        try:
            doc = await self._resolver.resolve(did)
        except DIDResolutionError as e:
            log.info("no profile for {did}: {reason}", did=did, reason=str(e))
            return None
        pds = pds_endpoint(doc)
        if pds is None:
            log.debug("no profile for {did}: no PDS in its DID document", did=did)
            return None
        url = (f"{pds.rstrip('/')}{GET_RECORD_PATH}?repo={quote(did, safe='')}&collection={COLLECTION}"
               f"&rkey=self")
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except (UnsafeURLError, HTTPFetchError) as e:
            log.info("no profile for {did}: {reason}", did=did, reason=str(e))
            return None
        if response.status == 400 or response.status == 404:
            log.debug("{did} has no profile record", did=did)
            return None
        if not 200 <= response.status < 300:
            log.info("no profile for {did}: HTTP {status}", did=did, status=response.status)
            return None
        try:
            return parse_profile(response.body, pds, did)
        except ValueError as e:
            log.info("no profile for {did}: {reason}", did=did, reason=str(e))
            return None


__all__ = ["Profile", "ProfileFetcher", "avatar_url", "clean_display_name", "parse_profile"]
