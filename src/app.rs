//! Wiring: configuration → storage → transport, start and ordered shutdown
//! (stop accepting → drain in-flight requests → close pools → stop the
//! embedded cluster).

use std::{future::Future, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{ServeConfig, StorageConfig},
    domain::keys::KeyHasher,
    service::{
        admin_keys::AdminKeys,
        counters::LiveCounters,
        keys::KeyResolver,
        metering::{self, Ingest, IngestWorker, Metering},
        tenants::Tenants,
    },
    storage::{Db, admin_keys, embedded::EmbeddedPostgres, migrate, redis::Redis},
    transport,
};

/// What request handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub db: Db,
    pub keys: Arc<KeyResolver>,
    pub tenants: Tenants,
    pub admin_keys: AdminKeys,
    pub metering: Metering,
    pub max_body_bytes: usize,
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
    write_new_pepper(&path)?;
    Ok(KeyHasher::new(&std::fs::read(&path)?))
}

fn write_new_pepper(path: &Path) -> anyhow::Result<()> {
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

/// How often in-memory last-activity times are written.
const ACTIVITY_FLUSH: Duration = Duration::from_secs(2);

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    state: AppState,
    redis: Option<Redis>,
    transport: transport::Transport,
    grace: Duration,
    ingest: IngestWorker,
    counters: Arc<LiveCounters>,
    retention_days: u32,
}

impl Server {
    /// Migrates, connects, bootstraps the first admin key (printed once on
    /// stdout) and binds the listener.
    pub async fn bind(config: &ServeConfig, database_url: &str) -> anyhow::Result<Self> {
        migrate::run(database_url)
            .await
            .context("applying migrations")?;
        let db = Db::connect(database_url, config.storage.db_pool_size)?;
        let hasher = Arc::new(key_hasher(&config.storage)?);
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
        let keys = Arc::new(KeyResolver::new(db.clone(), hasher, redis.clone()));
        let tenants = Tenants::new(db.clone(), keys.clone());
        let admin_keys = AdminKeys::new(db.clone(), keys.clone());
        if let Err(err) = metering::maintain(&db, config.usage_retention_days).await {
            tracing::warn!(error = %err, "creating usage partitions failed; ingestion retries");
        }
        let counters = Arc::new(LiveCounters::new(redis.clone()));
        let (ingest_tx, ingest) = Ingest::new(db.clone(), counters.clone());
        let metering = Metering::new(db.clone(), ingest_tx, tenants.clone(), counters.clone());
        let state = AppState {
            db,
            keys,
            tenants,
            admin_keys,
            metering,
            max_body_bytes: config.max_body_bytes,
        };
        let transport = transport::build(&state)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding TENLYR_LISTEN={}", config.listen))?;
        Ok(Self {
            listener,
            state,
            redis,
            transport,
            grace: Duration::from_secs(config.shutdown_grace_secs),
            ingest,
            counters,
            retention_days: config.usage_retention_days,
        })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests
    /// (bounded by the grace period) and closes the pool.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            redis,
            transport,
            grace,
            ingest,
            counters,
            retention_days,
        } = self;
        let health = transport.health.clone();
        let workers = CancellationToken::new();
        let flusher = tokio::spawn(
            state
                .keys
                .clone()
                .run_activity_flusher(ACTIVITY_FLUSH, workers.clone()),
        );
        let listener_task = tokio::spawn(
            state
                .keys
                .clone()
                .run_invalidation_listener(workers.clone()),
        );
        // The ingest pipeline stops after the listener has drained: requests
        // in flight still wait for their commits.
        let ingest_stop = CancellationToken::new();
        let ingesting = tokio::spawn(ingest.run(ingest_stop.clone()));
        // Stops with the workers, after the last commit: sends what is left.
        let publishing = tokio::spawn(counters.run_publisher(workers.clone()));
        let maintenance = tokio::spawn(metering::run_maintenance(
            state.db.clone(),
            retention_days,
            workers.clone(),
        ));
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
        let serve = axum::serve(listener, transport.router.into_make_service())
            .with_graceful_shutdown(async move {
                let mut rx = stop_rx;
                let _ = rx.wait_for(|stop| *stop).await;
            });
        let serving = tokio::spawn(async move { serve.await });
        let trigger = tokio::spawn(async move {
            shutdown.await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            tracing::info!("shutting down: draining in-flight requests");
            let _ = stop_tx.send(true);
        });

        let result = tokio::select! {
            result = serving => result.map_err(anyhow::Error::from).and_then(|r| r.map_err(Into::into)),
            () = async {
                let _ = drain_rx.wait_for(|stop| *stop).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_secs = grace.as_secs(), "grace period over; dropping remaining connections");
                Ok(())
            }
        };
        trigger.abort();
        ingest_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(30), ingesting)
            .await
            .is_err()
        {
            tracing::warn!("usage commits did not finish in time");
        }
        workers.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), maintenance).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), publishing).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), flusher).await;
        match tokio::time::timeout(Duration::from_secs(5), listener_task).await {
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "key invalidation listener failed"),
            Err(_) => tracing::warn!("key invalidation listener did not stop in time"),
            _ => {}
        }
        if let Some(redis) = redis {
            redis.quit().await;
        }
        state.db.close().await;
        result
    }
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
