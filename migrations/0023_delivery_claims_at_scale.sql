-- The delivery engine under a backlog (issue 14's benchmark found both).
--
-- 1. A claim read every pending delivery. Its plan started from the
--    endpoints and read each one's pending rows whole, then sorted them by
--    `next_attempt_at` to take the first few: with 12,000 deliveries
--    queued, every claim of ~20 read all 12,000 (9 ms, a third of the
--    database's time). The planner picks that plan whenever it believes
--    few deliveries are pending, which is what the statistics say in the
--    steady state (nearly every row `delivered`) — so exactly when a
--    backlog forms. A claim now reads, per eligible endpoint, at most 32
--    of its earliest due rows from an index in that order (or an ordered
--    endpoint's one oldest pending row), then keeps the earliest
--    `max_deliveries` of those: its cost follows the endpoints, not the
--    backlog (at most 32 rows each, so a recovery in which every endpoint
--    has a deep backlog stays bounded too), and one endpoint's backlog is
--    claimed 32 at a time — the dispatcher claims again as soon as a
--    request ends. Deliveries to a disabled endpoint or
--    one whose breaker is open are never read (the reason the claim starts
--    from the endpoints, not from one queue-wide index).
--
-- 2. Recording a batch of attempts ran a row trigger per forwarding
--    delivery: a lookup, a lock and a dynamic UPDATE planned anew for every
--    row (a third of recording's time). It is now one statement trigger
--    with transition tables: one UPDATE per place of the batch's tenants.

-- The predicate means `status = 'pending'` (the CHECK allows three
-- values) but is spelled so that only this index matches the claim's
-- per-endpoint read: believing an endpoint has one pending delivery (the
-- statistics of the steady state), the planner preferred reading all its
-- pending rows through webhook_deliveries_pending (endpoint, id) and
-- sorting them, O(backlog) again.
CREATE INDEX webhook_deliveries_endpoint_due ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status NOT IN ('delivered', 'failed');
-- Its one other reader, an idle dispatcher's "when is the next one due",
-- takes each endpoint's first from the index above: one index fewer to
-- write on every insert, claim and attempt.
DROP INDEX webhook_deliveries_due;

CREATE OR REPLACE FUNCTION tenlyr_claim_deliveries(at timestamptz, lease_ms bigint,
                                                   max_deliveries integer, dispatcher text)
    RETURNS TABLE (id bigint, endpoint_id uuid, event_id text, attempts integer, claims integer,
                   retry_base integer, schedule_start timestamptz, url text, secret bytea, previous_secret bytea,
                   previous_until timestamptz, body text)
    LANGUAGE sql
    AS $$
    SELECT set_config('synchronous_commit', 'off', true);
    WITH candidates AS (
        SELECT c.id, c.next_attempt_at
        FROM webhook_endpoints e
        CROSS JOIN LATERAL (
            SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
            -- `pending`, spelled as webhook_deliveries_endpoint_due is (see there).
            WHERE d.endpoint_id = e.id AND d.status NOT IN ('delivered', 'failed')
              AND d.next_attempt_at <= at
            ORDER BY d.next_attempt_at LIMIT least(max_deliveries, 32)) c
        WHERE e.enabled AND e.breaker_state = 'closed' AND NOT e.ordered
        UNION ALL
        SELECT c.id, c.next_attempt_at
        FROM webhook_endpoints e
        CROSS JOIN LATERAL (
            SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
            WHERE d.endpoint_id = e.id AND d.status = 'pending'
            ORDER BY d.id LIMIT 1) c
        WHERE e.enabled AND e.breaker_state = 'closed' AND e.ordered AND c.next_attempt_at <= at),
    -- The earliest candidates, by primary key from an array (never a join
    -- the planner could turn into a scan of every pending delivery),
    -- rechecked once locked; one that another dispatcher holds or took
    -- meanwhile is skipped (this claim takes fewer). The recheck spells
    -- `pending` so that no partial index's predicate follows from it:
    -- with `status = 'pending'` the planner, believing the pending index
    -- nearly empty, looked the ids up by scanning all of it (200,000
    -- buffers for one claim under the benchmark's backlog).
    due AS (
        SELECT d.id FROM webhook_deliveries d
        WHERE d.id = ANY (ARRAY(SELECT c.id FROM candidates c
                                ORDER BY c.next_attempt_at LIMIT max_deliveries))
          AND d.status IS NOT DISTINCT FROM 'pending' AND d.next_attempt_at <= at
        ORDER BY d.next_attempt_at FOR UPDATE OF d SKIP LOCKED)
    UPDATE webhook_deliveries d
    SET next_attempt_at = at + lease_ms * interval '1 millisecond', claims = d.claims + 1,
        leased_by = dispatcher
    FROM due, webhook_endpoints e, platform_events ev
    WHERE d.id = due.id AND e.id = d.endpoint_id AND ev.id = d.event_id
    RETURNING d.id, d.endpoint_id, d.event_id, d.attempts, d.claims, d.retry_base,
              d.schedule_start, e.url,
              e.secret, e.previous_secret, e.previous_until, ev.body
$$;

-- A forwarding delivery's outcome is its event's status: in the tenant's
-- schema here (one UPDATE per place), or — for a tenant in its own
-- database — through a job (`tenant_data.event_status`) that copies the
-- delivery's outcome there. Of several changed deliveries of one event
-- (a retry's new one beside the old), the latest decides.
CREATE FUNCTION tenlyr_inbound_deliveries_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    scope text := current_setting('app.scope', true);
    ids text[];
    tenants uuid[];
    attempts_now integer[];
    statuses text[];
    errors text[];
    keeps boolean[];
    finished timestamptz[];
    places text[];
    k bigint;
    place text;
BEGIN
    SELECT array_agg(c.event_id), array_agg(c.attempts), array_agg(c.status),
           array_agg(c.error), array_agg(c.keep), array_agg(c.finished_at)
    INTO ids, attempts_now, statuses, errors, keeps, finished
    FROM (SELECT DISTINCT ON (n.event_id) n.event_id, n.attempts, n.status,
                 CASE WHEN n.status = 'delivered' THEN NULL
                      WHEN o.attempts IS DISTINCT FROM n.attempts
                          THEN coalesce(n.last_error, 'HTTP ' || n.response_status)
                      ELSE n.last_error END AS error,
                 -- No new attempt: an error it does not name stays.
                 n.status <> 'delivered' AND o.attempts IS NOT DISTINCT FROM n.attempts AS keep,
                 n.finished_at
          FROM new_rows n JOIN old_rows o ON o.id = n.id
          WHERE n.inbound AND (o.status IS DISTINCT FROM n.status
                               OR o.attempts IS DISTINCT FROM n.attempts)
          ORDER BY n.event_id, n.id DESC) c;
    -- Claims and most other updates change no inbound delivery's outcome.
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('app.scope', 'platform', true);
    SELECT array_agg(ev.tenant_id ORDER BY r.ord) INTO tenants
    FROM unnest(ids) WITH ORDINALITY AS r(id, ord)
    LEFT JOIN platform_events ev ON ev.id = r.id;
    -- A move's barrier holds its tenant's place key exclusively: read the
    -- places under the shared locks.
    FOR k IN SELECT DISTINCT tenlyr_place_key(t) FROM unnest(tenants) AS t ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock_shared(k);
    END LOOP;
    SELECT array_agg(coalesce(CASE p.level WHEN 'dedicated_schema' THEN p.schema_name
                                           WHEN 'dedicated_database' THEN '' END, 'public')
                     ORDER BY r.ord)
    INTO places
    FROM unnest(tenants) WITH ORDINALITY AS r(tenant_id, ord)
    LEFT JOIN tenant_placements p ON p.tenant_id = r.tenant_id;
    PERFORM tenlyr_enqueue_now('tenant_data.event_status',
                               jsonb_build_object('tenantId', r.tenant_id, 'eventId', r.id))
    FROM unnest(ids, tenants, places) AS r(id, tenant_id, place) WHERE r.place = '';
    FOR place IN SELECT DISTINCT p FROM unnest(places) AS p WHERE p <> '' LOOP
        EXECUTE format(
            'UPDATE %I.webhook_events w SET
                attempts = r.attempts,
                status = CASE r.status WHEN ''delivered'' THEN ''processed''
                                       WHEN ''failed'' THEN ''delivery_failed'' ELSE ''received'' END,
                last_error = CASE WHEN r.keep THEN coalesce(r.error, w.last_error) ELSE r.error END,
                processed_at = CASE WHEN r.status = ''delivered'' THEN r.finished_at END
             FROM unnest($1, $2, $3, $4, $5, $6, $7)
                 AS r(id, attempts, status, error, keep, finished_at, place)
             WHERE w.id = r.id AND r.place = $8', place)
        USING ids, attempts_now, statuses, errors, keeps, finished, places, place;
    END LOOP;
    PERFORM set_config('app.scope', coalesce(scope, ''), true);
    RETURN NULL;
END $$;

DROP TRIGGER webhook_deliveries_inbound ON webhook_deliveries;
DROP FUNCTION tenlyr_inbound_delivery_changed();
CREATE TRIGGER webhook_deliveries_inbound AFTER UPDATE ON webhook_deliveries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tenlyr_inbound_deliveries_changed();

GRANT EXECUTE ON FUNCTION tenlyr_inbound_deliveries_changed() TO tenlyr_app;
