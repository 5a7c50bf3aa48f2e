-- Inbound webhook settings per tenant (DESIGN.md §8): where normalized
-- events are forwarded, and per provider whether it is enabled and its
-- signing secret (sealed with AES-256-GCM under the secrets key; never
-- returned). A replaced secret keeps verifying until `previous_until`
-- (Shopify takes up to an hour to switch).

ALTER TABLE tenant_settings ADD COLUMN callback_url text
    CHECK (callback_url IS NULL OR length(callback_url) BETWEEN 1 AND 2048);
ALTER TABLE tenant_settings ADD COLUMN updated_at timestamptz;

CREATE TABLE tenant_webhook_providers (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    provider text NOT NULL
        CHECK (provider IN ('stripe', 'generic', 'shopify', 'paypal', 'braintree', 'github')),
    enabled boolean NOT NULL DEFAULT false,
    secret bytea,
    previous_secret bytea,
    previous_until timestamptz,
    paypal_webhook_id text CHECK (paypal_webhook_id IS NULL OR length(paypal_webhook_id) <= 200),
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, provider)
);

ALTER TABLE tenant_webhook_providers ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_webhook_providers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON tenant_webhook_providers
    USING (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant())
    WITH CHECK (tenlyr_platform_scope() OR tenant_id = tenlyr_current_tenant());

GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_webhook_providers TO tenlyr_app;
