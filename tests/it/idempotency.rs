//! The `Idempotency-Key` header: a retried create runs once, over REST and
//! gRPC, across replicas; a key reused for another request is refused.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tenlyr::proto::v1::{self, tenant_service_client::TenantServiceClient};
use tokio::time::Instant;

use crate::helpers::{TestApp, json, with_key};

async fn create(app: &TestApp, key: &str, body: &Value) -> (u16, Value, bool) {
    let response = app
        .admin(Method::POST, "/api/v1/tenants")
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let (status, body) = json(response).await;
    (status, body, replayed)
}

/// Retries until the first request finished (409 while it runs).
async fn retry(app: &TestApp, key: &str, body: &Value) -> (u16, Value, bool) {
    let began = Instant::now();
    loop {
        let (status, reply, replayed) = create(app, key, body).await;
        if status != 409 || reply["reason"] != "IDEMPOTENCY_KEY_IN_USE" {
            return (status, reply, replayed);
        }
        assert!(began.elapsed() < Duration::from_secs(10), "still in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_retried_after_a_dropped_connection_runs_once() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "Acme", "ownerEmail": "ops@idem.test", "plan": "growth"});
    // The request reaches the server and runs; the connection drops before
    // its answer is read (the answer is lost on the way back).
    let mut conn = app.db.connect().await;
    {
        use tokio::io::AsyncWriteExt;
        let text = body.to_string();
        let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let request = format!(
            "POST /api/v1/tenants HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Idempotency-Key: create-acme-1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{text}",
            app.addr,
            app.admin_key,
            text.len()
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        tcp.flush().await.unwrap();
        let began = Instant::now();
        loop {
            let done: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE state = 'done')",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            if done {
                break;
            }
            assert!(began.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Dropped here, unread.
    }
    let (status, first, replayed) = retry(&app, "create-acme-1", &body).await;
    assert_eq!(status, 200, "{first}");
    assert!(replayed, "the retry got the stored response");
    let (status, again, replayed) = retry(&app, "create-acme-1", &body).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(again, first, "the same tenant and the same key both times");
    assert!(
        first["apiKey"]
            .as_str()
            .unwrap()
            .starts_with("tenlyr_live_")
    );

    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(tenants, 1);
    let stored_plain: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE position(convert_to($1, 'UTF8') in response_body) > 0)",
    )
    .bind(first["apiKey"].as_str().unwrap())
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(!stored_plain, "the stored response is encrypted");

    // Without the header, nothing is remembered: a second create conflicts.
    let (status, _) = json(
        app.admin(Method::POST, "/api/v1/tenants")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409);
}

/// Makes every store of a response (the key row's `UPDATE`) take 300 ms,
/// through a trigger on this test's database.
async fn slow_the_stores(conn: &mut sqlx::PgConnection) {
    sqlx::raw_sql(
        "CREATE FUNCTION slow_store() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$; \
         CREATE TRIGGER slow_store BEFORE UPDATE ON idempotency_keys \
             FOR EACH ROW EXECUTE FUNCTION slow_store();",
    )
    .execute(conn)
    .await
    .unwrap();
}

/// The answer goes out while it is stored; a retry in that moment, on
/// either replica, waits for the store and is replayed, not refused. (The
/// store is slowed to 300 ms here, so the retry lands inside it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_answer_is_being_stored_waits_and_is_replayed() {
    let (app, other) = TestApp::spawn_pair().await;
    let mut conn = app.db.connect().await;
    slow_the_stores(&mut conn).await;
    let stored = |key: &'static str| {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE idempotency_key = $1 AND state = 'done')",
        )
        .bind(key)
    };
    let body = json!({"name": "Prompt", "ownerEmail": "ops@prompt.test"});
    let began = Instant::now();
    let (status, first, replayed) = create(&app, "prompt", &body).await;
    assert_eq!((status, replayed), (200, false), "{first}");
    assert!(
        began.elapsed() < Duration::from_millis(300),
        "the answer did not wait for its store"
    );
    assert!(!stored("prompt").fetch_one(&mut conn).await.unwrap());
    let (status, again, replayed) = create(&app, "prompt", &body).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again, first);
    assert!(stored("prompt").fetch_one(&mut conn).await.unwrap());

    // Another replica in that moment waits for the store the same way.
    let body = json!({"name": "Elsewhere", "ownerEmail": "ops@elsewhere.test"});
    let (status, first, _) = create(&app, "elsewhere", &body).await;
    assert_eq!(status, 200, "{first}");
    assert!(!stored("elsewhere").fetch_one(&mut conn).await.unwrap());
    let (status, again, replayed) = create(&other, "elsewhere", &body).await;
    assert_eq!((status, replayed), (200, true), "{again}");
    assert_eq!(again, first);
    let tenants: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(tenants, 2);
}

/// A graceful shutdown right after an answer still stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_for_the_answers_being_stored() {
    let mut app = TestApp::spawn().await;
    let mut conn = app.db.connect().await;
    slow_the_stores(&mut conn).await;
    let body = json!({"name": "Last", "ownerEmail": "ops@last.test"});
    let (status, _, _) = create(&app, "last", &body).await;
    assert_eq!(status, 200);
    app.begin_shutdown();
    app.stopped().await.unwrap();
    let state: String =
        sqlx::query_scalar("SELECT state FROM idempotency_keys WHERE idempotency_key = 'last'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(state, "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_request_or_still_running_is_refused() {
    let app = TestApp::spawn().await;
    let body = json!({"name": "Beta", "ownerEmail": "ops@beta.test"});
    let (status, _, replayed) = create(&app, "k-1", &body).await;
    assert_eq!((status, replayed), (200, false));
    let other = json!({"name": "Gamma", "ownerEmail": "ops@gamma.test"});
    let (status, reply, _) = create(&app, "k-1", &other).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["details"][0]["field"], "Idempotency-Key");
    // Another method with the same key is another request too.
    let (status, _) = json(
        app.admin(Method::POST, "/api/v1/admin-keys")
            .header("Idempotency-Key", "k-1")
            .json(&json!({"label": "ops"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422);
    // A request still running under a key: 409 with Retry-After.
    let mut conn = app.db.connect().await;
    sqlx::query(
        "INSERT INTO idempotency_keys (key_id, idempotency_key, method, request_hash, state, started_at, expires_at) \
         SELECT id, 'running', '/tenlyr.v1.TenantService/CreateTenant', '\\x00', 'in_flight', now(), now() + interval '1 day' \
         FROM admin_keys",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let response = app
        .admin(Method::POST, "/api/v1/tenants")
        .header("Idempotency-Key", "running")
        .json(&json!({"name": "Delta", "ownerEmail": "ops@delta.test"}))
        .send()
        .await
        .unwrap();
    // Another request message than the running one: 422 first.
    assert_eq!(response.status(), 422);
    sqlx::query("UPDATE idempotency_keys SET request_hash = $1 WHERE idempotency_key = 'running'")
        .bind(
            ring::digest::digest(
                &ring::digest::SHA256,
                &encoded_create("Delta", "ops@delta.test"),
            )
            .as_ref()
            .to_vec(),
        )
        .execute(&mut conn)
        .await
        .unwrap();
    let response = app
        .admin(Method::POST, "/api/v1/tenants")
        .header("Idempotency-Key", "running")
        .json(&json!({"name": "Delta", "ownerEmail": "ops@delta.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["retry-after"], "1");
    // Bad keys are refused before anything runs.
    let (status, reply, _) = create(&app, &"k".repeat(256), &body).await;
    assert_eq!(status, 422, "{reply}");
}

/// The gRPC request message REST builds for CreateTenant with these two
/// fields (what the stored digest covers).
fn encoded_create(name: &str, email: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&v1::CreateTenantRequest {
        name: name.into(),
        owner_email: email.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_cross_replicas_and_protocols() {
    let (a, b) = TestApp::spawn_pair().await;
    let body = json!({"name": "Replicated", "ownerEmail": "ops@replicas.test"});
    let (status, first, _) = create(&a, "across", &body).await;
    assert_eq!(status, 200);
    // The answer goes out while replica a stores it: b may see the key
    // still running for that moment (409, Retry-After), then the replay.
    let (status, second, replayed) = retry(&b, "across", &body).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(second, first);

    // gRPC: the same through metadata.
    let mut client = TenantServiceClient::new(a.channel().await);
    let request = || {
        let mut r = with_key(
            v1::CreateTenantRequest {
                name: "Over gRPC".into(),
                owner_email: "ops@grpc-idem.test".into(),
                ..Default::default()
            },
            &a.admin_key,
        );
        r.metadata_mut()
            .insert("idempotency-key", "grpc-1".parse().unwrap());
        r
    };
    let first = client.create_tenant(request()).await.unwrap();
    assert!(first.metadata().get("idempotent-replayed").is_none());
    let second = client.create_tenant(request()).await.unwrap();
    assert_eq!(
        second.metadata().get("idempotent-replayed").unwrap(),
        "true"
    );
    assert_eq!(second.into_inner(), first.into_inner());
}
