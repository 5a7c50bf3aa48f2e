//! Live usage counters: the current month totals per tenant and metric, in
//! Redis when configured (shared by replicas), in-process otherwise.
//!
//! Postgres stays the source of truth: its month rollup rows are the
//! counters plan limits are checked against, under the tenant's usage lock
//! (`storage::usage::commit`). What
//! is published here is each commit's resulting *absolute* total, applied
//! with "set if greater" (totals only grow within a period), so the mirror
//! is never ahead of Postgres and heals on the next commit even if a
//! publish was lost. A hash missing a metric (e.g. Redis restarted empty)
//! is rebuilt from Postgres by the next read.
//!
//! Commits do not wait for Redis: [`LiveCounters::publish`] merges their
//! totals into a local "unpublished" map (keeping the greater value) and
//! the publisher worker (`workers::counters`) sends whatever accumulated in
//! one call ([`LiveCounters::flush`]),
//! so under load one Redis call carries many commits. Reads on this node
//! see the unpublished totals too.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use fred::prelude::*;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::{
    domain::usage::Metric,
    storage::{redis::Redis, usage::MonthTotal},
};

/// Counters outlive their month by a few days, then expire.
const TTL_SECS: i64 = 40 * 24 * 3600;

/// For each key (a tenant's period): `HSET field value` for each pair
/// whose value is greater than the stored one, then refresh the TTL.
/// ARGV: the TTL, then per key the number of pairs and the pairs.
const SET_MAX: &str = r"
local a = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[a])
  a = a + 1
  for i = 1, n do
    local cur = tonumber(redis.call('HGET', KEYS[k], ARGV[a]) or '-1')
    if tonumber(ARGV[a + 1]) > cur then
      redis.call('HSET', KEYS[k], ARGV[a], ARGV[a + 1])
    end
    a = a + 2
  end
  redis.call('EXPIRE', KEYS[k], ARGV[1])
end
return 0
";

/// The SHA-1 of [`SET_MAX`], as `EVALSHA` names it.
static SET_MAX_SHA: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, SET_MAX.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
});

type Totals = [Option<f64>; 4];
/// A tenant's billing period: tenant id and period start.
type Period = (Uuid, DateTime<Utc>);

#[derive(Debug)]
pub struct LiveCounters {
    store: Store,
    /// Committed totals not yet sent to Redis.
    unpublished: Mutex<HashMap<Period, Totals>>,
    /// Totals read from Redis (fresh for [`READ_FRESH`]), with this node's
    /// own commits merged in as they happen, so that this node never reads
    /// a total lower than one it committed (Redis mode).
    recent: Mutex<HashMap<Period, (Totals, Instant)>>,
    wake: Notify,
}

/// How long a total read from Redis serves further reads on this node.
/// Another replica's commits show here at most this late; this node's own
/// show at once. (GetMetrics is a hot path the docs put before every
/// expensive operation; the limits themselves are checked in Postgres.)
pub const READ_FRESH: Duration = Duration::from_millis(250);
/// Periods kept in `recent`, at most (then it starts over).
const RECENT_MAX: usize = 100_000;

#[derive(Debug)]
enum Store {
    Redis(Redis),
    Local(Mutex<HashMap<Period, Totals>>),
}

fn key(tenant: Uuid, period_start: DateTime<Utc>) -> String {
    format!("tenlyr:usage:{tenant}:{}", period_start.timestamp())
}

/// Keeps the greater of each metric's totals.
fn merge(into: &mut Totals, from: &Totals) {
    for (cur, new) in into.iter_mut().zip(from) {
        if let Some(new) = *new
            && cur.is_none_or(|c| new > c)
        {
            *cur = Some(new);
        }
    }
}

fn by_period(totals: &[MonthTotal]) -> HashMap<Period, Totals> {
    let mut out: HashMap<Period, Totals> = HashMap::new();
    for t in totals {
        let entry = out.entry((t.tenant_id, t.period_start)).or_default();
        merge(
            entry,
            &Metric::ALL.map(|m| (m == t.metric).then_some(t.total)),
        );
    }
    out
}

impl LiveCounters {
    pub fn new(redis: Option<Redis>) -> Self {
        Self {
            store: match redis {
                Some(redis) => Store::Redis(redis),
                None => Store::Local(Mutex::default()),
            },
            unpublished: Mutex::default(),
            recent: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// Applies the totals of a commit (set if greater): in-process at once;
    /// to Redis by [`Self::flush`], without waiting for it.
    pub async fn publish(&self, totals: &[MonthTotal]) {
        let periods = by_period(totals);
        if periods.is_empty() {
            return;
        }
        match &self.store {
            Store::Redis(_) => {
                // Held as this node's floor, not yet as a fresh read: a read
                // of Redis that was answered before the flush of these
                // totals landed must not take them back (see `get`).
                let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                if recent.len() >= RECENT_MAX {
                    recent.clear();
                }
                let unread = Instant::now().checked_sub(READ_FRESH);
                for (period, totals) in &periods {
                    match recent.get_mut(period) {
                        Some((seen, _)) => merge(seen, totals),
                        None => {
                            if let Some(unread) = unread {
                                recent.insert(*period, (*totals, unread));
                            }
                        }
                    }
                }
                drop(recent);
                let mut unpublished = self.unpublished.lock().unwrap_or_else(|p| p.into_inner());
                for (period, totals) in periods {
                    merge(unpublished.entry(period).or_default(), &totals);
                }
                drop(unpublished);
                self.wake.notify_one();
            }
            Store::Local(_) => self.set_max(periods).await,
        }
    }

    /// Whether totals wait in memory for [`Self::flush`] (Redis mode); the
    /// in-process store applies them at once.
    pub fn deferred(&self) -> bool {
        matches!(self.store, Store::Redis(_))
    }

    /// Resolves when a commit left totals to send.
    pub async fn pending(&self) {
        self.wake.notified().await;
    }

    /// Sends every unpublished total to Redis in one call. Failures are
    /// logged: the next commit or read repairs the mirror. The publisher
    /// worker (`workers::counters`) calls this.
    pub async fn flush(&self) {
        let pending =
            std::mem::take(&mut *self.unpublished.lock().unwrap_or_else(|p| p.into_inner()));
        self.set_max(pending).await;
    }

    async fn set_max(&self, periods: HashMap<Period, Totals>) {
        if periods.is_empty() {
            return;
        }
        match &self.store {
            Store::Redis(redis) => {
                let mut keys = Vec::with_capacity(periods.len());
                let mut args: Vec<String> = vec![TTL_SECS.to_string()];
                for ((tenant, start), totals) in periods {
                    keys.push(key(tenant, start));
                    let values: Vec<(Metric, f64)> = Metric::ALL
                        .into_iter()
                        .zip(totals)
                        .filter_map(|(m, t)| Some((m, t?)))
                        .collect();
                    args.push(values.len().to_string());
                    for (metric, total) in values {
                        args.push(metric.as_str().to_owned());
                        args.push(total.to_string());
                    }
                }
                let client = redis.client();
                let mut result: Result<i64, fred::error::Error> = client
                    .evalsha(SET_MAX_SHA.as_str(), keys.clone(), args.clone())
                    .await;
                if let Err(err) = &result
                    && err.details().starts_with("NOSCRIPT")
                {
                    result = client.eval(SET_MAX, keys, args).await;
                }
                if let Err(err) = result {
                    tracing::warn!(error = %err, "publishing usage counters to redis failed");
                }
            }
            Store::Local(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                for (period, totals) in periods {
                    merge(map.entry(period).or_default(), &totals);
                }
                // Forget periods that ended long ago.
                let cutoff = Utc::now() - chrono::Duration::seconds(TTL_SECS);
                map.retain(|(_, s), _| *s > cutoff);
            }
        }
    }

    /// The four totals of a period, if the mirror holds all of them
    /// (with what this node has not published yet).
    pub async fn get(&self, tenant: Uuid, start: DateTime<Utc>) -> Option<HashMap<Metric, f64>> {
        let mut totals: Totals = match &self.store {
            Store::Redis(redis) => {
                let fresh = self
                    .recent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&(tenant, start))
                    .filter(|(_, read)| read.elapsed() < READ_FRESH)
                    .map(|(totals, _)| *totals);
                match fresh {
                    Some(totals) => totals,
                    None => {
                        let stored: HashMap<String, f64> = redis
                            .client()
                            .hgetall(key(tenant, start))
                            .await
                            .map_err(|err| tracing::warn!(error = %err, "reading usage counters from redis failed"))
                            .ok()?;
                        let mut totals = Metric::ALL.map(|m| stored.get(m.as_str()).copied());
                        if totals.iter().all(Option::is_some) {
                            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                            if recent.len() >= RECENT_MAX {
                                recent.clear();
                            }
                            // This node's commits may be newer than Redis's
                            // answer: the flush that sends them can land
                            // after Redis answered and still empty
                            // `unpublished` before this read merges it.
                            let entry = recent
                                .entry((tenant, start))
                                .or_insert(([None; 4], Instant::now()));
                            merge(&mut entry.0, &totals);
                            entry.1 = Instant::now();
                            totals = entry.0;
                        }
                        totals
                    }
                }
            }
            Store::Local(map) => *map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(tenant, start))?,
        };
        if totals.iter().any(Option::is_none) {
            return None;
        }
        if let Some(mine) = self
            .unpublished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(tenant, start))
        {
            merge(&mut totals, mine);
        }
        Some(
            Metric::ALL
                .into_iter()
                .zip(totals)
                .filter_map(|(m, t)| Some((m, t?)))
                .collect(),
        )
    }

    /// Fills the mirror from Postgres totals (absent metrics are 0).
    pub async fn rebuild(&self, tenant: Uuid, start: DateTime<Utc>, totals: &HashMap<Metric, f64>) {
        let totals = Metric::ALL.map(|m| Some(totals.get(&m).copied().unwrap_or(0.0)));
        self.set_max(HashMap::from([((tenant, start), totals)]))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_the_greater_total_of_each_metric() {
        let tenant = Uuid::now_v7();
        let start = Utc::now();
        let total = |metric, total| MonthTotal {
            tenant_id: tenant,
            period_start: start,
            metric,
            total,
        };
        let first = by_period(&[total(Metric::ApiCall, 5.0), total(Metric::Seats, 2.0)]);
        let mut merged = first[&(tenant, start)];
        // A later commit's totals are greater; an older one arriving late is not.
        merge(
            &mut merged,
            &by_period(&[total(Metric::ApiCall, 7.0)])[&(tenant, start)],
        );
        merge(
            &mut merged,
            &by_period(&[total(Metric::Seats, 1.0)])[&(tenant, start)],
        );
        assert_eq!(merged, [Some(7.0), None, Some(2.0), None]);
    }
}
