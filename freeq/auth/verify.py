"""Verification of SASL ATPROTO-CHALLENGE responses: ``crypto``, ``pds-session``, ``pds-oauth``.

:meth:`ChallengeVerifier.verify` never fails its Deferred: every outcome is a :class:`VerifyResult`.
The SASL state machine (``freeq.auth.sasl``) owns framing, challenge storage and expiry, failure
counting and the DPoP retry loop; this module only answers "who is this, if anyone?".

* ``crypto`` (``method`` absent/null/``"crypto"``): ``signature`` is base64url without padding of a
  raw signature over the exact challenge bytes. The DID document is resolved and each of its
  verification keys (:func:`freeq.auth.did.verification_keys`) is tried with its own algorithm.
  ``pds_url`` (the JS SDK may send ``""``) and ``challenge_nonce`` are ignored: the signature
  already covers the nonce. The handle comes from the document's ``alsoKnownAs`` and is **not**
  verified in the other direction (handle → DID), as in the reference.
* ``pds-session``: ``challenge_nonce`` must equal the challenge nonce; ``pds_url`` must equal the
  document's PDS endpoint (trailing ``/`` stripped on both); ``GET <pds>/xrpc/com.atproto.server.
  getSession`` with ``Authorization: Bearer <signature>`` must answer 2xx JSON with the same
  ``did``. The handle is the session's ``handle``.
* ``pds-oauth``: as ``pds-session`` with ``Authorization: DPoP <signature>`` and ``DPoP:
  <dpop_proof>`` (forwarded verbatim; the PDS checks it). A 400/401 whose body mentions
  ``use_dpop_nonce`` and that carries a ``DPoP-Nonce`` header yields
  ``VerifyResult(error="dpop nonce required", dpop_nonce=<nonce>)``.

When a cached DID document fails (no key verifies, or the PDS differs), the document is fetched
once more, bypassing the cache, so key rotations and PDS migrations take effect without waiting
for the TTL (the resolver allows such a refresh only every ``min_refresh_interval`` per DID).

Tokens, signatures and proofs never appear in errors or logs; handles are syntax-checked before
they are returned because they end up in IRC lines.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer
from twisted.logger import Logger

from freeq.auth.did import (
    DIDResolutionError,
    DIDResolver,
    handle_from_doc,
    is_valid_did,
    pds_endpoint,
    valid_handle,
    verification_keys,
)
from freeq.auth.http import HTTPFetchError, HTTPResponse, SafeHTTPClient, UnsafeURLError
from freeq.auth.multikey import verify_signature

log = Logger()

CRYPTO = "crypto"
PDS_SESSION = "pds-session"
PDS_OAUTH = "pds-oauth"
METHODS = (CRYPTO, PDS_SESSION, PDS_OAUTH)

GET_SESSION_PATH = "/xrpc/com.atproto.server.getSession"
_MAX_TOKEN = 8192
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: nothing that could split a header
_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")
_NONCE_RE = re.compile(r"^[\x21-\x7e]{1,512}$")  # sent on in a NOTICE: no spaces or controls


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of one verification: ``did`` set on success, else ``error`` (short, safe to show).

    ``dpop_nonce`` is set (with ``error``) when the PDS demands a DPoP nonce: the caller sends
    ``DPOP_NONCE <nonce>`` and re-issues a challenge.
    """

    did: Optional[str] = None
    handle: Optional[str] = None
    error: Optional[str] = None
    dpop_nonce: Optional[str] = None

    @property
    def ok(self) -> bool:
        """Whether the client proved control of ``did``."""
        return self.did is not None


class _Fail(Exception):
    """Internal: ends a verification with a short reason."""


def _b64url_strict(text: str) -> bytes:
    if not _B64URL_RE.match(text) or len(text) % 4 == 1:
        raise _Fail("signature is not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _Fail("signature is not base64url") from None


def _optional_str(response: dict[str, Any], name: str) -> Optional[str]:
    value = response.get(name)
    if value is not None and not isinstance(value, str):
        raise _Fail(f"bad response: {name} must be a string")
    return value


class ChallengeVerifier:
    """Checks a decoded SASL response against the challenge it answers."""

    def __init__(self, resolver: DIDResolver, http: SafeHTTPClient) -> None:
        self._resolver = resolver
        self._http = http

    def verify(self, challenge: bytes, nonce: str, response: dict[str, Any]) -> defer.Deferred[VerifyResult]:
        """Verify ``response`` (the client's JSON) for ``challenge`` (the exact bytes sent) whose
        nonce is ``nonce``. Always succeeds with a :class:`VerifyResult`.
        """
        return defer.Deferred.fromCoroutine(self._verify(challenge, nonce, response))

    async def _verify(self, challenge: bytes, nonce: str, response: dict[str, Any]) -> VerifyResult:
        did: Optional[str] = None
        method: Any = None
        try:
            if not isinstance(response, dict):
                raise _Fail("bad response")
            raw_did = response.get("did")
            method = response.get("method")
            if method is None:
                method = CRYPTO
            if method not in METHODS:
                raise _Fail("unsupported verification method")
            if not is_valid_did(raw_did):
                raise _Fail("invalid DID")
            did = str(raw_did)
            signature = response.get("signature")
            if not isinstance(signature, str) or not signature:
                raise _Fail("missing signature")
            if len(signature) > _MAX_TOKEN:
                raise _Fail("signature too long")
            if method == CRYPTO:
                result = await self._crypto(challenge, did, signature)
            else:
                result = await self._pds(nonce, did, signature, method, response)
        except _Fail as e:
            result = VerifyResult(error=str(e))
        except Exception:
            log.failure("ATPROTO-CHALLENGE verification crashed for {did}", did=did)
            result = VerifyResult(error="internal error")
        method = method if method in METHODS else "unknown"
        if result.ok:
            log.info("ATPROTO-CHALLENGE {method} verified {did} ({handle})", method=method, did=result.did,
                     handle=result.handle)
        elif result.dpop_nonce is not None:
            log.info("ATPROTO-CHALLENGE {method} for {did}: PDS requires a DPoP nonce", method=method, did=did)
        else:
            log.info("ATPROTO-CHALLENGE {method} failed for {did}: {reason}", method=method, did=did,
                     reason=result.error)
        return result

    async def _document(self, did: str, refresh: bool = False) -> dict[str, Any]:
        try:
            return await self._resolver.resolve(did, refresh=refresh)
        except DIDResolutionError as e:
            raise _Fail(f"DID resolution failed: {e}") from None

    async def _crypto(self, challenge: bytes, did: str, signature: str) -> VerifyResult:
        raw = _b64url_strict(signature)
        was_cached = self._resolver.is_cached(did)
        doc = await self._document(did)
        if self._signed_by(doc, challenge, raw):
            return VerifyResult(did=did, handle=handle_from_doc(doc))
        if was_cached:
            fresh = await self._document(did, refresh=True)
            if fresh != doc and self._signed_by(fresh, challenge, raw):
                return VerifyResult(did=did, handle=handle_from_doc(fresh))
            doc = fresh
        if not verification_keys(doc):
            raise _Fail("DID document has no usable verification key")
        raise _Fail("signature verification failed")

    @staticmethod
    def _signed_by(doc: dict[str, Any], challenge: bytes, signature: bytes) -> bool:
        return any(verify_signature(key, challenge, signature) for key in verification_keys(doc))

    async def _pds(self, nonce: str, did: str, token: str, method: str, response: dict[str, Any]) -> VerifyResult:
        challenge_nonce = _optional_str(response, "challenge_nonce")
        pds_url = _optional_str(response, "pds_url")
        proof = _optional_str(response, "dpop_proof")
        if challenge_nonce is None:
            raise _Fail("PDS verification requires challenge_nonce")
        if not hmac.compare_digest(challenge_nonce.encode("utf-8"), nonce.encode("utf-8")):
            raise _Fail("challenge nonce mismatch")
        if not pds_url:
            raise _Fail("PDS verification requires pds_url")
        if not _TOKEN_RE.match(token):
            raise _Fail("malformed access token")
        headers: dict[str, str]
        if method == PDS_OAUTH:
            if not proof:
                raise _Fail("pds-oauth requires dpop_proof")
            if len(proof) > _MAX_TOKEN or not _TOKEN_RE.match(proof):
                raise _Fail("malformed DPoP proof")
            headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        else:
            headers = {"Authorization": f"Bearer {token}"}

        claimed = pds_url.rstrip("/")
        was_cached = self._resolver.is_cached(did)
        doc = await self._document(did)
        pds = pds_endpoint(doc)
        if (pds is None or pds.rstrip("/") != claimed) and was_cached:
            doc = await self._document(did, refresh=True)
            pds = pds_endpoint(doc)
        if pds is None:
            raise _Fail("DID document lists no PDS")
        if pds.rstrip("/") != claimed:
            raise _Fail("PDS does not match the DID document")

        try:
            answer = await self._http.get(claimed + GET_SESSION_PATH, headers=headers)
        except UnsafeURLError as e:
            raise _Fail(f"PDS address refused: {e}") from None
        except HTTPFetchError as e:
            raise _Fail(f"PDS request failed: {e}") from None

        if method == PDS_OAUTH:
            dpop_nonce = _nonce_demand(answer)
            if dpop_nonce is not None:
                return VerifyResult(error="dpop nonce required", dpop_nonce=dpop_nonce)
        if not 200 <= answer.status < 300:
            raise _Fail(f"PDS rejected the session (HTTP {answer.status})")
        try:
            session = json.loads(answer.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise _Fail("PDS session response is not JSON") from None
        if not isinstance(session, dict) or not isinstance(session.get("did"), str):
            raise _Fail("PDS session response has no DID")
        if session["did"] != did:
            raise _Fail("PDS session belongs to a different DID")
        return VerifyResult(did=did, handle=valid_handle(session.get("handle")))


def _nonce_demand(answer: HTTPResponse) -> Optional[str]:
    """The nonce a PDS demands (400/401, ``use_dpop_nonce`` in the body, ``DPoP-Nonce`` header)."""
    if answer.status not in (400, 401) or b"use_dpop_nonce" not in answer.body:
        return None
    value = answer.headers.get("dpop-nonce")
    if value is None:
        return None
    value = value.strip()
    if not _NONCE_RE.match(value):
        raise _Fail("PDS sent an unusable DPoP nonce")
    return value


__all__ = ["ChallengeVerifier", "VerifyResult", "METHODS", "CRYPTO", "PDS_SESSION", "PDS_OAUTH"]
