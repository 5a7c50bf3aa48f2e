//! Removes a deleted tenant's raw usage events, which may be millions, and
//! its inbound webhook payloads: a
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
use crate::storage::{inbound, scope::Scope, tenants};

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
        let mut total = 0;
        loop {
            let tx = ctx
                .db
                .begin(Scope::Platform)
                .await
                .map_err(|e| JobError::Retry(e.to_string()))?;
            let deleted = tenants::purge_usage_events(&tx, payload.tenant_id, CHUNK)
                .await
                .map_err(|e| JobError::Retry(e.to_string()))?;
            tx.commit()
                .await
                .map_err(|e| JobError::Retry(e.to_string()))?;
            total += deleted;
            if deleted < CHUNK as u64 {
                break;
            }
        }
        let mut payloads = 0;
        loop {
            let tx = ctx
                .db
                .begin(Scope::Platform)
                .await
                .map_err(|e| JobError::Retry(e.to_string()))?;
            let deleted = inbound::purge_tenant_payloads(&tx, payload.tenant_id, CHUNK)
                .await
                .map_err(|e| JobError::Retry(e.to_string()))?;
            tx.commit()
                .await
                .map_err(|e| JobError::Retry(e.to_string()))?;
            payloads += deleted;
            if deleted < CHUNK as u64 {
                break;
            }
        }
        tracing::info!(tenant = %payload.tenant_id, events = total, webhook_payloads = payloads,
            "purged a deleted tenant's usage events and webhook payloads");
        Ok(())
    }
}
