-- Idempotent records (`/v1/record`: lock -> save -> get, DESIGN.md §12).
--
-- One row per tenant and key. `locked`: `lock_token` holds the lease until
-- `locked_until`; an expired lock is taken over with a new token (the old
-- one can no longer save). `saved`: `data` is the result, kept until
-- `expires_at` (retention after saving); the record-expiry worker deletes
-- rows past it. A lock that was never saved expires the same way,
-- counted from its lease's end. `fingerprint` (optional) is what the key
-- was first locked with; the same key with another fingerprint is refused.

CREATE TABLE records (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key text COLLATE "C" NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    state text NOT NULL CHECK (state IN ('locked', 'saved')),
    lock_token uuid NOT NULL,
    fingerprint text,
    locked_until timestamptz NOT NULL,
    data jsonb,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX records_expiry ON records (expires_at);

ALTER TABLE records ENABLE ROW LEVEL SECURITY;
ALTER TABLE records FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON records
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())
    WITH CHECK (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

GRANT SELECT, INSERT, UPDATE, DELETE ON records TO tenlyr_app;

-- Each call is one statement in its own transaction: it sets the tenant
-- scope for that transaction (as Db::begin does) and runs under it, so a
-- record call is one round trip.

-- The scope of the calling transaction, as storage::scope::set_scope sets
-- it: one tenant's rows, or (tenant NULL) the platform's.
CREATE FUNCTION tenlyr_enter_scope(tenant uuid) RETURNS void
    LANGUAGE sql AS $$
    SELECT set_config('app.tenant_id', coalesce(tenant::text, ''), true),
           set_config('app.scope', CASE WHEN tenant IS NULL THEN 'platform' ELSE '' END, true);
$$;

-- Takes the lock on a free key or on one whose lock expired (same
-- fingerprint); returns the row as it is now and whether this call took
-- the lock (`took`). The caller decides from the row when it did not.
CREATE FUNCTION tenlyr_record_lock(tenant uuid, record_key text, token uuid, print text,
                                   at timestamptz, lease_until timestamptz, forget_at timestamptz)
    RETURNS TABLE (took boolean, state text, lock_token uuid, fingerprint text,
                   locked_until timestamptz, data jsonb, created_at timestamptz,
                   updated_at timestamptz, expires_at timestamptz)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM tenlyr_enter_scope(tenant);
    RETURN QUERY
        INSERT INTO records AS r (tenant_id, key, state, lock_token, fingerprint, locked_until,
                                  created_at, updated_at, expires_at)
        VALUES (tenant, record_key, 'locked', token, print, lease_until, at, at, forget_at)
        ON CONFLICT (tenant_id, key) DO UPDATE
            SET lock_token = EXCLUDED.lock_token, locked_until = EXCLUDED.locked_until,
                updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at
            WHERE r.state = 'locked' AND r.locked_until <= at
              AND r.fingerprint IS NOT DISTINCT FROM EXCLUDED.fingerprint
        RETURNING true, r.state, r.lock_token, r.fingerprint, r.locked_until, r.data,
                  r.created_at, r.updated_at, r.expires_at;
    IF NOT FOUND THEN
        RETURN QUERY
            SELECT false, r.state, r.lock_token, r.fingerprint, r.locked_until, r.data,
                   r.created_at, r.updated_at, r.expires_at
            FROM records r WHERE r.tenant_id = tenant AND r.key = record_key;
    END IF;
END $$;

-- Saves `payload` under the current, unexpired token; saving again with
-- the same token and the same data changes nothing. Returns the row as it
-- is now and whether the save holds (`saved_now`); absent: no record.
CREATE FUNCTION tenlyr_record_save(tenant uuid, record_key text, token uuid, payload jsonb,
                                   at timestamptz, forget_at timestamptz)
    RETURNS TABLE (saved_now boolean, state text, lock_token uuid, fingerprint text,
                   locked_until timestamptz, data jsonb, created_at timestamptz,
                   updated_at timestamptz, expires_at timestamptz)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM tenlyr_enter_scope(tenant);
    RETURN QUERY
        UPDATE records r SET state = 'saved', data = payload, updated_at = at, expires_at = forget_at
        WHERE r.tenant_id = tenant AND r.key = record_key AND r.lock_token = token
          AND r.state = 'locked' AND r.locked_until > at
        RETURNING true, r.state, r.lock_token, r.fingerprint, r.locked_until, r.data,
                  r.created_at, r.updated_at, r.expires_at;
    IF NOT FOUND THEN
        RETURN QUERY
            SELECT r.state = 'saved' AND r.lock_token = token AND r.data = payload,
                   r.state, r.lock_token, r.fingerprint, r.locked_until, r.data,
                   r.created_at, r.updated_at, r.expires_at
            FROM records r WHERE r.tenant_id = tenant AND r.key = record_key;
    END IF;
END $$;

-- Reads one record under the tenant's scope.
CREATE FUNCTION tenlyr_record_get(tenant uuid, record_key text)
    RETURNS TABLE (state text, lock_token uuid, fingerprint text, locked_until timestamptz,
                   data jsonb, created_at timestamptz, updated_at timestamptz,
                   expires_at timestamptz)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM tenlyr_enter_scope(tenant);
    RETURN QUERY
        SELECT r.state, r.lock_token, r.fingerprint, r.locked_until, r.data,
               r.created_at, r.updated_at, r.expires_at
        FROM records r WHERE r.tenant_id = tenant AND r.key = record_key;
END $$;

GRANT EXECUTE ON FUNCTION
    tenlyr_enter_scope(uuid),
    tenlyr_record_lock(uuid, text, uuid, text, timestamptz, timestamptz, timestamptz),
    tenlyr_record_save(uuid, text, uuid, jsonb, timestamptz, timestamptz),
    tenlyr_record_get(uuid, text)
    TO tenlyr_app;
