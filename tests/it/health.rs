//! Health, alerts and throttles: synthetic usage with status codes drives
//! each status (the scan runs on demand with the server's injected clock),
//! alerts stay single across ticks and replicas, and throttles are exact
//! across replicas sharing Redis and per replica without it.

use std::time::Duration;

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};
use tenlyr::{proto::v1, workers::ManualClock};

use crate::{
    helpers::*,
    webhooks::{Receiver, Reply},
};

/// Tracks `requests` events with a status code stamped `at`, `errors`
/// of them 5xx.
async fn traffic_at(
    app: &TestApp,
    key: &str,
    requests: usize,
    errors: usize,
    at: chrono::DateTime<Utc>,
) {
    let events: Vec<Value> = (0..requests)
        .map(|i| {
            let code = if i < errors { 503 } else { 200 };
            json!({"metric": "api_call", "value": 1, "statusCode": code, "endpoint": "/v1/orders",
                   "timestamp": at.to_rfc3339()})
        })
        .collect();
    let (status, reply) = call(
        app,
        key,
        Method::POST,
        "/api/v1/usage/track/batch",
        Some(json!({"events": events})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_follow_the_documented_table_from_minute_counts() {
    // Traffic is stamped from `base` (20 minutes ago) on; the scan reads
    // the injected clock.
    let base = Utc::now() - chrono::Duration::minutes(20);
    let clock = ManualClock::new(base);
    let app = TestApp::spawn_with_clock(clock.clone()).await;
    let receiver = Receiver::start(Reply::Ok).await;
    let (status, _) = admin_call(
        &app,
        Method::POST,
        "/api/v1/webhook-endpoints",
        Some(json!({"url": receiver.url("/health"), "eventTypes": ["health.*"]})),
    )
    .await;
    assert_eq!(status, 200);

    let (healthy, healthy_key) = provision(&app, "healthy@health.test", "growth", "UTC").await;
    let (warning, warning_key) = provision(&app, "warning@health.test", "growth", "UTC").await;
    let (critical, critical_key) = provision(&app, "critical@health.test", "growth", "UTC").await;
    let (unknown, _) = provision(&app, "unknown@health.test", "growth", "UTC").await;
    let (quiet, quiet_key) = provision(&app, "quiet@health.test", "growth", "Asia/Kolkata").await;
    traffic_at(&app, &healthy_key, 200, 5, base).await;
    traffic_at(&app, &warning_key, 100, 5, base).await;
    traffic_at(&app, &critical_key, 100, 20, base).await;
    traffic_at(&app, &quiet_key, 3, 1, base).await;
    // Events without a status code other than calls are usage, not
    // requests.
    let (status, _) = call(
        &app,
        &healthy_key,
        Method::POST,
        "/api/v1/usage/track",
        Some(json!({"metric": "storage_gb", "value": 2, "timestamp": base.to_rfc3339()})),
    )
    .await;
    assert_eq!(status, 200);
    // Calls tracked the docs' way (no status code) are requests that did
    // not fail: 50 more for the healthy tenant.
    let calls: Vec<Value> = (0..50)
        .map(|_| {
            json!({"metric": "api_call", "value": 1, "endpoint": "/v1/orders",
                        "timestamp": base.to_rfc3339()})
        })
        .collect();
    let (status, reply) = call(
        &app,
        &healthy_key,
        Method::POST,
        "/api/v1/usage/track/batch",
        Some(json!({"events": calls})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");

    // Never scanned: unknown, checkedAt null.
    let (_, before) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/health/{critical}"),
        None,
    )
    .await;
    assert_eq!(before["status"], "unknown");
    assert_eq!(before["checkedAt"], Value::Null);

    assert_eq!(app.state.health.scan().await.unwrap(), 5);
    let (status, list) = admin_call(&app, Method::GET, "/api/v1/health", None).await;
    assert_eq!(status, 200, "{list}");
    let by_id = |id: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|h| h["tenantId"] == id)
            .unwrap()
            .clone()
    };
    let h = by_id(&healthy);
    assert_eq!(
        (
            h["status"].as_str(),
            h["errorRate"].as_f64(),
            h["requestRate"].as_f64()
        ),
        (Some("healthy"), Some(2.0), Some(50.0))
    );
    assert_eq!(h["slaRisk"], true, "2 % burns a 99.9 % budget 20x");
    assert_eq!(h["rateLimit"], Value::Null);
    let w = by_id(&warning);
    assert_eq!(
        (
            w["status"].as_str(),
            w["errorRate"].as_f64(),
            w["slaRisk"].as_bool()
        ),
        (Some("warning"), Some(5.0), Some(true))
    );
    let c = by_id(&critical);
    assert_eq!(
        (c["status"].as_str(), c["errorRate"].as_f64()),
        (Some("critical"), Some(20.0))
    );
    assert!(c["checkedAt"].is_string());
    assert_eq!(by_id(&unknown)["status"], "unknown");
    let q = by_id(&quiet);
    assert_eq!(
        (q["status"].as_str(), q["lowVolume"].as_bool()),
        (Some("healthy"), Some(true))
    );

    let (_, overview) = admin_call(&app, Method::GET, "/api/v1/health/overview", None).await;
    assert_eq!(
        overview,
        json!({"total": 5, "healthy": 2, "warning": 1, "critical": 1, "unknown": 1,
               "avgErrorRate": ((2.0 + 5.0 + 20.0 + 33.33) / 4.0 * 100.0_f64).round() / 100.0})
    );

    // The dashboard carries the same fields.
    let (_, dashboard) = admin_call(&app, Method::GET, "/api/v1/tenants/dashboard", None).await;
    let row = dashboard["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == critical)
        .unwrap()
        .clone();
    assert_eq!(row["healthStatus"], "critical");
    assert_eq!(row["errorRate"], 20.0);
    assert_eq!(row["slaRisk"], true);

    // health.critical went out with the documented payload.
    let got = receiver.wait_for(1).await;
    let event = got[0].json();
    assert_eq!(event["type"], "health.critical");
    assert_eq!(
        event["data"],
        json!({"tenantId": critical, "errorRate": 20.0, "requestRate": 20.0, "slaRisk": true})
    );

    // gRPC sees the same.
    let mut grpc = v1::health_service_client::HealthServiceClient::new(app.channel().await);
    let got = grpc
        .get_health(with_key(
            v1::GetHealthRequest {
                tenant_id: critical.clone(),
            },
            &app.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, v1::HealthStatus::Critical as i32);

    // Good traffic six minutes later brings it back: health.recovered.
    // Then, six minutes on, the window is empty: unknown.
    traffic_at(
        &app,
        &critical_key,
        100,
        0,
        base + chrono::Duration::minutes(6),
    )
    .await;
    clock.set(base + chrono::Duration::minutes(6));
    app.state.health.scan().await.unwrap();
    let (_, back) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/health/{critical}"),
        None,
    )
    .await;
    assert_eq!(back["status"], "healthy", "{back}");
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].json()["type"], "health.recovered");
    clock.advance(chrono::Duration::minutes(6));
    app.state.health.scan().await.unwrap();
    let (_, later) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/health/{critical}"),
        None,
    )
    .await;
    assert_eq!(later["status"], "unknown");

    // A tenant key may not read health; an unknown tenant is 404.
    let (status, _) = call(&app, &healthy_key, Method::GET, "/api/v1/health", None).await;
    assert_eq!(status, 403);
    let (status, reply) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/health/{}", uuid::Uuid::now_v7()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_error_body(&reply, 404, "Not Found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_health_critical_alert_per_tenant_across_ticks_and_replicas() {
    let base = Utc::now() - chrono::Duration::minutes(20);
    let clock = ManualClock::new(base);
    let a = TestApp::spawn_with_clock(clock.clone()).await;
    let b = a.replica(std::sync::Arc::new(clock.clone()), |_| {}).await;
    let (tenant, key) = provision(&a, "alerts@health.test", "growth", "UTC").await;
    let (other, other_key) = provision(&a, "other@health.test", "growth", "UTC").await;
    traffic_at(&a, &key, 100, 50, base).await;
    a.state.health.scan().await.unwrap();
    // Two replicas, two ticks each, concurrently.
    let (x, y) = tokio::join!(a.state.alerts.check(), b.state.alerts.check());
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.0 + y.0, 1, "one alert opened");
    assert_eq!(a.state.alerts.check().await.unwrap(), (0, 0));
    let (status, open) = admin_call(&a, Method::GET, "/api/v1/alerts/unresolved", None).await;
    assert_eq!(status, 200);
    let open = open.as_array().unwrap().clone();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0]["type"], "health_critical");
    assert_eq!(open[0]["severity"], "critical");
    assert_eq!(open[0]["tenantId"], tenant);
    assert_eq!(open[0]["resolved"], false);

    // Healthy again: the next check resolves it.
    traffic_at(&a, &key, 100, 0, base + chrono::Duration::minutes(6)).await;
    clock.set(base + chrono::Duration::minutes(6));
    a.state.health.scan().await.unwrap();
    assert_eq!(b.state.alerts.check().await.unwrap(), (0, 1));
    let (_, open) = admin_call(&a, Method::GET, "/api/v1/alerts/unresolved", None).await;
    assert_eq!(open, json!([]));

    // Manual alerts: a tenant key creates and sees only its own.
    let (status, mine) = call(
        &a,
        &key,
        Method::POST,
        "/api/v1/alerts",
        Some(json!({"type": "latency_p99", "severity": "warning", "message": "p99 above 2 s"})),
    )
    .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["tenantId"], tenant);
    // A NUL character, valid JSON that PostgreSQL cannot store: a 400.
    let (status, refused) = call(
        &a,
        &key,
        Method::POST,
        "/api/v1/alerts",
        Some(json!({"type": "latency_p99", "severity": "info", "message": "a\u{0}b"})),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    assert_error_body(&refused, 400, "Bad Request");
    let (status, theirs) = admin_call(
        &a,
        Method::POST,
        "/api/v1/alerts",
        Some(
            json!({"tenantId": other, "type": "disk", "severity": "info", "message": "80 % full"}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{theirs}");
    let (_, seen) = call(&a, &key, Method::GET, "/api/v1/alerts", None).await;
    assert!(
        seen.as_array()
            .unwrap()
            .iter()
            .all(|x| x["tenantId"] == tenant),
        "{seen}"
    );
    assert_eq!(
        seen.as_array().unwrap().len(),
        2,
        "its resolved health alert and its manual one"
    );
    let (status, _) = call(
        &a,
        &key,
        Method::GET,
        &format!("/api/v1/alerts?tenantId={other}"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (_, all) = admin_call(
        &a,
        Method::GET,
        &format!("/api/v1/alerts?tenantId={other}"),
        None,
    )
    .await;
    assert_eq!(all.as_array().unwrap().len(), 1);

    // Another tenant's alert is not found; resolving twice is idempotent.
    let theirs_id = theirs["id"].as_str().unwrap();
    let (status, reply) = call(
        &a,
        &key,
        Method::POST,
        &format!("/api/v1/alerts/{theirs_id}/resolve"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 404, "{reply}");
    for _ in 0..2 {
        let (status, resolved) = call(
            &a,
            &other_key,
            Method::POST,
            &format!("/api/v1/alerts/{theirs_id}/resolve"),
            Some(json!({})),
        )
        .await;
        assert_eq!(status, 200, "{resolved}");
        assert_eq!(resolved["resolved"], true);
        assert!(resolved["resolvedAt"].is_string());
    }
    let (status, reply) = call(
        &a,
        &key,
        Method::POST,
        "/api/v1/alerts/resolve-all",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(reply, json!({"resolved": 1}));

    // Bad input: 422 naming the field.
    for (body, field) in [
        (
            json!({"type": "x", "severity": "loud", "message": "m"}),
            "severity",
        ),
        (
            json!({"type": "x", "severity": "info", "message": ""}),
            "message",
        ),
        (
            json!({"type": "t".repeat(101), "severity": "info", "message": "m"}),
            "type",
        ),
        (
            json!({"type": "x", "severity": "info", "message": "m".repeat(2001)}),
            "message",
        ),
    ] {
        let (status, reply) =
            call(&a, &key, Method::POST, "/api/v1/alerts", Some(body.clone())).await;
        assert!(status == 422 || status == 400, "{body}: {status} {reply}");
        if status == 422 {
            assert!(
                reply["details"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d["field"] == field),
                "{reply}"
            );
        }
    }
    let (status, reply) = admin_call(
        &a,
        Method::POST,
        "/api/v1/alerts",
        Some(json!({"type": "x", "severity": "info", "message": "m"})),
    )
    .await;
    assert_eq!(status, 422, "an admin must name the tenant: {reply}");
}

/// [`burst`], and how many requests a GCRA limit of `limit_rpm` may admit
/// beyond its burst while this one lasted (one per interval that passed;
/// none on a machine fast enough to send the burst within one interval).
async fn timed_burst(
    apps: &[&TestApp],
    key: &str,
    n: usize,
    limit_rpm: u64,
) -> (Vec<reqwest::Response>, usize) {
    let started = std::time::Instant::now();
    let responses = burst(apps, key, n).await;
    let interval = 60.0 / limit_rpm as f64;
    (
        responses,
        (started.elapsed().as_secs_f64() / interval) as usize,
    )
}

/// Fires `n` tracks at once, alternating between `apps`; the responses.
async fn burst(apps: &[&TestApp], key: &str, n: usize) -> Vec<reqwest::Response> {
    let mut calls = Vec::new();
    for i in 0..n {
        let app = apps[i % apps.len()];
        calls.push(
            app.http
                .post(app.url("/api/v1/usage/track"))
                .bearer_auth(key)
                .json(&json!({"metric": "api_call", "value": 1}))
                .send(),
        );
    }
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_is_exact_across_replicas_sharing_redis() {
    let (a, b) = TestApp::spawn_pair().await;
    let (tenant, key) = provision(&a, "throttled@health.test", "growth", "UTC").await;
    let (status, reply) = admin_call(
        &a,
        Method::POST,
        &format!("/api/v1/health/{tenant}/throttle"),
        Some(json!({"limitRpm": 60})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["rateLimit"], 60);
    // Both replicas' key caches were told at once.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (responses, refilled) = timed_burst(&[&a, &b], &key, 80, 60).await;
    let accepted = responses.iter().filter(|r| r.status() == 200).count();
    let refused: Vec<&reqwest::Response> = responses.iter().filter(|r| r.status() == 429).collect();
    assert!(
        (60..=60 + refilled).contains(&accepted),
        "{accepted} accepted, {refilled} refilled"
    );
    assert_eq!(accepted + refused.len(), 80);
    let headers = refused[0].headers();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 1);
    assert_eq!(headers["ratelimit-policy"], "\"tenant\";q=60;w=60");
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"tenant\";r=0;t=")
    );
    // Honest: a retry at that time passes (one request per second).
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let again = burst(&[&b], &key, 1).await;
    assert_eq!(again[0].status(), 200);
    let body: Value = burst(&[&a], &key, 1).await.remove(0).json().await.unwrap();
    assert_eq!(body["reason"], "TENANT_THROTTLED");
    assert_error_body(&body, 429, "Too Many Requests");

    // gRPC: RESOURCE_EXHAUSTED.
    let mut grpc = v1::metering_service_client::MeteringServiceClient::new(a.channel().await);
    let err = grpc
        .track(with_key(
            v1::TrackRequest {
                metric: v1::UsageMetric::ApiCall as i32,
                value: 1.0,
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);

    // Removed: everything passes again, on both.
    let (status, reply) = admin_call(
        &b,
        Method::DELETE,
        &format!("/api/v1/health/{tenant}/throttle"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(reply["rateLimit"], Value::Null);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let responses = burst(&[&a, &b], &key, 80).await;
    assert!(responses.iter().all(|r| r.status() == 200));

    // Bad input.
    for limit in [json!(0), json!(-5), json!(10_000_000)] {
        let (status, reply) = admin_call(
            &a,
            Method::POST,
            &format!("/api/v1/health/{tenant}/throttle"),
            Some(json!({"limitRpm": limit})),
        )
        .await;
        assert_eq!(status, 422, "{limit}: {reply}");
        assert_eq!(reply["details"][0]["field"], "limitRpm");
    }
    let (status, _) = admin_call(
        &a,
        Method::POST,
        &format!("/api/v1/health/{}/throttle", uuid::Uuid::now_v7()),
        Some(json!({"limitRpm": 5})),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_replica_throttles_exactly_for_itself() {
    // No Redis at all: the in-process limiter of the one replica.
    let app = TestApp::spawn().await;
    let (tenant, key) = provision(&app, "local@health.test", "growth", "UTC").await;
    let (status, _) = admin_call(
        &app,
        Method::POST,
        &format!("/api/v1/health/{tenant}/throttle"),
        Some(json!({"limitRpm": 30})),
    )
    .await;
    assert_eq!(status, 200);
    let (responses, refilled) = timed_burst(&[&app], &key, 40, 30).await;
    let accepted = responses.iter().filter(|r| r.status() == 200).count();
    assert!(
        (30..=30 + refilled).contains(&accepted),
        "{accepted} accepted"
    );
    assert_eq!(
        responses.iter().filter(|r| r.status() == 429).count(),
        40 - accepted
    );

    // Redis down mid-flight: decisions fall back to each replica's own
    // limiter (no 500s, each replica still exact for itself).
    let redis = PrivateRedis::start().await;
    let (a, b) = TestApp::spawn_pair_on(&redis.url).await;
    let (tenant, key) = provision(&a, "down@health.test", "growth", "UTC").await;
    let (status, _) = admin_call(
        &a,
        Method::POST,
        &format!("/api/v1/health/{tenant}/throttle"),
        Some(json!({"limitRpm": 30})),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(redis);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for app in [&a, &b] {
        let (responses, refilled) = timed_burst(&[app], &key, 40, 30).await;
        assert!(
            responses
                .iter()
                .all(|r| r.status() == 200 || r.status() == 429)
        );
        let accepted = responses.iter().filter(|r| r.status() == 200).count();
        assert!(
            (30..=30 + refilled).contains(&accepted),
            "{accepted} accepted"
        );
    }
}

/// `TENLYR_DEFAULT_RATE_LIMIT_RPM`: every tenant without a throttle of its
/// own is held to the default (429 `RATE_LIMITED`, policy `default`); an
/// admin's throttle replaces it for its tenant, higher or lower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_rate_limit_holds_every_tenant_without_its_own() {
    let app = TestApp::spawn_with(|c| c.default_rate_limit_rpm = 30).await;
    let (_, key) = provision(&app, "default@limit.test", "growth", "UTC").await;
    let (responses, refilled) = timed_burst(&[&app], &key, 40, 30).await;
    let accepted = responses.iter().filter(|r| r.status() == 200).count();
    assert!(
        (30..=30 + refilled).contains(&accepted),
        "{accepted} accepted"
    );
    let refused = responses
        .into_iter()
        .find(|r| r.status() == 429)
        .expect("a refusal");
    assert_eq!(
        refused.headers()["ratelimit-policy"],
        "\"default\";q=30;w=60"
    );
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["reason"], "RATE_LIMITED", "{body}");
    assert_error_body(&body, 429, "Too Many Requests");

    // A tenant with its own throttle is held to that instead.
    let (tenant, key) = provision(&app, "own@limit.test", "growth", "UTC").await;
    let (status, _) = admin_call(
        &app,
        Method::POST,
        &format!("/api/v1/health/{tenant}/throttle"),
        Some(json!({"limitRpm": 120})),
    )
    .await;
    assert_eq!(status, 200);
    let (responses, refilled) = timed_burst(&[&app], &key, 60, 120).await;
    let accepted = responses.iter().filter(|r| r.status() == 200).count();
    assert!(
        (60..=60 + refilled).contains(&accepted),
        "{accepted} accepted"
    );
}

/// A redis-server of this test's own on a free port; killed on drop.
struct PrivateRedis {
    url: String,
    child: std::process::Child,
}

impl PrivateRedis {
    async fn start() -> Self {
        let port = unclaimed_port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            url: format!("redis://127.0.0.1:{port}"),
            child,
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
