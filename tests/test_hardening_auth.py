"""Issue #10 items 8 and 9: strict Ed25519 verification and AT Protocol handle syntax."""
from __future__ import annotations

from nacl.signing import SigningKey
from twisted.trial import unittest

from freeq.auth import multikey
from freeq.auth.did import valid_handle
from freeq.signing import MessageSigner, canonical, verify

_IDENTITY = b"\x01" + b"\x00" * 31
_SMALL_ORDER = [
    _IDENTITY,
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    b"\x00" * 32,
    b"\x00" * 31 + b"\x80",
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
]


class StrictEd25519Tests(unittest.TestCase):
    """Small-order keys, small-order R and non-canonical S are refused; valid signatures pass."""

    def test_identity_key_forgery_refused(self) -> None:
        """The identity key with R = identity, S = 0 verifies for any message under plain RFC 8032."""
        key = multikey.PublicKey.__new__(multikey.PublicKey)
        object.__setattr__(key, "kind", multikey.ED25519)
        object.__setattr__(key, "raw", _IDENTITY)
        self.assertFalse(multikey.verify_signature(key, b"any challenge", _IDENTITY + b"\x00" * 32))

    def test_small_order_did_key_refused(self) -> None:
        """A did:key naming any of the eight small-order points does not decode."""
        for point in _SMALL_ORDER:
            did = "did:key:z" + multikey.b58encode(b"\xed\x01" + point)
            self.assertRaises(ValueError, multikey.public_key_from_did_key, did)

    def test_small_order_r_and_large_s_refused(self) -> None:
        """A small-order R and an S >= L are refused; the same signature with canonical S passes."""
        signing = SigningKey.generate()
        public = bytes(signing.verify_key)
        sig = signing.sign(b"msg").signature
        self.assertTrue(multikey.strict_verify_ed25519(public, sig, b"msg"))
        big_s = (int.from_bytes(sig[32:], "little") + multikey._ED25519_L).to_bytes(32, "little")
        self.assertFalse(multikey.strict_verify_ed25519(public, sig[:32] + big_s, b"msg"))
        for point in _SMALL_ORDER:
            self.assertFalse(multikey.strict_verify_ed25519(public, point + b"\x00" * 32, b"msg"))

    def test_message_signatures_strict(self) -> None:
        """freeq.signing.verify uses the strict check: S + L is refused, the original accepted."""
        signer = MessageSigner(b"\x07" * 32)
        tag = signer.sign("did:key:x", "#c", "hi", 1)
        self.assertTrue(verify(signer.public_key, tag, "did:key:x", "#c", "hi", 1))
        sig = SigningKey(b"\x07" * 32).sign(canonical("did:key:x", "#c", "hi", 1)).signature
        big_s = (int.from_bytes(sig[32:], "little") + multikey._ED25519_L).to_bytes(32, "little")
        from freeq.signing import b64url
        self.assertFalse(verify(signer.public_key, b64url(sig[:32] + big_s), "did:key:x", "#c", "hi", 1))


class HandleSyntaxTests(unittest.TestCase):
    """Handles follow the AT Protocol syntax exactly; CR/LF and non-ASCII never pass."""

    def test_trailing_newline_refused(self) -> None:
        """``re.match`` with ``$`` accepted a handle ending in ``\\n``."""
        self.assertIsNone(valid_handle("alice.test\n"))
        self.assertIsNone(valid_handle("alice.test\r\n:evil 381 x :owned"))

    def test_non_ascii_refused(self) -> None:
        """KELVIN SIGN lower-cases to ASCII 'k'; it must not turn into a valid handle."""
        self.assertIsNone(valid_handle("\u212aate.test"))

    def test_valid_normalised(self) -> None:
        """A valid handle is returned lower-cased."""
        self.assertEqual(valid_handle("Alice.Bsky.Social"), "alice.bsky.social")
        self.assertIsNone(valid_handle("alice.1com"))
        self.assertIsNone(valid_handle("-a.test"))


class WireGuardTests(unittest.TestCase):
    """The line builders never emit CR, LF or NUL inside a line."""

    def test_crlf_in_trailing_refused(self) -> None:
        """A handle with CRLF in a 320 trailing parameter would forge a second line."""
        from freeq.irc.parser import UnsafeLineError, build, build_text
        forged = "alice.test\r\n:irc 381 bob :You are now an IRC operator"
        self.assertRaises(UnsafeLineError, build, "irc", "320", "bob", "alice", f"AT Protocol handle: {forged}")
        self.assertRaises(UnsafeLineError, build_text, "irc", "NOTICE", "bob", "a\nb")
        self.assertRaises(UnsafeLineError, build, "irc", "PRIVMSG", "bob", "a\0b")
        self.assertRaises(ValueError, build, "irc", "MODE", "a b", "x")
        self.assertEqual(build("irc", "PING", "x y"), b":irc PING :x y\r\n")
