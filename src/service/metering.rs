//! Usage metering: the group-commit ingestion pipeline and the queries.
//!
//! Every tracked event, single or batched, is handed to [`Ingest`] and
//! acknowledged only after the transaction holding it committed. Tenants
//! are spread over [`committers`] by id (small submissions and big batches
//! in separate sets); each commits whatever queued up for its tenants while
//! its previous commit ran, as one transaction of up to [`MAX_COMMIT`]
//! events. Under load commits grow instead of multiplying; a tenant's
//! small and bulk commits may meet at its usage lock in Postgres, which
//! orders them.

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{counters::LiveCounters, keys::TenantFacts};
use crate::workers::ingest::IngestWorker;
use crate::{
    domain::{
        tenant::PlanLimits,
        usage::{self as rules, EventInput, Granularity, Metric},
    },
    error::{ApiError, ErrorCode, FieldViolation},
    storage::{
        Db,
        entities::tenant,
        tenant_data::{self, Place},
        usage::{self as repo, Outcome, Pending, Retry, StoredEvent},
    },
};

/// Events per commit, at most.
pub const MAX_COMMIT: usize = 4000;
/// Committers, each with one commit in flight at a time, in two sets:
/// `(small, bulk)`. Submissions of fewer than [`repo::SMALL_COMMIT`] events
/// (single tracks, small batches) go to the small set, one committer per
/// two CPU cores (1 to 8); bigger batches to the bulk set, two per core (4
/// to 16). Fewer committers make bigger commits, which is what single
/// events need: each commit costs a fixed share of CPU (the statement, the
/// locks, the WAL flush, waking the committer) on top of its events. On 2
/// cores, single tracks with 1 small committer took 179–188 µs of CPU
/// each against 224–281 µs with 2, and ran 8.6k–9.2k/s against 6.4k–8.0k/s
/// (`scripts/bench.sh metering`, four interleaved pairs); batches gain from
/// more COPYs overlapping request parsing (2 bulk committers carried ~10 %
/// fewer 1,000-event batches than 4).
pub fn committers() -> (usize, usize) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    ((cores / 2).clamp(1, 8), (cores * 2).clamp(4, 16))
}

/// Queued submissions per committer before Track waits (backpressure).
const QUEUE: usize = 4096;
const ATTEMPTS: usize = 10;

pub const DEFAULT_EVENTS_PAGE: i64 = 100;
pub const MAX_EVENTS_PAGE: i64 = 1000;

#[derive(Debug)]
pub(crate) struct Submission {
    pub(crate) events: Vec<Pending>,
    reply: oneshot::Sender<Result<Vec<Outcome>, ApiError>>,
}

/// The sending half of the pipeline.
#[derive(Clone, Debug)]
pub struct Ingest {
    small: Arc<[mpsc::Sender<Submission>]>,
    bulk: Arc<[mpsc::Sender<Submission>]>,
}

impl Ingest {
    pub fn new(
        db: Db,
        counters: Arc<LiveCounters>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> (Self, IngestWorker) {
        let (small, bulk) = committers();
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..small + bulk).map(|_| mpsc::channel(QUEUE)).unzip();
        let worker = IngestWorker {
            shards: receivers,
            db,
            counters,
            metrics,
        };
        let (small, bulk) = senders.split_at(small);
        let ingest = Self {
            small: small.into(),
            bulk: bulk.into(),
        };
        (ingest, worker)
    }

    /// Submissions waiting for a committer, across all of them.
    pub fn queued(&self) -> usize {
        self.small
            .iter()
            .chain(self.bulk.iter())
            .map(|s| s.max_capacity() - s.capacity())
            .sum()
    }

    /// Commits `events` (all of one tenant); resolves once they are
    /// durable (or rejected). A tenant's submissions of one size go to the
    /// same committer.
    async fn submit(&self, tenant: Uuid, events: Vec<Pending>) -> Result<Vec<Outcome>, ApiError> {
        let shards = if events.len() < repo::SMALL_COMMIT {
            &self.small
        } else {
            &self.bulk
        };
        let shard = (tenant.as_u128() % shards.len() as u128) as usize;
        let (reply, done) = oneshot::channel();
        shards[shard]
            .send(Submission { events, reply })
            .await
            .map_err(|_| ApiError::unavailable("shutting down"))?;
        done.await
            .map_err(|_| ApiError::unavailable("shutting down"))?
    }
}

/// Tenants a committer remembers, at most (then it starts over).
const KNOWN_TENANTS: usize = 100_000;

/// Commits one group of submissions and answers each of them: one commit
/// per place their tenants' data lives in (`storage::tenant_data`; one
/// submission is one tenant's).
pub(crate) async fn commit_group(
    db: &Db,
    counters: &LiveCounters,
    known: &mut repo::Tenants,
    group: Vec<Submission>,
) {
    let tenant_of = |s: &Submission| s.events.first().map_or(Uuid::nil(), |p| p.tenant_id);
    let mut work = db.placements().partition(group, tenant_of);
    let mut refreshes = 0;
    while let Some((place, part)) = work.pop() {
        let last_try = refreshes >= MAX_REGROUPS;
        let here = match db.at(place.as_ref()).await {
            Ok(here) => here,
            Err(err) => {
                let err = ApiError::from(tenant_data::unreachable(err));
                for submission in part {
                    let _ = submission.reply.send(Err(err.clone()));
                }
                continue;
            }
        };
        let Some(misrouted) = commit_place(&here, counters, known, part, last_try).await else {
            continue;
        };
        // A tenant moved since this process last looked: look again and
        // regroup (the database checks every commit; this only groups).
        refreshes += 1;
        if let Err(err) = db.placements().refresh(db.pool()).await {
            tracing::warn!(error = %err, "reading tenant placements failed");
        }
        work.extend(db.placements().partition(misrouted, tenant_of));
    }
}

/// How often a commit regroups after its tenants moved under it.
const MAX_REGROUPS: u32 = 3;

/// Commits submissions whose tenants live in one place; gives them back
/// (unanswered, nothing written) when the database says they do not,
/// unless this is the `last_try`.
async fn commit_place(
    db: &Db,
    counters: &LiveCounters,
    known: &mut repo::Tenants,
    group: Vec<Submission>,
    last_try: bool,
) -> Option<Vec<Submission>> {
    let events: Vec<Pending> = group
        .iter()
        .flat_map(|s| s.events.iter().cloned())
        .collect();
    match commit_with_retry(db, &events, known).await {
        Ok(done) => {
            let mut outcomes = done.outcomes.into_iter();
            for submission in group {
                let mine = outcomes.by_ref().take(submission.events.len()).collect();
                let _ = submission.reply.send(Ok(mine));
            }
            if known.len() + done.tenants.len() > KNOWN_TENANTS {
                known.clear();
            }
            for p in &events {
                if !done.tenants.contains_key(&p.tenant_id) {
                    known.remove(&p.tenant_id);
                }
            }
            known.extend(done.tenants);
            counters.publish(&done.totals).await;
        }
        Err(err) if tenant_data::is_misrouted(&err) && !last_try => return Some(group),
        Err(err) => {
            let err = ApiError::from(err);
            for submission in group {
                let _ = submission.reply.send(Err(err.clone()));
            }
        }
    }
    None
}

/// Commits `events`: in one call when their outcome is known beforehand
/// (`commit_small`), else the long way, retried on deadlocks and missing
/// partitions.
async fn commit_with_retry(
    db: &Db,
    events: &[Pending],
    known: &repo::Tenants,
) -> Result<repo::Committed, sqlx::Error> {
    match repo::commit_small(db.pool(), events, known).await {
        Ok(Some(done)) => return Ok(done),
        Ok(None) => {}
        Err(err) if tenant_data::is_misrouted(&err) => return Err(err),
        // The database refused the statement (a missing partition, say):
        // nothing was written, the long way decides. Anything else (a lost
        // connection) may have committed, so it is not repeated.
        Err(err) if err.as_database_error().is_some() => {}
        Err(err) => return Err(err),
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let err = match repo::commit(db.pool(), events).await {
            Ok(done) => return Ok(done),
            Err(err) => err,
        };
        match repo::retryable(&err) {
            Retry::No => return Err(err),
            _ if attempt >= ATTEMPTS => return Err(err),
            Retry::Again => {
                tokio::time::sleep(Duration::from_millis(5 * attempt as u64)).await;
            }
            Retry::AfterPartitions => {
                let days = events.iter().map(|p| p.event.occurred_at.date_naive());
                if let (Some(first), Some(last)) = (days.clone().min(), days.max()) {
                    repo::ensure_partitions(db.pool(), first, last).await?;
                }
            }
        }
    }
}

/// Current-period usage of one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodUsage {
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub api_calls: i64,
    pub storage_gb: f64,
    pub seats: i64,
    pub compute: i64,
    pub limits: PlanLimits,
}

impl PeriodUsage {
    fn new(
        (period_start, period_end): (DateTime<Utc>, DateTime<Utc>),
        totals: impl Fn(Metric) -> f64,
        limits: PlanLimits,
    ) -> Self {
        Self {
            period_start,
            period_end,
            api_calls: totals(Metric::ApiCall) as i64,
            storage_gb: totals(Metric::StorageGb),
            seats: totals(Metric::Seats) as i64,
            compute: totals(Metric::Compute) as i64,
            limits,
        }
    }
}

/// Outcome of one event of a batch, as the API reports it.
#[derive(Debug, Clone)]
pub enum TrackResult {
    Accepted(StoredEvent),
    Duplicate(StoredEvent),
    Rejected(FieldViolation),
}

/// The rollups of GetSummary.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub hourly: Vec<repo::Rollup>,
    pub daily: Vec<repo::Rollup>,
    pub monthly: Vec<repo::Rollup>,
}

#[derive(Clone, Debug)]
pub struct Metering {
    db: Db,
    ingest: Ingest,
    counters: Arc<LiveCounters>,
}

impl Metering {
    /// Track submissions waiting for a committer.
    pub fn ingest_queued(&self) -> usize {
        self.ingest.queued()
    }

    pub fn new(db: Db, ingest: Ingest, counters: Arc<LiveCounters>) -> Self {
        Self {
            db,
            ingest,
            counters,
        }
    }

    /// Track: the event, or 422 naming the field, or 400 at the plan limit.
    pub async fn track(&self, tenant_id: Uuid, input: EventInput) -> Result<StoredEvent, ApiError> {
        let event =
            rules::validate(input, Utc::now()).map_err(|v| ApiError::validation(vec![v]))?;
        let pending = Pending {
            id: Uuid::now_v7(),
            tenant_id,
            event,
        };
        let outcome = self.ingest.submit(tenant_id, vec![pending]).await?.pop();
        match outcome {
            Some(Outcome::Accepted(e) | Outcome::Duplicate(e)) => Ok(e),
            Some(Outcome::LimitExceeded {
                metric,
                limit,
                total,
            }) => Err(limit_error(metric, limit, total)),
            Some(Outcome::TenantGone) | None => Err(ApiError::unauthenticated("tenant not found")),
        }
    }

    /// TrackBatch: one result per event; a bad event sinks only itself.
    pub async fn track_batch(
        &self,
        tenant_id: Uuid,
        inputs: Vec<EventInput>,
    ) -> Result<Vec<TrackResult>, ApiError> {
        if inputs.is_empty() || inputs.len() > rules::MAX_BATCH {
            return Err(ApiError::validation(vec![FieldViolation {
                field: "events".into(),
                description: format!("must hold 1 to {} events", rules::MAX_BATCH),
            }]));
        }
        let now = Utc::now();
        let mut results: Vec<Option<TrackResult>> = Vec::with_capacity(inputs.len());
        let mut pending = Vec::with_capacity(inputs.len());
        for input in inputs {
            match rules::validate(input, now) {
                Ok(event) => {
                    results.push(None);
                    pending.push(Pending {
                        id: Uuid::now_v7(),
                        tenant_id,
                        event,
                    });
                }
                Err(violation) => results.push(Some(TrackResult::Rejected(violation))),
            }
        }
        let mut outcomes = if pending.is_empty() {
            Vec::new()
        } else {
            self.ingest.submit(tenant_id, pending).await?
        }
        .into_iter();
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| match outcomes.next() {
                    Some(Outcome::Accepted(e)) => TrackResult::Accepted(e),
                    Some(Outcome::Duplicate(e)) => TrackResult::Duplicate(e),
                    Some(Outcome::LimitExceeded {
                        metric,
                        limit,
                        total,
                    }) => TrackResult::Rejected(FieldViolation {
                        field: "value".into(),
                        description: limit_error(metric, limit, total).message,
                    }),
                    Some(Outcome::TenantGone) | None => TrackResult::Rejected(FieldViolation {
                        field: String::new(),
                        description: "tenant not found".into(),
                    }),
                })
            })
            .collect())
    }

    /// Usage in the tenant's current billing period: from the tenant facts
    /// its key lookup carried and the live counters, so the call reads
    /// nothing from Postgres unless the counters must be rebuilt (the docs
    /// tell customers to call it before every expensive operation).
    pub async fn current(
        &self,
        tenant_id: Uuid,
        tenant: &TenantFacts,
    ) -> Result<PeriodUsage, ApiError> {
        let tz: Tz = tenant.time_zone.parse().unwrap_or(Tz::UTC);
        let period = rules::billing_period(Utc::now(), tz);
        let totals = match self.counters.get(tenant_id, period.0).await {
            Some(live) => live,
            None => {
                let db = self.db.for_tenant(tenant_id).await?;
                let stored = repo::month_totals(db.pool(), tenant_id, period.0).await?;
                self.counters.rebuild(tenant_id, period.0, &stored).await;
                stored
            }
        };
        Ok(PeriodUsage::new(
            period,
            |m| totals.get(&m).copied().unwrap_or(0.0),
            tenant.limits,
        ))
    }

    /// Current-period usage of several tenants (the dashboard).
    pub async fn current_many(
        &self,
        tenants: &[tenant::Model],
    ) -> Result<Vec<PeriodUsage>, ApiError> {
        let now = Utc::now();
        let periods: Vec<(DateTime<Utc>, DateTime<Utc>)> = tenants
            .iter()
            .map(|t| rules::billing_period(now, t.time_zone.parse().unwrap_or(Tz::UTC)))
            .collect();
        let keys: Vec<(Uuid, DateTime<Utc>)> = tenants
            .iter()
            .zip(&periods)
            .map(|(t, p)| (t.id, p.0))
            .collect();
        // One read per database: the main one (every tenant there, whatever
        // its schema, through the cross-tenant view) and each tenant
        // database holding some of them.
        type Periods = Vec<(Uuid, DateTime<Utc>)>;
        let mut by_db: Vec<(Option<Place>, Periods)> = Vec::new();
        for key in keys {
            let place = self
                .db
                .placements()
                .place_of(key.0)
                .filter(|p| matches!(p, Place::Database(_)));
            match by_db.iter_mut().find(|(p, _)| *p == place) {
                Some((_, keys)) => keys.push(key),
                None => by_db.push((place, vec![key])),
            }
        }
        let mut totals = std::collections::HashMap::new();
        for (place, keys) in by_db {
            let db = self.db.at(place.as_ref()).await?;
            totals.extend(repo::month_totals_many(db.pool(), &keys).await?);
        }
        Ok(tenants
            .iter()
            .zip(periods)
            .map(|(t, period)| {
                PeriodUsage::new(
                    period,
                    |m| totals.get(&(t.id, m)).copied().unwrap_or(0.0),
                    super::tenants::limits(t),
                )
            })
            .collect())
    }

    /// Hourly, daily and monthly rollups. Without a range: the last 24
    /// hours, the last 30 days and the last 12 months.
    pub async fn summary(
        &self,
        tenant_id: Uuid,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
    ) -> Result<Summary, ApiError> {
        let now = Utc::now();
        let end = end.unwrap_or(now);
        if let Some(start) = start {
            if start >= end {
                return Err(ApiError::validation(vec![FieldViolation {
                    field: "start".into(),
                    description: "must be before end".into(),
                }]));
            }
            if end - start > chrono::Duration::days(400) {
                return Err(ApiError::validation(vec![FieldViolation {
                    field: "start".into(),
                    description: "the range may span at most 400 days".into(),
                }]));
            }
        }
        let from = |default: chrono::Duration| start.unwrap_or(end - default);
        let db = self.db.for_tenant(tenant_id).await?;
        let pool = db.pool();
        Ok(Summary {
            hourly: repo::rollups(
                pool,
                tenant_id,
                Granularity::Hour,
                from(chrono::Duration::hours(24)),
                end,
            )
            .await?,
            daily: repo::rollups(
                pool,
                tenant_id,
                Granularity::Day,
                from(chrono::Duration::days(30)),
                end,
            )
            .await?,
            monthly: repo::rollups(
                pool,
                tenant_id,
                Granularity::Month,
                from(chrono::Duration::days(366)),
                end,
            )
            .await?,
        })
    }

    /// A page of events, newest first, and the cursor of the next page.
    pub async fn events(
        &self,
        tenant_id: Uuid,
        limit: i32,
        cursor: &str,
    ) -> Result<(Vec<StoredEvent>, Option<String>), ApiError> {
        let limit = match limit {
            0 => DEFAULT_EVENTS_PAGE,
            l if (1..=MAX_EVENTS_PAGE as i32).contains(&l) => i64::from(l),
            _ => {
                return Err(ApiError::validation(vec![FieldViolation {
                    field: "limit".into(),
                    description: format!("must be between 1 and {MAX_EVENTS_PAGE}"),
                }]));
            }
        };
        let after = if cursor.is_empty() {
            None
        } else {
            Some(decode_cursor(cursor)?)
        };
        let db = self.db.for_tenant(tenant_id).await?;
        let mut page = repo::events_page(db.pool(), tenant_id, after, limit + 1).await?;
        let next = if page.len() as i64 > limit {
            page.truncate(limit as usize);
            page.last().map(|e| encode_cursor(e.occurred_at, e.id))
        } else {
            None
        };
        Ok((page, next))
    }
}

fn limit_error(metric: Metric, limit: f64, total: f64) -> ApiError {
    ApiError::new(
        ErrorCode::FailedPrecondition,
        format!(
            "plan limit reached: {} is at {total} of {limit} this billing period",
            metric.as_str()
        ),
    )
    .with_reason("PLAN_LIMIT_EXCEEDED")
}

fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}:{id}", at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let bad = || ApiError::bad_field("cursor", "is not a cursor this API returned");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (micros, id) = text.split_once(':').ok_or_else(bad)?;
    let at = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}

/// Partition upkeep (`workers::partitions` runs it hourly; the server runs
/// it once before it serves): day partitions from the late window to a
/// week ahead exist, those older than `retention_days` are dropped.
pub async fn maintain(main: &Db, retention_days: u32) -> Result<(), sqlx::Error> {
    maintain_one(main, retention_days).await?;
    // Each tenant database too; one that is down waits for the next tick
    // (and its tenant's writes fail meanwhile anyway).
    let dbs = main.data_dbs().await.map_err(tenant_data::unreachable)?;
    for db in dbs.iter().skip(1) {
        if let Err(err) = maintain_one(db, retention_days).await {
            tracing::warn!(error = %err, "partition upkeep of a tenant database failed");
        }
    }
    Ok(())
}

/// [`maintain`] in one database (the main one, or a tenant's).
pub async fn maintain_one(db: &Db, retention_days: u32) -> Result<(), sqlx::Error> {
    let today = Utc::now().date_naive();
    let first = today - chrono::Duration::days(2);
    repo::ensure_partitions(db.pool(), first, today + chrono::Duration::days(7)).await?;
    let dropped = repo::drop_partitions(
        db.pool(),
        today - chrono::Duration::days(i64::from(retention_days)),
    )
    .await?;
    if !dropped.is_empty() {
        tracing::info!(partitions = ?dropped, "dropped usage partitions past retention");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(at, id)).unwrap(), (at, id));
        assert!(decode_cursor("not-a-cursor").is_err());
    }
}
