//! Per-tenant throttles (DESIGN.md §9): GCRA (`domain::health::Gcra`) on
//! every request of a throttled tenant's keys. With Redis, one Lua script
//! per decision on Redis's own clock, so the limit is exact across
//! replicas; without Redis (or while it is unreachable), the same
//! algorithm in this process, exact for one replica.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use uuid::Uuid;

use crate::{
    domain::health::{Decision, Gcra},
    storage::redis::Redis,
};

/// GCRA on Redis: KEYS[1] holds the TAT (µs since the epoch); ARGV: the
/// emission interval and the tolerance (µs). Returns {allowed, remaining,
/// wait µs}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if allow_at > now then
  return {0, 0, allow_at - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, math.floor((now - (new_tat - tolerance)) / interval) + 1, new_tat - now}
";

static GCRA_SHA: LazyLock<String> = LazyLock::new(|| {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, GCRA.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
});

const SHARDS: usize = 64;

/// Throttle decisions; cheap to share.
pub struct Throttle {
    redis: Option<Redis>,
    /// The limit of a tenant without its own throttle
    /// (`TENLYR_DEFAULT_RATE_LIMIT_RPM`); `None`: such tenants are not
    /// limited.
    default_rpm: Option<i32>,
    /// TATs of this process (no Redis, or Redis unreachable), sharded by
    /// tenant.
    local: Vec<Mutex<HashMap<Uuid, i64>>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Throttle {
    pub fn new(redis: Option<Redis>) -> Self {
        Self {
            redis,
            default_rpm: None,
            local: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Limits every tenant without a throttle of its own to `rpm` requests
    /// a minute (0: no default limit).
    pub fn with_default(mut self, rpm: u32) -> Self {
        self.default_rpm = i32::try_from(rpm).ok().filter(|rpm| *rpm > 0);
        self
    }

    /// The limit a tenant's requests are held to: its own throttle, else
    /// the default; and whether it is the default.
    pub fn limit_for(&self, own: Option<i32>) -> Option<(i32, bool)> {
        own.map(|rpm| (rpm, false))
            .or(self.default_rpm.map(|rpm| (rpm, true)))
    }

    /// Whether one more request of `tenant` passes its limit of
    /// `limit_rpm` requests a minute.
    pub async fn check(&self, tenant: Uuid, limit_rpm: i32) -> Decision {
        let gcra = Gcra::per_minute(limit_rpm);
        if let Some(redis) = &self.redis {
            match Self::remote(redis, tenant, gcra).await {
                Ok(decision) => return decision,
                Err(err) => {
                    tracing::warn!(error = %err, "throttle decision in Redis failed; deciding in this process");
                }
            }
        }
        self.local_check(tenant, gcra)
    }

    fn local_check(&self, tenant: Uuid, gcra: Gcra) -> Decision {
        let shard = &self.local[(tenant.as_u128() % SHARDS as u128) as usize];
        let mut tats = shard.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_us();
        let decision = gcra.decide(tats.get(&tenant).copied(), now);
        if decision.allowed {
            tats.insert(tenant, decision.tat_us);
        }
        if tats.len() > 10_000 {
            tats.retain(|_, tat| *tat > now);
        }
        decision
    }

    async fn remote(
        redis: &Redis,
        tenant: Uuid,
        gcra: Gcra,
    ) -> Result<Decision, fred::error::Error> {
        use fred::prelude::*;
        let keys = vec![format!("tenlyr:throttle:{tenant}")];
        let args = vec![gcra.interval_us.to_string(), gcra.tolerance_us.to_string()];
        let client = redis.client();
        let mut result: Result<Vec<i64>, fred::error::Error> = client
            .evalsha(GCRA_SHA.as_str(), keys.clone(), args.clone())
            .await;
        if let Err(err) = &result
            && err.details().starts_with("NOSCRIPT")
        {
            result = client.eval(GCRA, keys, args).await;
        }
        let r = result?;
        let (allowed, remaining, wait) = match r.as_slice() {
            [a, r, w] => (*a == 1, *r, *w),
            _ => {
                return Err(fred::error::Error::new(
                    fred::error::ErrorKind::Parse,
                    "unexpected GCRA script reply",
                ));
            }
        };
        Ok(Decision {
            allowed,
            remaining: remaining.max(0),
            wait: Duration::from_micros(wait.max(0) as u64),
            tat_us: 0,
        })
    }
}
