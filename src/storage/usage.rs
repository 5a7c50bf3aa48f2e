//! Usage events, idempotency keys and rollups.
//!
//! [`commit`] is the one write path: a group of events from any number of
//! requests and tenants goes into Postgres in one transaction that checks
//! idempotency keys, checks plan limits under the month counter's row lock,
//! inserts the events and adds them to the hour/day/month rollups. The row
//! lock is what makes limits exact across replicas. Array binds (`UNNEST`)
//! keep each step one statement, so this module uses sqlx directly.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::domain::{
    tenant::PlanLimits,
    usage::{Granularity, Metric, NewEvent},
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

/// Commits `events` in one transaction; one outcome per event, in order.
pub async fn commit(
    pool: &PgPool,
    events: &[Pending],
) -> Result<(Vec<Outcome>, Vec<MonthTotal>), sqlx::Error> {
    let mut tx = begin_platform(pool).await?;
    let tenants = lock_tenants(&mut tx, events).await?;

    // Month counters, locked in a fixed order (no deadlocks between
    // replicas that commit overlapping tenants).
    let mut months: BTreeMap<(Uuid, DateTime<Utc>, Metric), f64> = BTreeMap::new();
    for p in events {
        if let Some(t) = tenants.get(&p.tenant_id) {
            let start = Granularity::Month.bucket(p.event.occurred_at, t.tz);
            months.insert((p.tenant_id, start, p.event.metric), 0.0);
        }
    }
    lock_months(&mut tx, &mut months).await?;
    // Read after the month locks: a commit of the same tenant and metric
    // that held them has committed its keys by now, so they are seen here.
    let existing = existing_keys(&mut tx, events).await?;

    let mut outcomes = Vec::with_capacity(events.len());
    let mut accepted: Vec<(&Pending, Tz)> = Vec::with_capacity(events.len());
    let mut seen: HashMap<(Uuid, &str), StoredEvent> = HashMap::new();
    for p in events {
        let Some(t) = tenants.get(&p.tenant_id) else {
            outcomes.push(Outcome::TenantGone);
            continue;
        };
        if let Some(key) = p.event.idempotency_key.as_deref() {
            if let Some(original) = existing.get(&(p.tenant_id, key.to_owned())) {
                outcomes.push(Outcome::Duplicate(original.clone()));
                continue;
            }
            if let Some(original) = seen.get(&(p.tenant_id, key)) {
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
        insert_events(&mut tx, &accepted).await?;
        insert_keys(&mut tx, &accepted).await?;
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

/// A transaction that sees every tenant (ingestion is platform work; the
/// tenant came from the authenticated key).
pub async fn begin_platform(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    begin(pool, None).await
}

/// A transaction that sees `tenant`'s rows only.
pub async fn begin(
    pool: &PgPool,
    tenant: Option<Uuid>,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (tenant, scope) = match tenant {
        Some(id) => (id.to_string(), ""),
        None => (String::new(), "platform"),
    };
    sqlx::query("SELECT set_config('app.tenant_id', $1, true), set_config('app.scope', $2, true)")
        .bind(tenant)
        .bind(scope)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The tenants of the batch, share-locked against deletion until commit;
/// their limits are read here so a plan change applies to the next commit.
async fn lock_tenants(
    tx: &mut Transaction<'static, Postgres>,
    events: &[Pending],
) -> Result<HashMap<Uuid, TenantRow>, sqlx::Error> {
    let mut ids: Vec<Uuid> = events.iter().map(|p| p.tenant_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = sqlx::query(
        "SELECT id, plan, time_zone, api_call_limit, storage_gb_limit, seats_limit \
         FROM tenants WHERE id = ANY($1) ORDER BY id FOR KEY SHARE",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
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
        out.insert(
            row.try_get("id")?,
            TenantRow {
                tz: tz.parse().unwrap_or(Tz::UTC),
                limits,
            },
        );
    }
    Ok(out)
}

async fn existing_keys(
    tx: &mut Transaction<'static, Postgres>,
    events: &[Pending],
) -> Result<HashMap<(Uuid, String), StoredEvent>, sqlx::Error> {
    let (tenants, keys): (Vec<Uuid>, Vec<String>) = events
        .iter()
        .filter_map(|p| Some((p.tenant_id, p.event.idempotency_key.clone()?)))
        .unzip();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(
        "SELECT i.tenant_id, i.key, i.event_id, i.metric, i.value, i.endpoint, i.status_code, i.occurred_at \
         FROM usage_idempotency i JOIN UNNEST($1::uuid[], $2::text[]) AS k(tenant_id, key) \
         ON i.tenant_id = k.tenant_id AND i.key = k.key",
    )
    .bind(&tenants)
    .bind(&keys)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let key: String = row.try_get("key")?;
        let metric: String = row.try_get("metric")?;
        let event = StoredEvent {
            id: row.try_get("event_id")?,
            tenant_id: row.try_get("tenant_id")?,
            metric: Metric::parse(&metric).unwrap_or(Metric::ApiCall),
            value: row.try_get("value")?,
            endpoint: row.try_get("endpoint")?,
            status_code: row.try_get("status_code")?,
            idempotency_key: Some(key.clone()),
            occurred_at: row.try_get("occurred_at")?,
        };
        out.insert((event.tenant_id, key), event);
    }
    Ok(out)
}

/// Creates missing month counters and locks all of them, in key order;
/// fills in their current totals.
async fn lock_months(
    tx: &mut Transaction<'static, Postgres>,
    months: &mut BTreeMap<(Uuid, DateTime<Utc>, Metric), f64>,
) -> Result<(), sqlx::Error> {
    let mut tenants = Vec::with_capacity(months.len());
    let mut starts = Vec::with_capacity(months.len());
    let mut metrics = Vec::with_capacity(months.len());
    for (tenant, start, metric) in months.keys() {
        tenants.push(*tenant);
        starts.push(*start);
        metrics.push(metric.as_str());
    }
    if tenants.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO usage_rollups (tenant_id, granularity, bucket_start, metric) \
         SELECT t, 'month', s, m FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[]) AS u(t, s, m) \
         ORDER BY t, s, m ON CONFLICT DO NOTHING",
    )
    .bind(&tenants)
    .bind(&starts)
    .bind(&metrics)
    .execute(&mut **tx)
    .await?;
    let rows = sqlx::query(
        "SELECT r.tenant_id, r.bucket_start, r.metric, r.total FROM usage_rollups r \
         JOIN UNNEST($1::uuid[], $2::timestamptz[], $3::text[]) AS u(t, s, m) \
         ON r.tenant_id = u.t AND r.granularity = 'month' AND r.bucket_start = u.s AND r.metric = u.m \
         ORDER BY r.tenant_id, r.bucket_start, r.metric FOR UPDATE OF r",
    )
    .bind(&tenants)
    .bind(&starts)
    .bind(&metrics)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        let metric: String = row.try_get("metric")?;
        if let Some(metric) = Metric::parse(&metric) {
            months.insert(
                (
                    row.try_get("tenant_id")?,
                    row.try_get("bucket_start")?,
                    metric,
                ),
                row.try_get("total")?,
            );
        }
    }
    Ok(())
}

async fn insert_events(
    tx: &mut Transaction<'static, Postgres>,
    accepted: &[(&Pending, Tz)],
) -> Result<(), sqlx::Error> {
    let n = accepted.len();
    let (mut ids, mut tenants, mut metrics, mut values) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut endpoints, mut codes, mut keys, mut times) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (p, _) in accepted {
        ids.push(p.id);
        tenants.push(p.tenant_id);
        metrics.push(p.event.metric.as_str());
        values.push(p.event.value);
        endpoints.push(p.event.endpoint.as_deref());
        codes.push(p.event.status_code);
        keys.push(p.event.idempotency_key.as_deref());
        times.push(p.event.occurred_at);
    }
    sqlx::query(
        "INSERT INTO usage_events (id, tenant_id, metric, value, endpoint, status_code, idempotency_key, occurred_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::float8[], $5::text[], $6::int4[], $7::text[], $8::timestamptz[])",
    )
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

/// Remembers the idempotency keys of accepted events, in key order (so two
/// commits never wait on each other's keys crosswise). A key committed
/// meanwhile by a commit of another metric makes this fail with a unique
/// violation; the caller retries and then sees the key as a duplicate.
async fn insert_keys(
    tx: &mut Transaction<'static, Postgres>,
    accepted: &[(&Pending, Tz)],
) -> Result<(), sqlx::Error> {
    let mut keyed: Vec<&Pending> = accepted
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| p.event.idempotency_key.is_some())
        .collect();
    keyed.sort_by(|a, b| {
        (a.tenant_id, &a.event.idempotency_key).cmp(&(b.tenant_id, &b.event.idempotency_key))
    });
    if keyed.is_empty() {
        return Ok(());
    }
    let tenants: Vec<Uuid> = keyed.iter().map(|p| p.tenant_id).collect();
    let keys: Vec<&str> = keyed
        .iter()
        .filter_map(|p| p.event.idempotency_key.as_deref())
        .collect();
    let ids: Vec<Uuid> = keyed.iter().map(|p| p.id).collect();
    let metrics: Vec<&str> = keyed.iter().map(|p| p.event.metric.as_str()).collect();
    let values: Vec<f64> = keyed.iter().map(|p| p.event.value).collect();
    let endpoints: Vec<Option<&str>> = keyed.iter().map(|p| p.event.endpoint.as_deref()).collect();
    let codes: Vec<Option<i32>> = keyed.iter().map(|p| p.event.status_code).collect();
    let times: Vec<DateTime<Utc>> = keyed.iter().map(|p| p.event.occurred_at).collect();
    sqlx::query(
        "INSERT INTO usage_idempotency (tenant_id, key, event_id, metric, value, endpoint, status_code, occurred_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::float8[], $6::text[], $7::int4[], $8::timestamptz[])",
    )
    .bind(&tenants)
    .bind(&keys)
    .bind(&ids)
    .bind(&metrics)
    .bind(&values)
    .bind(&endpoints)
    .bind(&codes)
    .bind(&times)
    .execute(&mut **tx)
    .await?;
    Ok(())
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
/// fix: a deadlock, a serialization failure, an idempotency key committed
/// concurrently, or a day partition that does not exist yet.
pub fn retryable(err: &sqlx::Error) -> Retry {
    let Some(db) = err.as_database_error() else {
        return Retry::No;
    };
    match db.code().as_deref() {
        Some("40P01" | "40001" | "23505") => Retry::Again,
        // "no partition of relation … found for row"
        Some("23514") if db.message().contains("no partition") => Retry::AfterPartitions,
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

/// Forgets idempotency keys older than `before`.
pub async fn prune_keys(pool: &PgPool, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let mut tx = begin_platform(pool).await?;
    let done = sqlx::query("DELETE FROM usage_idempotency WHERE created_at < $1")
        .bind(before)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// The month totals of `tenant` for the period starting at `period_start`.
pub async fn month_totals(
    pool: &PgPool,
    tenant: Uuid,
    period_start: DateTime<Utc>,
) -> Result<HashMap<Metric, f64>, sqlx::Error> {
    let mut tx = begin(pool, Some(tenant)).await?;
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
    let mut tx = begin(pool, Some(tenant)).await?;
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
    let mut tx = begin(pool, Some(tenant)).await?;
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
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let metric: String = row.try_get("metric")?;
        out.push(StoredEvent {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            metric: Metric::parse(&metric).unwrap_or(Metric::ApiCall),
            value: row.try_get("value")?,
            endpoint: row.try_get("endpoint")?,
            status_code: row.try_get("status_code")?,
            idempotency_key: row.try_get("idempotency_key")?,
            occurred_at: row.try_get("occurred_at")?,
        });
    }
    Ok(out)
}
