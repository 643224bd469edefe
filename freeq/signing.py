"""Message signatures: the reference's ``+freeq.at/sig`` canonical form, Ed25519 via PyNaCl.

Canonical bytes: UTF-8 of ``<sender_did> NUL <target> NUL <text> NUL <unix-seconds>``. The tag
value is the base64url (no padding) of the 64-byte signature. The identity layer applies this to
DID-authenticated senders; the public key is published (and old ones kept, see
:class:`freeq.store.db.Store` ``signing_keys``) so earlier signatures stay verifiable.
"""
from __future__ import annotations

import base64

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from freeq.auth.multikey import strict_verify_ed25519

SIG_TAG = "+freeq.at/sig"


def b64url(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """Decode base64url with or without padding; raises ``ValueError``."""
    pad = "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(text + pad)


def canonical(sender_did: str, target: str, text: str, timestamp: int) -> bytes:
    """The bytes that are signed."""
    return f"{sender_did}\0{target}\0{text}\0{int(timestamp)}".encode("utf-8")


class MessageSigner:
    """Signs the canonical form with the server's message-signing key."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("Ed25519 seed must be 32 bytes")
        self._key = SigningKey(seed)
        self.public_key = bytes(self._key.verify_key)

    @property
    def public_key_b64(self) -> str:
        """The public key, base64url without padding (as ``/api/v1/signing-key`` publishes it)."""
        return b64url(self.public_key)

    def sign(self, sender_did: str, target: str, text: str, timestamp: int) -> str:
        """Return the ``+freeq.at/sig`` tag value."""
        return b64url(self._key.sign(canonical(sender_did, target, text, timestamp)).signature)


def verify(public_key: bytes, signature: str, sender_did: str, target: str, text: str, timestamp: int) -> bool:
    """Whether ``signature`` (tag value) is valid for the canonical form under ``public_key``."""
    try:
        sig = unb64url(signature)
        if len(sig) != 64 or len(public_key) != 32:
            return False
        return strict_verify_ed25519(public_key, sig, canonical(sender_did, target, text, timestamp))
    except (BadSignatureError, ValueError, TypeError):
        return False
