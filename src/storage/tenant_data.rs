//! The tenant-data router (DESIGN.md §10): the only way request code and
//! workers reach tenant-scoped tables.
//!
//! A tenant's data lives in the shared tables (`shared_schema`) or in its
//! own schema `t_<id>` with the same tables (`dedicated_schema`);
//! `tenant_placements` says which. A transaction enters a tenant through
//! `tenlyr_enter_scope` (migration 0018): it takes the tenant's placement
//! lock in shared mode, reads the placement and points `search_path` at the
//! tenant's schema for this transaction only, so the same unqualified SQL
//! reaches the tenant's tables wherever they are, and the platform tables
//! in `public` behind them. A batch of tenants (ingestion, the inbound
//! log) enters through `tenlyr_enter_tenants`, which needs them all in one
//! place: [`Placements::split`] groups a batch by place from a cached view
//! of the placements, and a stale view only costs a [`is_misrouted`] retry
//! (the database decides, the cache only groups).
//!
//! Row-level security sees the scope through settings that are set with
//! `set_config(…, true)`, i.e. for this transaction only, so a pooled
//! connection never carries one request's tenant (or schema) into the
//! next.
//!
//! Cross-tenant platform reads go through views over every place
//! (`usage_rollups_all`); platform-wide purges visit every place in turn
//! ([`data_schemas`], [`enter_schema`]). Both cost one index scan per
//! dedicated tenant: fine for the tens or hundreds of tenants that buy a
//! dedicated tier, and the reason shared stays the default.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, TransactionTrait};
use uuid::Uuid;

use super::{Db, statement};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Cross-tenant platform work: admin methods and key lookups.
    Platform,
    /// One tenant's rows only, wherever they live.
    Tenant(Uuid),
}

impl Db {
    /// Begins a transaction that can see the rows of `scope` only (for a
    /// tenant: in its place).
    pub async fn begin(&self, scope: Scope) -> Result<DatabaseTransaction, DbErr> {
        let tx = self.app().begin().await?;
        set_scope(&tx, scope).await?;
        Ok(tx)
    }

    /// A platform-scope transaction in one snapshot (REPEATABLE READ), for
    /// reads that must agree with each other. Platform only: a tenant
    /// scope entered in a snapshot taken before its placement lock was
    /// granted would read the placement as it was before a flip.
    pub async fn begin_platform_snapshot(&self) -> Result<DatabaseTransaction, DbErr> {
        let tx = self
            .app()
            .begin_with_config(Some(sea_orm::IsolationLevel::RepeatableRead), None)
            .await?;
        set_scope(&tx, Scope::Platform).await?;
        Ok(tx)
    }
}

/// Switches the scope of an open transaction (provisioning writes the new
/// tenant's own rows under its tenant scope).
pub async fn set_scope(tx: &DatabaseTransaction, scope: Scope) -> Result<(), DbErr> {
    let tenant = match scope {
        Scope::Platform => None,
        Scope::Tenant(id) => Some(id),
    };
    tx.execute_raw(statement("SELECT tenlyr_enter_scope($1)", [tenant.into()]))
        .await?;
    Ok(())
}

/// The schema a tenant's data lives in when it has its own.
pub fn schema_of(tenant: Uuid) -> String {
    format!("t_{}", tenant.simple())
}

/// What this process knows of the placements: the tenants with their own
/// schema. Only groups batches; the database checks every transaction.
#[derive(Debug, Default)]
pub struct Placements {
    schemas: RwLock<Arc<HashMap<Uuid, Arc<str>>>>,
}

impl Placements {
    /// The place of `tenant` as last read (`None`: the shared tables).
    pub fn place_of(&self, tenant: Uuid) -> Option<Arc<str>> {
        self.read().get(&tenant).cloned()
    }

    /// The indices of `tenants`, grouped by place, in order within each
    /// group. One group (all of them) while no tenant has its own place.
    pub fn split(&self, tenants: impl ExactSizeIterator<Item = Uuid>) -> Vec<Vec<usize>> {
        let schemas = self.read();
        if schemas.is_empty() {
            return vec![(0..tenants.len()).collect()];
        }
        let mut groups: Vec<(Option<Arc<str>>, Vec<usize>)> = Vec::new();
        for (i, tenant) in tenants.enumerate() {
            let place = schemas.get(&tenant).cloned();
            match groups.iter_mut().find(|(p, _)| *p == place) {
                Some((_, group)) => group.push(i),
                None => groups.push((place, vec![i])),
            }
        }
        groups.into_iter().map(|(_, group)| group).collect()
    }

    /// `items` grouped by the place of their tenant (see [`Self::split`]).
    pub fn partition<T>(&self, items: Vec<T>, tenant_of: impl Fn(&T) -> Uuid) -> Vec<Vec<T>> {
        let groups = self.split(items.iter().map(&tenant_of).collect::<Vec<_>>().into_iter());
        if groups.len() == 1 {
            return vec![items];
        }
        let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
        groups
            .into_iter()
            .map(|group| group.into_iter().filter_map(|i| slots[i].take()).collect())
            .collect()
    }

    /// Reads the placements again (after a [`is_misrouted`] error, and
    /// after this process moved a tenant).
    pub async fn refresh(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT tenant_id, schema_name FROM tenant_placements WHERE level = 'dedicated_schema'",
        )
        .fetch_all(pool)
        .await?;
        let map = rows
            .into_iter()
            .map(|(tenant, schema)| (tenant, Arc::from(schema)))
            .collect();
        *self.schemas.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        Ok(())
    }

    fn read(&self) -> Arc<HashMap<Uuid, Arc<str>>> {
        self.schemas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Whether the database refused a batch because its tenants live in
/// different places (SQLSTATE TL001 from `tenlyr_enter_tenants`): regroup
/// after [`Placements::refresh`] and retry. Nothing was written.
pub fn is_misrouted(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "TL001")
}

/// Every schema holding tenant data: `public` first, then each tenant
/// schema (also one a move is still filling).
pub async fn data_schemas(tx: &impl ConnectionTrait) -> Result<Vec<String>, DbErr> {
    let rows = tx
        .query_all_raw(statement("SELECT tenlyr_data_schemas() AS s", []))
        .await?;
    rows.iter().map(|r| r.try_get::<String>("", "s")).collect()
}

/// Points the rest of a platform-scope transaction at `schema` (for
/// platform-wide purges, which visit [`data_schemas`] in turn).
pub async fn enter_schema(tx: &impl ConnectionTrait, schema: &str) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "SELECT set_config('search_path', tenlyr_place_path($1), true)",
        [schema.into()],
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_is_named_after_its_tenant() {
        let id = Uuid::parse_str("51fad484-7f82-4c97-a3e1-b0c29d4f8201").unwrap();
        assert_eq!(schema_of(id), "t_51fad4847f824c97a3e1b0c29d4f8201");
    }

    #[test]
    fn a_batch_splits_by_place_and_keeps_its_order() {
        let placements = Placements::default();
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(placements.split([a, b, a].into_iter()), vec![vec![0, 1, 2]]);
        *placements.schemas.write().unwrap() =
            Arc::new(HashMap::from([(b, Arc::from(schema_of(b)))]));
        assert_eq!(
            placements.split([a, b, c, b, a].into_iter()),
            vec![vec![0, 2, 4], vec![1, 3]]
        );
        assert_eq!(placements.place_of(b).as_deref(), Some(&*schema_of(b)));
        assert_eq!(placements.place_of(a), None);
        assert_eq!(
            placements.partition(vec![(a, 1), (b, 2), (a, 3)], |x| x.0),
            vec![vec![(a, 1), (a, 3)], vec![(b, 2)]]
        );
    }
}
