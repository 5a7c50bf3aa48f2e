//! The inbound webhook gateway (`scripts/bench.sh inbound`): signed Stripe
//! webhooks over the slug route from 64 connections, each verified,
//! deduped, durably logged and forwarded to a real receiver on loopback
//! (and, for comparison, to tenants without a callback URL: logged only),
//! beside the machine's floor (`GET /healthz` on the same connections) in
//! interleaved rounds; then a fixed 1,000 webhooks/s for 10 s, showing
//! whether forwarding keeps up (the receiver's backlog).
//! BENCH_SECONDS (default 10) sets the length of each measurement.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{extract::Request, http::StatusCode};
use common::{Bench, Connections, load, report};
use http::Method;
use ring::hmac;
use serde_json::{Value, json};

const CONNECTIONS: usize = 64;
const ROUNDS: u32 = 3;
const TENANTS: usize = 16;
const SECRET: &str = "whsec_bench_inbound_secret";

fn phase() -> Duration {
    Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    )
}

fn stripe_signature(body: &str) -> String {
    let t = chrono::Utc::now().timestamp().to_string();
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.as_bytes());
    ctx.update(b".");
    ctx.update(body.as_bytes());
    let hex: String = ctx
        .sign()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

async fn start_sink(received: Arc<AtomicUsize>) -> anyhow::Result<String> {
    let app = axum::Router::new().fallback(move |request: Request| {
        let received = received.clone();
        async move {
            let _ = axum::body::to_bytes(request.into_body(), 1 << 20).await;
            received.fetch_add(1, Ordering::Relaxed);
            StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}/callback"))
}

/// Caller `c` sends one signed webhook with a unique event id to `path`;
/// whether it was 200.
async fn send(conns: &Connections, c: usize, path: &str, id: &str) -> bool {
    let body = json!({"id": id, "type": "charge.succeeded", "created": 1_771_815_596,
        "data": {"object": {"id": format!("ch_{id}"), "amount": 1250, "currency": "usd"}}})
    .to_string();
    let sig = stripe_signature(&body);
    let (status, _) = conns
        .send(
            c,
            Method::POST,
            path,
            &[("stripe-signature", sig.as_str())],
            Some(body),
        )
        .await;
    status == 200
}

/// Provisions the tenants of one phase with Stripe enabled (and the
/// callback URL, if given); their slug routes' paths.
async fn tenants(
    bench: &Bench,
    http: &reqwest::Client,
    tag: &str,
    callback: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    let mut urls = Vec::new();
    for (id, key) in common::provision(bench, http, TENANTS, tag).await? {
        let mut settings =
            json!({"providers": [{"provider": "stripe", "enabled": true, "secret": SECRET}]});
        if let Some(callback) = callback {
            settings["callbackUrl"] = json!(callback);
        }
        let saved: Value = http
            .put(format!("{}/api/v1/webhooks/settings", bench.base_url))
            .bearer_auth(&key)
            .json(&settings)
            .send()
            .await?
            .json()
            .await?;
        anyhow::ensure!(saved["providers"].is_array(), "settings: {saved}");
        let tenant: Value = http
            .get(format!("{}/api/v1/tenants/{id}", bench.base_url))
            .bearer_auth(&bench.admin_key)
            .send()
            .await?
            .json()
            .await?;
        let slug = tenant["slug"].as_str().unwrap_or_default();
        urls.push(format!("/v1/t/{slug}/webhooks/stripe"));
    }
    Ok(urls)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()?;
    let received = Arc::new(AtomicUsize::new(0));
    let callback = start_sink(received.clone()).await?;
    let urls = Arc::new(tenants(&bench, &http, "inbound", Some(&callback)).await?);
    let quiet = Arc::new(tenants(&bench, &http, "logonly", None).await?);
    let conns = Connections::open(&bench.base_url, CONNECTIONS).await?;
    println!(
        "tenlyr inbound gateway benchmark: {CONNECTIONS} connections, {TENANTS} tenants, \
         {} s per measurement in {ROUNDS} rounds, forwarding to a loopback receiver",
        phase().as_secs()
    );
    let slice = phase() / ROUNDS;
    let (mut floor_calls, mut floor_time) = (0, Duration::ZERO);
    let (mut samples, mut accepted, mut time) = (Vec::new(), 0, Duration::ZERO);
    let (mut quiet_samples, mut quiet_accepted, mut quiet_time) = (Vec::new(), 0, Duration::ZERO);
    for round in 0..ROUNDS {
        let (n, t) = conns.floor(slice).await;
        (floor_calls, floor_time) = (floor_calls + n, floor_time + t);

        let (forwarded, client) = (urls.clone(), conns.clone());
        let (s, n, t) = load(CONNECTIONS, slice, move |c, n| {
            let (urls, conns) = (forwarded.clone(), client.clone());
            async move {
                let id = format!("evt_r{round}_c{c}_n{n}");
                usize::from(send(&conns, c, &urls[c % urls.len()], &id).await)
            }
        })
        .await;
        samples.extend(s);
        (accepted, time) = (accepted + n, time + t);

        let (logged_only, client) = (quiet.clone(), conns.clone());
        let (s, n, t) = load(CONNECTIONS, slice, move |c, n| {
            let (urls, conns) = (logged_only.clone(), client.clone());
            async move {
                let id = format!("evt_q{round}_c{c}_n{n}");
                usize::from(send(&conns, c, &urls[c % urls.len()], &id).await)
            }
        })
        .await;
        quiet_samples.extend(s);
        (quiet_accepted, quiet_time) = (quiet_accepted + n, quiet_time + t);
    }
    let floor = floor_calls as f64 / floor_time.as_secs_f64();
    let per_sec = accepted as f64 / time.as_secs_f64();
    println!("{:<52} {floor:>10.0} calls/s", "floor: GET /healthz");
    println!(
        "{:<52} {per_sec:>10.0} webhooks/s ({:.0} % of the floor's calls)",
        "gateway: verified, deduped, logged (200)",
        per_sec / floor * 100.0
    );
    report("  latency of the 200", samples);
    let quiet_per_sec = quiet_accepted as f64 / quiet_time.as_secs_f64();
    println!(
        "{:<52} {quiet_per_sec:>10.0} webhooks/s ({:.0} % of the floor's calls)",
        "gateway, no callback URL: logged only (200)",
        quiet_per_sec / floor * 100.0
    );
    report("  latency of the 200", quiet_samples);
    let began = Instant::now();
    while received.load(Ordering::Relaxed) < accepted && began.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{:<52} {:>10} of {accepted} forwarded, {:.1} s after the load stopped",
        "  forwarding backlog drained",
        received.load(Ordering::Relaxed),
        began.elapsed().as_secs_f64()
    );

    // Fixed rate: does forwarding keep up at 1,000/s?
    let rate = 1000u64;
    let seconds = 10u64;
    let base = received.load(Ordering::Relaxed);
    let began = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut tasks = Vec::new();
    let mut backlog = Vec::new();
    for i in 0..rate * seconds {
        ticker.tick().await;
        let (conns, path) = (conns.clone(), urls[i as usize % urls.len()].clone());
        let c = i as usize % CONNECTIONS;
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let ok = send(&conns, c, &path, &format!("evt_rate_{i}")).await;
            (ok, started.elapsed())
        }));
        if i % rate == rate - 1 {
            backlog.push((i + 1) as usize - (received.load(Ordering::Relaxed) - base));
        }
    }
    let mut fixed = Vec::new();
    for task in tasks {
        let (ok, latency) = task.await?;
        anyhow::ensure!(ok, "a webhook was refused at the fixed rate");
        fixed.push(latency);
    }
    report(&format!("fixed {rate}/s: latency of the 200"), fixed);
    println!(
        "{:<52} {:?}",
        "  sent - forwarded, at the end of each second", backlog
    );
    let total = (rate * seconds) as usize;
    while received.load(Ordering::Relaxed) - base < total
        && began.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "{:<52} {} of {total} in {:.2} s",
        "  forwarded",
        received.load(Ordering::Relaxed) - base,
        began.elapsed().as_secs_f64()
    );
    bench.finish().await
}
