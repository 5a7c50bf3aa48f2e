//! TenantService over REST and gRPC: provisioning, lifecycle, keys,
//! isolation between tenants.

use reqwest::Method;
use serde_json::{Value, json};
use tenlyr::proto::v1::{
    GetTenantRequest, SuspendTenantRequest, tenant_service_client::TenantServiceClient,
};

use crate::helpers::{TestApp, assert_error_body, json, with_key};

async fn create(app: &TestApp, name: &str, email: &str) -> (Value, String) {
    let body = json!({"name": name, "ownerEmail": email, "plan": "growth"});
    let (status, reply) = json(
        app.admin(Method::POST, "/api/v1/tenants")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    (
        reply["tenant"].clone(),
        reply["apiKey"].as_str().unwrap().to_owned(),
    )
}

async fn as_tenant(app: &TestApp, key: &str, method: Method, path: &str) -> (u16, Value) {
    json(
        app.http
            .request(method, app.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_returns_the_documented_tenant_and_a_working_key() {
    let app = TestApp::spawn().await;
    let (tenant, key) = create(&app, "Café Zürich", "ops@cafe.test").await;
    assert_eq!(tenant["status"], "active");
    assert_eq!(tenant["plan"], "growth");
    assert_eq!(tenant["region"], "us-east-1");
    assert_eq!(tenant["timeZone"], "UTC");
    assert_eq!(tenant["isolationLevel"], "shared_schema");
    assert_eq!(tenant["slug"], "cafe-zurich");
    assert_eq!(tenant["lastActiveAt"], Value::Null);
    assert_eq!(tenant["apiKeyPrefix"], &key[..16]);
    assert!(tenant["createdAt"].as_str().unwrap().ends_with('Z'));
    let id = tenant["id"].as_str().unwrap();

    let (status, keys) = as_tenant(
        &app,
        &key,
        Method::GET,
        &format!("/api/v1/tenants/{id}/api-keys"),
    )
    .await;
    assert_eq!(status, 200, "{keys}");
    assert_eq!(keys["data"][0]["label"], "primary");
    assert!(keys["data"][0].get("apiKey").is_none());

    // The plaintext is nowhere in the database.
    let mut conn = app.db.connect().await;
    let dump: String = sqlx::query_scalar(
        "SELECT coalesce(string_agg(t::text, ''), '') FROM (SELECT * FROM tenants) t",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let keys_dump: String = sqlx::query_scalar("SELECT string_agg(k::text, '') FROM api_keys k")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let audit_dump: String = sqlx::query_scalar("SELECT string_agg(a::text, '') FROM audit_log a")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    for text in [&dump, &keys_dump, &audit_dump] {
        assert!(!text.contains(&key[16..]), "plaintext key stored");
    }
    assert!(audit_dump.contains("tenant.create"));

    // Duplicate owner (case-insensitive): 409.
    let body = json!({"name": "Other", "ownerEmail": "OPS@cafe.test"});
    let (status, reply) = json(
        app.admin(Method::POST, "/api/v1/tenants")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409);
    assert_error_body(&reply, 409, "Conflict");
    // Validation: 422 naming the fields, nothing half-provisioned.
    let body = json!({"name": "A", "ownerEmail": "ja\u{200b}ne@x.com", "timeZone": "Mars/Base"});
    let (status, reply) = json(
        app.admin(Method::POST, "/api/v1/tenants")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    let fields: Vec<&str> = reply["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "ownerEmail", "timeZone"]);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_changes_apply_to_keys_at_once() {
    let app = TestApp::spawn().await;
    let (tenant, key) = create(&app, "Acme", "ops@acme.test").await;
    let id = tenant["id"].as_str().unwrap().to_owned();
    let keys_path = format!("/api/v1/tenants/{id}/api-keys");
    assert_eq!(
        as_tenant(&app, &key, Method::GET, &keys_path).await.0,
        200,
        "key cached now"
    );

    let suspend = app
        .admin(Method::POST, &format!("/api/v1/tenants/{id}/suspend"))
        .json(&json!({"reason": "unpaid"}));
    let (status, body) = json(suspend.send().await.unwrap()).await;
    assert_eq!(
        (
            status,
            body["status"].as_str(),
            body["suspendedReason"].as_str()
        ),
        (200, Some("suspended"), Some("unpaid"))
    );
    let (status, body) = as_tenant(&app, &key, Method::GET, &keys_path).await;
    assert_eq!(
        status, 401,
        "suspended tenant: 401 at once, not after the TTL: {body}"
    );
    // Already suspended: 400 (gRPC FAILED_PRECONDITION).
    let err = TenantServiceClient::new(app.channel().await)
        .suspend_tenant(with_key(
            SuspendTenantRequest {
                id: id.clone(),
                reason: String::new(),
            },
            &app.admin_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    let (status, _) = json(
        app.admin(Method::POST, &format!("/api/v1/tenants/{id}/reactivate"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(as_tenant(&app, &key, Method::GET, &keys_path).await.0, 200);

    // Rotate: same shape as create; the old key stops at once.
    let (status, rotated) = json(
        app.admin(Method::POST, &format!("/api/v1/tenants/{id}/rotate-key"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let new_key = rotated["apiKey"].as_str().unwrap();
    assert_eq!(rotated["tenant"]["apiKeyPrefix"], &new_key[..16]);
    assert_eq!(as_tenant(&app, &key, Method::GET, &keys_path).await.0, 401);
    assert_eq!(
        as_tenant(&app, new_key, Method::GET, &keys_path).await.0,
        200
    );

    // Labeled keys: create (plaintext once), revoke, stops at once.
    let (status, labeled) = json(
        app.http
            .post(app.url(&keys_path))
            .bearer_auth(new_key)
            .json(&json!({"label": "staging"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{labeled}");
    let staging = labeled["apiKey"].as_str().unwrap();
    assert_eq!(
        as_tenant(&app, staging, Method::GET, &keys_path).await.0,
        200
    );
    let key_id = labeled["key"]["id"].as_str().unwrap();
    let (status, revoked) = as_tenant(
        &app,
        new_key,
        Method::DELETE,
        &format!("{keys_path}/{key_id}"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(revoked["revokedAt"].is_string());
    assert_eq!(
        as_tenant(&app, staging, Method::GET, &keys_path).await.0,
        401
    );

    // Plan change, terminate (irreversible), delete (every row goes).
    let (status, body) = json(
        app.admin(Method::PATCH, &format!("/api/v1/tenants/{id}/plan"))
            .json(&json!({"plan": "scale"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["plan"].as_str()), (200, Some("scale")));
    let (status, _) = json(
        app.admin(Method::POST, &format!("/api/v1/tenants/{id}/terminate"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = json(
        app.admin(Method::POST, &format!("/api/v1/tenants/{id}/reactivate"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = json(
        app.admin(Method::DELETE, &format!("/api/v1/tenants/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = json(
        app.admin(Method::GET, &format!("/api/v1/tenants/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"message": "Tenant not found", "error": "Not Found", "statusCode": 404, "reason": "NOT_FOUND"})
    );
    let mut conn = app.db.connect().await;
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM tenants) + (SELECT count(*) FROM api_keys) + (SELECT count(*) FROM tenant_settings)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows, 0);
    let err = TenantServiceClient::new(app.channel().await)
        .get_tenant(with_key(GetTenantRequest { id }, &app.admin_key))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::NotFound, "Tenant not found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_reach_each_other_and_rls_holds() {
    let app = TestApp::spawn().await;
    let (_, key_a) = create(&app, "Tenant A", "a@a.test").await;
    let (b, _) = create(&app, "Tenant B", "b@b.test").await;
    let b_id = b["id"].as_str().unwrap();
    let (status, body) = as_tenant(
        &app,
        &key_a,
        Method::GET,
        &format!("/api/v1/tenants/{b_id}/api-keys"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = as_tenant(
        &app,
        &key_a,
        Method::GET,
        &format!("/api/v1/tenants/{b_id}"),
    )
    .await;
    assert_eq!(status, 403, "tenant key on an admin method");

    // As the application role, without a tenant: no tenant-scoped rows.
    let mut conn = app.db.connect().await;
    sqlx::query("SET ROLE tenlyr_app")
        .execute(&mut conn)
        .await
        .unwrap();
    for table in ["tenants", "api_keys", "tenant_settings", "audit_log"] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(n, 0, "{table} visible without a tenant");
    }
    // With tenant B's scope: only B.
    sqlx::query("SELECT set_config('app.tenant_id', $1, false)")
        .bind(b_id)
        .execute(&mut conn)
        .await
        .unwrap();
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM tenants")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].to_string(), b_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_never_skips_or_repeats_while_tenants_are_created() {
    let app = TestApp::spawn().await;
    let mut before = Vec::new();
    for i in 0..12 {
        before.push(
            create(&app, &format!("Before {i}"), &format!("b{i}@x.test"))
                .await
                .0["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut extra = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/tenants?limit=5&cursor={c}"),
            None => "/api/v1/tenants?limit=5".to_owned(),
        };
        let (status, page) = json(app.admin(Method::GET, &path).send().await.unwrap()).await;
        assert_eq!(status, 200);
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned()),
        );
        // Concurrent creations between pages.
        if extra < 6 {
            create(
                &app,
                &format!("During {extra}"),
                &format!("d{extra}@x.test"),
            )
            .await;
            extra += 1;
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no tenant repeated");
    for id in &before {
        assert!(seen.contains(id), "{id} skipped");
    }
    let (status, body) = json(
        app.admin(Method::GET, "/api/v1/tenants/dashboard?limit=100")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let row = &body["data"][0];
    assert_eq!(
        (
            row["apiCalls"].as_str(),
            row["healthStatus"].as_str(),
            row["apiCallLimit"].as_str()
        ),
        (Some("0"), Some("unknown"), Some("100000"))
    );
    let (status, body) = json(
        app.admin(Method::GET, "/api/v1/tenants?limit=101")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_is_an_attachment_in_json_or_csv() {
    let app = TestApp::spawn().await;
    let (tenant, _) = create(&app, "Acme", "ops@acme.test").await;
    let id = tenant["id"].as_str().unwrap();
    let response = app
        .admin(
            Method::GET,
            &format!("/api/v1/tenants/{id}/export?format=csv"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/csv");
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"tenant-acme-export.csv\""
    );
    let text = response.text().await.unwrap();
    assert!(text.starts_with("section,field,value\n"));
    assert!(text.contains("usage,apiCallLimit,100000"));
    let response = app
        .admin(Method::GET, &format!("/api/v1/tenants/{id}/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tenant"]["id"], id);
    assert_eq!(body["health"]["healthStatus"], "unknown");
}

/// Two replicas sharing Postgres and Redis: a change made through one is
/// seen by the other at once, although both had the key cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_reaches_every_replica_at_once() {
    let (a, b) = TestApp::spawn_pair().await;
    let (tenant, key) = create(&a, "Shared", "ops@shared.test").await;
    let id = tenant["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/tenants/{id}/api-keys");
    // Warm both caches (and the shared Redis entry).
    assert_eq!(as_tenant(&a, &key, Method::GET, &path).await.0, 200);
    assert_eq!(as_tenant(&b, &key, Method::GET, &path).await.0, 200);

    let (status, labeled) = json(
        a.http
            .post(a.url(&path))
            .bearer_auth(&key)
            .json(&json!({"label": "integration-test"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let extra = labeled["apiKey"].as_str().unwrap().to_owned();
    let extra_id = labeled["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(as_tenant(&b, &extra, Method::GET, &path).await.0, 200);

    // Revoke through A: refused by B at once.
    let (status, _) = as_tenant(&a, &key, Method::DELETE, &format!("{path}/{extra_id}")).await;
    assert_eq!(status, 200);
    eventually(|| async { as_tenant(&b, &extra, Method::GET, &path).await.0 == 401 }).await;

    // Suspend through B: A refuses the primary key at once.
    let (status, _) = json(
        b.admin(Method::POST, &format!("/api/v1/tenants/{id}/suspend"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    eventually(|| async { as_tenant(&a, &key, Method::GET, &path).await.0 == 401 }).await;

    // Reactivate and rotate through A: B refuses the old key, takes the new.
    json(
        a.admin(Method::POST, &format!("/api/v1/tenants/{id}/reactivate"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    eventually(|| async { as_tenant(&b, &key, Method::GET, &path).await.0 == 200 }).await;
    let (_, rotated) = json(
        a.admin(Method::POST, &format!("/api/v1/tenants/{id}/rotate-key"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let new_key = rotated["apiKey"].as_str().unwrap().to_owned();
    eventually(|| async { as_tenant(&b, &key, Method::GET, &path).await.0 == 401 }).await;
    assert_eq!(as_tenant(&b, &new_key, Method::GET, &path).await.0, 200);
}

/// Pub/sub delivery takes a moment; "at once" here means well under the
/// 60 s cache TTL: within one second.
async fn eventually<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..20 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("not applied within 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_active_at_moves_without_a_write_per_request() {
    let app = TestApp::spawn().await;
    let (tenant, key) = create(&app, "Busy", "ops@busy.test").await;
    let id = tenant["id"].as_str().unwrap().to_owned();
    assert_eq!(
        as_tenant(
            &app,
            &key,
            Method::GET,
            &format!("/api/v1/tenants/{id}/api-keys")
        )
        .await
        .0,
        200
    );
    // Seen at once on this replica (merged from memory)…
    let (_, now) = json(
        app.admin(Method::GET, &format!("/api/v1/tenants/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(now["lastActiveAt"].is_string(), "{now}");
    // …and written in the background within the flush period.
    let mut conn = app.db.connect().await;
    let mut written = false;
    for _ in 0..40 {
        let at: Option<chrono::DateTime<chrono::Utc>> =
            sqlx::query_scalar("SELECT last_active_at FROM tenants")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if at.is_some() {
            written = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(written, "last_active_at flushed");
    let used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM api_keys")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(used.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenant_rpc_over_grpc() {
    use tenlyr::proto::v1::{self, Plan};
    let app = TestApp::spawn().await;
    let mut grpc = TenantServiceClient::new(app.channel().await);
    let k = &app.admin_key;
    let created = grpc
        .create_tenant(with_key(
            v1::CreateTenantRequest {
                name: "Grpc Co".into(),
                owner_email: "ops@grpc.test".into(),
                plan: Plan::Scale as i32,
                time_zone: "America/New_York".into(),
                slug: "grpc-co".into(),
                ..Default::default()
            },
            k,
        ))
        .await
        .unwrap()
        .into_inner();
    let tenant = created.tenant.unwrap();
    assert_eq!(
        (tenant.slug.as_str(), tenant.time_zone.as_str(), tenant.plan),
        ("grpc-co", "America/New_York", Plan::Scale as i32)
    );
    let id = tenant.id.clone();

    let dup = grpc
        .create_tenant(with_key(
            v1::CreateTenantRequest {
                name: "X".repeat(3),
                owner_email: "x@y.test".into(),
                slug: "grpc-co".into(),
                ..Default::default()
            },
            k,
        ))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);

    let updated = grpc
        .update_tenant(with_key(
            v1::UpdateTenantRequest {
                id: id.clone(),
                name: Some("Grpc Corp".into()),
                region: Some("eu-west-1".into()),
                ..Default::default()
            },
            k,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (updated.name.as_str(), updated.region.as_str()),
        ("Grpc Corp", "eu-west-1")
    );
    let bad = grpc
        .update_tenant(with_key(
            v1::UpdateTenantRequest {
                id: id.clone(),
                time_zone: Some("Nowhere/Land".into()),
                ..Default::default()
            },
            k,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let plan = grpc
        .change_tenant_plan(with_key(
            v1::ChangeTenantPlanRequest {
                id: id.clone(),
                plan: Plan::Enterprise as i32,
            },
            k,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.plan, Plan::Enterprise as i32);
    let dashboard = grpc
        .list_dashboard_tenants(with_key(v1::ListDashboardTenantsRequest::default(), k))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        dashboard.data[0].api_call_limit, None,
        "enterprise: custom, none set"
    );

    let labeled = grpc
        .create_api_key(with_key(
            v1::CreateApiKeyRequest {
                tenant_id: id.clone(),
                label: "production".into(),
            },
            k,
        ))
        .await
        .unwrap()
        .into_inner();
    let keys = grpc
        .list_api_keys(with_key(
            v1::ListApiKeysRequest {
                tenant_id: id.clone(),
            },
            k,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.data.len(), 2);
    let revoked = grpc
        .revoke_api_key(with_key(
            v1::RevokeApiKeyRequest {
                tenant_id: id.clone(),
                key_id: labeled.key.unwrap().id,
            },
            k,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked_at.is_some());

    let rotated = grpc
        .rotate_tenant_key(with_key(v1::RotateTenantKeyRequest { id: id.clone() }, k))
        .await
        .unwrap()
        .into_inner();
    assert!(rotated.api_key.starts_with("tenlyr_live_"));
    let mut export = grpc
        .export_tenant(with_key(
            v1::ExportTenantRequest {
                id: id.clone(),
                format: v1::ExportFormat::Json as i32,
            },
            k,
        ))
        .await
        .unwrap()
        .into_inner();
    let chunk = export.message().await.unwrap().unwrap().chunk.unwrap();
    assert_eq!(chunk.content_type, "application/json");

    let terminated = grpc
        .terminate_tenant(with_key(v1::TerminateTenantRequest { id: id.clone() }, k))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(terminated.status, v1::TenantStatus::Terminated as i32);
    grpc.delete_tenant(with_key(v1::DeleteTenantRequest { id: id.clone() }, k))
        .await
        .unwrap();
    let gone = grpc
        .get_tenant(with_key(
            GetTenantRequest {
                id: "not-a-uuid".into(),
            },
            k,
        ))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_tenant_s_data_is_purged_after_the_delay() {
    let app = TestApp::spawn_with(|c| c.terminated_purge_delay_secs = 3600).await;
    let (tenant, key) =
        crate::helpers::provision(&app, "purge@tenants.test", "growth", "UTC").await;
    let (status, _) = crate::helpers::call(
        &app,
        &key,
        Method::POST,
        "/api/v1/usage/track",
        Some(json!({"metric": "api_call", "value": 1})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = json(
        app.admin(Method::POST, &format!("/api/v1/tenants/{tenant}/terminate"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    // The purge is queued for an hour later; until then the data stays
    // (billing pushes the last usage from it).
    let mut conn = app.db.connect().await;
    let due: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM run_at - now())::float8 FROM jobs \
         WHERE kind = 'tenant.purge_usage' AND payload->>'tenantId' = $1",
    )
    .bind(&tenant)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        matches!(due[..], [s] if (3500.0..=3600.0).contains(&s)),
        "one purge, due in an hour: {due:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE tenant_id = $1::uuid")
            .bind(&tenant)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(events, 1, "the data stays until the purge is due");
    sqlx::Connection::close(conn).await.unwrap();
}

/// Enterprise's "custom" limits: an admin sets the tenant's own, they are
/// enforced at once and show in GetMetrics; cleared, the plan's apply
/// again (enterprise: none). Bad values are 422 naming the field; a tenant
/// key may not set them; a terminated tenant's are read-only; audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enterprise_tenant_s_own_limits_are_set_enforced_and_cleared() {
    use crate::helpers::{admin_call, call, provision};

    let app = TestApp::spawn().await;
    let (id, key) = provision(&app, "limits@enterprise.test", "enterprise", "UTC").await;
    let path = format!("/api/v1/tenants/{id}/limits");
    let (status, limits) = admin_call(&app, Method::GET, &path, None).await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(
        limits,
        json!({"tenantId": id, "plan": "enterprise", "ownApiCalls": null, "ownStorageGb": null,
               "ownSeats": null, "apiCallLimit": null, "storageGbLimit": null, "seatsLimit": null})
    );

    let (status, limits) = admin_call(
        &app,
        Method::PUT,
        &path,
        Some(json!({"apiCalls": 3, "seats": "10"})),
    )
    .await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(
        (
            &limits["ownApiCalls"],
            &limits["apiCallLimit"],
            &limits["seatsLimit"]
        ),
        (&json!("3"), &json!("3"), &json!("10"))
    );
    assert_eq!(limits["storageGbLimit"], Value::Null);
    let track = |n: usize| {
        let events: Vec<Value> = (0..n)
            .map(|_| json!({"metric": "api_call", "value": 1}))
            .collect();
        call(
            &app,
            &key,
            Method::POST,
            "/api/v1/usage/track/batch",
            Some(json!({"events": events})),
        )
    };
    let (status, reply) = track(3).await;
    assert_eq!(
        (status, reply["accepted"].as_i64()),
        (200, Some(3)),
        "{reply}"
    );
    let (status, reply) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/usage/track",
        Some(json!({"metric": "api_call", "value": 1})),
    )
    .await;
    assert_eq!(
        (status, reply["reason"].as_str()),
        (400, Some("PLAN_LIMIT_EXCEEDED")),
        "{reply}"
    );
    let (_, metrics) = call(&app, &key, Method::GET, "/api/v1/usage/metrics", None).await;
    assert_eq!(
        (&metrics["apiCalls"], &metrics["apiCallLimit"]),
        (&json!("3"), &json!("3"))
    );

    // Cleared: enterprise has no limit of its own plan.
    let (status, limits) = admin_call(&app, Method::PUT, &path, Some(json!({}))).await;
    assert_eq!(
        (status, &limits["apiCallLimit"]),
        (200, &Value::Null),
        "{limits}"
    );
    let (status, reply) = track(2).await;
    assert_eq!(
        (status, reply["accepted"].as_i64()),
        (200, Some(2)),
        "{reply}"
    );

    // Bad input, and who may.
    let (status, body) = admin_call(
        &app,
        Method::PUT,
        &path,
        Some(json!({"apiCalls": -1, "seats": 5})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_error_body(&body, 422, "Unprocessable Entity");
    assert_eq!(body["details"][0]["field"], "apiCalls", "{body}");
    let (status, _) = call(
        &app,
        &key,
        Method::PUT,
        &path,
        Some(json!({"apiCalls": 1000000})),
    )
    .await;
    assert_eq!(status, 403);

    // gRPC: the same, and a terminated tenant's limits stay as they are.
    let mut client = TenantServiceClient::new(app.channel().await);
    let set = tenlyr::proto::v1::SetTenantLimitsRequest {
        id: id.clone(),
        api_calls: Some(50),
        ..Default::default()
    };
    let reply = client
        .set_tenant_limits(with_key(set.clone(), &app.admin_key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.own_api_calls, reply.api_call_limit),
        (Some(50), Some(50))
    );
    let (status, _) = admin_call(
        &app,
        Method::POST,
        &format!("/api/v1/tenants/{id}/terminate"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200);
    let err = client
        .set_tenant_limits(with_key(set, &app.admin_key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    let (_, audit) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/audit-logs?tenantId={id}&action=tenant.set_limits"),
        None,
    )
    .await;
    let entries = audit["data"].as_array().expect("audit page");
    assert_eq!(entries.len(), 3, "{audit}");
}
