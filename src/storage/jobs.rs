//! The job queue and the periodic-worker leases (`migrations/0009_workers.sql`).
//!
//! Times come from the caller (the workers' injectable clock), never from
//! the database's `now()`, so tests can move time.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseTransaction, DbErr, Statement};
use sqlx::{PgPool, Row};

/// The channel runners LISTEN on; the payload is the job's kind.
pub const CHANNEL: &str = "tenlyr_jobs";

/// A job to add.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: &'static str,
    pub payload: serde_json::Value,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
}

/// A job a runner claimed: it holds the lease until `attempts` changes.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    /// This claim's number (1 for the first); fences the acknowledgement.
    pub attempts: i32,
    pub max_attempts: i32,
}

/// A job as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// Adds jobs in one statement (one notification per kind at commit).
pub async fn enqueue(pool: &PgPool, jobs: &[NewJob]) -> Result<Vec<i64>, sqlx::Error> {
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind).collect();
    let payloads: Vec<serde_json::Value> = jobs.iter().map(|j| j.payload.clone()).collect();
    let attempts: Vec<i32> = jobs.iter().map(|j| j.max_attempts).collect();
    let run_at: Vec<DateTime<Utc>> = jobs.iter().map(|j| j.run_at).collect();
    let rows = sqlx::query(
        "INSERT INTO jobs (kind, payload, max_attempts, run_at, created_at, updated_at) \
         SELECT k, p, m, r, r, r FROM unnest($1::text[], $2::jsonb[], $3::int[], $4::timestamptz[]) AS j(k, p, m, r) \
         RETURNING id",
    )
    .bind(&kinds)
    .bind(&payloads)
    .bind(&attempts)
    .bind(&run_at)
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| r.try_get("id")).collect()
}

/// Adds a job inside a domain transaction (outbox): it exists if and only
/// if the change commits.
pub async fn enqueue_in(tx: &DatabaseTransaction, job: &NewJob) -> Result<i64, DbErr> {
    let row = tx
        .query_one_raw(Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            "INSERT INTO jobs (kind, payload, max_attempts, run_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4, $4) RETURNING id",
            [
                job.kind.into(),
                job.payload.clone().into(),
                job.max_attempts.into(),
                job.run_at.into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotInserted)?;
    row.try_get("", "id")
}

/// Claims up to `limit` due jobs of `kinds`, oldest first, skipping rows
/// other runners hold; each is leased until `now + lease_ms` of its kind
/// (`tenlyr_claim_jobs`, migration 0009).
pub async fn claim(
    pool: &PgPool,
    kinds: &[&str],
    lease_ms: &[i64],
    now: DateTime<Utc>,
    limit: i32,
    runner: &str,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, kind, payload, attempts, max_attempts FROM tenlyr_claim_jobs($1, $2, $3, $4, $5)",
    )
    .bind(kinds)
    .bind(lease_ms)
    .bind(now)
    .bind(limit)
    .bind(runner)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                payload: r.try_get("payload")?,
                attempts: r.try_get("attempts")?,
                max_attempts: r.try_get("max_attempts")?,
            })
        })
        .collect()
}

/// When the next job of `kinds` is due (a queued job's time, or a lease's
/// end), if any.
pub async fn next_due(pool: &PgPool, kinds: &[&str]) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(run_at) FROM jobs WHERE state IN ('queued', 'running') AND kind = ANY($1)",
    )
    .bind(kinds)
    .fetch_one(pool)
    .await
}

/// Deletes finished jobs whose claim is still current; returns how many
/// (`tenlyr_finish_jobs`, migration 0009).
pub async fn complete(pool: &PgPool, done: &[(i64, i32)]) -> Result<u64, sqlx::Error> {
    let (ids, attempts): (Vec<i64>, Vec<i32>) = done.iter().copied().unzip();
    let done: i64 = sqlx::query_scalar("SELECT tenlyr_finish_jobs($1, $2)")
        .bind(&ids)
        .bind(&attempts)
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(done).unwrap_or(0))
}

/// Records a failed attempt: queued again at `retry_at`, or `dead` when it
/// was the last one (or `retry_at` is `None`). False if the claim had
/// already moved on (the lease expired and another runner took it).
pub async fn fail(
    pool: &PgPool,
    job: &Claimed,
    error: &str,
    now: DateTime<Utc>,
    retry_at: Option<DateTime<Utc>>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE jobs SET \
             state = CASE WHEN $4::timestamptz IS NULL OR attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
             run_at = coalesce($4, run_at), last_error = $3, locked_by = NULL, updated_at = $5 \
         WHERE id = $1 AND attempts = $2 AND state = 'running'",
    )
    .bind(job.id)
    .bind(job.attempts)
    .bind(error)
    .bind(retry_at)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Renews the leases of claimed jobs that are still running: each until
/// `now` plus its lease (milliseconds); how many were still held.
pub async fn renew(
    pool: &PgPool,
    claims: &[(i64, i32, i64)],
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let ids: Vec<i64> = claims.iter().map(|c| c.0).collect();
    let attempts: Vec<i32> = claims.iter().map(|c| c.1).collect();
    let lease_ms: Vec<i64> = claims.iter().map(|c| c.2).collect();
    let result = sqlx::query(
        "UPDATE jobs j SET run_at = $4 + c.ms * interval '1 millisecond' \
         FROM unnest($1::bigint[], $2::int[], $3::bigint[]) AS c(id, attempts, ms) \
         WHERE j.id = c.id AND j.attempts = c.attempts AND j.state = 'running'",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&lease_ms)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Puts a claimed job back without spending its attempt (its worker could
/// not run it now, e.g. shutting down): due again at `run_at`.
pub async fn release(
    pool: &PgPool,
    job: &Claimed,
    run_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE jobs SET state = 'queued', attempts = attempts - 1, run_at = $3, locked_by = NULL \
         WHERE id = $1 AND attempts = $2 AND state = 'running'",
    )
    .bind(job.id)
    .bind(job.attempts)
    .bind(run_at)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// One job, whatever its state (`None` once it finished).
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<JobRow>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, kind, payload, state, attempts, max_attempts, run_at, last_error FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(JobRow {
            id: r.try_get("id")?,
            kind: r.try_get("kind")?,
            payload: r.try_get("payload")?,
            state: r.try_get("state")?,
            attempts: r.try_get("attempts")?,
            max_attempts: r.try_get("max_attempts")?,
            run_at: r.try_get("run_at")?,
            last_error: r.try_get("last_error")?,
        })
    })
    .transpose()
}

/// Takes the lease of periodic worker `name` for one tick, unless another
/// holder's lease is still running or a tick started less than
/// `min_gap_ms` ago (another replica ticked this period).
pub async fn acquire_lease(
    pool: &PgPool,
    name: &str,
    holder: &str,
    now: DateTime<Utc>,
    lease_ms: i64,
    min_gap_ms: i64,
) -> Result<bool, sqlx::Error> {
    let won = sqlx::query(
        "INSERT INTO worker_leases AS l (name, holder, held_until, last_tick_at) \
         VALUES ($1, $2, $3 + $4 * interval '1 millisecond', $3) \
         ON CONFLICT (name) DO UPDATE \
             SET holder = EXCLUDED.holder, held_until = EXCLUDED.held_until, last_tick_at = EXCLUDED.last_tick_at \
             WHERE (l.held_until IS NULL OR l.held_until <= $3) \
               AND (l.last_tick_at IS NULL OR l.last_tick_at <= $3 - $5 * interval '1 millisecond') \
         RETURNING name",
    )
    .bind(name)
    .bind(holder)
    .bind(now)
    .bind(lease_ms)
    .bind(min_gap_ms)
    .fetch_optional(pool)
    .await?;
    Ok(won.is_some())
}

/// Extends a held lease (a long tick); false if it was lost.
pub async fn renew_lease(
    pool: &PgPool,
    name: &str,
    holder: &str,
    until: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE worker_leases SET held_until = $3 WHERE name = $1 AND holder = $2 AND held_until IS NOT NULL",
    )
    .bind(name)
    .bind(holder)
    .bind(until)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Ends a tick: the lease is free, the tick's start time stays.
pub async fn release_lease(pool: &PgPool, name: &str, holder: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE worker_leases SET held_until = NULL WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(holder)
        .execute(pool)
        .await?;
    Ok(())
}

/// Jobs by kind and state (`/metrics`).
pub async fn depth_by_kind(pool: &PgPool) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind, state, count(*) FROM jobs GROUP BY kind, state ORDER BY kind, state",
    )
    .fetch_all(pool)
    .await
}
