//! Every route of DESIGN.md §2 exists: it answers with its documented status
//! or 501 while not built, never 404.

use reqwest::Method;

use crate::helpers::{TestApp, assert_error_body, json};

const ID: &str = "51fad484-7f82-4c97-a3e1-b0c29d4f8201";

/// (method, path, body, key kind) for every row of the route table.
fn documented_routes() -> Vec<(Method, String, &'static str)> {
    let t = format!("/api/v1/tenants/{ID}");
    let routes: Vec<(Method, String, &'static str)> = vec![
        (Method::POST, "/api/v1/tenants".into(), "admin"),
        (
            Method::GET,
            "/api/v1/tenants?limit=10&cursor=abc".into(),
            "admin",
        ),
        (
            Method::GET,
            "/api/v1/tenants/dashboard?limit=10".into(),
            "admin",
        ),
        (Method::GET, t.clone(), "admin"),
        (Method::PATCH, t.clone(), "admin"),
        (Method::POST, format!("{t}/suspend"), "admin"),
        (Method::POST, format!("{t}/reactivate"), "admin"),
        (Method::POST, format!("{t}/terminate"), "admin"),
        (Method::POST, format!("{t}/rotate-key"), "admin"),
        (Method::PATCH, format!("{t}/plan"), "admin"),
        (Method::DELETE, t.clone(), "admin"),
        (Method::GET, format!("{t}/export?format=csv"), "admin"),
        (Method::POST, format!("{t}/api-keys"), "either"),
        (Method::GET, format!("{t}/api-keys"), "either"),
        (Method::DELETE, format!("{t}/api-keys/{ID}"), "either"),
        (Method::POST, "/api/v1/usage/track".into(), "tenant"),
        (Method::POST, "/api/v1/usage/track/batch".into(), "tenant"),
        (Method::GET, "/api/v1/usage/metrics".into(), "tenant"),
        (Method::GET, "/api/v1/usage/summary".into(), "tenant"),
        (Method::GET, "/api/v1/usage/events?limit=5".into(), "tenant"),
        (Method::POST, "/api/v1/isolation/migrate".into(), "either"),
        (
            Method::GET,
            format!("/api/v1/isolation/migrations/{ID}"),
            "either",
        ),
        (Method::GET, "/api/v1/isolation/migrations".into(), "either"),
        (Method::GET, "/api/v1/health/overview".into(), "admin"),
        (Method::GET, "/api/v1/health".into(), "admin"),
        (Method::GET, format!("/api/v1/health/{ID}"), "admin"),
        (
            Method::POST,
            format!("/api/v1/health/{ID}/throttle"),
            "admin",
        ),
        (
            Method::DELETE,
            format!("/api/v1/health/{ID}/throttle"),
            "admin",
        ),
        (Method::GET, "/api/v1/alerts".into(), "either"),
        (Method::GET, "/api/v1/alerts/unresolved".into(), "either"),
        (Method::POST, "/api/v1/alerts".into(), "either"),
        (
            Method::POST,
            format!("/api/v1/alerts/{ID}/resolve"),
            "either",
        ),
        (Method::POST, "/api/v1/alerts/resolve-all".into(), "either"),
        (Method::GET, "/api/v1/billing".into(), "tenant"),
        (Method::POST, "/api/v1/billing/portal".into(), "tenant"),
        (Method::POST, "/v1/webhooks/stripe".into(), "tenant"),
        (
            Method::POST,
            "/v1/t/acme-payments/webhooks/generic".into(),
            "none",
        ),
        (Method::GET, "/api/v1/webhooks/settings".into(), "tenant"),
        (Method::PUT, "/api/v1/webhooks/settings".into(), "tenant"),
        (Method::GET, "/api/v1/webhooks/events".into(), "tenant"),
        (
            Method::GET,
            format!("/api/v1/webhooks/events/{ID}"),
            "tenant",
        ),
        (
            Method::POST,
            format!("/api/v1/webhooks/events/{ID}/retry"),
            "tenant",
        ),
        (Method::POST, "/api/v1/webhook-endpoints".into(), "admin"),
        (Method::GET, "/api/v1/webhook-endpoints".into(), "admin"),
        (
            Method::DELETE,
            format!("/api/v1/webhook-endpoints/{ID}"),
            "admin",
        ),
        (
            Method::GET,
            format!("/api/v1/webhook-endpoints/{ID}/deliveries"),
            "admin",
        ),
        (Method::POST, "/v1/record/lock".into(), "tenant"),
        (Method::POST, "/v1/record/save".into(), "tenant"),
        (Method::GET, "/v1/record/order-123".into(), "tenant"),
    ];
    routes
}

#[tokio::test]
async fn every_documented_route_exists() {
    let app = TestApp::spawn().await;
    for (method, path, key) in documented_routes() {
        let has_body = matches!(method, Method::POST | Method::PUT | Method::PATCH);
        let mut request = app.admin(method.clone(), &path);
        if has_body {
            request = request
                .header("content-type", "application/json")
                .body("{}");
        }
        let (status, body) = json(request.send().await.unwrap()).await;
        // With the admin key: admin routes and public ones are not built
        // yet (501); tenant-only routes refuse the admin key (403).
        let expected = match key {
            "tenant" => 403,
            _ => 501,
        };
        assert_eq!(status, expected, "{method} {path}: {body}");
        let error = if expected == 403 {
            "Forbidden"
        } else {
            "Not Implemented"
        };
        assert_error_body(&body, expected, error);

        // Without a key: 401, except the public slug route.
        let mut anonymous = app.http.request(method.clone(), app.url(&path));
        if has_body {
            anonymous = anonymous.body("{}");
        }
        let (status, body) = json(anonymous.send().await.unwrap()).await;
        let expected = if key == "none" { 501 } else { 401 };
        assert_eq!(status, expected, "anonymous {method} {path}: {body}");
    }
}

#[tokio::test]
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
