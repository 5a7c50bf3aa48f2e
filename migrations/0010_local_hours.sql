-- Hour rollups follow the tenant's local hour (issue 12): in Asia/Kolkata
-- an hour starts at :30 UTC, in Asia/Kathmandu at :15. Ingestion computes
-- the new buckets from now on; this rebuilds the hour rows of tenants in
-- such zones from their raw events still kept. Hour rows older than the
-- oldest kept event stay on UTC hours (their events are gone).

-- Migrations run as the owner, which forced row-level security binds too.
SELECT set_config('app.scope', 'platform', true);

CREATE TEMPORARY TABLE odd_hours ON COMMIT DROP AS
    SELECT t.id, t.time_zone, date_trunc('hour', min(e.occurred_at)) AS since
    FROM tenants t JOIN usage_events e ON e.tenant_id = t.id
    WHERE date_trunc('hour', now(), t.time_zone) <> date_trunc('hour', now())
    GROUP BY t.id, t.time_zone;

DELETE FROM usage_rollups r USING odd_hours o
    WHERE r.tenant_id = o.id AND r.granularity = 'hour' AND r.bucket_start >= o.since;

INSERT INTO usage_rollups (tenant_id, granularity, bucket_start, metric, total, events)
    SELECT e.tenant_id, 'hour', date_trunc('hour', e.occurred_at, o.time_zone), e.metric,
           sum(e.value), count(*)
    FROM usage_events e JOIN odd_hours o ON e.tenant_id = o.id
    WHERE e.occurred_at >= o.since
    GROUP BY 1, 3, 4
ON CONFLICT (tenant_id, granularity, bucket_start, metric) DO UPDATE
    SET total = usage_rollups.total + EXCLUDED.total, events = usage_rollups.events + EXCLUDED.events;
