//! Key resolution with a two-level cache (in-process, then Redis when
//! configured; 60 s TTL) and invalidation that reaches every replica at
//! once: a rotate, revoke, suspend or delete evicts the local entries,
//! deletes the Redis entries, leaves a short-lived "invalidated at" marker
//! per key (so a lookup that read the old row just before cannot re-plant a
//! stale entry) and publishes the change for the other replicas.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Credential, Principal};
use crate::{
    domain::{
        keys::{self, KeyHasher, KeyKind, hex},
        tenant::{PlanLimits, TenantStatus},
    },
    error::ApiError,
    storage::{Db, admin_keys, entities::tenant, redis::Redis, tenant_data::Scope, tenants},
};

const TTL: Duration = Duration::from_secs(60);
const MARKER_TTL_SECS: i64 = 120;
const MAX_ENTRIES: usize = 100_000;
/// How long a lookup stays in this replica's memory while it is not
/// subscribed to invalidations (Redis configured but the subscription
/// down): a revoked key is refused here within this bound.
pub const UNSUBSCRIBED_TTL: Duration = Duration::from_secs(3);
const MODE_UNSUBSCRIBED: u8 = 0;
const MODE_SUBSCRIBED: u8 = 1;

/// How this replica learns of other replicas' key changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidationMode {
    /// No Redis: one node, every change is local.
    SingleNode,
    /// Subscribed to the invalidation channel: lookups cached 60 s.
    Subscribed,
    /// Redis configured, subscription down: lookups cached at most
    /// [`UNSUBSCRIBED_TTL`] while the subscriber retries.
    Unsubscribed,
}

impl InvalidationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SingleNode => "single-node",
            Self::Subscribed => "subscribed",
            Self::Unsubscribed => "unsubscribed",
        }
    }
}
pub const INVALIDATION_CHANNEL: &str = "tenlyr:keys:invalidate";

/// What a key resolves to; cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    pub key_id: Uuid,
    /// `None` for admin keys.
    pub tenant_id: Option<Uuid>,
    pub tenant_status: Option<String>,
    /// What requests of a tenant key need to know of their tenant.
    pub tenant: Option<Arc<TenantFacts>>,
}

/// The facts of a tenant that a key lookup carries, so hot paths
/// (GetMetrics) need no tenant read: they change only with a plan or time
/// zone change, which invalidates the tenant's keys like a suspension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantFacts {
    pub time_zone: String,
    /// The limits in force (the tenant's own, else its plan's).
    pub limits: PlanLimits,
    /// Its throttle, requests per minute (`None`: not throttled).
    #[serde(default)]
    pub rate_limit: Option<i32>,
}

impl TenantFacts {
    pub fn of(tenant: &tenant::Model) -> Self {
        Self {
            time_zone: tenant.time_zone.clone(),
            limits: super::tenants::limits(tenant),
            rate_limit: tenant.rate_limit,
        }
    }
}

/// A Redis cache entry: the resolution and when its row was read.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Shared {
    resolved: Resolved,
    read_at_ms: i64,
}

/// What the other replicas are told to forget.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Invalidation {
    /// Hex digests of keys.
    pub digests: Vec<String>,
}

struct Entry {
    resolved: Resolved,
    expires: Instant,
}

#[derive(Default)]
struct LocalCache {
    entries: RwLock<HashMap<Vec<u8>, Entry>>,
    /// Bumped by every invalidation; a lookup that started before one does
    /// not store its (possibly stale) result.
    generation: AtomicU64,
}

impl LocalCache {
    fn get(&self, digest: &[u8]) -> Option<Resolved> {
        let entries = self.entries.read().expect("cache lock");
        entries
            .get(digest)
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.resolved.clone())
    }

    fn insert(&self, digest: Vec<u8>, resolved: Resolved, generation: u64, ttl: Duration) {
        let mut entries = self.entries.write().expect("cache lock");
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            digest,
            Entry {
                resolved,
                expires: Instant::now() + ttl,
            },
        );
    }

    fn evict(&self, digests: &[Vec<u8>]) {
        let mut entries = self.entries.write().expect("cache lock");
        self.generation.fetch_add(1, Ordering::AcqRel);
        for digest in digests {
            entries.remove(digest);
        }
    }
}

/// Last-use times recorded in memory on every authenticated request and
/// written in batches by [`KeyResolver::run_activity_flusher`].
#[derive(Default)]
struct Activity {
    tenants: HashMap<Uuid, DateTime<Utc>>,
    keys: HashMap<Uuid, DateTime<Utc>>,
}

pub struct KeyResolver {
    db: Db,
    hasher: Arc<KeyHasher>,
    redis: Option<Redis>,
    local: LocalCache,
    activity: Mutex<Activity>,
    /// `MODE_SUBSCRIBED` while the invalidation subscription is live.
    mode: AtomicU8,
    /// Lookups answered by this process's cache, by the shared (Redis)
    /// cache, and by Postgres.
    lookups: [std::sync::atomic::AtomicU64; 3],
}

impl std::fmt::Debug for KeyResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyResolver")
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// v2: entries carry the tenant's facts.
fn entry_key(digest_hex: &str) -> String {
    format!("tenlyr:key:v2:{digest_hex}")
}

fn marker_key(digest_hex: &str) -> String {
    format!("tenlyr:key-invalidated:{digest_hex}")
}

impl KeyResolver {
    pub fn new(db: Db, hasher: Arc<KeyHasher>, redis: Option<Redis>) -> Self {
        Self {
            db,
            hasher,
            redis,
            local: LocalCache::default(),
            activity: Mutex::default(),
            mode: AtomicU8::new(MODE_UNSUBSCRIBED),
            lookups: Default::default(),
        }
    }

    /// Key lookups so far: `(local hits, shared hits, misses)`.
    pub fn lookups(&self) -> (u64, u64, u64) {
        let [a, b, c] = &self.lookups;
        (
            a.load(Ordering::Relaxed),
            b.load(Ordering::Relaxed),
            c.load(Ordering::Relaxed),
        )
    }

    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// Resolves a presented key to a principal: 401 unless the key is live
    /// and, for tenant keys, its tenant is active.
    pub async fn authenticate(&self, key: &str) -> Result<Principal, ApiError> {
        let kind = keys::parse(key)
            .map_err(|err| ApiError::unauthenticated(format!("invalid API key: {err}")))?;
        let digest = self.hasher.digest(key);
        let resolved = match self.local.get(&digest) {
            Some(resolved) => {
                self.lookups[0].fetch_add(1, Ordering::Relaxed);
                resolved
            }
            None => self.resolve_slow(kind, digest).await?,
        };
        match (kind, resolved.tenant_id, resolved.tenant) {
            (KeyKind::Admin, _, _) => Ok(Principal::Admin {
                via: Credential::Key(resolved.key_id),
            }),
            (KeyKind::Tenant, Some(tenant_id), Some(tenant)) => {
                let status = resolved
                    .tenant_status
                    .as_deref()
                    .and_then(TenantStatus::parse);
                if status != Some(TenantStatus::Active) {
                    let status = resolved.tenant_status.as_deref().unwrap_or("unknown");
                    return Err(ApiError::unauthenticated(format!("tenant is {status}")));
                }
                self.record_activity(tenant_id, resolved.key_id);
                Ok(Principal::Tenant {
                    tenant_id,
                    via: Credential::Key(resolved.key_id),
                    tenant,
                })
            }
            (KeyKind::Tenant, _, _) => Err(ApiError::unauthenticated("unknown or revoked API key")),
        }
    }

    async fn resolve_slow(&self, kind: KeyKind, digest: Vec<u8>) -> Result<Resolved, ApiError> {
        let generation = self.local.generation.load(Ordering::Acquire);
        let digest_hex = hex(&digest);
        if let Some(resolved) = self.shared_get(&digest_hex).await {
            self.lookups[1].fetch_add(1, Ordering::Relaxed);
            self.local
                .insert(digest, resolved.clone(), generation, self.local_ttl());
            return Ok(resolved);
        }
        self.lookups[2].fetch_add(1, Ordering::Relaxed);
        let read_at_ms = Utc::now().timestamp_millis();
        let resolved = match kind {
            KeyKind::Admin => admin_keys::find_active(&self.db, &digest)
                .await?
                .filter(|row| self.hasher.verify_digest(&digest, &row.key_digest))
                .map(|row| Resolved {
                    key_id: row.id,
                    tenant_id: None,
                    tenant_status: None,
                    tenant: None,
                }),
            KeyKind::Tenant => {
                let tx = self.db.begin(Scope::Platform).await?;
                let found = tenants::key_by_digest(&tx, &digest).await?;
                tx.commit().await?;
                found
                    .filter(|(key, _)| self.hasher.verify_digest(&digest, &key.key_digest))
                    .map(|(key, tenant)| Resolved {
                        key_id: key.id,
                        tenant_id: Some(tenant.id),
                        tenant: Some(Arc::new(TenantFacts::of(&tenant))),
                        tenant_status: Some(tenant.status),
                    })
            }
        }
        .ok_or_else(|| ApiError::unauthenticated("unknown or revoked API key"))?;
        self.local
            .insert(digest, resolved.clone(), generation, self.local_ttl());
        self.shared_set(&digest_hex, &resolved, read_at_ms).await;
        Ok(resolved)
    }

    async fn shared_get(&self, digest_hex: &str) -> Option<Resolved> {
        let redis = self.redis.as_ref()?;
        let values: Result<Vec<Option<String>>, _> = redis
            .client()
            .mget(vec![entry_key(digest_hex), marker_key(digest_hex)])
            .await;
        let values = values
            .map_err(|err| tracing::warn!(error = %err, "redis key cache read failed"))
            .ok()?;
        let shared: Shared = serde_json::from_str(values.first()?.as_deref()?).ok()?;
        let marker: Option<i64> = values
            .get(1)
            .cloned()
            .flatten()
            .and_then(|m| m.parse().ok());
        match marker {
            Some(invalidated_at) if shared.read_at_ms <= invalidated_at => None,
            _ => Some(shared.resolved),
        }
    }

    async fn shared_set(&self, digest_hex: &str, resolved: &Resolved, read_at_ms: i64) {
        let Some(redis) = &self.redis else { return };
        let Ok(value) = serde_json::to_string(&Shared {
            resolved: resolved.clone(),
            read_at_ms,
        }) else {
            return;
        };
        let result: Result<(), _> = redis
            .client()
            .set(
                entry_key(digest_hex),
                value,
                Some(Expiration::EX(TTL.as_secs() as i64)),
                None,
                false,
            )
            .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, "redis key cache write failed");
        }
    }

    /// Forgets these keys here, in Redis, and (by pub/sub) on every other
    /// replica. Called after the change committed.
    pub async fn invalidate(&self, digests: Vec<Vec<u8>>) {
        if digests.is_empty() {
            return;
        }
        self.local.evict(&digests);
        let Some(redis) = &self.redis else { return };
        let hexes: Vec<String> = digests.iter().map(|d| hex(d)).collect();
        let now_ms = Utc::now().timestamp_millis().to_string();
        let pipeline = redis.client().pipeline();
        for digest_hex in &hexes {
            let _: Result<(), _> = pipeline.del(entry_key(digest_hex)).await;
            let _: Result<(), _> = pipeline
                .set(
                    marker_key(digest_hex),
                    now_ms.clone(),
                    Some(Expiration::EX(MARKER_TTL_SECS)),
                    None,
                    false,
                )
                .await;
        }
        let message = serde_json::to_string(&Invalidation { digests: hexes }).unwrap_or_default();
        let _: Result<(), _> = pipeline.publish(INVALIDATION_CHANNEL, message).await;
        let result: Result<Vec<Value>, _> = pipeline.all().await;
        if let Err(err) = result {
            tracing::error!(error = %err, "publishing a key invalidation failed; other replicas may keep the key up to 60 s");
        }
    }

    /// Applies an invalidation another replica published.
    pub fn apply_published(&self, message: &str) {
        if let Ok(invalidation) = serde_json::from_str::<Invalidation>(message) {
            let digests: Vec<Vec<u8>> = invalidation
                .digests
                .iter()
                .filter_map(|h| unhex(h))
                .collect();
            self.local.evict(&digests);
        }
    }

    /// Whether this replica hears other replicas' invalidations, and what
    /// it does when it does not. The subscriber worker
    /// (`workers::key_invalidation`) sets it; every change of state empties
    /// the local cache, since invalidations may have been missed.
    pub fn set_subscribed(&self, subscribed: bool) {
        let mode = if subscribed {
            MODE_SUBSCRIBED
        } else {
            MODE_UNSUBSCRIBED
        };
        self.mode.store(mode, Ordering::Release);
        self.forget_all();
    }

    /// Empties this replica's key cache (invalidations may have been
    /// missed).
    pub fn forget_all(&self) {
        self.local.evict_all();
    }

    /// How keys are cached now, for `/readyz`.
    pub fn invalidation(&self) -> InvalidationMode {
        if self.redis.is_none() {
            return InvalidationMode::SingleNode;
        }
        match self.mode.load(Ordering::Acquire) {
            MODE_SUBSCRIBED => InvalidationMode::Subscribed,
            _ => InvalidationMode::Unsubscribed,
        }
    }

    /// How long this replica may keep a key lookup in memory.
    fn local_ttl(&self) -> Duration {
        match self.invalidation() {
            InvalidationMode::Unsubscribed => UNSUBSCRIBED_TTL,
            _ => TTL,
        }
    }

    pub fn redis(&self) -> Option<&Redis> {
        self.redis.as_ref()
    }

    fn record_activity(&self, tenant_id: Uuid, key_id: Uuid) {
        let now = Utc::now();
        let mut activity = self.activity.lock().expect("activity lock");
        activity.tenants.insert(tenant_id, now);
        activity.keys.insert(key_id, now);
    }

    /// The in-memory last-activity time of a tenant not yet written.
    pub fn pending_activity(&self, tenant_id: Uuid) -> Option<DateTime<Utc>> {
        self.activity
            .lock()
            .expect("activity lock")
            .tenants
            .get(&tenant_id)
            .copied()
    }

    /// Writes recorded activity (the activity worker calls this every 2 s
    /// and at shutdown), so authentication itself never writes.
    pub async fn flush_activity(&self) -> Result<(), sea_orm::DbErr> {
        let batch = std::mem::take(&mut *self.activity.lock().expect("activity lock"));
        if batch.tenants.is_empty() {
            return Ok(());
        }
        let tenants: Vec<_> = batch.tenants.into_iter().collect();
        let keys: Vec<_> = batch.keys.into_iter().collect();
        let tx = self.db.begin(Scope::Platform).await?;
        tenants::touch(&tx, &tenants, &keys).await?;
        tx.commit().await
    }
}

impl LocalCache {
    fn evict_all(&self) {
        let mut entries = self.entries.write().expect("cache lock");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes = vec![0, 15, 255, 16];
        assert_eq!(unhex(&hex(&bytes)).unwrap(), bytes);
        assert!(unhex("zz").is_none());
    }

    #[test]
    fn a_lookup_that_started_before_an_invalidation_is_not_cached() {
        let cache = LocalCache::default();
        let resolved = Resolved {
            key_id: Uuid::nil(),
            tenant_id: None,
            tenant_status: None,
            tenant: None,
        };
        let before = cache.generation.load(Ordering::Acquire);
        cache.evict(&[vec![1]]);
        cache.insert(vec![1], resolved.clone(), before, TTL);
        assert!(cache.get(&[1]).is_none());
        cache.insert(
            vec![1],
            resolved.clone(),
            cache.generation.load(Ordering::Acquire),
            TTL,
        );
        assert_eq!(cache.get(&[1]), Some(resolved));
    }
}
