//! What the benchmarks share: a private database with one server on a free
//! loopback port, and the latency report.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};
use tenlyr::{
    app::Server,
    config::{ServeConfig, StorageConfig},
    storage::{Db, admin_keys},
};

/// The server runs in this process with the allocator `tenlyr serve` uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub const PEPPER: &str = "benchmark-pepper-0123456789";

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<48} n={:<6} p50={:>9.3} ms  p99={:>9.3} ms  max={:>9.3} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

/// Runs `clients` loops of `send` for one phase; returns per-call latencies
/// and the events they carried.
pub async fn load<F, Fut>(
    clients: usize,
    duration: Duration,
    send: F,
) -> (Vec<Duration>, usize, Duration)
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = usize> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let send = send.clone();
        tasks.push(tokio::spawn(async move {
            let (mut samples, mut events, mut n) = (Vec::new(), 0, 0);
            while Instant::now() < deadline {
                let t = Instant::now();
                events += send(c, n).await;
                samples.push(t.elapsed());
                n += 1;
            }
            (samples, events)
        }));
    }
    let (mut samples, mut events) = (Vec::new(), 0);
    for task in tasks {
        let (s, e) = task.await.unwrap();
        samples.extend(s);
        events += e;
    }
    (samples, events, started.elapsed())
}

/// Provisions `n` enterprise tenants over REST (`<tag>{i}@bench.test`);
/// their ids and primary keys.
pub async fn provision(
    bench: &Bench,
    http: &reqwest::Client,
    n: usize,
    tag: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut tenants = Vec::with_capacity(n);
    for i in 0..n {
        let reply: serde_json::Value = http
            .post(format!("{}/api/v1/tenants", bench.base_url))
            .bearer_auth(&bench.admin_key)
            .json(&serde_json::json!({"name": format!("{tag} {i}"), "ownerEmail": format!("{tag}{i}@bench.test"), "plan": "enterprise"}))
            .send()
            .await?
            .json()
            .await?;
        tenants.push((
            reply["tenant"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            reply["apiKey"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    Ok(tenants)
}

/// A fresh database (dropped by [`Bench::finish`]) and a server on it.
pub struct Bench {
    pub db: Db,
    /// The server's shared state (its services).
    pub state: tenlyr::app::AppState,
    pub url: String,
    pub base_url: String,
    pub admin_key: String,
    pub redis_url: Option<String>,
    db_name: String,
    admin: sqlx::PgConnection,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Bench {
    /// Reads BENCH_DATABASE_URL / BENCH_REDIS_URL (scripts/bench.sh sets
    /// them).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// [`Self::start`] with the server's configuration adjusted.
    /// `BENCH_LOG` (a `RUST_LOG`-style filter, e.g.
    /// `tenlyr::workers::isolation=debug`) prints the server's log on
    /// stderr; by default the benchmark prints its figures only.
    pub async fn start_with(adjust: impl FnOnce(&mut ServeConfig)) -> anyhow::Result<Self> {
        if let Ok(filter) = std::env::var("BENCH_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
        let base = std::env::var("BENCH_DATABASE_URL")
            .expect("BENCH_DATABASE_URL (scripts/bench.sh sets it)");
        let redis_url = std::env::var("BENCH_REDIS_URL").ok();
        let db_name = format!("tenlyr_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&base).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .await?;
        let url = format!("{}/{db_name}", base.rsplit_once('/').unwrap().0);
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse()?,
            redis_url: redis_url.clone(),
            max_body_bytes: 1 << 20,
            shutdown_delay_secs: 0,
            shutdown_grace_secs: 5,
            usage_retention_days: 90,
            webhook_allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
            webhook_timeout_secs: 15,
            webhook_concurrency: 256,
            event_retention_days: 30,
            health_interval_secs: 60,
            alert_interval_secs: 300,
            public_url: None,
            paypal_cert_hosts: vec!["*.paypal.com".to_owned()],
            paypal_ca_file: None,
            stripe_api_base: "https://api.stripe.com".into(),
            stripe_secret_key: None,
            stripe_webhook_secret: None,
            billing_sync_interval_secs: 300,
            overage_prices: Default::default(),
            job_runners: 2,
            record_retention_hours: 24,
            record_cache_mb: 64,
            default_rate_limit_rpm: 0,
            terminated_purge_delay_secs: 3600,
            session_idle_minutes: 30,
            session_max_hours: 12,
            invite_ttl_hours: 72,
            bcrypt_cost: 4,
            isolation_chunk_rows: 20_000,
            isolation_pause_ms: 0,
            storage: StorageConfig {
                database_url: Some(url.clone()),
                data_dir: "/nonexistent".into(),
                key_pepper: Some(PEPPER.into()),
                secrets_key: Some(format!("{PEPPER}-secrets-key-for-benchmarks")),
                db_pool_size: 16,
                app_database_url: None,
                dedicated_database_urls: Vec::new(),
                statement_timeout_ms: 30_000,
            },
        };
        let mut config = config;
        adjust(&mut config);
        let (db, hasher) = tenlyr::app::connect(&config.storage, &url, 8).await?;
        let admin_key = admin_keys::create(db.app(), &hasher, "bench").await?;
        let server = Server::bind(&config, &url).await?;
        let state = server.state().clone();
        let base_url = format!("http://{}", server.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            db,
            state,
            url,
            base_url,
            admin_key,
            redis_url,
            db_name,
            admin,
            stop,
            running,
        })
    }

    /// Stops the server and drops the database.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.running.await??;
        self.db.close().await;
        self.admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {} WITH (FORCE)",
                self.db_name
            )))
            .await?;
        Ok(())
    }
}
