-- Ingestion at COPY speed.
--
-- 1. Events are written with binary COPY straight into their day partition.
--    COPY FROM refuses tables under row-level security, and partitions do
--    not inherit it: the application role may INSERT into day partitions
--    (nothing else), while every read still goes through `usage_events`,
--    where the tenant policy applies. The application could already write
--    any tenant's events in platform scope, so this grants nothing new.
-- 2. Idempotency keys live on the event row itself, found through an index,
--    instead of in a second table written for every keyed event.
-- 3. A commit serialises on a per-tenant transaction lock (see
--    tenlyr_lock_usage) instead of row locks on the month counters: it makes
--    the plan-limit check and the key lookup exact across replicas, and
--    tenant deletion takes the same lock.

DROP TABLE usage_idempotency;

CREATE INDEX usage_events_tenant_key ON usage_events (tenant_id, idempotency_key);

CREATE OR REPLACE FUNCTION tenlyr_ensure_usage_partitions(first_day date, last_day date) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    d date;
    created integer := 0;
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tenlyr_usage_partitions'));
    FOR d IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        part := 'usage_events_' || to_char(d, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)',
                part, (d::timestamp AT TIME ZONE 'UTC'), ((d + 1)::timestamp AT TIME ZONE 'UTC'));
            EXECUTE format('GRANT INSERT ON %I TO tenlyr_app', part);
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END $$;

DO $$
DECLARE
    part text;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'usage_events'::regclass
    LOOP
        EXECUTE format('GRANT INSERT ON %I TO tenlyr_app', part);
    END LOOP;
END $$;

-- Takes the usage lock of each tenant, in a fixed order (no deadlocks
-- between replicas committing overlapping tenants). Held to the end of the
-- transaction.
CREATE FUNCTION tenlyr_lock_usage(tenant_ids uuid[]) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    k bigint;
BEGIN
    FOR k IN
        SELECT DISTINCT hashtextextended('tenlyr_usage:' || t::text, 0)
        FROM unnest(tenant_ids) AS t ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(k);
    END LOOP;
END $$;

-- The start of an ingest commit in one round trip: the usage locks, then
-- (with a snapshot taken after they are granted) the tenants with their
-- limits and the month totals that events between `earliest` and `latest`
-- can fall into (a month starts at most 32 days before any instant in it).
CREATE FUNCTION tenlyr_usage_begin(tenant_ids uuid[], earliest timestamptz, latest timestamptz)
    RETURNS TABLE (id uuid, plan text, time_zone text, api_call_limit bigint,
                   storage_gb_limit bigint, seats_limit bigint,
                   bucket_start timestamptz, metric text, total double precision)
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenlyr_lock_usage(tenant_ids);
    RETURN QUERY
        SELECT t.id, t.plan, t.time_zone, t.api_call_limit, t.storage_gb_limit, t.seats_limit,
               r.bucket_start, r.metric, r.total
        FROM tenants t LEFT JOIN usage_rollups r
          ON r.tenant_id = t.id AND r.granularity = 'month'
         AND r.bucket_start > earliest - interval '32 days' AND r.bucket_start <= latest
        WHERE t.id = ANY(tenant_ids);
END $$;

GRANT EXECUTE ON FUNCTION tenlyr_lock_usage(uuid[]) TO tenlyr_app;
GRANT EXECUTE ON FUNCTION tenlyr_usage_begin(uuid[], timestamptz, timestamptz) TO tenlyr_app;
