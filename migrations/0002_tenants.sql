-- Tenants, their labeled API keys, per-tenant settings and the audit log.
--
-- Row-level security (DESIGN.md §5): a row is visible when the transaction
-- set `app.tenant_id` to its tenant, or declared platform scope
-- (`app.scope = 'platform'`, set only by admin methods and key lookups).
-- Both are set with set_config(..., true), i.e. per transaction.

CREATE FUNCTION tenlyr_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;

CREATE FUNCTION tenlyr_platform_scope() RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce(current_setting('app.scope', true), '') = 'platform' $$;

CREATE TABLE tenants (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 2 AND 255),
    slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    owner_email text NOT NULL,
    plan text NOT NULL CHECK (plan IN ('starter', 'growth', 'scale', 'enterprise')),
    status text NOT NULL CHECK (status IN ('pending', 'active', 'suspended', 'terminated')),
    region text NOT NULL,
    time_zone text NOT NULL,
    isolation_level text NOT NULL DEFAULT 'shared_schema'
        CHECK (isolation_level IN ('shared_schema', 'dedicated_schema', 'dedicated_database')),
    suspended_reason text,
    -- First 16 characters of the primary key, for display.
    api_key_prefix text NOT NULL DEFAULT '',
    -- Enterprise limits; NULL means the plan's default (NULL there: none).
    api_call_limit bigint,
    storage_gb_limit bigint,
    seats_limit bigint,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    last_active_at timestamptz
);
CREATE UNIQUE INDEX tenants_owner_email_key ON tenants (lower(owner_email));

CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    label text NOT NULL CHECK (length(label) BETWEEN 1 AND 100),
    prefix text NOT NULL,
    key_digest bytea NOT NULL UNIQUE,
    is_primary boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
-- At most one live primary key (the one rotate-key replaces).
CREATE UNIQUE INDEX api_keys_one_primary ON api_keys (tenant_id) WHERE is_primary AND revoked_at IS NULL;

-- The tenant's own row of shared, RLS-scoped storage, written at
-- provisioning under the tenant's scope (webhook settings live here later).
CREATE TABLE tenant_settings (
    tenant_id uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Admin actions on tenants and keys: who, what, when, with which key. Kept
-- when a tenant is deleted (it records the deletion); no tenant data in it.
CREATE TABLE audit_log (
    id uuid PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    actor_kind text NOT NULL CHECK (actor_kind IN ('admin', 'tenant', 'system')),
    actor_key_id uuid,
    tenant_id uuid,
    action text NOT NULL,
    target_id uuid,
    details jsonb NOT NULL DEFAULT '{}',
    request_id text
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, occurred_at DESC);
CREATE INDEX audit_log_time ON audit_log (occurred_at DESC);

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON tenants
    USING (tenlyr_platform_scope() OR id = tenlyr_current_tenant());

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON api_keys
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

ALTER TABLE tenant_settings ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_settings FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON tenant_settings
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON audit_log
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, api_keys, tenant_settings TO tenlyr_app;
GRANT SELECT, INSERT ON audit_log TO tenlyr_app;
GRANT EXECUTE ON FUNCTION tenlyr_current_tenant(), tenlyr_platform_scope() TO tenlyr_app;
