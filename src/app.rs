//! Wiring: configuration → storage → workers → transport, start and
//! ordered shutdown (stop accepting → drain in-flight requests → stop the
//! workers → close pools → stop the embedded cluster).

use std::{
    future::Future,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;

use crate::{
    config::{ServeConfig, StorageConfig},
    domain::user::{Lifetimes, LoginLimit},
    domain::{keys::KeyHasher, secrets::SecretBox},
    service::{
        admin_keys::AdminKeys,
        alerts::Alerts,
        billing::Billing,
        counters::LiveCounters,
        events::Outbox,
        health::Health,
        inbound::{Gateway, InboundConfigCache, Spool, WebhookEvents},
        isolation::Isolation,
        keys::KeyResolver,
        metering::{self, Ingest, Metering},
        outbound::{Guard, Outbound},
        paypal::{PaypalConfig, PaypalVerifier},
        records::Records,
        stripe::Stripe,
        tenants::Tenants,
        throttle::Throttle,
        users::{UserSettings, Users},
        webhook_endpoints::WebhookEndpoints,
        webhook_settings::WebhookSettings,
    },
    storage::{
        Db, admin_keys, dedicated::Dedicated, embedded::EmbeddedPostgres, login::AppLogin, migrate,
        redis::Redis,
    },
    transport,
    workers::{
        self, Runtime, SharedClock, SystemClock,
        activity::{self, ActivityFlush},
        billing_sync::BillingSync,
        counters::CounterPublisher,
        health::{AlertCheck, HealthScan},
        inbound::{self as inbound_workers, SpoolDrain},
        isolation::{CleanupJob, Copying, MigrateJob},
        key_invalidation::KeyInvalidation,
        partitions::{self, Partitions},
        periodic::{Election, Periodic},
        queue::{Listener, Queue, Registry, Runner, Wakeups},
        record_expiry::{self, RecordExpiry},
        tenant_data::{self as tenant_data_workers, EventStatusJob, MirrorJob, PlacementRefresh},
        tenant_purge::TenantPurge,
        webhook_delivery::{self, Dispatcher, EventRetention},
    },
};

/// What request handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub db: Db,
    pub keys: Arc<KeyResolver>,
    pub tenants: Tenants,
    pub admin_keys: AdminKeys,
    pub metering: Metering,
    pub records: Records,
    pub webhook_endpoints: WebhookEndpoints,
    pub webhook_settings: WebhookSettings,
    pub inbound: Gateway,
    pub webhook_events: WebhookEvents,
    pub audit: crate::service::audit::AuditLog,
    pub isolation: Isolation,
    pub users: Users,
    pub health: Health,
    pub alerts: Alerts,
    pub billing: Billing,
    pub throttle: Arc<Throttle>,
    pub queue: Queue,
    /// The clock of background work and time-bound state (records,
    /// idempotency keys).
    pub clock: SharedClock,
    pub max_body_bytes: usize,
    pub lifecycle: Lifecycle,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Where the process is in its shutdown.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    /// Shutdown began: `/readyz` answers 503 (requests are still served
    /// during `TENLYR_SHUTDOWN_DELAY_SECS`).
    pub draining: Arc<AtomicBool>,
    /// The listener is closing: requests that still arrive are refused
    /// with 503 / UNAVAILABLE, never half-run.
    pub closing: Arc<AtomicBool>,
}

/// A database URL, possibly backed by an embedded cluster that must be
/// stopped when done.
pub struct Database {
    pub url: String,
    embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// `DATABASE_URL`, or the embedded cluster under the data directory.
    /// `adopt`: a server owns (and stops) a cluster it finds running.
    pub async fn open(config: &StorageConfig, adopt: bool) -> anyhow::Result<Self> {
        match &config.database_url {
            Some(url) => Ok(Self {
                url: url.clone(),
                embedded: None,
            }),
            None => {
                let pg = EmbeddedPostgres::start(&config.data_dir, adopt).await?;
                Ok(Self {
                    url: pg.url(),
                    embedded: Some(pg),
                })
            }
        }
    }

    pub async fn close(self) {
        if let Some(pg) = self.embedded {
            pg.stop().await;
        }
    }
}

/// The key pepper: `TENLYR_KEY_PEPPER`, else `<data dir>/key-pepper`,
/// created once with 32 random bytes.
pub fn key_hasher(config: &StorageConfig) -> anyhow::Result<KeyHasher> {
    if let Some(pepper) = &config.key_pepper {
        anyhow::ensure!(
            pepper.len() >= 16,
            "TENLYR_KEY_PEPPER must be at least 16 characters"
        );
        return Ok(KeyHasher::new(pepper.as_bytes()));
    }
    let path = config.data_dir.join("key-pepper");
    if let Ok(pepper) = std::fs::read(&path) {
        return Ok(KeyHasher::new(&pepper));
    }
    tracing::warn!(path = %path.display(), "TENLYR_KEY_PEPPER is not set; generating a pepper file (replicas must share it)");
    write_new_secret(&path)?;
    Ok(KeyHasher::new(&std::fs::read(&path)?))
}

/// The key that seals secrets at rest: SHA-256 of `TENLYR_SECRETS_KEY`,
/// else `<data dir>/secrets-key`, created once with 32 random bytes.
pub fn secrets_box(config: &StorageConfig) -> anyhow::Result<SecretBox> {
    if let Some(key) = &config.secrets_key {
        anyhow::ensure!(
            key.len() >= 32,
            "TENLYR_SECRETS_KEY must be at least 32 characters"
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        return Ok(SecretBox::new(digest.as_ref()));
    }
    let path = config.data_dir.join("secrets-key");
    if std::fs::metadata(&path).is_err() {
        tracing::warn!(path = %path.display(), "TENLYR_SECRETS_KEY is not set; generating a key file (replicas must share it)");
        write_new_secret(&path)?;
    }
    let key = std::fs::read(&path)?;
    anyhow::ensure!(
        key.len() >= 32,
        "{} holds fewer than 32 bytes",
        path.display()
    );
    Ok(SecretBox::new(&key))
}

/// Writes 32 random bytes to a new file readable by its owner only.
fn write_new_secret(path: &Path) -> anyhow::Result<()> {
    use ring::rand::SecureRandom;
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut pepper = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut pepper)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => file
            .write_all(&pepper)
            .with_context(|| format!("writing {}", path.display())),
        // Another process created it first; use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err).with_context(|| format!("creating {}", path.display())),
    }
}

/// The application pool, after migrations: logged in as `tenlyr_app`
/// (see `storage::login`), with the key pepper.
pub async fn connect(
    storage: &StorageConfig,
    owner_url: &str,
    pool_size: u32,
) -> anyhow::Result<(Db, Arc<KeyHasher>)> {
    migrate::run(owner_url)
        .await
        .context("applying migrations")?;
    let hasher = Arc::new(key_hasher(storage)?);
    let login = AppLogin::new(owner_url, storage.app_database_url.as_deref(), &hasher)?;
    login.grant(owner_url).await?;
    let timeout = Duration::from_millis(storage.statement_timeout_ms);
    let dedicated = Dedicated::new(
        &storage.dedicated_database_urls,
        owner_url,
        hasher.clone(),
        pool_size,
        timeout,
    )?;
    let db = Db::connect(&login, pool_size, timeout)?.with_dedicated(dedicated);
    // Only groups ingest batches; a failure here is retried on demand.
    if let Err(err) = db.placements().refresh(db.pool()).await {
        tracing::warn!(error = %err, "reading tenant placements failed");
    }
    // The cross-tenant views, in case a move's process died between its
    // flip and their rebuild.
    if let Err(err) = sqlx::query("SELECT tenlyr_refresh_placement_views()")
        .execute(db.pool())
        .await
    {
        tracing::warn!(error = %err, "rebuilding the cross-tenant views failed");
    }
    Ok((db, hasher))
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    state: AppState,
    redis: Option<Redis>,
    transport: transport::Transport,
    delay: Duration,
    grace: Duration,
    runtime: Runtime,
}

impl Server {
    /// Migrates, connects, bootstraps the first admin key (printed once on
    /// stdout) and binds the listener.
    pub async fn bind(config: &ServeConfig, database_url: &str) -> anyhow::Result<Self> {
        Self::bind_with_clock(config, database_url, Arc::new(SystemClock)).await
    }

    /// [`Self::bind`] with the clock background work reads (tests move it).
    pub async fn bind_with_clock(
        config: &ServeConfig,
        database_url: &str,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let (db, hasher) =
            connect(&config.storage, database_url, config.storage.db_pool_size).await?;
        if let Some(key) = admin_keys::bootstrap(&db, &hasher).await? {
            tracing::warn!(
                "no admin key existed; created one and printed it on stdout (shown once)"
            );
            println!("{key}");
        }
        let redis = match &config.redis_url {
            Some(url) => Some(Redis::connect(url).await?),
            None => None,
        };
        let runtime = Runtime::new(workers::Context::new(db.clone(), clock));
        let clock = runtime.context().clock.clone();
        let queue = Queue::new(runtime.context().clone());
        let keys = Arc::new(KeyResolver::new(db.clone(), hasher, redis.clone()));
        let outbox = Outbox::new(clock.clone());
        let tenants = Tenants::new(db.clone(), keys.clone(), queue.clone(), outbox.clone())
            .with_purge_delay(chrono::Duration::seconds(i64::from(
                config.terminated_purge_delay_secs,
            )));
        let secrets = secrets_box(&config.storage)?;
        let guard = Guard::new(config.webhook_allowed_cidrs.clone());
        let timeout = Duration::from_secs(config.webhook_timeout_secs);
        let outbound = Outbound::new(guard.clone(), timeout)?;
        let health = Health::new(db.clone(), keys.clone(), outbox.clone(), clock.clone());
        let alerts = Alerts::new(db.clone(), outbox.clone(), clock.clone());
        let throttle =
            Arc::new(Throttle::new(redis.clone()).with_default(config.default_rate_limit_rpm));
        let webhook_wakeups = Wakeups::default();
        let inbound_cache = Arc::new(InboundConfigCache::default());
        let webhook_settings = WebhookSettings::new(
            db.clone(),
            secrets.clone(),
            guard.clone(),
            config.public_url.clone(),
            clock.clone(),
            inbound_cache.clone(),
        );
        let ca_pem = match &config.paypal_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("reading TENLYR_PAYPAL_CA_FILE={}", path.display()))?,
            ),
            None => None,
        };
        let paypal = PaypalVerifier::new(
            &PaypalConfig {
                cert_hosts: config.paypal_cert_hosts.clone(),
                ca_pem,
            },
            outbound.clone(),
        )?;
        let spool = Arc::new(Spool::new(&config.storage.data_dir));
        let metrics = Arc::new(crate::metrics::Metrics::new(transport::rpc_names()));
        let (inbound, inbound_log) = Gateway::new(
            db.clone(),
            secrets.clone(),
            clock.clone(),
            inbound_cache,
            paypal,
            spool.clone(),
            metrics.clone(),
        );
        let webhook_events = WebhookEvents::new(db.clone(), clock.clone());
        let webhook_endpoints = WebhookEndpoints::new(
            db.clone(),
            secrets.clone(),
            guard,
            outbox.clone(),
            clock.clone(),
            webhook_wakeups.clone(),
        );
        let admin_keys = AdminKeys::new(db.clone(), keys.clone());
        if let Err(err) = metering::maintain(&db, config.usage_retention_days).await {
            tracing::warn!(error = %err, "creating usage partitions failed; ingestion retries");
        }
        let counters = Arc::new(LiveCounters::new(redis.clone()));
        let (ingest_tx, ingest) = Ingest::new(db.clone(), counters.clone(), metrics.clone());
        let metering = Metering::new(db.clone(), ingest_tx, counters.clone());
        let stripe = config
            .stripe_secret_key
            .as_deref()
            .map(|key| Stripe::new(&config.stripe_api_base, key, Duration::from_secs(20)))
            .transpose()?;
        let billing = Billing::new(
            db.clone(),
            metering.clone(),
            stripe,
            config.stripe_webhook_secret.clone(),
            config.overage_prices,
            outbox.clone(),
            clock.clone(),
        );
        let (records, record_commits) = Records::new(
            db.clone(),
            clock.clone(),
            chrono::Duration::hours(i64::from(config.record_retention_hours)),
            config.record_cache_mb as usize * 1024 * 1024,
        );
        let audit = crate::service::audit::AuditLog::new(db.clone());
        let isolation = Isolation::new(db.clone(), queue.clone(), clock.clone());
        let users = Users::new(
            db.clone(),
            keys.clone(),
            clock.clone(),
            UserSettings {
                lifetimes: Lifetimes {
                    idle: chrono::Duration::minutes(i64::from(config.session_idle_minutes)),
                    absolute: chrono::Duration::hours(i64::from(config.session_max_hours)),
                    invite: chrono::Duration::hours(i64::from(config.invite_ttl_hours)),
                    ..Lifetimes::default()
                },
                login_limit: LoginLimit::default(),
                bcrypt_cost: config.bcrypt_cost,
                public_url: config.public_url.clone(),
            },
        )?;
        let state = AppState {
            db,
            keys: keys.clone(),
            tenants,
            admin_keys,
            metering,
            records,
            webhook_endpoints,
            webhook_settings,
            inbound,
            webhook_events,
            audit,
            isolation,
            users: users.clone(),
            health: health.clone(),
            alerts: alerts.clone(),
            billing: billing.clone(),
            throttle,
            queue,
            clock,
            max_body_bytes: config.max_body_bytes,
            lifecycle: Lifecycle::default(),
            metrics: metrics.clone(),
        };
        let transport = transport::build(&state)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding TENLYR_LISTEN={}", config.listen))?;

        runtime.spawn(ingest);
        runtime.spawn(record_commits);
        runtime.spawn(inbound_log);
        runtime.spawn(Periodic::new(
            SpoolDrain(spool),
            inbound_workers::DRAIN_EVERY,
            Election::Replica,
        ));
        runtime.spawn(CounterPublisher(counters));
        runtime.spawn(KeyInvalidation(keys.clone()));
        runtime.spawn(
            Periodic::new(
                ActivityFlush(keys, users),
                activity::EVERY,
                Election::Replica,
            )
            .with_final_tick(),
        );
        runtime.spawn(Periodic::new(
            Partitions {
                retention_days: config.usage_retention_days,
            },
            partitions::EVERY,
            Election::Cluster,
        ));
        runtime.spawn(Periodic::new(
            PlacementRefresh,
            tenant_data_workers::REFRESH_EVERY,
            Election::Replica,
        ));
        runtime.spawn(Periodic::new(
            RecordExpiry,
            record_expiry::EVERY,
            Election::Cluster,
        ));
        runtime.spawn(Periodic::new(
            HealthScan(health),
            Duration::from_secs(config.health_interval_secs),
            Election::Cluster,
        ));
        runtime.spawn(Periodic::new(
            AlertCheck(alerts),
            Duration::from_secs(config.alert_interval_secs),
            Election::Cluster,
        ));
        runtime.spawn(Periodic::new(
            BillingSync(billing),
            Duration::from_secs(config.billing_sync_interval_secs),
            Election::Cluster,
        ));
        runtime.spawn(Periodic::new(
            EventRetention {
                retention: chrono::Duration::days(i64::from(config.event_retention_days)),
            },
            webhook_delivery::RETENTION_EVERY,
            Election::Cluster,
        ));
        let wakeups = Wakeups::default();
        runtime.spawn(Listener {
            wakeups: wakeups.clone(),
            webhooks: webhook_wakeups.clone(),
        });
        runtime.spawn(Dispatcher {
            outbound,
            secrets,
            wakeups: webhook_wakeups,
            concurrency: config.webhook_concurrency as usize,
            // Longer than any attempt, with room to record it.
            lease: timeout * 2 + Duration::from_secs(5),
            metrics,
            pressure: state.inbound.pressure(),
        });
        for _ in 0..config.job_runners {
            runtime.spawn(Runner::new(jobs_registry(config), wakeups.clone()));
        }
        Ok(Self {
            listener,
            state,
            redis,
            transport,
            delay: Duration::from_secs(config.shutdown_delay_secs),
            grace: Duration::from_secs(config.shutdown_grace_secs),
            runtime,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves; then, in order: `/readyz` answers
    /// 503 (requests are still served for the shutdown delay), the listener
    /// closes and requests still arriving get 503, in-flight requests drain
    /// (bounded by the grace period), the idempotent responses already sent
    /// are stored (the grace period again), every worker stops (one
    /// deadline for all, the grace period again), the pools close.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            redis,
            transport,
            delay,
            grace,
            runtime,
        } = self;
        let (health, idempotency) = (transport.health.clone(), transport.idempotency.clone());
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        tracing::info!(addr = %listener.local_addr()?, "listening (gRPC, gRPC-Web, REST)");

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut drain_rx = stop_rx.clone();
        // Replies go out as soon as they are written (no Nagle delay).
        let listener = listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "setting TCP_NODELAY failed");
            }
        });
        let serve = axum::serve(
            listener,
            transport
                .router
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|stop| *stop).await;
        });
        let mut serving = tokio::spawn(async move { serve.await });
        let lifecycle = state.lifecycle.clone();
        let trigger = tokio::spawn(async move {
            shutdown.await;
            lifecycle.draining.store(true, Ordering::Release);
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            if !delay.is_zero() {
                tracing::info!(
                    delay_secs = delay.as_secs(),
                    "shutting down: not ready, still serving"
                );
                tokio::time::sleep(delay).await;
            }
            tracing::info!("shutting down: draining in-flight requests");
            lifecycle.closing.store(true, Ordering::Release);
            let _ = stop_tx.send(true);
        });

        let result = tokio::select! {
            result = &mut serving => result.map_err(anyhow::Error::from).and_then(|r| r.map_err(Into::into)),
            () = async {
                let _ = drain_rx.wait_for(|stop| *stop).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_secs = grace.as_secs(), "grace period over; dropping remaining connections");
                serving.abort();
                Ok(())
            }
        };
        trigger.abort();
        // Responses already sent are stored before the pools close.
        if tokio::time::timeout(grace, idempotency.finish())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; idempotent responses still being stored");
        }
        // The ingest committers commit what is queued; flushers flush.
        runtime.shutdown(tokio::time::Instant::now() + grace).await;
        if let Some(redis) = redis {
            redis.quit().await;
        }
        state.db.close().await;
        result
    }
}

/// Every job kind this build runs.
pub fn jobs_registry(config: &ServeConfig) -> Registry {
    let copy = Copying {
        chunk: i64::from(config.isolation_chunk_rows),
        pause: Duration::from_millis(config.isolation_pause_ms),
    };
    Registry::default()
        .with(TenantPurge)
        .with(MigrateJob { copy })
        .with(CleanupJob { copy })
        .with(MirrorJob)
        .with(EventStatusJob)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `tenlyr serve`.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let database = Database::open(&config.storage, true).await?;
    let result = async {
        let server = Server::bind(&config, &database.url).await?;
        server.run(shutdown_signal()).await
    }
    .await;
    database.close().await;
    result
}
