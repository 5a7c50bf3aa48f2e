//! MeteringService over REST and gRPC: tracking, batches, idempotency,
//! exact plan limits across replicas, billing periods, rollups, events.

use chrono::{DateTime, Duration, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use tenlyr::{
    domain::usage::{Metric, NewEvent},
    proto::v1::{self, metering_service_client::MeteringServiceClient},
    storage::usage::{self, Outcome, Pending},
};
use uuid::Uuid;

use crate::helpers::{TestApp, app_db, assert_error_body, call, json, provision, with_key};

async fn track(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    call(app, key, Method::POST, "/api/v1/usage/track", Some(body)).await
}

async fn metrics(app: &TestApp, key: &str) -> Value {
    let (status, body) = call(app, key, Method::GET, "/api/v1/usage/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The tenant's newest 1,000 events.
async fn list_events(app: &TestApp, key: &str) -> Vec<Value> {
    let path = "/api/v1/usage/events?limit=1000";
    let (status, body) = call(app, key, Method::GET, path, None).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_returns_the_documented_event_and_counts_it() {
    let app = TestApp::spawn().await;
    let (tenant, key) = provision(&app, "meter@one.test", "growth", "UTC").await;
    // A tenant key naming another tenant (existing or not): 403, the
    // wrong scope (DESIGN.md §3), before any lookup.
    let (other, _) = provision(&app, "meter@other.test", "growth", "UTC").await;
    for id in [other, Uuid::now_v7().to_string()] {
        let path = format!("/api/v1/usage/metrics?tenantId={id}");
        let (status, body) = call(&app, &key, Method::GET, &path, None).await;
        assert_eq!(status, 403, "{body}");
        assert_error_body(&body, 403, "Forbidden");
    }
    let (status, event) = track(
        &app,
        &key,
        json!({"metric": "api_call", "value": 1, "endpoint": "/v1/orders", "statusCode": 201}),
    )
    .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["tenantId"], tenant);
    assert_eq!(event["metric"], "api_call");
    assert_eq!(event["value"], 1.0);
    assert_eq!(event["endpoint"], "/v1/orders");
    assert_eq!(event["statusCode"], 201);
    assert_eq!(event["idempotencyKey"], Value::Null);
    assert!(event["id"].as_str().unwrap().parse::<Uuid>().is_ok());
    assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));

    let (status, _) = track(&app, &key, json!({"metric": "storage_gb", "value": 2.5})).await;
    assert_eq!(status, 200);
    let (status, _) = track(
        &app,
        &key,
        json!({"metric": "USAGE_METRIC_SEATS", "value": 3}),
    )
    .await;
    assert_eq!(status, 200);

    let m = metrics(&app, &key).await;
    assert_eq!(m["tenantId"], tenant);
    assert_eq!(m["apiCalls"], "1");
    assert_eq!(m["storageGb"], 2.5);
    assert_eq!(m["seats"], "3");
    assert_eq!(m["compute"], "0");
    assert_eq!(m["apiCallLimit"], "100000");

    // The dashboard shows the same usage.
    let (status, page) = json(
        app.admin(Method::GET, "/api/v1/tenants/dashboard")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let row = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == tenant)
        .unwrap()
        .clone();
    assert_eq!(row["apiCalls"], "1", "{row}");
    assert_eq!(row["storageGb"], 2.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_naming_the_field() {
    let app = TestApp::spawn().await;
    let (_, key) = provision(&app, "meter@bad.test", "growth", "UTC").await;
    let future = (Utc::now() + Duration::hours(2)).to_rfc3339();
    let old = (Utc::now() - Duration::hours(30)).to_rfc3339();
    for (body, field) in [
        (json!({"metric": "api_call", "value": 0}), "value"),
        (json!({"metric": "api_call", "value": -3}), "value"),
        (json!({"metric": "api_call", "value": 1.5}), "value"),
        (json!({"value": 1}), "metric"),
        (
            json!({"metric": "api_call", "value": 1, "idempotencyKey": "has spaces"}),
            "idempotencyKey",
        ),
        (
            json!({"metric": "api_call", "value": 1, "timestamp": future}),
            "timestamp",
        ),
        (
            json!({"metric": "api_call", "value": 1, "timestamp": old}),
            "timestamp",
        ),
        (
            json!({"metric": "api_call", "value": 1, "statusCode": 42}),
            "statusCode",
        ),
    ] {
        let (status, reply) = track(&app, &key, body.clone()).await;
        assert_eq!(status, 422, "{body} → {reply}");
        assert_error_body(&reply, 422, "Unprocessable Entity");
        assert!(
            reply["message"].as_str().unwrap().contains(field),
            "{body} → {reply}"
        );
    }
    // Not JSON the proto accepts: 400.
    let (status, reply) = track(&app, &key, json!({"metric": "bananas", "value": 1})).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("metric"),
        "{reply}"
    );
    // An admin key is the wrong scope.
    let (status, _) = track(
        &app,
        &app.admin_key,
        json!({"metric": "api_call", "value": 1}),
    )
    .await;
    assert_eq!(status, 403);
    // Nothing above was counted.
    assert_eq!(metrics(&app, &key).await["apiCalls"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tracks_are_counted_exactly_and_retries_once() {
    let app = TestApp::spawn().await;
    let (_, key) = provision(&app, "meter@exact.test", "growth", "UTC").await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (http, url, key) = (
            app.http.clone(),
            app.url("/api/v1/usage/track"),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // Every event is sent twice with the same key, as a retry would.
            let body = json!({"metric": "api_call", "value": 1, "idempotencyKey": format!("req-{}", i % 100)});
            let r = http.post(&url).bearer_auth(&key).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let event: Value = r.json().await.unwrap();
            assert!(event["id"].is_string(), "{event}");
            (status, event["id"].as_str().unwrap().to_owned(), i % 100)
        }));
    }
    let mut ids = std::collections::HashMap::new();
    for task in tasks {
        let (status, id, k) = task.await.unwrap();
        assert_eq!(status, 200);
        // Both sends of one key return the same event.
        assert_eq!(ids.entry(k).or_insert_with(|| id.clone()), &id);
    }
    assert_eq!(metrics(&app, &key).await["apiCalls"], "100");
    assert_eq!(list_events(&app, &key).await.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_report_each_event_and_one_bad_event_sinks_only_itself() {
    let app = TestApp::spawn().await;
    let (_, key) = provision(&app, "meter@batch.test", "growth", "UTC").await;
    let events = json!([
        {"metric": "api_call", "value": 1, "idempotencyKey": "a"},
        {"metric": "api_call", "value": 0},
        {"metric": "compute", "value": 7},
        {"metric": "api_call", "value": 1, "idempotencyKey": "a"},
    ]);
    let (status, reply) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/usage/track/batch",
        Some(json!({"events": events})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        (
            reply["accepted"].as_i64(),
            reply["duplicates"].as_i64(),
            reply["rejected"].as_i64()
        ),
        (Some(2), Some(1), Some(1))
    );
    let results = reply["results"].as_array().unwrap();
    assert_eq!(results[0]["outcome"], "accepted");
    assert_eq!(results[1]["outcome"], "rejected");
    assert_eq!(results[1]["field"], "value");
    assert_eq!(results[1]["index"], 1);
    assert_eq!(results[2]["outcome"], "accepted");
    assert_ne!(results[2]["eventId"], results[0]["eventId"]);
    assert_eq!(results[3]["outcome"], "duplicate");
    assert_eq!(results[3]["eventId"], results[0]["eventId"]);
    assert!(results[1]["eventId"] == "" || results[1]["eventId"].is_null());

    // The same key in a later batch is still a duplicate.
    let (_, again) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/usage/track/batch",
        Some(json!({"events": [{"metric": "api_call", "value": 1, "idempotencyKey": "a"}]})),
    )
    .await;
    assert_eq!(again["results"][0]["outcome"], "duplicate");

    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"metric": "api_call", "value": 1}))
        .collect();
    let (status, reply) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/usage/track/batch",
        Some(json!({"events": too_many})),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("events"));

    let m = metrics(&app, &key).await;
    assert_eq!(
        (m["apiCalls"].as_str(), m["compute"].as_str()),
        (Some("1"), Some("7"))
    );
}

/// A full batch takes the COPY path (small groups take a multi-row
/// insert): every event is stored once, across two day partitions, and the
/// same batch again is all duplicates with the original ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_batch_is_stored_once_and_its_resend_is_all_duplicates() {
    let app = TestApp::spawn().await;
    let (_, key) = provision(&app, "meter@copy.test", "enterprise", "UTC").await;
    let yesterday = (Utc::now() - Duration::hours(23)).to_rfc3339();
    let events: Vec<Value> = (0..1000)
        .map(|i| {
            let mut e = json!({"metric": "api_call", "value": 1, "endpoint": "/v1/ünï\\\"q", "idempotencyKey": format!("copy-{i}")});
            if i % 2 == 0 {
                e["timestamp"] = json!(yesterday);
            }
            e
        })
        .collect();
    let body = json!({"events": events});
    let path = "/api/v1/usage/track/batch";
    let (status, first) = call(&app, &key, Method::POST, path, Some(body.clone())).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["accepted"], 1000, "{first}");
    let (status, again) = call(&app, &key, Method::POST, path, Some(body)).await;
    assert_eq!(status, 200);
    assert_eq!(
        (again["accepted"].as_i64(), again["duplicates"].as_i64()),
        (Some(0), Some(1000))
    );
    for i in [0, 1, 999] {
        assert_eq!(
            again["results"][i]["eventId"],
            first["results"][i]["eventId"]
        );
    }
    let page = list_events(&app, &key).await;
    assert_eq!(page.len(), 1000);
    assert!(page.iter().all(|e| e["endpoint"] == "/v1/ünï\\\"q"));
    let ids: std::collections::HashSet<&str> =
        page.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plan_limit_holds_exactly_across_two_replicas() {
    let (a, b) = TestApp::spawn_pair().await;
    let (tenant, key) = provision(&a, "meter@limit.test", "starter", "UTC").await;
    // 990 of the starter plan's 1,000 calls.
    let fill: Vec<Value> = (0..990)
        .map(|_| json!({"metric": "api_call", "value": 1}))
        .collect();
    let (status, reply) = call(
        &a,
        &key,
        Method::POST,
        "/api/v1/usage/track/batch",
        Some(json!({"events": fill})),
    )
    .await;
    assert_eq!((status, reply["accepted"].as_i64()), (200, Some(990)));

    let mut tasks = Vec::new();
    for i in 0..60 {
        let app = if i % 2 == 0 { &a } else { &b };
        let (http, url, key) = (
            app.http.clone(),
            app.url("/api/v1/usage/track"),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(&url)
                .bearer_auth(&key)
                .json(&json!({"metric": "api_call", "value": 1}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }));
    }
    let (mut ok, mut over) = (0, 0);
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            200 => ok += 1,
            400 => {
                assert_eq!(body["reason"], "PLAN_LIMIT_EXCEEDED", "{body}");
                assert_error_body(&body, 400, "Bad Request");
                over += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((ok, over), (10, 50));
    assert_eq!(metrics(&b, &key).await["apiCalls"], "1000");

    // gRPC sees the same limit.
    let mut client = MeteringServiceClient::new(b.channel().await);
    let request = v1::TrackRequest {
        metric: v1::UsageMetric::ApiCall as i32,
        value: 1.0,
        ..Default::default()
    };
    let err = client
        .track(with_key(request.clone(), &key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // A plan change applies at once.
    let (status, _) = json(
        a.admin(Method::PATCH, &format!("/api/v1/tenants/{tenant}/plan"))
            .json(&json!({"plan": "growth"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let event = client
        .track(with_key(request, &key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(event.tenant_id, tenant);
    // GetMetrics on the other replica reads the limits its key lookup
    // carries: they follow the change as soon as the invalidation arrives
    // (pub/sub, milliseconds).
    let mut usage = None;
    for _ in 0..20 {
        let read = client
            .get_metrics(with_key(v1::GetMetricsRequest::default(), &key))
            .await
            .unwrap()
            .into_inner();
        if read.api_call_limit == Some(100_000) {
            usage = Some(read);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let usage = usage.expect("the new plan's limit within 1 s");
    assert_eq!(usage.api_calls, 1001);
}

/// The CI's one flake of the test above, made certain: a read of Redis
/// answered before this node's flush of a commit landed, and merged after
/// the flush emptied the unpublished totals, read the count one behind.
/// A node never reads a total lower than one it committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_never_reads_a_total_lower_than_one_it_committed() {
    use fred::prelude::*;
    use tenlyr::{service::counters::LiveCounters, storage::redis::Redis};

    let redis = Redis::connect(&crate::helpers::redis_url()).await.unwrap();
    let counters = LiveCounters::new(Some(redis.clone()));
    let (tenant, start) = (Uuid::now_v7(), at("2026-12-01T00:00:00Z"));
    let api_calls = |totals: Option<std::collections::HashMap<Metric, f64>>| {
        totals.and_then(|t| t.get(&Metric::ApiCall).copied())
    };
    let mut before = std::collections::HashMap::new();
    before.insert(Metric::ApiCall, 1000.0);
    counters.rebuild(tenant, start, &before).await;
    assert_eq!(api_calls(counters.get(tenant, start).await), Some(1000.0));
    // Let that read go stale, then commit the 1,001st call and flush it.
    tokio::time::sleep(tenlyr::service::counters::READ_FRESH).await;
    counters
        .publish(&[usage::MonthTotal {
            tenant_id: tenant,
            period_start: start,
            metric: Metric::ApiCall,
            total: 1001.0,
        }])
        .await;
    counters.flush().await;
    // The next read is answered as Redis stood before the flush landed.
    let key = format!("tenlyr:usage:{tenant}:{}", start.timestamp());
    let _: () = redis
        .client()
        .hset(&key, ("api_call", 1000.0))
        .await
        .unwrap();
    tokio::time::sleep(tenlyr::service::counters::READ_FRESH).await;
    assert_eq!(api_calls(counters.get(tenant, start).await), Some(1001.0));
    let _: () = redis.client().del(&key).await.unwrap();
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn pending(tenant: Uuid, when: &str, key: Option<&str>) -> Pending {
    Pending {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        event: NewEvent {
            metric: Metric::ApiCall,
            value: 1.0,
            endpoint: None,
            idempotency_key: key.map(str::to_owned),
            occurred_at: at(when),
            status_code: None,
        },
    }
}

fn pending_now(tenant: Uuid, key: Option<&str>, value: f64) -> Pending {
    let mut p = pending(tenant, "2026-01-01T00:00:00Z", key);
    p.event.value = value;
    p.event.occurred_at = Utc::now();
    p
}

/// A small group whose outcome is known beforehand commits in one call;
/// whatever needs deciding (a tenant not seen or changed since, a key seen
/// before or repeated, a limit) is refused with nothing written, for the
/// long way to decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_commits_take_only_what_needs_no_decision() {
    let app = TestApp::spawn().await;
    let (tenant, _) = provision(&app, "meter@onecall.test", "starter", "Europe/Paris").await;
    let tenant: Uuid = tenant.parse().unwrap();
    let db = app_db(&app.db.url, 2).await;
    let first = [pending_now(tenant, Some("a"), 1.0)];
    let unknown = usage::Tenants::new();
    assert!(
        usage::commit_small(db.pool(), &first, &unknown)
            .await
            .unwrap()
            .is_none()
    );
    let known = usage::commit(db.pool(), &first).await.unwrap().tenants;
    assert!(known.contains_key(&tenant));

    let second = [
        pending_now(tenant, Some("b"), 1.0),
        pending_now(tenant, None, 1.0),
    ];
    let done = usage::commit_small(db.pool(), &second, &known)
        .await
        .unwrap()
        .expect("committed in one call");
    assert!(
        done.outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Accepted(_)))
    );
    assert_eq!(
        (done.totals.len(), done.totals[0].total),
        (1, 3.0),
        "{:?}",
        done.totals
    );

    for refused in [
        // a key stored before
        vec![pending_now(tenant, Some("a"), 1.0)],
        // a key twice in the group
        vec![
            pending_now(tenant, Some("c"), 1.0),
            pending_now(tenant, Some("c"), 1.0),
        ],
        // over the starter plan's 1,000 API calls
        vec![pending_now(tenant, None, 998.0)],
    ] {
        assert!(
            usage::commit_small(db.pool(), &refused, &known)
                .await
                .unwrap()
                .is_none()
        );
    }
    // Exactly at the limit still fits.
    let done = usage::commit_small(db.pool(), &[pending_now(tenant, None, 997.0)], &known)
        .await
        .unwrap()
        .expect("up to the limit");
    assert_eq!(done.totals[0].total, 1000.0);

    // A tenant changed since it was read: refused.
    let mut admin = app.db.connect().await;
    sqlx::query("UPDATE tenants SET time_zone = 'UTC' WHERE id = $1")
        .bind(tenant)
        .execute(&mut admin)
        .await
        .unwrap();
    assert!(
        usage::commit_small(db.pool(), &[pending_now(tenant, None, 0.5)], &known)
            .await
            .unwrap()
            .is_none()
    );
    let stored: (i64, f64) =
        sqlx::query_as("SELECT count(*), sum(value) FROM usage_events WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(stored, (4, 1000.0));
}

/// Periods are calendar months in the tenant's zone. Events are committed
/// straight through the storage layer because the API only accepts
/// timestamps from the last 24 hours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_month_in_the_tenant_time_zone_starts_from_zero() {
    let app = TestApp::spawn().await;
    let (tenant, key) = provision(&app, "meter@tokyo.test", "starter", "Asia/Tokyo").await;
    let tenant: Uuid = tenant.parse().unwrap();
    let db = app_db(&app.db.url, 2).await;
    usage::ensure_partitions(
        db.pool(),
        at("2026-02-27T00:00:00Z").date_naive(),
        at("2026-03-02T00:00:00Z").date_naive(),
    )
    .await
    .unwrap();
    // 1,000 calls on February 28th, 23:00 Tokyo time (14:00 UTC).
    let february: Vec<Pending> = (0..1000)
        .map(|_| pending(tenant, "2026-02-28T14:00:00Z", None))
        .collect();
    let done = usage::commit(db.pool(), &february).await.unwrap();
    assert!(
        done.outcomes
            .iter()
            .all(|o| matches!(o, Outcome::Accepted(_)))
    );
    let usage::Committed {
        outcomes, totals, ..
    } = usage::commit(
        db.pool(),
        &[
            // 23:59 on February 28th in Tokyo: over the limit.
            pending(tenant, "2026-02-28T14:59:00Z", None),
            // 00:01 on March 1st in Tokyo (still February in UTC): a new period.
            pending(tenant, "2026-02-28T15:01:00Z", None),
        ],
    )
    .await
    .unwrap();
    assert!(
        matches!(outcomes[0], Outcome::LimitExceeded { total, .. } if total == 1000.0),
        "{outcomes:?}"
    );
    assert!(matches!(outcomes[1], Outcome::Accepted(_)), "{outcomes:?}");
    assert_eq!(totals.len(), 1);
    assert_eq!(
        (totals[0].period_start, totals[0].total),
        (at("2026-02-28T15:00:00Z"), 1.0)
    );

    // The summary's monthly buckets start at Tokyo midnight.
    let path = "/api/v1/usage/summary?start=2026-02-01T00:00:00Z&end=2026-03-05T00:00:00Z";
    let (status, summary) = call(&app, &key, Method::GET, path, None).await;
    assert_eq!(status, 200, "{summary}");
    let monthly: Vec<(&str, f64)> = summary["monthly"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["bucketStart"].as_str().unwrap(),
                r["total"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(monthly, [("2026-02-28T15:00:00Z", 1.0)], "{summary}");
    let daily = summary["daily"].as_array().unwrap();
    assert_eq!(daily[0]["bucketStart"], "2026-02-27T15:00:00Z");
    assert_eq!(daily[0]["events"], "1000");
    let hourly = summary["hourly"].as_array().unwrap();
    assert_eq!(hourly.len(), 2, "{summary}");
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_page_newest_first_with_a_cursor() {
    let app = TestApp::spawn().await;
    let (_, key) = provision(&app, "meter@pages.test", "growth", "UTC").await;
    for i in 0..5 {
        let ts = (Utc::now() - Duration::minutes(10 - i)).to_rfc3339();
        let (status, _) = track(
            &app,
            &key,
            json!({"metric": "compute", "value": i + 1, "timestamp": ts}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let r = app
        .http
        .get(app.url("/api/v1/usage/events?limit=3"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let cursor = r.headers()["x-next-cursor"].to_str().unwrap().to_owned();
    let first: Value = r.json().await.unwrap();
    let values: Vec<f64> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [5.0, 4.0, 3.0]);
    let r = app
        .http
        .get(app.url(&format!("/api/v1/usage/events?limit=3&cursor={cursor}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-next-cursor").is_none());
    let second: Value = r.json().await.unwrap();
    assert_eq!(second.as_array().unwrap().len(), 2);

    for bad in ["limit=1001", "limit=-1"] {
        let (status, _) = call(
            &app,
            &key,
            Method::GET,
            &format!("/api/v1/usage/events?{bad}"),
            None,
        )
        .await;
        assert_eq!(status, 422, "{bad}");
    }
    let (status, _) = call(
        &app,
        &key,
        Method::GET,
        "/api/v1/usage/events?cursor=zzz",
        None,
    )
    .await;
    assert_eq!(status, 400);

    // gRPC: the same page and cursor.
    let mut client = MeteringServiceClient::new(app.channel().await);
    let page = client
        .list_events(with_key(
            v1::ListEventsRequest {
                limit: 3,
                cursor: String::new(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 3);
    assert_eq!(page.next_cursor.as_deref(), Some(cursor.as_str()));
}

/// With Redis, replicas share live counters; Redis losing them (a restart
/// with no persistence) costs nothing: reads rebuild them from Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_counters_are_shared_and_rebuilt_when_redis_forgets_them() {
    use fred::prelude::*;
    let (a, b) = TestApp::spawn_pair().await;
    let (tenant, key) = provision(&a, "meter@redis.test", "growth", "America/New_York").await;
    for _ in 0..3 {
        assert_eq!(
            track(&a, &key, json!({"metric": "api_call", "value": 2}))
                .await
                .0,
            200
        );
    }
    // The other replica reads the mirror, which commits update right after
    // they answer: it catches up within moments.
    let mut m = metrics(&b, &key).await;
    for _ in 0..100 {
        if m["apiCalls"] == "6" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        m = metrics(&b, &key).await;
    }
    assert_eq!(m["apiCalls"], "6");
    let redis = tenlyr::storage::redis::Redis::connect(&crate::helpers::redis_url())
        .await
        .unwrap();
    let start: DateTime<Utc> = m["periodStart"].as_str().unwrap().parse().unwrap();
    let hash = format!("tenlyr:usage:{tenant}:{}", start.timestamp());
    let live: std::collections::HashMap<String, f64> = redis.client().hgetall(&hash).await.unwrap();
    assert_eq!(live.get("api_call"), Some(&6.0), "{live:?}");
    assert_eq!(live.len(), 4, "{live:?}");

    // Redis forgets; the next commit publishes one metric only, the next
    // read rebuilds the rest from Postgres.
    let _: i64 = redis.client().del(&hash).await.unwrap();
    assert_eq!(
        track(&b, &key, json!({"metric": "seats", "value": 1}))
            .await
            .0,
        200
    );
    let m = metrics(&a, &key).await;
    assert_eq!(
        (m["apiCalls"].as_str(), m["seats"].as_str()),
        (Some("6"), Some("1"))
    );
    let live: std::collections::HashMap<String, f64> = redis.client().hgetall(&hash).await.unwrap();
    assert_eq!(
        (live.get("api_call"), live.len()),
        (Some(&6.0), 4),
        "{live:?}"
    );
    redis.quit().await;
}

/// Retention drops whole day partitions past the setting; rollups stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_day_partitions_and_keeps_rollups() {
    let app = TestApp::spawn().await;
    let db = app_db(&app.db.url, 2).await;
    let today = Utc::now().date_naive();
    let old = today - Duration::days(120);
    usage::ensure_partitions(db.pool(), old, old).await.unwrap();
    let mut conn = app.db.connect().await;
    let before = partitions(&mut conn).await;
    let old_name = format!("usage_events_{}", old.format("%Y%m%d"));
    assert!(before.contains(&old_name), "{before:?}");
    tenlyr::service::metering::maintain(&db, 90).await.unwrap();
    let after = partitions(&mut conn).await;
    assert!(!after.contains(&old_name), "{after:?}");
    // Today and the week ahead exist.
    for d in 0..7 {
        let name = format!(
            "usage_events_{}",
            (today + Duration::days(d)).format("%Y%m%d")
        );
        assert!(after.contains(&name), "{name} in {after:?}");
    }
    db.close().await;
}

async fn partitions(conn: &mut sqlx::PgConnection) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'usage_events'::regclass ORDER BY 1",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

/// Hour rollups follow the tenant's local hour: in Asia/Kolkata (UTC+5:30)
/// an hour starts at :30 UTC, in Asia/Kathmandu (UTC+5:45) at :15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hourly_rollups_start_on_the_tenant_local_hour() {
    use chrono::DurationRound;

    let app = TestApp::spawn().await;
    for (zone, offset_minutes) in [("Asia/Kolkata", 30), ("Asia/Kathmandu", 15)] {
        let email = format!("hours@{offset_minutes}.test");
        let (_, key) = provision(&app, &email, "growth", zone).await;
        // A local hour that began 3 to 4 hours ago, and events 50 and 70
        // minutes into it: one each side of the next local hour.
        let utc_hour = (Utc::now() - Duration::hours(4))
            .duration_trunc(Duration::hours(1))
            .unwrap();
        let start = utc_hour + Duration::minutes(offset_minutes);
        for minutes in [50, 70] {
            let ts = (start + Duration::minutes(minutes)).to_rfc3339();
            let (status, body) = track(
                &app,
                &key,
                json!({"metric": "api_call", "value": 1, "timestamp": ts}),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
        let (status, summary) = call(&app, &key, Method::GET, "/api/v1/usage/summary", None).await;
        assert_eq!(status, 200, "{summary}");
        let hourly: Vec<String> = summary["hourly"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["bucketStart"].as_str().unwrap().to_owned())
            .collect();
        let expected: Vec<String> = [start, start + Duration::hours(1)]
            .iter()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .collect();
        assert_eq!(hourly, expected, "{zone}: {summary}");
    }
}
