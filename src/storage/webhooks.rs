//! Outbound webhooks (`migrations/0013_webhook_delivery.sql`): endpoints,
//! the platform-event outbox, deliveries and their attempts.
//!
//! Endpoint changes run in the caller's SeaORM transaction (with the audit
//! entry); the dispatcher's claims and acknowledgements are single SQL
//! functions on the pool, like the job queue's. Times come from the
//! caller's clock, never from `now()`.

use super::statement;
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, QueryResult};
use sqlx::{PgPool, Row, postgres::PgRow};
use uuid::Uuid;

/// The channel dispatchers LISTEN on.
pub const CHANNEL: &str = "tenlyr_webhooks";

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRow {
    pub id: Uuid,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub ordered: bool,
    pub secret: Vec<u8>,
    pub previous_secret: Option<Vec<u8>>,
    pub previous_until: Option<DateTime<Utc>>,
    pub breaker_state: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str = "id, url, description, event_types, enabled, disabled_reason, \
     ordered, secret, previous_secret, previous_until, breaker_state, created_at, updated_at";

fn endpoint(row: &QueryResult) -> Result<EndpointRow, DbErr> {
    Ok(EndpointRow {
        id: row.try_get("", "id")?,
        url: row.try_get("", "url")?,
        description: row.try_get("", "description")?,
        event_types: row.try_get("", "event_types")?,
        enabled: row.try_get("", "enabled")?,
        disabled_reason: row.try_get("", "disabled_reason")?,
        ordered: row.try_get("", "ordered")?,
        secret: row.try_get("", "secret")?,
        previous_secret: row.try_get("", "previous_secret")?,
        previous_until: row.try_get("", "previous_until")?,
        breaker_state: row.try_get("", "breaker_state")?,
        created_at: row.try_get("", "created_at")?,
        updated_at: row.try_get("", "updated_at")?,
    })
}

pub async fn insert_endpoint(tx: &DatabaseTransaction, e: &EndpointRow) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "INSERT INTO webhook_endpoints (id, url, description, event_types, ordered, secret, \
             created_at, updated_at, breaker_since) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7)",
        [
            e.id.into(),
            e.url.clone().into(),
            e.description.clone().into(),
            e.event_types.clone().into(),
            e.ordered.into(),
            e.secret.clone().into(),
            e.created_at.into(),
        ],
    ))
    .await?;
    Ok(())
}

pub async fn endpoints(tx: &DatabaseTransaction) -> Result<Vec<EndpointRow>, DbErr> {
    tx.query_all_raw(statement(
        format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE tenant_id IS NULL \
             ORDER BY created_at, id"
        ),
        [],
    ))
    .await?
    .iter()
    .map(endpoint)
    .collect()
}

pub async fn find_endpoint(
    tx: &DatabaseTransaction,
    id: Uuid,
) -> Result<Option<EndpointRow>, DbErr> {
    find_endpoint_where(tx, id, "").await
}

/// [`find_endpoint`], locking the row for the rest of the transaction
/// (changes).
pub async fn find_endpoint_for_update(
    tx: &DatabaseTransaction,
    id: Uuid,
) -> Result<Option<EndpointRow>, DbErr> {
    find_endpoint_where(tx, id, " FOR UPDATE").await
}

async fn find_endpoint_where(
    tx: &DatabaseTransaction,
    id: Uuid,
    lock: &str,
) -> Result<Option<EndpointRow>, DbErr> {
    tx.query_one_raw(statement(
        format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
             WHERE id = $1 AND tenant_id IS NULL{lock}"
        ),
        [id.into()],
    ))
    .await?
    .as_ref()
    .map(endpoint)
    .transpose()
}

/// Writes an endpoint's editable fields. Disabling fails its pending
/// deliveries (they would wait forever otherwise); enabling clears the
/// reason and closes the breaker.
pub async fn update_endpoint(
    tx: &DatabaseTransaction,
    e: &EndpointRow,
    was_enabled: bool,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE webhook_endpoints SET url = $2, description = $3, event_types = $4, enabled = $5, \
             disabled_reason = $6, ordered = $7, updated_at = $8, \
             breaker_state = CASE WHEN $5 AND NOT $9 THEN 'closed' ELSE breaker_state END, \
             breaker_until = CASE WHEN $5 AND NOT $9 THEN NULL ELSE breaker_until END, \
             breaker_since = CASE WHEN $5 AND NOT $9 THEN $8 ELSE breaker_since END \
         WHERE id = $1",
        [
            e.id.into(),
            e.url.clone().into(),
            e.description.clone().into(),
            e.event_types.clone().into(),
            e.enabled.into(),
            e.disabled_reason.clone().into(),
            e.ordered.into(),
            now.into(),
            was_enabled.into(),
        ],
    ))
    .await?;
    if was_enabled && !e.enabled {
        fail_pending(tx, e.id, "the endpoint was disabled", now).await?;
    }
    Ok(())
}

async fn fail_pending(
    tx: &impl ConnectionTrait,
    endpoint: Uuid,
    why: &str,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    Ok(tx
        .execute_raw(statement(
            "UPDATE webhook_deliveries SET status = 'failed', finished_at = $3, last_error = $2, \
                 leased_by = NULL \
             WHERE endpoint_id = $1 AND status = 'pending'",
            [endpoint.into(), why.into(), now.into()],
        ))
        .await?
        .rows_affected())
}

/// Replaces the secret; the current one keeps signing until `until`.
pub async fn rotate_secret(
    tx: &DatabaseTransaction,
    id: Uuid,
    sealed: Vec<u8>,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE webhook_endpoints SET previous_secret = secret, previous_until = $3, secret = $2, \
             updated_at = $4 WHERE id = $1",
        [id.into(), sealed.into(), until.into(), now.into()],
    ))
    .await?;
    Ok(())
}

/// Deletes the endpoint with its deliveries and attempts; a delivery in
/// flight finishes against nothing (its acknowledgement matches no row).
pub async fn delete_endpoint(tx: &DatabaseTransaction, id: Uuid) -> Result<bool, DbErr> {
    Ok(tx
        .execute_raw(statement(
            "DELETE FROM webhook_endpoints WHERE id = $1",
            [id.into()],
        ))
        .await?
        .rows_affected()
        == 1)
}

/// An event for the outbox.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub event_type: &'static str,
    pub tenant_id: Option<Uuid>,
    /// The envelope as sent.
    pub body: String,
    pub created_at: DateTime<Utc>,
}

/// Adds the event and its deliveries in the caller's transaction (to
/// `only` alone when given); how many endpoints will receive it.
pub async fn emit_in(
    tx: &impl ConnectionTrait,
    event: &NewEvent,
    only: Option<Uuid>,
) -> Result<i32, DbErr> {
    let row = tx
        .query_one_raw(statement(
            "SELECT tenlyr_emit_event($1, $2, $3, $4, $5, $6) AS fanned",
            [
                event.id.clone().into(),
                event.event_type.into(),
                event.tenant_id.into(),
                event.body.clone().into(),
                event.created_at.into(),
                only.into(),
            ],
        ))
        .await?;
    row.map_or(Ok(0), |r| r.try_get("", "fanned"))
}

/// Re-queues the endpoint's deliveries that failed at or after `since`,
/// each with a fresh schedule from `now`; how many.
pub async fn recover(
    tx: &DatabaseTransaction,
    endpoint: Uuid,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let n = tx
        .execute_raw(statement(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $3, \
                 finished_at = NULL, retry_base = attempts, schedule_start = $3 \
             WHERE endpoint_id = $1 AND status = 'failed' AND finished_at >= $2",
            [endpoint.into(), since.into(), now.into()],
        ))
        .await?
        .rows_affected();
    if n > 0 {
        tx.execute_raw(statement(format!("SELECT pg_notify('{CHANNEL}', '')"), []))
            .await?;
    }
    Ok(n)
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub id: i64,
    pub endpoint_id: Uuid,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub response_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

fn delivery(row: &QueryResult) -> Result<DeliveryRow, DbErr> {
    Ok(DeliveryRow {
        id: row.try_get("", "id")?,
        endpoint_id: row.try_get("", "endpoint_id")?,
        event_id: row.try_get("", "event_id")?,
        event_type: row.try_get("", "event_type")?,
        status: row.try_get("", "status")?,
        attempts: row.try_get("", "attempts")?,
        response_status: row.try_get("", "response_status")?,
        last_error: row.try_get("", "last_error")?,
        created_at: row.try_get("", "created_at")?,
        next_attempt_at: row.try_get("", "next_attempt_at")?,
        finished_at: row.try_get("", "finished_at")?,
    })
}

const DELIVERY_COLUMNS: &str = "id, endpoint_id, event_id, event_type, status, attempts, \
     response_status, last_error, created_at, next_attempt_at, finished_at";

/// Up to `limit` of an endpoint's deliveries older than `before` (id),
/// newest first, optionally in one status.
pub async fn deliveries_page(
    tx: &DatabaseTransaction,
    endpoint: Uuid,
    status: Option<&str>,
    before: Option<i64>,
    limit: u64,
) -> Result<Vec<DeliveryRow>, DbErr> {
    tx.query_all_raw(statement(
        format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE endpoint_id = $1 AND ($2::text IS NULL OR status = $2) \
               AND ($3::bigint IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4"
        ),
        [
            endpoint.into(),
            status.map(str::to_owned).into(),
            before.into(),
            (limit as i64).into(),
        ],
    ))
    .await?
    .iter()
    .map(delivery)
    .collect()
}

pub async fn find_delivery(
    tx: &DatabaseTransaction,
    endpoint: Uuid,
    id: i64,
) -> Result<Option<DeliveryRow>, DbErr> {
    tx.query_one_raw(statement(
        format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1 AND id = $2"
        ),
        [endpoint.into(), id.into()],
    ))
    .await?
    .as_ref()
    .map(delivery)
    .transpose()
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub ok: bool,
    pub response_status: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

pub async fn attempts(tx: &DatabaseTransaction, delivery: i64) -> Result<Vec<AttemptRow>, DbErr> {
    tx.query_all_raw(statement(
        "SELECT attempt, attempted_at, ok, response_status, latency_ms, error, response_excerpt \
         FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt",
        [delivery.into()],
    ))
    .await?
    .iter()
    .map(attempt)
    .collect()
}

/// An attempt row (`attempt, attempted_at, ok, response_status,
/// latency_ms, error, response_excerpt`).
pub(crate) fn attempt(row: &QueryResult) -> Result<AttemptRow, DbErr> {
    Ok(AttemptRow {
        attempt: row.try_get("", "attempt")?,
        attempted_at: row.try_get("", "attempted_at")?,
        ok: row.try_get("", "ok")?,
        response_status: row.try_get("", "response_status")?,
        latency_ms: row.try_get("", "latency_ms")?,
        error: row.try_get("", "error")?,
        response_excerpt: row.try_get("", "response_excerpt")?,
    })
}

/// A delivery a dispatcher claimed: it holds the lease until `claims`
/// changes.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub endpoint_id: Uuid,
    pub event_id: String,
    /// Attempts made before this one (all time; numbers the attempt log).
    pub attempts: i32,
    /// Of those, since the schedule last (re)started (`recover`).
    pub scheduled_attempts: i32,
    pub schedule_start: DateTime<Utc>,
    pub claims: i32,
    pub url: String,
    pub secret: Vec<u8>,
    pub previous_secret: Option<Vec<u8>>,
    pub previous_until: Option<DateTime<Utc>>,
    pub body: String,
}

fn claimed(row: &PgRow) -> Result<Claimed, sqlx::Error> {
    let attempts: i32 = row.try_get("attempts")?;
    let retry_base: i32 = row.try_get("retry_base")?;
    Ok(Claimed {
        id: row.try_get("id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        event_id: row.try_get("event_id")?,
        attempts,
        scheduled_attempts: attempts - retry_base,
        schedule_start: row.try_get("schedule_start")?,
        claims: row.try_get("claims")?,
        url: row.try_get("url")?,
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_until: row.try_get("previous_until")?,
        body: row.try_get("body")?,
    })
}

/// Claims up to `max` due deliveries, leased for `lease_ms`.
pub async fn claim(
    pool: &PgPool,
    now: DateTime<Utc>,
    lease_ms: i64,
    max: i32,
    dispatcher: &str,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query("SELECT * FROM tenlyr_claim_deliveries($1, $2, $3, $4)")
        .bind(now)
        .bind(lease_ms)
        .bind(max)
        .bind(dispatcher)
        .fetch_all(pool)
        .await?
        .iter()
        .map(claimed)
        .collect()
}

/// Claims the half-open probe of every endpoint whose breaker is due one.
pub async fn claim_probes(
    pool: &PgPool,
    now: DateTime<Utc>,
    lease_ms: i64,
    dispatcher: &str,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query("SELECT * FROM tenlyr_claim_probes($1, $2, $3)")
        .bind(now)
        .bind(lease_ms)
        .bind(dispatcher)
        .fetch_all(pool)
        .await?
        .iter()
        .map(claimed)
        .collect()
}

/// One attempt's outcome.
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: i64,
    pub claims: i32,
    pub ok: bool,
    /// The next attempt; `None` with `ok` false: the delivery failed.
    pub next_at: Option<DateTime<Utc>>,
    pub status: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
    pub excerpt: Option<String>,
}

/// Records attempts whose claim is still current, and disables the
/// endpoints among them that answered 410 (`gone`; their pending
/// deliveries fail), in one transaction: a 410'd delivery is never seen
/// failed while its endpoint still looks enabled. The ids it recorded.
pub async fn finish(
    pool: &PgPool,
    done: &[Finished],
    gone: &[Uuid],
    now: DateTime<Utc>,
) -> Result<Vec<i64>, sqlx::Error> {
    let ids: Vec<i64> = done.iter().map(|d| d.id).collect();
    let claims: Vec<i32> = done.iter().map(|d| d.claims).collect();
    let oks: Vec<bool> = done.iter().map(|d| d.ok).collect();
    let next: Vec<Option<DateTime<Utc>>> = done.iter().map(|d| d.next_at).collect();
    let statuses: Vec<Option<i32>> = done.iter().map(|d| d.status).collect();
    let latencies: Vec<i32> = done.iter().map(|d| d.latency_ms).collect();
    let errors: Vec<Option<&str>> = done.iter().map(|d| d.error.as_deref()).collect();
    let excerpts: Vec<Option<&str>> = done.iter().map(|d| d.excerpt.as_deref()).collect();
    let finish =
        sqlx::query_scalar("SELECT tenlyr_finish_deliveries($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(&ids)
            .bind(&claims)
            .bind(&oks)
            .bind(&next)
            .bind(&statuses)
            .bind(&latencies)
            .bind(&errors)
            .bind(&excerpts)
            .bind(now);
    if gone.is_empty() {
        return finish.fetch_all(pool).await;
    }
    let mut tx = pool.begin().await?;
    let recorded = finish.fetch_all(&mut *tx).await?;
    sqlx::query(
        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = 'gone', updated_at = $2 \
         WHERE id = ANY($1)",
    )
    .bind(gone)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'failed', finished_at = $2, leased_by = NULL, \
             last_error = 'the endpoint answered 410 Gone and was disabled' \
         WHERE endpoint_id = ANY($1) AND status = 'pending'",
    )
    .bind(gone)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(recorded)
}

/// Attempts and failures of each endpoint in its breaker's window (since
/// `window_start` or the breaker last closed, whichever is later), for the
/// closed breakers among `endpoints`.
pub async fn breaker_window(
    pool: &PgPool,
    endpoints: &[Uuid],
    window_start: DateTime<Utc>,
) -> Result<Vec<(Uuid, i64, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT e.id, count(a.*) AS n, count(a.*) FILTER (WHERE NOT a.ok) AS failed \
         FROM webhook_endpoints e JOIN webhook_attempts a ON a.endpoint_id = e.id \
         WHERE e.id = ANY($1) AND e.breaker_state = 'closed' \
           AND a.attempted_at >= GREATEST($2, e.breaker_since) \
         GROUP BY e.id",
    )
    .bind(endpoints)
    .bind(window_start)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("n")?, r.try_get("failed")?)))
        .collect()
}

/// Moves breakers: `open` until `until` (from closed, or a failed probe),
/// or `closed` (a probe succeeded).
pub async fn set_breakers(
    pool: &PgPool,
    open: &[Uuid],
    closed: &[Uuid],
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if !open.is_empty() {
        sqlx::query(
            "UPDATE webhook_endpoints SET breaker_state = 'open', breaker_until = $2 \
             WHERE id = ANY($1)",
        )
        .bind(open)
        .bind(until)
        .execute(pool)
        .await?;
    }
    if !closed.is_empty() {
        sqlx::query(
            "UPDATE webhook_endpoints SET breaker_state = 'closed', breaker_until = NULL, \
                 breaker_since = $2 WHERE id = ANY($1) AND breaker_state = 'half_open'",
        )
        .bind(closed)
        .bind(now)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// When the next pending delivery falls due (an idle dispatcher's sleep):
/// the earliest of each endpoint's first, read in order from
/// `webhook_deliveries_endpoint_due` (whose predicate spells `pending` so).
pub async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(c.next_attempt_at) FROM webhook_endpoints e CROSS JOIN LATERAL ( \
             SELECT d.next_attempt_at FROM webhook_deliveries d \
             WHERE d.endpoint_id = e.id AND d.status NOT IN ('delivered', 'failed') \
             ORDER BY d.next_attempt_at LIMIT 1) c",
    )
    .fetch_one(pool)
    .await
}

/// Deletes up to `chunk` events created before `before` whose deliveries
/// all finished, with those deliveries and attempts; how many.
pub async fn purge_events(
    pool: &PgPool,
    before: DateTime<Utc>,
    chunk: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM platform_events WHERE id = ANY(ARRAY( \
             SELECT ev.id FROM platform_events ev WHERE ev.created_at < $1 \
               AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d \
                               WHERE d.event_id = ev.id AND d.status = 'pending') \
             ORDER BY ev.created_at LIMIT $2))",
    )
    .bind(before)
    .bind(chunk)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Enabled endpoints by breaker state, and pending deliveries
/// (`/metrics`).
pub async fn breaker_states(pool: &PgPool) -> Result<(Vec<(String, i64)>, i64), sqlx::Error> {
    let states = sqlx::query_as(
        "SELECT breaker_state, count(*) FROM webhook_endpoints WHERE enabled \
         GROUP BY breaker_state ORDER BY breaker_state",
    )
    .fetch_all(pool)
    .await?;
    let pending =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(pool)
            .await?;
    Ok((states, pending))
}
