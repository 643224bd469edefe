"""DID resolution (did:plc, did:web, did:key) and reading atproto data out of DID documents.

Resolution:

* ``did:plc:<24 base32 chars>`` → ``GET <plc-directory>/<did>`` (the identifier syntax is checked
  strictly, so nothing but that path can be requested). 404 → "DID not found", 410 → "DID
  deactivated". The PLC audit log is not fetched.
* ``did:web:<host>[%3A<port>][:<path>...]`` → ``https://<host>[:<port>]/.well-known/did.json``, or
  ``https://<host>[:<port>]/<path>/.../did.json`` with path segments. Segments are percent-decoded,
  and ``.``/``..``/empty segments or ones containing ``/?#\\`` are refused. Always https.
* ``did:key:z...`` → a document synthesised locally (one Multikey verification method
  ``<did>#<multibase>`` referenced from ``authentication`` and ``assertionMethod``), including
  P-256 keys.
* Every fetched document must be a JSON object whose ``id`` equals the DID exactly. Fetches go
  through :class:`~freeq.auth.http.SafeHTTPClient` (SSRF guard, TLS, no redirects, caps, timeout).
* Successful resolutions of did:plc/did:web are cached for ``ttl`` seconds (``clock.seconds()``),
  at most ``max_entries`` DIDs (least recently used evicted first). Failures are not cached, and
  concurrent lookups of one DID are not merged. ``resolve(did, refresh=True)`` bypasses the cache
  (the verifier uses it once when a cached document fails, to pick up key rotation or PDS moves),
  but only for a document older than ``min_refresh_interval`` seconds: otherwise failed logins
  naming someone else's DID would turn into one directory fetch each.

Keys (:func:`verification_keys`), deduplicated, in this order:

1. entries of ``authentication`` then ``assertionMethod``: an inline object is used directly; a
   string is a reference to a ``verificationMethod`` element, where relative references
   (``#atproto``) and relative ids are resolved against the document ``id`` before matching;
2. ``verificationMethod`` elements whose id (resolved the same way) has the fragment ``#atproto``.
   Real did:plc documents list the atproto signing key only there, usually without any
   ``authentication`` section, and atproto defines that key as the account's signing key.

Keys listed in ``verificationMethod`` under other fragments and not referenced are ignored. Key
material: ``publicKeyMultibase`` (Multikey; for the legacy ``EcdsaSecp256k1VerificationKey2019`` /
``EcdsaSecp256r1VerificationKey2019`` types also the raw compressed point without multicodec) and
``publicKeyJwk`` (EC P-256 / secp256k1, OKP Ed25519). ``publicKeyBase58`` is ignored. The method
``type`` and ``controller`` are not checked: whatever the document lists, its owner put there.
"""
from __future__ import annotations

import copy
import json
import re
from collections import OrderedDict
from typing import Any, Optional
from urllib.parse import quote, unquote

from twisted.internet import defer
from twisted.logger import Logger

from freeq.auth.http import HTTPFetchError, SafeHTTPClient, UnsafeURLError
from freeq.auth.multikey import (
    P256,
    SECP256K1,
    PublicKey,
    b58decode,
    decode_multibase_key,
    public_key_from_did_key,
    public_key_from_jwk,
)

log = Logger()

MAX_DID_LENGTH = 2048
_DID_RE = re.compile(r"^did:[a-z0-9]+:[A-Za-z0-9._:%-]*[A-Za-z0-9._-]$")
_PLC_RE = re.compile(r"^did:plc:[a-z2-7]{24}$")
_WEB_HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?$")
_HANDLE_RE = re.compile(
    r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_LEGACY_RAW_TYPES = {
    "EcdsaSecp256k1VerificationKey2019": SECP256K1,
    "EcdsaSecp256r1VerificationKey2019": P256,
}
PDS_SERVICE_TYPE = "AtprotoPersonalDataServer"


class DIDResolutionError(Exception):
    """A DID could not be resolved to a valid document; ``str()`` is a short, safe reason."""


def is_valid_did(did: Any) -> bool:
    """Whether ``did`` has W3C DID syntax (no fragment or query) and a sane length."""
    return isinstance(did, str) and len(did) <= MAX_DID_LENGTH and bool(_DID_RE.match(did))


def valid_handle(text: Any) -> Optional[str]:
    """``text`` lower-cased if it is a syntactically valid atproto handle, else ``None``.

    Handles end up in IRC lines (WHOIS, NOTICEs), so anything else must never get through.
    """
    if not isinstance(text, str) or len(text) > 253 or not text.isascii():
        return None  # isascii first: str.lower() maps e.g. KELVIN SIGN to ASCII 'k'
    handle = text.lower()
    return handle if _HANDLE_RE.fullmatch(handle) else None  # fullmatch: '$' lets a trailing '\n' through


def did_web_url(did: str) -> str:
    """The https URL of a did:web document; raises :class:`DIDResolutionError`."""
    if not did.startswith("did:web:"):
        raise DIDResolutionError("not a did:web")
    parts = did[len("did:web:"):].split(":")
    host = unquote(parts[0]).lower()
    if not _WEB_HOST_RE.match(host):
        raise DIDResolutionError("malformed did:web host")
    if ":" in host and not 0 < int(host.rsplit(":", 1)[1]) < 65536:
        raise DIDResolutionError("malformed did:web port")
    segments = []
    for raw in parts[1:]:
        seg = unquote(raw)
        if seg in ("", ".", "..") or any(c in seg for c in "/?#\\") or not seg.isprintable():
            raise DIDResolutionError("malformed did:web path")
        segments.append(quote(seg, safe=""))
    path = "/" + "/".join(segments) + "/did.json" if segments else "/.well-known/did.json"
    return f"https://{host}{path}"


def did_key_document(did: str) -> dict[str, Any]:
    """The document of a did:key; raises :class:`DIDResolutionError` for a bad or unsupported key."""
    try:
        key = public_key_from_did_key(did)
    except ValueError:
        raise DIDResolutionError("invalid did:key") from None
    multibase = did[len("did:key:"):]
    vm_id = f"{did}#{multibase}"
    return {
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "id": did,
        "verificationMethod": [
            {"id": vm_id, "type": "Multikey", "controller": did, "publicKeyMultibase": key.multibase},
        ],
        "authentication": [vm_id],
        "assertionMethod": [vm_id],
    }


def _absolute(ref: str, doc_id: str) -> str:
    return doc_id + ref if ref.startswith("#") else ref


def _key_from_method(method: Any) -> Optional[PublicKey]:
    if not isinstance(method, dict):
        return None
    multibase = method.get("publicKeyMultibase")
    if isinstance(multibase, str):
        try:
            return decode_multibase_key(multibase)
        except ValueError:
            kind = _LEGACY_RAW_TYPES.get(method.get("type"))  # type: ignore[arg-type]
            if kind is not None and multibase.startswith("z") and len(multibase) < 100:
                try:
                    return PublicKey(kind, b58decode(multibase[1:]))
                except ValueError:
                    pass
            return None
    jwk = method.get("publicKeyJwk")
    if jwk is not None:
        try:
            return public_key_from_jwk(jwk)
        except ValueError:
            return None
    return None


def verification_keys(doc: dict[str, Any]) -> list[PublicKey]:
    """The keys that may sign for the DID (rules in the module docstring); unusable ones skipped."""
    doc_id = doc.get("id")
    if not isinstance(doc_id, str):
        return []
    methods = doc.get("verificationMethod")
    by_id: dict[str, dict[str, Any]] = {}
    ordered: list[tuple[str, dict[str, Any]]] = []
    if isinstance(methods, list):
        for method in methods:
            if isinstance(method, dict) and isinstance(method.get("id"), str):
                abs_id = _absolute(method["id"], doc_id)
                by_id.setdefault(abs_id, method)
                ordered.append((abs_id, method))
    candidates: list[Any] = []
    for relationship in ("authentication", "assertionMethod"):
        entries = doc.get(relationship)
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, str):
                method = by_id.get(_absolute(entry, doc_id))
                if method is not None:
                    candidates.append(method)
            elif isinstance(entry, dict):
                candidates.append(entry)
    atproto_id = doc_id + "#atproto"
    candidates.extend(method for abs_id, method in ordered if abs_id == atproto_id)
    keys: list[PublicKey] = []
    for method in candidates:
        key = _key_from_method(method)
        if key is not None and key not in keys:
            keys.append(key)
    return keys


def _has_type(service: dict[str, Any], wanted: str) -> bool:
    kind = service.get("type")
    return kind == wanted or (isinstance(kind, list) and wanted in kind)


def pds_endpoint(doc: dict[str, Any]) -> Optional[str]:
    """The atproto PDS URL of the document, as written (trailing ``/`` kept), or ``None``.

    Services of type ``AtprotoPersonalDataServer`` with a string ``serviceEndpoint`` qualify
    (object-valued endpoints are skipped); one whose id is ``#atproto_pds`` wins, else the first.
    """
    services = doc.get("service")
    if not isinstance(services, list):
        return None
    doc_id = doc.get("id") if isinstance(doc.get("id"), str) else ""
    found: list[tuple[str, str]] = []
    for service in services:
        if isinstance(service, dict) and _has_type(service, PDS_SERVICE_TYPE):
            endpoint = service.get("serviceEndpoint")
            if isinstance(endpoint, str) and endpoint:
                sid = service.get("id")
                found.append((_absolute(sid, str(doc_id)) if isinstance(sid, str) else "", endpoint))
    for sid, endpoint in found:
        if sid == f"{doc_id}#atproto_pds":
            return endpoint
    return found[0][1] if found else None


def handle_from_doc(doc: dict[str, Any]) -> Optional[str]:
    """The handle claimed by the first ``at://`` entry of ``alsoKnownAs`` (lower-cased), or ``None``.

    Not verified in the other direction (handle → DID); ``None`` if that entry is not a valid handle.
    """
    aliases = doc.get("alsoKnownAs")
    if not isinstance(aliases, list):
        return None
    for alias in aliases:
        if isinstance(alias, str) and alias.startswith("at://"):
            return valid_handle(alias[len("at://"):])
    return None


class DIDResolver:
    """Resolves DIDs to documents with a TTL cache (see the module docstring)."""

    def __init__(self, http: SafeHTTPClient, clock: Any, plc_directory_url: str = "https://plc.directory",
                 ttl: float = 300.0, max_entries: int = 10000, min_refresh_interval: float = 30.0) -> None:
        self._http = http
        self._clock = clock
        self.plc_directory_url = plc_directory_url.rstrip("/")
        self.ttl = ttl
        self.max_entries = max_entries
        self.min_refresh_interval = min_refresh_interval
        # did -> (fetched at, document)
        self._cache: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()

    def is_cached(self, did: str) -> bool:
        """Whether a fresh cached document exists for ``did``."""
        entry = self._cache.get(did)
        return entry is not None and self._clock.seconds() < entry[0] + self.ttl

    def invalidate(self, did: str) -> None:
        """Forget the cached document of ``did``."""
        self._cache.pop(did, None)

    def resolve(self, did: str, refresh: bool = False) -> defer.Deferred[dict[str, Any]]:
        """The DID document of ``did`` (a private copy); fails with :class:`DIDResolutionError`.

        ``refresh`` skips a cached document unless it was fetched less than
        ``min_refresh_interval`` seconds ago.
        """
        return defer.Deferred.fromCoroutine(self._resolve(did, refresh))

    async def _resolve(self, did: str, refresh: bool) -> dict[str, Any]:
        if not is_valid_did(did):
            raise DIDResolutionError("malformed DID")
        if did.startswith("did:key:"):
            return did_key_document(did)
        now = self._clock.seconds()
        entry = self._cache.get(did)
        if entry is not None:
            age = now - entry[0]
            if age < self.ttl and (not refresh or age < self.min_refresh_interval):
                self._cache.move_to_end(did)
                return copy.deepcopy(entry[1])
            del self._cache[did]
        if did.startswith("did:plc:"):
            if not _PLC_RE.match(did):
                raise DIDResolutionError("malformed did:plc")
            url = f"{self.plc_directory_url}/{did}"
        elif did.startswith("did:web:"):
            url = did_web_url(did)
        else:
            raise DIDResolutionError("unsupported DID method")
        doc = await self._fetch(did, url)
        self._cache[did] = (self._clock.seconds(), doc)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return copy.deepcopy(doc)

    async def _fetch(self, did: str, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, headers={"Accept": "application/did+json, application/json"})
        except UnsafeURLError as e:
            log.info("DID document of {did} not fetched: {reason}", did=did, reason=str(e))
            raise DIDResolutionError(f"DID document address refused: {e}") from None
        except HTTPFetchError as e:
            log.info("DID document of {did} not fetched: {reason}", did=did, reason=str(e))
            raise DIDResolutionError(f"DID document fetch failed: {e}") from None
        if response.status == 404:
            raise DIDResolutionError("DID not found")
        if response.status == 410:
            raise DIDResolutionError("DID deactivated")
        if not 200 <= response.status < 300:
            raise DIDResolutionError(f"DID document fetch failed: HTTP {response.status}")
        try:
            doc = json.loads(response.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise DIDResolutionError("DID document is not valid JSON") from None
        if not isinstance(doc, dict):
            raise DIDResolutionError("DID document is not a JSON object")
        if doc.get("id") != did:
            raise DIDResolutionError("DID document id does not match the DID")
        log.debug("resolved {did}", did=did)
        return doc


__all__ = [
    "DIDResolver", "DIDResolutionError", "verification_keys", "pds_endpoint", "handle_from_doc",
    "valid_handle", "is_valid_did", "did_web_url", "did_key_document", "PDS_SERVICE_TYPE",
]
