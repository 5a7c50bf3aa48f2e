//! What the benchmarks share: a private database with one server on a free
//! loopback port, and the latency report.

#![allow(dead_code)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

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

/// The load's HTTP/1.1 connections, one per caller: hyper's bare client
/// connection with requests built once per call, without reqwest's pool
/// checkout and URL parsing per request (the load took 26-30 % of these two
/// shared cores, most of it loopback TCP in the kernel; this saved a few
/// points of it). In the closed loops caller `c` uses
/// connection `c` only, so its lock is never contended; in a fixed-rate
/// phase a request waits for its connection's previous one, and that wait
/// counts in its latency.
#[derive(Clone)]
pub struct Connections {
    host: http::HeaderValue,
    conns: Arc<[tokio::sync::Mutex<SendRequest<Full<Bytes>>>]>,
}

impl Connections {
    /// Opens `n` connections to `base_url` (`http://host:port`).
    pub async fn open(base_url: &str, n: usize) -> anyhow::Result<Self> {
        let addr = base_url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("not an http:// URL: {base_url}"))?;
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            conns.push(tokio::sync::Mutex::new(send));
        }
        Ok(Self {
            host: http::HeaderValue::from_str(addr)?,
            conns: conns.into(),
        })
    }

    /// The machine's floor: `GET /healthz` from every connection for
    /// `duration`; the calls made and the time they took.
    pub async fn floor(&self, duration: Duration) -> (usize, Duration) {
        let conns = self.clone();
        let (_, n, t) = load(self.conns.len(), duration, move |c, _| {
            let conns = conns.clone();
            async move {
                let (status, _) = conns
                    .send(c, http::Method::GET, "/healthz", &[], None)
                    .await;
                assert_eq!(status, 200);
                1
            }
        })
        .await;
        (n, t)
    }

    /// Caller `c`'s request: `path` with `headers` and, when given, a JSON
    /// body.
    pub async fn send(
        &self,
        c: usize,
        method: http::Method,
        path: &str,
        headers: &[(&'static str, &str)],
        json: Option<String>,
    ) -> (http::StatusCode, Bytes) {
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.host.clone());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match json {
            Some(json) => {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json))
            }
            None => Full::default(),
        };
        let request = request.body(body).expect("a valid request");
        let mut conn = self.conns[c].lock().await;
        conn.ready().await.expect("the connection is open");
        let response = conn.send_request(request).await.expect("a response");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a whole body")
            .to_bytes();
        (status, body)
    }
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
    /// The server's thread says how its run ended.
    done: tokio::sync::oneshot::Receiver<anyhow::Result<()>>,
}

/// What the server's runtime hands back once it listens: its database, its
/// state, its address and an admin key.
type Started = (Db, tenlyr::app::AppState, String, String);

/// Runs in the server's runtime: connects, binds and serves until `stopped`,
/// then closes its pools (before the runtime that drives them ends).
async fn serve(
    config: ServeConfig,
    url: String,
    started: tokio::sync::oneshot::Sender<anyhow::Result<Started>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let bound = async {
        let (db, hasher) = tenlyr::app::connect(&config.storage, &url, 8).await?;
        let admin_key = admin_keys::create(db.app(), &hasher, "bench").await?;
        let server = Server::bind(&config, &url).await?;
        let base_url = format!("http://{}", server.local_addr()?);
        anyhow::Ok((db, admin_key, server, base_url))
    }
    .await;
    let (db, admin_key, server, base_url) = match bound {
        Ok(bound) => bound,
        Err(err) => {
            let _ = started.send(Err(err));
            return Ok(());
        }
    };
    let state = server.state().clone();
    let _ = started.send(Ok((db.clone(), state, base_url, admin_key)));
    let result = server
        .run(async move {
            let _ = stopped.await;
        })
        .await;
    db.close().await;
    result
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
        let (started, ready) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ended, done) = tokio::sync::oneshot::channel();
        let server_url = url.clone();
        // The server gets a runtime of its own, as under `tenlyr serve`
        // (one worker per core), beside the load's: the load's tasks do
        // not queue in the server's scheduler, and a profile tells the two
        // apart by thread name.
        std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .thread_name("tenlyr-server")
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = started.send(Err(err.into()));
                        return;
                    }
                };
                let result = runtime.block_on(serve(config, server_url, started, stopped));
                drop(runtime);
                let _ = ended.send(result);
            })?;
        let (db, state, base_url, admin_key) = ready.await??;
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
            done,
        })
    }

    /// Stops the server and drops the database.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.done.await??;
        self.admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {} WITH (FORCE)",
                self.db_name
            )))
            .await?;
        Ok(())
    }
}
