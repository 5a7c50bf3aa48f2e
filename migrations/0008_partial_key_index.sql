-- Only keyed events enter the key index: an event sent without an
-- idempotency key can never be found by one, and high-volume clients often
-- send none. Probes (`idempotency_key = k.key`) imply the predicate, so the
-- planner uses this index for them as before.

CREATE INDEX usage_events_tenant_key_set ON usage_events (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
DROP INDEX usage_events_tenant_key;
