//! The move of a tenant's data to a higher isolation tier (DESIGN.md §10):
//! a job per migration (`isolation.migrate`), then a job that removes the
//! source (`isolation.cleanup`).
//!
//! 1. **copying**: the tenant's schema is created (idempotent) and its
//!    events copied in chunks ([`Copying`]) in `(occurred_at, id)` order,
//!    each chunk with its progress in one short transaction; writes go on
//!    to the source meanwhile. A restarted move goes on after the last
//!    event the target holds. The small tables are copied too.
//! 2. **catching_up**: events the target lacks among those that occurred
//!    from the copy's bound on (two minutes before it began, where writes
//!    during the copy land), and the small tables synced by difference;
//!    the bound then moves up to now, and the events before it are
//!    verified by count and checksum in one snapshot, repaired in that
//!    snapshot if something was written into the past, with the source's
//!    hourly event counts of that snapshot noted.
//! 3. **barrier**: one transaction holds the tenant's placement lock in
//!    exclusive mode, so the tenant's writers wait (they are never
//!    refused); it copies what is still missing (the window after the
//!    bound, and older hours whose counts moved), verifies them and every
//!    small table by row count and checksum, flips the placement, sets the
//!    tenant's `isolationLevel`, completes the migration with its event
//!    and enqueues the cleanup; the cross-tenant views are rebuilt after. Until that commit the source is authoritative:
//!    a move killed at any point resumes (the job's lease lapses) and
//!    either flips whole or not at all.
//! 4. **cleaning**: the cleanup job deletes the source rows from the
//!    shared tables in chunks, or drops a schema left for a database whole.
//!
//! Errors that mean "not now" (Postgres unreachable, lock waits,
//! deadlocks, serialization failures, statement timeouts) retry. A move
//! whose verification fails, or that meets any other error, ends `failed`
//! with the error, its target dropped and the tenant where it was. One mover per migration at a time:
//! a session advisory lock, released if the process dies.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DbErr;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    Context,
    queue::{Backoff, Job, JobError, Queue},
};
use crate::{
    domain::{
        isolation::{MigrationStatus, Phase},
        tenant::IsolationLevel,
    },
    service::{events::Outbox, isolation::event_data},
    storage::{
        self, Db, dedicated,
        isolation::{self as repo, MigrationRow, SMALL_TABLES},
        jobs,
        tenant_data::{self, DatabasePlace, Place, Scope},
    },
};

/// How a move copies: rows per transaction, and a pause between
/// transactions (`TENLYR_ISOLATION_CHUNK_ROWS`, `TENLYR_ISOLATION_PAUSE_MS`).
#[derive(Debug, Clone, Copy)]
pub struct Copying {
    pub chunk: i64,
    pub pause: Duration,
}

impl Copying {
    async fn pause(&self) {
        if !self.pause.is_zero() {
            tokio::time::sleep(self.pause).await;
        }
    }
}

/// A job's lease; the runner renews it while the job runs, so a move of
/// any length keeps it, and one whose process died is resumed this soon.
const LEASE: Duration = Duration::from_secs(10);

/// A move or a cleanup that cannot run now (Postgres unreachable, a
/// writer holding the barrier off) tries again, at most every 5 minutes,
/// for weeks: a dead job would leave its migration `in_progress` for good
/// (and every later start of the tenant refused). One that cannot succeed
/// ends `failed` instead.
const MAX_ATTEMPTS: i32 = 10_000;
const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(2),
    max: Duration::from_secs(300),
};

/// Mover statements outside the barrier may read a large tenant's every
/// event (the verification, its repair): above the server's request
/// timeout.
const MOVER_STATEMENT_TIMEOUT: &str = "30min";

/// How far before the copy's start the window of live writes begins (an
/// event's time is its client's: a write is usually stamped now, give or
/// take the client's clock and queueing). The events from there on are
/// copied whole at the end; older ones written during the move are found
/// by their hour's count.
const CATCH_UP_MARGIN: chrono::Duration = chrono::Duration::minutes(2);

/// How long the barrier waits for writers in flight before giving up and
/// trying again (new writers wait behind it meanwhile, so this bounds
/// their wait), and how often it tries before the job backs off.
const BARRIER_LOCK_TIMEOUT: &str = "1s";
const BARRIER_TRIES: u32 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Migrate {
    pub migration_id: Uuid,
}

#[derive(Debug)]
pub struct MigrateJob {
    pub copy: Copying,
}

impl Job for MigrateJob {
    const KIND: &'static str = "isolation.migrate";
    const LEASE: Duration = LEASE;
    const MAX_ATTEMPTS: i32 = MAX_ATTEMPTS;
    const BACKOFF: Backoff = BACKOFF;
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
        match move_tenant(ctx, &m, &outbox, self.copy).await {
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

#[derive(Debug)]
pub struct CleanupJob {
    pub copy: Copying,
}

impl Job for CleanupJob {
    const KIND: &'static str = "isolation.cleanup";
    const LEASE: Duration = LEASE;
    const MAX_ATTEMPTS: i32 = MAX_ATTEMPTS;
    const BACKOFF: Backoff = BACKOFF;
    type Payload = Cleanup;

    async fn run(&self, ctx: &Context, p: Cleanup) -> Result<(), JobError> {
        let mut deleted = 0;
        // The shared tables give up the tenant's rows in chunks (the
        // rollups first: the cross-tenant views no longer show these rows,
        // but nothing should count them twice for long); a schema left for
        // the tenant's own database is dropped whole below.
        let shared = p.schema == "public";
        let chunked: &[&str] = if shared {
            &["usage_rollups", "records", "webhook_events", "usage_events"]
        } else {
            &[]
        };
        for name in chunked {
            loop {
                let tx = ctx.db.begin(Scope::Platform).await.map_err(retry)?;
                let n = repo::delete_rows(&tx, &p.schema, name, p.tenant_id, self.copy.chunk)
                    .await
                    .map_err(retry)?;
                tx.commit().await.map_err(retry)?;
                deleted += n;
                if n < self.copy.chunk as u64 {
                    break;
                }
                self.copy.pause().await;
            }
        }
        let tx = ctx.db.begin(Scope::Platform).await.map_err(retry)?;
        // Unless a terminated tenant's purge dropped it already.
        if !shared && repo::schema_exists(&tx, p.tenant_id).await.map_err(retry)? {
            repo::drop_left_schema(&tx, p.tenant_id)
                .await
                .map_err(retry)?;
        }
        repo::set_phase(&tx, p.migration_id, Phase::Done.as_str())
            .await
            .map_err(retry)?;
        tx.commit().await.map_err(retry)?;
        tracing::info!(tenant = %p.tenant_id, rows = deleted, schema = %p.schema,
            "removed the source of a completed isolation move");
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
        } else if is_passing(&err) {
            // A lock wait, a deadlock, a serialization failure or a
            // statement timeout: nothing was committed, try again later.
            Self::Unavailable(err.to_string())
        } else {
            Self::Failed(err.to_string())
        }
    }
}

/// SQLSTATE 55P03: `lock_timeout` ran out.
fn is_lock_timeout(err: &DbErr) -> bool {
    storage::sqlstate(err).as_deref() == Some("55P03")
}

/// Errors that say "not now" rather than "never": a lock wait that timed
/// out, a deadlock, a serialization failure, a statement timeout.
fn is_passing(err: &DbErr) -> bool {
    matches!(
        storage::sqlstate(err).as_deref(),
        Some("55P03" | "40P01" | "40001" | "57014")
    )
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

/// Where a move writes.
enum Target {
    /// The tenant's schema in the main database: written in the same
    /// transactions that read the source.
    Schema(String),
    /// The tenant's own database: written in transactions of its own,
    /// each committed before the source's (so a crash leaves the target
    /// ahead, never behind, and the source authoritative until the flip).
    Database { place: DatabasePlace, db: Db },
}

type Tx = sea_orm::DatabaseTransaction;

impl Target {
    /// A transaction of the target's own, if it has its own database.
    async fn begin(&self) -> Result<Option<Tx>, DbErr> {
        match self {
            Self::Schema(_) => Ok(None),
            Self::Database { db, .. } => {
                let tx = db.begin(Scope::Platform).await?;
                mover_settings(&tx, false).await?;
                Ok(Some(tx))
            }
        }
    }

    /// How much of the latest traffic the barrier copies and verifies
    /// whole (older writes are found by their hours' counts): in one
    /// database an anti-join makes minutes of traffic cheap; across two,
    /// the ids of the window travel both ways, so it is kept to seconds.
    fn window(&self) -> chrono::Duration {
        match self {
            Self::Schema(_) => CATCH_UP_MARGIN,
            Self::Database { .. } => chrono::Duration::seconds(10),
        }
    }

    /// The schema of the target in the transaction that writes it.
    fn schema(&self) -> &str {
        match self {
            Self::Schema(s) => s,
            Self::Database { .. } => "public",
        }
    }

    /// The events of `from` the target lacks, among those that occurred in
    /// `[since, until)`, copied; how many.
    async fn copy_missing(
        &self,
        src: &Tx,
        dst: Option<&Tx>,
        from: &str,
        tenant: Uuid,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<i64, DbErr> {
        let n = match dst {
            Some(dst) => {
                repo::copy_missing_events_across(src, dst, from, tenant, since, until).await?
            }
            None => {
                repo::copy_missing_events(src, from, self.schema(), tenant, since, until).await?
            }
        };
        Ok(n as i64)
    }

    /// A small table synced by difference; rows written.
    async fn sync(
        &self,
        src: &Tx,
        dst: Option<&Tx>,
        name: &str,
        from: &str,
        tenant: Uuid,
    ) -> Result<i64, DbErr> {
        let n = match dst {
            Some(dst) => repo::sync_small_table_across(src, dst, name, from, tenant).await?,
            None => repo::sync_small_table(src, name, from, self.schema(), tenant).await?,
        };
        Ok(n as i64)
    }

    /// Whether the tenant's rows of a table (events: in `[since, until)`)
    /// have the same count and checksum in the source and the target.
    #[allow(clippy::too_many_arguments)]
    async fn same(
        &self,
        src: &Tx,
        dst: Option<&Tx>,
        from: &str,
        name: &str,
        tenant: Uuid,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<bool, DbErr> {
        let source = repo::checksum(src, from, name, tenant, since, until);
        let target = |tx| repo::checksum(tx, self.schema(), name, tenant, since, until);
        Ok(match dst {
            // Two databases: both sums at once.
            Some(dst) => {
                let (a, b) = tokio::try_join!(source, target(dst))?;
                a == b
            }
            None => source.await? == target(src).await?,
        })
    }
}

/// Commits the target's transaction (if it has one), then the source's.
async fn commit_both(src: Tx, dst: Option<Tx>) -> Result<(), DbErr> {
    if let Some(dst) = dst {
        dst.commit().await?;
    }
    src.commit().await
}

/// Prepares the target: the tenant's schema, or its database (on the
/// server chosen at the move's first run; created, migrated, the tenant
/// row mirrored, day partitions back to the tenant's first event).
async fn prepare(ctx: &Context, m: &MigrationRow, from: &str) -> Result<Target, Failure> {
    let (db, tenant) = (&ctx.db, m.tenant_id);
    if m.to_level != IsolationLevel::DedicatedDatabase.as_str() {
        let tx = db.begin(Scope::Platform).await?;
        let schema = repo::create_schema(&tx, tenant).await?;
        tx.commit().await?;
        return Ok(Target::Schema(schema));
    }
    let dedicated = db
        .dedicated()
        .ok_or_else(|| Failure::Failed("this server has no tenant database servers".into()))?;
    let tx = db.begin(Scope::Platform).await?;
    let counts = repo::databases_per_server(&tx).await?;
    let pick = dedicated
        .server_keys()
        .min_by_key(|k| counts.iter().find(|(s, _)| s == k).map_or(0, |(_, n)| *n))
        .ok_or_else(|| Failure::Failed("no tenant database server is configured".into()))?
        .to_owned();
    let server = repo::target_server(&tx, m.id, &pick).await?;
    let first_day = repo::first_event_day(&tx, from, tenant).await?;
    tx.commit().await?;
    let place = DatabasePlace {
        server: server.into(),
        name: dedicated::database_of(tenant).into(),
    };
    // A server missing from the configuration, or down: not now.
    dedicated
        .create(&place)
        .await
        .map_err(|e| Failure::Unavailable(format!("{e:#}")))?;
    let target = db
        .at(Some(&Place::Database(place.clone())))
        .await
        .map_err(|e| Failure::Unavailable(e.to_string()))?;
    let row = tenant_data::tenant_row(db, tenant)
        .await?
        .ok_or_else(|| Failure::Failed("the tenant was deleted".into()))?;
    tenant_data::mirror_tenant(&target, &row).await?;
    let today = Utc::now().date_naive();
    let tx = target.begin(Scope::Platform).await?;
    repo::ensure_partitions(
        &tx,
        first_day.unwrap_or(today).min(today) - chrono::Days::new(2),
        today + chrono::Days::new(7),
    )
    .await?;
    tx.commit().await?;
    Ok(Target::Database { place, db: target })
}

/// shared_schema → dedicated_schema, shared_schema or dedicated_schema →
/// dedicated_database.
async fn move_tenant(
    ctx: &Context,
    m: &MigrationRow,
    outbox: &Outbox,
    copy: Copying,
) -> Result<(), Failure> {
    let tenant = m.tenant_id;
    let from = if m.from_level == IsolationLevel::DedicatedSchema.as_str() {
        tenant_data::schema_of(tenant)
    } else {
        "public".to_owned()
    };
    let from = from.as_str();
    let db = &ctx.db;

    // 1. The target, and the bulk copy of the events that occurred
    // before `since` (a bound fixed when the copy first began, so the copy
    // never chases the live writes, which land after it).
    let target = prepare(ctx, m, from).await?;
    tracing::debug!(migration = %m.id, "the target is ready");
    let tx = db.begin(Scope::Platform).await?;
    let total = if m.rows_total > 0 {
        m.rows_total
    } else {
        repo::count_rows(&tx, from, tenant).await?
    };
    repo::progress(&tx, m.id, Phase::Copying.as_str(), None, Some(total)).await?;
    tx.commit().await?;
    let since = load(ctx, m.id)
        .await
        .map_err(|e| Failure::Unavailable(e.to_string()))?
        .and_then(|m| m.copy_started_at)
        .ok_or_else(|| Failure::Failed("the migration lost its copy start".into()))?
        - CATCH_UP_MARGIN;
    let (tx, dtx) = (mover_tx(db).await?, target.begin().await?);
    let dst = dtx.as_ref().unwrap_or(&tx);
    let mut after = repo::last_copied(dst, target.schema(), tenant, since).await?;
    let mut copied = repo::count_rows(dst, target.schema(), tenant).await?;
    commit_both(tx, dtx).await?;
    match &target {
        Target::Schema(schema) => loop {
            let tx = mover_tx(db).await?;
            let (n, last) =
                repo::copy_events_chunk(&tx, from, schema, tenant, after, since, copy.chunk)
                    .await?;
            copied += n;
            repo::progress(&tx, m.id, Phase::Copying.as_str(), Some(copied), None).await?;
            tx.commit().await?;
            after = last.or(after);
            tracing::debug!(migration = %m.id, rows = n, ?after, "copied a chunk of events");
            if n < copy.chunk {
                break;
            }
            copy.pause().await;
        },
        Target::Database { db: there, .. } => {
            // Across two databases the next chunk is read while the last
            // one is written (each on its own connection).
            let read =
                |after| repo::read_events_chunk(db.pool(), from, tenant, after, since, copy.chunk);
            let mut ahead = read(after).await.map_err(sqlx_err)?;
            while let Some(chunk) = ahead {
                let (rows, last) = (chunk.rows, chunk.last);
                let next = async {
                    if rows < copy.chunk {
                        return Ok(None);
                    }
                    copy.pause().await;
                    read(Some(last)).await
                };
                let (n, next) =
                    tokio::try_join!(repo::write_events_chunk(there.pool(), chunk), next)
                        .map_err(sqlx_err)?;
                copied += n;
                let tx = db.begin(Scope::Platform).await?;
                repo::progress(&tx, m.id, Phase::Copying.as_str(), Some(copied), None).await?;
                tx.commit().await?;
                tracing::debug!(migration = %m.id, rows = n, ?last, "copied a chunk of events");
                ahead = next;
            }
        }
    }

    // 2. Catch up: the events from `since` on, and the small tables; then
    // verify (and if need be repair) the bulk part in one snapshot, and
    // note the hourly counts of that snapshot.
    let (tx, dtx) = (mover_tx(db).await?, target.begin().await?);
    copied += target
        .copy_missing(&tx, dtx.as_ref(), from, tenant, Some(since), None)
        .await?;
    for name in SMALL_TABLES {
        copied += target.sync(&tx, dtx.as_ref(), name, from, tenant).await?;
    }
    repo::progress(&tx, m.id, Phase::CatchingUp.as_str(), Some(copied), None).await?;
    commit_both(tx, dtx).await?;
    tracing::debug!(migration = %m.id, rows = copied, "caught up");
    // The bound moves up to now: the barrier's window is then the last
    // few minutes, however long the copy (or a resumed move) took. What
    // lies between the old and the new bound was just copied above, and
    // the verification covers it.
    let since = since.max(Utc::now() - target.window());
    let (past, repaired) = verified_past(db, &target, from, tenant, since).await?;
    copied += repaired;
    tracing::debug!(migration = %m.id, repaired, "verified the copy before the barrier's window");

    // 3. The barrier: the events from `since` on are copied and verified
    // whole (a few minutes of traffic); older ones only in the hours whose
    // counts moved since the verification. Writers queue behind the
    // barrier's lock request, so it gives up after BARRIER_LOCK_TIMEOUT
    // when a writer in flight does not finish, and tries again.
    let tx = db.begin(Scope::Platform).await?;
    repo::progress(&tx, m.id, Phase::Barrier.as_str(), None, None).await?;
    tx.commit().await?;
    let mut tries = 0;
    let tx = loop {
        tries += 1;
        let tx = db.begin(Scope::Platform).await?;
        tx_exec(
            &tx,
            &format!("SET LOCAL lock_timeout = '{BARRIER_LOCK_TIMEOUT}'"),
        )
        .await?;
        repo::hold_partitions(&tx).await?;
        match repo::lock_placement(&tx, tenant).await {
            Ok(()) => break tx,
            Err(err) if is_lock_timeout(&err) && tries < BARRIER_TRIES => {
                tracing::info!(tenant = %tenant, tries, "the barrier waited too long for a writer; trying again");
                let _ = tx.rollback().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(err.into()),
        }
    };
    repo::set_move_session(&tx).await?;
    let dtx = target.begin().await?;
    let dst = dtx.as_ref();
    copied += target
        .copy_missing(&tx, dst, from, tenant, Some(since), None)
        .await?;
    let now_marks = repo::hour_marks(&tx, from, tenant).await?;
    let mut ranges = vec![(Some(since), None)];
    for (start, added) in past.moved(&now_marks) {
        let end = start + chrono::Duration::hours(1);
        if start >= since {
            continue; // inside the window, copied whole above
        }
        let until = if end <= since {
            end
        } else {
            // The hour `since` falls in: did anything land before `since`?
            let upper = repo::checksum(&tx, from, "usage_events", tenant, Some(since), Some(end))
                .await?
                .0;
            if past
                .straddle_upper(start)
                .is_some_and(|before| upper - before == added)
            {
                continue;
            }
            since
        };
        copied += target
            .copy_missing(&tx, dst, from, tenant, Some(start), Some(until))
            .await?;
        ranges.push((Some(start), Some(until)));
    }
    tracing::debug!(migration = %m.id, hours = ranges.len() - 1,
        "barrier: older hours written to during the move, copied again");
    let mut mismatched = Vec::new();
    for (a, b) in ranges {
        if !target
            .same(&tx, dst, from, "usage_events", tenant, a, b)
            .await?
        {
            mismatched.push("usage_events");
            break;
        }
    }
    // The small tables: synced, then checked; the retention purges change
    // them without the placement lock (expired records, old webhook
    // events), so a difference is synced once more before it counts.
    for name in SMALL_TABLES {
        let mut same = false;
        for _ in 0..3 {
            copied += target.sync(&tx, dst, name, from, tenant).await?;
            if target
                .same(&tx, dst, from, name, tenant, None, None)
                .await?
            {
                same = true;
                break;
            }
        }
        if !same {
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
    // Still in progress (not ended by another runner meanwhile)?
    if !repo::lock_running(&tx, m.id).await? {
        tx.rollback().await?;
        return Ok(());
    }
    let now = ctx.clock.now();
    match &target {
        Target::Schema(schema) => repo::flip_to_schema(&tx, tenant, schema, now).await?,
        Target::Database { place, .. } => {
            // The tenant row as it is now, locked against changes until
            // the flip commits (later ones reach the mirror through the
            // placement's trigger); the target commits first.
            let row = repo::lock_tenant_row(&tx, tenant).await?;
            if let Some(dst) = dst {
                repo::mirror_tenant_in(dst, row).await?;
            }
            repo::flip_to_database(&tx, tenant, &place.server, &place.name, now).await?;
        }
    }
    if let Some(dtx) = dtx {
        dtx.commit().await?;
    }
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
    let cleanup = Queue::new(ctx.clone())
        .job::<CleanupJob>(&Cleanup {
            migration_id: m.id,
            tenant_id: tenant,
            schema: from.to_owned(),
        })
        .map_err(|e| Failure::Failed(e.to_string()))?;
    jobs::enqueue_in(&tx, &cleanup).await?;
    tx.commit().await?;
    // The cross-tenant views learn the new place after the flip, outside
    // the barrier (a rebuild waits for the views' readers); one lost with
    // a crash here is rebuilt at the next start.
    let tx = db.begin(Scope::Platform).await?;
    repo::refresh_views(&tx).await?;
    tx.commit().await?;
    if let Err(err) = db.placements().refresh(db.pool()).await {
        tracing::warn!(error = %err, "reading tenant placements failed");
    }
    tracing::info!(tenant = %tenant, migration = %m.id, rows = copied, to = %m.to_level,
        "moved a tenant's data");
    Ok(())
}

/// The source as the bulk part was verified: its hourly event counts, and
/// for the hour `since` falls in, its events from `since` on.
struct Past {
    marks: std::collections::HashMap<(DateTime<Utc>, String), i64>,
    straddle: Option<(DateTime<Utc>, i64)>,
}

impl Past {
    /// The hours whose counts moved since, with how many events they
    /// gained.
    fn moved(&self, now: &[(DateTime<Utc>, String, i64)]) -> Vec<(DateTime<Utc>, i64)> {
        let mut moved: Vec<(DateTime<Utc>, i64)> = Vec::new();
        for (start, metric, events) in now {
            let before = self
                .marks
                .get(&(*start, metric.clone()))
                .copied()
                .unwrap_or(0);
            if *events != before {
                match moved.last_mut() {
                    Some((s, added)) if s == start => *added += events - before,
                    _ => moved.push((*start, events - before)),
                }
            }
        }
        moved
    }

    /// The events from `since` on in the hour starting at `start`, as
    /// verified, if that is the one hour `since` falls in.
    fn straddle_upper(&self, start: DateTime<Utc>) -> Option<i64> {
        self.straddle.filter(|(s, _)| *s == start).map(|(_, n)| n)
    }
}

/// Verifies the events that occurred before `since` — count and checksum
/// in both places — in one snapshot of the source (the target is written
/// by this move only), and reads the source's hourly counts in it. A
/// mismatch (something written into the past during the copy) is repaired
/// in the same snapshot by copying what the target lacks; what is written
/// after the snapshot shows in the hourly counts. Also returns how many
/// events the repair copied.
async fn verified_past(
    db: &Db,
    target: &Target,
    from: &str,
    tenant: Uuid,
    since: DateTime<Utc>,
) -> Result<(Past, i64), Failure> {
    let tx = db.begin_platform_snapshot().await?;
    mover_settings(&tx, true).await?;
    let dtx = target.begin().await?;
    let dst = dtx.as_ref();
    let mut repaired = 0;
    let events = "usage_events";
    if !target
        .same(&tx, dst, from, events, tenant, None, Some(since))
        .await?
    {
        repaired = target
            .copy_missing(&tx, dst, from, tenant, None, Some(since))
            .await?;
        if !target
            .same(&tx, dst, from, events, tenant, None, Some(since))
            .await?
        {
            return Err(Failure::Failed(
                "verification failed: the copied events differ from the source".into(),
            ));
        }
    }
    let marks = repo::hour_marks(&tx, from, tenant).await?;
    let hour = chrono::Duration::hours(1);
    // The hour `since` falls in (only when exactly one does: after a
    // change of time zone two hours may overlap, and the shortcut this
    // serves would not be exact).
    let mut holding: Vec<DateTime<Utc>> = marks
        .iter()
        .map(|(start, _, _)| *start)
        .filter(|start| *start < since && *start + hour > since)
        .collect();
    holding.dedup();
    let straddle = match holding[..] {
        [start] => Some((
            start,
            repo::checksum(&tx, from, events, tenant, Some(since), Some(start + hour))
                .await?
                .0,
        )),
        _ => None,
    };
    commit_both(tx, dtx).await?;
    let past = Past {
        marks: marks
            .into_iter()
            .map(|(start, metric, events)| ((start, metric), events))
            .collect(),
        straddle,
    };
    Ok((past, repaired))
}

fn sqlx_err(err: sqlx::Error) -> DbErr {
    DbErr::Query(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(err)))
}

async fn tx_exec(tx: &sea_orm::DatabaseTransaction, sql: &str) -> Result<(), DbErr> {
    use sea_orm::ConnectionTrait as _;
    tx.execute_raw(storage::statement(sql.to_owned(), []))
        .await?;
    Ok(())
}

/// A transaction of the mover outside the barrier: platform scope, a
/// statement timeout for whole-tenant statements, and the partition lock
/// in shared mode, so partition upkeep (which locks `public` before the
/// tenant schemas) never interleaves with a copy (which locks the target
/// before the source).
async fn mover_tx(db: &Db) -> Result<sea_orm::DatabaseTransaction, DbErr> {
    let tx = db.begin(Scope::Platform).await?;
    mover_settings(&tx, true).await?;
    Ok(tx)
}

/// [`mover_tx`]'s timeout and partition lock, for a transaction begun
/// otherwise (the verification's snapshot).
/// `partitions`: in the main database (a tenant database's partitions
/// are the mover's alone while it moves).
async fn mover_settings(tx: &sea_orm::DatabaseTransaction, partitions: bool) -> Result<(), DbErr> {
    tx_exec(
        tx,
        &format!("SET LOCAL statement_timeout = '{MOVER_STATEMENT_TIMEOUT}'"),
    )
    .await?;
    // Row text (which the checksums hash) the same in both databases.
    repo::set_move_session(tx).await?;
    if partitions {
        repo::hold_partitions(tx).await?;
    }
    Ok(())
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
    // Only a migration still in progress fails (another runner may have
    // ended it).
    if !repo::lock_running(&tx, m.id).await.map_err(retry)? {
        return Ok(());
    }
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
    // The target of a move to a schema is only ever the tenant's new
    // schema, never live data (a tenant in its schema moves to a
    // database).
    if m.to_level == IsolationLevel::DedicatedSchema.as_str()
        && repo::schema_exists(&tx, m.tenant_id).await.map_err(retry)?
    {
        repo::drop_schema(&tx, m.tenant_id).await.map_err(retry)?;
    }
    tx.commit().await.map_err(retry)?;
    // Nor is a move's database, which was never placed.
    if m.to_level == IsolationLevel::DedicatedDatabase.as_str()
        && let Some(dedicated) = ctx.db.dedicated()
    {
        let tx = ctx.db.begin(Scope::Platform).await.map_err(retry)?;
        let server = repo::target_server(&tx, m.id, "").await.map_err(retry)?;
        tx.commit().await.map_err(retry)?;
        if !server.is_empty() {
            let place = DatabasePlace {
                server: server.into(),
                name: dedicated::database_of(m.tenant_id).into(),
            };
            if let Err(err) = dedicated.drop_database(&place).await {
                tracing::warn!(error = %format!("{err:#}"), database = %place.name,
                    "dropping a failed move's database failed");
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u32) -> DateTime<Utc> {
        chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 12, 2, h, 0, 0).unwrap()
    }

    #[test]
    fn moved_hours_are_those_whose_counts_changed_with_what_they_gained() {
        let past = Past {
            marks: [
                ((at(9), "api_call".to_owned()), 10),
                ((at(9), "compute".to_owned()), 5),
                ((at(10), "api_call".to_owned()), 7),
            ]
            .into_iter()
            .collect(),
            straddle: Some((at(11), 3)),
        };
        let now = vec![
            (at(9), "api_call".to_owned(), 12),
            (at(9), "compute".to_owned(), 6),
            (at(10), "api_call".to_owned(), 7),
            (at(11), "api_call".to_owned(), 4),
            (at(12), "seats".to_owned(), 1),
        ];
        // 9h gained 3 over two metrics; 10h did not move; 11h and 12h are
        // new (4 and 1 from nothing).
        assert_eq!(past.moved(&now), vec![(at(9), 3), (at(11), 4), (at(12), 1)]);
        assert_eq!(past.straddle_upper(at(11)), Some(3));
        assert_eq!(past.straddle_upper(at(9)), None);
    }
}
