-- Foundation: the application role and admin keys.

-- The role every request runs as (DESIGN.md §5): owns nothing, cannot
-- bypass row-level security. The server connects as the migration user and
-- switches to it at connection start-up.
DO $$
BEGIN
    CREATE ROLE tenlyr_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

DO $$
BEGIN
    IF NOT pg_has_role(current_user, 'tenlyr_app', 'MEMBER') THEN
        EXECUTE format('GRANT tenlyr_app TO %I', current_user);
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO tenlyr_app;

-- Platform operators' keys; not tenant-scoped. Only the HMAC-SHA256 digest
-- of a key is stored, with its first 16 characters for display.
CREATE TABLE admin_keys (
    id uuid PRIMARY KEY,
    label text NOT NULL CHECK (length(label) BETWEEN 1 AND 100),
    prefix text NOT NULL,
    key_digest bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);

GRANT SELECT, INSERT, UPDATE ON admin_keys TO tenlyr_app;
