"""History chunks: their row layout, payload packing, encryption and decryption.

Each group commit turns the new messages of one conversation into one ``message_chunks`` row
(format 2): the columns of its messages packed by :func:`pack_columns` and encrypted as a whole,
with the conversation and the chunk's msgids as associated data. Format-1 rows (one v1 message
each) are still read. :class:`ChunkCodec` seals, opens and rewrites rows with the store's cipher.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any, Callable, Optional, Sequence

from twisted.logger import Logger

from freeq.store.crypto import DecryptionError, MessageCipher

log = Logger()

#: Tag on a history message whose stored row does not decrypt.
UNDECRYPTABLE = "+freeq.at/undecryptable"

#: A message's place in a conversation: (time in ms, chunk id, position in the chunk).
Key = tuple[int, int, int]
#: The columns of a ``message_chunks`` row, as every chunk query selects them.
CHUNK_COLUMNS = "id, target, first_ms, last_ms, count, msgids, key_fp, format, legacy, payload"
#: A new format-2 chunk row.
INSERT_CHUNK = ("INSERT INTO message_chunks(target, first_ms, last_ms, count, msgids, key_fp, format, payload) "
                "VALUES (?,?,?,?,?,?,2,?)")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_SET = frozenset(_CROCKFORD)


@dataclasses.dataclass
class StoredMessage:
    """One history message, decrypted."""

    msgid: str
    time_ms: int
    command: str
    sender: str
    account: Optional[str]
    shown_to: str
    text: str
    tags: dict[str, str]


_PACKED = "\x01"  # first field of a packed chunk payload (a JSON one starts with "[")
_SEP = "\x00"  # IRC text cannot hold NUL; a chunk whose fields do falls back to JSON


def pack_columns(cols: Sequence[Sequence[Any]]) -> str:
    """Serialize a chunk's columns (time_ms, command, sender, account, shown_to, text, tags).

    The usual form is every field of every column joined by NUL after a marker field: one
    ``str.join`` instead of a JSON encoder walking every value (about a third of the DB thread's
    time per message). Tags are JSON only when a message has any; a missing account is empty.
    If any field holds a NUL (the fields are checked by counting separators) the columns are
    written as a JSON array instead; :func:`unpack_columns` reads both.
    """
    times, commands, senders, accounts, shown, texts, tags = cols
    packed = _SEP.join([_PACKED, *map(str, times), *commands, *senders, *[a or "" for a in accounts], *shown,
                        *texts, *[json.dumps(t, separators=(",", ":")) if t else "" for t in tags]])
    if packed.count(_SEP) != 7 * len(times):
        return json.dumps(list(cols), separators=(",", ":"))
    return packed


def unpack_columns(text: str, n: int) -> list[Any]:
    """Inverse of :func:`pack_columns` for a chunk of ``n`` messages; ValueError if malformed."""
    if text.startswith("["):
        cols = json.loads(text)
        if not isinstance(cols, list):
            raise ValueError("chunk shape")
        return cols
    parts = text.split(_SEP)
    if len(parts) != 7 * n + 1 or parts[0] != _PACKED:
        raise ValueError("chunk shape")
    col: list[Any] = [parts[1 + i * n:1 + (i + 1) * n] for i in range(7)]
    col[0] = [int(t) for t in col[0]]
    col[3] = [a or None for a in col[3]]
    col[6] = [json.loads(t) if t else {} for t in col[6]]
    return col


def ulid_ms(msgid: str) -> Optional[int]:
    """The millisecond time encoded in a ULID msgid (its first 10 characters), or None if not a ULID."""
    if len(msgid) != 26 or msgid[0] > "7":
        return None
    value = 0
    for c in msgid[:10]:
        digit = _CROCKFORD.find(c)
        if digit < 0:
            return None
        value = value * 32 + digit
    if not set(msgid[10:]) <= _CROCKFORD_SET:
        return None
    return value


class ChunkCodec:
    """Sealing and opening ``message_chunks`` rows with the store's cipher (a part of the store)."""

    cipher: Optional[MessageCipher]

    def _seal_chunk(self, target: str, cols: Sequence[Sequence[Any]], lo: int, hi: int) -> tuple[Any, ...]:
        """The ``message_chunks`` row (format 2) of messages of ``target`` from ``lo`` to ``hi`` ms, given
        as the columns of their queued tuples (target, msgid, time_ms, command, ..., tags)."""
        cipher = self.cipher
        assert cipher is not None, "use_cipher() before storing messages"
        msgids = " ".join(cols[1])
        # The payload is the columns time_ms, command, sender, account, shown_to, text, tags, in chunk
        # order (see pack_columns); target and msgids are bound as associated data instead.
        plain = pack_columns(cols[2:]).encode()
        return (target, lo, hi, len(cols[1]), msgids, cipher.fingerprint, cipher.encrypt_chunk(plain, target, msgids))

    def _open_chunk(self, row: sqlite3.Row) -> tuple[list[tuple[Key, StoredMessage]], bool]:
        """Decrypt one chunk row: its messages with their sort keys, and whether it decrypted.

        A row that does not decrypt is logged and stands for placeholder messages (no text, the
        ``+freeq.at/undecryptable`` tag) so a client still sees that something is missing.
        """
        cipher = self.cipher
        assert cipher is not None
        cid, target, msgids = row["id"], row["target"], row["msgids"]
        try:
            if row["format"] == 2:
                ids = msgids.split(" ")
                cols = unpack_columns(cipher.decrypt_chunk(row["payload"], target, msgids).decode(), len(ids))
                if not isinstance(cols, list) or len(cols) != 7 or any(len(c) != len(ids) for c in cols):
                    raise ValueError("chunk shape")
                out = []
                for idx, (msgid, t, command, sender, account, shown_to, text, tags) in enumerate(zip(ids, *cols)):
                    out.append(((t, cid, idx), StoredMessage(msgid, t, command, sender, account, shown_to, text, tags)))
                return out, True
            command, sender, account, shown_to = json.loads(row["legacy"])
        except (DecryptionError, ValueError, TypeError):
            log.error("History chunk {chunk} in {target} ({count} messages) does not decrypt; skipped",
                      chunk=cid, target=target, count=row["count"])
            first, last = row["first_ms"], row["last_ms"]
            out = []
            for idx, msgid in enumerate(msgids.split(" ")):
                hint = ulid_ms(msgid)
                t = hint if hint is not None and first <= hint <= last else first
                out.append(((t, cid, idx), StoredMessage(msgid, t, "NOTICE", "*", None, "*", "", {UNDECRYPTABLE: ""})))
            return out, False
        # Format 1: one v1 message, its clear columns in `legacy`.
        t = row["first_ms"]
        try:
            body = json.loads(cipher.decrypt(row["payload"], msgids, target))
            text, tags, ok = body["text"], body.get("tags", {}), True
        except (DecryptionError, ValueError, KeyError, TypeError):
            log.error("History row {msgid} in {target} does not decrypt; skipped", msgid=msgids, target=target)
            text, tags, ok = "", {UNDECRYPTABLE: ""}, False
        return [((t, cid, 0), StoredMessage(msgids, t, command, sender, account, shown_to, text, tags))], ok

    def _rewrite_chunk(self, conn: sqlite3.Connection, row: sqlite3.Row, keep: Callable[[Key], bool]) -> int:
        """Keep only the messages of chunk ``row`` whose key ``keep`` accepts (re-encrypting it under the
        current key as format 2, same id, so order is unchanged); return how many it holds now.

        A chunk that does not decrypt cannot be split and is left whole.
        """
        entries, ok = self._open_chunk(row)
        if not ok:
            return int(row["count"])
        kept = [(row["target"], m.msgid, m.time_ms, m.command, m.sender, m.account, m.shown_to, m.text, m.tags)
                for key, m in entries if keep(key)]
        if len(kept) == len(entries):
            return len(kept)
        if not kept:
            conn.execute("DELETE FROM message_chunks WHERE id=?", (row["id"],))
            return 0
        cols = list(zip(*kept))
        target, lo, hi, count, msgids, key_fp, payload = self._seal_chunk(row["target"], cols, min(cols[2]),
                                                                          max(cols[2]))
        conn.execute("UPDATE message_chunks SET first_ms=?, last_ms=?, count=?, msgids=?, key_fp=?, format=2, "
                     "legacy=NULL, payload=? WHERE id=?", (lo, hi, count, msgids, key_fp, payload, row["id"]))
        return count
