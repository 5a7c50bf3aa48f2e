-- The webhook delivery engine (DESIGN.md §8) and the platform-event outbox
-- (DESIGN.md §7). Platform tables, not tenant-scoped: only admin methods
-- and the dispatcher reach them (like jobs, no RLS).

-- An operator's endpoint for outbound platform events. `secret` (and,
-- during a rotation, `previous_secret` until `previous_until`) is sealed
-- with AES-256-GCM under the secrets key; the server never returns it after
-- creation. `event_types`: patterns (`tenant.provisioned`, `tenant.*`,
-- `*`); empty means every type. `ordered`: a delivery waits until every
-- earlier one to this endpoint succeeded or finally failed.
--
-- The circuit breaker: `closed` (deliveries flow); `open` until
-- `breaker_until` (nothing is sent, nothing burns a retry); then
-- `half_open`, one probe delivery leased until `breaker_until`, whose
-- outcome closes or reopens it. `breaker_since` starts the failure-rate
-- window of a closed breaker, so the failures that opened it do not reopen
-- it after a successful probe.
CREATE TABLE webhook_endpoints (
    id uuid PRIMARY KEY,
    url text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    description text NOT NULL DEFAULT '',
    event_types text[] NOT NULL DEFAULT '{}',
    enabled boolean NOT NULL DEFAULT true,
    disabled_reason text,
    ordered boolean NOT NULL DEFAULT false,
    secret bytea NOT NULL,
    previous_secret bytea,
    previous_until timestamptz,
    breaker_state text NOT NULL DEFAULT 'closed'
        CHECK (breaker_state IN ('closed', 'open', 'half_open')),
    breaker_until timestamptz,
    breaker_since timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

-- One platform event: `body` is the envelope exactly as it is signed and
-- sent (`{"id","type","createdAt","data"}`), the same bytes on every
-- attempt. Kept with its deliveries; the retention worker removes both.
CREATE TABLE platform_events (
    id text PRIMARY KEY,
    type text NOT NULL,
    tenant_id uuid,
    body text NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX platform_events_created ON platform_events (created_at);

-- Whether an endpoint's patterns take an event type: none (all), `*`, the
-- type itself, or a `prefix.*` wildcard.
CREATE FUNCTION tenlyr_event_matches(patterns text[], event_type text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT cardinality(patterns) = 0 OR EXISTS (
        SELECT 1 FROM unnest(patterns) p
        WHERE p = '*' OR p = event_type
           OR (right(p, 2) = '.*' AND starts_with(event_type, left(p, -1))))
$$;

-- One event to one endpoint. `pending` until it succeeds (`delivered`) or
-- runs out of attempts, hits a 410 or a disabled endpoint (`failed`).
-- A dispatcher's claim moves `next_attempt_at` to the end of its lease and
-- bumps `claims`, so a delivery whose dispatcher died is due again when
-- the lease lapses, and a late acknowledgement from it (an old `claims`)
-- changes nothing: one replica has it in flight at a time.
CREATE TABLE webhook_deliveries (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id text NOT NULL REFERENCES platform_events (id) ON DELETE CASCADE,
    event_type text NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    claims integer NOT NULL DEFAULT 0,
    -- The retry schedule counts attempts since `schedule_start`, after
    -- `retry_base` earlier ones (a recovered delivery starts it again).
    retry_base integer NOT NULL DEFAULT 0,
    schedule_start timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    leased_by text,
    response_status integer,
    last_error text,
    created_at timestamptz NOT NULL,
    finished_at timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (endpoint_id, finished_at) WHERE status = 'failed';
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

-- Every attempt: when, the status (NULL: no response), latency, the error,
-- the first 4 KiB of the response. `endpoint_id` feeds the breaker window.
CREATE TABLE webhook_attempts (
    delivery_id bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    endpoint_id uuid NOT NULL,
    attempted_at timestamptz NOT NULL,
    ok boolean NOT NULL,
    response_status integer,
    latency_ms integer NOT NULL,
    error text,
    response_excerpt text,
    PRIMARY KEY (delivery_id, attempt)
);
CREATE INDEX webhook_attempts_window ON webhook_attempts (endpoint_id, attempted_at);

-- The outbox: the event and one delivery per enabled endpoint whose
-- patterns take its type, in the caller's transaction; dispatchers hear of
-- it on tenlyr_webhooks when that transaction commits. `only_endpoint`
-- addresses one endpoint whatever its patterns (test events).
CREATE FUNCTION tenlyr_emit_event(event_id text, event_type text, tenant uuid, envelope text,
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
    WHERE e.enabled AND CASE WHEN only_endpoint IS NULL
                             THEN tenlyr_event_matches(e.event_types, event_type)
                             ELSE e.id = only_endpoint END
    ORDER BY e.id;
    GET DIAGNOSTICS fanned = ROW_COUNT;
    IF fanned > 0 THEN
        PERFORM pg_notify('tenlyr_webhooks', '');
    END IF;
    RETURN fanned;
END $$;

-- A dispatcher's claim: up to max_deliveries due deliveries to enabled
-- endpoints with a closed breaker, oldest first, skipping rows other
-- dispatchers hold; an ordered endpoint's delivery only when no earlier
-- one of it is pending. Returns what sending needs. Claims and
-- acknowledgements commit without waiting for the WAL flush, as job
-- claims do: a crash forgets at most the last few, which are then sent
-- again (at least once).
CREATE FUNCTION tenlyr_claim_deliveries(at timestamptz, lease_ms bigint, max_deliveries integer,
                                        dispatcher text)
    RETURNS TABLE (id bigint, endpoint_id uuid, event_id text, attempts integer, claims integer,
                   retry_base integer, schedule_start timestamptz, url text, secret bytea, previous_secret bytea,
                   previous_until timestamptz, body text)
    LANGUAGE sql
    AS $$
    SELECT set_config('synchronous_commit', 'off', true);
    WITH due AS (
        SELECT d.id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
        WHERE d.status = 'pending' AND d.next_attempt_at <= at
          AND e.enabled AND e.breaker_state = 'closed'
          AND (NOT e.ordered OR NOT EXISTS (
                SELECT 1 FROM webhook_deliveries p
                WHERE p.endpoint_id = d.endpoint_id AND p.status = 'pending' AND p.id < d.id))
        ORDER BY d.next_attempt_at LIMIT max_deliveries FOR UPDATE OF d SKIP LOCKED)
    UPDATE webhook_deliveries d
    SET next_attempt_at = at + lease_ms * interval '1 millisecond', claims = d.claims + 1,
        leased_by = dispatcher
    FROM due, webhook_endpoints e, platform_events ev
    WHERE d.id = due.id AND e.id = d.endpoint_id AND ev.id = d.event_id
    RETURNING d.id, d.endpoint_id, d.event_id, d.attempts, d.claims, d.retry_base,
              d.schedule_start, e.url,
              e.secret, e.previous_secret, e.previous_until, ev.body
$$;

-- Half-open probes: every endpoint whose breaker's open period ended goes
-- half-open, leased to this dispatcher until `at + lease`, and its oldest
-- pending delivery is claimed as the probe. An endpoint with nothing to
-- probe closes.
CREATE FUNCTION tenlyr_claim_probes(at timestamptz, lease_ms bigint, dispatcher text)
    RETURNS TABLE (id bigint, endpoint_id uuid, event_id text, attempts integer, claims integer,
                   retry_base integer, schedule_start timestamptz, url text, secret bytea, previous_secret bytea,
                   previous_until timestamptz, body text)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    ep uuid;
    probe bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    FOR ep IN
        UPDATE webhook_endpoints w SET breaker_state = 'half_open',
            breaker_until = at + lease_ms * interval '1 millisecond'
        WHERE w.breaker_state <> 'closed' AND w.breaker_until <= at AND w.enabled
        RETURNING w.id
    LOOP
        SELECT d.id INTO probe FROM webhook_deliveries d
        WHERE d.endpoint_id = ep AND d.status = 'pending'
        ORDER BY d.id LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF probe IS NULL THEN
            UPDATE webhook_endpoints SET breaker_state = 'closed', breaker_until = NULL,
                breaker_since = at WHERE webhook_endpoints.id = ep;
            CONTINUE;
        END IF;
        RETURN QUERY
        UPDATE webhook_deliveries d
        SET next_attempt_at = at + lease_ms * interval '1 millisecond', claims = d.claims + 1,
            leased_by = dispatcher
        FROM webhook_endpoints e, platform_events ev
        WHERE d.id = probe AND e.id = d.endpoint_id AND ev.id = d.event_id
        RETURNING d.id, d.endpoint_id, d.event_id, d.attempts, d.claims, d.retry_base,
              d.schedule_start, e.url,
                  e.secret, e.previous_secret, e.previous_until, ev.body;
    END LOOP;
END $$;

-- Records a batch of attempts: each delivery whose claim is still current
-- becomes `delivered`, stays `pending` until `next_at`, or `failed`
-- (`next_at` NULL); its attempt is logged. Returns the deliveries it
-- updated (a stale claim, or a delivery deleted with its endpoint, is
-- skipped).
CREATE FUNCTION tenlyr_finish_deliveries(ids bigint[], claimed integer[], oks boolean[],
                                         next_at timestamptz[], statuses integer[],
                                         latencies integer[], errors text[], excerpts text[],
                                         at timestamptz)
    RETURNS SETOF bigint
    LANGUAGE sql AS $$
    SELECT set_config('synchronous_commit', 'off', true);
    WITH r AS (
        SELECT * FROM unnest(ids, claimed, oks, next_at, statuses, latencies, errors, excerpts)
            AS r(id, claims, ok, next_at, status, latency, error, excerpt)),
    done AS (
        UPDATE webhook_deliveries d SET
            attempts = d.attempts + 1,
            status = CASE WHEN r.ok THEN 'delivered' WHEN r.next_at IS NULL THEN 'failed'
                          ELSE 'pending' END,
            next_attempt_at = coalesce(r.next_at, d.next_attempt_at),
            finished_at = CASE WHEN r.ok OR r.next_at IS NULL THEN at END,
            response_status = r.status, last_error = r.error, leased_by = NULL
        FROM r WHERE d.id = r.id AND d.claims = r.claims AND d.status = 'pending'
        RETURNING d.id, d.attempts, d.endpoint_id, r.ok, r.status, r.latency, r.error, r.excerpt),
    logged AS (
        INSERT INTO webhook_attempts (delivery_id, attempt, endpoint_id, attempted_at, ok,
                                      response_status, latency_ms, error, response_excerpt)
        SELECT id, attempts, endpoint_id, at, ok, status, latency, error, excerpt FROM done
        RETURNING 1)
    SELECT id FROM done
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints, platform_events, webhook_deliveries,
    webhook_attempts TO tenlyr_app;
GRANT EXECUTE ON FUNCTION tenlyr_event_matches(text[], text),
    tenlyr_emit_event(text, text, uuid, text, timestamptz, uuid),
    tenlyr_claim_deliveries(timestamptz, bigint, integer, text),
    tenlyr_claim_probes(timestamptz, bigint, text),
    tenlyr_finish_deliveries(bigint[], integer[], boolean[], timestamptz[], integer[], integer[],
                             text[], text[], timestamptz)
    TO tenlyr_app;
