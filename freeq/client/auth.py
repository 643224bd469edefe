"""Client credentials for SASL ``ATPROTO-CHALLENGE`` and the wire encoding of responses.

A credential turns the server's challenge into the response JSON of client-protocol.md §5.3,
always in the key order ``did, method, signature, pds_url, challenge_nonce, dpop_proof`` with
unset keys left out (what the freeq JS SDK sends). Three methods:

* :class:`CryptoCredential` — sign the exact challenge bytes with a private key: the key of a
  ``did:key`` (:meth:`CryptoCredential.from_private_key`) or a key listed in a DID document.
* :class:`PDSSessionCredential` — an app-password session's ``accessJwt``; the server checks it
  with ``com.atproto.server.getSession`` on the PDS.
* :class:`PDSOAuthCredential` — a DPoP-bound OAuth access token; a fresh DPoP proof (JWS ES256,
  RFC 9449) is built for every answer, carrying the latest nonce the server relayed with
  ``NOTICE <nick> :DPOP_NONCE <nonce>``.

Signers (crypto) may fall back to a guest session when the server refuses them; token
credentials never do (:attr:`Credential.is_token`).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from typing import Any, Callable, Optional

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from freeq.auth.multikey import PrivateKey, did_key

MECHANISM = "ATPROTO-CHALLENGE"
#: IRCv3 SASL: ``AUTHENTICATE`` payloads travel in pieces of at most this many bytes.
CHUNK_SIZE = 400
GET_SESSION_PATH = "/xrpc/com.atproto.server.getSession"

__all__ = [
    "MECHANISM", "CHUNK_SIZE", "Credential", "CryptoCredential", "PDSSessionCredential", "PDSOAuthCredential",
    "b64url", "b64url_decode", "encode_response", "chunk_payload", "challenge_nonce", "make_dpop_proof",
    "generate_dpop_key",
]


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url, padding optional; raises ``ValueError``."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not base64url: {e}") from None


def challenge_nonce(challenge: bytes) -> Optional[str]:
    """The ``nonce`` field of a challenge, or ``None`` when the challenge is not that JSON."""
    try:
        obj = json.loads(challenge)
    except (ValueError, UnicodeDecodeError):
        return None
    nonce = obj.get("nonce") if isinstance(obj, dict) else None
    return nonce if isinstance(nonce, str) else None


def encode_response(fields: dict[str, Optional[str]]) -> str:
    """The ``AUTHENTICATE`` payload for a response: compact JSON (``None`` values left out), base64url."""
    obj = {k: v for k, v in fields.items() if v is not None}
    return b64url(json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def chunk_payload(payload: str) -> list[str]:
    """Split a payload into ``AUTHENTICATE`` parameters (IRCv3 SASL 3.1).

    Pieces of 400 characters, the last one shorter; when the last piece is exactly 400 long (or
    the payload is empty) a final ``+`` says the response is complete.
    """
    pieces = [payload[i:i + CHUNK_SIZE] for i in range(0, len(payload), CHUNK_SIZE)]
    if not pieces or len(pieces[-1]) == CHUNK_SIZE:
        pieces.append("+")
    return pieces


class Credential:
    """What a client authenticates with. Subclasses build the response to one challenge."""

    #: The ``method`` field of the response.
    method: str = ""
    #: Token credentials must not silently become guests when the server refuses them.
    is_token: bool = False
    did: str

    def response(self, challenge: bytes) -> dict[str, Optional[str]]:
        """The response JSON fields for ``challenge`` (the decoded challenge bytes), in wire order."""
        raise NotImplementedError

    def payload(self, challenge: bytes) -> str:
        """The complete base64url response payload for ``challenge``."""
        return encode_response(self.response(challenge))

    def dpop_nonce(self, nonce: str) -> None:
        """The server relayed a DPoP nonce from the PDS (only OAuth credentials care)."""

    def __repr__(self) -> str:  # never show secrets
        return f"{type(self).__name__}(did={self.did!r})"


class CryptoCredential(Credential):
    """Proves control of ``did`` by signing the challenge with ``private_key``.

    ``private_key`` is a :class:`freeq.auth.multikey.PrivateKey` (Ed25519, secp256k1 or P-256):
    the key of a ``did:key``, or a key that the DID document of ``did`` lists under
    ``authentication``/``assertionMethod``.
    """

    method = "crypto"
    is_token = False

    def __init__(self, did: str, private_key: PrivateKey) -> None:
        self.did = did
        self.private_key = private_key

    @classmethod
    def from_private_key(cls, private_key: PrivateKey) -> "CryptoCredential":
        """A credential for the ``did:key`` of ``private_key``."""
        return cls(did_key(private_key.public_key()), private_key)

    def response(self, challenge: bytes) -> dict[str, Optional[str]]:
        """Sign the raw challenge bytes; the nonce is echoed as the JS SDK does (harmless for crypto)."""
        return {
            "did": self.did,
            "method": self.method,
            "signature": b64url(self.private_key.sign(challenge)),
            "challenge_nonce": challenge_nonce(challenge),
        }


class PDSSessionCredential(Credential):
    """An app-password session on ``pds_url``: the server calls ``getSession`` with ``access_jwt``."""

    method = "pds-session"
    is_token = True

    def __init__(self, did: str, pds_url: str, access_jwt: str) -> None:
        self.did = did
        self.pds_url = pds_url
        self.access_jwt = access_jwt

    def response(self, challenge: bytes) -> dict[str, Optional[str]]:
        """The token, the PDS and the challenge nonce the server demands for PDS methods."""
        return {
            "did": self.did,
            "method": self.method,
            "signature": self.access_jwt,
            "pds_url": self.pds_url,
            "challenge_nonce": challenge_nonce(challenge),
        }


def generate_dpop_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key for DPoP proofs."""
    return ec.generate_private_key(ec.SECP256R1())


def _public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big"))}


def make_dpop_proof(key: ec.EllipticCurvePrivateKey, htm: str, htu: str, *, nonce: Optional[str] = None,
                    access_token: Optional[str] = None, iat: Optional[int] = None,
                    jti: Optional[str] = None) -> str:
    """A DPoP proof (RFC 9449) as compact JWS, in the format of client-protocol.md §5.6.

    Header ``{"typ":"dpop+jwt","alg":"ES256","jwk":{…}}``; payload ``jti, htm, htu, iat`` plus
    ``nonce`` and ``ath`` (base64url SHA-256 of the access token) when given; the signature is
    the 64-byte P-256 ``r‖s``.
    """
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("DPoP proofs here use ES256: the key must be P-256")
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": _public_jwk(key)}
    payload: dict[str, Any] = {
        "jti": jti if jti is not None else b64url(os.urandom(16)),
        "htm": htm,
        "htu": htu,
        "iat": int(time.time()) if iat is None else int(iat),
    }
    if nonce is not None:
        payload["nonce"] = nonce
    if access_token is not None:
        payload["ath"] = b64url(hashlib.sha256(access_token.encode("ascii")).digest())
    signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + b64url(json.dumps(payload, separators=(",", ":")).encode()))
    r, s = decode_dss_signature(key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


class PDSOAuthCredential(Credential):
    """A DPoP-bound OAuth access token for ``did`` on ``pds_url``.

    Each answer carries a new proof for ``GET <pds_url>/xrpc/com.atproto.server.getSession``
    signed with ``dpop_key`` (P-256; generated when omitted, but a real token is bound to the
    key it was issued for). :meth:`dpop_nonce` records the nonce the PDS demands; the next proof
    includes it. ``now`` supplies ``iat`` (defaults to the wall clock).
    """

    method = "pds-oauth"
    is_token = True

    def __init__(self, did: str, pds_url: str, access_token: str,
                 dpop_key: Optional[ec.EllipticCurvePrivateKey] = None, nonce: Optional[str] = None,
                 now: Optional[Callable[[], float]] = None) -> None:
        self.did = did
        self.pds_url = pds_url
        self.access_token = access_token
        self.dpop_key = dpop_key if dpop_key is not None else generate_dpop_key()
        self.nonce = nonce
        self.nonces_received = 0
        self._now = now or time.time

    @property
    def htu(self) -> str:
        """The URL the server will call with the proof."""
        return self.pds_url.rstrip("/") + GET_SESSION_PATH

    def dpop_nonce(self, nonce: str) -> None:
        """Remember the PDS's nonce for the next proof."""
        self.nonce = nonce
        self.nonces_received += 1

    def proof(self) -> str:
        """A fresh DPoP proof for the server's ``getSession`` call."""
        return make_dpop_proof(self.dpop_key, "GET", self.htu, nonce=self.nonce, access_token=self.access_token,
                               iat=int(self._now()))

    def response(self, challenge: bytes) -> dict[str, Optional[str]]:
        """Token, PDS, challenge nonce and a new DPoP proof."""
        return {
            "did": self.did,
            "method": self.method,
            "signature": self.access_token,
            "pds_url": self.pds_url,
            "challenge_nonce": challenge_nonce(challenge),
            "dpop_proof": self.proof(),
        }
