//! Keeping tenant databases in step with the control plane (the
//! `dedicated_database` tier, migration 0021), and every replica's view of
//! the placements fresh.
//!
//! - `tenant_data.mirror`: a tenant row changed in the main database (a
//!   trigger enqueues it); the job writes the row into the tenant's own
//!   database, where the foreign keys and the ingest's plan limits read it.
//! - `tenant_data.event_status`: an inbound event's forward changed (a
//!   trigger on its delivery enqueues it); the job copies the outcome into
//!   the event's row in the tenant's database.
//! - [`PlacementRefresh`]: each replica reads the placements every 2 s, so
//!   a move another replica made reaches this one's routing that soon (a
//!   write routed by an older view is refused by the main database and
//!   retried where the data is; a read in that window answers 503).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    Context,
    periodic::Tick,
    queue::{Backoff, Job, JobError},
};
use crate::storage::tenant_data::{self, Place};

/// How often each replica reads the placements.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct PlacementRefresh;

impl Tick for PlacementRefresh {
    const NAME: &'static str = "placement-refresh";

    async fn tick(&self, ctx: &Context) -> anyhow::Result<()> {
        ctx.db.placements().refresh(ctx.db.pool()).await?;
        Ok(())
    }
}

/// Retried for a long while: a tenant database that is down keeps its
/// tenant's data unreachable anyway, and the job must land once it is up.
const MAX_ATTEMPTS: i32 = 1000;
const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(500),
    max: Duration::from_secs(60),
};

fn retry(err: impl std::fmt::Display) -> JobError {
    JobError::Retry(err.to_string())
}

/// The tenant database of `tenant`; `None` when it has none (any more).
/// A placement in a database changes only when its tenant is terminated
/// (the purge drops the database; a stale cached one then fails as
/// unavailable and the job retries after the next refresh), so a cached
/// one is used as it is; otherwise the placements are read again (the
/// move may be newer than this process's last look).
async fn tenant_db(ctx: &Context, tenant: Uuid) -> Result<Option<crate::storage::Db>, JobError> {
    let placements = ctx.db.placements();
    if !matches!(placements.place_of(tenant), Some(Place::Database(_))) {
        placements.refresh(ctx.db.pool()).await.map_err(retry)?;
    }
    match placements.place_of(tenant) {
        Some(place @ Place::Database(_)) => Ok(Some(ctx.db.at(Some(&place)).await.map_err(retry)?)),
        _ => Ok(None),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub tenant_id: Uuid,
}

#[derive(Debug, Default)]
pub struct MirrorJob;

impl Job for MirrorJob {
    const KIND: &'static str = "tenant_data.mirror";
    const MAX_ATTEMPTS: i32 = MAX_ATTEMPTS;
    const LEASE: Duration = Duration::from_secs(30);
    const BACKOFF: Backoff = BACKOFF;
    type Payload = Mirror;

    async fn run(&self, ctx: &Context, p: Mirror) -> Result<(), JobError> {
        let Some(db) = tenant_db(ctx, p.tenant_id).await? else {
            return Ok(());
        };
        // The row as it is now (not as it was when the job was added): jobs
        // of one tenant may run out of order, the last one writes the
        // latest row.
        let Some(row) = tenant_data::tenant_row(&ctx.db, p.tenant_id)
            .await
            .map_err(retry)?
        else {
            return Ok(());
        };
        tenant_data::mirror_tenant(&db, &row).await.map_err(retry)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventStatus {
    pub tenant_id: Uuid,
    pub event_id: String,
}

#[derive(Debug, Default)]
pub struct EventStatusJob;

impl Job for EventStatusJob {
    const KIND: &'static str = "tenant_data.event_status";
    const MAX_ATTEMPTS: i32 = MAX_ATTEMPTS;
    const LEASE: Duration = Duration::from_secs(30);
    const BACKOFF: Backoff = BACKOFF;
    type Payload = EventStatus;

    async fn run(&self, ctx: &Context, p: EventStatus) -> Result<(), JobError> {
        let Some(db) = tenant_db(ctx, p.tenant_id).await? else {
            return Ok(());
        };
        tenant_data::copy_event_status(&ctx.db, &db, &p.event_id)
            .await
            .map_err(retry)
    }
}
