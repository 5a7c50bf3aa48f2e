//! Metering benchmark (issue targets on 2 cores: ≥ 10,000 single-event
//! tracks/s with p99 ≤ 20 ms; ≥ 100,000 batched events/s; batched ingest at
//! ≥ 50 % of the raw COPY rate). Run it with `scripts/bench.sh metering`,
//! which starts a private PostgreSQL (fsync on) and Redis; it loads only
//! 127.0.0.1, for a bounded time per phase.
//!
//! Prints, for one server on this machine:
//! - single-event `POST /api/v1/usage/track` over many connections:
//!   events/s and p50/p99 latency;
//! - `POST /api/v1/usage/track/batch` with 1,000 events per call: events/s
//!   and p50/p99 per call;
//! - the anchor: plain `COPY` of the same rows into the same table, same
//!   chunk size and parallelism, each chunk committed: rows/s.

mod common;

use std::time::{Duration, Instant};

use common::{Bench, report};
use serde_json::{Value, json};
use sqlx::Connection;
use tenlyr::{
    domain::usage::{Metric, NewEvent},
    storage::usage::{self, Pending},
};

/// Seconds per phase (BENCH_SECONDS).
fn phase() -> Duration {
    Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    )
}

async fn provision(
    bench: &Bench,
    http: &reqwest::Client,
    n: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut tenants = Vec::with_capacity(n);
    for i in 0..n {
        let reply: Value = http
            .post(format!("{}/api/v1/tenants", bench.base_url))
            .bearer_auth(&bench.admin_key)
            .json(&json!({"name": format!("Meter {i}"), "ownerEmail": format!("meter{i}@bench.test"), "plan": "enterprise"}))
            .send()
            .await?
            .json()
            .await?;
        tenants.push((
            reply["tenant"]["id"].as_str().unwrap().to_owned(),
            reply["apiKey"].as_str().unwrap().to_owned(),
        ));
    }
    Ok(tenants)
}

/// Runs `clients` loops of `send` for one phase; returns per-call latencies
/// and the events they carried.
async fn load<F, Fut>(clients: usize, send: F) -> (Vec<Duration>, usize, Duration)
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = usize> + Send,
{
    let started = Instant::now();
    let deadline = started + phase();
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

fn rate(name: &str, events: usize, elapsed: Duration) -> f64 {
    let per_sec = events as f64 / elapsed.as_secs_f64();
    println!(
        "{name:<48} {events} events in {:.1} s = {per_sec:>10.0} events/s",
        elapsed.as_secs_f64()
    );
    per_sec
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let tenants = provision(&bench, &http, 16).await?;
    println!(
        "tenlyr metering benchmark: {} s per phase, 16 tenants, redis: {}",
        phase().as_secs(),
        bench.redis_url.is_some()
    );

    // Single events over many connections.
    let connections = 64;
    let url = format!("{}/api/v1/usage/track", bench.base_url);
    let (samples, events, elapsed) = load(connections, {
        let (http, tenants) = (http.clone(), tenants.clone());
        move |c, n| {
            let (http, url, key) = (http.clone(), url.clone(), tenants[c % tenants.len()].1.clone());
            async move {
                let body = json!({"metric": "api_call", "value": 1, "endpoint": "/v1/orders", "idempotencyKey": format!("s{c}-{n}")});
                let r = http.post(&url).bearer_auth(&key).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
                let _ = r.bytes().await;
                1
            }
        }
    })
    .await;
    rate(
        &format!("track, single events, {connections} connections"),
        events,
        elapsed,
    );
    report("  latency per track", samples);

    // Batches of 1,000.
    let clients = 8;
    let url = format!("{}/api/v1/usage/track/batch", bench.base_url);
    let (samples, events, elapsed) = load(clients, {
        let (http, tenants) = (http.clone(), tenants.clone());
        move |c, n| {
            let (http, url, key) = (http.clone(), url.clone(), tenants[c % tenants.len()].1.clone());
            async move {
                let events: Vec<Value> = (0..1000)
                    .map(|i| json!({"metric": "api_call", "value": 1, "endpoint": "/v1/orders", "idempotencyKey": format!("b{c}-{n}-{i}")}))
                    .collect();
                let r = http.post(&url).bearer_auth(&key).json(&json!({"events": events})).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let reply: Value = r.json().await.unwrap();
                assert_eq!(reply["accepted"], 1000, "{reply}");
                1000
            }
        }
    })
    .await;
    let batched = rate(
        &format!("track/batch, 1,000 per call, {clients} clients"),
        events,
        elapsed,
    );
    report("  latency per batch call", samples);

    // The storage layer alone (no HTTP, JSON or queue): where the time of
    // a batch goes.
    let (samples, events, elapsed) = load(clients, {
        let (db, tenants) = (bench.db.clone(), tenants.clone());
        move |c, n| {
            let (db, tenant) = (db.clone(), tenants[c % tenants.len()].0.parse().unwrap());
            async move {
                let events: Vec<Pending> = (0..1000)
                    .map(|i| Pending {
                        id: uuid::Uuid::now_v7(),
                        tenant_id: tenant,
                        event: NewEvent {
                            metric: Metric::ApiCall,
                            value: 1.0,
                            endpoint: Some("/v1/orders".into()),
                            idempotency_key: Some(format!("d{c}-{n}-{i}")),
                            occurred_at: chrono::Utc::now(),
                            status_code: None,
                        },
                    })
                    .collect();
                usage::commit(db.pool(), &events).await.unwrap();
                1000
            }
        }
    })
    .await;
    rate(
        &format!("storage commit only, 1,000 per commit, {clients} tasks"),
        events,
        elapsed,
    );
    report("  latency per commit", samples);

    // The anchor: COPY of the same rows, same chunks and parallelism, one
    // connection per client (as the server's pool has).
    let started = Instant::now();
    let deadline = started + phase();
    let mut tasks = Vec::new();
    for (c, (tenant, _)) in tenants.iter().cycle().take(clients).enumerate() {
        let (url, tenant) = (bench.url.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let mut rows_sent = 0;
            let mut n = 0;
            while Instant::now() < deadline {
                let now = chrono::Utc::now().to_rfc3339();
                let mut rows = String::with_capacity(1000 * 160);
                for i in 0..1000 {
                    let id = uuid::Uuid::now_v7();
                    rows.push_str(&format!(
                        "{id}\t{tenant}\tapi_call\t1\t/v1/orders\t\\N\tc{c}-{n}-{i}\t{now}\n"
                    ));
                }
                let mut copy = conn
                    .copy_in_raw("COPY usage_events (id, tenant_id, metric, value, endpoint, status_code, idempotency_key, occurred_at) FROM STDIN")
                    .await
                    .unwrap();
                copy.send(rows.as_bytes()).await.unwrap();
                copy.finish().await.unwrap();
                rows_sent += 1000;
                n += 1;
            }
            conn.close().await.unwrap();
            rows_sent
        }));
    }
    let mut events = 0;
    for task in tasks {
        events += task.await?;
    }
    let copy = rate(
        &format!("raw COPY, 1,000 rows per commit, {clients} connections"),
        events,
        started.elapsed(),
    );
    println!(
        "batched ingest / raw COPY = {:.0} %",
        batched / copy * 100.0
    );

    bench.finish().await
}
