-- freeq schema version 4 (issue #13, network bans). Applied in one transaction by freeq.store.db, after
-- v1.sql and the earlier upgrades on a new database and on its own to a v3 database (after a backup), so both
-- end up the same. Only a new table: v3 rows stay as they are. Never edited once shipped.

-- K-lines and D-lines (freeq.store.bans, freeq.state.bans): set by this server's operators or received from
-- full-trust peers. One row per (kind, mask): a new ban on the same mask replaces the old one. Expired rows
-- are deleted when the server starts (and as they are noticed). Config-file bans are never stored.
CREATE TABLE network_bans (
    kind    TEXT NOT NULL,                  -- 'K' (user@host glob or DID) or 'D' (IP address or CIDR network)
    mask    TEXT NOT NULL,                  -- normalised (freeq.state.bans.parse_mask)
    id      TEXT NOT NULL,                  -- unique across the federation (dedupe of a ban heard twice)
    reason  TEXT NOT NULL,
    setter  TEXT NOT NULL,                  -- the operator (nick!user@host) or server that set it
    set_at  REAL NOT NULL,                  -- Unix time
    expires REAL,                           -- Unix time, NULL: permanent
    origin  TEXT NOT NULL,                  -- the server where it was set (empty: this one)
    PRIMARY KEY (kind, mask)
) WITHOUT ROWID;
