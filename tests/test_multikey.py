"""Multikey encoding and signature checks for Ed25519, secp256k1 and P-256 (pure units)."""
from __future__ import annotations

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from twisted.trial import unittest

from freeq.auth.multikey import (
    ED25519,
    KINDS,
    P256,
    SECP256K1,
    PrivateKey,
    PublicKey,
    b58decode,
    b58encode,
    decode_multibase_key,
    did_key,
    encode_multibase_key,
    generate_private_key,
    public_key_from_did_key,
    public_key_from_jwk,
    verify_signature,
)
from tests.atproto_servers import b64url

ORDER = {
    SECP256K1: 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
    P256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
}
ED25519_L = 2**252 + 27742317777372353535851937790883648493
MESSAGE = b'{"session_id":"s1","nonce":"abc","timestamp":1700000000}'

# Vectors from the did:key method specification.
VECTORS = {
    ED25519: "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
    SECP256K1: "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
    P256: "did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169",
}


def _high_s(kind: str, signature: bytes) -> bytes:
    s = int.from_bytes(signature[32:], "big")
    return signature[:32] + (ORDER[kind] - s).to_bytes(32, "big")


class Base58Tests(unittest.TestCase):
    """The built-in base58btc codec."""

    def test_known_vector_and_leading_zeros(self) -> None:
        """Encodes a known vector, keeps leading zero bytes as '1', and round-trips."""
        self.assertEqual(b58encode(b"Hello World!"), "2NEpo7TZRRrLZSi2U")
        self.assertEqual(b58encode(b"\0\0\x01"), "112")
        for data in (b"", b"\0", b"\0\0\xff\xfe", bytes(range(40))):
            self.assertEqual(b58decode(b58encode(data)), data)

    def test_invalid_characters(self) -> None:
        """Characters outside the Bitcoin alphabet (0, O, I, l, +) are refused."""
        for bad in ("0abc", "abcO", "Iabc", "abl", "ab+"):
            self.assertRaises(ValueError, b58decode, bad)


class MultibaseTests(unittest.TestCase):
    """Decoding and encoding Multikey values and did:key identifiers."""

    def test_spec_vectors_round_trip(self) -> None:
        """The did:key spec vectors decode to the right kind and re-encode identically."""
        for kind, did in VECTORS.items():
            key = public_key_from_did_key(did)
            self.assertEqual(key.kind, kind)
            self.assertEqual(did_key(key), did)
            self.assertEqual(encode_multibase_key(kind, key.raw), did[len("did:key:"):])

    def test_generated_keys_have_expected_prefixes(self) -> None:
        """Generated keys encode with the usual did:key prefixes and decode back."""
        prefixes = {ED25519: "did:key:z6Mk", SECP256K1: "did:key:zQ3s", P256: "did:key:zDn"}
        for kind in KINDS:
            public = generate_private_key(kind).public_key()
            self.assertTrue(did_key(public).startswith(prefixes[kind]))
            self.assertEqual(decode_multibase_key(public.multibase), public)

    def test_uncompressed_point_is_normalised(self) -> None:
        """A 65-byte uncompressed EC key equals its compressed form."""
        for kind, curve in ((SECP256K1, ec.SECP256K1()), (P256, ec.SECP256R1())):
            pk = ec.generate_private_key(curve).public_key()
            full = pk.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
            short = pk.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
            self.assertEqual(PublicKey(kind, full), PublicKey(kind, short))
            self.assertEqual(len(PublicKey(kind, full).raw), 33)

    def test_bad_multibase_rejected(self) -> None:
        """Wrong multibase prefix, bad base58, unknown codec, bad lengths and off-curve points fail."""
        ed = generate_private_key(ED25519).public_key().multibase
        k1 = generate_private_key(SECP256K1).public_key()
        bad = [
            "",
            "u" + ed[1:],                                          # base64url multibase
            ed[:5] + "0" + ed[6:],                                 # '0' is not base58
            "z" + b58encode(b"\x12\x00" + b"\1" * 32),             # unknown multicodec
            "z" + b58encode(b"\xed\x01" + b"\1" * 31),             # Ed25519 too short
            "z" + b58encode(b"\xe7\x01" + b"\x02" + b"\xff" * 32), # x not on secp256k1
            "z" + b58encode(b"\x80\x24" + k1.raw[:20]),            # truncated point
            "z" + "2" * 300,                                       # absurdly long
        ]
        for text in bad:
            self.assertRaises(ValueError, decode_multibase_key, text)
        self.assertRaises(ValueError, public_key_from_did_key, "did:web:example.com")
        self.assertRaises(ValueError, PublicKey, "rsa", b"\0" * 32)

    def test_jwk_keys(self) -> None:
        """EC (P-256, secp256k1) and OKP Ed25519 JWKs give the same keys as their Multikeys."""
        for kind, crv in ((P256, "P-256"), (SECP256K1, "secp256k1")):
            pk = PublicKey(kind, generate_private_key(kind).public_key().raw)
            curve = ec.SECP256R1() if kind == P256 else ec.SECP256K1()
            nums = ec.EllipticCurvePublicKey.from_encoded_point(curve, pk.raw).public_numbers()
            jwk = {"kty": "EC", "crv": crv, "x": b64url(nums.x.to_bytes(32, "big")),
                   "y": b64url(nums.y.to_bytes(32, "big"))}
            self.assertEqual(public_key_from_jwk(jwk), pk)
        ed = generate_private_key(ED25519).public_key()
        self.assertEqual(public_key_from_jwk({"kty": "OKP", "crv": "Ed25519", "x": b64url(ed.raw)}), ed)
        for bad in ({"kty": "RSA", "n": "AQAB"}, {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
                    {"kty": "OKP", "crv": "Ed25519", "x": b64url(ed.raw) + "=="}, "not a dict"):
            self.assertRaises(ValueError, public_key_from_jwk, bad)


class SignatureTests(unittest.TestCase):
    """Signing and verifying with each key type."""

    def test_sign_verify_each_kind(self) -> None:
        """A signature from each key type verifies under its public key and is 64 bytes."""
        for kind in KINDS:
            key = generate_private_key(kind)
            signature = key.sign(MESSAGE)
            self.assertEqual(len(signature), 64)
            self.assertTrue(verify_signature(key.public_key(), MESSAGE, signature), kind)

    def test_wrong_key_or_message_rejected(self) -> None:
        """A signature fails under another key of the same type, another type, or another message."""
        for kind in KINDS:
            key = generate_private_key(kind)
            signature = key.sign(MESSAGE)
            self.assertFalse(verify_signature(generate_private_key(kind).public_key(), MESSAGE, signature))
            self.assertFalse(verify_signature(key.public_key(), MESSAGE + b" ", signature))
            other_kind = next(k for k in KINDS if k != kind)
            self.assertFalse(verify_signature(generate_private_key(other_kind).public_key(), MESSAGE, signature))

    def test_high_s_rejected(self) -> None:
        """The high-S twin of a valid ECDSA signature is refused, though the curve math accepts it."""
        for kind, curve in ((SECP256K1, ec.SECP256K1()), (P256, ec.SECP256R1())):
            key = generate_private_key(kind)
            signature = key.sign(MESSAGE)
            twin = _high_s(kind, signature)
            self.assertFalse(verify_signature(key.public_key(), MESSAGE, twin), kind)
            # The twin is mathematically valid: only our low-S rule rejects it.
            pk = ec.EllipticCurvePublicKey.from_encoded_point(curve, key.public_key().raw)
            r, s = int.from_bytes(twin[:32], "big"), int.from_bytes(twin[32:], "big")
            pk.verify(encode_dss_signature(r, s), MESSAGE, ec.ECDSA(hashes.SHA256()))

    def test_signing_always_produces_low_s(self) -> None:
        """PrivateKey.sign normalises S into the lower half for both curves."""
        for kind in (SECP256K1, P256):
            key = generate_private_key(kind)
            for i in range(40):
                s = int.from_bytes(key.sign(MESSAGE + bytes([i]))[32:], "big")
                self.assertLessEqual(s, ORDER[kind] // 2)

    def test_der_signature_rejected(self) -> None:
        """A DER-encoded ECDSA signature of the right message is refused."""
        for kind, curve in ((SECP256K1, ec.SECP256K1()), (P256, ec.SECP256R1())):
            raw = ec.generate_private_key(curve)
            der = raw.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
            r, s = decode_dss_signature(der)
            if s > ORDER[kind] // 2:
                der = encode_dss_signature(r, ORDER[kind] - s)
            public = PublicKey(kind, raw.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint))
            self.assertFalse(verify_signature(public, MESSAGE, der))
            compact = r.to_bytes(32, "big") + min(s, ORDER[kind] - s).to_bytes(32, "big")
            self.assertTrue(verify_signature(public, MESSAGE, compact))

    def test_out_of_range_and_malformed_signatures(self) -> None:
        """Zero or out-of-range r/s, wrong lengths, non-canonical Ed25519 S and non-bytes fail."""
        for kind in (SECP256K1, P256):
            key = generate_private_key(kind)
            signature = key.sign(MESSAGE)
            public = key.public_key()
            self.assertFalse(verify_signature(public, MESSAGE, b"\0" * 32 + signature[32:]))
            self.assertFalse(verify_signature(public, MESSAGE, signature[:32] + b"\0" * 32))
            self.assertFalse(verify_signature(public, MESSAGE, ORDER[kind].to_bytes(32, "big") + signature[32:]))
            self.assertFalse(verify_signature(public, MESSAGE, signature[:63]))
            self.assertFalse(verify_signature(public, MESSAGE, signature + b"\0"))
        ed = generate_private_key(ED25519)
        signature = ed.sign(MESSAGE)
        s = int.from_bytes(signature[32:], "little") + ED25519_L
        self.assertFalse(verify_signature(ed.public_key(), MESSAGE, signature[:32] + s.to_bytes(32, "little")))
        self.assertFalse(verify_signature(ed.public_key(), MESSAGE, b64url(signature)))  # type: ignore[arg-type]


class PrivateKeyTests(unittest.TestCase):
    """Private key serialisation for clients."""

    def test_round_trip(self) -> None:
        """to_bytes/from_bytes preserve the key: same public key, signatures still verify."""
        for kind in KINDS:
            key = generate_private_key(kind)
            data = key.to_bytes()
            self.assertEqual(len(data), 32)
            again = PrivateKey.from_bytes(kind, data)
            self.assertEqual(again.public_key(), key.public_key())
            self.assertTrue(verify_signature(key.public_key(), MESSAGE, again.sign(MESSAGE)))

    def test_invalid_private_keys(self) -> None:
        """Wrong lengths, out-of-range scalars and unknown kinds are refused."""
        self.assertRaises(ValueError, PrivateKey.from_bytes, ED25519, b"\1" * 31)
        self.assertRaises(ValueError, PrivateKey.from_bytes, SECP256K1, b"\0" * 32)
        self.assertRaises(ValueError, PrivateKey.from_bytes, P256, b"\xff" * 32)
        self.assertRaises(ValueError, PrivateKey.from_bytes, "rsa", b"\1" * 32)
        self.assertRaises(ValueError, generate_private_key, "rsa")
