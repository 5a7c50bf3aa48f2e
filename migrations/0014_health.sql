-- Health, alerts and throttling (DESIGN.md §9).

-- Health is computed from per-minute request and error counts, never from
-- raw events: ingestion adds them as rollups of granularity `minute` with
-- the pseudo-metrics `requests` (events that carry a status code) and
-- `errors` (status code >= 500), in the same statement as the other
-- rollups, so every ingest path keeps them. The health worker deletes
-- minute rows older than its longest window.
ALTER TABLE usage_rollups DROP CONSTRAINT usage_rollups_granularity_check;
ALTER TABLE usage_rollups ADD CONSTRAINT usage_rollups_granularity_check
    CHECK (granularity IN ('minute', 'hour', 'day', 'month'));
ALTER TABLE usage_rollups DROP CONSTRAINT usage_rollups_metric_check;
ALTER TABLE usage_rollups ADD CONSTRAINT usage_rollups_metric_check
    CHECK (metric IN ('api_call', 'storage_gb', 'seats', 'compute', 'requests', 'errors'));
-- The health scan reads every tenant's recent minutes in time order.
CREATE INDEX usage_rollups_minutes ON usage_rollups (bucket_start) WHERE granularity = 'minute';

-- A tenant's throttle (requests per minute; NULL: none) lives on the
-- tenant row, which key lookups read and cache: a throttled request needs
-- no extra read. Changing it invalidates the tenant's keys.
ALTER TABLE tenants ADD COLUMN rate_limit integer CHECK (rate_limit >= 1);

-- Each tenant's health as the last scan computed it. A tenant without a
-- row has never been scanned (status unknown).
CREATE TABLE tenant_health (
    tenant_id uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'unknown'
        CHECK (status IN ('healthy', 'warning', 'critical', 'unknown')),
    error_rate double precision NOT NULL DEFAULT 0,
    request_rate double precision NOT NULL DEFAULT 0,
    sla_risk boolean NOT NULL DEFAULT false,
    low_volume boolean NOT NULL DEFAULT false,
    checked_at timestamptz,
    changed_at timestamptz
);

ALTER TABLE tenant_health ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_health FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON tenant_health
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())
    WITH CHECK (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

-- Alerts: raised by the alert worker (`health_critical`) or sent by
-- customers' own monitoring. At most one open `health_critical` alert per
-- tenant, however many ticks or replicas try: the partial unique index
-- makes the worker's insert a no-op for a tenant that has one.
CREATE TABLE alerts (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    type text NOT NULL CHECK (length(type) BETWEEN 1 AND 100),
    severity text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    message text NOT NULL CHECK (length(message) BETWEEN 1 AND 2000),
    source text NOT NULL CHECK (source IN ('worker', 'api')),
    created_at timestamptz NOT NULL,
    resolved_at timestamptz
);
CREATE UNIQUE INDEX alerts_one_open_health_critical ON alerts (tenant_id)
    WHERE type = 'health_critical' AND resolved_at IS NULL;
CREATE INDEX alerts_tenant ON alerts (tenant_id, created_at DESC);
CREATE INDEX alerts_created ON alerts (created_at DESC);
CREATE INDEX alerts_open ON alerts (tenant_id) WHERE resolved_at IS NULL;

ALTER TABLE alerts ENABLE ROW LEVEL SECURITY;
ALTER TABLE alerts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON alerts
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())
    WITH CHECK (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_health, alerts TO tenlyr_app;
