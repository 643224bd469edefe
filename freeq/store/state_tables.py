"""Server state in the database: channels with their lists and DID ops, nick bindings, oper DIDs,
and federation's channel CRDTs.

Loading is synchronous (start-up, before listening); saving is queued on the reactor thread and
applied by the group commit (``_op_<kind>`` on the DB thread).
"""
from __future__ import annotations

import sqlite3
from typing import Any

from freeq.irc.names import fold
from freeq.state.channel import ChannelRecord  # the channel's snapshot; the store persists it


class StateTables:
    """Loading and saving the server-state tables (a part of the store)."""

    conn: sqlite3.Connection
    _pending: list[tuple[str, tuple[Any, ...]]]

    def load_channels(self) -> list[ChannelRecord]:
        """Every persisted channel with its lists and DID ops."""
        out: dict[str, ChannelRecord] = {}
        for r in self.conn.execute("SELECT * FROM channels"):
            out[r["name"]] = ChannelRecord(
                r["display"], r["created_at"], r["modes"], r["chan_key"], r["user_limit"], r["topic"],
                r["topic_setter"], r["topic_time"], r["founder_did"], {"b": [], "e": [], "I": []}, {})
        for r in self.conn.execute("SELECT * FROM channel_lists ORDER BY rowid"):
            rec = out.get(r["channel"])
            if rec is not None:
                rec.lists[r["mode"]].append((r["mask"], r["setter"], r["set_at"]))
        for r in self.conn.execute("SELECT * FROM channel_did_ops"):
            rec = out.get(r["channel"])
            if rec is not None:
                rec.did_ops[r["did"]] = (r["granted_by"], r["granted_at"])
        return list(out.values())

    def load_nick_owners(self) -> dict[str, tuple[str, str]]:
        """folded nick -> (display nick, DID)."""
        return {r["nick"]: (r["display"], r["did"]) for r in self.conn.execute("SELECT * FROM nick_owners")}

    def load_oper_dids(self) -> set[str]:
        """DIDs granted server-operator status in the database."""
        return {r[0] for r in self.conn.execute("SELECT did FROM oper_dids")}

    def load_channel_crdts(self) -> dict[str, str]:
        """folded channel -> serialized CRDT state, as saved by :meth:`save_channel_crdt`."""
        return {r[0]: r[1] for r in self.conn.execute("SELECT channel, state FROM channel_crdt")}

    # ------------------------------------------------------------------
    # Writes (queued; reactor thread), applied on the DB thread
    # ------------------------------------------------------------------
    def save_channel(self, rec: ChannelRecord) -> None:
        """Insert or replace a channel with its lists and DID ops."""
        self._pending.append(("channel", (rec,)))

    def delete_channel(self, name: str) -> None:
        """Forget a channel (its history is kept until retention removes it)."""
        self._pending.append(("delete_channel", (name,)))

    def save_channel_crdt(self, folded: str, state: str) -> None:
        """Insert or replace the federation CRDT state of channel ``folded``."""
        self._pending.append(("channel_crdt", (folded, state)))

    def delete_channel_crdt(self, folded: str) -> None:
        """Forget the federation CRDT state of channel ``folded``."""
        self._pending.append(("delete_channel_crdt", (folded,)))

    def bind_nick(self, folded: str, display: str, did: str, now: float) -> None:
        """Record that ``did`` owns ``display`` (replacing its previous nick)."""
        self._pending.append(("bind_nick", (folded, display, did, int(now))))

    def _op_channel(self, conn: sqlite3.Connection, rec: ChannelRecord) -> None:
        name = fold(rec.name)
        conn.execute(
            "INSERT OR REPLACE INTO channels(name, display, created_at, modes, chan_key, user_limit, topic, "
            "topic_setter, topic_time, founder_did) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (name, rec.name, rec.created_at, rec.modes, rec.key, rec.limit, rec.topic, rec.topic_setter,
             rec.topic_time, rec.founder))
        conn.execute("DELETE FROM channel_lists WHERE channel=?", (name,))
        conn.executemany("INSERT OR IGNORE INTO channel_lists(channel, mode, mask, setter, set_at) VALUES (?,?,?,?,?)",
                         [(name, mode, m, s, t) for mode, entries in rec.lists.items() for m, s, t in entries])
        conn.execute("DELETE FROM channel_did_ops WHERE channel=?", (name,))
        conn.executemany("INSERT INTO channel_did_ops(channel, did, granted_by, granted_at) VALUES (?,?,?,?)",
                         [(name, did, by, at) for did, (by, at) in rec.did_ops.items()])

    def _op_delete_channel(self, conn: sqlite3.Connection, name: str) -> None:
        conn.execute("DELETE FROM channels WHERE name=?", (name,))

    def _op_channel_crdt(self, conn: sqlite3.Connection, folded: str, state: str) -> None:
        conn.execute("INSERT OR REPLACE INTO channel_crdt(channel, state) VALUES (?,?)", (folded, state))

    def _op_delete_channel_crdt(self, conn: sqlite3.Connection, folded: str) -> None:
        conn.execute("DELETE FROM channel_crdt WHERE channel=?", (folded,))

    def _op_bind_nick(self, conn: sqlite3.Connection, folded: str, display: str, did: str, ts: int) -> None:
        conn.execute("DELETE FROM nick_owners WHERE did=? OR nick=?", (did, folded))
        conn.execute("INSERT INTO nick_owners(nick, display, did, bound_at) VALUES (?,?,?,?)",
                     (folded, display, did, ts))
