-- A terminated tenant's data is removed (its status is "pending
-- deletion"; the row, keys, audit log and billing stay until DELETE): the
-- purge job may now drop the schema of a tenant that still exists when it
-- is terminated. A live tenant's schema is still never dropped.
CREATE OR REPLACE FUNCTION tenlyr_drop_tenant_schema(tenant uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('tenlyr_usage_partitions'));
    -- Only a deleted tenant's (its placement went with it), a terminated
    -- one's, or a failed move's target (never placed).
    IF EXISTS (SELECT 1 FROM tenant_placements p JOIN tenants t ON t.id = p.tenant_id
               WHERE p.tenant_id = tenant AND t.status <> 'terminated') THEN
        RAISE EXCEPTION 'tenant % lives in its schema; it is not dropped', tenant;
    END IF;
    DELETE FROM tenant_placements WHERE tenant_id = tenant;
    PERFORM tenlyr_refresh_placement_views();
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', tenlyr_tenant_schema(tenant));
END $$;
