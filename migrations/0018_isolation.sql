-- Isolation tiers and the tenant-data router (DESIGN.md §10).
--
-- Tenant data lives in the shared tables (`shared_schema`, the default) or
-- in the tenant's own schema `t_<id without dashes>` with the same tables,
-- indexes, partitions and forced row-level security (`dedicated_schema`).
-- `tenant_placements` says which; a tenant without a row is shared.
--
-- Every tenant-data transaction enters through tenlyr_enter_scope (one
-- tenant) or tenlyr_enter_tenants (a batch of tenants that live in one
-- place): it takes the tenant's placement lock in shared mode, reads the
-- placement and points `search_path` at the tenant's schema for this
-- transaction only. Statements are written unqualified and find the
-- tenant's tables first and the platform tables (tenants, keys, jobs,
-- deliveries) in `public` after them. A move holds the placement lock in
-- exclusive mode for its short barrier: writers wait (never fail), and
-- whoever enters after the flip sees the new placement.
--
-- The tenant-data tables: usage_events (partitioned by day), usage_rollups
-- (which also hold the per-minute health counts), records and
-- webhook_events. Platform and control-plane tables stay shared.

CREATE TABLE tenant_placements (
    tenant_id uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    level text NOT NULL CHECK (level IN ('dedicated_schema', 'dedicated_database')),
    schema_name text NOT NULL,
    -- Bumped by every flip.
    epoch bigint NOT NULL,
    placed_at timestamptz NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_placements TO tenlyr_app;

CREATE TABLE isolation_migrations (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    from_level text NOT NULL
        CHECK (from_level IN ('shared_schema', 'dedicated_schema', 'dedicated_database')),
    to_level text NOT NULL
        CHECK (to_level IN ('dedicated_schema', 'dedicated_database')),
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'in_progress', 'completed', 'failed')),
    -- copying, catching_up, barrier, cleaning (after the flip), done.
    phase text NOT NULL DEFAULT 'queued',
    error text,
    rows_total bigint NOT NULL DEFAULT 0,
    rows_copied bigint NOT NULL DEFAULT 0,
    -- When the bulk copy first began (database time): the catch-up copies
    -- events that occurred from an hour before it.
    copy_started_at timestamptz,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    completed_at timestamptz
);
-- One active migration per tenant.
CREATE UNIQUE INDEX isolation_migrations_active ON isolation_migrations (tenant_id)
    WHERE status IN ('pending', 'in_progress');
CREATE INDEX isolation_migrations_tenant ON isolation_migrations (tenant_id, created_at DESC);
CREATE INDEX isolation_migrations_created ON isolation_migrations (created_at DESC);

ALTER TABLE isolation_migrations ENABLE ROW LEVEL SECURITY;
ALTER TABLE isolation_migrations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON isolation_migrations
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())
    WITH CHECK (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON isolation_migrations TO tenlyr_app;

-- A tenant's schema name.
CREATE FUNCTION tenlyr_tenant_schema(tenant uuid) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$ SELECT 't_' || replace(tenant::text, '-', '') $$;

-- The advisory lock key of a tenant's placement.
CREATE FUNCTION tenlyr_place_key(tenant uuid) RETURNS bigint
    LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended('tenlyr_place:' || tenant::text, 0) $$;

-- The search_path for a schema (NULL: shared).
CREATE FUNCTION tenlyr_place_path(schema_name text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT CASE WHEN schema_name IS NULL OR schema_name = 'public' THEN 'public'
                      ELSE quote_ident(schema_name) || ', public' END $$;

-- One tenant's scope (or, tenant NULL, the platform's), routed.
CREATE OR REPLACE FUNCTION tenlyr_enter_scope(tenant uuid) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    s text;
BEGIN
    PERFORM set_config('app.tenant_id', coalesce(tenant::text, ''), true),
            set_config('app.scope', CASE WHEN tenant IS NULL THEN 'platform' ELSE '' END, true);
    IF tenant IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock_shared(tenlyr_place_key(tenant));
        SELECT p.schema_name INTO s FROM tenant_placements p
        WHERE p.tenant_id = tenant AND p.level = 'dedicated_schema';
    END IF;
    PERFORM set_config('search_path', tenlyr_place_path(s), true);
END $$;

-- Platform scope for a batch of tenants that live in one place (the
-- caller groups them): placement locks in key order, then search_path.
-- SQLSTATE TL001 when they do not (the caller's view of placements was
-- stale: it regroups and retries).
CREATE FUNCTION tenlyr_enter_tenants(tenant_ids uuid[]) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    k bigint;
    places text[];
BEGIN
    PERFORM set_config('app.tenant_id', '', true), set_config('app.scope', 'platform', true);
    FOR k IN SELECT DISTINCT tenlyr_place_key(t) FROM unnest(tenant_ids) AS t ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock_shared(k);
    END LOOP;
    SELECT array_agg(DISTINCT coalesce(p.schema_name, 'public')) INTO places
    FROM unnest(tenant_ids) AS t
    LEFT JOIN tenant_placements p ON p.tenant_id = t AND p.level = 'dedicated_schema';
    IF cardinality(places) > 1 THEN
        RAISE EXCEPTION 'the tenants of one batch live in different places: %', places
            USING ERRCODE = 'TL001';
    END IF;
    PERFORM set_config('search_path', tenlyr_place_path(places[1]), true);
END $$;

GRANT EXECUTE ON FUNCTION tenlyr_tenant_schema(uuid), tenlyr_place_key(uuid),
    tenlyr_place_path(text), tenlyr_enter_tenants(uuid[]) TO tenlyr_app;

-- The batch entry points route their batch first; their bodies are
-- unchanged (renamed to *_here) and run where search_path points.
ALTER FUNCTION tenlyr_usage_begin(uuid[], timestamptz, timestamptz)
    RENAME TO tenlyr_usage_begin_here;
CREATE FUNCTION tenlyr_usage_begin(tenant_ids uuid[], earliest timestamptz, latest timestamptz)
    RETURNS TABLE (id uuid, plan text, time_zone text, api_call_limit bigint,
                   storage_gb_limit bigint, seats_limit bigint,
                   bucket_start timestamptz, metric text, total double precision)
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenlyr_enter_tenants(tenant_ids);
    RETURN QUERY SELECT * FROM tenlyr_usage_begin_here(tenant_ids, earliest, latest);
END $$;

ALTER FUNCTION tenlyr_ingest(
    uuid[], uuid[], text[], double precision[], text[], integer[], text[], timestamptz[],
    timestamptz, timestamptz, uuid[], text[], text[], bigint[], bigint[], bigint[],
    uuid[], text[], timestamptz[], text[], double precision[], bigint[], double precision[])
    RENAME TO tenlyr_ingest_here;
CREATE FUNCTION tenlyr_ingest(
    ids uuid[], tenant_ids uuid[], metrics text[], vals double precision[],
    endpoints text[], codes integer[], keys text[], times timestamptz[],
    key_from timestamptz, key_to timestamptz,
    t_ids uuid[], t_zones text[], t_plans text[],
    t_api bigint[], t_storage bigint[], t_seats bigint[],
    r_tenants uuid[], r_grans text[], r_starts timestamptz[], r_metrics text[],
    r_totals double precision[], r_counts bigint[], r_limits double precision[])
    RETURNS TABLE (done boolean, tenant_id uuid, granularity text,
                   bucket_start timestamptz, metric text, total double precision)
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenlyr_enter_tenants(t_ids);
    RETURN QUERY SELECT * FROM tenlyr_ingest_here(
        ids, tenant_ids, metrics, vals, endpoints, codes, keys, times, key_from, key_to,
        t_ids, t_zones, t_plans, t_api, t_storage, t_seats,
        r_tenants, r_grans, r_starts, r_metrics, r_totals, r_counts, r_limits);
END $$;

ALTER FUNCTION tenlyr_log_inbound(uuid[], text[], text[], text[], text[], text[], timestamptz[],
                                  timestamptz[], text[])
    RENAME TO tenlyr_log_inbound_here;
CREATE FUNCTION tenlyr_log_inbound(tenants uuid[], ids text[], providers text[], event_ids text[],
                                   raw_types text[], types text[], occurred timestamptz[],
                                   received timestamptz[], bodies text[])
    RETURNS SETOF text
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenlyr_enter_tenants(tenants);
    RETURN QUERY SELECT * FROM tenlyr_log_inbound_here(
        tenants, ids, providers, event_ids, raw_types, types, occurred, received, bodies);
END $$;

GRANT EXECUTE ON FUNCTION
    tenlyr_usage_begin(uuid[], timestamptz, timestamptz),
    tenlyr_ingest(
        uuid[], uuid[], text[], double precision[], text[], integer[], text[], timestamptz[],
        timestamptz, timestamptz, uuid[], text[], text[], bigint[], bigint[], bigint[],
        uuid[], text[], timestamptz[], text[], double precision[], bigint[], double precision[]),
    tenlyr_log_inbound(uuid[], text[], text[], text[], text[], text[], timestamptz[],
                       timestamptz[], text[])
    TO tenlyr_app;

-- A forwarding delivery's outcome is its event's status, wherever the
-- event's tenant lives (the delivery engine's tables stay shared).
CREATE OR REPLACE FUNCTION tenlyr_inbound_delivery_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    scope text := current_setting('app.scope', true);
    tenant uuid;
    s text;
BEGIN
    PERFORM set_config('app.scope', 'platform', true);
    SELECT e.tenant_id INTO tenant FROM platform_events e WHERE e.id = NEW.event_id;
    IF tenant IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock_shared(tenlyr_place_key(tenant));
        SELECT p.schema_name INTO s FROM tenant_placements p
        WHERE p.tenant_id = tenant AND p.level = 'dedicated_schema';
    END IF;
    EXECUTE format(
        'UPDATE %I.webhook_events SET
            attempts = $1,
            status = CASE $2 WHEN ''delivered'' THEN ''processed''
                             WHEN ''failed'' THEN ''delivery_failed'' ELSE ''received'' END,
            last_error = CASE WHEN $2 = ''delivered'' THEN NULL
                              WHEN $1 = $4 THEN coalesce($3, last_error)
                              ELSE coalesce($3, ''HTTP '' || $5) END,
            processed_at = CASE WHEN $2 = ''delivered'' THEN $6 END
         WHERE id = $7', coalesce(s, 'public'))
    USING NEW.attempts, NEW.status, NEW.last_error, OLD.attempts, NEW.response_status,
          NEW.finished_at, NEW.event_id;
    PERFORM set_config('app.scope', coalesce(scope, ''), true);
    RETURN NULL;
END $$;

-- Every schema holding tenant data: public and each tenant schema (also
-- one still being filled by a move).
CREATE FUNCTION tenlyr_data_schemas() RETURNS SETOF text
    LANGUAGE sql STABLE AS $$
    SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relname = 'usage_events' AND c.relkind = 'p'
    ORDER BY n.nspname <> 'public', n.nspname
$$;
GRANT EXECUTE ON FUNCTION tenlyr_data_schemas() TO tenlyr_app;

-- Day partitions in every data schema.
CREATE OR REPLACE FUNCTION tenlyr_ensure_usage_partitions(first_day date, last_day date) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    d date;
    created integer := 0;
    part text;
    s text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tenlyr_usage_partitions'));
    FOR s IN SELECT * FROM tenlyr_data_schemas() LOOP
        FOR d IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
            part := 'usage_events_' || to_char(d, 'YYYYMMDD');
            IF to_regclass(format('%I.%I', s, part)) IS NULL THEN
                EXECUTE format(
                    'CREATE TABLE %I.%I PARTITION OF %I.usage_events FOR VALUES FROM (%L) TO (%L)',
                    s, part, s, (d::timestamp AT TIME ZONE 'UTC'),
                    ((d + 1)::timestamp AT TIME ZONE 'UTC'));
                EXECUTE format('GRANT INSERT ON %I.%I TO tenlyr_app', s, part);
                created := created + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN created;
END $$;

CREATE OR REPLACE FUNCTION tenlyr_drop_usage_partitions(before_day date) RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    part record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tenlyr_usage_partitions'));
    FOR part IN
        SELECT n.nspname AS s, c.relname AS name FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE p.relname = 'usage_events' AND p.relkind = 'p'
          AND c.relname ~ '^usage_events_[0-9]{8}$'
          AND to_date(substr(c.relname, 14), 'YYYYMMDD') < before_day
        ORDER BY n.nspname <> 'public', n.nspname, c.relname
    LOOP
        EXECUTE format('DROP TABLE %I.%I', part.s, part.name);
        IF part.s = 'public' THEN
            RETURN NEXT part.name;
        END IF;
    END LOOP;
END $$;

-- Creates (or completes) a tenant's schema: the tenant-data tables like
-- the shared ones (columns, defaults, checks, indexes), the same day
-- partitions, row-level security forced with a policy that also pins the
-- schema to its one tenant. Idempotent.
CREATE FUNCTION tenlyr_create_tenant_schema(tenant uuid) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    s text := tenlyr_tenant_schema(tenant);
    tbl text;
    part record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tenlyr_usage_partitions'));
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', s);
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO tenlyr_app', s);
    IF to_regclass(format('%I.usage_events', s)) IS NULL THEN
        EXECUTE format('CREATE TABLE %I.usage_events (LIKE public.usage_events INCLUDING ALL) '
                       'PARTITION BY RANGE (occurred_at)', s);
    END IF;
    FOR part IN
        SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'public.usage_events'::regclass
    LOOP
        IF to_regclass(format('%I.%I', s, part.name)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.usage_events %s',
                           s, part.name, s, part.bound);
            EXECUTE format('GRANT INSERT ON %I.%I TO tenlyr_app', s, part.name);
        END IF;
    END LOOP;
    FOREACH tbl IN ARRAY ARRAY['usage_rollups', 'records', 'webhook_events'] LOOP
        IF to_regclass(format('%I.%I', s, tbl)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I.%I (LIKE public.%I INCLUDING ALL)', s, tbl, tbl);
        END IF;
    END LOOP;
    FOREACH tbl IN ARRAY ARRAY['usage_events', 'usage_rollups', 'records', 'webhook_events'] LOOP
        EXECUTE format('ALTER TABLE %I.%I ENABLE ROW LEVEL SECURITY', s, tbl);
        EXECUTE format('ALTER TABLE %I.%I FORCE ROW LEVEL SECURITY', s, tbl);
        EXECUTE format('DROP POLICY IF EXISTS tenant_scope ON %I.%I', s, tbl);
        EXECUTE format(
            'CREATE POLICY tenant_scope ON %I.%I '
            'USING (tenant_id = %L AND (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())) '
            'WITH CHECK (tenant_id = %L AND (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant()))',
            s, tbl, tenant, tenant);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO tenlyr_app', s, tbl);
    END LOOP;
    RETURN s;
END $$;

-- The cross-tenant views of tenant-data tables that platform queries read
-- (the dashboard's month totals, the health scan's minute counts): the
-- shared table's rows of tenants without a placement, and every placed
-- schema's, UNION ALL. Rebuilt after a placement changes (and at start-up).
-- security_invoker: row-level security applies as to the caller.
CREATE FUNCTION tenlyr_refresh_placement_views() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    tbl text;
    body text;
    s text;
BEGIN
    -- One rebuild at a time, each reading the placements after the last
    -- one committed (a rebuild from an older list would drop a tenant).
    PERFORM pg_advisory_xact_lock(hashtext('tenlyr_placement_views'));
    FOREACH tbl IN ARRAY ARRAY['usage_rollups'] LOOP
        -- A placed tenant's rows left in the shared table (until the
        -- cleanup after its move deletes them) are not its data any more.
        body := format('SELECT * FROM public.%I r WHERE NOT EXISTS ('
                       'SELECT 1 FROM public.tenant_placements p WHERE p.tenant_id = r.tenant_id)', tbl);
        FOR s IN SELECT p.schema_name FROM tenant_placements p
                 WHERE p.level = 'dedicated_schema' ORDER BY p.schema_name LOOP
            body := body || format(' UNION ALL SELECT * FROM %I.%I', s, tbl);
        END LOOP;
        EXECUTE format('CREATE OR REPLACE VIEW public.%I WITH (security_invoker = true) AS %s',
                       tbl || '_all', body);
        EXECUTE format('GRANT SELECT ON public.%I TO tenlyr_app', tbl || '_all');
    END LOOP;
END $$;

-- Drops a tenant's schema (a failed move's target, or a deleted tenant's
-- data), after taking it out of the views; refuses a live tenant's.
CREATE FUNCTION tenlyr_drop_tenant_schema(tenant uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tenlyr_usage_partitions'));
    -- A schema that holds a live tenant's data is never dropped: only a
    -- deleted tenant's (its placement went with it) or a failed move's
    -- target (never placed).
    IF EXISTS (SELECT 1 FROM tenant_placements p JOIN tenants t ON t.id = p.tenant_id
               WHERE p.tenant_id = tenant) THEN
        RAISE EXCEPTION 'tenant % lives in its schema; it is not dropped', tenant;
    END IF;
    DELETE FROM tenant_placements WHERE tenant_id = tenant;
    PERFORM tenlyr_refresh_placement_views();
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', tenlyr_tenant_schema(tenant));
END $$;

REVOKE ALL ON FUNCTION tenlyr_create_tenant_schema(uuid), tenlyr_refresh_placement_views(),
    tenlyr_drop_tenant_schema(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenlyr_create_tenant_schema(uuid), tenlyr_refresh_placement_views(),
    tenlyr_drop_tenant_schema(uuid) TO tenlyr_app;

SELECT tenlyr_refresh_placement_views();
