-- Billing (DESIGN.md §11): each tenant's Stripe state as the sync last
-- saw it, the enterprise price an admin set, and the ledger of usage
-- pushed to Stripe.

CREATE TABLE tenant_billing (
    tenant_id uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    -- Monthly price of an enterprise tenant, set by an admin.
    enterprise_price_cents bigint CHECK (enterprise_price_cents >= 0),
    stripe_customer_id text,
    stripe_subscription_id text,
    -- The Stripe plan the subscription is on (`tenlyr_growth` …).
    stripe_plan text,
    -- As Stripe reports the subscription; `not_synced` before the first
    -- successful sync.
    status text NOT NULL DEFAULT 'not_synced',
    synced_at timestamptz,
    -- What the last sync found different between Stripe and Tenlyr (NULL:
    -- nothing), and when.
    drift text,
    drift_at timestamptz,
    last_error text
);

ALTER TABLE tenant_billing ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_billing FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON tenant_billing
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())
    WITH CHECK (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

-- Usage charges pushed to Stripe, one row per tenant and billing period:
-- `billed_cents` is what Stripe has been sent for that period. A push
-- sends only the difference, as an invoice item keyed by (tenant, period,
-- new total) — its Idempotency-Key and `metadata[tenlyr_key]`. The key is
-- written here (`pending_key`) before the item is created and cleared, with
-- `billed_cents` moved, once Stripe answered: a sync that finds a pending
-- key (a crash in between) looks the item up by that key before pushing
-- again, so retries, restarts and replicas never bill twice.
CREATE TABLE billing_usage_ledger (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    period_start timestamptz NOT NULL,
    billed_cents bigint NOT NULL DEFAULT 0,
    pending_key text,
    pending_cents bigint,
    last_item_id text,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, period_start)
);

ALTER TABLE billing_usage_ledger ENABLE ROW LEVEL SECURITY;
ALTER TABLE billing_usage_ledger FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON billing_usage_ledger
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())
    WITH CHECK (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_billing, billing_usage_ledger TO tenlyr_app;
