//! Outbound webhooks: endpoints over REST and gRPC, platform events from
//! the outbox, signatures checked by the docs' snippet and the official
//! Standard Webhooks library, and delivery against real HTTP receivers on
//! loopback (failing, gone, redirecting, hanging, rate limiting), with an
//! injectable clock for the 72-hour schedule and the breaker.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{extract::Request, http::StatusCode, response::IntoResponse};
use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};
use tenlyr::{proto::v1, workers::ManualClock};
use tokio::sync::Notify;

use crate::helpers::*;

/// How a receiver answers one request.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Ok,
    Status(u16),
    /// 302 to another path of the same receiver.
    Redirect,
    /// Answers nothing for a minute.
    Hang,
    /// 429 with `Retry-After: <secs>`.
    RetryAfter(u64),
    /// 200 after this many milliseconds.
    Slow(u64),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    /// How many requests were in flight at this receiver, this one included.
    concurrent: usize,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Default)]
struct ReceiverState {
    log: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    in_flight: AtomicUsize,
    notify: Notify,
}

/// A real HTTP server on loopback that records what it receives.
#[derive(Clone)]
pub struct Receiver {
    addr: std::net::SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start(default: Reply) -> Self {
        let state = Arc::new(ReceiverState::default());
        *state.default.lock().unwrap() = Some(default);
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |request: Request| {
            let state = shared.clone();
            async move { answer(state, request).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next requests get these replies, then the default again.
    pub fn then(&self, replies: &[Reply]) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn set_default(&self, reply: Reply) {
        *self.state.default.lock().unwrap() = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (10 s at most).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.state.notify.notified();
            let log = self.received();
            if log.len() >= n {
                return log;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{} of {n} requests arrived", self.received().len());
            }
        }
    }
}

async fn answer(state: Arc<ReceiverState>, request: Request) -> axum::response::Response {
    let concurrent = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or(*state.default.lock().unwrap())
        .unwrap();
    state.log.lock().unwrap().push(Received {
        path: parts.uri.path().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        concurrent,
    });
    state.notify.notify_waiters();
    let response = match reply {
        Reply::Ok => (StatusCode::OK, "thanks").into_response(),
        Reply::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            format!("status {code} from the receiver"),
        )
            .into_response(),
        Reply::Redirect => {
            (StatusCode::FOUND, [("location", "/elsewhere")], "moved").into_response()
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK.into_response()
        }
        Reply::Slow(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (StatusCode::OK, "thanks").into_response()
        }
        Reply::RetryAfter(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
            "slow down",
        )
            .into_response(),
    };
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

/// Registers an endpoint over REST: its id and secret.
async fn endpoint(app: &TestApp, body: Value) -> (String, String) {
    let (status, reply) = call(
        app,
        &app.admin_key,
        Method::POST,
        "/api/v1/webhook-endpoints",
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    (
        reply["endpoint"]["id"].as_str().unwrap().to_owned(),
        reply["secret"].as_str().unwrap().to_owned(),
    )
}

async fn send_test(app: &TestApp, id: &str) -> String {
    let (status, reply) = admin_call(
        app,
        Method::POST,
        &format!("/api/v1/webhook-endpoints/{id}/test"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    reply["eventId"].as_str().unwrap().to_owned()
}

async fn deliveries(app: &TestApp, id: &str) -> Vec<Value> {
    let (status, reply) = admin_call(
        app,
        Method::GET,
        &format!("/api/v1/webhook-endpoints/{id}/deliveries?limit=100"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    reply["data"].as_array().unwrap().clone()
}

async fn delivery(app: &TestApp, id: &str, delivery_id: &str) -> Value {
    let (status, reply) = admin_call(
        app,
        Method::GET,
        &format!("/api/v1/webhook-endpoints/{id}/deliveries/{delivery_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    reply
}

/// Polls the endpoint's deliveries (the newest 100) until `done` holds
/// (10 s at most).
async fn await_deliveries(app: &TestApp, id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    for _ in 0..500 {
        let list = deliveries(app, id).await;
        if done(&list) {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "deliveries never reached the state: {:?}",
        deliveries(app, id).await
    );
}

/// Polls the endpoint's single delivery until `done` holds (10 s at most).
async fn await_delivery(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let list = await_deliveries(app, id, |list| list.first().is_some_and(&done)).await;
    delivery(app, id, list[0]["id"].as_str().unwrap()).await
}

/// Moves the shared clock and wakes the dispatchers.
fn advance(app: &TestApp, clock: &ManualClock, by: chrono::Duration) {
    clock.advance(by);
    app.state.webhook_endpoints.wake_dispatchers();
}

/// Runs the docs' snippet and the `standardwebhooks` library over one
/// received request, once per secret.
fn verify(received: &Received, secrets: &[&str]) -> Value {
    use std::io::Write as _;
    let peers = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");
    assert!(
        std::path::Path::new(peers)
            .join("node_modules/standardwebhooks")
            .exists(),
        "run `npm ci --prefix tests/peers` first (scripts/test.sh does)"
    );
    let mut child = std::process::Command::new("node")
        .arg(format!("{peers}/verify.cjs"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs");
    let input = json!({"secrets": secrets, "headers": received.headers, "body": received.body});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_managed_over_rest_and_grpc_and_refuse_bad_input() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(Reply::Ok).await;
    let (status, created) = admin_call(
        &app,
        Method::POST,
        "/api/v1/webhook-endpoints",
        Some(json!({"url": receiver.url("/hooks"), "eventTypes": ["tenant.*"], "description": "ops"})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let secret = created["secret"].as_str().unwrap();
    assert!(
        secret.starts_with("whsec_") && secret.len() == 50,
        "{secret}"
    );
    let ep = &created["endpoint"];
    let id = ep["id"].as_str().unwrap();
    assert_eq!(ep["url"], receiver.url("/hooks"));
    assert_eq!(ep["eventTypes"], json!(["tenant.*"]));
    assert_eq!(ep["enabled"], true);
    assert_eq!(ep["ordered"], false);
    assert_eq!(ep["breakerState"], "closed");
    assert_eq!(ep["disabledReason"], Value::Null);
    assert!(ep.get("secret").is_none());

    // The secret is never shown again.
    let (status, got) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/webhook-endpoints/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(!got.to_string().contains(secret));
    let (_, list) = admin_call(&app, Method::GET, "/api/v1/webhook-endpoints", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(secret));

    // PATCH changes what is present only.
    let (status, patched) = admin_call(
        &app,
        Method::PATCH,
        &format!("/api/v1/webhook-endpoints/{id}"),
        Some(json!({"eventTypes": ["health.critical", "tenant.deleted"], "ordered": true})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["eventTypes"],
        json!(["health.critical", "tenant.deleted"])
    );
    assert_eq!(patched["ordered"], true);
    assert_eq!(patched["description"], "ops");
    let (_, disabled) = admin_call(
        &app,
        Method::PATCH,
        &format!("/api/v1/webhook-endpoints/{id}"),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(disabled["enabled"], false);
    assert_eq!(disabled["disabledReason"], "disabled");

    // gRPC sees the same.
    let mut grpc =
        v1::webhook_endpoint_service_client::WebhookEndpointServiceClient::new(app.channel().await);
    let got = grpc
        .get_webhook_endpoint(with_key(
            v1::GetWebhookEndpointRequest { id: id.into() },
            &app.admin_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.event_types, ["health.critical", "tenant.deleted"]);
    assert!(!got.enabled);
    let err = grpc
        .create_webhook_endpoint(with_key(
            v1::CreateWebhookEndpointRequest {
                url: "ftp://example.com/".into(),
                ..Default::default()
            },
            &app.admin_key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Bad input: 422 naming the field.
    let long = "d".repeat(501);
    for (body, field, says) in [
        (
            json!({"url": "ftp://example.com/x"}),
            "url",
            "http or https",
        ),
        (json!({"url": "not a url"}), "url", "not a URL"),
        (
            json!({"url": "https://user:pw@example.com/"}),
            "url",
            "credentials",
        ),
        (
            json!({"url": receiver.url("/x"), "eventTypes": ["tenant.created"]}),
            "eventTypes[0]",
            "unknown event type",
        ),
        (
            json!({"url": receiver.url("/x"), "description": long}),
            "description",
            "at most 500",
        ),
        (json!({}), "url", "required"),
    ] {
        let (status, reply) = admin_call(
            &app,
            Method::POST,
            "/api/v1/webhook-endpoints",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 422, "{body}: {reply}");
        assert_error_body(&reply, 422, "Unprocessable Entity");
        let violation = reply["details"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["field"] == field)
            .unwrap_or_else(|| panic!("{field} not named: {reply}"));
        assert!(
            violation["description"].as_str().unwrap().contains(says),
            "{reply}"
        );
    }

    // A tenant key may not manage endpoints.
    let (_, tenant_key) = provision(&app, "owner@endpoints.test", "growth", "UTC").await;
    let (status, _) = call(
        &app,
        &tenant_key,
        Method::GET,
        "/api/v1/webhook-endpoints",
        None,
    )
    .await;
    assert_eq!(status, 403);

    // Delete, then it is gone.
    let (status, _) = admin_call(
        &app,
        Method::DELETE,
        &format!("/api/v1/webhook-endpoints/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, reply) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/webhook-endpoints/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_error_body(&reply, 404, "Not Found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssrf_guard_refuses_internal_urls_at_registration_and_at_connection() {
    let app = TestApp::spawn_with(|c| c.webhook_allowed_cidrs.clear()).await;
    let receiver = Receiver::start(Reply::Ok).await;
    for (url, says) in [
        (receiver.url("/x"), "loopback"),
        ("http://localhost:9/x".to_owned(), "loopback"),
        (
            "http://169.254.169.254/latest/meta-data".to_owned(),
            "metadata",
        ),
        ("http://10.0.0.1/".to_owned(), "private"),
        ("http://[::ffff:127.0.0.1]/".to_owned(), "IPv4-mapped"),
        ("http://100.64.1.1/".to_owned(), "carrier-grade NAT"),
    ] {
        let (status, reply) = admin_call(
            &app,
            Method::POST,
            "/api/v1/webhook-endpoints",
            Some(json!({"url": url})),
        )
        .await;
        assert_eq!(status, 422, "{url}: {reply}");
        let description = reply["details"][0]["description"].as_str().unwrap();
        assert!(description.contains(says), "{url}: {description}");
    }

    // At connection time too: the client resolves, checks and connects to
    // what it checked, so a name that resolves inward is refused.
    let outbound = tenlyr::service::outbound::Outbound::new(
        tenlyr::service::outbound::Guard::default(),
        Duration::from_secs(2),
    )
    .unwrap();
    for url in [
        receiver.url("/x"),
        format!("http://localhost:{}/x", receiver.addr.port()),
    ] {
        let answer = outbound
            .post(
                &url,
                http::HeaderMap::new(),
                bytes::Bytes::from_static(b"{}"),
            )
            .await;
        assert_eq!(answer.status, None, "{url}");
        let error = answer.error.unwrap();
        assert!(
            error.contains("SSRF guard") && error.contains("loopback"),
            "{url}: {error}"
        );
    }
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_events_arrive_signed_for_both_verifiers_and_filtered() {
    let app = TestApp::spawn().await;
    let all = Receiver::start(Reply::Ok).await;
    let health_only = Receiver::start(Reply::Ok).await;
    let (all_id, secret) = endpoint(
        &app,
        json!({"url": all.url("/all"), "eventTypes": ["tenant.*"]}),
    )
    .await;
    endpoint(
        &app,
        json!({"url": health_only.url("/health"), "eventTypes": ["health.critical"]}),
    )
    .await;

    let (tenant, _) = provision(&app, "acme@events.test", "growth", "UTC").await;
    let base = format!("/api/v1/tenants/{tenant}");
    for (method, path, body) in [
        (
            Method::POST,
            format!("{base}/suspend"),
            Some(json!({"reason": "unpaid"})),
        ),
        (Method::POST, format!("{base}/reactivate"), Some(json!({}))),
        (
            Method::PATCH,
            format!("{base}/plan"),
            Some(json!({"plan": "enterprise"})),
        ),
        (
            Method::PUT,
            format!("{base}/limits"),
            Some(json!({"apiCalls": 7})),
        ),
        // The same limits again: nothing changed, no event.
        (
            Method::PUT,
            format!("{base}/limits"),
            Some(json!({"apiCalls": 7})),
        ),
        (Method::POST, format!("{base}/rotate-key"), Some(json!({}))),
        (Method::POST, format!("{base}/terminate"), Some(json!({}))),
        (Method::DELETE, base.clone(), None),
    ] {
        let (status, reply) = admin_call(&app, method, &path, body).await;
        assert_eq!(status, 200, "{path}: {reply}");
    }
    let got = all.wait_for(8).await;
    // The second, unchanged PUT of the limits sent nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(all.received().len(), 8);
    let mut types: Vec<String> = got
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect();
    // Deliveries run concurrently; each event is one of the eight.
    types.sort();
    let mut expected = vec![
        "tenant.provisioned",
        "tenant.suspended",
        "tenant.reactivated",
        "tenant.plan_changed",
        "tenant.limits_changed",
        "tenant.key_rotated",
        "tenant.terminated",
        "tenant.deleted",
    ];
    expected.sort();
    assert_eq!(types, expected);

    let provisioned = got
        .iter()
        .find(|r| r.json()["type"] == "tenant.provisioned")
        .unwrap();
    let envelope = provisioned.json();
    let keys: Vec<&str> = envelope
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["id", "type", "createdAt", "data"],
        "the documented envelope, in order"
    );
    assert!(envelope["id"].as_str().unwrap().starts_with("evt_"));
    let created = envelope["createdAt"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 24, "{created}");
    assert_eq!(
        envelope["data"],
        json!({"tenantId": tenant, "name": "acme@events.test", "plan": "growth", "region": "us-east-1"})
    );
    let suspended = got
        .iter()
        .find(|r| r.json()["type"] == "tenant.suspended")
        .unwrap()
        .json();
    assert_eq!(suspended["data"]["reason"], "unpaid");
    let changed = got
        .iter()
        .find(|r| r.json()["type"] == "tenant.plan_changed")
        .unwrap()
        .json();
    assert_eq!(changed["data"]["fromPlan"], "growth");
    assert_eq!(changed["data"]["toPlan"], "enterprise");
    let limits = got
        .iter()
        .find(|r| r.json()["type"] == "tenant.limits_changed")
        .unwrap()
        .json();
    assert_eq!(
        limits["data"],
        json!({"tenantId": tenant,
               "from": {"apiCalls": null, "storageGb": null, "seats": null},
               "to": {"apiCalls": 7, "storageGb": null, "seats": null}})
    );

    // Headers: both schemes, the webhook id is the event id.
    assert_eq!(provisioned.headers["content-type"], "application/json");
    assert_eq!(
        provisioned.headers["webhook-id"],
        envelope["id"].as_str().unwrap()
    );
    assert!(provisioned.headers["tenlyr-signature"].starts_with("t="));
    assert!(provisioned.headers["webhook-signature"].starts_with("v1,"));
    for received in &got {
        let verdict = verify(received, &[&secret]);
        assert_eq!(
            verdict,
            json!({"snippet": [true], "standard": [true]}),
            "{}",
            received.body
        );
    }
    // Another secret fails both.
    let verdict = verify(provisioned, &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
    assert_eq!(verdict, json!({"snippet": [false], "standard": [false]}));

    // The filter kept health-only out of it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(health_only.received().is_empty());
    let list = deliveries(&app, &all_id).await;
    assert_eq!(list.len(), 8);
    assert!(list.iter().all(|d| d["status"] == "delivered"), "{list:?}");
    // Newest first, with the attempt.
    let d = delivery(&app, &all_id, list[0]["id"].as_str().unwrap()).await;
    assert_eq!(d["delivery"]["eventType"], "tenant.deleted");
    assert_eq!(d["attempts"][0]["responseStatus"], 200);
    assert_eq!(d["attempts"][0]["responseExcerpt"], "thanks");
    assert_eq!(d["attempts"][0]["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_beside_the_new_one_for_its_grace_period() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(Reply::Ok).await;
    let (id, old) = endpoint(&app, json!({"url": receiver.url("/r")})).await;
    let (status, rotated) = admin_call(
        &app,
        Method::POST,
        &format!("/api/v1/webhook-endpoints/{id}/rotate-secret"),
        Some(json!({"graceSeconds": 3600})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap();
    assert_ne!(new, old);
    assert!(rotated["endpoint"]["previousSecretExpiresAt"].is_string());
    send_test(&app, &id).await;
    let got = receiver.wait_for(1).await;
    assert_eq!(got[0].headers["tenlyr-signature"].matches("v1=").count(), 2);
    assert_eq!(
        got[0].headers["webhook-signature"].matches("v1,").count(),
        2
    );
    let verdict = verify(&got[0], &[&old, new]);
    // The snippet keeps the last v1 (the new secret's); the library tries
    // every signature.
    assert_eq!(
        verdict,
        json!({"snippet": [false, true], "standard": [true, true]})
    );

    // No grace: the old secret stops at once.
    let (_, rotated) = admin_call(
        &app,
        Method::POST,
        &format!("/api/v1/webhook-endpoints/{id}/rotate-secret"),
        Some(json!({"graceSeconds": 0})),
    )
    .await;
    let newest = rotated["secret"].as_str().unwrap();
    send_test(&app, &id).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].headers["tenlyr-signature"].matches("v1=").count(), 1);
    let verdict = verify(&got[1], &[new, newest]);
    assert_eq!(
        verdict,
        json!({"snippet": [false, true], "standard": [false, true]})
    );

    let (status, reply) = admin_call(
        &app,
        Method::POST,
        &format!("/api/v1/webhook-endpoints/{id}/rotate-secret"),
        Some(json!({"graceSeconds": 9_999_999})),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_follow_the_72_hour_schedule_then_fail_and_recover() {
    let clock = ManualClock::new(Utc::now());
    let app = TestApp::spawn_with_clock(clock.clone()).await;
    let receiver = Receiver::start(Reply::Status(500)).await;
    let (id, _) = endpoint(&app, json!({"url": receiver.url("/fails")})).await;
    send_test(&app, &id).await;
    receiver.wait_for(1).await;
    let started = clock.now_utc();
    // Each retry waits its step (±20 %); moving the clock past the longest
    // jittered step makes exactly the next attempt due.
    let steps = [
        5u64, 300, 1800, 7200, 18_000, 36_000, 50_400, 72_000, 72_000,
    ];
    for (i, step) in steps.iter().enumerate() {
        let pending = await_delivery(&app, &id, |d| d["attempts"] == i as u64 + 1).await;
        let next: chrono::DateTime<Utc> = pending["delivery"]["nextAttemptAt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let wait = (next - clock.now_utc()).num_milliseconds() as f64 / 1000.0;
        let last = i == steps.len() - 1;
        assert!(
            (wait >= *step as f64 * 0.8 - 0.01 || last) && wait <= *step as f64 * 1.2 + 0.01,
            "attempt {} waits {wait} s, step {step} s",
            i + 1
        );
        // The last step is cut so that no attempt is later than 72 h.
        assert!(next <= started + chrono::Duration::hours(72));
        clock.set(next);
        app.state.webhook_endpoints.wake_dispatchers();
        receiver.wait_for(i + 2).await;
    }
    let failed = await_delivery(&app, &id, |d| d["status"] == "failed").await;
    assert_eq!(failed["delivery"]["attempts"], 10);
    assert_eq!(failed["delivery"]["nextAttemptAt"], Value::Null);
    assert!(clock.now_utc() - started <= chrono::Duration::hours(72));
    let attempts = failed["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 10);
    assert!(
        attempts
            .iter()
            .all(|a| a["responseStatus"] == 500 && a["ok"] == false)
    );
    assert_eq!(
        attempts[0]["responseExcerpt"],
        "status 500 from the receiver"
    );

    // Recover: the failed delivery is queued again with a fresh schedule.
    receiver.set_default(Reply::Ok);
    let since = (clock.now_utc() - chrono::Duration::hours(1)).to_rfc3339();
    let (status, reply) = admin_call(
        &app,
        Method::POST,
        &format!("/api/v1/webhook-endpoints/{id}/recover"),
        Some(json!({"since": since})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["recovered"], 1);
    let delivered = await_delivery(&app, &id, |d| d["status"] == "delivered").await;
    assert_eq!(delivered["delivery"]["attempts"], 11);
    assert_eq!(delivered["attempts"][10]["ok"], true);

    // Recovery reaches back 14 days at most.
    let (status, reply) = admin_call(
        &app,
        Method::POST,
        &format!("/api/v1/webhook-endpoints/{id}/recover"),
        Some(json!({"since": (clock.now_utc() - chrono::Duration::days(15)).to_rfc3339()})),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["details"][0]["field"], "since");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_redirect_timeout_and_retry_after_are_handled_as_documented() {
    let clock = ManualClock::new(Utc::now());
    let app = TestApp::spawn_with_clock(clock.clone()).await;

    // 410: the endpoint is disabled and its delivery fails.
    let gone = Receiver::start(Reply::Status(410)).await;
    let (gone_id, _) = endpoint(&app, json!({"url": gone.url("/gone")})).await;
    send_test(&app, &gone_id).await;
    let failed = await_delivery(&app, &gone_id, |d| d["status"] == "failed").await;
    assert_eq!(failed["attempts"][0]["responseStatus"], 410);
    let (_, ep) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/webhook-endpoints/{gone_id}"),
        None,
    )
    .await;
    assert_eq!(ep["enabled"], false);
    assert_eq!(ep["disabledReason"], "gone");

    // 3xx: a failure, the redirect is not followed.
    let redirect = Receiver::start(Reply::Redirect).await;
    let (redirect_id, _) = endpoint(&app, json!({"url": redirect.url("/moved")})).await;
    send_test(&app, &redirect_id).await;
    let pending = await_delivery(&app, &redirect_id, |d| d["attempts"] == 1).await;
    assert_eq!(pending["delivery"]["status"], "pending");
    assert_eq!(pending["attempts"][0]["responseStatus"], 302);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        redirect.received().iter().all(|r| r.path == "/moved"),
        "not followed"
    );

    // A hang: the attempt times out (2 s in tests) and is retried.
    let hang = Receiver::start(Reply::Hang).await;
    let (hang_id, _) = endpoint(&app, json!({"url": hang.url("/hang")})).await;
    send_test(&app, &hang_id).await;
    let timed_out = await_delivery(&app, &hang_id, |d| d["attempts"] == 1).await;
    assert_eq!(timed_out["attempts"][0]["responseStatus"], Value::Null);
    let error = timed_out["attempts"][0]["error"].as_str().unwrap();
    assert!(error.contains("timed out"), "{error}");
    assert!(timed_out["attempts"][0]["latencyMs"].as_i64().unwrap() >= 1900);

    // 429 with Retry-After: 7 s, within [5 s, 10 s] for the second attempt.
    let limited = Receiver::start(Reply::RetryAfter(7)).await;
    let (limited_id, _) = endpoint(&app, json!({"url": limited.url("/slow")})).await;
    send_test(&app, &limited_id).await;
    let waiting = await_delivery(&app, &limited_id, |d| d["attempts"] == 1).await;
    let next: chrono::DateTime<Utc> = waiting["delivery"]["nextAttemptAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let attempted: chrono::DateTime<Utc> = waiting["attempts"][0]["attemptedAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!((next - attempted).num_seconds(), 7);
    let long = Receiver::start(Reply::RetryAfter(3600)).await;
    let (long_id, _) = endpoint(&app, json!({"url": long.url("/slower")})).await;
    send_test(&app, &long_id).await;
    let waiting = await_delivery(&app, &long_id, |d| d["attempts"] == 1).await;
    let next: chrono::DateTime<Utc> = waiting["delivery"]["nextAttemptAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let attempted: chrono::DateTime<Utc> = waiting["attempts"][0]["attemptedAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!((next - attempted).num_seconds(), 10, "clamped to 2 × step");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_opens_holds_retries_and_recovers_on_a_probe() {
    let clock = ManualClock::new(Utc::now());
    let app = TestApp::spawn_with_clock(clock.clone()).await;
    let receiver = Receiver::start(Reply::Status(503)).await;
    let (id, _) = endpoint(&app, json!({"url": receiver.url("/flaky")})).await;
    for _ in 0..10 {
        send_test(&app, &id).await;
    }
    receiver.wait_for(10).await;
    let mut state = Value::Null;
    for _ in 0..200 {
        let (_, ep) = admin_call(
            &app,
            Method::GET,
            &format!("/api/v1/webhook-endpoints/{id}"),
            None,
        )
        .await;
        state = ep["breakerState"].clone();
        if state == "open" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state, "open");

    // The retries fall due, but nothing is sent while the breaker is open,
    // and no retry is used up.
    advance(&app, &clock, chrono::Duration::seconds(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 10);
    let list = deliveries(&app, &id).await;
    assert!(
        list.iter()
            .all(|d| d["attempts"] == 1 && d["status"] == "pending"),
        "{list:?}"
    );

    // After 30 s one probe goes; it succeeds, the breaker closes and the
    // rest flow.
    receiver.set_default(Reply::Ok);
    advance(&app, &clock, chrono::Duration::seconds(25));
    receiver.wait_for(20).await;
    for _ in 0..200 {
        if deliveries(&app, &id)
            .await
            .iter()
            .all(|d| d["status"] == "delivered")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let list = deliveries(&app, &id).await;
    assert!(
        list.iter()
            .all(|d| d["status"] == "delivered" && d["attempts"] == 2),
        "{list:?}"
    );
    let (_, ep) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/webhook-endpoints/{id}"),
        None,
    )
    .await;
    assert_eq!(ep["breakerState"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_endpoint_receives_each_event_after_the_one_before() {
    let clock = ManualClock::new(Utc::now());
    let app = TestApp::spawn_with_clock(clock.clone()).await;
    let receiver = Receiver::start(Reply::Ok).await;
    receiver.then(&[Reply::Status(500)]);
    let (id, _) = endpoint(
        &app,
        json!({"url": receiver.url("/ordered"), "ordered": true}),
    )
    .await;
    let mut sent = Vec::new();
    for _ in 0..5 {
        sent.push(send_test(&app, &id).await);
    }
    // The first fails; nothing after it is sent meanwhile.
    receiver.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);
    advance(&app, &clock, chrono::Duration::seconds(7));
    let got = receiver.wait_for(6).await;
    let order: Vec<String> = got
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(order[0], sent[0]);
    assert_eq!(
        order[1..],
        sent[..],
        "the failed one again, then the rest in order"
    );
    assert!(got.iter().all(|r| r.concurrent == 1), "one at a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_endpoint_with_a_delivery_in_flight_stops_it_cleanly() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(Reply::Hang).await;
    let (id, _) = endpoint(&app, json!({"url": receiver.url("/slow")})).await;
    send_test(&app, &id).await;
    receiver.wait_for(1).await;
    let (status, _) = admin_call(
        &app,
        Method::DELETE,
        &format!("/api/v1/webhook-endpoints/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/webhook-endpoints/{id}/deliveries"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // The attempt times out against nothing; the server carries on.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let other = Receiver::start(Reply::Ok).await;
    let (other_id, _) = endpoint(&app, json!({"url": other.url("/ok")})).await;
    send_test(&app, &other_id).await;
    other.wait_for(1).await;
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_backlog_loses_nothing_and_replicas_never_share_a_delivery() {
    // Attempts may take 10 s here: the receiver is slow on purpose.
    let slow = |c: &mut tenlyr::config::ServeConfig| c.webhook_timeout_secs = 10;
    let app = TestApp::spawn_with(slow).await;
    // Slow enough (64 in flight, 2 s each) that a backlog builds.
    let receiver = Receiver::start(Reply::Slow(2000)).await;
    let (id, _) = endpoint(&app, json!({"url": receiver.url("/backlog")})).await;
    let mut events = HashSet::new();
    for _ in 0..300 {
        events.insert(send_test(&app, &id).await);
    }
    // Stop while delivering, then a second replica and a restarted first
    // share what is left, and new events.
    let mut first = app;
    first.begin_shutdown();
    first.stopped().await.unwrap();
    let before = receiver.received().len();
    assert!(
        before < 300,
        "the backlog was not delivered before the restart"
    );
    let clock: tenlyr::workers::SharedClock = Arc::new(tenlyr::workers::SystemClock);
    let a = first.replica(clock.clone(), slow).await;
    let b = first.replica(clock, slow).await;
    receiver.set_default(Reply::Ok);
    for i in 0..100 {
        let app = if i % 2 == 0 { &a } else { &b };
        events.insert(send_test(app, &id).await);
    }
    let got = receiver.wait_for(400).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    let unique: HashSet<String> = got_ids.iter().cloned().collect();
    assert_eq!(unique, events, "every event arrived");
    assert_eq!(got_ids.len(), 400, "none twice ({} received)", got.len());
    // The log pages through every delivery once, newest first.
    let (mut seen, mut cursor, mut previous) = (HashSet::new(), String::new(), i64::MAX);
    loop {
        let (status, page) = admin_call(
            &a,
            Method::GET,
            &format!("/api/v1/webhook-endpoints/{id}/deliveries?limit=100&cursor={cursor}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        for d in page["data"].as_array().unwrap() {
            let n: i64 = d["id"].as_str().unwrap().parse().unwrap();
            assert!(n < previous, "newest first");
            previous = n;
            assert!(seen.insert(n));
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 400);
    for (filter, expect_any) in [("delivered", true), ("failed", false)] {
        let (status, page) = admin_call(
            &a,
            Method::GET,
            &format!("/api/v1/webhook-endpoints/{id}/deliveries?status={filter}&limit=5"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert_eq!(!data.is_empty(), expect_any, "{filter}: {page}");
        assert!(data.iter().all(|d| d["status"] == filter));
    }
    // The last batch's outcome is recorded just after its requests end.
    let list = await_deliveries(&a, &id, |list| {
        list.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    assert!(
        list.iter()
            .all(|d| d["status"] == "delivered" && d["attempts"] == 1),
        "{:?}",
        list.iter()
            .filter(|d| d["status"] != "delivered" || d["attempts"] != 1)
            .collect::<Vec<_>>()
    );
}

trait NowUtc {
    fn now_utc(&self) -> chrono::DateTime<Utc>;
}

impl NowUtc for ManualClock {
    fn now_utc(&self) -> chrono::DateTime<Utc> {
        use tenlyr::workers::Clock as _;
        self.now()
    }
}

/// A claim under a backlog reads about what it takes, not the backlog:
/// 3,000 due deliveries to an enabled endpoint and 3,000 to a disabled
/// one, arriving after the statistics saw nearly every delivery done (the
/// steady state); a claim of 10 gets the enabled one's 10 earliest and
/// reads a bounded number of index entries (the plan it replaced read
/// every pending row: 10,068 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_reads_its_batch_not_the_backlog() {
    use sqlx::Row as _;
    let db = TestDb::migrated().await;
    let mut conn = db.connect().await;
    let (enabled, disabled) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for (id, on) in [(enabled, true), (disabled, false)] {
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, url, enabled, secret, created_at, updated_at) \
             VALUES ($1, 'http://127.0.0.1:9/hook', $2, '\\x00', now(), now())",
        )
        .bind(id)
        .bind(on)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    sqlx::query(
        "WITH ev AS ( \
             INSERT INTO platform_events (id, type, body, created_at) \
             SELECT 'evt_' || i, 'test.event', '{}', now() FROM generate_series(1, 6000) i \
             RETURNING id) \
         INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, next_attempt_at, \
                                         schedule_start, created_at) \
         SELECT CASE WHEN split_part(id, '_', 2)::int % 2 = 0 THEN $1 ELSE $2 END, id, \
                'test.event', now() - split_part(id, '_', 2)::int * interval '1 second', now(), now() \
         FROM ev",
    )
    .bind(enabled)
    .bind(disabled)
    .execute(&mut conn)
    .await
    .unwrap();
    for statement in [
        "UPDATE webhook_deliveries SET status = 'delivered' WHERE event_id NOT IN ('evt_1', 'evt_2')",
        "ANALYZE webhook_deliveries",
        "UPDATE webhook_deliveries SET status = 'pending'",
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }

    // A new session: its transaction's counters start at zero.
    let mut conn = db.connect().await;
    let mut tx = sqlx::Connection::begin(&mut conn).await.unwrap();
    let claimed = sqlx::query(
        "SELECT endpoint_id, event_id FROM tenlyr_claim_deliveries(now(), 30000, 10, 'test')",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let read: i64 = sqlx::query_scalar(
        "SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid))::bigint FROM pg_index \
         WHERE indrelid = 'webhook_deliveries'::regclass",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let mut events: Vec<String> = claimed.iter().map(|r| r.get("event_id")).collect();
    events.sort();
    let mut earliest: Vec<String> = (0..10).map(|i| format!("evt_{}", 6000 - 2 * i)).collect();
    earliest.sort();
    assert_eq!(events, earliest, "the enabled endpoint's ten earliest");
    assert!(
        claimed
            .iter()
            .all(|r| r.get::<uuid::Uuid, _>("endpoint_id") == enabled)
    );
    assert!(
        read < 200,
        "a claim of 10 read {read} index entries of a 6,000-row backlog"
    );
}

/// While the inbound gateway is saturated the dispatcher forwards in paced
/// batches (at most `PRESSED_BATCH` in flight, a claim per `PRESSED_PACE`,
/// outcomes recorded together): a backlog built meanwhile still goes out,
/// each delivery once, every outcome recorded, none stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_inbound_pressure_forwarding_goes_in_paced_batches_and_misses_nothing() {
    use tenlyr::workers::webhook_delivery::{PRESSED_BATCH, PRESSED_PACE};
    let app = TestApp::spawn().await;
    let pressure = app.state.inbound.pressure();
    let holding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let hold = {
        let (pressure, holding) = (pressure.clone(), holding.clone());
        tokio::spawn(async move {
            while holding.load(Ordering::Relaxed) {
                pressure.raise();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Slow enough that a batch is still in flight when the next is due.
    let receiver = Receiver::start(Reply::Slow(150)).await;
    let (id, _) = endpoint(&app, json!({"url": receiver.url("/pressed")})).await;
    let started = tokio::time::Instant::now();
    let mut events = HashSet::new();
    for _ in 0..150 {
        events.insert(send_test(&app, &id).await);
    }
    let got = receiver.wait_for(150).await;
    assert!(pressure.active(), "the pressure held throughout");
    let elapsed = started.elapsed();
    let ids: HashSet<String> = got
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, events, "every event arrived");
    assert_eq!(got.len(), 150, "none twice");
    let most = got.iter().map(|r| r.concurrent).max().unwrap();
    assert!(
        most <= PRESSED_BATCH,
        "{most} requests in flight at once under pressure"
    );
    // 150 deliveries need at least five claims of at most 32, paced.
    assert!(
        elapsed >= PRESSED_PACE * 4,
        "forwarded in {elapsed:?}: claims were not paced"
    );
    // Every outcome is recorded (the newest 100 shown), each first time.
    let list = await_deliveries(&app, &id, |list| {
        list.len() == 100 && list.iter().all(|d| d["status"] == "delivered")
    })
    .await;
    assert!(list.iter().all(|d| d["attempts"] == 1));
    holding.store(false, Ordering::Relaxed);
    hold.await.unwrap();
}
