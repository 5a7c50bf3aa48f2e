//! Removes a deleted or terminated tenant's data: its raw usage events,
//! which may be millions, its rollups, records and inbound webhook events
//! and payloads, and its own schema or database if it has one. A job
//! enqueued in the transaction that deletes the tenant
//! (`service::tenants::delete`; the tenant tables cascade, so only the
//! raw rows are left) or terminates it (a terminated tenant is "pending
//! deletion": its row, keys, audit log and billing stay until DELETE),
//! deleting [`CHUNK`] rows per short transaction so no statement runs long
//! and no lock is held for the whole purge. Idempotent: a repeated run
//! finds fewer (or no) rows.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    Context,
    queue::{Backoff, Job, JobError},
};
use crate::storage::{
    dedicated, inbound,
    isolation::{self, Purgeable},
    tenant_data::{DatabasePlace, Scope},
    tenants,
};

/// Events deleted per transaction.
pub const CHUNK: i64 = 10_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Purge {
    pub tenant_id: Uuid,
}

#[derive(Debug, Default)]
pub struct TenantPurge;

impl Job for TenantPurge {
    const KIND: &'static str = "tenant.purge_usage";
    const LEASE: Duration = Duration::from_secs(600);
    /// A purge waits for a move of the tenant under way, however long it
    /// takes (the move's own job retries for weeks): it does not give up.
    const MAX_ATTEMPTS: i32 = 10_000;
    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(300),
    };
    type Payload = Purge;

    async fn run(&self, ctx: &Context, payload: Purge) -> Result<(), JobError> {
        let retry = |e: sea_orm::DbErr| JobError::Retry(e.to_string());
        let tenant = payload.tenant_id;
        let tx = ctx.db.begin(Scope::Platform).await.map_err(retry)?;
        let purgeable = isolation::purgeable(&tx, tenant).await.map_err(retry)?;
        tx.commit().await.map_err(retry)?;
        match purgeable {
            Purgeable::Yes => {}
            Purgeable::Moving => {
                return Err(JobError::Retry(
                    "an isolation move of the tenant is under way".into(),
                ));
            }
            Purgeable::Live => {
                tracing::warn!(tenant = %tenant, "a purge of a live tenant's data was skipped");
                return Ok(());
            }
        }
        let events = in_chunks(ctx, |tx| async move {
            tenants::purge_usage_events(&tx, tenant, CHUNK)
                .await
                .map(|n| (tx, n))
        })
        .await?;
        // A terminated tenant's other rows (a deleted one's cascaded).
        let mut rows = 0;
        for name in ["usage_rollups", "records", "webhook_events"] {
            rows += in_chunks(ctx, |tx| async move {
                isolation::delete_rows(&tx, "public", name, tenant, CHUNK)
                    .await
                    .map(|n| (tx, n))
            })
            .await?;
        }
        let payloads = in_chunks(ctx, |tx| async move {
            inbound::purge_tenant_payloads(&tx, tenant, CHUNK)
                .await
                .map(|n| (tx, n))
        })
        .await?;
        // A tenant with its own schema: the schema goes, with its data
        // (and a terminated tenant's placement).
        let tx = ctx.db.begin(Scope::Platform).await.map_err(retry)?;
        let schema = isolation::schema_exists(&tx, tenant).await.map_err(retry)?;
        if schema {
            isolation::drop_schema(&tx, tenant).await.map_err(retry)?;
        }
        // A terminated tenant with its own database: its data routes to
        // the shared tables (empty for it) before the database goes.
        let released = isolation::release_database(&tx, tenant)
            .await
            .map_err(retry)?;
        tx.commit().await.map_err(retry)?;
        if schema || released {
            ctx.db
                .placements()
                .refresh(ctx.db.pool())
                .await
                .map_err(|e| JobError::Retry(e.to_string()))?;
        }
        // The database goes too (a deleted tenant's placement went with
        // the tenant row): the name is the tenant's, on one of the
        // configured servers.
        if let Some(dedicated) = ctx.db.dedicated() {
            let name = dedicated::database_of(tenant);
            for server in dedicated
                .server_keys()
                .map(str::to_owned)
                .collect::<Vec<_>>()
            {
                let place = DatabasePlace {
                    server: server.into(),
                    name: name.clone().into(),
                };
                dedicated
                    .drop_database(&place)
                    .await
                    .map_err(|e| JobError::Retry(format!("{e:#}")))?;
            }
        }
        tracing::info!(tenant = %tenant, events, rows, webhook_payloads = payloads, schema,
            "purged a deleted or terminated tenant's data, schema and database");
        Ok(())
    }
}

/// Runs `delete` (up to [`CHUNK`] rows) in one short platform-scope
/// transaction after another until a run deletes fewer; how many in all.
async fn in_chunks<F, Fut>(ctx: &Context, delete: F) -> Result<u64, JobError>
where
    F: Fn(sea_orm::DatabaseTransaction) -> Fut,
    Fut: std::future::Future<Output = Result<(sea_orm::DatabaseTransaction, u64), sea_orm::DbErr>>,
{
    let retry = |e: sea_orm::DbErr| JobError::Retry(e.to_string());
    let mut total = 0;
    loop {
        let tx = ctx.db.begin(Scope::Platform).await.map_err(retry)?;
        let (tx, deleted) = delete(tx).await.map_err(retry)?;
        tx.commit().await.map_err(retry)?;
        total += deleted;
        if deleted < CHUNK as u64 {
            return Ok(total);
        }
    }
}
