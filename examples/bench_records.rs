//! Idempotent records (`scripts/bench.sh records`): lock → save → get
//! cycles over REST with 64 connections, each on its own key, beside the
//! machine's floor (`GET /healthz` on the same connections) in interleaved
//! rounds. Prints cycles/s and p50/p99 per call.
//! BENCH_SECONDS (default 10) sets the length of each measurement.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Bench, load, report};
use serde_json::{Value, json};

const CONNECTIONS: usize = 64;
const ROUNDS: u32 = 3;

fn phase() -> Duration {
    Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let mut keys = Vec::new();
    for i in 0..16 {
        let reply: Value = http
            .post(format!("{}/api/v1/tenants", bench.base_url))
            .bearer_auth(&bench.admin_key)
            .json(&json!({"name": format!("Records {i}"), "ownerEmail": format!("records{i}@bench.test")}))
            .send()
            .await?
            .json()
            .await?;
        keys.push(reply["apiKey"].as_str().unwrap().to_owned());
    }
    println!(
        "tenlyr records benchmark: {CONNECTIONS} connections, {} s per measurement in {ROUNDS} rounds",
        phase().as_secs()
    );
    let slice = phase() / ROUNDS;
    let (mut floor_calls, mut floor_time) = (0, Duration::ZERO);
    let (mut samples, mut cycles, mut time) = (Vec::new(), 0, Duration::ZERO);
    // Per call: lock, save, get.
    let calls: Arc<Mutex<[Vec<Duration>; 3]>> = Arc::default();
    for round in 0..ROUNDS {
        let url = format!("{}/healthz", bench.base_url);
        let floor_http = http.clone();
        let (_, n, t) = load(CONNECTIONS, slice, move |_, _| {
            let (http, url) = (floor_http.clone(), url.clone());
            async move {
                let r = http.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
                1
            }
        })
        .await;
        (floor_calls, floor_time) = (floor_calls + n, floor_time + t);

        let (base, keys, http) = (bench.base_url.clone(), keys.clone(), http.clone());
        let per_call = calls.clone();
        let (s, n, t) = load(CONNECTIONS, slice, move |c, n| {
            let (base, key, http) = (base.clone(), keys[c % keys.len()].clone(), http.clone());
            let calls = per_call.clone();
            async move {
                let record = format!("r{round}-c{c}-n{n}");
                let started = Instant::now();
                let locked: Value = http
                    .post(format!("{base}/v1/record/lock"))
                    .bearer_auth(&key)
                    .json(&json!({"key": record}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let lock_time = started.elapsed();
                let token = locked["lockToken"].as_str().expect("locked").to_owned();
                let started = Instant::now();
                let r = http
                    .post(format!("{base}/v1/record/save"))
                    .bearer_auth(&key)
                    .json(&json!({"key": record, "lockToken": token, "data": {"chargeId": record, "amount": 12.5}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
                let save_time = started.elapsed();
                let started = Instant::now();
                let r = http
                    .get(format!("{base}/v1/record/{record}"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
                let get_time = started.elapsed();
                let mut calls = calls.lock().unwrap();
                for (all, took) in calls.iter_mut().zip([lock_time, save_time, get_time]) {
                    all.push(took);
                }
                1
            }
        })
        .await;
        samples.extend(s);
        (cycles, time) = (cycles + n, time + t);
    }
    let floor = floor_calls as f64 / floor_time.as_secs_f64();
    let per_sec = cycles as f64 / time.as_secs_f64();
    println!("{:<52} {floor:>10.0} calls/s", "floor: GET /healthz");
    println!(
        "{:<52} {per_sec:>10.0} cycles/s ({:.0} calls/s, {:.0} % of the floor's calls)",
        "records: lock -> save -> get",
        per_sec * 3.0,
        per_sec * 3.0 / floor * 100.0
    );
    report("  latency per cycle (3 calls)", samples);
    let [locks, saves, gets] = std::mem::take(&mut *calls.lock().unwrap());
    report(
        "  latency per call",
        locks.iter().chain(&saves).chain(&gets).copied().collect(),
    );
    report("    lock", locks);
    report("    save", saves);
    report("    get", gets);
    bench.finish().await
}
