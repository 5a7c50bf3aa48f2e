//! Removes a deleted tenant's raw usage events, which may be millions, its
//! inbound webhook payloads and its own schema or database if it has one: a
//! job enqueued in the transaction that deletes the tenant
//! (`service::tenants::delete`), deleting [`CHUNK`] events per short
//! transaction so no statement runs long and no lock is held for the whole
//! purge. Idempotent: a repeated run finds fewer (or no) rows.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    Context,
    queue::{Job, JobError},
};
use crate::storage::{
    dedicated, inbound, isolation,
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
    type Payload = Purge;

    async fn run(&self, ctx: &Context, payload: Purge) -> Result<(), JobError> {
        let retry = |e: sea_orm::DbErr| JobError::Retry(e.to_string());
        let tenant = payload.tenant_id;
        let events = in_chunks(ctx, |tx| async move {
            tenants::purge_usage_events(&tx, tenant, CHUNK)
                .await
                .map(|n| (tx, n))
        })
        .await?;
        let payloads = in_chunks(ctx, |tx| async move {
            inbound::purge_tenant_payloads(&tx, tenant, CHUNK)
                .await
                .map(|n| (tx, n))
        })
        .await?;
        // A tenant with its own schema: the schema goes, with its data.
        let tx = ctx.db.begin(Scope::Platform).await.map_err(retry)?;
        let schema = isolation::schema_exists(&tx, tenant).await.map_err(retry)?;
        if schema {
            isolation::drop_schema(&tx, tenant).await.map_err(retry)?;
        }
        tx.commit().await.map_err(retry)?;
        // A tenant with its own database: it goes too. Its placement went
        // with the tenant row; the name is the tenant's, on one of the
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
        tracing::info!(tenant = %tenant, events, webhook_payloads = payloads, schema,
            "purged a deleted tenant's usage events, webhook payloads, schema and database");
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
