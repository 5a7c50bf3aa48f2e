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
