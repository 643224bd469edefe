"""AES-256-GCM encryption of stored message bodies, bound to the row's identity."""
from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class DecryptionError(Exception):
    """A stored row does not decrypt under the key (wrong key, tampering, or a swapped row)."""


def _aad(msgid: str, target: str) -> bytes:
    return b"freeq-msg-v1\0" + msgid.encode() + b"\0" + target.encode()


class MessageCipher:
    """Encrypts one message body per row with a fresh random nonce; the (msgid, target) pair is
    associated data, so a body moved to another row or conversation fails to decrypt.
    """

    __slots__ = ("_aead", "fingerprint")

    def __init__(self, key: bytes, fingerprint: str) -> None:
        if len(key) != 32:
            raise ValueError("AES-256 key must be 32 bytes")
        self._aead = AESGCM(key)
        self.fingerprint = fingerprint

    def encrypt(self, plaintext: bytes, msgid: str, target: str) -> bytes:
        """Return ``nonce || ciphertext || tag``."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, _aad(msgid, target))

    def decrypt(self, blob: bytes, msgid: str, target: str) -> bytes:
        """Inverse of :meth:`encrypt`; raises :class:`DecryptionError`."""
        if len(blob) < NONCE_BYTES + 16:
            raise DecryptionError("stored message is truncated")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(msgid, target))
        except InvalidTag:
            raise DecryptionError("stored message does not decrypt under this key") from None
