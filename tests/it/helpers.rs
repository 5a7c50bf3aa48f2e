//! Test fixtures: a database per test (cloned from a migrated template), a
//! server per test on port 0, and clients for REST, gRPC and gRPC-Web.

use std::{net::SocketAddr, path::PathBuf};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sqlx::{Connection, Executor, PgConnection};
use tenlyr::{
    app::Server,
    config::{ServeConfig, StorageConfig},
    domain::keys::KeyHasher,
    storage::{Db, admin_keys, migrate},
};
use tokio::sync::{OnceCell, oneshot};

pub const PEPPER: &str = "integration-test-pepper";
pub const SECRETS_KEY: &str = "integration-test-secrets-key-0123456789";

/// The server the tests use: `TENLYR_TEST_DATABASE_URL` (scripts/test.sh
/// starts a private cluster and sets it), else the local default.
pub fn base_url() -> String {
    std::env::var("TENLYR_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn url_for(database: &str) -> String {
    let base = base_url();
    let (prefix, rest) = base.rsplit_once('/').expect("URL has a database path");
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{prefix}/{database}{query}")
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// A migrated template database, created once per migration set.
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let name = format!("tenlyr_tpl_{}", migrate::fingerprint());
            let mut conn = PgConnection::connect(&base_url())
                .await
                .expect("test PostgreSQL is reachable");
            conn.execute("SELECT pg_advisory_lock(4242)").await.unwrap();
            let exists: Option<(i32,)> =
                sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate")
                    .bind(&name)
                    .fetch_optional(&mut conn)
                    .await
                    .unwrap();
            if exists.is_none() {
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await
                .unwrap();
                conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .unwrap();
                migrate::run(&url_for(&name))
                    .await
                    .expect("migrations apply to the template");
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "ALTER DATABASE {name} IS_TEMPLATE true"
                )))
                .await
                .unwrap();
            }
            conn.execute("SELECT pg_advisory_unlock(4242)")
                .await
                .unwrap();
            conn.close().await.unwrap();
            name
        })
        .await
}

/// A database owned by one test, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A migrated database (a clone of the template).
    pub async fn migrated() -> Self {
        let template = template().await;
        Self::create(&format!("TEMPLATE {template}")).await
    }

    /// An empty database, for tests of migrations themselves.
    pub async fn empty() -> Self {
        Self::create("").await
    }

    async fn create(suffix: &str) -> Self {
        let name = format!("tenlyr_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&base_url()).await.unwrap();
        conn.execute(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} {suffix}"
        )))
        .await
        .unwrap();
        conn.close().await.unwrap();
        let url = url_for(&name);
        Self { name, url }
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        if name.is_empty() {
            return; // a second handle on a database another TestDb owns
        }
        // Drop runs outside async; a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&base_url()).await {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

pub fn serve_config(database_url: &str) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        redis_url: None,
        max_body_bytes: 1024 * 1024, // the default
        shutdown_delay_secs: 0,
        shutdown_grace_secs: 5,
        usage_retention_days: 90,
        webhook_allowed_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
        webhook_timeout_secs: 2,
        webhook_concurrency: 64,
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
        terminated_purge_delay_secs: 0,
        session_idle_minutes: 30,
        session_max_hours: 12,
        invite_ttl_hours: 72,
        bcrypt_cost: 4,
        isolation_chunk_rows: 20_000,
        isolation_pause_ms: 0,
        storage: StorageConfig {
            database_url: Some(database_url.to_owned()),
            data_dir: PathBuf::from("/nonexistent-tenlyr-test-data-dir"),
            key_pepper: Some(PEPPER.to_owned()),
            secrets_key: Some(SECRETS_KEY.to_owned()),
            db_pool_size: 4,
            app_database_url: None,
            dedicated_database_urls: Vec::new(),
            statement_timeout_ms: 30_000,
        },
    }
}

/// A running server on its own database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub admin_key: String,
    pub http: reqwest::Client,
    pub db: TestDb,
    /// What the server's handlers share (its services, its clock).
    pub state: tenlyr::app::AppState,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The Redis the tests use: `TENLYR_TEST_REDIS_URL` (scripts/test.sh starts
/// a private one), else the local default.
pub fn redis_url() -> String {
    std::env::var("TENLYR_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The servers' error log (`tenlyr` at ERROR: a 500's cause, a failed
/// worker) goes to the test's captured output, which the harness prints
/// when the test fails; a passing test's is dropped.
fn log_errors() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("tenlyr=error")
            .with_test_writer()
            .try_init();
    });
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server with its configuration adjusted by `adjust`.
    pub async fn spawn_with(adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let db = TestDb::migrated().await;
        let admin_key = create_admin_key(&db.url, "test").await;
        let mut config = serve_config(&db.url);
        adjust(&mut config);
        Self::start_with(db, admin_key, config).await
    }

    /// Two replicas sharing one database and the Redis at `redis`.
    pub async fn spawn_pair_on(redis: &str) -> (Self, Self) {
        let db = TestDb::migrated().await;
        let admin_key = create_admin_key(&db.url, "test").await;
        let second = TestDb {
            name: String::new(),
            url: db.url.clone(),
        };
        let a = Self::start(db, admin_key.clone(), Some(redis.to_owned())).await;
        let b = Self::start(second, admin_key, Some(redis.to_owned())).await;
        // Until a replica is subscribed it keeps keys only 3 s; tests of
        // "at once" start from subscribed replicas.
        for app in [&a, &b] {
            for _ in 0..250 {
                if app.ready().await.1["keyInvalidation"] == "subscribed" {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        (a, b)
    }

    /// Two replicas sharing one database and one Redis.
    pub async fn spawn_pair() -> (Self, Self) {
        Self::spawn_pair_on(&redis_url()).await
    }

    async fn start(db: TestDb, admin_key: String, redis: Option<String>) -> Self {
        let mut config = serve_config(&db.url);
        config.redis_url = redis;
        Self::start_with(db, admin_key, config).await
    }

    /// A server whose background work and records read `clock`.
    pub async fn spawn_with_clock(clock: tenlyr::workers::ManualClock) -> Self {
        let db = TestDb::migrated().await;
        let admin_key = create_admin_key(&db.url, "test").await;
        let config = serve_config(&db.url);
        let server = Server::bind_with_clock(&config, &db.url, std::sync::Arc::new(clock))
            .await
            .expect("server binds");
        Self::run(db, admin_key, server)
    }

    async fn start_with(db: TestDb, admin_key: String, config: ServeConfig) -> Self {
        log_errors();
        let server = Server::bind(&config, &db.url).await.expect("server binds");
        Self::run(db, admin_key, server)
    }

    /// Another server on this one's database (a replica, or the same
    /// service restarted), reading `clock`, its configuration adjusted by
    /// `adjust`.
    pub async fn replica(
        &self,
        clock: tenlyr::workers::SharedClock,
        adjust: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let url = self.db.url.clone();
        self.replica_at(&url, clock, adjust).await
    }

    /// [`Self::replica`] reaching the database at `database_url` (the same
    /// database through a proxy).
    pub async fn replica_at(
        &self,
        database_url: &str,
        clock: tenlyr::workers::SharedClock,
        adjust: impl FnOnce(&mut ServeConfig),
    ) -> Self {
        let db = TestDb {
            name: String::new(),
            url: database_url.to_owned(),
        };
        let mut config = serve_config(&db.url);
        adjust(&mut config);
        let server = Server::bind_with_clock(&config, &db.url, clock)
            .await
            .expect("server binds");
        Self::run(db, self.admin_key.clone(), server)
    }

    fn run(db: TestDb, admin_key: String, server: Server) -> Self {
        let addr = server.local_addr().unwrap();
        let state = server.state().clone();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            admin_key,
            http: reqwest::Client::new(),
            db,
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// `GET /readyz`: status and body.
    pub async fn ready(&self) -> (u16, serde_json::Value) {
        json(self.http.get(self.url("/readyz")).send().await.unwrap()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A REST request with the admin key.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.admin_key)
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        self.stopped().await
    }

    /// Sends the shutdown signal (as SIGTERM would) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits until the server stopped.
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        self.task.take().unwrap().await?
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An application pool on a test database, logged in as the server's is
/// (`tenlyr_app` with the pepper-derived password).
pub async fn app_db(database_url: &str, pool_size: u32) -> Db {
    let storage = serve_config(database_url).storage;
    tenlyr::app::connect(&storage, database_url, pool_size)
        .await
        .expect("application pool connects")
        .0
}

pub async fn create_admin_key(database_url: &str, label: &str) -> String {
    let db = app_db(database_url, 1).await;
    let key = admin_keys::create(db.app(), &KeyHasher::new(PEPPER.as_bytes()), label)
        .await
        .unwrap();
    db.close().await;
    key
}

/// A REST response: status and JSON body.
pub async fn json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, body)
}

/// A REST call with `key` (and a JSON body, if any): status and JSON body.
pub async fn call(
    app: &TestApp,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = app.http.request(method, app.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    json(request.send().await.unwrap()).await
}

/// A tenant's `isolationLevel` as the admin API shows it.
pub async fn isolation_level(app: &TestApp, tenant: &str) -> String {
    let (status, row) = admin_call(
        app,
        reqwest::Method::GET,
        &format!("/api/v1/tenants/{tenant}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{row}");
    row["isolationLevel"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A REST call with the admin key: status and JSON body.
pub async fn admin_call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    call(app, &app.admin_key, method, path, body).await
}

/// Asserts the documented error body.
pub fn assert_error_body(body: &serde_json::Value, status: u16, error: &str) {
    assert_eq!(body["statusCode"], status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// The outcome of a gRPC-Web call: status code, message and the message
/// bytes of the response, if any.
pub struct GrpcWebReply {
    pub code: tonic::Code,
    pub message: String,
    pub body: Option<Bytes>,
}

/// Calls `path` with gRPC-Web over HTTP/1.1, as a browser would.
pub async fn grpc_web(
    app: &TestApp,
    path: &str,
    key: Option<&str>,
    message: &[u8],
) -> GrpcWebReply {
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(message);
    let mut request = app
        .http
        .post(app.url(path))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(frame.freeze());
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let mut bytes = response.bytes().await.unwrap();
    let mut body = None;
    let mut trailers = String::new();
    while bytes.len() >= 5 {
        let flag = bytes.get_u8();
        let len = bytes.get_u32() as usize;
        let chunk = bytes.split_to(len);
        if flag & 0x80 != 0 {
            trailers = String::from_utf8_lossy(&chunk).into_owned();
        } else {
            body = Some(chunk);
        }
    }
    let mut fields: Vec<(String, String)> = trailers
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    for name in ["grpc-status", "grpc-message"] {
        if let Some(v) = headers.get(name) {
            fields.push((name.to_owned(), v.to_str().unwrap().to_owned()));
        }
    }
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let code = tonic::Code::from_i32(get("grpc-status").expect("grpc-status").parse().unwrap());
    let message = percent_encoding::percent_decode_str(&get("grpc-message").unwrap_or_default())
        .decode_utf8_lossy()
        .into_owned();
    GrpcWebReply {
        code,
        message,
        body,
    }
}

/// Adds `authorization: Bearer <key>` to a tonic request.
pub fn with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// Provisions a tenant over REST; returns its id and primary key.
pub async fn provision(
    app: &TestApp,
    email: &str,
    plan: &str,
    time_zone: &str,
) -> (String, String) {
    let body = serde_json::json!({"name": email, "ownerEmail": email, "plan": plan, "timeZone": time_zone});
    let (status, reply) = json(
        app.admin(reqwest::Method::POST, "/api/v1/tenants")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    (
        reply["tenant"]["id"].as_str().unwrap().to_owned(),
        reply["apiKey"].as_str().unwrap().to_owned(),
    )
}

/// A real `tenlyr serve` process on a free loopback port (killed when
/// dropped).
pub struct Process {
    pub child: tokio::process::Child,
    pub base: String,
}

/// A free loopback port for a process this test starts later (a server,
/// a Redis). It lies below the kernel's ephemeral range, so a listener
/// bound to port 0 elsewhere in the suite meanwhile can never be handed
/// the same port (which once let a test talk to another test's server);
/// ports are taken in turn, so two tests of this process never share one.
pub fn unclaimed_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, span) = (ephemeral_low.saturating_sub(8192).max(1024), 8000u32);
    let start = std::process::id() % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = low + offset as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// Starts `tenlyr serve` on `db` with `data_dir` and the extra
/// environment `env`; returns once it is ready.
pub async fn start_process(
    db: &TestDb,
    data_dir: &std::path::Path,
    env: &[(&str, &str)],
) -> Process {
    let port = unclaimed_port();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenlyr"));
    command
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("TENLYR_LISTEN", format!("127.0.0.1:{port}"))
        .env("TENLYR_KEY_PEPPER", PEPPER)
        .env("TENLYR_DATA_DIR", data_dir)
        .env("TENLYR_LOG", "warn")
        .env_remove("REDIS_URL")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command.spawn().expect("tenlyr serve starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            return Process { child, base };
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("tenlyr serve did not become ready");
}

/// Tracks one event after another with a tenant key (REST) until
/// stopped: the writer that runs through a move.
pub struct TrackWriter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(u64, u64)>,
}

impl TrackWriter {
    pub fn start(app: &TestApp, key: &str) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (http, url, key) = (
            app.http.clone(),
            app.url("/api/v1/usage/track"),
            key.to_owned(),
        );
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut acknowledged, mut refused) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                let response = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&serde_json::json!({"metric": "api_call", "value": 1}))
                    .send()
                    .await
                    .unwrap();
                if response.status() == 200 {
                    acknowledged += 1;
                } else {
                    refused += 1;
                }
            }
            (acknowledged, refused)
        });
        Self { stop, task }
    }

    /// Stops it; how many writes were acknowledged and refused.
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}
