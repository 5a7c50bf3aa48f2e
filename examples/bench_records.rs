//! Idempotent records (`scripts/bench.sh records`): lock → save → get
//! cycles with 64 connections, each on its own key, over REST and over
//! native gRPC (64 HTTP/2 connections), beside the machine's floor
//! (`GET /healthz` on the REST connections) in interleaved rounds, then
//! over REST at a fixed rate below saturation (BENCH_RECORDS_RATE cycles/s,
//! default 3,000: issue 18's target rate). Prints cycles/s and p50/p99 per
//! call.
//! BENCH_SECONDS (default 10) sets the length of each measurement.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Bench, Connections, load, report};
use http::Method;
use serde_json::{Value, json};
use tenlyr::proto::v1::{self, record_service_client::RecordServiceClient};
use tonic::transport::Channel;

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
    let conns = Connections::open(&bench.base_url, CONNECTIONS).await?;
    // The same over gRPC: one HTTP/2 connection per caller.
    let mut channels = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        channels.push(
            Channel::from_shared(bench.base_url.clone())?
                .connect()
                .await?,
        );
    }
    let (mut grpc_samples, mut grpc_cycles, mut grpc_time) = (Vec::new(), 0, Duration::ZERO);
    let grpc_calls: Arc<Mutex<[Vec<Duration>; 3]>> = Arc::default();
    for round in 0..ROUNDS {
        let (n, t) = conns.floor(slice).await;
        (floor_calls, floor_time) = (floor_calls + n, floor_time + t);

        let (rest_keys, rest_conns) = (keys.clone(), conns.clone());
        let per_call = calls.clone();
        let (s, n, t) = load(CONNECTIONS, slice, move |c, n| {
            let (key, conns) = (rest_keys[c % rest_keys.len()].clone(), rest_conns.clone());
            let calls = per_call.clone();
            async move {
                let record = format!("r{round}-c{c}-n{n}");
                tally(
                    &calls,
                    cycle(&conns, c, &key, &record, Instant::now()).await,
                );
                1
            }
        })
        .await;
        samples.extend(s);
        (cycles, time) = (cycles + n, time + t);

        let (grpc_channels, grpc_keys) = (channels.clone(), keys.clone());
        let per_call = grpc_calls.clone();
        let (s, n, t) = load(CONNECTIONS, slice, move |c, n| {
            let client = RecordServiceClient::new(grpc_channels[c].clone());
            let key = grpc_keys[c % grpc_keys.len()].clone();
            let calls = per_call.clone();
            async move {
                let record = format!("g{round}-c{c}-n{n}");
                tally(&calls, grpc_cycle(client, &key, &record).await);
                1
            }
        })
        .await;
        grpc_samples.extend(s);
        (grpc_cycles, grpc_time) = (grpc_cycles + n, grpc_time + t);
    }
    let floor = floor_calls as f64 / floor_time.as_secs_f64();
    println!("{:<52} {floor:>10.0} calls/s", "floor: GET /healthz");
    summarize(
        "records: lock -> save -> get",
        (cycles, time, samples),
        &calls,
        floor,
    );
    summarize(
        "records over gRPC: Lock -> Save -> Get",
        (grpc_cycles, grpc_time, grpc_samples),
        &grpc_calls,
        floor,
    );

    // A fixed rate below saturation: the latency a caller sees at that
    // load, without the closed loop's queue. Each connection starts a
    // cycle every 64/rate s; a lock is timed from when it was due, so a
    // stall that delays the next cycles counts against them too.
    let rate: f64 = std::env::var("BENCH_RECORDS_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000.0);
    let every = Duration::from_secs_f64(CONNECTIONS as f64 / rate);
    let began = tokio::time::Instant::now();
    let deadline = began + phase();
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        let (key, conns) = (keys[c % keys.len()].clone(), conns.clone());
        let first = began + every.mul_f64(c as f64 / CONNECTIONS as f64);
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(first, every);
            let mut took = Vec::new();
            for n in 0.. {
                let due = ticks.tick().await;
                if due >= deadline {
                    break;
                }
                let record = format!("fixed-c{c}-n{n}");
                took.push(cycle(&conns, c, &key, &record, due.into_std()).await);
            }
            took
        }));
    }
    let mut fixed = Vec::new();
    for task in tasks {
        fixed.extend(task.await?);
    }
    let took = began.elapsed().as_secs_f64();
    println!(
        "{:<52} {:>10.0} cycles/s ({} cycles in {took:.1} s, asked {rate:.0}/s)",
        "fixed rate: lock -> save -> get",
        fixed.len() as f64 / took,
        fixed.len(),
    );
    report(
        "  latency per call (lock from when it was due)",
        fixed.iter().flatten().copied().collect(),
    );
    bench.finish().await
}

/// Adds one cycle's lock, save and get latencies to the per-call lists.
fn tally(calls: &Mutex<[Vec<Duration>; 3]>, took: [Duration; 3]) {
    let mut calls = calls.lock().unwrap();
    for (all, took) in calls.iter_mut().zip(took) {
        all.push(took);
    }
}

/// Prints one protocol's cycles/s beside the floor's calls/s, then the
/// latency per cycle, per call and of each call.
fn summarize(
    name: &str,
    (cycles, time, samples): (usize, Duration, Vec<Duration>),
    calls: &Mutex<[Vec<Duration>; 3]>,
    floor: f64,
) {
    let per_sec = cycles as f64 / time.as_secs_f64();
    println!(
        "{name:<52} {per_sec:>10.0} cycles/s ({:.0} calls/s, {:.0} % of the floor's calls)",
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
}

/// One lock → save → get over REST; each call's latency, the lock's
/// counted from `due` (when it should have been sent).
async fn cycle(
    conns: &Connections,
    c: usize,
    key: &str,
    record: &str,
    due: Instant,
) -> [Duration; 3] {
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];
    let (status, body) = conns
        .send(
            c,
            Method::POST,
            "/v1/record/lock",
            &headers,
            Some(json!({"key": record}).to_string()),
        )
        .await;
    assert_eq!(status, 200);
    let lock_time = due.elapsed();
    let locked: Value = serde_json::from_slice(&body).unwrap();
    let token = locked["lockToken"].as_str().expect("locked");
    let started = Instant::now();
    let data =
        json!({"key": record, "lockToken": token, "data": {"chargeId": record, "amount": 12.5}});
    let (status, _) = conns
        .send(
            c,
            Method::POST,
            "/v1/record/save",
            &headers,
            Some(data.to_string()),
        )
        .await;
    assert_eq!(status, 200);
    let save_time = started.elapsed();
    let started = Instant::now();
    let (status, _) = conns
        .send(
            c,
            Method::GET,
            &format!("/v1/record/{record}"),
            &headers,
            None,
        )
        .await;
    assert_eq!(status, 200);
    [lock_time, save_time, started.elapsed()]
}

/// One Lock → Save → Get over native gRPC; each call's latency.
async fn grpc_cycle(
    mut client: RecordServiceClient<Channel>,
    key: &str,
    record: &str,
) -> [Duration; 3] {
    let auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {key}").parse().unwrap();
    fn with<T>(
        message: T,
        auth: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", auth.clone());
        request
    }
    let started = Instant::now();
    let locked = client
        .lock(with(
            v1::LockRequest {
                key: record.to_owned(),
                ..Default::default()
            },
            &auth,
        ))
        .await
        .unwrap()
        .into_inner();
    let lock_time = started.elapsed();
    assert!(!locked.lock_token.is_empty(), "locked");
    let data = prost_types::Struct {
        fields: [
            (
                "chargeId".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(record.to_owned())),
                },
            ),
            (
                "amount".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(12.5)),
                },
            ),
        ]
        .into(),
    };
    let started = Instant::now();
    client
        .save(with(
            v1::SaveRequest {
                key: record.to_owned(),
                lock_token: locked.lock_token,
                data: Some(data),
            },
            &auth,
        ))
        .await
        .unwrap();
    let save_time = started.elapsed();
    let started = Instant::now();
    client
        .get(with(
            v1::GetRequest {
                key: record.to_owned(),
            },
            &auth,
        ))
        .await
        .unwrap();
    [lock_time, save_time, started.elapsed()]
}
