-- The Idempotency-Key header of the API (DESIGN.md §12): the first
-- response to a key, replayed to retries by the same API key.
--
-- One row per API key and Idempotency-Key: the method and a SHA-256 of the
-- request message it was first used with, `in_flight` until the first
-- request finished, then its response (gRPC headers, message bytes and
-- trailers, which REST transcodes like any other). Rows live 24 h. A row
-- left `in_flight` by a server that died is taken over once `started_at`
-- is older than the takeover bound the caller passes.

CREATE TABLE idempotency_keys (
    key_id uuid NOT NULL,
    idempotency_key text COLLATE "C" NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    -- NULL for admin keys (platform scope only).
    tenant_id uuid REFERENCES tenants (id) ON DELETE CASCADE,
    method text NOT NULL,
    request_hash bytea NOT NULL,
    state text NOT NULL CHECK (state IN ('in_flight', 'done')),
    response_headers jsonb,
    response_body bytea,
    response_trailers jsonb,
    started_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

ALTER TABLE idempotency_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE idempotency_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON idempotency_keys
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())
    WITH CHECK (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO tenlyr_app;

-- Claims the key for a request, or returns the row that holds it: `took`
-- says which. Scope: the tenant's for a tenant key, the platform's for an
-- admin key (tenant NULL).
--
-- The claim commits without waiting for the WAL flush: the WAL is written
-- in order, so the claim is durable as soon as anything committed after it
-- is — the request's own change, or the response stored by
-- tenlyr_idempotency_finish (which waits). A crash before either loses the
-- claim together with everything the request did, and nobody was answered.
-- One fsync instead of two per keyed request.
CREATE FUNCTION tenlyr_idempotency_begin(key uuid, tenant uuid, idem text, rpc text, hash bytea,
                                         at timestamptz, stale_before timestamptz, forget_at timestamptz)
    RETURNS TABLE (took boolean, method text, request_hash bytea, state text,
                   response_headers jsonb, response_body bytea, response_trailers jsonb)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM tenlyr_enter_scope(tenant), set_config('synchronous_commit', 'off', true);
    RETURN QUERY
        INSERT INTO idempotency_keys AS k (key_id, idempotency_key, tenant_id, method, request_hash,
                                           state, started_at, expires_at)
        VALUES (key, idem, tenant, rpc, hash, 'in_flight', at, forget_at)
        ON CONFLICT (key_id, idempotency_key) DO UPDATE
            SET started_at = EXCLUDED.started_at, expires_at = EXCLUDED.expires_at
            WHERE k.state = 'in_flight' AND k.started_at < stale_before
              AND k.method = EXCLUDED.method AND k.request_hash = EXCLUDED.request_hash
        RETURNING true, k.method, k.request_hash, k.state, k.response_headers,
                  k.response_body, k.response_trailers;
    IF NOT FOUND THEN
        RETURN QUERY
            SELECT false, k.method, k.request_hash, k.state, k.response_headers,
                   k.response_body, k.response_trailers
            FROM idempotency_keys k WHERE k.key_id = key AND k.idempotency_key = idem;
    END IF;
END $$;

-- Stores the response of a request that holds its key (`done`), or
-- releases the key (`done` false: a server error, which a retry may run
-- again).
CREATE FUNCTION tenlyr_idempotency_finish(key uuid, tenant uuid, idem text, done boolean,
                                          headers jsonb, body bytea, trailers jsonb)
    RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenlyr_enter_scope(tenant);
    IF done THEN
        UPDATE idempotency_keys SET state = 'done', response_headers = headers,
               response_body = body, response_trailers = trailers
        WHERE key_id = key AND idempotency_key = idem AND state = 'in_flight';
    ELSE
        DELETE FROM idempotency_keys
        WHERE key_id = key AND idempotency_key = idem AND state = 'in_flight';
    END IF;
END $$;

GRANT EXECUTE ON FUNCTION
    tenlyr_idempotency_begin(uuid, uuid, text, text, bytea, timestamptz, timestamptz, timestamptz),
    tenlyr_idempotency_finish(uuid, uuid, text, boolean, jsonb, bytea, jsonb)
    TO tenlyr_app;
