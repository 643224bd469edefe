-- freeq schema version 3 (issue #12, modern chat). Applied in one transaction by freeq.store.db, after
-- v1.sql and upgrade-2.sql on a new database and on its own to a v2 database (after a backup), so both
-- end up the same. Only new tables: v2 rows stay as they are. Never edited once shipped.

-- == Section A: edits, deletes and reactions ==================================================

-- Edits, deletes and reactions (freeq.store.redaction) are rows of their own, applied when history is
-- read: the chunks of message_chunks are never rewritten for them. In clear: the conversation, the
-- message they apply to (msgid, in clear in the chunks too), their time and key; everything else is
-- AES-256-GCM encrypted with (kind, target, msgid[, edit msgid]) as associated data.
-- An edit: the new text, its tags (with the edit's own +freeq.at/sig over the new text), its sender.
CREATE TABLE message_edits (
    id         INTEGER PRIMARY KEY,
    target     TEXT NOT NULL,                -- folded channel, or 'dm:<did> <did>' (as message_chunks)
    msgid      TEXT NOT NULL,                -- the original message
    edit_msgid TEXT NOT NULL,                -- the edit's own msgid
    time_ms    INTEGER NOT NULL,
    key_fp     TEXT NOT NULL,
    payload    BLOB NOT NULL                 -- JSON {"sender","account","text","tags","shown"}
);
CREATE INDEX message_edits_by_msgid ON message_edits (target, msgid);
CREATE INDEX message_edits_by_edit ON message_edits (edit_msgid);

-- A delete (REDACT or +draft/delete): the message is left out of history from then on.
CREATE TABLE message_deletes (
    target   TEXT NOT NULL,
    msgid    TEXT NOT NULL,
    time_ms  INTEGER NOT NULL,
    key_fp   TEXT NOT NULL,
    payload  BLOB NOT NULL,                  -- JSON {"by","account","reason"}
    PRIMARY KEY (target, msgid)
);

-- A reaction of one user (DID, or a guest's nick) to one message; its own msgid (the reacting TAGMSG's)
-- lets REDACT remove it.
CREATE TABLE message_reactions (
    id             INTEGER PRIMARY KEY,
    target         TEXT NOT NULL,
    msgid          TEXT NOT NULL,            -- the message reacted to
    reaction_msgid TEXT NOT NULL,            -- the reacting TAGMSG ('' if it had none)
    time_ms        INTEGER NOT NULL,
    key_fp         TEXT NOT NULL,
    payload        BLOB NOT NULL             -- JSON {"emoji","nick","account"}
);
CREATE INDEX message_reactions_by_msgid ON message_reactions (target, msgid);
CREATE INDEX message_reactions_by_reaction ON message_reactions (target, reaction_msgid);

-- == Section B: read markers and metadata =====================================================

-- Read markers (draft/read-marker), one per account (DID) and conversation: ``target`` is the folded
-- channel name or the folded nick of the other party; ``read_ms`` only moves forward (Unix ms).
CREATE TABLE read_markers (
    did        TEXT NOT NULL,
    target     TEXT NOT NULL,
    read_ms    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (did, target)
) WITHOUT ROWID;

-- Metadata (draft/metadata-2) an account set on itself; Bluesky profile defaults are not stored.
CREATE TABLE account_metadata (
    did   TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (did, key)
) WITHOUT ROWID;

-- Metadata of registered channels (those with a founder DID), set by their operators.
CREATE TABLE channel_metadata (
    channel TEXT NOT NULL,                  -- folded
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (channel, key)
) WITHOUT ROWID;
