//! What the review of issue 12 asked to hold: shutdown never acknowledges
//! and loses, readiness tells the truth, key invalidation cannot go
//! quietly stale, input is bounded before work, big deletes are jobs.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::Method;
use serde_json::{Value, json};
use tenlyr::proto::v1::{self, metering_service_client::MeteringServiceClient};
use tokio::time::Instant;

use crate::helpers::{TestApp, json, provision, with_key};

async fn track(app: &TestApp, http: &reqwest::Client, key: &str, idem: &str) -> Option<u16> {
    http.post(app.url("/api/v1/usage/track"))
        .bearer_auth(key)
        .json(&json!({"metric": "api_call", "value": 1, "idempotencyKey": idem}))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// An idempotency key and the HTTP status its track got (`None`: no
/// response at all).
type Outcome = (String, Option<u16>);

/// Tracks sent while shutdown begins are either committed and
/// acknowledged, or refused with 503 (or never reach the server): none is
/// acknowledged and lost. `/readyz` says 503 from the first moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_during_shutdown_is_committed_and_acknowledged_or_refused() {
    let mut app = TestApp::spawn_with(|c| c.shutdown_delay_secs = 1).await;
    let (_, key) = provision(&app, "drain@shutdown.test", "scale", "UTC").await;
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_secs(6);
    let mut senders = Vec::new();
    for worker in 0..8 {
        let (url, key, outcomes) = (app.url(""), key.clone(), outcomes.clone());
        senders.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut refused_in_a_row = 0;
            for n in 0.. {
                if Instant::now() > stop_at || refused_in_a_row >= 3 {
                    break;
                }
                let idem = format!("w{worker}-{n}");
                let status = http
                    .post(format!("{url}/api/v1/usage/track"))
                    .bearer_auth(&key)
                    .json(&json!({"metric": "api_call", "value": 1, "idempotencyKey": idem}))
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status().as_u16());
                refused_in_a_row = if status == Some(200) {
                    0
                } else {
                    refused_in_a_row + 1
                };
                outcomes.lock().unwrap().push((idem, status));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.ready().await.0, 200);
    app.begin_shutdown();
    // Not ready at once, while requests are still served.
    let began = Instant::now();
    loop {
        let (status, body) = app.ready().await;
        if status == 503 {
            assert_eq!(body["status"], "draining", "{body}");
            assert_eq!(body["statusCode"], 503, "{body}");
            break;
        }
        assert!(
            began.elapsed() < Duration::from_millis(500),
            "readyz still 200"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acked_before = outcomes.lock().unwrap().len();
    app.stopped().await.unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    assert!(
        outcomes.len() > acked_before,
        "requests were still served after readiness went 503"
    );
    let acknowledged: Vec<String> = outcomes
        .iter()
        .filter(|(_, s)| *s == Some(200))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(
        acknowledged.len() > 50,
        "{} acknowledged",
        acknowledged.len()
    );
    for (idem, status) in &outcomes {
        assert!(
            matches!(status, None | Some(200) | Some(503)),
            "{idem}: {status:?} is neither an acknowledgement nor a 503"
        );
    }
    let mut conn = app.db.connect().await;
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT idempotency_key) FROM usage_events WHERE idempotency_key = ANY($1)",
    )
    .bind(&acknowledged)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        stored as usize,
        acknowledged.len(),
        "every acknowledged event is stored"
    );
}

/// A private Redis on a free port that the test can kill and restart.
struct KillableRedis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl KillableRedis {
    async fn start() -> Self {
        let port = crate::helpers::unclaimed_port();
        let mut this = Self { port, child: None };
        this.restart().await;
        this
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not start");
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

async fn wait_for_mode(app: &TestApp, mode: &str) {
    let began = Instant::now();
    while app.ready().await.1["keyInvalidation"] != mode {
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "readyz never said {mode}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The subscription dies with Redis: the replica says so in `/readyz`,
/// keeps keys at most 3 s, so a key revoked on another replica (whose
/// message nobody hears) is refused within that bound; when Redis is back
/// the subscription is too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_invalidation_subscription_bounds_how_long_a_revoked_key_works() {
    let mut redis = KillableRedis::start().await;
    let (a, b) = TestApp::spawn_pair_on(&redis.url()).await;
    wait_for_mode(&b, "subscribed").await;
    let (id, key) = provision(&a, "keys@stale.test", "growth", "UTC").await;
    let path = format!("/api/v1/tenants/{id}/api-keys");
    let (_, extra) = json(
        a.http
            .post(a.url(&path))
            .bearer_auth(&key)
            .json(&json!({"label": "ci"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let (extra_key, extra_id) = (
        extra["apiKey"].as_str().unwrap().to_owned(),
        extra["key"]["id"].as_str().unwrap().to_owned(),
    );
    let use_key = |app: &TestApp, key: &str| app.http.get(app.url(&path)).bearer_auth(key).send();

    redis.kill().await;
    wait_for_mode(&b, "unsubscribed").await;
    // B caches the key again, now for at most 3 s.
    assert_eq!(use_key(&b, &extra_key).await.unwrap().status(), 200);
    // Revoked through A: nobody can tell B.
    let (status, _) = json(
        a.http
            .delete(a.url(&format!("{path}/{extra_id}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let revoked_at = Instant::now();
    loop {
        let status = use_key(&b, &extra_key).await.unwrap().status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked_at.elapsed() < Duration::from_millis(4_500),
            "B still accepts the revoked key after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Other keys keep working meanwhile (from Postgres).
    assert_eq!(use_key(&b, &key).await.unwrap().status(), 200);

    redis.restart().await;
    wait_for_mode(&b, "subscribed").await;
    wait_for_mode(&a, "subscribed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_metrics_follows_a_plan_change_at_once() {
    let app = TestApp::spawn().await;
    let (id, key) = provision(&app, "plans@metrics.test", "starter", "UTC").await;
    let metrics = || async {
        json(
            app.http
                .get(app.url("/api/v1/usage/metrics"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    let (status, body) = metrics().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["apiCallLimit"], "1000");
    let (status, _) = json(
        app.admin(Method::PATCH, &format!("/api/v1/tenants/{id}/plan"))
            .json(&json!({"plan": "scale"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (_, body) = metrics().await;
    assert_eq!(body["apiCallLimit"], "1000000", "{body}");
    // A time-zone change moves the period at once too.
    let (status, _) = json(
        app.admin(Method::PATCH, &format!("/api/v1/tenants/{id}"))
            .json(&json!({"timeZone": "Asia/Kolkata"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (_, body) = metrics().await;
    assert!(
        body["periodStart"].as_str().unwrap().ends_with(":30:00Z"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tenant_purges_its_usage_in_a_job() {
    let app = TestApp::spawn().await;
    let (id, key) = provision(&app, "gone@purge.test", "scale", "UTC").await;
    let events: Vec<Value> = (0..500)
        .map(|_| json!({"metric": "api_call", "value": 1}))
        .collect();
    let (status, body) = json(
        app.http
            .post(app.url("/api/v1/usage/track/batch"))
            .bearer_auth(&key)
            .json(&json!({"events": events}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["accepted"].as_i64()), (200, Some(500)));
    let started = Instant::now();
    let (status, _) = json(
        app.admin(Method::DELETE, &format!("/api/v1/tenants/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let mut conn = app.db.connect().await;
    let tenant: uuid::Uuid = id.parse().unwrap();
    loop {
        let (left, jobs): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM usage_events WHERE tenant_id = $1), \
                    (SELECT count(*) FROM jobs WHERE kind = 'tenant.purge_usage')",
        )
        .bind(tenant)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if left == 0 && jobs == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{left} events and {jobs} purge jobs left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        track(&app, &app.http, &key, "after").await,
        Some(401),
        "the deleted tenant's key is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_batches_are_refused_before_any_work() {
    let app = TestApp::spawn().await;
    let (_, key) = provision(&app, "big@batch.test", "scale", "UTC").await;
    let mut client = MeteringServiceClient::new(app.channel().await);
    let event = |endpoint: String| v1::UsageEventInput {
        metric: v1::UsageMetric::ApiCall as i32,
        value: 1.0,
        endpoint: Some(endpoint),
        ..Default::default()
    };
    let too_many = v1::TrackBatchRequest {
        events: (0..1001).map(|_| event("/x".into())).collect(),
    };
    let err = client
        .track_batch(with_key(too_many, &key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("events"), "{err:?}");

    // Bigger than the REST body limit (1 MiB): refused before decoding.
    let too_big = v1::TrackBatchRequest {
        events: (0..600).map(|_| event("/".repeat(2048))).collect(),
    };
    let err = client
        .track_batch(with_key(too_big, &key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    let mut conn = app.db.connect().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

/// The export streams: a tenant with more keys than one page (500) comes
/// out whole, in JSON and CSV, and a name that a spreadsheet would run as
/// a formula is neutralised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stream_every_key_and_neutralise_formulas() {
    let app = TestApp::spawn().await;
    let (status, created) = json(
        app.admin(Method::POST, "/api/v1/tenants")
            .json(&json!({"name": "=HYPERLINK(\"http://x\")", "ownerEmail": "csv@export.test"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let id = created["tenant"]["id"].as_str().unwrap().to_owned();
    let mut conn = app.db.connect().await;
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, label, prefix, key_digest, created_at) \
         SELECT gen_random_uuid(), $1, 'bulk-' || g, 'tenlyr_live_bulk', sha256(g::text::bytea), now() \
         FROM generate_series(1, 1200) g",
    )
    .bind(id.parse::<uuid::Uuid>().unwrap())
    .execute(&mut conn)
    .await
    .unwrap();

    let response = app
        .admin(Method::GET, &format!("/api/v1/tenants/{id}/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let keys = body["apiKeys"].as_array().unwrap();
    assert_eq!(keys.len(), 1201, "the primary key and 1,200 more");
    let mut ids: Vec<&str> = keys.iter().map(|k| k["id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 1201, "no key twice");
    assert_eq!(
        body["tenant"]["name"], "=HYPERLINK(\"http://x\")",
        "JSON is data, unchanged"
    );

    let csv = app
        .admin(
            Method::GET,
            &format!("/api/v1/tenants/{id}/export?format=csv"),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("apiKey,")).count(),
        1201
    );
    assert!(
        csv.contains("tenant,name,\"'=HYPERLINK(\"\"http://x\"\")\"\n"),
        "the formula is neutralised: {}",
        csv.lines()
            .find(|l| l.starts_with("tenant,name"))
            .unwrap_or("")
    );
}
