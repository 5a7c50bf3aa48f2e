//! The inbound webhook gateway (`002_e947b442571a306e.txt`, DESIGN.md §8):
//! authenticate (tenant key or slug), verify the provider's signature over
//! the raw bytes, dedupe by tenant + provider + event id, log, forward the
//! normalized payload through the delivery engine; and the tenant's event
//! history with retry.
//!
//! Logging is a group commit like usage ingestion: verified webhooks queue
//! for one committer (per two cores), which logs whatever queued while its
//! previous commit ran in one statement (`tenlyr_log_inbound`); each
//! request is answered after the commit that holds it. When Postgres is
//! unreachable the batch goes to the fsynced spool instead and is answered
//! 202; `workers::inbound` drains the spool into the log when Postgres
//! returns, deduped as usual.

use std::{
    collections::{HashMap, HashSet},
    io::Write as _,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, SecondsFormat, Utc};
use http::HeaderMap;
use serde_json::{Map, Value as Json, json};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Actor, paypal::PaypalVerifier};
use crate::workers::inbound::InboundLogWorker;
use crate::{
    domain::{
        inbound::{self as rules, Provider, Rejection},
        secrets::SecretBox,
        webhook::new_event_id,
    },
    error::{ApiError, ErrorCode},
    storage::{
        Db,
        inbound::{self as repo, EventFilter, EventRow, InboundRow, Retried},
        is_connection_error, is_sqlx_unavailable,
        tenant_data::{Place, Scope},
        tenants as tenant_repo,
        webhooks::AttemptRow,
    },
    workers::SharedClock,
};

/// How long a tenant's inbound settings are used before they are read
/// again; a change made on another replica takes effect within this.
pub const CONFIG_TTL: Duration = Duration::from_secs(5);
/// After Postgres was found unreachable, webhooks go straight to the spool
/// for this long instead of waiting for a connection each.
const UNAVAILABLE_FOR: Duration = Duration::from_secs(1);
/// Webhooks per log statement, at most.
pub const MAX_COMMIT: usize = 2000;
/// Queued webhooks per committer before receivers wait.
const QUEUE: usize = 8192;

pub const DEFAULT_PAGE: u64 = 50;
pub const MAX_PAGE: u64 = 200;

/// Whether the gateway is saturated: the webhooks found queued behind each
/// log commit, averaged over the last commits, reached [`PRESSURE_GROUP`]
/// within the last [`PRESSURE_HOLD`]. The delivery dispatcher reads it and
/// forwards in paced batches meanwhile: acknowledging providers (who time
/// out and retry) comes first, and the forwarding backlog is sent once the
/// burst is over.
///
/// An average, not one commit: a single stall of the machine (15-20 ms at
/// 1,000 webhooks/s) leaves one large group behind it, and pacing
/// forwarding for each such stall left it behind a steady 1,000/s.
#[derive(Debug, Clone, Default)]
pub struct Pressure(Arc<PressureState>);

#[derive(Debug, Default)]
struct PressureState {
    /// Unix millis until which the gateway counts as saturated.
    until: AtomicI64,
    /// Moving average of the webhooks per commit, in 1/16ths.
    average: AtomicU32,
}

/// How long one sign of saturation counts.
pub const PRESSURE_HOLD: Duration = Duration::from_millis(250);
/// The average webhooks per commit that means saturation (at 1,000/s a
/// commit finds one or two).
const PRESSURE_GROUP: u32 = 8;
/// The moving average's weight of the newest commit: 1/8.
const PRESSURE_WEIGHT_SHIFT: u32 = 3;

impl Pressure {
    /// Marks the gateway saturated for [`PRESSURE_HOLD`] (the gateway calls
    /// it; a test holds it to drive the dispatcher's paced batches).
    pub fn raise(&self) {
        let until = Utc::now().timestamp_millis() + PRESSURE_HOLD.as_millis() as i64;
        self.0.until.store(until, Ordering::Relaxed);
    }

    /// Counts one commit of `webhooks` into the average; raises the
    /// pressure when the average reaches [`PRESSURE_GROUP`].
    pub fn observe(&self, webhooks: usize) {
        let sample = u32::try_from(webhooks).unwrap_or(u32::MAX).min(1 << 20) << 4;
        // A step of 1/8 of the gap, rounded away from the average, so it
        // reaches the sample in either direction (rounding down stalled a
        // steady 8 per commit at 7.56, below the threshold).
        let step = |avg: u32| {
            let gap = i64::from(sample) - i64::from(avg);
            let moved = if gap > 0 {
                (gap + (1 << PRESSURE_WEIGHT_SHIFT) - 1) >> PRESSURE_WEIGHT_SHIFT
            } else {
                gap >> PRESSURE_WEIGHT_SHIFT
            };
            (i64::from(avg) + moved) as u32
        };
        // Always `Ok` (the update never declines): the average before it.
        let before = self
            .0
            .average
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| Some(step(avg)))
            .unwrap_or_else(|avg| avg);
        if step(before) >= PRESSURE_GROUP << 4 {
            self.raise();
        }
    }

    pub fn active(&self) -> bool {
        Utc::now().timestamp_millis() < self.0.until.load(Ordering::Relaxed)
    }
}

/// How a webhook was addressed.
#[derive(Debug, Clone, Copy)]
pub enum Addressed<'a> {
    /// `POST /v1/webhooks/{provider}` with the tenant's key.
    Tenant(Uuid),
    /// `POST /v1/t/{slug}/webhooks/{provider}`: the signature is the only
    /// credential.
    Slug(&'a str),
}

/// What became of an accepted webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Logged (and forwarding when a callback URL is set): 200.
    Logged,
    /// A duplicate of a logged event: 200 with `cached: true`.
    Duplicate,
    /// Spooled durably while Postgres is unreachable: 202.
    Queued,
}

/// One provider's settings as the gateway uses them (secrets opened;
/// `Debug` shows whether they are set, never what they are).
#[derive(Clone, Default)]
struct ProviderConfig {
    enabled: bool,
    secret: Option<String>,
    previous: Option<(String, DateTime<Utc>)>,
    paypal_webhook_id: Option<String>,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("enabled", &self.enabled)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field(
                "previous_until",
                &self.previous.as_ref().map(|(_, until)| until),
            )
            .field("paypal_webhook_id", &self.paypal_webhook_id)
            .finish()
    }
}

impl ProviderConfig {
    fn secrets_at(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut out: Vec<&str> = self.secret.iter().map(String::as_str).collect();
        if let Some((previous, until)) = &self.previous
            && now < *until
        {
            out.push(previous);
        }
        out
    }
}

#[derive(Debug)]
struct TenantConfig {
    tenant_id: Uuid,
    active: bool,
    providers: HashMap<Provider, ProviderConfig>,
}

/// Tenants' inbound settings, read through and kept [`CONFIG_TTL`]; kept
/// longer, and used, while Postgres is unreachable (a webhook for a tenant
/// seen before the outage is still verified and spooled).
#[derive(Debug, Default)]
pub struct InboundConfigCache {
    by_tenant: Mutex<HashMap<Uuid, (Instant, Arc<TenantConfig>)>>,
    by_slug: Mutex<HashMap<String, Uuid>>,
}

impl InboundConfigCache {
    /// Drops a tenant's entry (its settings changed on this replica).
    pub fn forget(&self, tenant: Uuid) {
        self.by_tenant.lock().expect("config cache").remove(&tenant);
    }

    /// The cached entry; when it is older than [`CONFIG_TTL`], `None` for
    /// the one caller that then reloads it (its age restarts now) while
    /// every other caller keeps the entry: one reload per tenant, not one
    /// per request in flight.
    fn fresh(&self, tenant: Uuid, stale_ok: bool) -> Option<Arc<TenantConfig>> {
        let mut map = self.by_tenant.lock().expect("config cache");
        let (at, config) = map.get_mut(&tenant)?;
        if stale_ok || at.elapsed() < CONFIG_TTL {
            return Some(config.clone());
        }
        *at = Instant::now();
        None
    }

    fn remember(&self, slug: String, config: Arc<TenantConfig>) {
        let mut map = self.by_tenant.lock().expect("config cache");
        if map.len() > 100_000 {
            map.clear();
        }
        map.insert(config.tenant_id, (Instant::now(), config.clone()));
        drop(map);
        let mut slugs = self.by_slug.lock().expect("config cache");
        if slugs.len() > 100_000 {
            slugs.clear();
        }
        slugs.insert(slug, config.tenant_id);
    }

    /// Forgets a tenant that no longer exists (and its slug).
    fn evict(&self, tenant: Option<Uuid>, to: Addressed<'_>) {
        if let Some(id) = tenant {
            self.forget(id);
        }
        if let Addressed::Slug(slug) = to {
            self.by_slug.lock().expect("config cache").remove(slug);
        }
    }

    fn slug(&self, slug: &str) -> Option<Uuid> {
        self.by_slug
            .lock()
            .expect("config cache")
            .get(slug)
            .copied()
    }
}

/// A batch of verified webhooks waiting for its commit.
#[derive(Debug)]
pub(crate) struct LogSubmission {
    pub(crate) row: InboundRow,
    pub(crate) reply: oneshot::Sender<Result<Accepted, ApiError>>,
}

/// The durable spool for webhooks accepted while Postgres is unreachable:
/// JSON lines appended and fsynced before the 202 is sent.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    draining: PathBuf,
    /// Spooled rows Postgres refused (not for being unreachable).
    dead: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl Spool {
    pub fn new(dir: &std::path::Path) -> Self {
        Self {
            path: dir.join("inbound-spool.jsonl"),
            draining: dir.join("inbound-spool.draining.jsonl"),
            dead: dir.join("inbound-spool.dead.jsonl"),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    async fn dead_letter(&self, row: &InboundRow) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(row)?;
        line.push(b'\n');
        let path = self.dead.clone();
        tokio::task::spawn_blocking(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            file.write_all(&line)?;
            file.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Appends rows and syncs them to disk (a new file's directory too).
    /// Each append starts with a newline: a line torn by an earlier crash
    /// or failed write ends there and never swallows the rows after it.
    pub async fn append(&self, rows: Vec<InboundRow>) -> std::io::Result<()> {
        let _guard = self.lock.lock().await;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![b'\n'];
            for row in &rows {
                serde_json::to_writer(&mut buf, row)?;
                buf.push(b'\n');
            }
            let dir = path.parent().map(std::path::Path::to_path_buf);
            if let Some(dir) = &dir {
                std::fs::create_dir_all(dir)?;
            }
            let created = !path.exists();
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(&buf)?;
            file.sync_data()?;
            if created && let Some(dir) = &dir {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Logs what the spool holds; how many rows it handed to the log.
    /// Rows stay spooled until a log call took them; a crash in between
    /// logs them again, which the dedup key absorbs.
    pub async fn drain(&self, db: &Db) -> anyhow::Result<usize> {
        {
            let _guard = self.lock.lock().await;
            if !tokio::fs::try_exists(&self.draining).await? {
                match tokio::fs::rename(&self.path, &self.draining).await {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                    Err(err) => return Err(err.into()),
                }
            }
        }
        let bytes = tokio::fs::read(&self.draining).await?;
        let mut rows = Vec::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<InboundRow>(line) {
                Ok(row) => rows.push(row),
                // A line torn by a crash was never acknowledged.
                Err(err) => tracing::warn!(error = %err, "skipping a torn spool line"),
            }
        }
        for chunk in rows.chunks(MAX_COMMIT) {
            match repo::log(db, chunk).await {
                Ok(_) => {}
                Err(err) if is_sqlx_unavailable(&err) => return Err(err.into()),
                // One bad row must not hold the rest: log them one by
                // one; a row Postgres refuses goes to the dead-letter
                // file beside the spool, kept for an operator.
                Err(err) => {
                    tracing::error!(error = %err, "a spooled batch was refused; logging its rows one by one");
                    for row in chunk {
                        match repo::log(db, std::slice::from_ref(row)).await {
                            Ok(_) => {}
                            Err(err) if is_sqlx_unavailable(&err) => return Err(err.into()),
                            Err(err) => {
                                tracing::error!(error = %err, event = %row.id, "dead-lettering a spooled webhook");
                                self.dead_letter(row).await?;
                            }
                        }
                    }
                }
            }
        }
        tokio::fs::remove_file(&self.draining).await?;
        if !rows.is_empty() {
            tracing::info!(
                webhooks = rows.len(),
                "drained the inbound spool into the log"
            );
        }
        Ok(rows.len())
    }
}

/// The gateway.
#[derive(Clone, Debug)]
pub struct Gateway {
    db: Db,
    secrets: SecretBox,
    clock: SharedClock,
    cache: Arc<InboundConfigCache>,
    paypal: PaypalVerifier,
    shards: Arc<[mpsc::Sender<LogSubmission>]>,
    pressure: Pressure,
    metrics: Arc<crate::metrics::Metrics>,
}

/// The committing half, run by `workers::inbound::InboundLogWorker` (one
/// loop per shard, all sharing this).
#[derive(Debug, Clone)]
pub struct Committer {
    pub(crate) db: Db,
    pub(crate) spool: Arc<Spool>,
    /// Unix millis until which Postgres counts as unreachable.
    pub(crate) down_until: Arc<AtomicI64>,
    pub(crate) pressure: Pressure,
}

fn rejected(r: &Rejection) -> ApiError {
    let reason = match r {
        Rejection::InvalidSignature => "INVALID_SIGNATURE",
        Rejection::MissingEventId => "MISSING_EVENT_ID",
        Rejection::InvalidPayload(_) => "INVALID_PAYLOAD",
    };
    ApiError::bad_request(r.message()).with_reason(reason)
}

fn not_allowed() -> ApiError {
    ApiError::new(ErrorCode::PermissionDenied, "tenant not allowed")
        .with_reason("TENANT_NOT_ALLOWED")
}

fn millis(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Gateway {
    pub fn new(
        db: Db,
        secrets: SecretBox,
        clock: SharedClock,
        cache: Arc<InboundConfigCache>,
        paypal: PaypalVerifier,
        spool: Arc<Spool>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> (Self, InboundLogWorker) {
        let count = super::metering::committers().0;
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..count).map(|_| mpsc::channel(QUEUE)).unzip();
        let pressure = Pressure::default();
        let gateway = Self {
            db: db.clone(),
            secrets,
            clock,
            cache,
            paypal,
            shards: senders.into(),
            pressure: pressure.clone(),
            metrics,
        };
        let committer = Committer {
            db,
            spool,
            down_until: Arc::default(),
            pressure,
        };
        (
            gateway,
            InboundLogWorker {
                shards: receivers,
                committer,
            },
        )
    }

    /// The gateway's saturation signal (for the delivery dispatcher).
    pub fn pressure(&self) -> Pressure {
        self.pressure.clone()
    }

    /// Verified webhooks waiting for the log committer.
    pub fn queued(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.max_capacity() - s.capacity())
            .sum()
    }

    /// Receives one webhook: `provider` as the route names it, the request
    /// headers and the exact raw body.
    pub async fn receive(
        &self,
        to: Addressed<'_>,
        provider: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Accepted, ApiError> {
        let provider = Provider::from_name(provider).ok_or_else(|| {
            ApiError::not_found(format!("unknown webhook provider {provider:?}"))
                .with_reason("UNKNOWN_PROVIDER")
        })?;
        let result = self.receive_from(to, provider, headers, body).await;
        let outcome = match &result {
            Ok(Accepted::Logged) => "logged",
            Ok(Accepted::Duplicate) => "duplicate",
            Ok(Accepted::Queued) => "queued",
            Err(err) => match err.reason() {
                "INVALID_SIGNATURE" => "invalid_signature",
                "MISSING_EVENT_ID" => "missing_event_id",
                "INVALID_PAYLOAD" => "invalid_payload",
                "TENANT_NOT_ALLOWED" => "not_allowed",
                "NOT_FOUND" => "unknown_tenant",
                _ => "error",
            },
        };
        self.metrics.inbound(provider.name(), outcome);
        result
    }

    async fn receive_from(
        &self,
        to: Addressed<'_>,
        provider: Provider,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Accepted, ApiError> {
        let config = self.config(to).await?;
        if !config.active {
            return Err(not_allowed());
        }
        let settings = config
            .providers
            .get(&provider)
            .filter(|p| p.enabled)
            .ok_or_else(not_allowed)?;
        let now = self.clock.now();
        match provider {
            Provider::Paypal => {
                let webhook_id = settings
                    .paypal_webhook_id
                    .as_deref()
                    .ok_or_else(not_allowed)?;
                self.paypal
                    .verify(headers, body, webhook_id, now)
                    .await
                    .map_err(|r| rejected(&r))?;
            }
            _ => rules::verify(
                provider,
                headers,
                body,
                &settings.secrets_at(now),
                now.timestamp(),
            )
            .map_err(|r| rejected(&r))?,
        }
        let extracted = rules::extract(provider, headers, body).map_err(|r| rejected(&r))?;
        let id = new_event_id();
        let event_type = rules::normalized_type(provider, &extracted.raw_type);
        let occurred_at = extracted.occurred_at.unwrap_or(now);
        let forwarded: Map<String, Json> = headers
            .iter()
            .filter(|(name, _)| rules::forwarded_header(name.as_str()))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), json!(value.to_str().ok()?)))
            })
            .collect();
        let envelope = json!({
            "id": id,
            "provider": provider.name(),
            "providerRawType": extracted.raw_type,
            "type": event_type,
            "tenantId": config.tenant_id,
            "occurredAt": millis(occurred_at),
            "receivedAt": millis(now),
            "payload": extracted.payload,
            "headers": forwarded,
        });
        let row = InboundRow {
            tenant_id: config.tenant_id,
            id,
            provider: provider.name().to_owned(),
            provider_event_id: extracted.event_id,
            raw_type: extracted.raw_type,
            event_type,
            occurred_at,
            received_at: now,
            body: envelope.to_string(),
        };
        let (reply, done) = oneshot::channel();
        let shard = (config.tenant_id.as_u128() % self.shards.len() as u128) as usize;
        self.shards[shard]
            .send(LogSubmission { row, reply })
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        done.await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?
    }

    /// A tenant's settings, cached; unknown slug or tenant: 404.
    async fn config(&self, to: Addressed<'_>) -> Result<Arc<TenantConfig>, ApiError> {
        let known = match to {
            Addressed::Tenant(id) => Some(id),
            Addressed::Slug(slug) => self.cache.slug(slug),
        };
        if let Some(config) = known.and_then(|id| self.cache.fresh(id, false)) {
            return Ok(config);
        }
        match self.load(to).await {
            Ok(Some(config)) => Ok(config),
            Ok(None) => {
                self.cache.evict(known, to);
                Err(ApiError::not_found("Tenant not found"))
            }
            Err(err) if is_connection_error(&err) => known
                .and_then(|id| self.cache.fresh(id, true))
                .ok_or_else(|| ApiError::from(err)),
            Err(err) => Err(err.into()),
        }
    }

    async fn load(&self, to: Addressed<'_>) -> Result<Option<Arc<TenantConfig>>, sea_orm::DbErr> {
        let tx = self.db.begin(Scope::Platform).await?;
        let found = match to {
            Addressed::Tenant(id) => repo::tenant_inbound(&tx, Some(id), None).await?,
            Addressed::Slug(slug) => repo::tenant_inbound(&tx, None, Some(slug)).await?,
        };
        tx.commit().await?;
        let Some(found) = found else { return Ok(None) };
        let open = |sealed: &Option<Vec<u8>>| {
            sealed
                .as_deref()
                .and_then(|s| self.secrets.open(s))
                .and_then(|plain| String::from_utf8(plain).ok())
        };
        let providers = found
            .providers
            .iter()
            .filter_map(|p| {
                let provider = Provider::from_name(&p.provider)?;
                let previous = open(&p.previous_secret).zip(p.previous_until);
                Some((
                    provider,
                    ProviderConfig {
                        enabled: p.enabled,
                        secret: open(&p.secret),
                        previous,
                        paypal_webhook_id: p.paypal_webhook_id.clone(),
                    },
                ))
            })
            .collect();
        let config = Arc::new(TenantConfig {
            tenant_id: found.tenant_id,
            active: found.status == "active",
            providers,
        });
        self.cache.remember(found.slug, config.clone());
        Ok(Some(config))
    }

    /// The Braintree `bt_challenge` answer for the tenant of `slug`.
    pub async fn braintree_challenge(
        &self,
        slug: &str,
        challenge: &str,
    ) -> Result<String, ApiError> {
        let config = self.config(Addressed::Slug(slug)).await?;
        let settings = config
            .providers
            .get(&Provider::Braintree)
            .filter(|p| p.enabled && config.active)
            .ok_or_else(not_allowed)?;
        settings
            .secret
            .as_deref()
            .and_then(|s| rules::braintree_challenge(s, challenge))
            .ok_or_else(|| {
                ApiError::bad_field("bt_challenge", "must be 1 to 200 letters and digits")
            })
    }
}

impl Committer {
    /// Logs one batch; the answer for each submission.
    pub(crate) async fn commit(&self, group: Vec<LogSubmission>) {
        self.pressure.observe(group.len());
        let now_ms = Utc::now().timestamp_millis();
        let rows: Vec<InboundRow> = group.iter().map(|s| s.row.clone()).collect();
        let result = if now_ms < self.down_until.load(Ordering::Relaxed) {
            None
        } else {
            Some(repo::log(&self.db, &rows).await)
        };
        match result {
            Some(Ok(new_ids)) => {
                let new_ids: HashSet<String> = new_ids.into_iter().collect();
                for s in group {
                    let fresh = new_ids.contains(&s.row.id);
                    let _ = s.reply.send(Ok(if fresh {
                        Accepted::Logged
                    } else {
                        Accepted::Duplicate
                    }));
                }
                return;
            }
            Some(Err(err)) if !is_sqlx_unavailable(&err) => {
                tracing::error!(error = %err, webhooks = group.len(), "logging webhooks failed");
                for s in group {
                    let _ = s
                        .reply
                        .send(Err(ApiError::internal("logging the webhook failed")));
                }
                return;
            }
            Some(Err(err)) => {
                self.down_until.store(
                    now_ms + UNAVAILABLE_FOR.as_millis() as i64,
                    Ordering::Relaxed,
                );
                tracing::warn!(error = %err, "Postgres unreachable: spooling webhooks");
            }
            // Found unreachable within the last second: straight to the spool.
            None => {}
        }
        match self.spool.append(rows).await {
            Ok(()) => {
                for s in group {
                    let _ = s.reply.send(Ok(Accepted::Queued));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "spooling webhooks failed");
                for s in group {
                    let _ = s.reply.send(Err(ApiError::unavailable(
                        "the webhook could not be stored; send it again",
                    )));
                }
            }
        }
    }
}

/// An event as the history shows it.
#[derive(Debug, Clone)]
pub struct EventView {
    pub event: EventRow,
    /// `payload` and `headers` of the forwarded body (one event only).
    pub payload: Option<Json>,
    pub headers: Option<Json>,
    pub attempts: Vec<AttemptRow>,
}

/// The tenant's event history and retries.
#[derive(Clone, Debug)]
pub struct WebhookEvents {
    db: Db,
    clock: SharedClock,
}

/// A page of events and the cursor of the next.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub data: Vec<EventView>,
    pub next_cursor: Option<String>,
}

impl WebhookEvents {
    pub fn new(db: Db, clock: SharedClock) -> Self {
        Self { db, clock }
    }

    pub async fn list(
        &self,
        actor: &Actor,
        filter: EventFilter,
        limit: Option<u64>,
        cursor: Option<&str>,
    ) -> Result<EventPage, ApiError> {
        let tenant = actor.tenant()?;
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::bad_field(
                "limit",
                format!("must be 1 to {MAX_PAGE}"),
            ));
        }
        if let Some(c) = cursor
            && !(c.starts_with("evt_") && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            return Err(ApiError::bad_field(
                "cursor",
                "is not a cursor this API returned",
            ));
        }
        // Text Postgres can hold (no NUL) and a type could be: a filter
        // that no event can match is a client mistake, not a 500.
        if let Some(t) = filter.event_type.as_deref()
            && (t.len() > 255 || t.chars().any(char::is_control))
        {
            return Err(ApiError::bad_field(
                "type",
                "must be at most 255 characters, without control characters",
            ));
        }
        let data = self.db.for_tenant(tenant).await?;
        let tx = data.begin(actor.scope()?).await?;
        let mut rows = repo::events_page(&tx, tenant, &filter, cursor, limit + 1).await?;
        tx.commit().await?;
        let next_cursor = (rows.len() as u64 > limit).then(|| {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.id.clone()).unwrap_or_default()
        });
        Ok(EventPage {
            data: rows
                .into_iter()
                .map(|event| EventView {
                    event,
                    payload: None,
                    headers: None,
                    attempts: Vec::new(),
                })
                .collect(),
            next_cursor,
        })
    }

    pub async fn get(&self, actor: &Actor, id: &str) -> Result<EventView, ApiError> {
        let tenant = actor.tenant()?;
        let (event, body) = self.find(actor, tenant, id).await?;
        // The payload and the attempts are the delivery engine's, in the
        // main database wherever the event is.
        let tx = self.db.begin(actor.scope()?).await?;
        let body = match body {
            Some(body) => Some(body),
            None => repo::event_body(&tx, id).await?,
        };
        let attempts = repo::event_attempts(&tx, id).await?;
        tx.commit().await?;
        let mut body: Option<Map<String, Json>> = body.and_then(|b| serde_json::from_str(&b).ok());
        Ok(EventView {
            event,
            payload: body.as_mut().and_then(|b| b.remove("payload")),
            headers: body.as_mut().and_then(|b| b.remove("headers")),
            attempts,
        })
    }

    /// Forwards the event to the current callback URL again (audited).
    pub async fn retry(&self, actor: &Actor, id: &str) -> Result<EventView, ApiError> {
        let tenant = actor.tenant()?;
        let now = self.clock.now();
        let place = self.db.placements().place_of(tenant);
        let elsewhere = matches!(place, Some(Place::Database(_)));
        let (event, _) = self.find(actor, tenant, id).await?;
        let tx = self.db.begin(actor.scope()?).await?;
        let endpoint = repo::callback_endpoint(&tx, tenant)
            .await?
            .filter(|e| e.enabled)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::FailedPrecondition,
                    "no callback URL is set: set one in the webhook settings, then retry",
                )
            })?;
        if repo::retry(&tx, id, &event.event_type, endpoint.id, now).await?
            == Retried::AlreadyPending
        {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                "the event is already queued for delivery",
            )
            .with_reason("EVENT_PENDING"));
        }
        if !elsewhere {
            repo::mark_received(&tx, id).await?;
        }
        tenant_repo::audit(
            &tx,
            actor.audit(
                Some(tenant),
                "webhook_event.retry",
                Some(tenant),
                json!({"eventId": id, "provider": event.provider, "type": event.event_type}),
            ),
        )
        .await?;
        tx.commit().await?;
        if elsewhere {
            // In the tenant's own database, after the forward is queued
            // (the delivery's trigger also copies its status there).
            let tx = self
                .db
                .at(place.as_ref())
                .await?
                .begin(actor.scope()?)
                .await?;
            repo::mark_received(&tx, id).await?;
            tx.commit().await?;
        }
        self.get(actor, id).await
    }

    /// The event `id` of `tenant`, where its data lives, with its payload
    /// if that place also holds the delivery engine's tables.
    async fn find(
        &self,
        actor: &Actor,
        tenant: Uuid,
        id: &str,
    ) -> Result<(EventRow, Option<String>), ApiError> {
        let tx = self
            .db
            .for_tenant(tenant)
            .await?
            .begin(actor.scope()?)
            .await?;
        let found = repo::find_event(&tx, tenant, id)
            .await?
            .ok_or_else(|| ApiError::not_found("Webhook event not found"))?;
        tx.commit().await?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::Pressure;

    /// The moving average, in 1/16ths.
    fn average(pressure: &Pressure) -> u32 {
        pressure
            .0
            .average
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    #[test]
    fn one_stall_does_not_pace_forwarding_but_saturation_does() {
        let pressure = Pressure::default();
        // A steady 1,000/s: one or two webhooks per commit, then one commit
        // that found 40 behind a stall of the machine, then steady again.
        for _ in 0..50 {
            pressure.observe(2);
        }
        pressure.observe(40);
        assert!(!pressure.active(), "one stall is not saturation");
        for _ in 0..5 {
            pressure.observe(1);
        }
        // Saturated: every commit finds dozens queued.
        pressure.observe(30);
        pressure.observe(30);
        assert!(pressure.active(), "two full commits in a row are");
    }

    #[test]
    fn a_steady_eight_per_commit_is_saturation() {
        let pressure = Pressure::default();
        for _ in 0..40 {
            pressure.observe(8);
        }
        assert!(pressure.active());
        assert_eq!(average(&pressure), 8 << 4);
    }

    #[test]
    fn the_average_comes_back_down_once_the_burst_is_over() {
        let pressure = Pressure::default();
        for _ in 0..20 {
            pressure.observe(100);
        }
        let during = average(&pressure);
        assert!(during >= 90 << 4, "average {during}/16 in the burst");
        for _ in 0..40 {
            pressure.observe(1);
        }
        let after = average(&pressure);
        assert!(after < 2 << 4, "average {after}/16 after the burst");
    }
}
