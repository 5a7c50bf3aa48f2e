-- Usage metering: raw events (partitioned by day), idempotency keys and
-- rollups. The month rollup row of a metric is also the live counter that
-- plan limits are checked against, under its row lock.

CREATE TABLE usage_events (
    id uuid NOT NULL,
    tenant_id uuid NOT NULL,
    metric text NOT NULL CHECK (metric IN ('api_call', 'storage_gb', 'seats', 'compute')),
    value double precision NOT NULL CHECK (value > 0),
    endpoint text,
    status_code integer,
    idempotency_key text,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (occurred_at);

-- No foreign key: a per-row check would cost every insert. Ingestion reads
-- the tenant row FOR KEY SHARE in the same transaction, and deleting a
-- tenant deletes its events explicitly.
CREATE INDEX usage_events_tenant_time ON usage_events (tenant_id, occurred_at DESC, id DESC);

-- No foreign key either, for the same reason; deleted with the tenant.
CREATE TABLE usage_idempotency (
    tenant_id uuid NOT NULL,
    key text NOT NULL,
    event_id uuid NOT NULL,
    metric text NOT NULL,
    value double precision NOT NULL,
    endpoint text,
    status_code integer,
    occurred_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX usage_idempotency_created ON usage_idempotency (created_at);

-- hour buckets are UTC hours; day and month buckets start at local midnight
-- in the tenant's time zone.
CREATE TABLE usage_rollups (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    granularity text NOT NULL CHECK (granularity IN ('hour', 'day', 'month')),
    bucket_start timestamptz NOT NULL,
    metric text NOT NULL CHECK (metric IN ('api_call', 'storage_gb', 'seats', 'compute')),
    total double precision NOT NULL DEFAULT 0,
    events bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, granularity, bucket_start, metric)
);

ALTER TABLE usage_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_events FORCE ROW LEVEL SECURITY;
ALTER TABLE usage_idempotency ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_idempotency FORCE ROW LEVEL SECURITY;
ALTER TABLE usage_rollups ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_rollups FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_scope ON usage_events
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())
    WITH CHECK (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());
CREATE POLICY tenant_scope ON usage_idempotency
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())
    WITH CHECK (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());
CREATE POLICY tenant_scope ON usage_rollups
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())
    WITH CHECK (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

GRANT SELECT, INSERT, UPDATE, DELETE ON usage_events, usage_idempotency, usage_rollups TO tenlyr_app;

-- Partition upkeep runs as the owner (the application role owns nothing):
-- one partition per UTC day, named usage_events_YYYYMMDD. Serialised by an
-- advisory lock so replicas can all call it.
CREATE FUNCTION tenlyr_ensure_usage_partitions(first_day date, last_day date) RETURNS integer
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
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END $$;

-- Drops the partitions of days before `before_day`; returns their names.
CREATE FUNCTION tenlyr_drop_usage_partitions(before_day date) RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
    part text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tenlyr_usage_partitions'));
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'usage_events'::regclass
          AND c.relname ~ '^usage_events_[0-9]{8}$'
          AND to_date(substr(c.relname, 14), 'YYYYMMDD') < before_day
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', part);
        RETURN NEXT part;
    END LOOP;
END $$;

REVOKE ALL ON FUNCTION tenlyr_ensure_usage_partitions(date, date), tenlyr_drop_usage_partitions(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenlyr_ensure_usage_partitions(date, date), tenlyr_drop_usage_partitions(date) TO tenlyr_app;
