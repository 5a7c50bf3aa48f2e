//! Every route of DESIGN.md §2 exists: it answers with its documented
//! status, never a 404 for the route itself.

use reqwest::Method;

use crate::helpers::{TestApp, assert_error_body, json};

const ID: &str = "51fad484-7f82-4c97-a3e1-b0c29d4f8201";

/// (method, path, key kind, status with the admin key and a `{}` body) for
/// every row of the route table. Built routes answer their documented
/// status (404 "Tenant not found" for an unknown id, 422 for an empty
/// body); tenant-only routes refuse the admin key with 403.
fn documented_routes() -> Vec<(Method, String, &'static str, u16)> {
    let t = format!("/api/v1/tenants/{ID}");
    vec![
        (Method::POST, "/api/v1/tenants".into(), "admin", 422),
        (Method::GET, "/api/v1/tenants?limit=10".into(), "admin", 200),
        (
            Method::GET,
            "/api/v1/tenants/dashboard?limit=10".into(),
            "admin",
            200,
        ),
        (Method::GET, t.clone(), "admin", 404),
        (Method::PATCH, t.clone(), "admin", 404),
        (Method::POST, format!("{t}/suspend"), "admin", 404),
        (Method::POST, format!("{t}/reactivate"), "admin", 404),
        (Method::POST, format!("{t}/terminate"), "admin", 404),
        (Method::POST, format!("{t}/rotate-key"), "admin", 404),
        (Method::PATCH, format!("{t}/plan"), "admin", 422),
        (Method::DELETE, t.clone(), "admin", 404),
        (Method::GET, format!("{t}/export?format=csv"), "admin", 404),
        (Method::POST, format!("{t}/api-keys"), "either", 422),
        (Method::GET, format!("{t}/api-keys"), "either", 404),
        (Method::DELETE, format!("{t}/api-keys/{ID}"), "either", 404),
        (Method::POST, "/api/v1/usage/track".into(), "tenant", 403),
        (
            Method::POST,
            "/api/v1/usage/track/batch".into(),
            "tenant",
            403,
        ),
        (
            Method::GET,
            format!("/api/v1/usage/metrics?tenantId={ID}"),
            "either",
            404,
        ),
        (Method::GET, "/api/v1/usage/summary".into(), "tenant", 403),
        (
            Method::GET,
            "/api/v1/usage/events?limit=5".into(),
            "tenant",
            403,
        ),
        (
            Method::POST,
            "/api/v1/isolation/migrate".into(),
            "either",
            422,
        ),
        (
            Method::GET,
            format!("/api/v1/isolation/migrations/{ID}"),
            "either",
            404,
        ),
        (
            Method::GET,
            "/api/v1/isolation/migrations".into(),
            "either",
            200,
        ),
        (Method::GET, "/api/v1/health/overview".into(), "admin", 200),
        (Method::GET, "/api/v1/health".into(), "admin", 200),
        (Method::GET, format!("/api/v1/health/{ID}"), "admin", 404),
        (
            Method::POST,
            format!("/api/v1/health/{ID}/throttle"),
            "admin",
            422,
        ),
        (
            Method::DELETE,
            format!("/api/v1/health/{ID}/throttle"),
            "admin",
            404,
        ),
        (Method::GET, "/api/v1/alerts".into(), "either", 200),
        (
            Method::GET,
            "/api/v1/alerts/unresolved".into(),
            "either",
            200,
        ),
        (Method::POST, "/api/v1/alerts".into(), "either", 422),
        (
            Method::POST,
            format!("/api/v1/alerts/{ID}/resolve"),
            "either",
            404,
        ),
        (
            Method::POST,
            "/api/v1/alerts/resolve-all".into(),
            "either",
            200,
        ),
        (Method::GET, "/api/v1/billing".into(), "tenant", 403),
        (Method::POST, "/api/v1/billing/portal".into(), "tenant", 403),
        (Method::POST, "/v1/webhooks/stripe".into(), "tenant", 403),
        (
            Method::POST,
            "/v1/t/acme-payments/webhooks/generic".into(),
            "none",
            404, // no tenant has that slug here
        ),
        (
            Method::GET,
            "/api/v1/webhooks/settings".into(),
            "tenant",
            403,
        ),
        (
            Method::PUT,
            "/api/v1/webhooks/settings".into(),
            "tenant",
            403,
        ),
        (Method::GET, "/api/v1/webhooks/events".into(), "tenant", 403),
        (
            Method::GET,
            format!("/api/v1/webhooks/events/{ID}"),
            "tenant",
            403,
        ),
        (
            Method::POST,
            format!("/api/v1/webhooks/events/{ID}/retry"),
            "tenant",
            403,
        ),
        (
            Method::POST,
            "/api/v1/webhook-endpoints".into(),
            "admin",
            422,
        ),
        (
            Method::GET,
            "/api/v1/webhook-endpoints".into(),
            "admin",
            200,
        ),
        (
            Method::DELETE,
            format!("/api/v1/webhook-endpoints/{ID}"),
            "admin",
            404,
        ),
        (
            Method::GET,
            format!("/api/v1/webhook-endpoints/{ID}/deliveries"),
            "admin",
            404,
        ),
        (Method::POST, "/v1/record/lock".into(), "tenant", 403),
        (Method::POST, "/v1/record/save".into(), "tenant", 403),
        (Method::GET, "/v1/record/order-123".into(), "tenant", 403),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_exists() {
    let app = TestApp::spawn().await;
    for (method, path, key, expected) in documented_routes() {
        let has_body = matches!(method, Method::POST | Method::PUT | Method::PATCH);
        let mut request = app.admin(method.clone(), &path);
        if has_body {
            request = request
                .header("content-type", "application/json")
                .body("{}");
        }
        let (status, body) = json(request.send().await.unwrap()).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert_ne!(body["reason"], "ROUTE_NOT_FOUND", "{method} {path}");
        if status == 404 {
            assert_error_body(&body, 404, "Not Found");
            assert!(
                body["message"].as_str().unwrap().ends_with("not found"),
                "{body}"
            );
        } else if status >= 400 {
            assert_eq!(body["statusCode"], status, "{body}");
        }

        // Without a key: 401, except the public slug route.
        let mut anonymous = app.http.request(method.clone(), app.url(&path));
        if has_body {
            anonymous = anonymous.body("{}");
        }
        let (status, body) = json(anonymous.send().await.unwrap()).await;
        // (The slug route's tenant does not exist here: 404.)
        let expected = if key == "none" { 404 } else { 401 };
        assert_eq!(status, expected, "anonymous {method} {path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_get_the_documented_404_body() {
    let app = TestApp::spawn().await;
    for path in [
        "/api/v1/nope",
        "/",
        "/api/v1/tenants/a/b/c",
        "/tenlyr.v1.TenantService",
    ] {
        let (status, body) = json(app.admin(Method::GET, path).send().await.unwrap()).await;
        assert_eq!(status, 404, "{path}");
        assert_error_body(&body, 404, "Not Found");
        assert_eq!(body["reason"], "ROUTE_NOT_FOUND");
    }
    let (status, body) = json(
        app.admin(Method::PUT, "/api/v1/tenants")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert_error_body(&body, 405, "Method Not Allowed");
    assert!(
        body["message"].as_str().unwrap().contains("GET, POST"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_and_covers_every_route() {
    let app = TestApp::spawn().await;
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let doc: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        doc,
        tenlyr::transport::openapi_document().unwrap(),
        "served = `tenlyr openapi`"
    );
    assert_eq!(doc["openapi"], "3.1.0");
    // Every documented route is an operation with the documented shape.
    for (method, path, key, _) in documented_routes() {
        let concrete = path.split('?').next().unwrap();
        let verb = method.as_str().to_ascii_lowercase();
        // The operation whose template matches the path, literals first.
        let mut candidates: Vec<(&String, &serde_json::Value)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(p, ops)| {
                let a: Vec<&str> = p.split('/').collect();
                let b: Vec<&str> = concrete.split('/').collect();
                ops.get(&verb).is_some()
                    && a.len() == b.len()
                    && a.iter()
                        .zip(&b)
                        .all(|(x, y)| x == y || (x.starts_with('{') && !y.is_empty()))
            })
            .collect();
        candidates.sort_by_key(|(p, _)| p.matches('{').count());
        let found = candidates.first().and_then(|(_, ops)| ops.get(&verb));
        let op = found.unwrap_or_else(|| panic!("{method} {path} missing from /openapi.json"));
        let security = op["security"].to_string();
        match key {
            "tenant" => assert!(
                security.contains("tenantKey"),
                "{method} {path}: {security}"
            ),
            "none" => assert_eq!(op["security"], serde_json::json!([]), "{method} {path}"),
            _ => {}
        }
        assert!(
            op["responses"]["default"].is_object(),
            "{method} {path}: error body"
        );
    }
    // The reference validator accepts it.
    let validator = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/peers/.venv/bin/openapi-spec-validator"
    );
    assert!(
        std::path::Path::new(validator).exists(),
        "run scripts/test.sh once (it installs tests/peers/requirements.txt into tests/peers/.venv)"
    );
    let file = std::env::temp_dir().join(format!(
        "tenlyr-openapi-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&file, doc.to_string()).unwrap();
    let out = std::process::Command::new(validator)
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
