-- The inbound webhook gateway (DESIGN.md §8, 002_e947b442571a306e.txt):
-- the event log with its durable dedup key, and forwarding through the
-- delivery engine.

-- A tenant's callback URL is a delivery-engine endpoint owned by the
-- tenant (`tenant_id`), kept in step with `tenant_settings.callback_url` by
-- the settings service; its secret signs forwarded events. Admin endpoint
-- methods and platform-event fan-out see only endpoints without a tenant.
ALTER TABLE webhook_endpoints ADD COLUMN tenant_id uuid REFERENCES tenants (id) ON DELETE CASCADE;
CREATE UNIQUE INDEX webhook_endpoints_callback ON webhook_endpoints (tenant_id)
    WHERE tenant_id IS NOT NULL;

-- Forwarding an inbound event: its delivery feeds the event's status.
ALTER TABLE webhook_deliveries ADD COLUMN inbound boolean NOT NULL DEFAULT false;
-- An inbound event's payload (tenant data: purged with its tenant).
ALTER TABLE platform_events ADD COLUMN inbound boolean NOT NULL DEFAULT false;
CREATE INDEX platform_events_inbound ON platform_events (tenant_id) WHERE inbound;

-- One received provider event. `id` is also the `platform_events` row that
-- holds the normalized payload exactly as it is forwarded (one copy,
-- signed and sent by the engine). The dedup key is tenant + provider +
-- the provider's event id, kept for the event retention period.
-- `received` until forwarded (`processed`) or out of attempts
-- (`delivery_failed`); with no callback URL it stays `received`.
CREATE TABLE webhook_events (
    id text PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    provider text NOT NULL
        CHECK (provider IN ('stripe', 'generic', 'shopify', 'paypal', 'braintree', 'github')),
    provider_event_id text NOT NULL CHECK (length(provider_event_id) BETWEEN 1 AND 255),
    raw_type text NOT NULL,
    type text NOT NULL,
    status text NOT NULL DEFAULT 'received'
        CHECK (status IN ('received', 'queued', 'processed', 'delivery_failed')),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    processed_at timestamptz,
    UNIQUE (tenant_id, provider, provider_event_id)
);
CREATE INDEX webhook_events_tenant ON webhook_events (tenant_id, id);
CREATE INDEX webhook_events_received ON webhook_events (received_at);

ALTER TABLE webhook_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON webhook_events
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())
    WITH CHECK (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

-- Platform-event fan-out skips tenant callback endpoints (test events name
-- their endpoint).
CREATE OR REPLACE FUNCTION tenlyr_emit_event(event_id text, event_type text, tenant uuid, envelope text,
                                  at timestamptz, only_endpoint uuid) RETURNS integer
    LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    fanned integer;
BEGIN
    INSERT INTO platform_events (id, type, tenant_id, body, created_at)
    VALUES (event_id, event_type, tenant, envelope, at);
    INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, next_attempt_at,
                                    schedule_start, created_at)
    SELECT e.id, event_id, event_type, at, at, at FROM webhook_endpoints e
    WHERE e.enabled AND e.tenant_id IS NULL
      AND CASE WHEN only_endpoint IS NULL
               THEN tenlyr_event_matches(e.event_types, event_type)
               ELSE e.id = only_endpoint END
    ORDER BY e.id;
    GET DIAGNOSTICS fanned = ROW_COUNT;
    IF fanned > 0 THEN
        PERFORM pg_notify('tenlyr_webhooks', '');
    END IF;
    RETURN fanned;
END $$;

-- Logs a batch of verified webhooks (many tenants at once: the gateway's
-- group commit): each new one gets its log row, its payload and, when its
-- tenant has a callback endpoint, a delivery (which waits while the
-- endpoint is disabled: a cleared URL or a 410, until a URL is set again);
-- a duplicate of a logged event (or of an earlier row of the batch) is
-- skipped, and so is a row whose tenant no longer exists. Rows are written
-- in key order, so concurrent batches cannot deadlock. Returns the ids of
-- the rows that were new. Committed with the WAL flushed: the caller
-- answers 200 only after.
CREATE FUNCTION tenlyr_log_inbound(tenants uuid[], ids text[], providers text[], event_ids text[],
                                   raw_types text[], types text[], occurred timestamptz[],
                                   received timestamptz[], bodies text[])
    RETURNS SETOF text
    LANGUAGE plpgsql AS $$
DECLARE
    logged text[];
    fanned bigint;
BEGIN
    PERFORM set_config('app.scope', 'platform', true);
    WITH r AS (
        SELECT * FROM unnest(tenants, ids, providers, event_ids, raw_types, types, occurred,
                             received, bodies)
            AS r(tenant_id, id, provider, event_id, raw_type, type, occurred_at, received_at, body)),
    ins AS (
        INSERT INTO webhook_events (id, tenant_id, provider, provider_event_id, raw_type, type,
                                    occurred_at, received_at)
        SELECT r.id, r.tenant_id, r.provider, r.event_id, r.raw_type, r.type, r.occurred_at,
               r.received_at
        FROM r JOIN tenants t ON t.id = r.tenant_id
        ORDER BY r.tenant_id, r.provider, r.event_id
        ON CONFLICT (tenant_id, provider, provider_event_id) DO NOTHING
        RETURNING id, tenant_id),
    ev AS (
        INSERT INTO platform_events (id, type, tenant_id, body, created_at, inbound)
        SELECT r.id, r.type, r.tenant_id, r.body, r.received_at, true FROM r JOIN ins USING (id)
        RETURNING id),
    dl AS (
        INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, next_attempt_at,
                                        schedule_start, created_at, inbound)
        SELECT e.id, r.id, r.type, r.received_at, r.received_at, r.received_at, true
        FROM r JOIN ins USING (id)
        JOIN webhook_endpoints e ON e.tenant_id = ins.tenant_id
        RETURNING 1)
    SELECT array_agg(ins.id), (SELECT count(*) FROM dl)
    INTO logged, fanned FROM ins;
    IF fanned > 0 THEN
        PERFORM pg_notify('tenlyr_webhooks', '');
    END IF;
    PERFORM set_config('app.scope', '', true);
    RETURN QUERY SELECT unnest(coalesce(logged, '{}'));
END $$;

-- A forwarding delivery's outcome is its event's status: whichever path
-- changed the delivery (an attempt, a 410, a retry).
CREATE FUNCTION tenlyr_inbound_delivery_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    scope text := current_setting('app.scope', true);
BEGIN
    PERFORM set_config('app.scope', 'platform', true);
    UPDATE webhook_events SET
        attempts = NEW.attempts,
        status = CASE NEW.status WHEN 'delivered' THEN 'processed'
                                 WHEN 'failed' THEN 'delivery_failed' ELSE 'received' END,
        last_error = CASE WHEN NEW.status = 'delivered' THEN NULL
                          WHEN NEW.attempts = OLD.attempts
                              THEN coalesce(NEW.last_error, last_error)
                          ELSE coalesce(NEW.last_error, 'HTTP ' || NEW.response_status) END,
        processed_at = CASE WHEN NEW.status = 'delivered' THEN NEW.finished_at END
    WHERE id = NEW.event_id;
    PERFORM set_config('app.scope', coalesce(scope, ''), true);
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_deliveries_inbound AFTER UPDATE ON webhook_deliveries
    FOR EACH ROW WHEN (NEW.inbound AND (OLD.status IS DISTINCT FROM NEW.status
                                        OR OLD.attempts IS DISTINCT FROM NEW.attempts))
    EXECUTE FUNCTION tenlyr_inbound_delivery_changed();

GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_events TO tenlyr_app;
GRANT EXECUTE ON FUNCTION
    tenlyr_log_inbound(uuid[], text[], text[], text[], text[], text[], timestamptz[], timestamptz[],
                       text[]),
    tenlyr_inbound_delivery_changed()
    TO tenlyr_app;
