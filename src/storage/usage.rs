//! Usage events, idempotency keys and rollups.
//!
//! [`commit`] is the one write path: a group of events from any number of
//! requests and tenants goes into Postgres in one transaction that takes
//! the tenants' usage locks, checks idempotency keys and plan limits, COPYs
//! the events into their day partition and adds them to the hour/day/month
//! rollups. The lock is what makes limits and keys exact across replicas.
//! COPY and array binds (`UNNEST`) keep each step one statement, so this
//! module uses sqlx directly.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::domain::{
    tenant::PlanLimits,
    usage::{FUTURE_SKEW, Granularity, IDEMPOTENCY_RETENTION, Metric, NewEvent},
};

/// One event waiting to be committed.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub event: NewEvent,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub metric: Metric,
    pub value: f64,
    pub endpoint: Option<String>,
    pub status_code: Option<i32>,
    pub idempotency_key: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Accepted(StoredEvent),
    /// The idempotency key was seen before: the original event.
    Duplicate(StoredEvent),
    /// Counting the event would take the period's total over the limit.
    LimitExceeded {
        metric: Metric,
        limit: f64,
        total: f64,
    },
    /// The tenant was deleted between authentication and commit.
    TenantGone,
}

/// A month counter after a commit (for the live-counter mirror).
#[derive(Debug, Clone, PartialEq)]
pub struct MonthTotal {
    pub tenant_id: Uuid,
    pub period_start: DateTime<Utc>,
    pub metric: Metric,
    pub total: f64,
}

struct TenantRow {
    tz: Tz,
    limits: PlanLimits,
}

/// A month counter's key: tenant, period start, metric.
type MonthKey = (Uuid, DateTime<Utc>, Metric);

/// Commits `events` in one transaction; one outcome per event, in order.
///
/// The tenants' usage locks come first: while they are held no other
/// commit (of any replica) can count events of these tenants, so the month
/// totals and idempotency keys read next stay true until this commit ends.
pub async fn commit(
    pool: &PgPool,
    events: &[Pending],
) -> Result<(Vec<Outcome>, Vec<MonthTotal>), sqlx::Error> {
    let now = Utc::now();
    let mut tx = pool.begin_with(BEGIN_PLATFORM).await?;
    let mut ids: Vec<Uuid> = events.iter().map(|p| p.tenant_id).collect();
    ids.sort_unstable();
    ids.dedup();
    sqlx::query("SELECT tenlyr_lock_usage($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    let (tenants, mut months) = read_tenants(&mut tx, &ids, events).await?;
    let existing = existing_keys(&mut tx, events, now).await?;

    let mut outcomes = Vec::with_capacity(events.len());
    let mut accepted: Vec<(&Pending, Tz)> = Vec::with_capacity(events.len());
    let mut seen: HashMap<(Uuid, &str), StoredEvent> = HashMap::new();
    for p in events {
        let Some(t) = tenants.get(&p.tenant_id) else {
            outcomes.push(Outcome::TenantGone);
            continue;
        };
        if let Some(key) = p.event.idempotency_key.as_deref() {
            let original = existing
                .get(&(p.tenant_id, key.to_owned()))
                .or_else(|| seen.get(&(p.tenant_id, key)));
            if let Some(original) = original {
                outcomes.push(Outcome::Duplicate(original.clone()));
                continue;
            }
        }
        let start = Granularity::Month.bucket(p.event.occurred_at, t.tz);
        let metric = p.event.metric;
        let total = months.entry((p.tenant_id, start, metric)).or_default();
        if let Some(limit) = metric.limit(&t.limits)
            && *total + p.event.value > limit
        {
            outcomes.push(Outcome::LimitExceeded {
                metric,
                limit,
                total: *total,
            });
            continue;
        }
        *total += p.event.value;
        let stored = stored(p);
        if let Some(key) = p.event.idempotency_key.as_deref() {
            seen.insert((p.tenant_id, key), stored.clone());
        }
        accepted.push((p, t.tz));
        outcomes.push(Outcome::Accepted(stored));
    }

    let mut totals = Vec::new();
    if !accepted.is_empty() {
        write_events(&mut tx, &accepted).await?;
        totals = add_to_rollups(&mut tx, &accepted).await?;
    }
    tx.commit().await?;
    Ok((outcomes, totals))
}

fn stored(p: &Pending) -> StoredEvent {
    StoredEvent {
        id: p.id,
        tenant_id: p.tenant_id,
        metric: p.event.metric,
        value: p.event.value,
        endpoint: p.event.endpoint.clone(),
        status_code: p.event.status_code,
        idempotency_key: p.event.idempotency_key.clone(),
        occurred_at: p.event.occurred_at,
    }
}

/// Opens a platform-scoped transaction in one round trip.
const BEGIN_PLATFORM: &str = "BEGIN; SELECT set_config('app.tenant_id', '', true), set_config('app.scope', 'platform', true)";

/// A transaction that sees every tenant (ingestion is platform work; the
/// tenant came from the authenticated key).
pub async fn begin_platform(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with(BEGIN_PLATFORM).await
}

/// A transaction that sees `tenant`'s rows only.
pub async fn begin(
    pool: &PgPool,
    tenant: Uuid,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.tenant_id', $1, true), set_config('app.scope', '', true)")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The tenants of the batch with their time zones and limits (read under
/// the usage lock, so a plan change applies to the next commit), and the
/// month counters the events can fall into.
async fn read_tenants(
    tx: &mut Transaction<'static, Postgres>,
    ids: &[Uuid],
    events: &[Pending],
) -> Result<(HashMap<Uuid, TenantRow>, BTreeMap<MonthKey, f64>), sqlx::Error> {
    let earliest = events.iter().map(|p| p.event.occurred_at).min();
    let latest = events.iter().map(|p| p.event.occurred_at).max();
    // A month starts at most 32 days before any instant inside it.
    let rows = sqlx::query(
        "SELECT t.id, t.plan, t.time_zone, t.api_call_limit, t.storage_gb_limit, t.seats_limit, \
                r.bucket_start, r.metric, r.total \
         FROM tenants t LEFT JOIN usage_rollups r \
           ON r.tenant_id = t.id AND r.granularity = 'month' \
          AND r.bucket_start > $2 - interval '32 days' AND r.bucket_start <= $3 \
         WHERE t.id = ANY($1)",
    )
    .bind(ids)
    .bind(earliest)
    .bind(latest)
    .fetch_all(&mut **tx)
    .await?;
    let mut tenants = HashMap::with_capacity(ids.len());
    let mut months = BTreeMap::new();
    for row in rows {
        let id: Uuid = row.try_get("id")?;
        if let std::collections::hash_map::Entry::Vacant(slot) = tenants.entry(id) {
            let plan: String = row.try_get("plan")?;
            let tz: String = row.try_get("time_zone")?;
            let limits = PlanLimits::effective(
                &plan,
                PlanLimits {
                    api_calls: row.try_get("api_call_limit")?,
                    storage_gb: row.try_get("storage_gb_limit")?,
                    seats: row.try_get("seats_limit")?,
                },
            );
            slot.insert(TenantRow {
                tz: tz.parse().unwrap_or(Tz::UTC),
                limits,
            });
        }
        let metric: Option<String> = row.try_get("metric")?;
        if let Some(metric) = metric.as_deref().and_then(Metric::parse) {
            months.insert(
                (id, row.try_get("bucket_start")?, metric),
                row.try_get("total")?,
            );
        }
    }
    Ok((tenants, months))
}

/// The events already stored under the batch's idempotency keys. A key is
/// remembered while its event's timestamp is within
/// [`IDEMPOTENCY_RETENTION`]; only the partitions of that window (three
/// days, not the week created ahead) are read.
async fn existing_keys(
    tx: &mut Transaction<'static, Postgres>,
    events: &[Pending],
    now: DateTime<Utc>,
) -> Result<HashMap<(Uuid, String), StoredEvent>, sqlx::Error> {
    let (tenants, keys): (Vec<Uuid>, Vec<&str>) = events
        .iter()
        .filter_map(|p| Some((p.tenant_id, p.event.idempotency_key.as_deref()?)))
        .unzip();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    // LATERAL … LIMIT 1: one index probe per key, whatever the statistics.
    let rows = sqlx::query(
        "SELECT e.* FROM UNNEST($1::uuid[], $2::text[]) AS k(tenant_id, key) \
         CROSS JOIN LATERAL ( \
           SELECT id, tenant_id, metric, value, endpoint, status_code, idempotency_key, occurred_at \
           FROM usage_events \
           WHERE tenant_id = k.tenant_id AND idempotency_key = k.key \
             AND occurred_at >= $3 AND occurred_at <= $4 \
           LIMIT 1) e",
    )
    .bind(&tenants)
    .bind(&keys)
    .bind(now - IDEMPOTENCY_RETENTION)
    // The upper bound keeps the partitions created ahead out of the probe.
    .bind(now + FUTURE_SKEW)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let event = event_row(&row)?;
        if let Some(key) = event.idempotency_key.clone() {
            out.insert((event.tenant_id, key), event);
        }
    }
    Ok(out)
}

fn event_row(row: &sqlx::postgres::PgRow) -> Result<StoredEvent, sqlx::Error> {
    let metric: String = row.try_get("metric")?;
    Ok(StoredEvent {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        metric: Metric::parse(&metric).unwrap_or(Metric::ApiCall),
        value: row.try_get("value")?,
        endpoint: row.try_get("endpoint")?,
        status_code: row.try_get("status_code")?,
        idempotency_key: row.try_get("idempotency_key")?,
        occurred_at: row.try_get("occurred_at")?,
    })
}

/// The columns [`write_events`] writes, in order.
pub const COPY_COLUMNS: &str =
    "(id, tenant_id, metric, value, endpoint, status_code, idempotency_key, occurred_at)";

/// The day partition an event is stored in (named as
/// `tenlyr_ensure_usage_partitions` names them).
pub fn partition_of(at: DateTime<Utc>) -> String {
    format!("usage_events_{}", at.format("%Y%m%d"))
}

/// Below this many rows an `INSERT … SELECT FROM UNNEST` (one round trip,
/// a prepared statement) costs less than `COPY` (two round trips and its
/// set-up); above it COPY's bulk insert wins.
const COPY_FROM_ROWS: usize = 100;

/// Writes the accepted events straight into their day partitions: binary
/// COPY for big groups, a multi-row insert for small ones.
async fn write_events(
    tx: &mut Transaction<'static, Postgres>,
    accepted: &[(&Pending, Tz)],
) -> Result<(), sqlx::Error> {
    let mut by_day: BTreeMap<NaiveDate, Vec<&Pending>> = BTreeMap::new();
    for (p, _) in accepted {
        by_day
            .entry(p.event.occurred_at.date_naive())
            .or_default()
            .push(p);
    }
    for rows in by_day.values() {
        let partition = partition_of(rows[0].event.occurred_at);
        if rows.len() < COPY_FROM_ROWS {
            insert_rows(tx, &partition, rows).await?;
            continue;
        }
        let statement = format!("COPY {partition} {COPY_COLUMNS} FROM STDIN (FORMAT binary)");
        let mut copy = tx.copy_in_raw(&statement).await?;
        copy.send(copy_binary(rows.iter().map(|p| stored(p))))
            .await?;
        copy.finish().await?;
    }
    Ok(())
}

async fn insert_rows(
    tx: &mut Transaction<'static, Postgres>,
    partition: &str,
    rows: &[&Pending],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = rows.iter().map(|p| p.id).collect();
    let tenants: Vec<Uuid> = rows.iter().map(|p| p.tenant_id).collect();
    let metrics: Vec<&str> = rows.iter().map(|p| p.event.metric.as_str()).collect();
    let values: Vec<f64> = rows.iter().map(|p| p.event.value).collect();
    let endpoints: Vec<Option<&str>> = rows.iter().map(|p| p.event.endpoint.as_deref()).collect();
    let codes: Vec<Option<i32>> = rows.iter().map(|p| p.event.status_code).collect();
    let keys: Vec<Option<&str>> = rows
        .iter()
        .map(|p| p.event.idempotency_key.as_deref())
        .collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|p| p.event.occurred_at).collect();
    // The partition name is ours (`partition_of`), not input.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {partition} {COPY_COLUMNS} SELECT * FROM UNNEST($1::uuid[], $2::uuid[], \
         $3::text[], $4::float8[], $5::text[], $6::int4[], $7::text[], $8::timestamptz[])"
    )))
    .bind(&ids)
    .bind(&tenants)
    .bind(&metrics)
    .bind(&values)
    .bind(&endpoints)
    .bind(&codes)
    .bind(&keys)
    .bind(&times)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Events in PostgreSQL's binary COPY format, columns as in
/// [`COPY_COLUMNS`].
pub fn copy_binary(events: impl Iterator<Item = StoredEvent>) -> Vec<u8> {
    fn text(buf: &mut Vec<u8>, value: Option<&str>) {
        match value {
            Some(v) => {
                buf.extend_from_slice(&(v.len() as i32).to_be_bytes());
                buf.extend_from_slice(v.as_bytes());
            }
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    // Microseconds between the Unix and the PostgreSQL epoch (2000-01-01).
    const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
    let mut buf = Vec::with_capacity(19 + 128 * events.size_hint().0 + 2);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension
    for e in events {
        buf.extend_from_slice(&8i16.to_be_bytes());
        for uuid in [e.id, e.tenant_id] {
            buf.extend_from_slice(&16i32.to_be_bytes());
            buf.extend_from_slice(uuid.as_bytes());
        }
        text(&mut buf, Some(e.metric.as_str()));
        buf.extend_from_slice(&8i32.to_be_bytes());
        buf.extend_from_slice(&e.value.to_be_bytes());
        text(&mut buf, e.endpoint.as_deref());
        match e.status_code {
            Some(code) => {
                buf.extend_from_slice(&4i32.to_be_bytes());
                buf.extend_from_slice(&code.to_be_bytes());
            }
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        text(&mut buf, e.idempotency_key.as_deref());
        buf.extend_from_slice(&8i32.to_be_bytes());
        buf.extend_from_slice(&(e.occurred_at.timestamp_micros() - PG_EPOCH_MICROS).to_be_bytes());
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    buf
}

/// A rollup row's key: tenant, granularity, bucket start, metric.
type BucketKey = (Uuid, Granularity, DateTime<Utc>, Metric);

/// Adds the accepted events to their hour, day and month buckets; returns
/// the month totals after the addition.
async fn add_to_rollups(
    tx: &mut Transaction<'static, Postgres>,
    accepted: &[(&Pending, Tz)],
) -> Result<Vec<MonthTotal>, sqlx::Error> {
    let mut sums: BTreeMap<BucketKey, (f64, i64)> = BTreeMap::new();
    for (p, tz) in accepted {
        for g in Granularity::ALL {
            let bucket = g.bucket(p.event.occurred_at, *tz);
            let entry = sums
                .entry((p.tenant_id, g, bucket, p.event.metric))
                .or_default();
            entry.0 += p.event.value;
            entry.1 += 1;
        }
    }
    let n = sums.len();
    let (mut tenants, mut grans, mut starts, mut metrics, mut totals, mut counts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for ((tenant, g, start, metric), (total, count)) in &sums {
        tenants.push(*tenant);
        grans.push(g.as_str());
        starts.push(*start);
        metrics.push(metric.as_str());
        totals.push(*total);
        counts.push(*count);
    }
    let rows = sqlx::query(
        "INSERT INTO usage_rollups AS r (tenant_id, granularity, bucket_start, metric, total, events) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::timestamptz[], $4::text[], $5::float8[], $6::int8[]) \
         ON CONFLICT (tenant_id, granularity, bucket_start, metric) DO UPDATE \
         SET total = r.total + EXCLUDED.total, events = r.events + EXCLUDED.events \
         RETURNING tenant_id, granularity, bucket_start, metric, total",
    )
    .bind(&tenants)
    .bind(&grans)
    .bind(&starts)
    .bind(&metrics)
    .bind(&totals)
    .bind(&counts)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::new();
    for row in rows {
        let g: String = row.try_get("granularity")?;
        let metric: String = row.try_get("metric")?;
        if g == "month"
            && let Some(metric) = Metric::parse(&metric)
        {
            out.push(MonthTotal {
                tenant_id: row.try_get("tenant_id")?,
                period_start: row.try_get("bucket_start")?,
                metric,
                total: row.try_get("total")?,
            });
        }
    }
    Ok(out)
}

/// Whether a commit failed in a way that a retry of the same events can
/// fix: a deadlock, a serialization failure, or a day partition that does
/// not exist yet.
pub fn retryable(err: &sqlx::Error) -> Retry {
    let Some(db) = err.as_database_error() else {
        return Retry::No;
    };
    match db.code().as_deref() {
        Some("40P01" | "40001") => Retry::Again,
        // COPY into usage_events_YYYYMMDD: "relation … does not exist"
        Some("42P01") if db.message().contains("usage_events_") => Retry::AfterPartitions,
        _ => Retry::No,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    No,
    Again,
    AfterPartitions,
}

/// Creates the day partitions from `first` to `last` (inclusive).
pub async fn ensure_partitions(
    pool: &PgPool,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT tenlyr_ensure_usage_partitions($1, $2)")
        .bind(first)
        .bind(last)
        .fetch_one(pool)
        .await
}

/// Drops the day partitions before `before`; returns their names.
pub async fn drop_partitions(pool: &PgPool, before: NaiveDate) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT tenlyr_drop_usage_partitions($1)")
        .bind(before)
        .fetch_all(pool)
        .await
}

/// The month totals of `tenant` for the period starting at `period_start`.
pub async fn month_totals(
    pool: &PgPool,
    tenant: Uuid,
    period_start: DateTime<Utc>,
) -> Result<HashMap<Metric, f64>, sqlx::Error> {
    let mut tx = begin(pool, tenant).await?;
    let rows = sqlx::query(
        "SELECT metric, total FROM usage_rollups \
         WHERE tenant_id = $1 AND granularity = 'month' AND bucket_start = $2",
    )
    .bind(tenant)
    .bind(period_start)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut out = HashMap::new();
    for row in rows {
        let metric: String = row.try_get("metric")?;
        if let Some(metric) = Metric::parse(&metric) {
            out.insert(metric, row.try_get("total")?);
        }
    }
    Ok(out)
}

/// Month totals of several tenants, each for its own current period.
pub async fn month_totals_many(
    pool: &PgPool,
    periods: &[(Uuid, DateTime<Utc>)],
) -> Result<HashMap<(Uuid, Metric), f64>, sqlx::Error> {
    let (tenants, starts): (Vec<Uuid>, Vec<DateTime<Utc>>) = periods.iter().copied().unzip();
    let mut tx = begin_platform(pool).await?;
    let rows = sqlx::query(
        "SELECT r.tenant_id, r.metric, r.total FROM usage_rollups r \
         JOIN UNNEST($1::uuid[], $2::timestamptz[]) AS u(t, s) \
         ON r.tenant_id = u.t AND r.granularity = 'month' AND r.bucket_start = u.s",
    )
    .bind(&tenants)
    .bind(&starts)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut out = HashMap::new();
    for row in rows {
        let metric: String = row.try_get("metric")?;
        if let Some(metric) = Metric::parse(&metric) {
            out.insert((row.try_get("tenant_id")?, metric), row.try_get("total")?);
        }
    }
    Ok(out)
}

/// One rollup bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    pub granularity: Granularity,
    pub metric: Metric,
    pub bucket_start: DateTime<Utc>,
    pub total: f64,
    pub events: i64,
}

/// The tenant's buckets of `granularity` starting in `[from, to)`, oldest
/// first.
pub async fn rollups(
    pool: &PgPool,
    tenant: Uuid,
    granularity: Granularity,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Rollup>, sqlx::Error> {
    let mut tx = begin(pool, tenant).await?;
    let rows = sqlx::query(
        "SELECT metric, bucket_start, total, events FROM usage_rollups \
         WHERE tenant_id = $1 AND granularity = $2 AND bucket_start >= $3 AND bucket_start < $4 \
           AND events > 0 ORDER BY bucket_start, metric",
    )
    .bind(tenant)
    .bind(granularity.as_str())
    .bind(from)
    .bind(to)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.into_iter()
        .filter_map(|row| {
            let metric: String = row.try_get("metric").ok()?;
            Some(Ok(Rollup {
                granularity,
                metric: Metric::parse(&metric)?,
                bucket_start: row.try_get("bucket_start").ok()?,
                total: row.try_get("total").ok()?,
                events: row.try_get("events").ok()?,
            }))
        })
        .collect()
}

/// A page of the tenant's events, newest first, after the `(occurred_at,
/// id)` position `after`.
pub async fn events_page(
    pool: &PgPool,
    tenant: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let mut tx = begin(pool, tenant).await?;
    let (at, id) = after.unzip();
    let rows = sqlx::query(
        "SELECT id, tenant_id, metric, value, endpoint, status_code, idempotency_key, occurred_at \
         FROM usage_events WHERE tenant_id = $1 \
           AND ($2::timestamptz IS NULL OR (occurred_at, id) < ($2, $3)) \
         ORDER BY occurred_at DESC, id DESC LIMIT $4",
    )
    .bind(tenant)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter().map(event_row).collect()
}
