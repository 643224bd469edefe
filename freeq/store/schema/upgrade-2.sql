-- freeq schema version 2. Applied in one transaction by freeq.store.db, after v1.sql on a new
-- database and on its own to a v1 database (after a backup), so both end up the same. Never edited
-- once shipped. No key is needed: v1 rows are moved as they are.

-- Per-channel replicated state of the federation layer (an opaque serialized CRDT).
CREATE TABLE channel_crdt (
    channel TEXT PRIMARY KEY,                -- folded
    state   TEXT NOT NULL
);

-- Message history in chunks: each group commit writes one row per conversation holding all its
-- new messages, AES-256-GCM encrypted together (format 2). In clear: the conversation, the time
-- range, the count and the msgids (to find a message without decrypting); everything else
-- (time, command, sender, account, target as shown, text, tags of each message) is encrypted,
-- with (target, msgids) as associated data. Format 1 rows are v1 messages moved here unchanged
-- (one message each, body encrypted with (msgid, target) as associated data, the v1 clear
-- columns kept as JSON in `legacy`) until `freeq-admin rekey` rewrites them as format 2.
-- Order: time, then id, then position in the chunk (insertion order).
CREATE TABLE message_chunks (
    id       INTEGER PRIMARY KEY,
    target   TEXT NOT NULL,                  -- folded channel, or 'dm:<did> <did>' (sorted)
    first_ms INTEGER NOT NULL,               -- earliest message time in the chunk
    last_ms  INTEGER NOT NULL,               -- latest message time in the chunk
    count    INTEGER NOT NULL,
    msgids   TEXT NOT NULL,                  -- space-separated, in chunk order
    key_fp   TEXT NOT NULL,
    format   INTEGER NOT NULL CHECK (format IN (1, 2)),
    legacy   TEXT,                           -- format 1 only: JSON [command, sender, account, shown_to]
    payload  BLOB NOT NULL
);

INSERT INTO message_chunks(id, target, first_ms, last_ms, count, msgids, key_fp, format, legacy, payload)
    SELECT id, target, time_ms, time_ms, 1, msgid, key_fp, 1, json_array(command, sender, account, shown_to), payload
    FROM messages ORDER BY id;
DROP TABLE messages;

CREATE INDEX message_chunks_by_target_last ON message_chunks (target, last_ms, first_ms);
CREATE INDEX message_chunks_by_target_first ON message_chunks (target, first_ms, last_ms);
CREATE INDEX message_chunks_by_last ON message_chunks (last_ms);
