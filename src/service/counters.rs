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

use std::{collections::HashMap, sync::Mutex};

use chrono::{DateTime, Utc};
use fred::prelude::*;
use uuid::Uuid;

use crate::{
    domain::usage::Metric,
    storage::{redis::Redis, usage::MonthTotal},
};

/// Counters outlive their month by a few days, then expire.
const TTL_SECS: i64 = 40 * 24 * 3600;

/// `HSET field value` for each pair whose value is greater than the stored
/// one; then refresh the TTL.
const SET_MAX: &str = r"
for i = 2, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > cur then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 0
";

type Totals = [Option<f64>; 4];
/// A tenant's billing period: tenant id and period start.
type Period = (Uuid, DateTime<Utc>);

#[derive(Debug)]
pub enum LiveCounters {
    Redis(Redis),
    Local(Mutex<HashMap<Period, Totals>>),
}

fn key(tenant: Uuid, period_start: DateTime<Utc>) -> String {
    format!("tenlyr:usage:{tenant}:{}", period_start.timestamp())
}

fn slot(metric: Metric) -> usize {
    Metric::ALL.iter().position(|m| *m == metric).unwrap_or(0)
}

impl LiveCounters {
    pub fn new(redis: Option<Redis>) -> Self {
        match redis {
            Some(redis) => Self::Redis(redis),
            None => Self::Local(Mutex::default()),
        }
    }

    /// Applies the totals of a commit (set if greater). Failures are logged:
    /// the next commit or read repairs the mirror.
    pub async fn publish(&self, totals: &[MonthTotal]) {
        let mut grouped: HashMap<Period, Vec<(Metric, f64)>> = HashMap::new();
        for t in totals {
            grouped
                .entry((t.tenant_id, t.period_start))
                .or_default()
                .push((t.metric, t.total));
        }
        for ((tenant, start), values) in grouped {
            self.set_max(tenant, start, &values).await;
        }
    }

    async fn set_max(&self, tenant: Uuid, start: DateTime<Utc>, values: &[(Metric, f64)]) {
        match self {
            Self::Redis(redis) => {
                let mut args: Vec<String> = vec![TTL_SECS.to_string()];
                for (metric, total) in values {
                    args.push(metric.as_str().to_owned());
                    args.push(total.to_string());
                }
                let result: Result<i64, _> = redis
                    .client()
                    .eval(SET_MAX, vec![key(tenant, start)], args)
                    .await;
                if let Err(err) = result {
                    tracing::warn!(error = %err, "publishing usage counters to redis failed");
                }
            }
            Self::Local(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                let entry = map.entry((tenant, start)).or_default();
                for (metric, total) in values {
                    let cur = &mut entry[slot(*metric)];
                    if cur.is_none_or(|c| *total > c) {
                        *cur = Some(*total);
                    }
                }
                // Forget periods that ended long ago.
                let cutoff = Utc::now() - chrono::Duration::seconds(TTL_SECS);
                map.retain(|(_, s), _| *s > cutoff);
            }
        }
    }

    /// The four totals of a period, if the mirror holds all of them.
    pub async fn get(&self, tenant: Uuid, start: DateTime<Utc>) -> Option<HashMap<Metric, f64>> {
        let totals: Totals = match self {
            Self::Redis(redis) => {
                let stored: HashMap<String, f64> = redis
                    .client()
                    .hgetall(key(tenant, start))
                    .await
                    .map_err(|err| tracing::warn!(error = %err, "reading usage counters from redis failed"))
                    .ok()?;
                Metric::ALL.map(|m| stored.get(m.as_str()).copied())
            }
            Self::Local(map) => *map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(tenant, start))?,
        };
        let all: Option<Vec<f64>> = totals.iter().copied().collect();
        Some(Metric::ALL.into_iter().zip(all?).collect())
    }

    /// Fills the mirror from Postgres totals (absent metrics are 0).
    pub async fn rebuild(&self, tenant: Uuid, start: DateTime<Utc>, totals: &HashMap<Metric, f64>) {
        let values: Vec<(Metric, f64)> = Metric::ALL
            .into_iter()
            .map(|m| (m, totals.get(&m).copied().unwrap_or(0.0)))
            .collect();
        self.set_max(tenant, start, &values).await;
    }
}
