-- Background work (DESIGN.md §7): the job queue and the leases that elect
-- one replica per tick of a periodic worker. Neither is tenant-scoped: jobs
-- carry their tenant in the payload and reach tenant rows through scoped
-- transactions like requests do.

-- A job is `queued` until a runner claims it; a claim sets `running` and
-- moves `run_at` to the end of the lease, so a job whose runner died is
-- claimable again once `run_at` passes, by the same index scan as a queued
-- one. `attempts` counts claims and fences acknowledgements: a runner may
-- finish or fail a job only while `attempts` is still what it claimed.
-- Finished jobs are deleted; a job out of attempts stays, `dead`.
CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL CHECK (length(kind) BETWEEN 1 AND 100),
    payload jsonb NOT NULL DEFAULT '{}',
    state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL CHECK (max_attempts >= 1),
    run_at timestamptz NOT NULL,
    locked_by text,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- Runners take due jobs oldest first; the scan stops at the first rows it
-- can lock.
CREATE INDEX jobs_due ON jobs (run_at) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_dead ON jobs (updated_at) WHERE state = 'dead';

-- A runner's claim: up to max_jobs due jobs of its kinds, oldest first,
-- skipping rows other runners hold, each leased for its kind's lease_ms.
--
-- Claims and acknowledgements (tenlyr_finish_jobs) commit without waiting
-- for the WAL flush (synchronous_commit off, for their own transaction
-- only): a crash may forget the last few, which only means those jobs run
-- again, as the at-least-once contract every handler meets already
-- allows. Enqueues stay durable. Two fsyncs per batch were most of a
-- runner's time.
-- Planned as an index scan in run_at order whatever the statistics say: a
-- queue's table churns faster than ANALYZE follows, and with a deep
-- backlog the planner's bitmap scan and sort of every due row took 58 ms
-- per claim of 32 at 50,000 queued jobs, the index scan 1.5 ms (EXPLAIN
-- ANALYZE).
CREATE FUNCTION tenlyr_claim_jobs(kinds text[], lease_ms bigint[], at timestamptz,
                                  max_jobs integer, runner text)
    RETURNS TABLE (id bigint, kind text, payload jsonb, attempts integer, max_attempts integer)
    LANGUAGE sql
    SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off
    AS $$
    SELECT set_config('synchronous_commit', 'off', true);
    WITH due AS (
        SELECT j.id FROM jobs j
        WHERE j.state IN ('queued', 'running') AND j.run_at <= at AND j.kind = ANY(kinds)
        ORDER BY j.run_at LIMIT max_jobs FOR UPDATE SKIP LOCKED)
    UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, locked_by = runner, updated_at = at,
        run_at = at + lease_ms[array_position(kinds, j.kind)] * interval '1 millisecond'
    FROM due WHERE j.id = due.id
    RETURNING j.id, j.kind, j.payload, j.attempts, j.max_attempts
$$;

-- Deletes finished jobs whose claim is still current (the attempt number
-- fences a runner whose lease lapsed); how many.
CREATE FUNCTION tenlyr_finish_jobs(ids bigint[], claims integer[]) RETURNS bigint
    LANGUAGE sql AS $$
    SELECT set_config('synchronous_commit', 'off', true);
    WITH done AS (
        DELETE FROM jobs j USING unnest(ids, claims) AS d(id, attempts)
        WHERE j.id = d.id AND j.attempts = d.attempts AND j.state = 'running'
        RETURNING 1)
    SELECT count(*) FROM done
$$;

-- One row per elected periodic worker: who runs the current tick, until
-- when (a holder that died loses it then), and when the last tick started,
-- so a replica whose timer fires later in the same period does not tick
-- again.
CREATE TABLE worker_leases (
    name text PRIMARY KEY,
    holder text,
    held_until timestamptz,
    last_tick_at timestamptz
);

GRANT SELECT, INSERT, UPDATE, DELETE ON jobs, worker_leases TO tenlyr_app;
GRANT EXECUTE ON FUNCTION tenlyr_claim_jobs(text[], bigint[], timestamptz, integer, text),
    tenlyr_finish_jobs(bigint[], integer[]) TO tenlyr_app;

-- Runners LISTEN on tenlyr_jobs; every statement that adds jobs tells them
-- which kinds, once per kind, when it commits.
CREATE FUNCTION tenlyr_jobs_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tenlyr_jobs', kind) FROM (SELECT DISTINCT kind FROM added) k;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_notify AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION tenlyr_jobs_notify();

-- Requests and workers log in as tenlyr_app itself (the server sets its
-- password when it applies migrations; see storage::login), so a pool
-- connection has no other role to return to with RESET ROLE.
