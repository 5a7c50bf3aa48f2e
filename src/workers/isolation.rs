//! The move of a tenant's data to a higher isolation tier (DESIGN.md §10):
//! a job per migration (`isolation.migrate`), then a job that deletes the
//! source rows (`isolation.cleanup`).
//!
//! 1. **copying**: the tenant's schema is created (idempotent) and its
//!    events copied in chunks of [`CHUNK`] in `(occurred_at, id)` order,
//!    each chunk with its progress in one short transaction; writes go on
//!    to the source meanwhile. A restarted move goes on after the last
//!    event the target holds. The small tables are copied too.
//! 2. **catching_up**: events the target lacks among those that occurred
//!    from an hour before the copy began (where writes during the copy
//!    land), then the small tables again; the bulk part is verified by
//!    count and checksum (anything written into the past during the copy
//!    is found by a full comparison).
//! 3. **barrier**: one transaction holds the tenant's placement lock in
//!    exclusive mode, so the tenant's writers wait (they are never
//!    refused); it copies what is still missing, verifies every table by
//!    row count and checksum, flips the placement, sets the tenant's
//!    `isolationLevel`, completes the migration with its event and
//!    enqueues the cleanup. Until that commit the source is authoritative:
//!    a move killed at any point resumes (the job's lease lapses) and
//!    either flips whole or not at all.
//! 4. **cleaning**: the cleanup job deletes the source rows in chunks.
//!
//! A move whose verification fails, or that meets an error other than
//! Postgres being unreachable, ends `failed` with the error, its target
//! dropped and the tenant where it was. One mover per migration at a time:
//! a session advisory lock, released if the process dies.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DbErr;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    Context,
    queue::{Job, JobError},
};
use crate::{
    domain::isolation::{MigrationStatus, Phase},
    service::{events::Outbox, isolation::event_data},
    storage::{
        self, Db,
        isolation::{self as repo, MigrationRow, SMALL_TABLES, TABLES},
        jobs::{self, NewJob},
        tenant_data::Scope,
    },
};

/// Events copied per transaction.
pub const CHUNK: i64 = 20_000;

/// How far before the copy's start the catch-up looks for events written
/// during it (an event's time is its client's; a write is usually now).
const CATCH_UP_MARGIN: chrono::Duration = chrono::Duration::hours(1);

/// How long the barrier waits for writers in flight before giving up (and
/// trying again on the job's schedule).
const BARRIER_LOCK_TIMEOUT: &str = "10s";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Migrate {
    pub migration_id: Uuid,
}

#[derive(Debug, Default)]
pub struct MigrateJob;

impl Job for MigrateJob {
    const KIND: &'static str = "isolation.migrate";
    const LEASE: Duration = Duration::from_secs(600);
    type Payload = Migrate;

    async fn run(&self, ctx: &Context, payload: Migrate) -> Result<(), JobError> {
        let Some(_mover) = MoverLock::take(&ctx.db, payload.migration_id).await? else {
            return Err(JobError::Retry(
                "another runner is moving this tenant".into(),
            ));
        };
        let Some(m) = load(ctx, payload.migration_id).await? else {
            return Ok(()); // its tenant was deleted
        };
        let status = MigrationStatus::parse(&m.status);
        if status.is_none_or(MigrationStatus::is_finished) {
            return Ok(());
        }
        let outbox = Outbox::new(ctx.clock.clone());
        if status == Some(MigrationStatus::Pending) {
            let tx = ctx.db.begin(Scope::Platform).await.map_err(retry)?;
            if repo::start(&tx, m.id, ctx.clock.now())
                .await
                .map_err(retry)?
            {
                outbox
                    .emit_in(
                        &tx,
                        "isolation.migration_started",
                        Some(m.tenant_id),
                        event_data(&m),
                    )
                    .await
                    .map_err(retry)?;
            }
            tx.commit().await.map_err(retry)?;
        }
        match move_to_schema(ctx, &m, &outbox).await {
            Ok(()) => Ok(()),
            Err(Failure::Unavailable(err)) => Err(JobError::Retry(err)),
            Err(Failure::Failed(error)) => fail(ctx, &m, &outbox, &error).await,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cleanup {
    pub migration_id: Uuid,
    pub tenant_id: Uuid,
    /// Where the rows were before the move.
    pub schema: String,
}

#[derive(Debug, Default)]
pub struct CleanupJob;

impl Job for CleanupJob {
    const KIND: &'static str = "isolation.cleanup";
    const LEASE: Duration = Duration::from_secs(600);
    type Payload = Cleanup;

    async fn run(&self, ctx: &Context, p: Cleanup) -> Result<(), JobError> {
        let mut deleted = 0;
        for name in TABLES {
            loop {
                let tx = ctx.db.begin(Scope::Platform).await.map_err(retry)?;
                let n = repo::delete_rows(&tx, &p.schema, name, p.tenant_id, CHUNK)
                    .await
                    .map_err(retry)?;
                tx.commit().await.map_err(retry)?;
                deleted += n;
                if n < CHUNK as u64 {
                    break;
                }
            }
        }
        let tx = ctx.db.begin(Scope::Platform).await.map_err(retry)?;
        repo::set_phase(&tx, p.migration_id, Phase::Done.as_str())
            .await
            .map_err(retry)?;
        tx.commit().await.map_err(retry)?;
        tracing::info!(tenant = %p.tenant_id, rows = deleted, schema = %p.schema,
            "deleted the source rows of a completed isolation move");
        Ok(())
    }
}

/// Why a move stopped.
enum Failure {
    /// Postgres unreachable: the job tries again later, from where it was.
    Unavailable(String),
    /// The move cannot succeed: the migration ends `failed`.
    Failed(String),
}

impl From<DbErr> for Failure {
    fn from(err: DbErr) -> Self {
        if storage::is_connection_error(&err) {
            Self::Unavailable(err.to_string())
        } else {
            Self::Failed(err.to_string())
        }
    }
}

fn retry(err: DbErr) -> JobError {
    JobError::Retry(err.to_string())
}

async fn load(ctx: &Context, id: Uuid) -> Result<Option<MigrationRow>, JobError> {
    let tx = ctx.db.begin(Scope::Platform).await.map_err(retry)?;
    let m = repo::find(&tx, id).await.map_err(retry)?;
    tx.commit().await.map_err(retry)?;
    Ok(m)
}

/// shared_schema → dedicated_schema.
async fn move_to_schema(ctx: &Context, m: &MigrationRow, outbox: &Outbox) -> Result<(), Failure> {
    let (tenant, from) = (m.tenant_id, "public");
    let db = &ctx.db;

    // 1. The target, and the bulk copy.
    let tx = db.begin(Scope::Platform).await?;
    let to = repo::create_schema(&tx, tenant).await?;
    let total = if m.rows_total > 0 {
        m.rows_total
    } else {
        repo::count_rows(&tx, from, tenant).await?
    };
    let mut after = repo::last_copied(&tx, &to, tenant).await?;
    let mut copied = if after.is_some() {
        repo::count_rows(&tx, &to, tenant).await?
    } else {
        0
    };
    repo::progress(
        &tx,
        m.id,
        Phase::Copying.as_str(),
        Some(copied),
        Some(total),
    )
    .await?;
    tx.commit().await?;
    loop {
        let tx = db.begin(Scope::Platform).await?;
        let (n, last) = repo::copy_events_chunk(&tx, from, &to, tenant, after, CHUNK).await?;
        copied += n;
        repo::progress(&tx, m.id, Phase::Copying.as_str(), Some(copied), None).await?;
        tx.commit().await?;
        after = last.or(after);
        if n < CHUNK {
            break;
        }
    }
    let since = load(ctx, m.id)
        .await
        .map_err(|e| Failure::Unavailable(e.to_string()))?
        .and_then(|m| m.copy_started_at)
        .unwrap_or_else(Utc::now)
        - CATCH_UP_MARGIN;

    // 2. Catch up, and verify the bulk part.
    let tx = db.begin(Scope::Platform).await?;
    copied += repo::copy_missing_events(&tx, from, &to, tenant, Some(since)).await? as i64;
    for name in SMALL_TABLES {
        copied += repo::sync_small_table(&tx, name, from, &to, tenant).await? as i64;
    }
    repo::progress(&tx, m.id, Phase::CatchingUp.as_str(), Some(copied), None).await?;
    tx.commit().await?;
    if !bulk_matches(db, from, &to, tenant, since).await? {
        // Something was written into the past during the copy.
        let tx = db.begin(Scope::Platform).await?;
        copied += repo::copy_missing_events(&tx, from, &to, tenant, None).await? as i64;
        tx.commit().await?;
        if !bulk_matches(db, from, &to, tenant, since).await? {
            return Err(Failure::Failed(
                "verification failed: the copied events differ from the source".into(),
            ));
        }
    }

    // 3. The barrier.
    let tx = db.begin(Scope::Platform).await?;
    tx_exec(
        &tx,
        &format!("SET LOCAL lock_timeout = '{BARRIER_LOCK_TIMEOUT}'"),
    )
    .await?;
    repo::progress(&tx, m.id, Phase::Barrier.as_str(), None, None).await?;
    repo::lock_placement(&tx, tenant).await?;
    copied += repo::copy_missing_events(&tx, from, &to, tenant, Some(since)).await? as i64;
    if repo::count_events(&tx, from, tenant).await? != repo::count_events(&tx, &to, tenant).await? {
        copied += repo::copy_missing_events(&tx, from, &to, tenant, None).await? as i64;
    }
    for name in SMALL_TABLES {
        copied += repo::sync_small_table(&tx, name, from, &to, tenant).await? as i64;
    }
    let mut mismatched = Vec::new();
    if repo::count_events(&tx, from, tenant).await? != repo::count_events(&tx, &to, tenant).await?
        || repo::checksum(&tx, from, "usage_events", tenant, Some(since), None).await?
            != repo::checksum(&tx, &to, "usage_events", tenant, Some(since), None).await?
    {
        mismatched.push("usage_events");
    }
    for name in SMALL_TABLES {
        if repo::checksum(&tx, from, name, tenant, None, None).await?
            != repo::checksum(&tx, &to, name, tenant, None, None).await?
        {
            mismatched.push(name);
        }
    }
    if !mismatched.is_empty() {
        tx.rollback().await?;
        return Err(Failure::Failed(format!(
            "verification failed: {} differ after the final copy",
            mismatched.join(", ")
        )));
    }
    let now = ctx.clock.now();
    repo::flip_to_schema(&tx, tenant, &to, now).await?;
    repo::progress(&tx, m.id, Phase::Cleaning.as_str(), Some(copied), None).await?;
    repo::finish(
        &tx,
        m.id,
        MigrationStatus::Completed.as_str(),
        Phase::Cleaning.as_str(),
        None,
        now,
    )
    .await?;
    outbox
        .emit_in(
            &tx,
            "isolation.migration_completed",
            Some(tenant),
            event_data(m),
        )
        .await?;
    jobs::enqueue_in(
        &tx,
        &new_job::<CleanupJob>(
            ctx,
            &Cleanup {
                migration_id: m.id,
                tenant_id: tenant,
                schema: from.to_owned(),
            },
        )?,
    )
    .await?;
    tx.commit().await?;
    if let Err(err) = db.placements().refresh(db.pool()).await {
        tracing::warn!(error = %err, "reading tenant placements failed");
    }
    tracing::info!(tenant = %tenant, migration = %m.id, rows = copied, schema = %to,
        "moved a tenant to its own schema");
    Ok(())
}

/// Whether the events that occurred before `since` match in both places
/// (count and checksum).
async fn bulk_matches(
    db: &Db,
    from: &str,
    to: &str,
    tenant: Uuid,
    since: DateTime<Utc>,
) -> Result<bool, Failure> {
    let tx = db.begin(Scope::Platform).await?;
    let source = repo::checksum(&tx, from, "usage_events", tenant, None, Some(since)).await?;
    let target = repo::checksum(&tx, to, "usage_events", tenant, None, Some(since)).await?;
    tx.commit().await?;
    Ok(source == target)
}

async fn tx_exec(tx: &sea_orm::DatabaseTransaction, sql: &str) -> Result<(), DbErr> {
    use sea_orm::ConnectionTrait as _;
    tx.execute_raw(storage::statement(sql.to_owned(), []))
        .await?;
    Ok(())
}

fn new_job<J: Job>(ctx: &Context, payload: &J::Payload) -> Result<NewJob, Failure> {
    Ok(NewJob {
        kind: J::KIND,
        payload: serde_json::to_value(payload).map_err(|e| Failure::Failed(e.to_string()))?,
        max_attempts: J::MAX_ATTEMPTS,
        run_at: ctx.clock.now(),
    })
}

/// Ends the migration `failed` with its event, and drops the target.
async fn fail(
    ctx: &Context,
    m: &MigrationRow,
    outbox: &Outbox,
    error: &str,
) -> Result<(), JobError> {
    tracing::warn!(tenant = %m.tenant_id, migration = %m.id, error, "isolation move failed");
    let tx = ctx.db.begin(Scope::Platform).await.map_err(retry)?;
    repo::finish(
        &tx,
        m.id,
        MigrationStatus::Failed.as_str(),
        Phase::Done.as_str(),
        Some(error),
        ctx.clock.now(),
    )
    .await
    .map_err(retry)?;
    let mut data = event_data(m);
    data["error"] = serde_json::Value::from(error);
    outbox
        .emit_in(&tx, "isolation.migration_failed", Some(m.tenant_id), data)
        .await
        .map_err(retry)?;
    // The target of a move from the shared tables is only ever the
    // tenant's new schema, never live data.
    if m.from_level == "shared_schema"
        && repo::schema_exists(&tx, m.tenant_id).await.map_err(retry)?
    {
        repo::drop_schema(&tx, m.tenant_id).await.map_err(retry)?;
    }
    tx.commit().await.map_err(retry)?;
    Ok(())
}

/// The session advisory lock that makes one runner the mover of a
/// migration; released when dropped (or when the process dies with its
/// connection).
struct MoverLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    key: i64,
}

impl MoverLock {
    async fn take(db: &Db, migration: Uuid) -> Result<Option<Self>, JobError> {
        let mut conn = db
            .pool()
            .acquire()
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
        let key = i64::from_be_bytes(migration.as_bytes()[8..].try_into().unwrap_or_default());
        let took: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
        Ok(took.then_some(Self {
            conn: Some(conn),
            key,
        }))
    }
}

impl Drop for MoverLock {
    fn drop(&mut self) {
        let (Some(mut conn), key) = (self.conn.take(), self.key) else {
            return;
        };
        // Unlock before the connection goes back to the pool; if that
        // cannot happen, close the connection (which unlocks too).
        tokio::spawn(async move {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                let _ = conn.detach();
            }
        });
    }
}
