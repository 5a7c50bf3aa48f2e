//! Tenants, their API keys and the audit log. Every function takes an open
//! scoped transaction (see [`super::scope`]); row-level security does the
//! rest.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, SqlErr, sea_query::Expr,
};
use uuid::Uuid;

use super::entities::{api_key, audit_log, tenant};

/// Which unique rule an insert broke.
#[derive(Debug, PartialEq, Eq)]
pub enum Conflict {
    OwnerEmail,
    Slug,
}

pub fn conflict(err: &DbErr) -> Option<Conflict> {
    match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(msg)) if msg.contains("owner_email") => {
            Some(Conflict::OwnerEmail)
        }
        Some(SqlErr::UniqueConstraintViolation(msg)) if msg.contains("slug") => {
            Some(Conflict::Slug)
        }
        _ => None,
    }
}

pub async fn insert(
    tx: &DatabaseTransaction,
    model: tenant::Model,
) -> Result<tenant::Model, DbErr> {
    tenant::ActiveModel::from(model).insert(tx).await
}

pub async fn find(tx: &DatabaseTransaction, id: Uuid) -> Result<Option<tenant::Model>, DbErr> {
    tenant::Entity::find_by_id(id).one(tx).await
}

/// Locks the row for the rest of the transaction (lifecycle changes).
pub async fn find_for_update(
    tx: &DatabaseTransaction,
    id: Uuid,
) -> Result<Option<tenant::Model>, DbErr> {
    tenant::Entity::find_by_id(id)
        .lock_exclusive()
        .one(tx)
        .await
}

pub async fn slug_taken(tx: &DatabaseTransaction, slug: &str) -> Result<bool, DbErr> {
    Ok(tenant::Entity::find()
        .filter(tenant::Column::Slug.eq(slug))
        .one(tx)
        .await?
        .is_some())
}

/// One page in id order (ids are UUIDv7, so oldest first), after `after`.
/// Keyset pagination: rows that exist are never skipped or repeated, however
/// many are inserted meanwhile.
pub async fn page(
    tx: &DatabaseTransaction,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<tenant::Model>, DbErr> {
    let mut query = tenant::Entity::find()
        .order_by_asc(tenant::Column::Id)
        .limit(limit);
    if let Some(after) = after {
        query = query.filter(tenant::Column::Id.gt(after));
    }
    query.all(tx).await
}

pub async fn update(
    tx: &DatabaseTransaction,
    model: tenant::ActiveModel,
) -> Result<tenant::Model, DbErr> {
    model.update(tx).await
}

/// Deletes the tenant; every tenant-owned table cascades from it except
/// the raw usage events, which carry no foreign key (see
/// 0003_metering.sql) and may be millions: [`purge_usage_events`] removes
/// them in chunks, from a job enqueued in the same transaction.
pub async fn delete(tx: &DatabaseTransaction, id: Uuid) -> Result<bool, DbErr> {
    // The usage lock waits for an ingest commit of this tenant in flight,
    // and makes the next one find the tenant gone.
    tx.execute_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DatabaseBackend::Postgres,
        "SELECT tenlyr_lock_usage(ARRAY[$1]::uuid[])",
        [id.into()],
    ))
    .await?;
    Ok(tenant::Entity::delete_by_id(id)
        .exec(tx)
        .await?
        .rows_affected
        == 1)
}

/// Deletes up to `chunk` of a deleted tenant's usage events, newest first;
/// how many it deleted (fewer than `chunk`: none are left).
pub async fn purge_usage_events(
    tx: &DatabaseTransaction,
    id: Uuid,
    chunk: i64,
) -> Result<u64, DbErr> {
    let result = tx
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            "DELETE FROM usage_events e USING ( \
                 SELECT occurred_at, id FROM usage_events WHERE tenant_id = $1 \
                 ORDER BY occurred_at DESC LIMIT $2) d \
             WHERE e.tenant_id = $1 AND e.occurred_at = d.occurred_at AND e.id = d.id",
            [id.into(), chunk.into()],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// The tenant's own row of RLS-scoped storage (written under its scope).
pub async fn create_settings(tx: &DatabaseTransaction, tenant_id: Uuid) -> Result<(), DbErr> {
    tx.execute_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DatabaseBackend::Postgres,
        "INSERT INTO tenant_settings (tenant_id) VALUES ($1)",
        [tenant_id.into()],
    ))
    .await?;
    Ok(())
}

pub async fn insert_key(
    tx: &DatabaseTransaction,
    key: api_key::Model,
) -> Result<api_key::Model, DbErr> {
    api_key::ActiveModel::from(key).insert(tx).await
}

pub async fn keys(tx: &DatabaseTransaction, tenant_id: Uuid) -> Result<Vec<api_key::Model>, DbErr> {
    api_key::Entity::find()
        .filter(api_key::Column::TenantId.eq(tenant_id))
        .order_by_asc(api_key::Column::Id)
        .all(tx)
        .await
}

/// Up to `limit` of a tenant's keys after `after`, in id order.
pub async fn keys_page(
    tx: &DatabaseTransaction,
    tenant_id: Uuid,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<api_key::Model>, DbErr> {
    let mut query = api_key::Entity::find().filter(api_key::Column::TenantId.eq(tenant_id));
    if let Some(after) = after {
        query = query.filter(api_key::Column::Id.gt(after));
    }
    query
        .order_by_asc(api_key::Column::Id)
        .limit(limit)
        .all(tx)
        .await
}

/// Revokes keys of a tenant (`key_id`: one; `None`: the live primary) and
/// returns the revoked rows.
pub async fn revoke_keys(
    tx: &DatabaseTransaction,
    tenant_id: Uuid,
    key_id: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<Vec<api_key::Model>, DbErr> {
    let mut query = api_key::Entity::update_many()
        .col_expr(api_key::Column::RevokedAt, Expr::value(now))
        .filter(api_key::Column::TenantId.eq(tenant_id))
        .filter(api_key::Column::RevokedAt.is_null());
    query = match key_id {
        Some(id) => query.filter(api_key::Column::Id.eq(id)),
        None => query.filter(api_key::Column::IsPrimary.eq(true)),
    };
    query.exec_with_returning(tx).await
}

/// The live key with this digest, with its tenant.
pub async fn key_by_digest(
    tx: &DatabaseTransaction,
    digest: &[u8],
) -> Result<Option<(api_key::Model, tenant::Model)>, DbErr> {
    let Some(key) = api_key::Entity::find()
        .filter(api_key::Column::KeyDigest.eq(digest.to_vec()))
        .filter(api_key::Column::RevokedAt.is_null())
        .one(tx)
        .await?
    else {
        return Ok(None);
    };
    Ok(find(tx, key.tenant_id).await?.map(|t| (key, t)))
}

/// Moves `last_active_at` / `last_used_at` forward (never back).
pub async fn touch(
    tx: &DatabaseTransaction,
    tenants: &[(Uuid, DateTime<Utc>)],
    keys: &[(Uuid, DateTime<Utc>)],
) -> Result<(), DbErr> {
    for (table, column, rows) in [
        ("tenants", "last_active_at", tenants),
        ("api_keys", "last_used_at", keys),
    ] {
        if rows.is_empty() {
            continue;
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
        let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.1).collect();
        let sql = format!(
            "UPDATE {table} AS t SET {column} = GREATEST(t.{column}, v.at)
             FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, at) WHERE t.id = v.id"
        );
        tx.execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            sql,
            [ids.into(), times.into()],
        ))
        .await?;
    }
    Ok(())
}

/// One audit entry: who did what to which tenant, with which key.
#[derive(Debug, Clone)]
pub struct Audit {
    pub actor_kind: &'static str,
    pub actor_key_id: Option<Uuid>,
    /// The Backoffice user behind a session.
    pub actor_user_id: Option<Uuid>,
    pub tenant_id: Option<Uuid>,
    pub action: &'static str,
    pub target_id: Option<Uuid>,
    pub details: serde_json::Value,
    pub request_id: Option<String>,
}

pub async fn audit(tx: &DatabaseTransaction, entry: Audit) -> Result<(), DbErr> {
    audit_log::ActiveModel {
        id: Set(Uuid::now_v7()),
        occurred_at: Set(Utc::now()),
        actor_kind: Set(entry.actor_kind.to_owned()),
        actor_key_id: Set(entry.actor_key_id),
        tenant_id: Set(entry.tenant_id),
        action: Set(entry.action.to_owned()),
        target_id: Set(entry.target_id),
        details: Set(entry.details),
        request_id: Set(entry.request_id),
        actor_user_id: Set(entry.actor_user_id),
    }
    .insert(tx)
    .await?;
    Ok(())
}
