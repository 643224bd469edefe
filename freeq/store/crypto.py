"""AES-256-GCM encryption of stored history, bound to the stored row's identity.

Two payload formats exist (see docs/persistence.md): format 1, one message body per row with
``(msgid, target)`` as associated data (schema v1, kept readable after the upgrade), and format 2,
one chunk of a conversation's messages per row with the conversation and the chunk's msgids as
associated data.
"""
from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class DecryptionError(Exception):
    """A stored row does not decrypt under the key (wrong key, tampering, or a swapped row)."""


def _aad(msgid: str, target: str) -> bytes:
    return b"freeq-msg-v1\0" + msgid.encode() + b"\0" + target.encode()


def chunk_aad(target: str, msgids: str) -> bytes:
    """Associated data of a format-2 chunk: its conversation and its space-separated msgids, in order."""
    return b"freeq-chunk-v2\0" + target.encode() + b"\0" + msgids.encode()


class MessageCipher:
    """Encrypts each stored row with a fresh random nonce and the row's identity as associated
    data, so a payload moved to another row or conversation fails to decrypt.
    """

    __slots__ = ("_aead", "fingerprint")

    def __init__(self, key: bytes, fingerprint: str) -> None:
        if len(key) != 32:
            raise ValueError("AES-256 key must be 32 bytes")
        self._aead = AESGCM(key)
        self.fingerprint = fingerprint

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Return ``nonce || ciphertext || tag`` of ``plaintext`` bound to ``aad``."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Inverse of :meth:`seal`; raises :class:`DecryptionError`."""
        if len(blob) < NONCE_BYTES + 16:
            raise DecryptionError("stored message is truncated")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError("stored message does not decrypt under this key") from None

    def encrypt(self, plaintext: bytes, msgid: str, target: str) -> bytes:
        """Format 1: one message body bound to ``(msgid, target)``."""
        return self.seal(plaintext, _aad(msgid, target))

    def decrypt(self, blob: bytes, msgid: str, target: str) -> bytes:
        """Inverse of :meth:`encrypt`; raises :class:`DecryptionError`."""
        return self.open(blob, _aad(msgid, target))

    def encrypt_chunk(self, plaintext: bytes, target: str, msgids: str) -> bytes:
        """Format 2: one chunk of ``target``'s messages bound to the conversation and its msgids."""
        return self.seal(plaintext, chunk_aad(target, msgids))

    def decrypt_chunk(self, blob: bytes, target: str, msgids: str) -> bytes:
        """Inverse of :meth:`encrypt_chunk`; raises :class:`DecryptionError`."""
        return self.open(blob, chunk_aad(target, msgids))
