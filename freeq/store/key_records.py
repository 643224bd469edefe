"""What the database records about keys: the history key's fingerprint and the signing keys."""
from __future__ import annotations

import sqlite3
from typing import Optional

from freeq.store.crypto import MessageCipher
from freeq.store.errors import StoreError


class KeyRecords:
    """The key records of the ``meta`` and ``signing_keys`` tables (a part of the store); synchronous."""

    conn: sqlite3.Connection
    cipher: Optional[MessageCipher]

    def recorded_key_fingerprint(self) -> Optional[str]:
        """The fingerprint of the key the stored messages were written with (None for a new DB)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key='db_key_fingerprint'").fetchone()
        return row[0] if row else None

    def use_cipher(self, cipher: MessageCipher) -> None:
        """Check the key against the one the data was written with, and use it."""
        recorded = self.recorded_key_fingerprint()
        if recorded is None:
            self.conn.execute("INSERT INTO meta(key, value) VALUES ('db_key_fingerprint', ?)", (cipher.fingerprint,))
        elif recorded != cipher.fingerprint:
            raise StoreError(
                f"db-encryption-key.secret (fingerprint {cipher.fingerprint}) is not the key this database was "
                f"written with (fingerprint {recorded}); refusing to start. Restore the right key file "
                f"(or finish a rotation with `freeq-admin rekey`)")
        self.cipher = cipher

    def record_signing_key(self, public_key_b64: str, now: float) -> None:
        """Note the current message-signing public key; retire any previous one (kept for verification)."""
        ts = int(now)
        row = self.conn.execute("SELECT valid_until FROM signing_keys WHERE public_key=?", (public_key_b64,)).fetchone()
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute("UPDATE signing_keys SET valid_until=? WHERE valid_until IS NULL AND public_key<>?",
                          (ts, public_key_b64))
        if row is None:
            self.conn.execute("INSERT INTO signing_keys(public_key, valid_from, valid_until) VALUES (?, ?, NULL)",
                              (public_key_b64, ts))
        elif row[0] is not None:
            self.conn.execute("UPDATE signing_keys SET valid_until=NULL WHERE public_key=?", (public_key_b64,))
        self.conn.execute("COMMIT")

    def signing_keys(self) -> list[tuple[str, int, Optional[int]]]:
        """Every signing key on record: (public key, valid from, valid until or None)."""
        return [tuple(r) for r in self.conn.execute(  # type: ignore[misc]
            "SELECT public_key, valid_from, valid_until FROM signing_keys ORDER BY valid_from")]
