-- A small ingest commit in one call.
--
-- Ingestion keeps what it read of each tenant (time zone, plan, own
-- limits). With that it can compute the rollup buckets and the limits
-- before the transaction, and a commit that needs no decision beyond
-- "everything fits" is one statement run as its own transaction: take the
-- usage locks, check that the tenants are as remembered, that no key was
-- seen before and that no month total goes over its limit, then write the
-- events and the rollups. No round trip back to the server happens while
-- the locks are held. When any check fails the function writes nothing
-- and says so (`done` false); ingestion then commits the same events the
-- long way (storage::usage::commit), which decides event by event.

CREATE FUNCTION tenlyr_ingest(
    -- the events, as in usage_events
    ids uuid[], tenant_ids uuid[], metrics text[], vals double precision[],
    endpoints text[], codes integer[], keys text[], times timestamptz[],
    -- where remembered keys live: occurred_at between these
    key_from timestamptz, key_to timestamptz,
    -- the tenants as remembered
    t_ids uuid[], t_zones text[], t_plans text[],
    t_api bigint[], t_storage bigint[], t_seats bigint[],
    -- the rollup additions, all events counted; r_limits: the limit of a
    -- month row (NULL: none, or not a month row)
    r_tenants uuid[], r_grans text[], r_starts timestamptz[], r_metrics text[],
    r_totals double precision[], r_counts bigint[], r_limits double precision[])
    RETURNS TABLE (done boolean, tenant_id uuid, granularity text,
                   bucket_start timestamptz, metric text, total double precision)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('app.tenant_id', '', true), set_config('app.scope', 'platform', true);
    PERFORM tenlyr_lock_usage(t_ids);
    -- Each statement below sees what committed before the locks were granted.
    -- One check: the tenants are as remembered, no key was stored before,
    -- no month total goes over its limit.
    IF (SELECT count(*) FROM tenants t
        JOIN unnest(t_ids, t_zones, t_plans, t_api, t_storage, t_seats)
             AS c(id, zone, plan, api, storage, seats)
          ON t.id = c.id AND t.time_zone = c.zone AND t.plan = c.plan
         AND t.api_call_limit IS NOT DISTINCT FROM c.api
         AND t.storage_gb_limit IS NOT DISTINCT FROM c.storage
         AND t.seats_limit IS NOT DISTINCT FROM c.seats) <> cardinality(t_ids)
    OR EXISTS (
        SELECT 1 FROM unnest(tenant_ids, keys) AS k(tenant_id, key)
        CROSS JOIN LATERAL (
            SELECT 1 FROM usage_events e
            WHERE e.tenant_id = k.tenant_id AND e.idempotency_key = k.key
              AND e.occurred_at >= key_from AND e.occurred_at <= key_to
            LIMIT 1) found
        WHERE k.key IS NOT NULL)
    OR EXISTS (
        SELECT 1 FROM unnest(r_tenants, r_starts, r_metrics, r_totals, r_limits)
             AS a(tenant_id, bucket_start, metric, total, lim)
        LEFT JOIN usage_rollups r
          ON r.tenant_id = a.tenant_id AND r.granularity = 'month'
         AND r.bucket_start = a.bucket_start AND r.metric = a.metric
        WHERE a.lim IS NOT NULL AND coalesce(r.total, 0) + a.total > a.lim)
    THEN
        RETURN QUERY SELECT false, NULL::uuid, NULL::text, NULL::timestamptz, NULL::text, NULL::double precision;
        RETURN;
    END IF;
    INSERT INTO usage_events (id, tenant_id, metric, value, endpoint, status_code, idempotency_key, occurred_at)
        SELECT * FROM unnest(ids, tenant_ids, metrics, vals, endpoints, codes, keys, times);
    RETURN QUERY
        WITH added AS (
            INSERT INTO usage_rollups AS r (tenant_id, granularity, bucket_start, metric, total, events)
                SELECT * FROM unnest(r_tenants, r_grans, r_starts, r_metrics, r_totals, r_counts)
            ON CONFLICT (tenant_id, granularity, bucket_start, metric) DO UPDATE
                SET total = r.total + EXCLUDED.total, events = r.events + EXCLUDED.events
            RETURNING r.tenant_id, r.granularity, r.bucket_start, r.metric, r.total)
        SELECT true, a.tenant_id, a.granularity, a.bucket_start, a.metric, a.total
        FROM added a WHERE a.granularity = 'month';
END $$;

GRANT EXECUTE ON FUNCTION tenlyr_ingest(
    uuid[], uuid[], text[], double precision[], text[], integer[], text[], timestamptz[],
    timestamptz, timestamptz, uuid[], text[], text[], bigint[], bigint[], bigint[],
    uuid[], text[], timestamptz[], text[], double precision[], bigint[], double precision[])
    TO tenlyr_app;
