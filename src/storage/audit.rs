//! Reading the audit log (`audit_log`, written by `tenants::audit` in the
//! transaction of each change), in the caller's scoped transaction: a
//! tenant scope sees its own tenant's entries only (RLS).

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr};
use uuid::Uuid;

use super::{entities::audit_log, statement};

/// Filters; `None` takes everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant_id: Option<Uuid>,
    pub actor_kind: Option<String>,
    pub actor_key_id: Option<Uuid>,
    pub actor_user_id: Option<Uuid>,
    /// Exact action.
    pub action: Option<String>,
    /// Actions starting with this (a `family.*` filter, without the `*`).
    pub action_prefix: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Up to `limit` entries, newest first, strictly after the `(occurred_at,
/// id)` cursor.
pub async fn page(
    tx: &DatabaseTransaction,
    filter: &AuditFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: u64,
) -> Result<Vec<audit_log::Model>, DbErr> {
    let rows = tx
        .query_all_raw(statement(
            "SELECT id, occurred_at, actor_kind, actor_key_id, tenant_id, action, target_id, \
                 details, request_id, actor_user_id FROM audit_log \
             WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR actor_kind = $2) \
               AND ($3::uuid IS NULL OR actor_key_id = $3) AND ($4::text IS NULL OR action = $4) \
               AND ($5::text IS NULL OR starts_with(action, $5)) \
               AND ($6::timestamptz IS NULL OR occurred_at >= $6) \
               AND ($7::timestamptz IS NULL OR occurred_at < $7) \
               AND ($8::timestamptz IS NULL OR (occurred_at, id) < ($8, $9::uuid)) \
               AND ($11::uuid IS NULL OR actor_user_id = $11) \
             ORDER BY occurred_at DESC, id DESC LIMIT $10",
            [
                filter.tenant_id.into(),
                filter.actor_kind.clone().into(),
                filter.actor_key_id.into(),
                filter.action.clone().into(),
                filter.action_prefix.clone().into(),
                filter.from.into(),
                filter.to.into(),
                after.map(|(at, _)| at).into(),
                after.map(|(_, id)| id).into(),
                (limit as i64).into(),
                filter.actor_user_id.into(),
            ],
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok(audit_log::Model {
                id: r.try_get("", "id")?,
                occurred_at: r.try_get("", "occurred_at")?,
                actor_kind: r.try_get("", "actor_kind")?,
                actor_key_id: r.try_get("", "actor_key_id")?,
                tenant_id: r.try_get("", "tenant_id")?,
                action: r.try_get("", "action")?,
                target_id: r.try_get("", "target_id")?,
                details: r.try_get("", "details")?,
                request_id: r.try_get("", "request_id")?,
                actor_user_id: r.try_get("", "actor_user_id")?,
            })
        })
        .collect()
}
