-- freeq schema version 3 (issue #12, modern chat). Applied in one transaction by freeq.store.db, after
-- v1.sql and upgrade-2.sql on a new database and on its own to a v2 database (after a backup), so both
-- end up the same. Only new tables: v2 rows stay as they are. Never edited once shipped.

-- == Section A: edits, deletes and reactions ==================================================

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
