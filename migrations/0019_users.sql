-- Backoffice users, their one-time links, sessions and failed-login
-- counters (DESIGN.md §13, docs/backoffice.md).

-- Platform users (super_admin, admin) have no tenant; tenant users
-- (owner, developer, viewer) have exactly one.
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL CHECK (email = lower(email)),
    role text NOT NULL CHECK (role IN ('super_admin', 'admin', 'owner', 'developer', 'viewer')),
    tenant_id uuid REFERENCES tenants (id) ON DELETE CASCADE,
    status text NOT NULL CHECK (status IN ('invited', 'active', 'deactivated')),
    -- bcrypt; null until the invite is accepted.
    password_hash text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz,
    CHECK ((role IN ('super_admin', 'admin')) = (tenant_id IS NULL))
);
CREATE UNIQUE INDEX users_email ON users (email);
CREATE INDEX users_tenant ON users (tenant_id, id);

-- Invite and reset links: only the HMAC digest of the token is kept; one
-- live link per user and purpose; used links are deleted.
CREATE TABLE user_tokens (
    digest bytea PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose text NOT NULL CHECK (purpose IN ('invite', 'reset')),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, purpose)
);

-- Server-side sessions: the cookie holds a random token, this table its
-- HMAC digest. `last_seen_at` is written in batches (like keys' last use).
CREATE TABLE sessions (
    digest bytea PRIMARY KEY,
    id uuid NOT NULL UNIQUE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- Failed sign-ins per subject (`email:<address>` or `ip:<address>`) in a
-- fixed window; a subject over its limit is refused until `locked_until`.
CREATE TABLE login_failures (
    subject text PRIMARY KEY,
    failures integer NOT NULL,
    window_started_at timestamptz NOT NULL,
    locked_until timestamptz
);

-- Tenant owners manage their own tenant's users; authentication (finding a
-- user by email, a session by digest) runs in platform scope.
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON users
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

ALTER TABLE audit_log ADD COLUMN actor_user_id uuid;
CREATE INDEX audit_log_user ON audit_log (actor_user_id, occurred_at DESC)
    WHERE actor_user_id IS NOT NULL;

GRANT SELECT, INSERT, UPDATE, DELETE ON users, user_tokens, sessions, login_failures TO tenlyr_app;
