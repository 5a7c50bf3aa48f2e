//! The webhook delivery engine's speed (`scripts/bench.sh webhooks`): a
//! sink on loopback, BENCH_ENDPOINTS endpoints (default 4) registered on
//! it, platform events committed through the outbox (one transaction per
//! event, as a tenant change commits them), each fanned out to every
//! endpoint, signed and delivered by the server's dispatcher.
//!
//! - fixed rate: 500 events/s for 10 s; latency from the event's commit to
//!   its receipt at the sink, and deliveries/s;
//! - as fast as possible: BENCH_EVENTS events (default 10,000), committed
//!   100 per transaction, from the first commit to the last receipt.
//!
//! Each beside a reference in the same run: the same signed POSTs sent to
//! the same sink straight from a client (as many in flight as the
//! dispatcher allows), with no queue, no database and no retry log.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{body::Bytes, extract::Request, http::StatusCode};
use common::{Bench, report};
use futures_util::{StreamExt as _, stream};
use serde_json::json;
use tenlyr::{
    service::events::Outbox,
    storage::{tenant_data::Scope, webhooks},
    workers::SystemClock,
};

/// Commit instants by event id, and receipt latencies.
#[derive(Default)]
struct Sink {
    committed: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<Duration>>,
    received: AtomicUsize,
    /// How long the events' own commits took (the floor under the
    /// commit -> receipt latency, which starts at the commit call).
    commits: Mutex<Vec<Duration>>,
}

async fn start_sink(sink: Arc<Sink>) -> anyhow::Result<String> {
    let app = axum::Router::new().fallback(move |request: Request| {
        let sink = sink.clone();
        async move {
            let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let now = Instant::now();
            let id = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned));
            if let Some(at) = id.and_then(|id| sink.committed.lock().unwrap().get(&id).copied()) {
                sink.latencies.lock().unwrap().push(now - at);
            }
            sink.received.fetch_add(1, Ordering::Relaxed);
            StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn wait_for(sink: &Sink, total: usize, limit: Duration) -> Duration {
    let began = Instant::now();
    while sink.received.load(Ordering::Relaxed) < total {
        if began.elapsed() > limit {
            eprintln!(
                "only {} of {total} deliveries arrived within {limit:?}",
                sink.received.load(Ordering::Relaxed)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    began.elapsed()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let endpoints = env_usize("BENCH_ENDPOINTS", 4);
    let events = env_usize("BENCH_EVENTS", 10_000);
    let sink = Arc::new(Sink::default());
    let sink_url = start_sink(sink.clone()).await?;
    let http = reqwest::Client::new();
    for i in 0..endpoints {
        let reply: serde_json::Value = http
            .post(format!("{}/api/v1/webhook-endpoints", bench.base_url))
            .bearer_auth(&bench.admin_key)
            .json(&json!({"url": format!("{sink_url}/ep{i}")}))
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(reply["secret"].is_string(), "endpoint not created: {reply}");
    }
    let outbox = Outbox::new(Arc::new(SystemClock));
    println!(
        "tenlyr webhook delivery benchmark: {endpoints} endpoints on one loopback sink, 256 requests in flight"
    );

    // Fixed rate: one transaction per event, 500 per second, 10 s.
    let rate = 500;
    let seconds = 10;
    let began = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut tasks = Vec::new();
    for _ in 0..rate * seconds as u64 {
        ticker.tick().await;
        let (db, outbox, sink) = (bench.db.clone(), outbox.clone(), sink.clone());
        tasks.push(tokio::spawn(async move {
            let event = outbox.event(
                "tenant.provisioned",
                None,
                json!({"tenantId": uuid::Uuid::now_v7(), "name": "Acme Corp", "plan": "growth", "region": "us-east-1"}),
            );
            let tx = db.begin(Scope::Platform).await?;
            webhooks::emit_in(&tx, &event, None).await?;
            let at = Instant::now();
            sink.committed.lock().unwrap().insert(event.id.clone(), at);
            tx.commit().await?;
            sink.commits.lock().unwrap().push(at.elapsed());
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let total = rate as usize * seconds * endpoints;
    wait_for(&sink, total, Duration::from_secs(60)).await;
    let elapsed = began.elapsed();
    println!(
        "{:<48} {total} deliveries in {:.2} s = {:>7.0} deliveries/s",
        format!("dispatcher: {rate} events/s x {endpoints} endpoints"),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    report(
        "dispatcher: event commit -> receipt",
        std::mem::take(&mut *sink.latencies.lock().unwrap()),
    );
    report(
        "reference: the event's own commit",
        std::mem::take(&mut *sink.commits.lock().unwrap()),
    );
    let reference = direct(&sink_url, rate as usize * seconds, Some(rate), 256).await;
    report("reference: the same POST sent directly", reference);

    // As fast as possible: 100 events per transaction.
    sink.received.store(0, Ordering::Relaxed);
    let began = Instant::now();
    for chunk in 0..events.div_ceil(100) {
        let n = 100.min(events - chunk * 100);
        let tx = bench.db.begin(Scope::Platform).await?;
        for _ in 0..n {
            let event = outbox.event(
                "tenant.deleted",
                None,
                json!({"tenantId": uuid::Uuid::now_v7()}),
            );
            webhooks::emit_in(&tx, &event, None).await?;
        }
        tx.commit().await?;
    }
    let committed = began.elapsed();
    let total = events * endpoints;
    wait_for(&sink, total, Duration::from_secs(300)).await;
    let elapsed = began.elapsed();
    println!(
        "{:<48} {total} deliveries: committed in {:.2} s, received in {:.2} s = {:>7.0} deliveries/s",
        "dispatcher: as fast as possible",
        committed.as_secs_f64(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    let began = Instant::now();
    direct(&sink_url, total, None, 256).await;
    let elapsed = began.elapsed();
    println!(
        "{:<48} {total} POSTs in {:.2} s = {:>7.0} POSTs/s",
        "reference: the same POSTs sent directly",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    bench.finish().await
}

/// `count` signed POSTs of an event-sized body to the sink, `in_flight` at
/// a time (at `rate` per second, if given); their latencies.
async fn direct(sink: &str, count: usize, rate: Option<u64>, in_flight: usize) -> Vec<Duration> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let secret = tenlyr::domain::webhook::new_secret();
    let began = Instant::now();
    stream::iter(0..count)
        .map(|i| {
            let (client, secret) = (client.clone(), secret.clone());
            async move {
                if let Some(rate) = rate {
                    let due = began + Duration::from_micros(i as u64 * 1_000_000 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let id = tenlyr::domain::webhook::new_event_id();
                let body = json!({"id": id, "type": "tenant.provisioned", "createdAt": "2026-03-14T10:00:00.000Z",
                    "data": {"tenantId": uuid::Uuid::now_v7(), "name": "Acme Corp", "plan": "growth", "region": "us-east-1"}})
                .to_string();
                let t = chrono::Utc::now().timestamp();
                let started = Instant::now();
                let _ = client
                    .post(format!("{sink}/direct"))
                    .header(
                        "tenlyr-signature",
                        tenlyr::domain::webhook::tenlyr_signature(&[&secret], t, body.as_bytes()),
                    )
                    .header(
                        "webhook-signature",
                        tenlyr::domain::webhook::standard_signature(&[&secret], &id, t, body.as_bytes()),
                    )
                    .body(Bytes::from(body))
                    .send()
                    .await;
                started.elapsed()
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await
}
