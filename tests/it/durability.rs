//! Nothing acknowledged is lost: a real `tenlyr serve` process under load is
//! killed with SIGKILL, restarted, and every acknowledged event is there,
//! counted once; every committed webhook delivery arrives.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use sqlx::{Connection, Row};

use crate::helpers::{Process, TestDb, create_admin_key, start_process};

/// The server the durability tests kill: webhooks may reach loopback.
async fn start(db: &TestDb, data_dir: &std::path::Path) -> Process {
    start_process(
        db,
        data_dir,
        &[
            ("TENLYR_WEBHOOK_ALLOWED_CIDRS", "127.0.0.0/8"),
            ("TENLYR_WEBHOOK_TIMEOUT_SECS", "5"),
            ("TENLYR_WEBHOOK_CONCURRENCY", "16"),
        ],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_and_count_once() {
    let db = TestDb::migrated().await;
    let admin = create_admin_key(&db.url, "kill-test").await;
    let data_dir = std::env::temp_dir().join(format!("tenlyr-kill-{}", uuid::Uuid::new_v4()));
    let mut server = start(&db, &data_dir).await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/api/v1/tenants", server.base))
        .bearer_auth(&admin)
        .json(&json!({"name": "Kill Test", "ownerEmail": "kill@test.test", "plan": "scale"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["apiKey"].as_str().unwrap().to_owned();
    let tenant = created["tenant"]["id"].as_str().unwrap().to_owned();

    // Eight clients send singles and batches of 20 until the server dies.
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..8 {
        let (http, key, base, acked) = (
            http.clone(),
            key.clone(),
            server.base.clone(),
            acked.clone(),
        );
        clients.push(tokio::spawn(async move {
            for n in 0..100_000 {
                let idem = |i: usize| format!("c{c}-n{n}-{i}");
                let result = if n % 2 == 0 {
                    http.post(format!("{base}/api/v1/usage/track"))
                        .bearer_auth(&key)
                        .json(&json!({"metric": "api_call", "value": 1, "idempotencyKey": idem(0)}))
                        .send()
                        .await
                } else {
                    let events: Vec<Value> = (0..20)
                        .map(|i| json!({"metric": "api_call", "value": 1, "idempotencyKey": idem(i)}))
                        .collect();
                    http.post(format!("{base}/api/v1/usage/track/batch"))
                        .bearer_auth(&key)
                        .json(&json!({"events": events}))
                        .send()
                        .await
                };
                let Ok(response) = result else { return };
                if response.status() != 200 {
                    return;
                }
                let Ok(body) = response.json::<Value>().await else { return };
                let mut acked = acked.lock().unwrap();
                if n % 2 == 0 {
                    acked.insert(idem(0), body["id"].as_str().unwrap().to_owned());
                } else {
                    for r in body["results"].as_array().unwrap() {
                        assert_eq!(r["outcome"], "accepted", "{r}");
                        let i = r["index"].as_u64().unwrap() as usize;
                        acked.insert(idem(i), r["eventId"].as_str().unwrap().to_owned());
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.start_kill().unwrap(); // SIGKILL
    server.child.wait().await.unwrap();
    for client in clients {
        client.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.len() > 100,
        "the load ran ({} acknowledged)",
        acked.len()
    );

    // Every acknowledged event is stored, once, and counted once.
    let mut conn = db.connect().await;
    let rows = sqlx::query(
        "SELECT id::text AS id, idempotency_key FROM usage_events WHERE tenant_id = $1::uuid",
    )
    .bind(&tenant)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let stored: HashMap<String, String> = rows
        .iter()
        .map(|r| {
            (
                r.get::<String, _>("idempotency_key"),
                r.get::<String, _>("id"),
            )
        })
        .collect();
    assert_eq!(stored.len(), rows.len(), "no key stored twice");
    for (idem, id) in &acked {
        assert_eq!(
            stored.get(idem),
            Some(id),
            "acknowledged event {idem} is stored"
        );
    }
    let counted: f64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(total), 0) FROM usage_rollups WHERE tenant_id = $1::uuid AND granularity = 'month'",
    )
    .bind(&tenant)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        counted as usize,
        rows.len(),
        "the counter matches the events"
    );

    // After a restart, resending the acknowledged events changes nothing.
    let mut server = start(&db, &data_dir).await;
    let sample: Vec<Value> = acked
        .keys()
        .take(500)
        .map(|k| json!({"metric": "api_call", "value": 1, "idempotencyKey": k}))
        .collect();
    let reply: Value = http
        .post(format!("{}/api/v1/usage/track/batch", server.base))
        .bearer_auth(&key)
        .json(&json!({"events": sample}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        reply["duplicates"].as_u64(),
        Some(acked.len().min(500) as u64),
        "{reply}"
    );
    let metrics: Value = http
        .get(format!("{}/api/v1/usage/metrics", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Counted again: a commit the dead server had sent may have landed
    // after the first count (Postgres finishes a statement whose client
    // is gone).
    let mut conn = db.connect().await;
    let stored_now: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE tenant_id = $1::uuid")
            .bind(&tenant)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    assert!(stored_now as usize >= rows.len());
    assert_eq!(metrics["apiCalls"], stored_now.to_string());
    server.child.start_kill().unwrap();
    let _ = server.child.wait().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_deliveries_survive_sigkill_mid_backlog() {
    use crate::webhooks::{Receiver, Reply};
    let db = TestDb::migrated().await;
    let admin = create_admin_key(&db.url, "kill-test").await;
    let data_dir = std::env::temp_dir().join(format!("tenlyr-kill-{}", uuid::Uuid::new_v4()));
    let mut server = start(&db, &data_dir).await;
    let http = reqwest::Client::new();
    // 1 s per request, so that deliveries are in flight when it dies.
    let receiver = Receiver::start(Reply::Slow(1000)).await;
    let created: Value = http
        .post(format!("{}/api/v1/webhook-endpoints", server.base))
        .bearer_auth(&admin)
        .json(&json!({"url": receiver.url("/kill")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["endpoint"]["id"].as_str().unwrap().to_owned();
    let mut events = std::collections::HashSet::new();
    for _ in 0..400 {
        let reply: Value = http
            .post(format!(
                "{}/api/v1/webhook-endpoints/{id}/test",
                server.base
            ))
            .bearer_auth(&admin)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        events.insert(reply["eventId"].as_str().unwrap().to_owned());
    }
    receiver.wait_for(50).await;
    server.child.start_kill().unwrap(); // SIGKILL, requests in flight
    server.child.wait().await.unwrap();
    let before = receiver.received().len();
    assert!(before < 400, "the backlog was delivered before the kill");

    // Restarted: the rest arrive, and what was in flight is sent again
    // when its lease (2 × timeout + 5 s) lapses: at least once.
    receiver.set_default(Reply::Ok);
    let mut server = start(&db, &data_dir).await;
    let mut arrived = std::collections::HashSet::new();
    for _ in 0..1000 {
        arrived = receiver
            .received()
            .iter()
            .map(|r| r.json()["id"].as_str().unwrap().to_owned())
            .collect();
        if arrived.len() == events.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(arrived, events, "every committed event arrived");
    server.child.start_kill().unwrap();
    let _ = server.child.wait().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}
