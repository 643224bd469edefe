-- freeq schema version 1. Applied in one transaction by freeq.store.db; never edited once shipped:
-- later versions add upgrade-N.sql files.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Channels that carry state worth keeping (topic, non-default modes, lists, founder, DID ops).
CREATE TABLE channels (
    name         TEXT PRIMARY KEY,          -- folded (CASEMAPPING=ascii)
    display      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    modes        TEXT NOT NULL DEFAULT '',  -- flag letters, e.g. 'imnt'
    chan_key     TEXT,
    user_limit   INTEGER,
    topic        TEXT NOT NULL DEFAULT '',
    topic_setter TEXT NOT NULL DEFAULT '',
    topic_time   INTEGER NOT NULL DEFAULT 0,
    founder_did  TEXT                       -- filled by the identity layer
);

-- +b / +e / +I entries.
CREATE TABLE channel_lists (
    channel TEXT NOT NULL REFERENCES channels(name) ON DELETE CASCADE,
    mode    TEXT NOT NULL CHECK (mode IN ('b', 'e', 'I')),
    mask    TEXT NOT NULL,
    setter  TEXT NOT NULL,
    set_at  INTEGER NOT NULL,
    PRIMARY KEY (channel, mode, mask)
);

-- Persistent operator status by DID (the founder is always one of them).
CREATE TABLE channel_did_ops (
    channel    TEXT NOT NULL REFERENCES channels(name) ON DELETE CASCADE,
    did        TEXT NOT NULL,
    granted_by TEXT NOT NULL DEFAULT '',
    granted_at INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (channel, did)
);

-- Nick ownership: each DID owns at most one nick and each nick has at most one owner.
CREATE TABLE nick_owners (
    nick     TEXT PRIMARY KEY,              -- folded
    display  TEXT NOT NULL,
    did      TEXT NOT NULL UNIQUE,
    bound_at INTEGER NOT NULL
);

-- Server operators by DID (besides --oper-dids), filled by the identity layer.
CREATE TABLE oper_dids (
    did        TEXT PRIMARY KEY,
    granted_by TEXT NOT NULL DEFAULT '',
    granted_at INTEGER NOT NULL DEFAULT 0
);

-- Message history. The body (text and client tags, as JSON) is AES-256-GCM encrypted under the
-- database key named by key_fp, with (msgid, target) as associated data.
CREATE TABLE messages (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    target   TEXT NOT NULL,                 -- folded channel, or 'dm:<did> <did>' (sorted)
    msgid    TEXT NOT NULL UNIQUE,
    time_ms  INTEGER NOT NULL,
    command  TEXT NOT NULL,                 -- PRIVMSG or NOTICE
    sender   TEXT NOT NULL,                 -- nick!user@cloak at the time
    account  TEXT,
    shown_to TEXT NOT NULL,                 -- the target as shown on the wire (channel or nick)
    key_fp   TEXT NOT NULL,
    payload  BLOB NOT NULL
);
CREATE INDEX messages_by_target_time ON messages (target, time_ms, id);
CREATE INDEX messages_by_key ON messages (key_fp);

-- Every message-signing public key this server has used, so old signatures stay verifiable.
CREATE TABLE signing_keys (
    public_key  TEXT PRIMARY KEY,           -- base64url, no padding
    valid_from  INTEGER NOT NULL,
    valid_until INTEGER                     -- NULL while current
);
