//! RecordService (`/v1/record`: lock → save → get) over REST and gRPC:
//! the documented flow, one winner among concurrent locks, lease takeover
//! with a moved clock, fingerprints, tenant isolation, retention and bad
//! input.

use std::sync::Arc;

use chrono::{Duration, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use tenlyr::{
    proto::v1::{self, record_service_client::RecordServiceClient},
    workers::{Context, ManualClock, periodic::Tick, record_expiry::RecordExpiry},
};

use crate::helpers::{TestApp, app_db, assert_error_body, call, json, provision, with_key};

async fn lock(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    call(app, key, Method::POST, "/v1/record/lock", Some(body)).await
}

async fn save(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    call(app, key, Method::POST, "/v1/record/save", Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_flow_over_rest() {
    let app = TestApp::spawn().await;
    let (tenant, key) = provision(&app, "flow@records.test", "growth", "UTC").await;

    let (status, locked) = lock(&app, &key, json!({"key": "order-42"})).await;
    assert_eq!(status, 200, "{locked}");
    assert_eq!(locked["state"], "locked");
    assert_eq!(locked["key"], "order-42");
    let token = locked["lockToken"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    let expires: chrono::DateTime<Utc> = locked["expiresAt"].as_str().unwrap().parse().unwrap();
    let lease = expires - Utc::now();
    assert!(
        lease > Duration::seconds(55) && lease <= Duration::seconds(60),
        "{lease}"
    );

    // A second caller while the lock is held: 409 with Retry-After.
    let response = app
        .http
        .post(app.url("/v1/record/lock"))
        .bearer_auth(&key)
        .json(&json!({"key": "order-42"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let (_, body) = json(response).await;
    assert_error_body(&body, 409, "Conflict");
    assert_eq!(body["reason"], "RECORD_LOCKED");

    // Get while locked: the record, no data yet.
    let (status, record) = call(&app, &key, Method::GET, "/v1/record/order-42", None).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["state"], "locked");
    assert_eq!(record["data"], Value::Null);
    assert_eq!(record["tenantId"], tenant);

    let data = json!({"chargeId": "ch_1", "amount": 12.5, "items": ["a", "b"]});
    let (status, saved) = save(
        &app,
        &key,
        json!({"key": "order-42", "lockToken": token, "data": data}),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["state"], "saved");
    assert_eq!(saved["data"], data);
    assert_eq!(saved["lockExpiresAt"], Value::Null);
    // Saving again with the same token and data: the same record.
    let (status, again) = save(
        &app,
        &key,
        json!({"key": "order-42", "lockToken": token, "data": data}),
    )
    .await;
    assert_eq!((status, &again["data"]), (200, &data));
    // Other data under the same token: refused.
    let (status, body) = save(
        &app,
        &key,
        json!({"key": "order-42", "lockToken": token, "data": {"x": 1}}),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("RECORD_ALREADY_SAVED"))
    );

    // A retry locks again: it gets the saved result instead of a lock.
    let (status, replay) = lock(&app, &key, json!({"key": "order-42"})).await;
    assert_eq!(status, 200);
    assert_eq!(replay["state"], "saved");
    assert_eq!(replay["lockToken"], "");
    assert_eq!(replay["record"]["data"], data);
    let (status, got) = call(&app, &key, Method::GET, "/v1/record/order-42", None).await;
    assert_eq!((status, &got["data"]), (200, &data));
    let retained: chrono::DateTime<Utc> = got["retainedUntil"].as_str().unwrap().parse().unwrap();
    assert!(
        (retained - Utc::now() - Duration::hours(24))
            .num_seconds()
            .abs()
            < 60
    );

    let (status, body) = call(&app, &key, Method::GET, "/v1/record/never-locked", None).await;
    assert_eq!(status, 404);
    assert_error_body(&body, 404, "Not Found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_flow_over_grpc() {
    let app = TestApp::spawn().await;
    let (_, key) = provision(&app, "grpc@records.test", "growth", "UTC").await;
    let mut client = RecordServiceClient::new(app.channel().await);
    let locked = client
        .lock(with_key(
            v1::LockRequest {
                key: "job-7".into(),
                ttl_seconds: 30,
                fingerprint: "sha256:abc".into(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(locked.state, v1::RecordState::Locked as i32);
    let err = client
        .lock(with_key(
            v1::LockRequest {
                key: "job-7".into(),
                ttl_seconds: 30,
                fingerprint: "sha256:abc".into(),
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let data = prost_types::Struct {
        fields: [(
            "ok".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::BoolValue(true)),
            },
        )]
        .into(),
    };
    let saved = client
        .save(with_key(
            v1::SaveRequest {
                key: "job-7".into(),
                lock_token: locked.lock_token.clone(),
                data: Some(data.clone()),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(saved.state, v1::RecordState::Saved as i32);
    let got = client
        .get(with_key(
            v1::GetRequest {
                key: "job-7".into(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.data, Some(data));
    // Another fingerprint for the same key: 422 (INVALID_ARGUMENT).
    let err = client
        .lock(with_key(
            v1::LockRequest {
                key: "job-7".into(),
                ttl_seconds: 0,
                fingerprint: "sha256:other".into(),
            },
            &key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_locks_give_exactly_one_token() {
    let app = Arc::new(TestApp::spawn().await);
    let (_, key) = provision(&app, "race@records.test", "growth", "UTC").await;
    let mut calls = Vec::new();
    for _ in 0..32 {
        let (app, key) = (app.clone(), key.clone());
        calls.push(tokio::spawn(async move {
            lock(&app, &key, json!({"key": "contended"})).await
        }));
    }
    let mut tokens = Vec::new();
    for call in calls {
        let (status, body) = call.await.unwrap();
        match status {
            200 => tokens.push(body["lockToken"].as_str().unwrap().to_owned()),
            409 => assert_eq!(body["reason"], "RECORD_LOCKED"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(tokens.len(), 1, "{tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over_and_the_old_token_cannot_save() {
    let clock = ManualClock::new(Utc::now());
    let app = TestApp::spawn_with_clock(clock.clone()).await;
    let (_, key) = provision(&app, "lease@records.test", "growth", "UTC").await;
    let (_, first) = lock(
        &app,
        &key,
        json!({"key": "k", "ttlSeconds": 5, "fingerprint": "f"}),
    )
    .await;
    let old = first["lockToken"].as_str().unwrap().to_owned();
    let (status, _) = lock(
        &app,
        &key,
        json!({"key": "k", "ttlSeconds": 5, "fingerprint": "f"}),
    )
    .await;
    assert_eq!(status, 409);

    clock.advance(Duration::seconds(6));
    // Expired, but another fingerprint still may not take it.
    let (status, body) = lock(&app, &key, json!({"key": "k", "fingerprint": "g"})).await;
    assert_eq!(
        (status, body["details"][0]["field"].as_str()),
        (422, Some("fingerprint")),
        "{body}"
    );
    let (status, second) = lock(
        &app,
        &key,
        json!({"key": "k", "ttlSeconds": 5, "fingerprint": "f"}),
    )
    .await;
    assert_eq!(
        (status, second["state"].as_str()),
        (200, Some("locked")),
        "{second}"
    );
    let new = second["lockToken"].as_str().unwrap().to_owned();
    assert_ne!(new, old);

    let (status, body) = save(
        &app,
        &key,
        json!({"key": "k", "lockToken": old, "data": {"n": 1}}),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("LOCK_TOKEN_STALE"))
    );
    let (status, _) = save(
        &app,
        &key,
        json!({"key": "k", "lockToken": new, "data": {"n": 2}}),
    )
    .await;
    assert_eq!(status, 200);

    // A lease that ran out before saving: the save is refused.
    let (_, third) = lock(&app, &key, json!({"key": "late", "ttlSeconds": 1})).await;
    clock.advance(Duration::seconds(2));
    let (status, _) = save(
        &app,
        &key,
        json!({"key": "late", "lockToken": third["lockToken"], "data": {}}),
    )
    .await;
    assert_eq!(status, 409);

    // Retention: a day after saving the record is forgotten.
    clock.advance(Duration::hours(25));
    let ctx = Context::new(app_db(&app.db.url, 1).await, Arc::new(clock.clone()));
    RecordExpiry.tick(&ctx).await.unwrap();
    let (status, _) = call(&app, &key, Method::GET, "/v1/record/k", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_other_s_records() {
    let app = TestApp::spawn().await;
    let (_, a) = provision(&app, "a@records.test", "growth", "UTC").await;
    let (_, b) = provision(&app, "b@records.test", "growth", "UTC").await;
    let (_, locked) = lock(&app, &a, json!({"key": "shared-name"})).await;
    save(
        &app,
        &a,
        json!({"key": "shared-name", "lockToken": locked["lockToken"], "data": {"owner": "a"}}),
    )
    .await;
    let (status, _) = call(&app, &b, Method::GET, "/v1/record/shared-name", None).await;
    assert_eq!(status, 404, "B cannot read A's record");
    // B's own key of the same name is its own, free to lock.
    let (status, theirs) = lock(&app, &b, json!({"key": "shared-name"})).await;
    assert_eq!((status, theirs["state"].as_str()), (200, Some("locked")));
    // A's token does not save B's record.
    let (status, _) = save(
        &app,
        &b,
        json!({"key": "shared-name", "lockToken": locked["lockToken"], "data": {}}),
    )
    .await;
    assert_eq!(status, 409);
    let (_, own) = call(&app, &a, Method::GET, "/v1/record/shared-name", None).await;
    assert_eq!(own["data"]["owner"], "a");
    // An admin key is not a tenant.
    let (status, _) = call(
        &app,
        &app.admin_key,
        Method::GET,
        "/v1/record/shared-name",
        None,
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field() {
    let app = TestApp::spawn().await;
    let (_, key) = provision(&app, "bad@records.test", "growth", "UTC").await;
    let long = "k".repeat(256);
    for (body, field) in [
        (json!({"key": ""}), "key"),
        (json!({"key": long}), "key"),
        (json!({"key": "has space"}), "key"),
        (json!({"key": "tab\there"}), "key"),
        (json!({"key": "k", "ttlSeconds": 3601}), "ttlSeconds"),
        (json!({"key": "k", "ttlSeconds": -5}), "ttlSeconds"),
        (json!({"key": "k", "fingerprint": "a b"}), "fingerprint"),
    ] {
        let (status, reply) = lock(&app, &key, body.clone()).await;
        assert_eq!(status, 422, "{body}: {reply}");
        assert_error_body(&reply, 422, "Unprocessable Entity");
        assert_eq!(reply["details"][0]["field"], field, "{reply}");
    }
    let (_, locked) = lock(&app, &key, json!({"key": "k"})).await;
    let token = locked["lockToken"].as_str().unwrap();
    let (status, reply) = save(
        &app,
        &key,
        json!({"key": "k", "lockToken": "not-a-token", "data": {}}),
    )
    .await;
    assert_eq!(
        (status, reply["details"][0]["field"].as_str()),
        (422, Some("lockToken")),
        "{reply}"
    );
    let (status, reply) = save(
        &app,
        &key,
        json!({"key": "k", "lockToken": token, "data": [1, 2]}),
    )
    .await;
    assert_eq!(status, 400, "data must be an object: {reply}");
    let (status, reply) = save(&app, &key, json!({"key": "k", "lockToken": token})).await;
    assert_eq!(
        (status, reply["details"][0]["field"].as_str()),
        (400, Some("data")),
        "{reply}"
    );
    let big = "x".repeat(70 * 1024);
    let (status, reply) = save(
        &app,
        &key,
        json!({"key": "k", "lockToken": token, "data": {"big": big}}),
    )
    .await;
    assert_eq!(status, 413, "{reply}");
    assert_error_body(&reply, 413, "Payload Too Large");
    // A NUL in the data (jsonb cannot hold one) is the caller's mistake,
    // refused before it could fail the batch it would have joined.
    let (status, reply) = save(
        &app,
        &key,
        json!({"key": "k", "lockToken": token, "data": {"note": "a\u{0}b"}}),
    )
    .await;
    assert_eq!(
        (status, reply["details"][0]["field"].as_str()),
        (400, Some("data")),
        "{reply}"
    );
    let (status, reply) = save(
        &app,
        &key,
        json!({"key": "k", "lockToken": token, "data": {"note": "fine"}}),
    )
    .await;
    assert_eq!(status, 200, "the lock is intact: {reply}");
    let (status, _) = save(
        &app,
        &key,
        json!({"key": "unknown", "lockToken": token, "data": {}}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(&app, &key, Method::GET, "/v1/record/%20", None).await;
    assert_eq!(status, 422);
}

/// A saved record never changes, so each replica answers gets and repeated
/// locks of it from memory: the answers must be the database's, word for
/// word, and a record still locked must never be answered from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_record_reads_the_same_from_every_replica_and_a_locked_one_is_never_stale() {
    let (a, b) = TestApp::spawn_pair().await;
    let (_, key) = provision(&a, "cache@records.test", "growth", "UTC").await;
    let (_, locked) = lock(&a, &key, json!({"key": "paid-7", "fingerprint": "f"})).await;
    let (status, saved) = save(
        &a,
        &key,
        json!({"key": "paid-7", "lockToken": locked["lockToken"],
               "data": {"chargeId": "ch_7", "amount": 1250, "items": [1, "two"]}}),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    // A answers from the record it saved, B from the database (then
    // from memory): the same body either way, twice each.
    for app in [&a, &b, &a, &b] {
        let (status, got) = call(app, &key, Method::GET, "/v1/record/paid-7", None).await;
        assert_eq!((status, &got), (200, &saved));
    }
    for app in [&a, &b] {
        let (status, again) = lock(app, &key, json!({"key": "paid-7", "fingerprint": "f"})).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["state"], "saved");
        assert_eq!(again["record"], saved);
        let (status, other) = lock(app, &key, json!({"key": "paid-7", "fingerprint": "g"})).await;
        assert_eq!(
            (status, other["details"][0]["field"].as_str()),
            (422, Some("fingerprint")),
            "{other}"
        );
    }

    // Locked and read on A, saved through B: A reads the save.
    let (_, pending) = lock(&a, &key, json!({"key": "pending"})).await;
    let (status, got) = call(&a, &key, Method::GET, "/v1/record/pending", None).await;
    assert_eq!((status, got["state"].as_str()), (200, Some("locked")));
    let (status, _) = save(
        &b,
        &key,
        json!({"key": "pending", "lockToken": pending["lockToken"], "data": {"done": true}}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, got) = call(&a, &key, Method::GET, "/v1/record/pending", None).await;
    assert_eq!(
        (status, got["state"].as_str()),
        (200, Some("saved")),
        "{got}"
    );
    assert_eq!(got["data"]["done"], true);
}
