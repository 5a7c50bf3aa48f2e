//! IsolationService and the tenant-data router: a tenant moved from the
//! shared tables to its own schema while it keeps writing, over REST and
//! gRPC; its usage, records and webhooks behave the same afterwards; row
//! security in the schema; bad input.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;
use tenlyr::proto::v1::{self, isolation_service_client::IsolationServiceClient};

use crate::{
    helpers::{
        TestApp, TrackWriter, admin_call, assert_error_body, call, isolation_level, provision,
        with_key,
    },
    inbound::{event_until, now, post, tenant_with, timestamped},
    webhooks::{Receiver, Reply},
};

/// Polls a migration until it is completed or failed (30 s at most).
async fn wait_for(app: &TestApp, key: &str, id: &str) -> Value {
    for _ in 0..600 {
        let (status, m) = call(
            app,
            key,
            Method::GET,
            &format!("/api/v1/isolation/migrations/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{m}");
        if m["status"] == "completed" || m["status"] == "failed" {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("migration {id} did not finish");
}

/// The tenant's rows of a table in a schema, counted as the owner.
async fn rows_in(app: &TestApp, schema: &str, table: &str, tenant: &str) -> i64 {
    let mut conn = app.db.connect().await;
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".\"{table}\" WHERE tenant_id = $1::uuid"
    )))
    .bind(tenant)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    n
}

fn schema_of(tenant: &str) -> String {
    format!("t_{}", tenant.replace('-', ""))
}

/// Starts a move of the key's own tenant to `dedicated_schema` (REST);
/// the migration's id.
async fn start_move(app: &TestApp, key: &str) -> String {
    let (status, started) = call(
        app,
        key,
        Method::POST,
        "/api/v1/isolation/migrate",
        Some(json!({"targetLevel": "dedicated_schema"})),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    started["id"].as_str().unwrap().to_owned()
}

/// Tracks a batch over REST; every event must be accepted.
/// A tenant (owner `email`) with 600 events spread over the last 17 hours,
/// on a server whose moves copy slowly (20 rows a chunk, 20 ms apart), and
/// its move to its own schema started: the server, tenant id, tenant key
/// and migration id.
async fn slow_move_started(email: &str) -> (TestApp, String, String, String) {
    let app = TestApp::spawn_with(|c| {
        c.isolation_chunk_rows = 20;
        c.isolation_pause_ms = 20;
    })
    .await;
    let (tenant, key) = provision(&app, email, "growth", "UTC").await;
    let now = chrono::Utc::now();
    let events: Vec<Value> = (0..600)
        .map(|i| {
            let at = now - chrono::Duration::seconds(600 + i * 100);
            json!({"metric": "api_call", "value": 1, "timestamp": at.to_rfc3339()})
        })
        .collect();
    track_all(&app, &key, events).await;
    let id = start_move(&app, &key).await;
    (app, tenant, key, id)
}

async fn track_all(app: &TestApp, key: &str, events: Vec<Value>) {
    let n = events.len();
    let (status, body) = call(
        app,
        key,
        Method::POST,
        "/api/v1/usage/track/batch",
        Some(json!({ "events": events })),
    )
    .await;
    assert_eq!(
        (status, body["accepted"].clone()),
        (200, json!(n)),
        "{body}"
    );
}

async fn track(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    call(app, key, Method::POST, "/api/v1/usage/track", Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moves_to_its_own_schema_while_it_writes_and_loses_nothing() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(Reply::Ok).await;
    let (tenant, key, slug, _) = tenant_with(
        &app,
        "moving@isolation.test",
        Some(&receiver),
        json!([{"provider": "generic", "enabled": true, "secret": "generic-secret"}]),
    )
    .await;
    let (other, other_key) = provision(&app, "staying@isolation.test", "growth", "UTC").await;
    let schema = schema_of(&tenant);

    // Data before the move: events (one with a key), a saved record, a
    // forwarded webhook; the other tenant's events.
    for i in 0..50 {
        let (status, body) = track(&app, &key, json!({"metric": "api_call", "value": 1})).await;
        assert_eq!(status, 200, "{i}: {body}");
    }
    let (status, keyed) = track(
        &app,
        &key,
        json!({"metric": "api_call", "value": 1, "idempotencyKey": "before-move"}),
    )
    .await;
    assert_eq!(status, 200, "{keyed}");
    for _ in 0..5 {
        track(&app, &other_key, json!({"metric": "api_call", "value": 1})).await;
    }
    let (status, locked) = call(
        &app,
        &key,
        Method::POST,
        "/v1/record/lock",
        Some(json!({"key": "order-1"})),
    )
    .await;
    assert_eq!(status, 200, "{locked}");
    let (status, _) = call(
        &app,
        &key,
        Method::POST,
        "/v1/record/save",
        Some(json!({"key": "order-1", "lockToken": locked["lockToken"], "data": {"n": "one"}})),
    )
    .await;
    assert_eq!(status, 200);
    let path = format!("/v1/t/{slug}/webhooks/generic");
    let body = json!({"type": "order.shipped", "occurredAt": "2026-03-01T10:00:00Z"}).to_string();
    let headers = |id: &str| {
        [
            (
                "x-syllecta-signature",
                timestamped("generic-secret", now(), &body),
            ),
            ("x-syllecta-event-id", id.to_owned()),
        ]
    };
    assert_eq!(
        post(&app, &path, &headers("wh-before"), body.clone())
            .await
            .0,
        200
    );
    receiver.wait_for(1).await;
    let (_, before) = call(&app, &key, Method::GET, "/api/v1/usage/metrics", None).await;

    // Writes go on during the whole move; every acknowledged one must be
    // in the new place afterwards.
    let writer = TrackWriter::start(&app, &key);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (status, started) = admin_call(
        &app,
        Method::POST,
        "/api/v1/isolation/migrate",
        Some(json!({"tenantId": tenant, "targetLevel": "dedicated_schema"})),
    )
    .await;
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["status"], "pending");
    assert_eq!(started["tenantId"], tenant);
    assert_eq!(started["fromLevel"], "shared_schema");
    assert_eq!(started["toLevel"], "dedicated_schema");
    assert_eq!(started["error"], Value::Null);
    let id = started["id"].as_str().unwrap().to_owned();
    let done = wait_for(&app, &key, &id).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (written, refused) = writer.stop().await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["error"], Value::Null);
    assert!(
        done["startedAt"].is_string() && done["completedAt"].is_string(),
        "{done}"
    );
    assert_eq!(refused, 0, "writes are never refused");
    let written = written as i64;
    assert!(written > 0);

    assert_eq!(isolation_level(&app, &tenant).await, "dedicated_schema");
    assert_eq!(isolation_level(&app, &other).await, "shared_schema");

    // Every event is in the schema; the cleanup empties the shared tables.
    assert_eq!(
        rows_in(&app, &schema, "usage_events", &tenant).await,
        51 + written
    );
    for _ in 0..200 {
        if rows_in(&app, "public", "usage_events", &tenant).await == 0
            && rows_in(&app, "public", "records", &tenant).await == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for table in ["usage_events", "usage_rollups", "records", "webhook_events"] {
        assert_eq!(rows_in(&app, "public", table, &tenant).await, 0, "{table}");
    }
    assert_eq!(rows_in(&app, &schema, "records", &tenant).await, 1);
    assert_eq!(rows_in(&app, &schema, "webhook_events", &tenant).await, 1);
    assert_eq!(rows_in(&app, "public", "usage_events", &other).await, 5);
    let (_, m) = call(
        &app,
        &key,
        Method::GET,
        &format!("/api/v1/isolation/migrations/{id}"),
        None,
    )
    .await;
    assert_eq!(m["phase"], "done", "{m}");

    // The API sees the same data: counters, events, records, keys.
    let (_, after) = call(&app, &key, Method::GET, "/api/v1/usage/metrics", None).await;
    assert_eq!(
        after["apiCalls"]
            .as_i64()
            .unwrap_or_else(|| after["apiCalls"].as_str().unwrap().parse().unwrap()),
        before["apiCalls"]
            .as_i64()
            .unwrap_or_else(|| before["apiCalls"].as_str().unwrap().parse().unwrap())
            + written,
        "{before} {after}"
    );
    let (status, again) = track(
        &app,
        &key,
        json!({"metric": "api_call", "value": 1, "idempotencyKey": "before-move"}),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], keyed["id"], "the key still finds its event");
    let (status, record) = call(&app, &key, Method::GET, "/v1/record/order-1", None).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["data"], json!({"n": "one"}));
    let (status, events) = call(
        &app,
        &key,
        Method::GET,
        "/api/v1/usage/events?limit=5",
        None,
    )
    .await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(events.as_array().unwrap().len(), 5);

    // A webhook after the move: logged in the schema, forwarded, its
    // status (set by the delivery engine's trigger) found there too.
    assert_eq!(
        post(&app, &path, &headers("wh-after"), body.clone())
            .await
            .0,
        200
    );
    receiver.wait_for(2).await;
    let (_, page) = call(&app, &key, Method::GET, "/api/v1/webhooks/events", None).await;
    let listed = page["data"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{page}");
    let newest = listed[0]["id"].as_str().unwrap().to_owned();
    let event = event_until(&app, &key, &newest, |e| e["status"] == "processed").await;
    assert_eq!(event["attempts"], 1);
    assert_eq!(
        post(&app, &path, &headers("wh-after"), body.clone()).await,
        (200, json!({"ok": true, "cached": true})),
        "dedup works in the schema"
    );

    // The dashboard still counts the moved tenant.
    let (status, dashboard) = admin_call(
        &app,
        Method::GET,
        "/api/v1/tenants/dashboard?limit=100",
        None,
    )
    .await;
    assert_eq!(status, 200, "{dashboard}");
    let row = dashboard["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == tenant)
        .unwrap()
        .clone();
    assert_eq!(row["apiCalls"], (51 + written).to_string(), "{row}");
    assert_eq!(row["isolationLevel"], "dedicated_schema");

    // The documented events, with their payload.
    let mut conn = app.db.connect().await;
    let bodies: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM platform_events WHERE type LIKE 'isolation.%' ORDER BY created_at, id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let types: Vec<Value> = bodies
        .iter()
        .map(|b| serde_json::from_str::<Value>(b).unwrap())
        .collect();
    assert_eq!(types.len(), 2, "{types:?}");
    assert_eq!(types[0]["type"], "isolation.migration_started");
    assert_eq!(types[1]["type"], "isolation.migration_completed");
    assert_eq!(
        types[1]["data"],
        json!({"migrationId": id, "tenantId": tenant, "fromLevel": "shared_schema", "toLevel": "dedicated_schema"})
    );

    // Lists: the tenant's own; an admin's, filtered.
    let (status, mine) = call(
        &app,
        &key,
        Method::GET,
        "/api/v1/isolation/migrations",
        None,
    )
    .await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine.as_array().unwrap().len(), 1);
    let (_, theirs) = call(
        &app,
        &other_key,
        Method::GET,
        "/api/v1/isolation/migrations",
        None,
    )
    .await;
    assert_eq!(theirs, json!([]));
    let (status, body) = call(
        &app,
        &other_key,
        Method::GET,
        &format!("/api/v1/isolation/migrations/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404, "another tenant's migration is not found");
    assert_error_body(&body, 404, "Not Found");
    let (_, all) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/isolation/migrations?tenantId={other}"),
        None,
    )
    .await;
    assert_eq!(all, json!([]));

    // Upgrade only.
    let (status, body) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/isolation/migrate",
        Some(json!({"targetLevel": "dedicated_schema"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("already"),
        "{body}"
    );
    let (status, body) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/isolation/migrate",
        Some(json!({"targetLevel": "shared_schema"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("support ticket"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_security_holds_in_a_tenant_schema() {
    let app = TestApp::spawn().await;
    let (tenant, key) = provision(&app, "rls@isolation.test", "growth", "UTC").await;
    let (other, _) = provision(&app, "rls-other@isolation.test", "growth", "UTC").await;
    track(&app, &key, json!({"metric": "api_call", "value": 1})).await;
    let done = wait_for(&app, &key, &start_move(&app, &key).await).await;
    assert_eq!(done["status"], "completed", "{done}");
    let schema = schema_of(&tenant);

    // As the server's role: another tenant's scope sees nothing of the
    // schema, its own scope sees its rows, and not even platform scope
    // can put another tenant's row into it.
    let db = crate::helpers::app_db(&app.db.url, 1).await;
    let mut tx = db.pool().begin().await.unwrap();
    sqlx::query("SELECT tenlyr_enter_scope($1::uuid)")
        .bind(&other)
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".usage_events"
    )))
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(seen, 0);
    sqlx::query("SELECT tenlyr_enter_scope($1::uuid)")
        .bind(&tenant)
        .execute(&mut *tx)
        .await
        .unwrap();
    let path: String = sqlx::query_scalar("SELECT current_setting('search_path')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(path, format!("{schema}, public"));
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 1, "unqualified names reach the tenant's own tables");
    tx.rollback().await.unwrap();

    let mut tx = db.pool().begin().await.unwrap();
    sqlx::query("SELECT tenlyr_enter_scope(NULL)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".records (tenant_id, key, state, lock_token, locked_until, \
         created_at, updated_at, expires_at) \
         VALUES ($1::uuid, 'x', 'locked', gen_random_uuid(), now(), now(), now(), now())"
    )))
    .bind(&other)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("row-level security"),
        "{refused}"
    );
    tx.rollback().await.unwrap();
    db.close().await;

    // Deleting the tenant removes its schema with its data.
    let (status, _) = admin_call(
        &app,
        Method::DELETE,
        &format!("/api/v1/tenants/{tenant}"),
        None,
    )
    .await;
    assert!(status == 200 || status == 204, "{status}");
    let mut gone = false;
    for _ in 0..200 {
        let mut conn = app.db.connect().await;
        let exists: bool = sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
            .bind(&schema)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        if !exists {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the deleted tenant's schema is dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_over_grpc_and_the_refusals() {
    // No job runners: a migration stays pending, so a second one conflicts.
    let app = TestApp::spawn_with(|c| c.job_runners = 0).await;
    let (tenant, key) = provision(&app, "grpc@isolation.test", "growth", "UTC").await;
    let (other, _) = provision(&app, "grpc-other@isolation.test", "growth", "UTC").await;
    let mut client = IsolationServiceClient::new(app.channel().await);

    let started = client
        .start_migration(with_key(
            v1::StartMigrationRequest {
                tenant_id: String::new(),
                target_level: v1::IsolationLevel::DedicatedSchema as i32,
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.tenant_id, tenant);
    assert_eq!(started.status, v1::MigrationStatus::Pending as i32);
    assert_eq!(started.from_level, v1::IsolationLevel::SharedSchema as i32);
    assert_eq!(started.phase, "queued");
    let got = client
        .get_migration(with_key(
            v1::GetMigrationRequest {
                id: started.id.clone(),
            },
            &app.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, started);

    // One active migration per tenant.
    let err = client
        .start_migration(with_key(
            v1::StartMigrationRequest {
                tenant_id: tenant.clone(),
                target_level: v1::IsolationLevel::DedicatedSchema as i32,
            },
            &app.admin_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    let (status, body) = admin_call(
        &app,
        Method::POST,
        "/api/v1/isolation/migrate",
        Some(json!({"tenantId": tenant, "targetLevel": "dedicated_schema"})),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_error_body(&body, 409, "Conflict");
    assert_eq!(body["reason"], "MIGRATION_ACTIVE", "{body}");

    // Refusals, each with the documented status and nothing started.
    let cases = [
        (
            &app.admin_key,
            json!({"targetLevel": "dedicated_schema"}),
            422,
        ),
        (&app.admin_key, json!({"tenantId": other}), 422),
        (
            &app.admin_key,
            json!({"tenantId": other, "targetLevel": "nope"}),
            400,
        ),
        (
            &app.admin_key,
            json!({"tenantId": "not-a-uuid", "targetLevel": "dedicated_schema"}),
            400,
        ),
        (
            &app.admin_key,
            json!({"tenantId": uuid::Uuid::now_v7(), "targetLevel": "dedicated_schema"}),
            404,
        ),
        (
            &app.admin_key,
            json!({"tenantId": other, "targetLevel": "shared_schema"}),
            400,
        ),
        (
            &key,
            json!({"tenantId": other, "targetLevel": "dedicated_database"}),
            403,
        ),
        (
            &key,
            json!({"tenantId": other, "targetLevel": "dedicated_schema"}),
            403,
        ),
        // Another tenant's id that does not exist: the same 403.
        (
            &key,
            json!({"tenantId": uuid::Uuid::now_v7(), "targetLevel": "dedicated_schema"}),
            403,
        ),
    ];
    for (k, body, expected) in cases {
        let (status, reply) = call(
            &app,
            k,
            Method::POST,
            "/api/v1/isolation/migrate",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, expected, "{body}: {reply}");
        assert_eq!(reply["statusCode"], expected, "{reply}");
    }
    let (status, reply) = admin_call(
        &app,
        Method::POST,
        &format!("/api/v1/tenants/{other}/suspend"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = admin_call(
        &app,
        Method::POST,
        "/api/v1/isolation/migrate",
        Some(json!({"tenantId": other, "targetLevel": "dedicated_schema"})),
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("suspended"),
        "{reply}"
    );
    let (_, listed) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/isolation/migrations?tenantId={other}"),
        None,
    )
    .await;
    assert_eq!(listed, json!([]), "no refused request started a migration");
    let (status, _) = admin_call(
        &app,
        Method::GET,
        "/api/v1/isolation/migrations/not-an-id",
        None,
    )
    .await;
    assert_eq!(status, 404);
}

/// A real `tenlyr serve` whose moves copy slowly (50 rows per chunk, a
/// pause between chunks), so a test can kill it in a phase.
async fn start_slow(
    db: &crate::helpers::TestDb,
    data_dir: &std::path::Path,
) -> (tokio::process::Child, String) {
    let process = crate::helpers::start_process(
        db,
        data_dir,
        &[
            ("TENLYR_ISOLATION_CHUNK_ROWS", "50"),
            ("TENLYR_ISOLATION_PAUSE_MS", "100"),
        ],
    )
    .await;
    (process.child, process.base)
}

async fn migration(http: &reqwest::Client, base: &str, admin: &str, id: &str) -> Value {
    http.get(format!("{base}/api/v1/isolation/migrations/{id}"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls the migration until `pred` holds (60 s at most).
async fn until_migration(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    id: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..1200 {
        let m = migration(http, base, admin, id).await;
        if pred(&m) {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "migration never reached the state: {}",
        migration(http, base, admin, id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_in_each_phase_resumes_and_loses_nothing() {
    killed_move("dedicated_schema").await;
}

/// The same to a database of its own (on the main server: the default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_a_database_killed_in_each_phase_resumes_and_loses_nothing() {
    killed_move("dedicated_database").await;
}

/// A move to `target` by a real server killed while copying, in the
/// barrier and while cleaning: it completes once, every acknowledged
/// event is in the new place exactly once, none is left behind.
async fn killed_move(target: &str) {
    let db = crate::helpers::TestDb::migrated().await;
    let admin = crate::helpers::create_admin_key(&db.url, "kill-moves").await;
    let data_dir = std::env::temp_dir().join(format!("tenlyr-move-{}", uuid::Uuid::new_v4()));
    let (mut child, base) = start_slow(&db, &data_dir).await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{base}/api/v1/tenants"))
        .bearer_auth(&admin)
        .json(&json!({"name": "Moving", "ownerEmail": "kill@moves.test", "plan": "enterprise"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["apiKey"].as_str().unwrap().to_owned();
    let tenant = created["tenant"]["id"].as_str().unwrap().to_owned();
    // Events of the last 20 hours (the bulk copy's part).
    let now = chrono::Utc::now();
    for b in 0..20 {
        let batch: Vec<Value> = (0..100)
            .map(|i| {
                // within the accepted 24 hours: 10 minutes to 20 hours ago
                let at = now - chrono::Duration::seconds(600 + (b * 100 + i) * 36);
                json!({"metric": "api_call", "value": 1, "timestamp": at.to_rfc3339()})
            })
            .collect();
        let r: Value = http
            .post(format!("{base}/api/v1/usage/track/batch"))
            .bearer_auth(&key)
            .json(&json!({"events": batch}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["accepted"], 100, "{}", r["results"][99]);
    }
    let seeded = 2_000;

    // A writer for the whole test, each event with its own idempotency
    // key: every acknowledged one must survive, none twice.
    let base_now = Arc::new(std::sync::Mutex::new(base.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let writer = {
        let (http, key) = (http.clone(), key.clone());
        let (base_now, stop, acknowledged) = (base_now.clone(), stop.clone(), acknowledged.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let idem = format!("w-{n}");
                let url = format!("{}/api/v1/usage/track", base_now.lock().unwrap());
                let sent = http
                    .post(url)
                    .bearer_auth(&key)
                    .timeout(Duration::from_secs(5))
                    .json(&json!({"metric": "api_call", "value": 1, "idempotencyKey": idem}))
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status() == 200) {
                    acknowledged.lock().unwrap().push(idem);
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };

    let started: Value = http
        .post(format!("{base}/api/v1/isolation/migrate"))
        .bearer_auth(&admin)
        .json(&json!({"tenantId": tenant, "targetLevel": target}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["id"].as_str().unwrap().to_owned();

    // 1. Killed while copying.
    until_migration(&http, &base, &admin, &id, |m| {
        m["phase"] == "copying" && m["rowsCopied"].as_str().is_some_and(|n| n != "0")
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let (restarted, base) = start_slow(&db, &data_dir).await;
    child = restarted;
    *base_now.lock().unwrap() = base.clone();

    // 2. Killed in the barrier: a writer holding the tenant's placement
    // lock keeps the barrier waiting while the server dies.
    let app = crate::helpers::app_db(&db.url, 1).await;
    let mut blocker = app.pool().begin().await.unwrap();
    sqlx::query("SELECT tenlyr_enter_scope($1::uuid)")
        .bind(&tenant)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let m = until_migration(&http, &base, &admin, &id, |m| m["phase"] == "barrier").await;
    assert_eq!(m["status"], "in_progress", "{m}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    blocker.rollback().await.unwrap();
    app.close().await;
    let (restarted, base) = start_slow(&db, &data_dir).await;
    child = restarted;
    *base_now.lock().unwrap() = base.clone();

    // 3. Killed while cleaning up after the flip.
    let m = until_migration(&http, &base, &admin, &id, |m| m["status"] != "in_progress").await;
    assert_eq!(m["status"], "completed", "{m}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let (restarted, base) = start_slow(&db, &data_dir).await;
    child = restarted;
    *base_now.lock().unwrap() = base.clone();
    let m = until_migration(&http, &base, &admin, &id, |m| m["phase"] == "done").await;
    assert_eq!(m["status"], "completed", "{m}");
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    // The data is whole in exactly one place.
    let (place_url, table) = if target == "dedicated_database" {
        let name = format!("tenlyr_t_{}", tenant.replace('-', ""));
        let (base, _) = db.url.rsplit_once('/').unwrap();
        (format!("{base}/{name}"), "public.usage_events".to_owned())
    } else {
        (
            db.url.clone(),
            format!("\"{}\".usage_events", schema_of(&tenant)),
        )
    };
    let mut there = sqlx::PgConnection::connect(&place_url).await.unwrap();
    let count = |table: String| {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} WHERE tenant_id = $1::uuid"
        )))
        .bind(tenant.clone())
    };
    let moved = count(table.clone()).fetch_one(&mut there).await.unwrap();
    let keys: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT idempotency_key FROM {table} \
         WHERE tenant_id = $1::uuid AND idempotency_key IS NOT NULL"
    )))
    .bind(&tenant)
    .fetch_all(&mut there)
    .await
    .unwrap();
    there.close().await.unwrap();
    let mut conn = db.connect().await;
    let left = count("public.usage_events".into())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM platform_events WHERE type = 'isolation.migration_completed'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let level: String =
        sqlx::query_scalar("SELECT isolation_level FROM tenants WHERE id = $1::uuid")
            .bind(&tenant)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    let stored: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(stored.len(), keys.len(), "no event twice");
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty());
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored.contains(k))
        .collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    // (A write in flight when the server died may be stored unacknowledged.)
    assert_eq!(moved, seeded + keys.len() as i64);
    assert_eq!(left, 0);
    assert_eq!(completed, 1);
    assert_eq!(level, target);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    if target == "dedicated_database" {
        // The tenant database is not the test database's: drop it too.
        let mut conn = db.connect().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS tenlyr_t_{} WITH (FORCE)",
            tenant.replace('-', "")
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_into_the_past_during_a_move_are_not_lost() {
    // A slow copy, so the writes land while it runs.
    let (app, tenant, key, id) = slow_move_started("past@isolation.test").await;
    let now = chrono::Utc::now();
    let stamp = |seconds: i64| (now - chrono::Duration::seconds(seconds)).to_rfc3339();

    // Events stamped anywhere in the last 17 hours (into parts already
    // copied, being copied, and not yet copied), until the move is done.
    let mut written = 0;
    let mut records = Vec::new();
    let done = loop {
        let events: Vec<Value> = (0..10)
            .map(|i| json!({"metric": "api_call", "value": 1, "timestamp": stamp(300 + ((written + i) * 997) % 60_000)}))
            .collect();
        let (status, body) = call(
            &app,
            &key,
            Method::POST,
            "/api/v1/usage/track/batch",
            Some(json!({"events": events})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], 10, "{body}");
        // A record locked and saved: rows of a small table changing
        // during the move.
        let record = format!("r{written}");
        let (status, locked) = call(
            &app,
            &key,
            Method::POST,
            "/v1/record/lock",
            Some(json!({"key": record})),
        )
        .await;
        assert_eq!(status, 200, "{locked}");
        let (status, saved) = call(
            &app,
            &key,
            Method::POST,
            "/v1/record/save",
            Some(json!({"key": record, "lockToken": locked["lockToken"], "data": {"n": record}})),
        )
        .await;
        assert_eq!(status, 200, "{saved}");
        records.push(record);
        written += 10;
        let (_, m) = call(
            &app,
            &key,
            Method::GET,
            &format!("/api/v1/isolation/migrations/{id}"),
            None,
        )
        .await;
        if m["status"] == "completed" || m["status"] == "failed" {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(done["status"], "completed", "{done}");
    assert!(written >= 50, "the writes overlapped the move ({written})");
    assert_eq!(
        rows_in(&app, &schema_of(&tenant), "usage_events", &tenant).await,
        600 + written
    );
    let (_, metrics) = call(&app, &key, Method::GET, "/api/v1/usage/metrics", None).await;
    assert_eq!(
        metrics["apiCalls"],
        (600 + written).to_string(),
        "{metrics}"
    );
    assert_eq!(
        rows_in(&app, &schema_of(&tenant), "records", &tenant).await,
        records.len() as i64
    );
    for record in &records {
        let (status, got) = call(
            &app,
            &key,
            Method::GET,
            &format!("/v1/record/{record}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["data"], json!({"n": record}), "{got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tenant_keeps_its_exact_limit_and_keys_over_grpc() {
    use tenlyr::proto::v1::metering_service_client::MeteringServiceClient;
    let app = TestApp::spawn().await;
    // Starter: 1,000 API calls a month.
    let (tenant, key) = provision(&app, "limit@isolation.test", "starter", "UTC").await;
    let events: Vec<Value> = (0..999)
        .map(|_| json!({"metric": "api_call", "value": 1}))
        .collect();
    track_all(&app, &key, events).await;
    let done = wait_for(&app, &key, &start_move(&app, &key).await).await;
    assert_eq!(done["status"], "completed", "{done}");

    let mut client = MeteringServiceClient::new(app.channel().await);
    let track = |idem: &str| {
        with_key(
            v1::TrackRequest {
                metric: v1::UsageMetric::ApiCall as i32,
                value: 1.0,
                idempotency_key: Some(idem.to_owned()),
                ..Default::default()
            },
            &key,
        )
    };
    let last = client
        .track(track("the-1000th"))
        .await
        .unwrap()
        .into_inner();
    // The same key again: the same event, not a second one.
    let again = client
        .track(track("the-1000th"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.id, last.id);
    // The limit holds exactly in the new place.
    let refused = client.track(track("one-too-many")).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let (_, metrics) = call(&app, &key, Method::GET, "/api/v1/usage/metrics", None).await;
    assert_eq!(metrics["apiCalls"], "1000", "{metrics}");

    // Terminating it (gRPC, an admin key) drops its schema with its data;
    // the tenant stays, "pending deletion".
    let mut tenants =
        tenlyr::proto::v1::tenant_service_client::TenantServiceClient::new(app.channel().await);
    let terminated = tenants
        .terminate_tenant(with_key(
            v1::TerminateTenantRequest { id: tenant.clone() },
            &app.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(terminated.status, v1::TenantStatus::Terminated as i32);
    let schema = schema_of(&tenant);
    let mut conn = app.db.connect().await;
    let mut left = (true, 1_i64);
    for _ in 0..200 {
        left = sqlx::query_as(
            "SELECT to_regnamespace($1) IS NOT NULL, \
                    (SELECT count(*) FROM tenant_placements WHERE tenant_id = $2::uuid)",
        )
        .bind(&schema)
        .bind(&tenant)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if left == (false, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conn.close().await.unwrap();
    assert_eq!(left, (false, 0), "the schema and the placement are gone");
    let (status, row) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/tenants/{tenant}"),
        None,
    )
    .await;
    assert_eq!((status, row["status"].as_str()), (200, Some("terminated")));
}

/// A move whose copy no longer matches its source ends `failed` with the
/// reason, its `isolation.migration_failed` event and its target schema
/// dropped; the tenant stays where it was, its data whole. (The copy is
/// changed behind the move's back once its first rows are there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_copy_differs_fails_and_leaves_the_tenant_where_it_was() {
    let (app, tenant, key, id) = slow_move_started("failed@isolation.test").await;

    let schema = schema_of(&tenant);
    let mut conn = app.db.connect().await;
    let mut tampered = 0;
    for _ in 0..400 {
        let (_, m) = call(
            &app,
            &key,
            Method::GET,
            &format!("/api/v1/isolation/migrations/{id}"),
            None,
        )
        .await;
        if m["rowsCopied"].as_str().is_some_and(|n| n != "0") {
            tampered = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE \"{schema}\".usage_events SET value = value + 1000 \
                 WHERE tenant_id = $1::uuid"
            )))
            .bind(&tenant)
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected();
            if tampered > 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(tampered > 0, "the copy was never caught in progress");

    let done = wait_for(&app, &key, &id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .is_some_and(|e| e.contains("verification failed")),
        "{done}"
    );
    assert_eq!(isolation_level(&app, &tenant).await, "shared_schema");
    let (_, metrics) = call(&app, &key, Method::GET, "/api/v1/usage/metrics", None).await;
    assert_eq!(metrics["apiCalls"], "600", "{metrics}");
    let left: Option<String> = sqlx::query_scalar("SELECT to_regnamespace($1)::text")
        .bind(&schema)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, None, "the failed move's schema is dropped");
    let event: Value = sqlx::query_scalar(
        "SELECT body::jsonb FROM platform_events \
         WHERE type = 'isolation.migration_failed' AND tenant_id = $1::uuid",
    )
    .bind(&tenant)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(event["data"]["migrationId"], id.as_str(), "{event}");
    assert_eq!(event["data"]["toLevel"], "dedicated_schema", "{event}");
    assert_eq!(event["data"]["error"], done["error"], "{event}");
}
