//! Tenant benchmark (issue targets: provisioning p99 ≤ 50 ms, authentication
//! on a cache hit p99 ≤ 0.2 ms). Run it with `scripts/bench.sh tenants`,
//! which starts a private PostgreSQL and Redis; it loads only 127.0.0.1.
//!
//! Prints:
//! - provisioning latency over REST (`POST /api/v1/tenants`), sequential and
//!   with concurrent clients, p50/p99/max;
//! - authentication on a cache hit: the time `authenticate` adds to a
//!   request (key format check, HMAC, cache lookup), measured in-process
//!   over many calls, and end to end: the same authenticated GET against
//!   `/healthz` (same server, no auth work).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::{Connection, Executor};
use tenlyr::{
    app::Server,
    config::{ServeConfig, StorageConfig},
    domain::keys::KeyHasher,
    service::keys::KeyResolver,
    storage::{Db, admin_keys, migrate, redis::Redis},
};

const PEPPER: &str = "benchmark-pepper-0123456789";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<48} n={:<6} p50={:>9.3} ms  p99={:>9.3} ms  max={:>9.3} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base =
        std::env::var("BENCH_DATABASE_URL").expect("BENCH_DATABASE_URL (scripts/bench.sh sets it)");
    let redis_url = std::env::var("BENCH_REDIS_URL").ok();
    let n: usize = std::env::var("BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);

    let db_name = format!("tenlyr_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await?;
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
        .await?;
    let url = format!("{}/{db_name}", base.rsplit_once('/').unwrap().0);
    migrate::run(&url).await?;
    let hasher = KeyHasher::new(PEPPER.as_bytes());
    let db = Db::connect(&url, 2)?;
    let admin_key = admin_keys::create(db.app(), &hasher, "bench").await?;

    let config = ServeConfig {
        listen: "127.0.0.1:0".parse()?,
        redis_url: redis_url.clone(),
        max_body_bytes: 1 << 20,
        shutdown_grace_secs: 5,
        usage_retention_days: 90,
        storage: StorageConfig {
            database_url: Some(url.clone()),
            data_dir: "/nonexistent".into(),
            key_pepper: Some(PEPPER.into()),
            db_pool_size: 16,
        },
    };
    let server = Server::bind(&config, &url).await?;
    let addr = server.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let base_url = format!("http://{addr}");
    println!(
        "tenlyr tenant benchmark: {n} tenants, redis: {}",
        redis_url.is_some()
    );

    // Provisioning, one client.
    let mut samples = Vec::with_capacity(n);
    let mut tenant_key = String::new();
    for i in 0..n {
        let body = serde_json::json!({"name": format!("Bench {i}"), "ownerEmail": format!("bench{i}@bench.test"), "plan": "growth"});
        let started = Instant::now();
        let response = http
            .post(format!("{base_url}/api/v1/tenants"))
            .bearer_auth(&admin_key)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status() == 200,
            "provisioning failed: {}",
            response.text().await?
        );
        let reply: serde_json::Value = response.json().await?;
        samples.push(started.elapsed());
        tenant_key = reply["apiKey"].as_str().unwrap().to_owned();
    }
    report("provision over REST, 1 client", samples);

    // Provisioning, 8 concurrent clients.
    let clients = 8;
    let per = n / clients;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, base_url, admin_key) = (http.clone(), base_url.clone(), admin_key.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per);
            for i in 0..per {
                let body = serde_json::json!({"name": format!("Conc {c}-{i}"), "ownerEmail": format!("c{c}-{i}@bench.test")});
                let started = Instant::now();
                let response = http.post(format!("{base_url}/api/v1/tenants")).bearer_auth(&admin_key).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 200);
                let _ = response.bytes().await;
                samples.push(started.elapsed());
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await?);
    }
    report(
        &format!("provision over REST, {clients} concurrent clients"),
        samples,
    );

    // Authentication on a cache hit, in-process: the work auth adds.
    let redis = match &redis_url {
        Some(u) => Some(Redis::connect(u).await?),
        None => None,
    };
    let resolver = Arc::new(KeyResolver::new(
        db.clone(),
        Arc::new(KeyHasher::new(PEPPER.as_bytes())),
        redis,
    ));
    resolver.authenticate(&tenant_key).await?; // warm the cache
    let mut samples = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let started = Instant::now();
        let principal = resolver.authenticate(&tenant_key).await?;
        samples.push(started.elapsed());
        std::hint::black_box(principal);
    }
    report("authenticate, cache hit (in-process)", samples);

    // End to end: an authenticated GET of the tenant's keys against the
    // unauthenticated /healthz of the same server.
    let reply: serde_json::Value = http
        .get(format!("{base_url}/api/v1/tenants?limit=1"))
        .bearer_auth(&admin_key)
        .send()
        .await?
        .json()
        .await?;
    let first = reply["data"][0]["id"].as_str().unwrap().to_owned();
    let keys_url = format!("{base_url}/api/v1/tenants/{first}/api-keys");
    for (name, url, key) in [
        (
            "GET /healthz (no auth)",
            format!("{base_url}/healthz"),
            None,
        ),
        (
            "GET …/api-keys (admin key, cached)",
            keys_url,
            Some(admin_key.clone()),
        ),
    ] {
        let mut samples = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let mut request = http.get(&url);
            if let Some(key) = &key {
                request = request.bearer_auth(key);
            }
            let started = Instant::now();
            let response = request.send().await?;
            let _ = response.bytes().await?;
            samples.push(started.elapsed());
        }
        report(name, samples);
    }

    let _ = stop.send(());
    running.await??;
    db.close().await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db_name} WITH (FORCE)"
        )))
        .await?;
    Ok(())
}
