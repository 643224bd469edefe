"""Edits, deletes and reactions in the store: rows of their own, applied when history is read.

History chunks (:mod:`freeq.store.chunks`) are sealed once and never rewritten for an edit, a delete
or a reaction: each is a row of ``message_edits``, ``message_deletes`` or ``message_reactions``
(schema v3, Section A), encrypted like the chunks (AES-256-GCM, the row's kind, conversation and
message as associated data). :meth:`RedactionStore.annotated_history` reads history and applies them:
a deleted message is left out (as the IRCv3 message-redaction spec allows), an edited one shows the
text of its latest edit with ``+freeq.at/edited=<msgid of that edit>`` and that edit's signature, and
a message with reactions carries ``+freeq.at/reactions``.

Every write runs on the DB thread after the queued messages (``flush`` first), so an edit or a
reaction right after its message finds it. What a conversation keeps is bounded: edits per message,
reactions per user and per message (:mod:`freeq.state.redaction`), and rows per conversation (the
history cap).
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any, Callable, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger

from freeq.signing import SIG_TAG
from freeq.state.redaction import (
    EDITED_TAG, MAX_EDITS_PER_MESSAGE, MAX_REACTIONS_PER_MESSAGE, MAX_REACTIONS_PER_USER, REACT_TAGS, REACTIONS_TAG,
    REPLY_TAGS, reactions_tag, reactor_id)
from freeq.store.chunks import Key, StoredMessage
from freeq.store.crypto import DecryptionError, MessageCipher

log = Logger()

#: Outcomes of :meth:`RedactionStore.add_reaction`.
ADDED, DUPLICATE, TOO_MANY, NOT_FOUND = "added", "duplicate", "too_many", "not_found"


def _aad(kind: str, target: str, msgid: str, extra: str = "") -> bytes:
    return f"freeq-{kind}-v3\0{target}\0{msgid}\0{extra}".encode()


class RedactionStore:
    """The edit, delete and reaction rows (a part of :class:`freeq.store.db.Store`)."""

    conn: sqlite3.Connection
    cipher: Optional[MessageCipher]
    max_messages_per_target: int
    # Provided by the other parts of the store.
    flush: Callable[[], defer.Deferred]
    _in_thread: Callable[[Callable[[], Any]], defer.Deferred]
    _locate: Callable[[sqlite3.Connection, str, str], Optional[tuple[Key, StoredMessage]]]
    _history: Callable[[str, str, tuple[Any, ...], int], list[StoredMessage]]

    # -- reads -----------------------------------------------------------------------------------
    def find_message(self, target: str, msgid: str) -> defer.Deferred:
        """The stored message ``msgid`` of conversation ``target`` as it was first sent, or ``None`` if
        there is none or it was deleted. The msgid of one of its edits names it too, and a kept
        reaction's msgid names that reaction (a TAGMSG)."""
        self.flush()
        return self._in_thread(lambda: self._original(self.conn, target, msgid, reactions=True))

    def _reaction_message(self, conn: sqlite3.Connection, target: str, msgid: str) -> Optional[StoredMessage]:
        """A kept reaction named by its own msgid, as the TAGMSG it was (REDACT may remove it)."""
        row = conn.execute("SELECT msgid, time_ms, payload FROM message_reactions WHERE target=? AND "
                           "reaction_msgid=? LIMIT 1", (target, msgid)).fetchone()
        if row is None or not msgid:
            return None
        body = self._open("reaction", target, row[0], "", row[2])
        if body is None:
            return None
        tags = {REACT_TAGS[0]: str(body["emoji"]), REPLY_TAGS[0]: row[0]}
        return StoredMessage(msgid, int(row[1]), "TAGMSG", str(body["nick"]), body.get("account"), target, "", tags)

    def annotated_history(self, target: str, query: str, args: tuple[Any, ...], limit: int) -> defer.Deferred:
        """:meth:`freeq.store.db.Store.history` with edits, deletes and reactions applied (see the module)."""
        self.flush()
        return self._in_thread(lambda: self._annotate(self.conn, target, self._history(target, query, args, limit)))

    def _original(self, conn: sqlite3.Connection, target: str, msgid: str,
                  reactions: bool = False) -> Optional[StoredMessage]:
        found = self._locate(conn, target, msgid)
        if found is None:
            row = conn.execute("SELECT msgid FROM message_edits WHERE edit_msgid=? AND target=? LIMIT 1",
                               (msgid, target)).fetchone()
            found = self._locate(conn, target, row[0]) if row is not None else None
        if found is None:
            return self._reaction_message(conn, target, msgid) if reactions else None
        m = found[1]
        if conn.execute("SELECT 1 FROM message_deletes WHERE target=? AND msgid=?", (target, m.msgid)).fetchone():
            return None
        return m

    def _annotate(self, conn: sqlite3.Connection, target: str, rows: list[StoredMessage]) -> list[StoredMessage]:
        if not rows:
            return rows
        ids = [m.msgid for m in rows]
        marks = ",".join("?" * len(ids))
        deleted = {r[0] for r in conn.execute(
            f"SELECT msgid FROM message_deletes WHERE target=? AND msgid IN ({marks})", (target, *ids))}
        latest: dict[str, sqlite3.Row] = {}
        for row in conn.execute(f"SELECT msgid, edit_msgid, payload FROM message_edits WHERE target=? AND "
                                f"msgid IN ({marks}) ORDER BY id", (target, *ids)):
            latest[row[0]] = row
        reactions: dict[str, list[tuple[str, str]]] = {}
        for row in conn.execute(f"SELECT msgid, payload FROM message_reactions WHERE target=? AND "
                                f"msgid IN ({marks}) ORDER BY id", (target, *ids)):
            body = self._open("reaction", target, row[0], "", row[1])
            if body is not None:
                reactions.setdefault(row[0], []).append((str(body["emoji"]), str(body["nick"])))
        if not (deleted or latest or reactions):
            return rows
        out = []
        for m in rows:
            if m.msgid in deleted:
                continue
            edit = latest.get(m.msgid)
            shown = reactions.get(m.msgid)
            if edit is None and shown is None:
                out.append(m)
                continue
            tags = dict(m.tags)
            text = m.text
            if edit is not None:
                body = self._open("edit", target, m.msgid, edit[1], edit[2])
                if body is not None:
                    text = str(body["text"])
                    tags.pop(SIG_TAG, None)  # the original's signature does not cover the new text
                    sig = body.get("tags", {}).get(SIG_TAG)
                    if sig:
                        tags[SIG_TAG] = sig
                    tags[EDITED_TAG] = edit[1]
            if shown is not None:
                value = reactions_tag(shown)
                if value:
                    tags[REACTIONS_TAG] = value
            out.append(dataclasses.replace(m, text=text, tags=tags))
        return out

    def edit_of(self, edit_msgid: str) -> defer.Deferred:
        """The edit ``edit_msgid`` as ``(target, original msgid, time ms, body)`` (body: sender, account,
        text, tags), or ``None`` (REST: verifying an edit's signature)."""
        self.flush()

        def run() -> Optional[tuple[str, str, int, dict[str, Any]]]:
            row = self.conn.execute("SELECT target, msgid, time_ms, payload FROM message_edits WHERE edit_msgid=? "
                                    "LIMIT 1", (edit_msgid,)).fetchone()
            if row is None:
                return None
            body = self._open("edit", row[0], row[1], edit_msgid, row[3])
            return None if body is None else (row[0], row[1], int(row[2]), body)

        return self._in_thread(run)

    # -- writes ----------------------------------------------------------------------------------
    def add_edit(self, target: str, msgid: str, edit_msgid: str, now: float, sender: str, account: Optional[str],
                 text: str, tags: dict[str, str], shown: str) -> defer.Deferred:
        """Keep an edit of ``msgid`` (the original's msgid; ``shown``: the target as the edit was sent);
        the oldest go past ``MAX_EDITS_PER_MESSAGE``."""
        payload = {"sender": sender, "account": account, "text": text, "tags": tags, "shown": shown}
        self.flush()

        def run() -> None:
            self._write(lambda conn: self._insert_edit(conn, target, msgid, edit_msgid, int(now * 1000), payload))

        return self._in_thread(run)

    def _insert_edit(self, conn: sqlite3.Connection, target: str, msgid: str, edit_msgid: str, ms: int,
                     payload: dict[str, Any]) -> None:
        cipher = self._cipher()
        conn.execute("INSERT INTO message_edits(target, msgid, edit_msgid, time_ms, key_fp, payload) "
                     "VALUES (?,?,?,?,?,?)", (target, msgid, edit_msgid, ms, cipher.fingerprint,
                                              self._seal("edit", target, msgid, edit_msgid, payload)))
        conn.execute("DELETE FROM message_edits WHERE target=? AND msgid=? AND id NOT IN (SELECT id FROM "
                     "message_edits WHERE target=? AND msgid=? ORDER BY id DESC LIMIT ?)",
                     (target, msgid, target, msgid, MAX_EDITS_PER_MESSAGE))
        self._cap(conn, "message_edits", target)

    def add_delete(self, target: str, msgid: str, now: float, by: str, account: Optional[str],
                   reason: str) -> defer.Deferred:
        """Mark ``msgid`` (the original's msgid) deleted; its edits and reactions go with it."""
        payload = {"by": by, "account": account, "reason": reason}
        self.flush()

        def insert(conn: sqlite3.Connection) -> None:
            cipher = self._cipher()
            conn.execute("INSERT OR IGNORE INTO message_deletes(target, msgid, time_ms, key_fp, payload) "
                         "VALUES (?,?,?,?,?)", (target, msgid, int(now * 1000), cipher.fingerprint,
                                                self._seal("delete", target, msgid, "", payload)))
            conn.execute("DELETE FROM message_edits WHERE target=? AND msgid=?", (target, msgid))
            conn.execute("DELETE FROM message_reactions WHERE target=? AND (msgid=? OR reaction_msgid=?)",
                         (target, msgid, msgid))
            self._cap(conn, "message_deletes", target)

        return self._in_thread(lambda: self._write(insert))

    def add_reaction(self, target: str, msgid: str, now: float, emoji: str, nick: str,
                     account: Optional[str], reaction_msgid: str = "") -> defer.Deferred:
        """Keep a reaction (the TAGMSG ``reaction_msgid``) to ``msgid`` (or to the message an edit msgid
        names); fires with ``ADDED``,
        ``DUPLICATE`` (already there), ``TOO_MANY`` (the user's or the message's bound) or ``NOT_FOUND``
        (no such message, or deleted: nothing is kept)."""
        self.flush()
        who = reactor_id(nick, account)

        def run() -> str:
            m = self._original(self.conn, target, msgid)
            if m is None:
                return NOT_FOUND
            mine = 0
            rows = self._reactions(self.conn, target, m.msgid)
            for _rowid, body in rows:
                if reactor_id(str(body["nick"]), body.get("account")) == who:
                    if body["emoji"] == emoji:
                        return DUPLICATE
                    mine += 1
            if mine >= MAX_REACTIONS_PER_USER or len(rows) >= MAX_REACTIONS_PER_MESSAGE:
                return TOO_MANY
            payload = {"emoji": emoji, "nick": nick, "account": account}

            def insert(conn: sqlite3.Connection) -> None:
                conn.execute("INSERT INTO message_reactions(target, msgid, reaction_msgid, time_ms, key_fp, payload) "
                             "VALUES (?,?,?,?,?,?)", (target, m.msgid, reaction_msgid, int(now * 1000),
                                                     self._cipher().fingerprint,
                                                     self._seal("reaction", target, m.msgid, "", payload)))
                self._cap(conn, "message_reactions", target)

            self._write(insert)
            return ADDED

        return self._in_thread(run)

    def remove_reaction(self, target: str, msgid: str, emoji: str, nick: str, account: Optional[str]) -> defer.Deferred:
        """Drop this user's reaction ``emoji`` to ``msgid``; fires with whether there was one."""
        self.flush()
        who = reactor_id(nick, account)

        def run() -> bool:
            m = self._original(self.conn, target, msgid)
            if m is None:
                return False
            gone = [rowid for rowid, body in self._reactions(self.conn, target, m.msgid)
                    if body["emoji"] == emoji and reactor_id(str(body["nick"]), body.get("account")) == who]
            if gone:
                self._write(lambda conn: conn.executemany("DELETE FROM message_reactions WHERE id=?",
                                                          [(r,) for r in gone]))
            return bool(gone)

        return self._in_thread(run)

    # -- helpers (DB thread) ---------------------------------------------------------------------
    def _reactions(self, conn: sqlite3.Connection, target: str, msgid: str) -> list[tuple[int, dict[str, Any]]]:
        out = []
        for rowid, payload in conn.execute("SELECT id, payload FROM message_reactions WHERE target=? AND msgid=? "
                                           "ORDER BY id", (target, msgid)):
            body = self._open("reaction", target, msgid, "", payload)
            if body is not None:
                out.append((int(rowid), body))
        return out

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _cap(self, conn: sqlite3.Connection, table: str, target: str) -> None:
        """Drop ``table``'s rows of ``target`` older than its oldest stored message (their messages went with
        retention or the history cap: a row is never older than its message), then keep at most the history
        cap of them (the oldest go)."""
        conn.execute(f"DELETE FROM {table} WHERE target=? AND time_ms < (SELECT MIN(first_ms) FROM message_chunks "
                     f"WHERE target=?)", (target, target))
        cap = self.max_messages_per_target
        if not cap:
            return
        (count,) = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE target=?", (target,)).fetchone()
        if count > cap:
            conn.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE target=? "
                         f"ORDER BY rowid LIMIT ?)", (target, count - cap))

    def _cipher(self) -> MessageCipher:
        cipher = self.cipher
        assert cipher is not None, "use_cipher() before storing messages"
        return cipher

    def _seal(self, kind: str, target: str, msgid: str, extra: str, payload: dict[str, Any]) -> bytes:
        plain = json.dumps(payload, separators=(",", ":")).encode()
        return self._cipher().seal(plain, _aad(kind, target, msgid, extra))

    def _open(self, kind: str, target: str, msgid: str, extra: str, blob: bytes) -> Optional[dict[str, Any]]:
        try:
            body = json.loads(self._cipher().open(blob, _aad(kind, target, msgid, extra)))
            if not isinstance(body, dict):
                raise ValueError("shape")
            return body
        except (DecryptionError, ValueError):
            log.error("A stored {kind} of {msgid} in {target} does not decrypt; skipped", kind=kind, msgid=msgid,
                      target=target)
            return None


#: The side tables, their kind (in the associated data) and the column that completes it (if any).
_SIDE_TABLES = (("message_edits", "edit", "edit_msgid"), ("message_deletes", "delete", None),
                ("message_reactions", "reaction", None))


def reencrypt_side_rows(conn: sqlite3.Connection, old: MessageCipher, new: MessageCipher) -> int:
    """Key rotation (``freeq-admin rekey``): re-encrypt every edit, delete and reaction row still under
    ``old`` under ``new``, in one transaction; return how many. A row that does not decrypt under ``old``
    raises :class:`DecryptionError` and nothing is changed (rerunnable: rows under ``new`` are skipped)."""
    done = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, kind, extra_col in _SIDE_TABLES:
            extra_sql = extra_col if extra_col else "''"
            rows = conn.execute(f"SELECT rowid, target, msgid, {extra_sql}, payload FROM {table} WHERE key_fp=?",
                                (old.fingerprint,)).fetchall()
            for rowid, target, msgid, extra, payload in rows:
                aad = _aad(kind, target, msgid, extra)
                conn.execute(f"UPDATE {table} SET payload=?, key_fp=? WHERE rowid=?",
                             (new.seal(old.open(payload, aad), aad), new.fingerprint, rowid))
                done += 1
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return done


__all__: Sequence[str] = ["RedactionStore", "ADDED", "DUPLICATE", "TOO_MANY", "NOT_FOUND", "reencrypt_side_rows"]
