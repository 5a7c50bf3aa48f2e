//! The dedicated_database tier: a tenant moved shared → its own schema →
//! its own database on a second local PostgreSQL cluster while it keeps
//! writing; everything it does behaves the same afterwards (usage and
//! limits, records, inbound webhooks and their forwarding status, the
//! dashboard and the health scan, over REST and gRPC); the main database
//! refuses its data; its tenant row follows changes; terminating it drops the
//! database.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;
use tenlyr::{
    proto::v1::{self, isolation_service_client::IsolationServiceClient},
    storage::embedded::EmbeddedPostgres,
};

use crate::{
    helpers::{TestApp, TrackWriter, admin_call, call, isolation_level, provision, with_key},
    inbound::{event_until, now, post, tenant_with, timestamped},
    webhooks::{Receiver, Reply},
};

/// A second local cluster, the tenant databases' server (reused across
/// runs while it runs; stopped by the test that started it).
async fn second_cluster() -> EmbeddedPostgres {
    let dir = std::env::temp_dir().join("tenlyr-test-second-cluster");
    EmbeddedPostgres::start(&dir, false)
        .await
        .expect("starting a second PostgreSQL cluster (initdb from the system's binaries)")
}

/// Polls a migration until it ends (60 s at most).
async fn finished(app: &TestApp, key: &str, id: &str) -> Value {
    for _ in 0..1200 {
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

/// Waits until `sql` (bound to `arg`) counts `expected` in the database at
/// `url` (10 s at most).
async fn until_count(what: &str, url: &str, sql: &str, arg: &str, expected: i64) {
    for _ in 0..200 {
        if scalar_i64(url, sql, arg).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

/// The owner URL of the tenant's database on `cluster`.
fn tenant_db_url(cluster: &EmbeddedPostgres, tenant: &str) -> String {
    cluster
        .url()
        .replace("/tenlyr", &format!("/tenlyr_t_{}", tenant.replace('-', "")))
}

async fn scalar_i64(url: &str, sql: &str, tenant: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(tenant)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_moves_to_its_own_database_while_it_writes_and_behaves_the_same() {
    let cluster = second_cluster().await;
    let server = cluster.url();
    let app =
        TestApp::spawn_with(|c| c.storage.dedicated_database_urls = vec![server.clone()]).await;
    let receiver = Receiver::start(Reply::Ok).await;
    let (tenant, key, slug, _) = tenant_with(
        &app,
        "own-db@isolation.test",
        Some(&receiver),
        json!([{"provider": "generic", "enabled": true, "secret": "generic-secret"}]),
    )
    .await;
    let (other, other_key) = provision(&app, "shared-db@isolation.test", "growth", "UTC").await;

    // Data before the moves: events (one keyed), a saved record, a
    // forwarded webhook; the other tenant's events.
    let events: Vec<Value> = (0..50)
        .map(|_| json!({"metric": "api_call", "value": 1}))
        .collect();
    let (status, tracked) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/usage/track/batch",
        Some(json!({ "events": events })),
    )
    .await;
    assert_eq!(status, 200, "{tracked}");
    let (status, keyed) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/usage/track",
        Some(json!({"metric": "api_call", "value": 1, "idempotencyKey": "before-moves"})),
    )
    .await;
    assert_eq!(status, 200, "{keyed}");
    for _ in 0..5 {
        call(
            &app,
            &other_key,
            Method::POST,
            "/api/v1/usage/track",
            Some(json!({"metric": "api_call", "value": 1})),
        )
        .await;
    }
    let (_, locked) = call(
        &app,
        &key,
        Method::POST,
        "/v1/record/lock",
        Some(json!({"key": "order-1"})),
    )
    .await;
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
        post(&app, &path, &headers("wh-1"), body.clone()).await.0,
        200
    );
    receiver.wait_for(1).await;

    // A writer the whole time: nothing refused, nothing lost.
    let writer = TrackWriter::start(&app, &key);

    // shared → its own schema (REST, the tenant's own key) → its own
    // database (gRPC, an admin key).
    let (status, first) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/isolation/migrate",
        Some(json!({"targetLevel": "dedicated_schema"})),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let done = finished(&app, &key, first["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "completed", "{done}");
    let mut isolation = IsolationServiceClient::new(app.channel().await);
    let second = isolation
        .start_migration(with_key(
            v1::StartMigrationRequest {
                tenant_id: tenant.clone(),
                target_level: v1::IsolationLevel::DedicatedDatabase as i32,
            },
            &app.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.status, v1::MigrationStatus::Pending as i32);
    assert_eq!(
        second.from_level,
        v1::IsolationLevel::DedicatedSchema as i32
    );
    let done = finished(&app, &key, &second.id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["toLevel"], "dedicated_database");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (written, refused) = writer.stop().await;
    assert_eq!(refused, 0, "writes are never refused");
    let written = written as i64;
    assert!(written > 0);
    assert_eq!(isolation_level(&app, &tenant).await, "dedicated_database");

    // Every event in the tenant's database on the second cluster; the
    // main database keeps none of its data, and its schema is gone.
    let own = tenant_db_url(&cluster, &tenant);
    let count = |table: &str| format!("SELECT count(*) FROM {table} WHERE tenant_id = $1::uuid");
    assert_eq!(
        scalar_i64(&own, &count("usage_events"), &tenant).await,
        51 + written
    );
    assert_eq!(scalar_i64(&own, &count("records"), &tenant).await, 1);
    assert_eq!(scalar_i64(&own, &count("webhook_events"), &tenant).await, 1);
    let main = app.db.url.clone();
    let schema = format!("t_{}", tenant.replace('-', ""));
    until_count(
        "the schema left behind is dropped",
        &main,
        "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
        &schema,
        0,
    )
    .await;
    for table in ["usage_events", "usage_rollups", "records", "webhook_events"] {
        assert_eq!(
            scalar_i64(&main, &count(table), &tenant).await,
            0,
            "{table}"
        );
    }
    assert_eq!(scalar_i64(&main, &count("usage_events"), &other).await, 5);

    // The main database refuses the tenant's data under its scope
    // (TL001), instead of answering from the shared tables.
    let mut conn = sqlx::PgConnection::connect(&main).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT tenlyr_enter_scope($1::uuid)")
        .bind(&tenant)
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("SELECT count(*) FROM usage_events")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("TL001"),
        "{err}"
    );
    tx.rollback().await.unwrap();
    conn.close().await.unwrap();

    // Row security in the tenant's database: another tenant's scope sees
    // nothing there.
    let mut conn = sqlx::PgConnection::connect(&own).await.unwrap();
    sqlx::query("SET ROLE tenlyr_app")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT tenlyr_enter_scope($1::uuid)")
        .bind(&other)
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 0, "another tenant's scope sees nothing");
    tx.rollback().await.unwrap();
    conn.close().await.unwrap();

    // The API sees the same data: usage, keyed events, records.
    let (_, metrics) = call(&app, &key, Method::GET, "/api/v1/usage/metrics", None).await;
    assert_eq!(metrics["apiCalls"], (51 + written).to_string(), "{metrics}");
    let (status, again) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/usage/track",
        Some(json!({"metric": "api_call", "value": 1, "idempotencyKey": "before-moves"})),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], keyed["id"], "the key still finds its event");
    let (status, page) = call(
        &app,
        &key,
        Method::GET,
        "/api/v1/usage/events?limit=5",
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page.as_array().unwrap().len(), 5);
    let (status, summary) = call(&app, &key, Method::GET, "/api/v1/usage/summary", None).await;
    assert_eq!(status, 200, "{summary}");
    let (status, record) = call(&app, &key, Method::GET, "/v1/record/order-1", None).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["data"], json!({"n": "one"}));
    let (_, locked) = call(
        &app,
        &key,
        Method::POST,
        "/v1/record/lock",
        Some(json!({"key": "order-2"})),
    )
    .await;
    let (status, saved) = call(
        &app,
        &key,
        Method::POST,
        "/v1/record/save",
        Some(json!({"key": "order-2", "lockToken": locked["lockToken"], "data": {"n": "two"}})),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(scalar_i64(&own, &count("records"), &tenant).await, 2);

    // A webhook after the move: logged there, forwarded from here, its
    // status copied there, a copy deduplicated, a retry forwarded again.
    assert_eq!(
        post(&app, &path, &headers("wh-2"), body.clone()).await.0,
        200
    );
    receiver.wait_for(2).await;
    let (_, listed) = call(&app, &key, Method::GET, "/api/v1/webhooks/events", None).await;
    let listed = listed["data"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let newest = listed[0]["id"].as_str().unwrap().to_owned();
    let event = event_until(&app, &key, &newest, |e| e["status"] == "processed").await;
    assert_eq!(event["attempts"], 1, "{event}");
    assert_eq!(event["payload"]["type"], "order.shipped", "{event}");
    assert_eq!(
        post(&app, &path, &headers("wh-2"), body.clone()).await,
        (200, json!({"ok": true, "cached": true})),
        "dedup works in the tenant's database"
    );
    let (status, retried) = call(
        &app,
        &key,
        Method::POST,
        &format!("/api/v1/webhooks/events/{newest}/retry"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{retried}");
    receiver.wait_for(3).await;
    let event = event_until(&app, &key, &newest, |e| e["attempts"] == 2).await;
    assert_eq!(event["status"], "processed", "{event}");

    // The dashboard counts it from its database.
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
    assert_eq!(row["isolationLevel"], "dedicated_database");
    // The health scan reads its minute counts there.
    app.state.health.scan().await.unwrap();

    // A plan change reaches the mirrored tenant row; the new limit holds.
    let (status, changed) = admin_call(
        &app,
        Method::PATCH,
        &format!("/api/v1/tenants/{tenant}/plan"),
        Some(json!({"plan": "scale"})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    until_count(
        "the plan change reaches the tenant database",
        &own,
        "SELECT count(*) FROM tenants WHERE id = $1::uuid AND plan = 'scale'",
        &tenant,
        1,
    )
    .await;

    // The documented completion event.
    let mut conn = sqlx::PgConnection::connect(&main).await.unwrap();
    let completed: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM platform_events WHERE type = 'isolation.migration_completed' \
         ORDER BY created_at, id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let last: Value = serde_json::from_str(completed.last().unwrap()).unwrap();
    assert_eq!(
        last["data"],
        json!({"migrationId": second.id, "tenantId": tenant,
               "fromLevel": "dedicated_schema", "toLevel": "dedicated_database"})
    );

    // Terminating the tenant ("pending deletion") drops its database; the
    // tenant stays, with no data left anywhere, and the dashboard still
    // answers for it.
    let (status, terminated) = admin_call(
        &app,
        Method::POST,
        &format!("/api/v1/tenants/{tenant}/terminate"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{terminated}");
    let name = format!("tenlyr_t_{}", tenant.replace('-', ""));
    until_count(
        "the terminated tenant's database is dropped",
        &server,
        "SELECT count(*) FROM pg_database WHERE datname = $1",
        &name,
        0,
    )
    .await;
    until_count(
        "the terminated tenant's placement is gone",
        &main,
        "SELECT count(*) FROM tenant_placements WHERE tenant_id = $1::uuid",
        &tenant,
        0,
    )
    .await;
    let mut conn = sqlx::PgConnection::connect(&main).await.unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM usage_events WHERE tenant_id = $1::uuid) \
              + (SELECT count(*) FROM usage_rollups WHERE tenant_id = $1::uuid) \
              + (SELECT count(*) FROM records WHERE tenant_id = $1::uuid) \
              + (SELECT count(*) FROM webhook_events WHERE tenant_id = $1::uuid)",
    )
    .bind(&tenant)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    assert_eq!(left, 0, "nothing of it fell back into the shared tables");
    let (status, row) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/tenants/{tenant}"),
        None,
    )
    .await;
    assert_eq!((status, row["status"].as_str()), (200, Some("terminated")));
    let (status, dashboard) = admin_call(
        &app,
        Method::GET,
        "/api/v1/tenants/dashboard?limit=100",
        None,
    )
    .await;
    assert_eq!(status, 200, "{dashboard}");

    // Deleting it removes the rest.
    let (status, _) = admin_call(
        &app,
        Method::DELETE,
        &format!("/api/v1/tenants/{tenant}"),
        None,
    )
    .await;
    assert!(status == 200 || status == 204, "{status}");
    drop(app);
    cluster.stop().await;
}
