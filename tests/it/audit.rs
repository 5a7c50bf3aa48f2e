//! The audit log API: what the onboarding guide says is visible (key
//! creation, settings changes, retries), filters, the cursor, and scope:
//! an admin key sees everything, a tenant key its own tenant's only.

use reqwest::Method;
use serde_json::{Value, json};
use tenlyr::proto::v1;

use crate::helpers::*;

async fn audit(app: &TestApp, key: &str, query: &str) -> (u16, Value) {
    call(
        app,
        key,
        Method::GET,
        &format!("/api/v1/audit-logs{query}"),
        None,
    )
    .await
}

fn actions(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_shows_key_creation_and_settings_changes_to_whom_it_may() {
    let app = TestApp::spawn().await;
    let (tenant, key) = provision(&app, "audit-a@audit.test", "growth", "UTC").await;
    let (other, other_key) = provision(&app, "audit-b@audit.test", "growth", "UTC").await;
    let (status, created) = call(
        &app,
        &key,
        Method::POST,
        &format!("/api/v1/tenants/{tenant}/api-keys"),
        Some(json!({"label": "ci"})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let (status, _) = call(
        &app,
        &key,
        Method::PUT,
        "/api/v1/webhooks/settings",
        Some(json!({"providers": [{"provider": "stripe", "enabled": true, "secret": "whsec_audit_secret"}]})),
    )
    .await;
    assert_eq!(status, 200);

    // The tenant sees its own entries, newest first, with who and what.
    let (status, mine) = audit(&app, &key, "").await;
    assert_eq!(status, 200, "{mine}");
    let seen = actions(&mine);
    assert!(seen.contains(&"key.create".to_owned()), "{seen:?}");
    assert_eq!(seen[0], "webhook_settings.update", "newest first: {seen:?}");
    let entry = &mine["data"][0];
    assert_eq!(entry["tenantId"], tenant.as_str());
    assert_eq!(entry["actorKind"], "tenant");
    assert!(entry["actorKeyId"].is_string());
    assert!(entry["occurredAt"].is_string());
    assert!(
        !entry.to_string().contains("whsec_audit_secret"),
        "secrets never in the log"
    );
    assert!(
        mine["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenantId"] == tenant.as_str()),
        "only its own tenant's entries"
    );
    // Naming another tenant is refused; the other tenant sees none of these.
    let (status, _) = audit(&app, &key, &format!("?tenantId={other}")).await;
    assert_eq!(status, 403);
    let (_, theirs) = audit(&app, &other_key, "").await;
    assert!(!actions(&theirs).contains(&"webhook_settings.update".to_owned()));

    // Admin: everything, or one tenant's; filters by action family and actor.
    let (_, all) = audit(&app, &app.admin_key, "?limit=200").await;
    let tenants: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["tenantId"].as_str())
        .collect();
    assert!(tenants.contains(&tenant.as_str()) && tenants.contains(&other.as_str()));
    let (_, family) = audit(
        &app,
        &app.admin_key,
        &format!("?tenantId={tenant}&action=webhook_settings.*"),
    )
    .await;
    assert_eq!(actions(&family), ["webhook_settings.update"]);
    let (_, by_admin) = audit(&app, &app.admin_key, "?actorKind=admin").await;
    assert!(
        by_admin["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actorKind"] == "admin")
    );
    let (_, none) = audit(&app, &app.admin_key, "?from=2999-01-01T00:00:00Z").await;
    assert_eq!(none["data"], json!([]));
    assert_eq!(none["nextCursor"], Value::Null);

    // Bad input: the documented 400 naming the field.
    for (query, field) in [
        ("?limit=201", "limit"),
        ("?actorKind=robot", "actorKind"),
        ("?action=webhook*", "action"),
        ("?cursor=nonsense", "cursor"),
        ("?tenantId=not-a-uuid", "tenantId"),
    ] {
        let (status, body) = audit(&app, &app.admin_key, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["details"][0]["field"], field, "{query}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_pages_with_its_cursor_over_rest_and_grpc() {
    let app = TestApp::spawn().await;
    let (tenant, key) = provision(&app, "audit-pages@audit.test", "growth", "UTC").await;
    for i in 0..5 {
        let (status, _) = call(
            &app,
            &key,
            Method::POST,
            &format!("/api/v1/tenants/{tenant}/api-keys"),
            Some(json!({"label": format!("key {i}")})),
        )
        .await;
        assert_eq!(status, 200);
    }
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = audit(
            &app,
            &key,
            &format!("?action=key.create&limit=2&cursor={cursor}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        for e in page["data"].as_array().unwrap() {
            ids.push(e["id"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    // Five labeled keys and the primary key made at provisioning.
    assert_eq!(ids.len(), 6);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 6, "each entry once");

    let mut client = v1::audit_service_client::AuditServiceClient::new(app.channel().await);
    let page = client
        .list_audit_logs(with_key(
            v1::ListAuditLogsRequest {
                action: "key.create".into(),
                limit: 10,
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.data.len(), 6);
    assert_eq!(page.data[0].id, ids[0]);
    assert!(page.next_cursor.is_none());
}
