"""Bearer secrets of the web side: single-use SASL web tokens and REST API bearer tokens.

Both are 32 random bytes (256 bits) in base64url without padding (43 characters), never derived
from a session id or anything else guessable. The stores keep only a SHA-256 of each token, so a
memory dump or a hash-timing probe does not reveal a usable token, and both are bounded in size
(the oldest tokens go first). Time comes from the injected clock.
"""
from __future__ import annotations

import base64
import hashlib
import os
from collections import OrderedDict
from typing import Any, Optional


def new_token() -> str:
    """A fresh 256-bit token: base64url without padding, 43 characters."""
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode("ascii")


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class WebTokenStore:
    """Single-use tokens that log a browser in over SASL (``method: "web-token"``).

    Minted by the auth broker for a DID (and handle); :meth:`consume` returns the identity once,
    within ``ttl`` seconds, and never again.
    """

    def __init__(self, clock: Any, ttl: float = 300.0, max_tokens: int = 10000) -> None:
        self.clock = clock
        self.ttl = ttl
        self.max_tokens = max_tokens
        self._tokens: OrderedDict[bytes, tuple[str, Optional[str], float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def mint(self, did: str, handle: Optional[str]) -> str:
        """A new token for ``did`` (and its handle), valid once for ``ttl`` seconds."""
        now = self.clock.seconds()
        self._prune(now)
        token = new_token()
        self._tokens[_key(token)] = (did, handle, now + self.ttl)
        while len(self._tokens) > self.max_tokens:
            self._tokens.popitem(last=False)
        return token

    def consume(self, token: str) -> Optional[tuple[str, Optional[str]]]:
        """The (DID, handle) the token was minted for, or ``None`` if unknown, used or expired."""
        if not isinstance(token, str) or not token:
            return None
        entry = self._tokens.pop(_key(token), None)
        if entry is None:
            return None
        did, handle, expires = entry
        if self.clock.seconds() > expires:
            return None
        return did, handle

    def _prune(self, now: float) -> None:
        # Insertion order is expiry order (one ttl for all), so expired tokens are at the front.
        while self._tokens:
            first = next(iter(self._tokens.values()))
            if first[2] >= now:
                break
            self._tokens.popitem(last=False)


class BearerTokenStore:
    """REST API bearer tokens: each scoped to one DID, expiring after ``ttl`` seconds.

    Handed to a client after SASL success (``NOTICE * :API-BEARER <token>``) or to the auth broker;
    presented as ``Authorization: Bearer <token>``. Revocable per DID.
    """

    #: Tokens one DID may hold at once (each login mints one); older ones are dropped first.
    per_did = 64

    def __init__(self, clock: Any, ttl: float = 86400.0, max_tokens: int = 100000) -> None:
        self.clock = clock
        self.ttl = ttl
        self.max_tokens = max_tokens
        self._tokens: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._by_did: dict[str, list[bytes]] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    def mint(self, did: str) -> str:
        """A new token that authenticates API requests as ``did``."""
        now = self.clock.seconds()
        self._prune(now)
        token = new_token()
        key = _key(token)
        self._tokens[key] = (did, now + self.ttl)
        keys = self._by_did.setdefault(did, [])
        keys.append(key)
        while len(keys) > self.per_did:
            self._tokens.pop(keys.pop(0), None)
        while len(self._tokens) > self.max_tokens:
            old, (old_did, _) = self._tokens.popitem(last=False)
            self._forget(old_did, old)
        return token

    def lookup(self, token: str) -> Optional[str]:
        """The DID ``token`` stands for, or ``None`` if unknown, revoked or expired."""
        if not isinstance(token, str) or not token:
            return None
        key = _key(token)
        entry = self._tokens.get(key)
        if entry is None:
            return None
        did, expires = entry
        if self.clock.seconds() > expires:
            del self._tokens[key]
            self._forget(did, key)
            return None
        return did

    def revoke_did(self, did: str) -> None:
        """Invalidate every token of ``did`` (logout, key rotation, offboarding)."""
        for key in self._by_did.pop(did, []):
            self._tokens.pop(key, None)

    def _forget(self, did: str, key: bytes) -> None:
        keys = self._by_did.get(did)
        if keys is None:
            return
        try:
            keys.remove(key)
        except ValueError:
            pass
        if not keys:
            del self._by_did[did]

    def _prune(self, now: float) -> None:
        while self._tokens:
            key, (did, expires) = next(iter(self._tokens.items()))
            if expires >= now:
                break
            self._tokens.popitem(last=False)
            self._forget(did, key)
