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

/// Where a placed tenant's data lives (a tenant without a placement: the
/// shared tables).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Place {
    /// Its own schema in the main database.
    Schema(Arc<str>),
    /// Its own database (`storage::dedicated`).
    Database(DatabasePlace),
}

/// A tenant database: the server (as `dedicated::server_key` names it) and
/// the database's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatabasePlace {
    pub server: Arc<str>,
    pub name: Arc<str>,
}

/// What this process knows of the placements. Groups batches and picks
/// pools; the main database checks every transaction that reaches it.
#[derive(Debug, Default)]
pub struct Placements {
    places: RwLock<Arc<HashMap<Uuid, Place>>>,
}

impl Placements {
    /// The place of `tenant` as last read (`None`: the shared tables).
    pub fn place_of(&self, tenant: Uuid) -> Option<Place> {
        self.read().get(&tenant).cloned()
    }

    /// The indices of `tenants`, grouped by place, in order within each
    /// group. One group (all of them) while no tenant has its own place.
    pub fn split(
        &self,
        tenants: impl ExactSizeIterator<Item = Uuid>,
    ) -> Vec<(Option<Place>, Vec<usize>)> {
        let places = self.read();
        if places.is_empty() {
            return vec![(None, (0..tenants.len()).collect())];
        }
        let mut groups: Vec<(Option<Place>, Vec<usize>)> = Vec::new();
        for (i, tenant) in tenants.enumerate() {
            let place = places.get(&tenant).cloned();
            match groups.iter_mut().find(|(p, _)| *p == place) {
                Some((_, group)) => group.push(i),
                None => groups.push((place, vec![i])),
            }
        }
        groups
    }

    /// `items` grouped by the place of their tenant (see [`Self::split`]).
    pub fn partition<T>(
        &self,
        items: Vec<T>,
        tenant_of: impl Fn(&T) -> Uuid,
    ) -> Vec<(Option<Place>, Vec<T>)> {
        let mut groups = self.split(items.iter().map(&tenant_of).collect::<Vec<_>>().into_iter());
        if groups.len() == 1 {
            let place = groups.pop().and_then(|(place, _)| place);
            return vec![(place, items)];
        }
        let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
        groups
            .into_iter()
            .map(|(place, group)| {
                (
                    place,
                    group.into_iter().filter_map(|i| slots[i].take()).collect(),
                )
            })
            .collect()
    }

    /// Every tenant database some tenant lives in, as last read.
    pub fn databases(&self) -> Vec<DatabasePlace> {
        let mut all: Vec<DatabasePlace> = self
            .read()
            .values()
            .filter_map(|p| match p {
                Place::Database(d) => Some(d.clone()),
                Place::Schema(_) => None,
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.dedup();
        all
    }

    /// Reads the placements again (after a [`is_misrouted`] error, and
    /// after this process moved a tenant).
    pub async fn refresh(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        type Row = (Uuid, String, String, Option<String>, Option<String>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT tenant_id, level, schema_name, database_server, database_name \
             FROM tenant_placements",
        )
        .fetch_all(pool)
        .await?;
        let map = rows
            .into_iter()
            .map(|(tenant, level, schema, server, name)| {
                let place = match (level.as_str(), server, name) {
                    ("dedicated_database", Some(server), Some(name)) => {
                        Place::Database(DatabasePlace {
                            server: server.into(),
                            name: name.into(),
                        })
                    }
                    _ => Place::Schema(schema.into()),
                };
                (tenant, place)
            })
            .collect();
        *self.places.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        Ok(())
    }

    fn read(&self) -> Arc<HashMap<Uuid, Place>> {
        self.places
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

/// A tenant database that could not be reached (or brought up to date),
/// as the sqlx error the batch writers return: a connection error, so the
/// caller answers 503.
pub fn unreachable(err: DbErr) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(err.to_string()))
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

/// The tenant row of `tenant` as the main database has it (JSON), for
/// its mirror in the tenant's own database; `None` once it is deleted.
pub async fn tenant_row(main: &Db, tenant: Uuid) -> Result<Option<serde_json::Value>, DbErr> {
    let tx = main.begin(Scope::Platform).await?;
    let row = tx
        .query_one_raw(statement(
            "SELECT to_jsonb(t) AS row FROM tenants t WHERE t.id = $1",
            [tenant.into()],
        ))
        .await?;
    tx.commit().await?;
    row.map(|r| r.try_get::<serde_json::Value>("", "row"))
        .transpose()
}

/// Writes a tenant row (from [`tenant_row`]) into a tenant database.
pub async fn mirror_tenant(tenant_db: &Db, row: &serde_json::Value) -> Result<(), DbErr> {
    let tx = tenant_db.begin(Scope::Platform).await?;
    tx.execute_raw(statement(
        "SELECT tenlyr_mirror_tenant($1)",
        [row.clone().into()],
    ))
    .await?;
    tx.commit().await
}

/// Copies the outcome of an inbound event's forward (its delivery, in the
/// main database) into the event's row in the tenant's own database, as
/// the trigger does for the other tiers (migration 0021). The delivery row
/// stays share-locked until the copy commits, so its next change waits
/// for this copy, and a copy never overwrites a later state with an
/// earlier one (jobs of one event may run out of order).
pub async fn copy_event_status(main: &Db, tenant_db: &Db, event_id: &str) -> Result<(), DbErr> {
    let tx = main.begin(Scope::Platform).await?;
    let delivery = tx
        .query_one_raw(statement(
            "SELECT status, attempts, last_error, response_status, finished_at \
             FROM webhook_deliveries WHERE event_id = $1 AND inbound \
             ORDER BY id DESC LIMIT 1 FOR SHARE",
            [event_id.into()],
        ))
        .await?;
    let Some(d) = delivery else {
        return tx.commit().await;
    };
    let status: String = d.try_get("", "status")?;
    let attempts: i32 = d.try_get("", "attempts")?;
    let last_error: Option<String> = d.try_get("", "last_error")?;
    let response: Option<i32> = d.try_get("", "response_status")?;
    let finished: Option<chrono::DateTime<chrono::Utc>> = d.try_get("", "finished_at")?;
    let there = tenant_db.begin(Scope::Platform).await?;
    there
        .execute_raw(statement(
            "UPDATE webhook_events SET attempts = $1, \
                 status = CASE $2 WHEN 'delivered' THEN 'processed' \
                                  WHEN 'failed' THEN 'delivery_failed' ELSE 'received' END, \
                 last_error = CASE WHEN $2 = 'delivered' THEN NULL \
                                   ELSE coalesce($3, 'HTTP ' || $4::text, last_error) END, \
                 processed_at = CASE WHEN $2 = 'delivered' THEN $5 END \
             WHERE id = $6",
            [
                attempts.into(),
                status.into(),
                last_error.into(),
                response.into(),
                finished.into(),
                event_id.into(),
            ],
        ))
        .await?;
    there.commit().await?;
    tx.commit().await
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
        let (a, b, c, d) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        assert_eq!(
            placements.split([a, b, a].into_iter()),
            vec![(None, vec![0, 1, 2])]
        );
        let schema = Place::Schema(schema_of(b).into());
        let database = Place::Database(DatabasePlace {
            server: "postgres://postgres@127.0.0.1:5433".into(),
            name: "tenlyr_t_d".into(),
        });
        *placements.places.write().unwrap() =
            Arc::new(HashMap::from([(b, schema.clone()), (d, database.clone())]));
        assert_eq!(
            placements.split([a, b, c, d, b, a].into_iter()),
            vec![
                (None, vec![0, 2, 5]),
                (Some(schema.clone()), vec![1, 4]),
                (Some(database.clone()), vec![3])
            ]
        );
        assert_eq!(placements.place_of(b), Some(schema.clone()));
        assert_eq!(placements.place_of(a), None);
        assert_eq!(
            placements.partition(vec![(a, 1), (b, 2), (a, 3)], |x| x.0),
            vec![(None, vec![(a, 1), (a, 3)]), (Some(schema), vec![(b, 2)])]
        );
        let Place::Database(db) = database else {
            unreachable!()
        };
        assert_eq!(placements.databases(), vec![db]);
    }
}
