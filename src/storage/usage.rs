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
    health,
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

/// What a commit read of a tenant: kept by ingestion so that the next
/// commit of its events can be decided before it starts ([`commit_small`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantSnapshot {
    time_zone: String,
    plan: String,
    /// The tenant's own limits (enterprise), as stored.
    own: PlanLimits,
    tz: Tz,
    /// The limits in force.
    limits: PlanLimits,
}

impl TenantSnapshot {
    fn new(time_zone: String, plan: String, own: PlanLimits) -> Self {
        Self {
            tz: time_zone.parse().unwrap_or(Tz::UTC),
            limits: PlanLimits::effective(&plan, own),
            time_zone,
            plan,
            own,
        }
    }
}

/// The tenants a commit read, by id.
pub type Tenants = HashMap<Uuid, TenantSnapshot>;

/// What [`commit`] and [`commit_small`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// One per event, in order.
    pub outcomes: Vec<Outcome>,
    /// The month totals after the commit (for the live counters).
    pub totals: Vec<MonthTotal>,
    /// The tenants as read under their usage locks.
    pub tenants: Tenants,
}

/// A month counter's key: tenant, period start, metric.
type MonthKey = (Uuid, DateTime<Utc>, Metric);

/// Commits `events` in one transaction; one outcome per event, in order.
///
/// The tenants' usage locks come first: while they are held no other
/// commit (of any replica) can count events of these tenants, so the month
/// totals and idempotency keys read next stay true until this commit ends.
pub async fn commit(pool: &PgPool, events: &[Pending]) -> Result<Committed, sqlx::Error> {
    let now = Utc::now();
    let mut tx = begin_platform(pool).await?;
    let mut ids: Vec<Uuid> = events.iter().map(|p| p.tenant_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let (tenants, mut months) = lock_and_read_tenants(&mut tx, &ids, events).await?;
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
        totals = write_events(&mut tx, &accepted).await?;
    }
    tx.commit().await?;
    Ok(Committed {
        outcomes,
        totals,
        tenants,
    })
}

/// Commits a small group of events in one call (`tenlyr_ingest`), when
/// the outcome can be known beforehand: every tenant is in `known` and
/// unchanged, no idempotency key repeats (in the group or in the stored
/// events) and every month total stays within its limit, so every event is
/// accepted. `None`: nothing was written, and [`commit`] must decide (also
/// when the group is too big or repeats a key itself).
pub async fn commit_small(
    pool: &PgPool,
    events: &[Pending],
    known: &Tenants,
) -> Result<Option<Committed>, sqlx::Error> {
    if events.is_empty() || events.len() >= SMALL_COMMIT {
        return Ok(None);
    }
    let mut accepted = Vec::with_capacity(events.len());
    let mut tenants = Tenants::new();
    let mut keys = std::collections::HashSet::new();
    for p in events {
        let Some(t) = known.get(&p.tenant_id) else {
            return Ok(None);
        };
        if let Some(key) = p.event.idempotency_key.as_deref()
            && !keys.insert((p.tenant_id, key))
        {
            return Ok(None);
        }
        tenants.entry(p.tenant_id).or_insert_with(|| t.clone());
        accepted.push((p, t.tz));
    }
    let now = Utc::now();
    let rows: Vec<&Pending> = events.iter().collect();
    let rollups = RollupColumns::of(&accepted);
    let limits = rollups.month_limits(&tenants);
    let query = EventColumns::of(&rows)
        .bind(sqlx::query(INGEST_SQL))
        .bind(now - IDEMPOTENCY_RETENTION)
        .bind(now + FUTURE_SKEW);
    let query = TenantColumns::of(&tenants).bind(query);
    let rows = rollups.bind(query).bind(limits).fetch_all(pool).await?;
    if !rows
        .first()
        .map(|row| row.try_get::<bool, _>("done"))
        .transpose()?
        .unwrap_or(false)
    {
        return Ok(None);
    }
    Ok(Some(Committed {
        outcomes: events
            .iter()
            .map(|p| Outcome::Accepted(stored(p)))
            .collect(),
        totals: month_totals_of(&rows)?,
        tenants,
    }))
}

/// `tenlyr_ingest`: events `$1`–`$8`, the key window `$9`–`$10`, tenants
/// `$11`–`$16`, rollups `$17`–`$22` and their limits `$23`.
const INGEST_SQL: &str = "SELECT * FROM tenlyr_ingest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
     $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)";

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

/// A transaction that sees `tenant`'s rows only, in its place
/// (`storage::tenant_data`).
pub async fn begin(
    pool: &PgPool,
    tenant: Uuid,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT tenlyr_enter_scope($1)")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Takes the tenants' usage locks, then reads the tenants with their time
/// zones and limits (so a plan change applies to the next commit) and the
/// month counters the events can fall into — one round trip
/// (`tenlyr_usage_begin`).
async fn lock_and_read_tenants(
    tx: &mut Transaction<'static, Postgres>,
    ids: &[Uuid],
    events: &[Pending],
) -> Result<(Tenants, BTreeMap<MonthKey, f64>), sqlx::Error> {
    let earliest = events.iter().map(|p| p.event.occurred_at).min();
    let latest = events.iter().map(|p| p.event.occurred_at).max();
    let rows = sqlx::query("SELECT * FROM tenlyr_usage_begin($1, $2, $3)")
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
            slot.insert(TenantSnapshot::new(
                row.try_get("time_zone")?,
                row.try_get("plan")?,
                PlanLimits {
                    api_calls: row.try_get("api_call_limit")?,
                    storage_gb: row.try_get("storage_gb_limit")?,
                    seats: row.try_get("seats_limit")?,
                },
            ));
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
    // One plain index probe per key (LATERAL … LIMIT 1, no bitmap scans),
    // whatever the statistics: see migration 0007.
    let rows = sqlx::query("SELECT * FROM tenlyr_stored_keys($1, $2, $3, $4)")
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

/// Below this many rows a commit may go in one call ([`commit_small`]) and
/// an `INSERT … SELECT FROM UNNEST` (a prepared statement, sent together
/// with the rollup upsert) costs less than `COPY` (two round trips and its
/// set-up); from it on COPY's bulk insert wins.
pub const SMALL_COMMIT: usize = 100;

/// Writes the accepted events straight into their day partitions and adds
/// them to the rollups; returns the month totals after the addition. One
/// statement for a small group in one day, else a binary COPY per day
/// partition and the upsert.
async fn write_events(
    tx: &mut Transaction<'static, Postgres>,
    accepted: &[(&Pending, Tz)],
) -> Result<Vec<MonthTotal>, sqlx::Error> {
    let mut by_day: BTreeMap<NaiveDate, Vec<&Pending>> = BTreeMap::new();
    for (p, _) in accepted {
        by_day
            .entry(p.event.occurred_at.date_naive())
            .or_default()
            .push(p);
    }
    let rollups = RollupColumns::of(accepted);
    if by_day.len() == 1
        && let Some(rows) = by_day.values().next()
        && rows.len() < SMALL_COMMIT
    {
        let partition = partition_of(rows[0].event.occurred_at);
        // The partition name is ours (`partition_of`), not input.
        let sql = format!(
            "WITH written AS (INSERT INTO {partition} {COPY_COLUMNS} {EVENTS_FROM_UNNEST}) {}",
            add_to_rollups_sql(9)
        );
        let query = EventColumns::of(rows).bind(sqlx::query(sqlx::AssertSqlSafe(sql)));
        let rows = rollups.bind(query).fetch_all(&mut **tx).await?;
        return month_totals_of(&rows);
    }
    for rows in by_day.values() {
        let statement = format!(
            "COPY {} {COPY_COLUMNS} FROM STDIN (FORMAT binary)",
            partition_of(rows[0].event.occurred_at)
        );
        let mut copy = tx.copy_in_raw(&statement).await?;
        copy.send(copy_binary(rows.iter().map(|p| stored(p))))
            .await?;
        copy.finish().await?;
    }
    let sql = add_to_rollups_sql(1);
    let rows = rollups
        .bind(sqlx::query(sqlx::AssertSqlSafe(sql)))
        .fetch_all(&mut **tx)
        .await?;
    month_totals_of(&rows)
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Events as UNNEST rows, binds `$1`–`$8` ([`EventColumns`]).
const EVENTS_FROM_UNNEST: &str = "SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], \
     $4::float8[], $5::text[], $6::int4[], $7::text[], $8::timestamptz[])";

/// Adds rollup rows ([`RollupColumns`], bound from `$first`), returning
/// the totals after the addition.
fn add_to_rollups_sql(first: usize) -> String {
    let [a, b, c, d, e, f] = std::array::from_fn(|i| first + i);
    format!(
        "INSERT INTO usage_rollups AS r (tenant_id, granularity, bucket_start, metric, total, events) \
         SELECT * FROM UNNEST(${a}::uuid[], ${b}::text[], ${c}::timestamptz[], ${d}::text[], \
         ${e}::float8[], ${f}::int8[]) \
         ON CONFLICT (tenant_id, granularity, bucket_start, metric) DO UPDATE \
         SET total = r.total + EXCLUDED.total, events = r.events + EXCLUDED.events \
         RETURNING tenant_id, granularity, bucket_start, metric, total"
    )
}

/// The columns of events, in [`COPY_COLUMNS`] order, as arrays.
struct EventColumns<'a> {
    ids: Vec<Uuid>,
    tenants: Vec<Uuid>,
    metrics: Vec<&'static str>,
    values: Vec<f64>,
    endpoints: Vec<Option<&'a str>>,
    codes: Vec<Option<i32>>,
    keys: Vec<Option<&'a str>>,
    times: Vec<DateTime<Utc>>,
}

impl<'a> EventColumns<'a> {
    fn of(rows: &[&'a Pending]) -> Self {
        Self {
            ids: rows.iter().map(|p| p.id).collect(),
            tenants: rows.iter().map(|p| p.tenant_id).collect(),
            metrics: rows.iter().map(|p| p.event.metric.as_str()).collect(),
            values: rows.iter().map(|p| p.event.value).collect(),
            endpoints: rows.iter().map(|p| p.event.endpoint.as_deref()).collect(),
            codes: rows.iter().map(|p| p.event.status_code).collect(),
            keys: rows
                .iter()
                .map(|p| p.event.idempotency_key.as_deref())
                .collect(),
            times: rows.iter().map(|p| p.event.occurred_at).collect(),
        }
    }

    fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        query
            .bind(self.ids)
            .bind(self.tenants)
            .bind(self.metrics)
            .bind(self.values)
            .bind(self.endpoints)
            .bind(self.codes)
            .bind(self.keys)
            .bind(self.times)
    }
}

/// Tenants as [`commit_small`] remembers them, as arrays (`tenlyr_ingest`
/// compares them with the stored rows).
struct TenantColumns<'a> {
    ids: Vec<Uuid>,
    zones: Vec<&'a str>,
    plans: Vec<&'a str>,
    api_calls: Vec<Option<i64>>,
    storage_gb: Vec<Option<i64>>,
    seats: Vec<Option<i64>>,
}

impl<'a> TenantColumns<'a> {
    fn of(tenants: &'a Tenants) -> Self {
        Self {
            ids: tenants.keys().copied().collect(),
            zones: tenants.values().map(|t| t.time_zone.as_str()).collect(),
            plans: tenants.values().map(|t| t.plan.as_str()).collect(),
            api_calls: tenants.values().map(|t| t.own.api_calls).collect(),
            storage_gb: tenants.values().map(|t| t.own.storage_gb).collect(),
            seats: tenants.values().map(|t| t.own.seats).collect(),
        }
    }

    fn bind<'q>(self, query: PgQuery<'q>) -> PgQuery<'q>
    where
        'a: 'q,
    {
        query
            .bind(self.ids)
            .bind(self.zones)
            .bind(self.plans)
            .bind(self.api_calls)
            .bind(self.storage_gb)
            .bind(self.seats)
    }
}

/// The rollup granularity of the health counts.
pub const HEALTH_GRANULARITY: &str = "minute";

/// A rollup row's key: tenant, granularity, bucket start, metric.
type BucketKey = (Uuid, Granularity, DateTime<Utc>, Metric);

/// The accepted events summed into their hour, day and month buckets, and
/// the health counts of those with a status code into their minute
/// (`requests`, `errors`; DESIGN.md §9), as arrays.
struct RollupColumns {
    tenants: Vec<Uuid>,
    grans: Vec<&'static str>,
    starts: Vec<DateTime<Utc>>,
    metrics: Vec<&'static str>,
    totals: Vec<f64>,
    counts: Vec<i64>,
}

impl RollupColumns {
    fn of(accepted: &[(&Pending, Tz)]) -> Self {
        let mut sums: BTreeMap<BucketKey, (f64, i64)> = BTreeMap::new();
        let mut health: BTreeMap<(Uuid, DateTime<Utc>, &'static str), i64> = BTreeMap::new();
        for (p, tz) in accepted {
            for g in Granularity::ALL {
                let bucket = g.bucket(p.event.occurred_at, *tz);
                let entry = sums
                    .entry((p.tenant_id, g, bucket, p.event.metric))
                    .or_default();
                entry.0 += p.event.value;
                entry.1 += 1;
            }
            let (requests, errors) =
                health::counts(p.event.metric, p.event.value, p.event.status_code);
            let minute = health::minute(p.event.occurred_at);
            for (which, n) in [("requests", requests), ("errors", errors)] {
                if n > 0 {
                    *health.entry((p.tenant_id, minute, which)).or_default() += n;
                }
            }
        }
        let mut out = Self {
            tenants: Vec::with_capacity(sums.len()),
            grans: Vec::with_capacity(sums.len()),
            starts: Vec::with_capacity(sums.len()),
            metrics: Vec::with_capacity(sums.len()),
            totals: Vec::with_capacity(sums.len()),
            counts: Vec::with_capacity(sums.len()),
        };
        for ((tenant, g, start, metric), (total, count)) in sums {
            out.tenants.push(tenant);
            out.grans.push(g.as_str());
            out.starts.push(start);
            out.metrics.push(metric.as_str());
            out.totals.push(total);
            out.counts.push(count);
        }
        for ((tenant, minute, which), count) in health {
            out.tenants.push(tenant);
            out.grans.push(HEALTH_GRANULARITY);
            out.starts.push(minute);
            out.metrics.push(which);
            out.totals.push(count as f64);
            out.counts.push(count);
        }
        out
    }

    /// The limit of each month row (`None`: not a month row, or no limit).
    fn month_limits(&self, tenants: &Tenants) -> Vec<Option<f64>> {
        (0..self.tenants.len())
            .map(|i| {
                if self.grans[i] != Granularity::Month.as_str() {
                    return None;
                }
                Metric::parse(self.metrics[i])?.limit(&tenants.get(&self.tenants[i])?.limits)
            })
            .collect()
    }

    fn bind(self, query: PgQuery<'_>) -> PgQuery<'_> {
        query
            .bind(self.tenants)
            .bind(self.grans)
            .bind(self.starts)
            .bind(self.metrics)
            .bind(self.totals)
            .bind(self.counts)
    }
}

/// The month rows of an upsert's RETURNING.
fn month_totals_of(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<MonthTotal>, sqlx::Error> {
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
        "SELECT r.tenant_id, r.metric, r.total FROM usage_rollups_all r \
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
