"""AT Protocol public keys: Multikey (multibase + multicodec) encoding and signature checks.

Three key types are supported, as atproto and ``did:plc`` allow:

========== ============================ ================ ===========================
kind       multicodec (varint bytes)    did:key prefix   signature
========== ============================ ================ ===========================
ed25519    ``0xed`` (``ed 01``)         ``z6Mk``         pure Ed25519 (RFC 8032), 64 bytes
secp256k1  ``0xe7`` (``e7 01``)         ``zQ3s``         ECDSA-SHA256, compact ``r‖s``, low-S
p256       ``0x1200`` (``80 24``)       ``zDn``          ECDSA-SHA256, compact ``r‖s``, low-S
========== ============================ ================ ===========================

Decisions:

* Only multibase ``z`` (base58btc) is accepted; the codec is implemented here (no dependency).
* EC public keys are SEC1 points; compressed (33 bytes) is canonical and what
  :func:`encode_multibase_key` writes, uncompressed (65 bytes) is accepted on input and normalised
  to the compressed form, so two spellings of one key compare equal.
* ECDSA verification demands exactly 64 bytes ``r‖s`` with ``1 <= r < n`` and ``1 <= s <= n/2``
  (atproto's low-S rule, for P-256 as well as secp256k1). DER signatures are refused (wrong length).
  The message is hashed with SHA-256 by the verifier.
* :meth:`PrivateKey.sign` always produces low-S compact signatures, so what we sign we accept.
* :func:`public_key_from_jwk` reads ``publicKeyJwk`` (EC P-256 / secp256k1, OKP Ed25519) for DID
  documents that use it; private members of a JWK are ignored.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from nacl.bindings import crypto_core_ed25519_is_valid_point, crypto_sign_open
from nacl.exceptions import BadSignatureError

ED25519 = "ed25519"
SECP256K1 = "secp256k1"
P256 = "p256"
KINDS = (ED25519, SECP256K1, P256)

# Multicodec codes as unsigned varints, as they prefix the key bytes.
_PREFIX = {
    ED25519: b"\xed\x01",
    SECP256K1: b"\xe7\x01",
    P256: b"\x80\x24",
}
_CURVES: dict[str, ec.EllipticCurve] = {SECP256K1: ec.SECP256K1(), P256: ec.SECP256R1()}
# Group orders, for the range and low-S checks.
_ORDER = {
    SECP256K1: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    P256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}
# Ed25519: the group order L (a canonical S is < L) and the field prime p. The y coordinates of the
# eight small-order points (identity y=1, order 2 y=p-1, order 4 y=0, and the two order-8 values);
# an R whose y (sign bit cleared, reduced mod p to catch non-canonical encodings) is one of them
# makes the verification equation hold for any message once S = 0 and the key is small-order too.
_ED25519_L = 2**252 + 27742317777372353535851937790883648493
_ED25519_P = 2**255 - 19
_ED25519_SMALL_ORDER_Y = frozenset((
    0, 1, _ED25519_P - 1,
    int.from_bytes(bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little"),
    int.from_bytes(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little"),
))
# A base58 Multikey is about 50 characters; bound the (quadratic) big-integer conversion.
_MAX_MULTIBASE_CHARS = 256

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b58encode(data: bytes) -> str:
    """base58btc (Bitcoin alphabet) encoding; leading zero bytes become ``1``."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, rem = divmod(n, 58)
        out.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; raises ``ValueError`` on a character outside the alphabet."""
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise ValueError("invalid base58btc character") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def _b64url_nopad(text: str) -> bytes:
    """Strict base64url without padding (JWK members); raises ``ValueError``."""
    if not isinstance(text, str) or "=" in text or len(text) % 4 == 1:
        raise ValueError("not base64url without padding")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64url without padding") from None


@dataclass(frozen=True)
class PublicKey:
    """A validated public key: ``kind`` in :data:`KINDS`, ``raw`` the 32-byte Ed25519 key or the
    33-byte compressed SEC1 point (65-byte uncompressed input is normalised).

    Construction raises ``ValueError`` for an unknown kind or bytes that are not a valid key.
    """

    kind: str
    raw: bytes

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unsupported key type {self.kind!r}")
        if not isinstance(self.raw, bytes):
            raise ValueError("key bytes must be bytes")
        if self.kind == ED25519:
            if len(self.raw) != 32:
                raise ValueError("Ed25519 public key must be 32 bytes")
            if not ed25519_key_is_strong(self.raw):
                raise ValueError("Ed25519 public key is small-order, non-canonical or not on the curve")
            return
        if len(self.raw) not in (33, 65):
            raise ValueError("EC public key must be a 33- or 65-byte SEC1 point")
        try:
            point = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[self.kind], self.raw)
        except ValueError:
            raise ValueError(f"not a point on {self.kind}") from None
        compressed = point.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        object.__setattr__(self, "raw", compressed)

    @property
    def multibase(self) -> str:
        """The Multikey text (``z`` + base58btc of multicodec prefix and key bytes)."""
        return encode_multibase_key(self.kind, self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.kind}, {self.multibase})"


def decode_multibase_key(text: str) -> PublicKey:
    """Decode a Multikey ``publicKeyMultibase`` / did:key value; raises ``ValueError``."""
    if not isinstance(text, str) or not text.startswith("z"):
        raise ValueError("key is not multibase base58btc ('z')")
    if len(text) > _MAX_MULTIBASE_CHARS:
        raise ValueError("multibase key too long")
    data = b58decode(text[1:])
    for kind, prefix in _PREFIX.items():
        if data.startswith(prefix):
            return PublicKey(kind, data[len(prefix):])
    raise ValueError("unsupported multicodec key type")


def encode_multibase_key(kind: str, raw: bytes) -> str:
    """Encode a public key as Multikey text; raises ``ValueError`` for an invalid key."""
    key = PublicKey(kind, raw)
    return "z" + b58encode(_PREFIX[key.kind] + key.raw)


def public_key_from_jwk(jwk: Any) -> PublicKey:
    """Read a public JWK (``EC`` P-256/secp256k1 or ``OKP`` Ed25519); raises ``ValueError``."""
    if not isinstance(jwk, dict):
        raise ValueError("JWK must be an object")
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "OKP" and crv == "Ed25519":
        return PublicKey(ED25519, _b64url_nopad(jwk.get("x", "")))
    if kty == "EC" and crv in ("P-256", "secp256k1"):
        x, y = _b64url_nopad(jwk.get("x", "")), _b64url_nopad(jwk.get("y", ""))
        if len(x) != 32 or len(y) != 32:
            raise ValueError("EC JWK coordinates must be 32 bytes")
        return PublicKey(P256 if crv == "P-256" else SECP256K1, b"\x04" + x + y)
    raise ValueError("unsupported JWK key type")


def did_key(public: PublicKey) -> str:
    """The ``did:key`` identifier of a public key."""
    return "did:key:" + public.multibase


def public_key_from_did_key(did: str) -> PublicKey:
    """The key a ``did:key:z...`` identifier names; raises ``ValueError``."""
    if not isinstance(did, str) or not did.startswith("did:key:"):
        raise ValueError("not a did:key")
    return decode_multibase_key(did[len("did:key:"):])


def ed25519_key_is_strong(raw: bytes) -> bool:
    """Whether ``raw`` is a canonical Ed25519 point in the prime-order subgroup (libsodium's check:
    the eight small-order points, non-canonical encodings and mixed-order points are refused)."""
    return len(raw) == 32 and bool(crypto_core_ed25519_is_valid_point(raw))


def strict_verify_ed25519(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Strict Ed25519 verification, the one check every freeq path uses. Never raises.

    On top of RFC 8032 it refuses a small-order / non-canonical / mixed-order public key, a
    small-order R (also in non-canonical encoding) and a non-canonical S (S >= L): with those, a
    signature can verify for any message (the identity key with R = identity, S = 0) or be
    malleated. OpenSSL (``cryptography``) accepts the identity-key forgery, so it is not used here.
    """
    if not isinstance(public_key, bytes) or not isinstance(signature, bytes) or not isinstance(message, bytes):
        return False
    if len(public_key) != 32 or len(signature) != 64:
        return False
    if int.from_bytes(signature[32:], "little") >= _ED25519_L:
        return False
    r_y = int.from_bytes(signature[:32], "little") & ((1 << 255) - 1)
    if r_y >= _ED25519_P:
        r_y -= _ED25519_P
    if r_y in _ED25519_SMALL_ORDER_Y:
        return False
    if not crypto_core_ed25519_is_valid_point(public_key):
        return False
    try:
        crypto_sign_open(signature + message, public_key)
        return True
    except (BadSignatureError, ValueError, TypeError):
        return False


def verify_signature(key: PublicKey, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid signature of ``message`` under ``key``. Never raises.

    Ed25519: pure Ed25519, 64 bytes. ECDSA kinds: SHA-256 of ``message``, 64-byte ``r‖s`` with
    low S; DER and high-S signatures are refused.
    """
    if not isinstance(signature, bytes) or len(signature) != 64:
        return False
    try:
        if key.kind == ED25519:
            return strict_verify_ed25519(key.raw, signature, message)
        order = _ORDER[key.kind]
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (1 <= r < order and 1 <= s <= order // 2):
            return False
        point = ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[key.kind], key.raw)
        point.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError, KeyError, TypeError):
        return False


_CryptoPrivate = Union[ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey]


class PrivateKey:
    """A signing key of one of :data:`KINDS` (used by clients and tests; the server never signs
    challenges). Signatures are in the format :func:`verify_signature` accepts.
    """

    __slots__ = ("kind", "_key")

    def __init__(self, kind: str, key: _CryptoPrivate) -> None:
        if kind not in KINDS:
            raise ValueError(f"unsupported key type {kind!r}")
        self.kind = kind
        self._key = key

    @classmethod
    def from_bytes(cls, kind: str, data: bytes) -> "PrivateKey":
        """Load a key from :meth:`to_bytes` output (32 bytes: Ed25519 seed or EC scalar)."""
        if kind not in KINDS:
            raise ValueError(f"unsupported key type {kind!r}")
        if not isinstance(data, bytes) or len(data) != 32:
            raise ValueError("private key must be 32 bytes")
        if kind == ED25519:
            return cls(kind, ed25519.Ed25519PrivateKey.from_private_bytes(data))
        scalar = int.from_bytes(data, "big")
        if not 1 <= scalar < _ORDER[kind]:
            raise ValueError("private scalar out of range")
        return cls(kind, ec.derive_private_key(scalar, _CURVES[kind]))

    def to_bytes(self) -> bytes:
        """The 32-byte secret (Ed25519 seed, or the big-endian EC scalar)."""
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.private_bytes_raw()
        return self._key.private_numbers().private_value.to_bytes(32, "big")

    def public_key(self) -> PublicKey:
        """The matching :class:`PublicKey`."""
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return PublicKey(ED25519, self._key.public_key().public_bytes_raw())
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        return PublicKey(self.kind, raw)

    def sign(self, message: bytes) -> bytes:
        """Sign ``message``: 64-byte Ed25519 signature, or low-S compact ``r‖s`` ECDSA-SHA256."""
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            return self._key.sign(message)
        r, s = decode_dss_signature(self._key.sign(message, ec.ECDSA(hashes.SHA256())))
        order = _ORDER[self.kind]
        if s > order // 2:
            s = order - s
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def __repr__(self) -> str:
        return f"PrivateKey({self.kind}, public={self.public_key().multibase})"


def generate_private_key(kind: str) -> PrivateKey:
    """A fresh random signing key of ``kind`` (one of :data:`KINDS`)."""
    if kind == ED25519:
        return PrivateKey(kind, ed25519.Ed25519PrivateKey.generate())
    if kind not in _CURVES:
        raise ValueError(f"unsupported key type {kind!r}")
    return PrivateKey(kind, ec.generate_private_key(_CURVES[kind]))


__all__ = [
    "ED25519", "SECP256K1", "P256", "KINDS", "PublicKey", "PrivateKey", "b58encode", "b58decode",
    "decode_multibase_key", "encode_multibase_key", "public_key_from_jwk", "did_key",
    "public_key_from_did_key", "verify_signature", "generate_private_key",
]
