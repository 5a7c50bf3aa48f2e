-- Group commit of record calls (issue 18's speed): a committer takes the
-- locks, saves and gets that arrived while its previous statement ran and
-- runs them in one call, in arrival order, in one transaction — one round
-- trip and one WAL flush for the batch instead of one per call. Each operation
-- has exactly the meaning of tenlyr_record_lock / tenlyr_record_save; a
-- later operation on the same key sees the earlier one (two lockers of one
-- key in a batch: the first takes it, the second is refused). The batch's
-- tenants live in one place (tenlyr_enter_tenants routes it; TL001
-- otherwise, and the caller regroups). The caller sorts a batch by tenant
-- and key (stable), so concurrent batches lock rows in one order.

CREATE FUNCTION tenlyr_record_batch(kinds text[], tenants uuid[], record_keys text[],
                                    tokens uuid[], prints text[], payloads jsonb[],
                                    at timestamptz, lease_untils timestamptz[],
                                    forget_ats timestamptz[])
    RETURNS TABLE (ord integer, hit boolean, state text, lock_token uuid, fingerprint text,
                   locked_until timestamptz, data jsonb, created_at timestamptz,
                   updated_at timestamptz, expires_at timestamptz)
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    i integer;
BEGIN
    PERFORM tenlyr_enter_tenants(tenants);
    FOR i IN 1 .. coalesce(cardinality(kinds), 0) LOOP
        -- Each operation under its own tenant's scope (enter_tenants left
        -- the platform's), so row-level security still backs the
        -- predicates below.
        PERFORM set_config('app.tenant_id', tenants[i]::text, true),
                set_config('app.scope', '', true);
        IF kinds[i] = 'lock' THEN
            RETURN QUERY
                INSERT INTO records AS r (tenant_id, key, state, lock_token, fingerprint,
                                          locked_until, created_at, updated_at, expires_at)
                VALUES (tenants[i], record_keys[i], 'locked', tokens[i], prints[i],
                        lease_untils[i], at, at, forget_ats[i])
                ON CONFLICT (tenant_id, key) DO UPDATE
                    SET lock_token = EXCLUDED.lock_token, locked_until = EXCLUDED.locked_until,
                        updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at
                    WHERE r.state = 'locked' AND r.locked_until <= at
                      AND r.fingerprint IS NOT DISTINCT FROM EXCLUDED.fingerprint
                RETURNING i, true, r.state, r.lock_token, r.fingerprint, r.locked_until, r.data,
                          r.created_at, r.updated_at, r.expires_at;
            IF NOT FOUND THEN
                RETURN QUERY
                    SELECT i, false, r.state, r.lock_token, r.fingerprint, r.locked_until,
                           r.data, r.created_at, r.updated_at, r.expires_at
                    FROM records r WHERE r.tenant_id = tenants[i] AND r.key = record_keys[i];
            END IF;
        ELSIF kinds[i] = 'get' THEN
            RETURN QUERY
                SELECT i, true, r.state, r.lock_token, r.fingerprint, r.locked_until, r.data,
                       r.created_at, r.updated_at, r.expires_at
                FROM records r WHERE r.tenant_id = tenants[i] AND r.key = record_keys[i];
        ELSE
            RETURN QUERY
                UPDATE records r SET state = 'saved', data = payloads[i], updated_at = at,
                                     expires_at = forget_ats[i]
                WHERE r.tenant_id = tenants[i] AND r.key = record_keys[i]
                  AND r.lock_token = tokens[i] AND r.state = 'locked' AND r.locked_until > at
                RETURNING i, true, r.state, r.lock_token, r.fingerprint, r.locked_until, r.data,
                          r.created_at, r.updated_at, r.expires_at;
            IF NOT FOUND THEN
                RETURN QUERY
                    SELECT i, r.state = 'saved' AND r.lock_token = tokens[i]
                              AND r.data = payloads[i],
                           r.state, r.lock_token, r.fingerprint, r.locked_until, r.data,
                           r.created_at, r.updated_at, r.expires_at
                    FROM records r WHERE r.tenant_id = tenants[i] AND r.key = record_keys[i];
            END IF;
        END IF;
    END LOOP;
END $$;

GRANT EXECUTE ON FUNCTION tenlyr_record_batch(text[], uuid[], text[], uuid[], text[], jsonb[],
    timestamptz, timestamptz[], timestamptz[]) TO tenlyr_app;
