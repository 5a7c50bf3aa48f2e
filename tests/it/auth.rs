//! Keys are checked in one place for all protocols: 401 for missing,
//! malformed, unknown or revoked keys; 403 for the wrong kind of key.

use reqwest::Method;
use tenlyr::{
    domain::keys::{KeyKind, NewKey},
    proto::v1::{
        GetSummaryRequest, ListTenantsRequest, metering_service_client::MeteringServiceClient,
        tenant_service_client::TenantServiceClient,
    },
};
use tonic_types::StatusExt;

use crate::helpers::{TestApp, assert_error_body, json, with_key};

async fn rest_status(app: &TestApp, key: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = app.http.request(Method::GET, app.url("/api/v1/tenants"));
    if let Some(key) = key {
        request = request.header("authorization", key);
    }
    json(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_get_401_on_rest_and_grpc() {
    let app = TestApp::spawn().await;
    let unknown = NewKey::generate(KeyKind::Admin).plaintext;
    let mut typo = app.admin_key.clone();
    typo.replace_range(20..21, if &typo[20..21] == "a" { "b" } else { "a" });
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing API key"),
        (Some("Basic abc".into()), "malformed Authorization"),
        (Some("Bearer nope".into()), "invalid API key"),
        (Some(format!("Bearer {typo}")), "checksum"),
        (Some(format!("Bearer {unknown}")), "unknown or revoked"),
        (
            Some(format!(
                "Bearer {}",
                NewKey::generate(KeyKind::Tenant).plaintext
            )),
            "unknown or revoked",
        ),
    ];
    let mut grpc = TenantServiceClient::new(app.channel().await);
    for (header, needle) in cases {
        let (status, body) = rest_status(&app, header.as_deref()).await;
        assert_eq!(status, 401, "{header:?}: {body}");
        assert_error_body(&body, 401, "Unauthorized");
        assert!(body["message"].as_str().unwrap().contains(needle), "{body}");

        let mut request = tonic::Request::new(ListTenantsRequest::default());
        if let Some(h) = &header {
            request
                .metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        let status = grpc.list_tenants(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            status.message(),
            body["message"].as_str().unwrap(),
            "same message on both protocols"
        );
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "UNAUTHENTICATED"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_admin_keys_stop_working() {
    let app = TestApp::spawn().await;
    let (status, _) = rest_status(&app, Some(&format!("Bearer {}", app.admin_key))).await;
    assert_eq!(status, 200, "valid key reaches the method");
    // Revoked in the database (not through the API, so no invalidation):
    // a key nobody has used yet is refused at once.
    let second = crate::helpers::create_admin_key(&app.db.url, "second").await;
    let mut conn = app.db.connect().await;
    sqlx::query("UPDATE admin_keys SET revoked_at = now() WHERE label = 'second'")
        .execute(&mut conn)
        .await
        .unwrap();
    let (status, body) = rest_status(&app, Some(&format!("Bearer {second}"))).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_key_on_tenant_method_is_403() {
    let app = TestApp::spawn().await;
    let (status, body) = json(
        app.admin(Method::GET, "/api/v1/usage/summary")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_error_body(&body, 403, "Forbidden");
    let mut grpc = MeteringServiceClient::new(app.channel().await);
    let status = grpc
        .get_summary(with_key(GetSummaryRequest::default(), &app.admin_key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), body["message"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_are_listable_and_revocable_at_once() {
    let app = TestApp::spawn().await;
    let (status, created) = json(
        app.admin(Method::POST, "/api/v1/admin-keys")
            .json(&serde_json::json!({"label": "ops-laptop"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let second = created["apiKey"].as_str().unwrap().to_owned();
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        rest_status(&app, Some(&format!("Bearer {second}"))).await.0,
        200,
        "new key works (and is cached)"
    );

    let (status, list) = json(
        app.admin(Method::GET, "/api/v1/admin-keys")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let labels: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["test", "ops-laptop"]);
    assert!(!list.to_string().contains(&second[16..]), "never the key");
    assert_eq!(list["data"][1]["revokedAt"], serde_json::Value::Null);

    let (status, revoked) = json(
        app.admin(Method::DELETE, &format!("/api/v1/admin-keys/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(revoked["revokedAt"].is_string());
    assert_eq!(
        rest_status(&app, Some(&format!("Bearer {second}"))).await.0,
        401,
        "revoked at once despite the cache"
    );
    let (status, _) = json(
        app.admin(Method::DELETE, &format!("/api/v1/admin-keys/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "already revoked");

    let mut conn = app.db.connect().await;
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_log ORDER BY occurred_at")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(actions, ["admin_key.create", "admin_key.revoke"]);
}

/// Fail closed, handler by handler: every RPC of the contract, called on
/// the service router *without* the auth layer (as if a route had been
/// wired around it), refuses to run rather than treating the caller as
/// anonymous or as the platform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_handler_refuses_a_request_the_auth_layer_did_not_pass() {
    use tower::ServiceExt as _;

    let db = crate::helpers::TestDb::migrated().await;
    let config = crate::helpers::serve_config(&db.url);
    let server = tenlyr::app::Server::bind(&config, &db.url).await.unwrap();
    let router = tenlyr::transport::grpc::routes(server.state())
        .prepare()
        .into_axum_router();
    let mut checked = 0;
    for service in tenlyr::proto::pool()
        .services()
        .filter(|s| s.package_name() == tenlyr::proto::PACKAGE)
    {
        for method in service.methods() {
            let path = format!("/{}/{}", service.full_name(), method.name());
            let request = http::Request::post(&path)
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                // One empty message: every field at its default.
                .body(axum::body::Body::from(vec![0u8, 0, 0, 0, 0]))
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let status = response
                .headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_owned());
            let expected = if method.name() == "ReceiveStripeWebhook" {
                // Public: the signature is the credential; without a
                // configured secret it refuses (FAILED_PRECONDITION).
                "9"
            } else if matches!(
                method.name(),
                "ReceiveWebhookBySlug" | "VerifyBraintreeChallenge"
            ) {
                // Public: an empty slug names no tenant.
                "5"
            } else if matches!(method.name(), "AcceptInvite" | "ResetPassword") {
                // Public: the token is the credential; an empty password
                // is refused first (INVALID_ARGUMENT).
                "3"
            } else {
                // Login too: no user has an empty email.
                "16" // UNAUTHENTICATED
            };
            assert_eq!(status.as_deref(), Some(expected), "{path}");
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked} methods");
}
