-- The dedicated_database tier (DESIGN.md §10, issue 16): a tenant's data in
-- its own database, on one of the servers TENLYR_DEDICATED_DATABASE_URLS
-- names (default: the main server). That database gets every migration,
-- like this one; it holds the tenant's data tables and a mirror of its
-- tenant row (the foreign keys and the ingest's plan limits read it). The
-- control plane — keys, settings, jobs, deliveries, placements — stays
-- here.
--
-- The router (storage::tenant_data) sends a dedicated_database tenant's
-- data transactions to that database's pool. Here, its tenant scope points
-- `search_path` at `tenlyr_elsewhere`, whose guard views stand in for the
-- data tables and raise TL001 ("misrouted") on any use: control-plane work
-- under the tenant's scope still runs here, and data work that reached the
-- wrong database fails loudly (the caller refreshes its placements and
-- goes where the data is) instead of reading or writing the shared tables.

ALTER TABLE tenant_placements
    ADD COLUMN database_server text,
    ADD COLUMN database_name text,
    ADD CONSTRAINT tenant_placements_database
        CHECK ((level = 'dedicated_database') = (database_name IS NOT NULL AND database_server IS NOT NULL));

-- The server a move to the dedicated_database tier chose (fixed at its
-- first run, so a resumed move finds the database it began filling).
ALTER TABLE isolation_migrations ADD COLUMN target_server text;

-- Stable, so a guard view's filter runs once per statement, before any row.
CREATE FUNCTION tenlyr_data_elsewhere() RETURNS boolean
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    RAISE EXCEPTION 'this tenant''s data lives in its own database'
        USING ERRCODE = 'TL001';
END $$;

CREATE SCHEMA tenlyr_elsewhere;
GRANT USAGE ON SCHEMA tenlyr_elsewhere TO tenlyr_app;
DO $$
DECLARE
    tbl text;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['usage_events', 'usage_rollups', 'records', 'webhook_events'] LOOP
        EXECUTE format('CREATE VIEW tenlyr_elsewhere.%I WITH (security_invoker = true) AS '
                       'SELECT * FROM public.%I WHERE tenlyr_data_elsewhere() '
                       'WITH CASCADED CHECK OPTION', tbl, tbl);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON tenlyr_elsewhere.%I TO tenlyr_app',
                       tbl);
    END LOOP;
END $$;
GRANT EXECUTE ON FUNCTION tenlyr_data_elsewhere() TO tenlyr_app;

-- A placement's search_path: the tenant's schema, the guard schema of a
-- tenant whose data is in another database, or the shared tables.
CREATE OR REPLACE FUNCTION tenlyr_enter_scope(tenant uuid) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    s text;
BEGIN
    PERFORM set_config('app.tenant_id', coalesce(tenant::text, ''), true),
            set_config('app.scope', CASE WHEN tenant IS NULL THEN 'platform' ELSE '' END, true);
    IF tenant IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock_shared(tenlyr_place_key(tenant));
        SELECT CASE p.level WHEN 'dedicated_schema' THEN p.schema_name ELSE 'tenlyr_elsewhere' END
        INTO s FROM tenant_placements p WHERE p.tenant_id = tenant;
    END IF;
    PERFORM set_config('search_path', tenlyr_place_path(s), true);
END $$;

-- A batch whose tenants live in one place of this database; TL001 when
-- they do not, or when one of them lives in its own database.
CREATE OR REPLACE FUNCTION tenlyr_enter_tenants(tenant_ids uuid[]) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    k bigint;
    places text[];
BEGIN
    PERFORM set_config('app.tenant_id', '', true), set_config('app.scope', 'platform', true);
    FOR k IN SELECT DISTINCT tenlyr_place_key(t) FROM unnest(tenant_ids) AS t ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock_shared(k);
    END LOOP;
    SELECT array_agg(DISTINCT coalesce(CASE p.level WHEN 'dedicated_schema' THEN p.schema_name
                                                    WHEN 'dedicated_database' THEN 'tenlyr_elsewhere'
                                               END, 'public'))
    INTO places
    FROM unnest(tenant_ids) AS t
    LEFT JOIN tenant_placements p ON p.tenant_id = t;
    IF cardinality(places) > 1 OR places[1] = 'tenlyr_elsewhere' THEN
        RAISE EXCEPTION 'the tenants of one batch live in different places: %', places
            USING ERRCODE = 'TL001';
    END IF;
    PERFORM set_config('search_path', tenlyr_place_path(places[1]), true);
END $$;

-- Jobs the triggers below add: due at once, whatever the workers' clock.
CREATE FUNCTION tenlyr_enqueue_now(job_kind text, job_payload jsonb) RETURNS void
    LANGUAGE sql AS $$
    INSERT INTO jobs (kind, payload, max_attempts, run_at, created_at, updated_at)
    VALUES (job_kind, job_payload, 1000, '-infinity', now(), now());
$$;

-- A forwarding delivery's outcome is its event's status: in the tenant's
-- schema here, or — for a tenant in its own database — through a job
-- (`tenant_data.event_status`) that copies the delivery's outcome there.
CREATE OR REPLACE FUNCTION tenlyr_inbound_delivery_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    scope text := current_setting('app.scope', true);
    tenant uuid;
    lvl text;
    s text;
BEGIN
    PERFORM set_config('app.scope', 'platform', true);
    SELECT e.tenant_id INTO tenant FROM platform_events e WHERE e.id = NEW.event_id;
    IF tenant IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock_shared(tenlyr_place_key(tenant));
        SELECT p.level, p.schema_name INTO lvl, s FROM tenant_placements p
        WHERE p.tenant_id = tenant;
    END IF;
    IF lvl = 'dedicated_database' THEN
        PERFORM tenlyr_enqueue_now('tenant_data.event_status',
                                   jsonb_build_object('tenantId', tenant, 'eventId', NEW.event_id));
    ELSE
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
    END IF;
    PERFORM set_config('app.scope', coalesce(scope, ''), true);
    RETURN NULL;
END $$;

-- A tenant row mirrored into its own database follows every change here
-- (`tenant_data.mirror`, a job: the other database is not in this
-- transaction).
CREATE FUNCTION tenlyr_tenant_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM tenant_placements p
               WHERE p.tenant_id = NEW.id AND p.level = 'dedicated_database') THEN
        PERFORM tenlyr_enqueue_now('tenant_data.mirror', jsonb_build_object('tenantId', NEW.id));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tenants_mirror AFTER UPDATE ON tenants
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*
                       AND OLD.last_active_at IS NOT DISTINCT FROM NEW.last_active_at)
    EXECUTE FUNCTION tenlyr_tenant_changed();

-- In the tenant's own database: its tenant row as the main database has
-- it, inserted or overwritten whole (never deleted here: that would
-- cascade to its data).
CREATE FUNCTION tenlyr_mirror_tenant(tenant_row jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    cols text;
    vals text;
BEGIN
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum),
           string_agg('EXCLUDED.' || quote_ident(attname), ', ' ORDER BY attnum)
    INTO cols, vals
    FROM pg_attribute WHERE attrelid = 'public.tenants'::regclass AND attnum > 0 AND NOT attisdropped;
    EXECUTE format('INSERT INTO public.tenants SELECT * FROM jsonb_populate_record(NULL::public.tenants, $1) '
                   'ON CONFLICT (id) DO UPDATE SET (%s) = ROW(%s)', cols, vals)
    USING tenant_row;
END $$;

-- The inbound log's first half in a tenant's own database: the events
-- (deduplicated as tenlyr_log_inbound does). Returns, per row, the id of
-- the logged event (the new row's, or the earlier copy's) and whether it
-- still waits for its forward (status `received`): the caller then
-- forwards those in the main database, idempotently (a copy that arrives
-- after a crash between the two halves finishes the first one's forward).
CREATE FUNCTION tenlyr_log_inbound_events(tenants uuid[], ids text[], providers text[],
                                          event_ids text[], raw_types text[], types text[],
                                          occurred timestamptz[], received timestamptz[])
    RETURNS TABLE (ord integer, logged_id text, is_new boolean, waiting boolean)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM tenlyr_enter_tenants(tenants);
    RETURN QUERY
    WITH r AS (
        SELECT * FROM unnest(tenants, ids, providers, event_ids, raw_types, types, occurred, received)
            WITH ORDINALITY
            AS r(tenant_id, id, provider, event_id, raw_type, type, occurred_at, received_at, ord)),
    ins AS (
        INSERT INTO webhook_events (id, tenant_id, provider, provider_event_id, raw_type, type,
                                    occurred_at, received_at)
        SELECT r.id, r.tenant_id, r.provider, r.event_id, r.raw_type, r.type, r.occurred_at,
               r.received_at
        FROM r JOIN tenants t ON t.id = r.tenant_id
        ORDER BY r.tenant_id, r.provider, r.event_id
        ON CONFLICT (tenant_id, provider, provider_event_id) DO NOTHING
        RETURNING id)
    SELECT r.ord::integer,
           coalesce(ins.id, w.id),
           ins.id IS NOT NULL,
           ins.id IS NOT NULL OR w.status = 'received'
    FROM r LEFT JOIN ins ON ins.id = r.id
    LEFT JOIN webhook_events w ON ins.id IS NULL AND w.tenant_id = r.tenant_id
        AND w.provider = r.provider AND w.provider_event_id = r.event_id
    WHERE ins.id IS NOT NULL OR w.id IS NOT NULL
    ORDER BY r.ord;
END $$;

-- The inbound log's second half, in the main database: the platform
-- events and their forwarding deliveries, for events logged in a tenant's
-- own database. Idempotent: an event already here is skipped.
CREATE FUNCTION tenlyr_forward_inbound(tenants uuid[], ids text[], types text[],
                                       received timestamptz[], bodies text[])
    RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    fanned bigint;
BEGIN
    PERFORM set_config('app.scope', 'platform', true);
    WITH r AS (
        SELECT * FROM unnest(tenants, ids, types, received, bodies)
            AS r(tenant_id, id, type, received_at, body)),
    ev AS (
        INSERT INTO platform_events (id, type, tenant_id, body, created_at, inbound)
        SELECT r.id, r.type, r.tenant_id, r.body, r.received_at, true
        FROM r JOIN tenants t ON t.id = r.tenant_id
        ORDER BY r.id
        ON CONFLICT (id) DO NOTHING
        RETURNING id, tenant_id),
    dl AS (
        INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, next_attempt_at,
                                        schedule_start, created_at, inbound)
        SELECT e.id, r.id, r.type, r.received_at, r.received_at, r.received_at, true
        FROM r JOIN ev USING (id)
        JOIN webhook_endpoints e ON e.tenant_id = ev.tenant_id
        RETURNING 1)
    SELECT count(*) INTO fanned FROM dl;
    IF fanned > 0 THEN
        PERFORM pg_notify('tenlyr_webhooks', '');
    END IF;
    PERFORM set_config('app.scope', '', true);
END $$;

-- Drops the schema a tenant left for its own database (the cleanup after
-- such a move); refuses any other.
CREATE FUNCTION tenlyr_drop_left_schema(tenant uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tenlyr_usage_partitions'));
    IF NOT EXISTS (SELECT 1 FROM tenant_placements p
                   WHERE p.tenant_id = tenant AND p.level = 'dedicated_database') THEN
        RAISE EXCEPTION 'tenant % does not live in its own database; its schema stays', tenant;
    END IF;
    -- Out of the cross-tenant views first (a drop would cascade to them).
    PERFORM tenlyr_refresh_placement_views();
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', tenlyr_tenant_schema(tenant));
END $$;

REVOKE ALL ON FUNCTION tenlyr_drop_left_schema(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenlyr_enqueue_now(text, jsonb), tenlyr_tenant_changed(),
    tenlyr_mirror_tenant(jsonb),
    tenlyr_log_inbound_events(uuid[], text[], text[], text[], text[], text[], timestamptz[],
                              timestamptz[]),
    tenlyr_forward_inbound(uuid[], text[], text[], timestamptz[], text[]),
    tenlyr_drop_left_schema(uuid)
    TO tenlyr_app;
