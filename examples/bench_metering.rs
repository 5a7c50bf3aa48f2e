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
//! - the anchor: plain binary `COPY` of the same rows into the same day
//!   partition, same chunk size and parallelism, each chunk committed
//!   (as a superuser, nothing else in the transaction): rows/s.

mod common;

use std::time::{Duration, Instant};

use common::{Bench, load, report};

use sqlx::Connection;
use tenlyr::{
    domain::usage::{Metric, NewEvent},
    storage::usage::{self, Pending, StoredEvent},
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

/// Whether to run `phase` (BENCH_PHASES: a comma list of floor, metrics,
/// single, grpc, storage, batch, copy; all by default).
fn wanted(phase: &str) -> bool {
    std::env::var("BENCH_PHASES").map_or(true, |v| v.split(',').any(|p| p == phase))
}

fn rate(name: &str, events: usize, elapsed: Duration) -> f64 {
    let per_sec = events as f64 / elapsed.as_secs_f64();
    println!(
        "{name:<48} {events} events in {:.1} s = {per_sec:>10.0} events/s",
        elapsed.as_secs_f64()
    );
    per_sec
}

/// Prints a phase's rate and its latency per call.
fn summary(
    name: &str,
    latency: &str,
    (samples, events, elapsed): (Vec<Duration>, usize, Duration),
) {
    rate(name, events, elapsed);
    report(latency, samples);
}

type Tenants = Vec<(String, String)>;

/// One tracked event as the client sends it (typed, so that the load
/// generator spends little of the shared CPU on JSON).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EventBody {
    metric: &'static str,
    value: u32,
    endpoint: &'static str,
    idempotency_key: String,
}

impl EventBody {
    fn new(idempotency_key: String) -> Self {
        Self {
            metric: "api_call",
            value: 1,
            endpoint: "/v1/orders",
            idempotency_key,
        }
    }
}

#[derive(serde::Serialize)]
struct BatchBody {
    events: Vec<EventBody>,
}

#[derive(serde::Deserialize)]
struct BatchReply {
    accepted: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let tenants = common::provision(&bench, &http, 16, "meter").await?;
    println!(
        "tenlyr metering benchmark: {} s per phase, 16 tenants, redis: {}",
        phase().as_secs(),
        bench.redis_url.is_some()
    );
    if wanted("floor") {
        floor(&bench, &http).await;
    }
    if wanted("metrics") {
        metrics(&bench, &http, &tenants).await;
    }
    if wanted("single") {
        single(&bench, &http, &tenants).await;
    }
    if wanted("grpc") {
        single_grpc(&bench, &tenants).await?;
    }
    if wanted("storage") {
        storage(&bench, &tenants).await;
    }
    if wanted("batch") || wanted("copy") {
        // Interleaved rounds, so that batches and the COPY anchor see the
        // same machine (its speed drifts by tens of percent over minutes).
        let slice = phase() / ROUNDS;
        let (mut samples, mut batched, mut batch_time) = (Vec::new(), 0, Duration::ZERO);
        let (mut copied, mut copy_time) = (0, Duration::ZERO);
        for round in 0..ROUNDS {
            if wanted("batch") {
                let (s, events, elapsed) = batch(&bench, &http, &tenants, slice, round).await;
                samples.extend(s);
                (batched, batch_time) = (batched + events, batch_time + elapsed);
            }
            if wanted("copy") {
                let (rows, elapsed) = copy(&bench, &tenants, slice, round).await?;
                (copied, copy_time) = (copied + rows, copy_time + elapsed);
            }
        }
        let mut ratio = (None, None);
        if wanted("batch") {
            ratio.0 = Some(rate(
                &format!("track/batch, 1,000 per call, {CLIENTS} clients"),
                batched,
                batch_time,
            ));
            report("  latency per batch call", samples);
        }
        if wanted("copy") {
            ratio.1 = Some(rate(
                &format!("raw COPY, 1,000 rows per commit, {CLIENTS} connections"),
                copied,
                copy_time,
            ));
        }
        if let (Some(batched), Some(copy)) = ratio {
            println!(
                "batched ingest / raw COPY = {:.0} % ({ROUNDS} interleaved rounds each)",
                batched / copy * 100.0
            );
        }
    }
    bench.finish().await
}

/// The floor: `GET /healthz` (no auth, no transcoding, no database) over
/// the same connections — what HTTP and the load generator alone cost here.
async fn floor(bench: &Bench, http: &reqwest::Client) {
    let connections = 64;
    let url = format!("{}/healthz", bench.base_url);
    let measured = load(connections, phase(), {
        let http = http.clone();
        move |_, _| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
                1
            }
        }
    })
    .await;
    summary(
        &format!("floor: GET /healthz, {connections} connections"),
        "  latency per call",
        measured,
    );
}

/// GET calls of `url` (with `key`, if any) over 64 connections for
/// `duration`: calls made, latencies, time taken.
async fn gets(
    http: &reqwest::Client,
    url: String,
    keys: Vec<Option<String>>,
    duration: Duration,
) -> (Vec<Duration>, usize, Duration) {
    let http = http.clone();
    load(64, duration, move |c, _| {
        let (http, url, key) = (http.clone(), url.clone(), keys[c % keys.len()].clone());
        async move {
            let mut request = http.get(&url);
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await;
            1
        }
    })
    .await
}

/// `GET /api/v1/usage/metrics` (the call the docs put before every
/// expensive operation) against `GET /healthz`, in interleaved rounds on
/// the same 64 connections so both see the same machine.
async fn metrics(bench: &Bench, http: &reqwest::Client, tenants: &Tenants) {
    let slice = phase() / ROUNDS;
    let keys: Vec<Option<String>> = tenants.iter().map(|t| Some(t.1.clone())).collect();
    let (mut floor_calls, mut floor_time) = (0, Duration::ZERO);
    let (mut samples, mut calls, mut time) = (Vec::new(), 0, Duration::ZERO);
    for _ in 0..ROUNDS {
        let (_, n, t) = gets(
            http,
            format!("{}/healthz", bench.base_url),
            vec![None],
            slice,
        )
        .await;
        (floor_calls, floor_time) = (floor_calls + n, floor_time + t);
        let (s, n, t) = gets(
            http,
            format!("{}/api/v1/usage/metrics", bench.base_url),
            keys.clone(),
            slice,
        )
        .await;
        samples.extend(s);
        (calls, time) = (calls + n, time + t);
    }
    let floor = rate("GET /healthz, 64 connections", floor_calls, floor_time);
    let metrics = rate("GET /api/v1/usage/metrics, 64 connections", calls, time);
    report("  latency per metrics call", samples);
    println!(
        "usage.metrics / healthz = {:.0} % ({ROUNDS} interleaved rounds each)",
        metrics / floor * 100.0
    );
}

/// Single events over many connections.
async fn single(bench: &Bench, http: &reqwest::Client, tenants: &Tenants) {
    let connections = 64;
    let url = format!("{}/api/v1/usage/track", bench.base_url);
    let measured = load(connections, phase(), {
        let (http, tenants) = (http.clone(), tenants.clone());
        move |c, n| {
            let (http, url, key) = (
                http.clone(),
                url.clone(),
                tenants[c % tenants.len()].1.clone(),
            );
            async move {
                let body = EventBody::new(format!("s{c}-{n}"));
                let r = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
                let _ = r.bytes().await;
                1
            }
        }
    })
    .await;
    summary(
        &format!("track, single events, {connections} connections"),
        "  latency per track",
        measured,
    );
}

/// Single events over native gRPC: 64 concurrent calls on one HTTP/2
/// connection (what the REST layer adds shows against `single`).
async fn single_grpc(bench: &Bench, tenants: &Tenants) -> anyhow::Result<()> {
    use tenlyr::proto::v1::{self, metering_service_client::MeteringServiceClient};
    let channel = tonic::transport::Channel::from_shared(bench.base_url.clone())?
        .connect()
        .await?;
    let calls = 64;
    let measured = load(calls, phase(), {
        let tenants = tenants.clone();
        move |c, n| {
            let mut client = MeteringServiceClient::new(channel.clone());
            let key = tenants[c % tenants.len()].1.clone();
            async move {
                let mut request = tonic::Request::new(v1::TrackRequest {
                    metric: v1::UsageMetric::ApiCall as i32,
                    value: 1.0,
                    endpoint: Some("/v1/orders".into()),
                    idempotency_key: Some(format!("g{c}-{n}")),
                    ..Default::default()
                });
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {key}").parse().unwrap());
                client.track(request).await.unwrap();
                1
            }
        }
    })
    .await;
    summary(
        &format!("gRPC Track, single events, {calls} concurrent calls"),
        "  latency per call",
        measured,
    );
    Ok(())
}

/// Batches of 1,000 events, each with an idempotency key, for `duration`.
async fn batch(
    bench: &Bench,
    http: &reqwest::Client,
    tenants: &Tenants,
    duration: Duration,
    round: u32,
) -> (Vec<Duration>, usize, Duration) {
    let url = format!("{}/api/v1/usage/track/batch", bench.base_url);
    load(CLIENTS, duration, {
        let (http, tenants) = (http.clone(), tenants.clone());
        move |c, n| {
            let (http, url, key) = (
                http.clone(),
                url.clone(),
                tenants[c % tenants.len()].1.clone(),
            );
            async move {
                let events: Vec<EventBody> = (0..1000)
                    .map(|i| EventBody::new(format!("b{round}-{c}-{n}-{i}")))
                    .collect();
                let r = http
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&BatchBody { events })
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let reply: BatchReply = r.json().await.unwrap();
                assert_eq!(reply.accepted, 1000);
                1000
            }
        }
    })
    .await
}

/// Rounds that the batch and COPY phases are split into.
const ROUNDS: u32 = 3;

/// Concurrent batch clients, commit tasks and COPY connections.
const CLIENTS: usize = 8;

/// The storage layer alone (no HTTP, JSON or queue): where the time of a
/// batch goes.
async fn storage(bench: &Bench, tenants: &Tenants) {
    let clients = CLIENTS;
    let measured = load(clients, phase(), {
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
    summary(
        &format!("storage commit only, 1,000 per commit, {clients} tasks"),
        "  latency per commit",
        measured,
    );
}

/// The anchor: binary COPY of the same rows into the same day partition,
/// same chunks and parallelism, one connection per client.
async fn copy(
    bench: &Bench,
    tenants: &Tenants,
    duration: Duration,
    round: u32,
) -> anyhow::Result<(usize, Duration)> {
    let clients = CLIENTS;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for (c, (tenant, _)) in tenants.iter().cycle().take(clients).enumerate() {
        let (url, tenant) = (bench.url.clone(), tenant.parse()?);
        tasks.push(tokio::spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let mut rows_sent = 0;
            let mut n = 0;
            while Instant::now() < deadline {
                let now = chrono::Utc::now();
                let rows = (0..1000).map(|i| StoredEvent {
                    id: uuid::Uuid::now_v7(),
                    tenant_id: tenant,
                    metric: Metric::ApiCall,
                    value: 1.0,
                    endpoint: Some("/v1/orders".into()),
                    status_code: None,
                    idempotency_key: Some(format!("c{round}-{c}-{n}-{i}")),
                    occurred_at: now,
                });
                let statement = format!(
                    "COPY {} {} FROM STDIN (FORMAT binary)",
                    usage::partition_of(now),
                    usage::COPY_COLUMNS
                );
                let mut copy = conn.copy_in_raw(&statement).await.unwrap();
                copy.send(usage::copy_binary(rows)).await.unwrap();
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
    Ok((events, started.elapsed()))
}
