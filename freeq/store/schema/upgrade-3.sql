-- freeq schema version 3 (issue #12, modern chat). Applied in one transaction by freeq.store.db, after
-- v1.sql and upgrade-2.sql on a new database and on its own to a v2 database (after a backup), so both
-- end up the same. Only new tables: v2 rows stay as they are. Never edited once shipped.

-- == Section A: edits, deletes and reactions ==================================================

-- == Section B: read markers and metadata =====================================================
