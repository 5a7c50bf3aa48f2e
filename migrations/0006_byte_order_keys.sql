-- Idempotency keys, metric and granularity names are opaque identifiers:
-- compare them byte by byte. Under the database's default collation (a libc
-- locale; even C.UTF-8 is one before PostgreSQL 17) every btree comparison
-- went through strcoll, and the key index is compared on every ingested
-- event: thousands of probes and inserts per batch. "C" orders UTF-8 the
-- same way (by code point) and equality is unchanged.
--
-- The column types stay text, so no table is rewritten; the indexes on these
-- columns are rebuilt, under a lock that holds ingestion for as long as that
-- takes.

ALTER TABLE usage_events ALTER COLUMN idempotency_key TYPE text COLLATE "C";
ALTER TABLE usage_events ALTER COLUMN metric TYPE text COLLATE "C";
ALTER TABLE usage_rollups ALTER COLUMN granularity TYPE text COLLATE "C";
ALTER TABLE usage_rollups ALTER COLUMN metric TYPE text COLLATE "C";
