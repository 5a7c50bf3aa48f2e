//! Bad REST input gets a clear 4xx naming the field, never a 500.

use reqwest::Method;

use crate::helpers::{TestApp, assert_error_body, json};

async fn send(app: &TestApp, method: Method, path: &str, body: &str) -> (u16, serde_json::Value) {
    let request = app
        .admin(method, path)
        .header("content-type", "application/json")
        .body(body.to_owned());
    json(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        ("{\"name\": ", None),
        ("[1, 2]", Some("")),
        ("{\"name\": 42}", Some("name")),
        ("{\"plan\": \"gold\"}", Some("plan")),
        ("{\"ownerEmail\": [\"a@b.c\"]}", Some("ownerEmail")),
        ("{\"bogus\": true}", Some("bogus")),
    ];
    for (body, field) in cases {
        let (status, reply) = send(&app, Method::POST, "/api/v1/tenants", body).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_error_body(&reply, 400, "Bad Request");
        if let Some(field) = field.filter(|f| !f.is_empty()) {
            assert_eq!(reply["details"][0]["field"], field, "{reply}");
            assert!(
                reply["message"].as_str().unwrap().contains(field),
                "{reply}"
            );
        }
    }
    let (_, reply) = send(
        &app,
        Method::POST,
        "/api/v1/tenants",
        "{\"plan\": \"gold\"}",
    )
    .await;
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("starter, growth, scale, enterprise"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_contradicting_the_path_is_400() {
    let app = TestApp::spawn().await;
    let path = "/api/v1/tenants/51fad484-7f82-4c97-a3e1-b0c29d4f8201";
    let (status, reply) = send(
        &app,
        Method::PATCH,
        path,
        "{\"id\": \"another\", \"name\": \"x\"}",
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["details"][0]["field"], "id");
    // The same value in both places is fine (reaches the service, which
    // knows no such tenant).
    let (status, reply) = send(
        &app,
        Method::PATCH,
        path,
        "{\"id\": \"51fad484-7f82-4c97-a3e1-b0c29d4f8201\"}",
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(reply["message"], "Tenant not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameters_are_typed_and_known() {
    let app = TestApp::spawn().await;
    let (status, reply) = send(&app, Method::GET, "/api/v1/tenants?limit=ten", "").await;
    assert_eq!(status, 400);
    assert_eq!(reply["details"][0]["field"], "limit");
    let (status, reply) = send(&app, Method::GET, "/api/v1/tenants?colour=red", "").await;
    assert_eq!(status, 400);
    assert_eq!(reply["details"][0]["field"], "colour");
    let (status, _) = send(&app, Method::GET, "/api/v1/tenants?limit=10", "").await;
    assert_eq!(status, 200);
    let (status, reply) = send(&app, Method::GET, "/api/v1/tenants?cursor=abc", "").await;
    assert_eq!(status, 400);
    assert_eq!(reply["details"][0]["field"], "cursor");
    let (status, reply) = send(&app, Method::GET, "/api/v1/tenants/x/export?format=xml", "").await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("json, csv"),
        "{reply}"
    );
    let (status, _) = send(&app, Method::GET, "/api/v1/tenants?limit=1&limit=2", "").await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_unexpected_bodies() {
    let app = TestApp::spawn().await;
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(1100 * 1024));
    let (status, reply) = send(&app, Method::POST, "/api/v1/tenants", &big).await;
    assert_eq!(status, 413, "{reply}");
    assert_error_body(&reply, 413, "Payload Too Large");
    let (status, reply) = send(&app, Method::GET, "/api/v1/tenants", "{\"limit\": 3}").await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("takes no request body")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_body_routes_accept_any_bytes() {
    let app = TestApp::spawn().await;
    // Not JSON at all: the webhook route keeps the bytes for the signature
    // check, so transcoding must not reject it (the gateway answers: no
    // tenant has that slug).
    let request = app
        .http
        .post(app.url("/v1/t/acme/webhooks/generic"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=1&b=%ZZ");
    let (status, reply) = json(request.send().await.unwrap()).await;
    assert_eq!(status, 404, "{reply}");
    assert_eq!(reply["message"], "Tenant not found");
    let (status, reply) = json(
        app.http
            .post(app.url("/v1/t/acme/webhooks/fax"))
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    // A path segment that is no provider names no route.
    assert_eq!(status, 404, "{reply}");
    assert_eq!(reply["reason"], "ROUTE_NOT_FOUND");
}
