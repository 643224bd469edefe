"""Key files (formats, permissions, refusal to replace), message encryption and message signatures."""
from __future__ import annotations

import base64
import binascii
import os
import stat

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from freeq import signing
from freeq.store import keys
from freeq.store.crypto import DecryptionError, MessageCipher


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class KeyFileTests(unittest.TestCase):
    """Generation, loading, tightening and refusal of key files."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def _logged_text(self) -> str:
        """Everything logged so far: formatted messages and every field value."""
        parts = []
        for e in self.events:
            parts.append(formatEvent(e))
            parts.extend(repr(v) for k, v in e.items() if not k.startswith("log_"))
        return "\n".join(parts)

    def assert_no_key_material(self, key: bytes) -> None:
        text = self._logged_text()
        for form in (key.hex(), key.hex().upper(), repr(key), base64.b64encode(key).decode(),
                     signing.b64url(key)):
            self.assertNotIn(form, text)

    def test_raw_keys_generated_0600_with_32_bytes(self) -> None:
        """Each raw key file is created on first use: exactly 32 random bytes, mode 0600, reloaded unchanged."""
        for name in (keys.MSG_SIGNING_KEY, keys.VERIFIER_SIGNING_KEY, keys.DB_ENCRYPTION_KEY):
            key = keys.load_raw_key(self.dir, name)
            path = os.path.join(self.dir, name)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), key)
            self.assertEqual(len(key), 32)
            self.assertEqual(_mode(path), 0o600)
            self.assertEqual(keys.load_raw_key(self.dir, name), key)
            self.assert_no_key_material(key)
        a = keys.load_raw_key(self.dir, keys.MSG_SIGNING_KEY)
        b = keys.load_raw_key(self.dir, keys.DB_ENCRYPTION_KEY)
        self.assertNotEqual(a, b)
        self.assertFalse([n for n in os.listdir(self.dir) if ".tmp" in n], "temporary files left behind")
        self.assertTrue(any("Generated key file" in formatEvent(e) for e in self.events))

    def test_iroh_key_is_64_lowercase_hex_without_newline(self) -> None:
        """iroh-key.secret is 64 lowercase hex characters and no newline, 0600, decoding to the 32-byte key."""
        key = keys.load_iroh_key(self.dir)
        path = os.path.join(self.dir, keys.IROH_KEY)
        with open(path, "rb") as f:
            data = f.read()
        self.assertRegex(data.decode("ascii"), r"\A[0-9a-f]{64}\Z")
        self.assertEqual(binascii.unhexlify(data), key)
        self.assertEqual(_mode(path), 0o600)
        self.assertEqual(keys.load_iroh_key(self.dir), key)
        self.assert_no_key_material(key)

    def test_missing_key_not_created_when_asked_not_to(self) -> None:
        """With create=False a missing key file is an error, and nothing is written."""
        with self.assertRaises(keys.KeyFileError) as cm:
            keys.load_raw_key(self.dir, keys.DB_ENCRYPTION_KEY, create=False)
        self.assertIn("missing", str(cm.exception))
        self.assertEqual(os.listdir(self.dir), [])

    def test_loose_permissions_tightened_with_warning(self) -> None:
        """A key file readable by group or others is chmod'ed to 0600 and a warning names it, without the key."""
        path = os.path.join(self.dir, keys.MSG_SIGNING_KEY)
        key = os.urandom(32)
        with open(path, "wb") as f:
            f.write(key)
        os.chmod(path, 0o644)
        self.assertEqual(keys.load_raw_key(self.dir, keys.MSG_SIGNING_KEY), key)
        self.assertEqual(_mode(path), 0o600)
        warnings = [e for e in self.events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        text = formatEvent(warnings[0])
        self.assertIn(path, text)
        self.assertIn("0o644", text)
        self.assertIn("0600", text)
        self.assert_no_key_material(key)

    def test_loose_iroh_key_tightened(self) -> None:
        """The hex iroh key is tightened the same way."""
        path = os.path.join(self.dir, keys.IROH_KEY)
        key = os.urandom(32)
        with open(path, "wb") as f:
            f.write(key.hex().encode())
        os.chmod(path, 0o666)
        self.assertEqual(keys.load_iroh_key(self.dir), key)
        self.assertEqual(_mode(path), 0o600)
        self.assertTrue(any(e["log_level"].name == "warn" for e in self.events))
        self.assert_no_key_material(key)

    def test_wrong_size_refused_and_never_replaced(self) -> None:
        """A raw key of the wrong length is a one-line KeyFileError; the file is left exactly as it was."""
        for size in (0, 31, 33, 64):
            path = os.path.join(self.dir, keys.DB_ENCRYPTION_KEY)
            content = os.urandom(size)
            with open(path, "wb") as f:
                f.write(content)
            os.chmod(path, 0o600)
            with self.assertRaises(keys.KeyFileError) as cm:
                keys.load_raw_key(self.dir, keys.DB_ENCRYPTION_KEY)
            message = str(cm.exception)
            self.assertNotIn("\n", message)
            self.assertIn(path, message)
            self.assertIn(f"({size} bytes)", message)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), content)
            if content:
                self.assertNotIn(content.hex(), message)
                self.assert_no_key_material(content)

    def test_bad_hex_iroh_key_refused_and_never_replaced(self) -> None:
        """An iroh key that is not 64 hex characters is refused with one line and left unchanged."""
        path = os.path.join(self.dir, keys.IROH_KEY)
        for content in (b"zz" * 32, b"ab" * 31, b"ab" * 33, b"not a key at all"):
            with open(path, "wb") as f:
                f.write(content)
            with self.assertRaises(keys.KeyFileError) as cm:
                keys.load_iroh_key(self.dir)
            self.assertNotIn("\n", str(cm.exception))
            self.assertIn("64 hex characters", str(cm.exception))
            self.assertNotIn(content.decode(), str(cm.exception))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), content)

    def test_unwritable_directory_is_a_key_file_error(self) -> None:
        """A key that cannot be created is a KeyFileError naming the path, not a traceback."""
        blocker = os.path.join(self.dir, "not-a-dir")
        with open(blocker, "w") as f:
            f.write("x")
        with self.assertRaises(keys.KeyFileError) as cm:
            keys.load_raw_key(blocker, keys.DB_ENCRYPTION_KEY)
        self.assertIn(os.path.join(blocker, keys.DB_ENCRYPTION_KEY), str(cm.exception))

    def test_server_start_never_logs_key_material(self) -> None:
        """A full persistence start-up (keys generated, database opened, then reopened) logs no key bytes."""
        from twisted.internet import reactor

        from freeq.config import Config
        from freeq.store.service import open_persistence

        config = Config(listen=None, tls_listen=None, data_dir=self.dir)
        for _ in range(2):
            p = open_persistence(config, reactor, 1700000000)
            p.store.conn.close()
            os.close(p.lock_fd)
        self.assertTrue(any("Generated key file" in formatEvent(e) for e in self.events))
        for name in (keys.MSG_SIGNING_KEY, keys.VERIFIER_SIGNING_KEY, keys.DB_ENCRYPTION_KEY):
            with open(os.path.join(self.dir, name), "rb") as f:
                self.assert_no_key_material(f.read())

    def test_fingerprint_is_short_stable_and_distinct(self) -> None:
        """The fingerprint is 16 hex characters, stable per key, different across keys, and not the key."""
        k1, k2 = os.urandom(32), os.urandom(32)
        self.assertRegex(keys.fingerprint(k1), r"\A[0-9a-f]{16}\Z")
        self.assertEqual(keys.fingerprint(k1), keys.fingerprint(k1))
        self.assertNotEqual(keys.fingerprint(k1), keys.fingerprint(k2))
        self.assertNotIn(keys.fingerprint(k1), k1.hex())


class CipherTests(unittest.TestCase):
    """AES-256-GCM message bodies bound to (msgid, target)."""

    def setUp(self) -> None:
        self.key = os.urandom(32)
        self.cipher = MessageCipher(self.key, keys.fingerprint(self.key))

    def test_roundtrip(self) -> None:
        """A body decrypts back to itself with the same msgid and target."""
        body = "héllo wörld ☃".encode()
        blob = self.cipher.encrypt(body, "01ABC", "#chan")
        self.assertNotIn(body, blob)
        self.assertEqual(self.cipher.decrypt(blob, "01ABC", "#chan"), body)
        self.assertEqual(len(blob), 12 + len(body) + 16)

    def test_fresh_nonce_per_encryption(self) -> None:
        """Encrypting the same body twice gives different nonces and ciphertexts."""
        a = self.cipher.encrypt(b"same", "m1", "#c")
        b = self.cipher.encrypt(b"same", "m1", "#c")
        self.assertNotEqual(a[:12], b[:12])
        self.assertNotEqual(a, b)

    def test_aad_binds_msgid_and_target(self) -> None:
        """A body moved to another msgid or another conversation fails to decrypt."""
        blob = self.cipher.encrypt(b"secret", "m1", "#c")
        with self.assertRaises(DecryptionError):
            self.cipher.decrypt(blob, "m2", "#c")
        with self.assertRaises(DecryptionError):
            self.cipher.decrypt(blob, "m1", "#d")
        # The separator keeps (msgid, target) unambiguous.
        with self.assertRaises(DecryptionError):
            self.cipher.decrypt(blob, "m1#", "c")

    def test_wrong_key_and_tampering_fail(self) -> None:
        """Another key, a flipped bit or a truncated blob raise DecryptionError."""
        blob = self.cipher.encrypt(b"secret", "m1", "#c")
        other = os.urandom(32)
        with self.assertRaises(DecryptionError):
            MessageCipher(other, keys.fingerprint(other)).decrypt(blob, "m1", "#c")
        tampered = bytes([blob[0]]) + blob[1:20] + bytes([blob[20] ^ 1]) + blob[21:]
        with self.assertRaises(DecryptionError):
            self.cipher.decrypt(tampered, "m1", "#c")
        with self.assertRaises(DecryptionError):
            self.cipher.decrypt(blob[:20], "m1", "#c")

    def test_key_must_be_32_bytes(self) -> None:
        """A cipher refuses a key that is not AES-256."""
        with self.assertRaises(ValueError):
            MessageCipher(b"x" * 16, "fp")

    def test_repr_does_not_show_key(self) -> None:
        """The cipher object never shows the key in its repr."""
        self.assertNotIn(self.key.hex(), repr(self.cipher))
        self.assertNotIn(repr(self.key), repr(self.cipher))


class SigningTests(unittest.TestCase):
    """The ``+freeq.at/sig`` canonical form and Ed25519 signatures."""

    def setUp(self) -> None:
        self.seed = bytes(range(32))
        self.signer = signing.MessageSigner(self.seed)

    def test_canonical_bytes(self) -> None:
        """Canonical bytes are UTF-8 of did NUL target NUL text NUL seconds."""
        self.assertEqual(signing.canonical("did:plc:abc", "#chan", "héllo", 1700000000),
                         b"did:plc:abc\x00#chan\x00h\xc3\xa9llo\x001700000000")
        self.assertEqual(signing.canonical("d", "t", "x", 12.9), b"d\x00t\x00x\x0012")  # type: ignore[arg-type]

    def test_sign_and_verify(self) -> None:
        """A signature verifies under the signer's public key, and is 64 bytes base64url without padding."""
        sig = self.signer.sign("did:plc:abc", "#chan", "hello", 1700000000)
        self.assertRegex(sig, r"\A[A-Za-z0-9_-]{86}\Z")
        self.assertEqual(len(signing.unb64url(sig)), 64)
        self.assertTrue(signing.verify(self.signer.public_key, sig, "did:plc:abc", "#chan", "hello", 1700000000))
        self.assertEqual(len(self.signer.public_key), 32)
        self.assertRegex(self.signer.public_key_b64, r"\A[A-Za-z0-9_-]{43}\Z")
        self.assertEqual(signing.unb64url(self.signer.public_key_b64), self.signer.public_key)

    def test_known_ed25519_vector(self) -> None:
        """The public key derived from a fixed seed matches an independent Ed25519 implementation."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        expected = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)
        self.assertEqual(self.signer.public_key, expected)
        sig = signing.unb64url(self.signer.sign("did:x", "bob", "hi", 5))
        Ed25519PublicKey.from_public_bytes(expected).verify(sig, signing.canonical("did:x", "bob", "hi", 5))

    def test_tampering_fails(self) -> None:
        """Changing any signed field, the signature or the key makes verification fail."""
        args = ("did:plc:abc", "#chan", "hello", 1700000000)
        sig = self.signer.sign(*args)
        self.assertFalse(signing.verify(self.signer.public_key, sig, "did:plc:abd", "#chan", "hello", 1700000000))
        self.assertFalse(signing.verify(self.signer.public_key, sig, "did:plc:abc", "#chat", "hello", 1700000000))
        self.assertFalse(signing.verify(self.signer.public_key, sig, "did:plc:abc", "#chan", "hellO", 1700000000))
        self.assertFalse(signing.verify(self.signer.public_key, sig, "did:plc:abc", "#chan", "hello", 1700000001))
        raw = bytearray(signing.unb64url(sig))
        raw[10] ^= 1
        self.assertFalse(signing.verify(self.signer.public_key, signing.b64url(bytes(raw)), *args))
        other = signing.MessageSigner(os.urandom(32))
        self.assertFalse(signing.verify(other.public_key, sig, *args))
        self.assertFalse(signing.verify(self.signer.public_key, "!!not base64!!", *args))
        self.assertFalse(signing.verify(self.signer.public_key, sig[:40], *args))

    def test_b64url_without_padding(self) -> None:
        """b64url uses the URL alphabet without '=' and unb64url accepts padded and unpadded input."""
        data = b"\xfb\xff\xfe" + b"a"
        text = signing.b64url(data)
        self.assertEqual(text, "-__-YQ")
        self.assertNotIn("=", text)
        self.assertEqual(signing.unb64url(text), data)
        self.assertEqual(signing.unb64url(text + "=="), data)
        self.assertEqual(signing.SIG_TAG, "+freeq.at/sig")

    def test_seed_must_be_32_bytes(self) -> None:
        """A signer refuses a seed of the wrong size."""
        with self.assertRaises(ValueError):
            signing.MessageSigner(b"short")
