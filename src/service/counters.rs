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

    /// Applies the totals of a commit (set if greater), all of its tenants
    /// in one Redis call. Failures are logged: the next commit or read
    /// repairs the mirror.
    pub async fn publish(&self, totals: &[MonthTotal]) {
        let mut grouped: HashMap<Period, Vec<(Metric, f64)>> = HashMap::new();
        for t in totals {
            grouped
                .entry((t.tenant_id, t.period_start))
                .or_default()
                .push((t.metric, t.total));
        }
        self.set_max(grouped).await;
    }

    async fn set_max(&self, periods: HashMap<Period, Vec<(Metric, f64)>>) {
        if periods.is_empty() {
            return;
        }
        match self {
            Self::Redis(redis) => {
                let mut keys = Vec::with_capacity(periods.len());
                let mut args: Vec<String> = vec![TTL_SECS.to_string()];
                for ((tenant, start), values) in periods {
                    keys.push(key(tenant, start));
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
            Self::Local(map) => {
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                for (period, values) in periods {
                    let entry = map.entry(period).or_default();
                    for (metric, total) in values {
                        let cur = &mut entry[slot(metric)];
                        if cur.is_none_or(|c| total > c) {
                            *cur = Some(total);
                        }
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
        self.set_max(HashMap::from([((tenant, start), values)]))
            .await;
    }
}
