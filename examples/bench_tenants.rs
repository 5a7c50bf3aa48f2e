//! Tenant benchmark (issue targets: provisioning p99 ≤ 50 ms, authentication
//! on a cache hit p99 ≤ 0.2 ms). Run it with `scripts/bench.sh tenants`,
//! which starts a private PostgreSQL and Redis; it loads only 127.0.0.1.
//!
//! Prints:
//! - provisioning latency over REST (`POST /api/v1/tenants`), sequential and
//!   with concurrent clients, p50/p99/max; the sequential calls alternate
//!   without and with an `Idempotency-Key`, and the difference at p50 and
//!   at p99 is printed;
//! - authentication on a cache hit: the time `authenticate` adds to a
//!   request (key format check, HMAC, cache lookup), measured in-process
//!   over many calls, and end to end: the same authenticated GET against
//!   `/healthz` (same server, no auth work).

mod common;

use std::{sync::Arc, time::Instant};

use common::{Bench, PEPPER, report};
use tenlyr::{domain::keys::KeyHasher, service::keys::KeyResolver, storage::redis::Redis};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let bench = Bench::start().await?;
    let (db, base_url, admin_key, redis_url) = (
        bench.db.clone(),
        bench.base_url.clone(),
        bench.admin_key.clone(),
        bench.redis_url.clone(),
    );
    let http = reqwest::Client::new();
    println!(
        "tenlyr tenant benchmark: {n} tenants, redis: {}",
        redis_url.is_some()
    );

    // Provisioning, one client; every other call with an Idempotency-Key
    // (interleaved, so both see the same machine).
    let mut samples = Vec::with_capacity(n);
    let mut keyed = Vec::with_capacity(n / 2);
    let mut tenant_key = String::new();
    for i in 0..n {
        let body = serde_json::json!({"name": format!("Bench {i}"), "ownerEmail": format!("bench{i}@bench.test"), "plan": "growth"});
        let started = Instant::now();
        let mut request = http
            .post(format!("{base_url}/api/v1/tenants"))
            .bearer_auth(&admin_key)
            .json(&body);
        if i % 2 == 1 {
            request = request.header("Idempotency-Key", format!("bench-{i}"));
        }
        let response = request.send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "provisioning failed: {}",
            response.text().await?
        );
        let reply: serde_json::Value = response.json().await?;
        if i % 2 == 1 {
            keyed.push(started.elapsed());
        } else {
            samples.push(started.elapsed());
        }
        tenant_key = reply["apiKey"].as_str().unwrap().to_owned();
    }
    samples.sort();
    keyed.sort();
    let adds = |p: f64| {
        (common::percentile(&keyed, p).as_secs_f64()
            - common::percentile(&samples, p).as_secs_f64())
            * 1e3
    };
    report("provision over REST, 1 client", samples.clone());
    report("  the same with an Idempotency-Key", keyed.clone());
    println!(
        "  Idempotency-Key adds {:.3} ms at p50, {:.3} ms at p99",
        adds(0.5),
        adds(0.99)
    );

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

    bench.finish().await
}
