//! The inbound webhook gateway: each provider's scheme with vectors
//! computed here (and the providers' published examples), the documented
//! answers and bodies, dedup under a race, the event log and its history,
//! forwarding to a real loopback receiver (down, then up), retry,
//! cross-tenant probes, gRPC, PayPal certificates from a test CA, and the
//! spool while Postgres is unreachable.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use base64::Engine as _;
use reqwest::Method;
use ring::hmac;
use serde_json::{Value, json};
use tenlyr::proto::v1;

use crate::{
    helpers::*,
    webhooks::{Receiver, Reply},
};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    for p in parts {
        ctx.update(p);
    }
    ctx.sign().as_ref().to_vec()
}

pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `Stripe-Signature` / `X-Syllecta-Signature`: `t=…,v1=<hex>`.
pub(crate) fn timestamped(secret: &str, t: i64, body: &str) -> String {
    let tag = hmac256(
        secret.as_bytes(),
        &[t.to_string().as_bytes(), b".", body.as_bytes()],
    );
    format!("t={t},v1={}", hex(&tag))
}

const STRIPE_SECRET: &str = "whsec_inbound_stripe_test";

/// A tenant with a callback URL at `receiver` and the providers given
/// enabled; its id, key, slug and the forwarding signing secret.
pub(crate) async fn tenant_with(
    app: &TestApp,
    email: &str,
    receiver: Option<&Receiver>,
    providers: Value,
) -> (String, String, String, Option<String>) {
    let (tenant, key) = provision(app, email, "growth", "UTC").await;
    let mut body = json!({ "providers": providers });
    if let Some(r) = receiver {
        body["callbackUrl"] = json!(r.url("/callback"));
    }
    let (status, saved) = call(
        app,
        &key,
        Method::PUT,
        "/api/v1/webhooks/settings",
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    let (_, row) = call(
        app,
        &app.admin_key,
        Method::GET,
        &format!("/api/v1/tenants/{tenant}"),
        None,
    )
    .await;
    let slug = row["slug"].as_str().unwrap().to_owned();
    let secret = saved["signingSecret"].as_str().map(str::to_owned);
    (tenant, key, slug, secret)
}

pub(crate) async fn post(
    app: &TestApp,
    path: &str,
    headers: &[(&str, String)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut request = app
        .http
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    json(request.send().await.unwrap()).await
}

pub(crate) async fn events(app: &TestApp, key: &str, query: &str) -> Vec<Value> {
    let (status, page) = call(
        app,
        key,
        Method::GET,
        &format!("/api/v1/webhooks/events{query}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().unwrap().clone()
}

/// Polls one event until `pred` holds (10 s at most).
pub(crate) async fn event_until(
    app: &TestApp,
    key: &str,
    id: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..200 {
        let (status, event) = call(
            app,
            key,
            Method::GET,
            &format!("/api/v1/webhooks/events/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{event}");
        if pred(&event) {
            return event;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("event {id} never reached the expected state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_webhook_is_verified_logged_deduped_and_forwarded_signed() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(Reply::Ok).await;
    let (tenant, key, slug, signing) = tenant_with(
        &app,
        "stripe@inbound.test",
        Some(&receiver),
        json!([{"provider": "stripe", "enabled": true, "secret": STRIPE_SECRET}]),
    )
    .await;
    let signing = signing.expect("the signing secret is shown when the callback URL is first set");
    assert!(signing.starts_with("whsec_"));

    let body = json!({"id": "evt_stripe_1", "type": "charge.dispute.updated",
                      "created": 1_771_815_596, "data": {"object": {"id": "dp_1"}}})
    .to_string();
    let path = format!("/v1/t/{slug}/webhooks/stripe");
    let sig = timestamped(STRIPE_SECRET, now(), &body);
    let (status, reply) = post(
        &app,
        &path,
        &[("stripe-signature", sig.clone())],
        body.clone(),
    )
    .await;
    assert_eq!((status, &reply), (200, &json!({"ok": true})));

    // The normalized payload reaches the callback URL, signed for the tenant.
    let got = receiver.wait_for(1).await;
    let forwarded = got[0].json();
    assert_eq!(got[0].path, "/callback");
    assert_eq!(forwarded["provider"], "stripe");
    assert_eq!(forwarded["providerRawType"], "charge.dispute.updated");
    assert_eq!(forwarded["type"], "chargeback.under_review");
    assert_eq!(forwarded["tenantId"], tenant.as_str());
    assert_eq!(forwarded["occurredAt"], "2026-02-23T02:59:56.000Z");
    assert!(forwarded["receivedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(forwarded["payload"]["data"]["object"]["id"], "dp_1");
    assert_eq!(forwarded["headers"]["stripe-signature"], sig.as_str());
    assert!(forwarded["headers"].get("authorization").is_none());
    let id = forwarded["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("evt_"));
    let header = &got[0].headers["tenlyr-signature"];
    let (t, v1) = header.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let expected = hmac256(
        signing.as_bytes(),
        &[t.as_bytes(), b".", got[0].body.as_bytes()],
    );
    assert_eq!(
        v1,
        hex(&expected),
        "forwarded requests are signed with the tenant's secret"
    );

    // The same event again: cached, logged once, forwarded once.
    let sig = timestamped(STRIPE_SECRET, now(), &body);
    let (status, reply) = post(&app, &path, &[("stripe-signature", sig)], body.clone()).await;
    assert_eq!(
        (status, &reply),
        (200, &json!({"ok": true, "cached": true}))
    );

    let event = event_until(&app, &key, &id, |e| e["status"] == "processed").await;
    assert_eq!(event["providerEventId"], "evt_stripe_1");
    assert_eq!(event["attempts"], 1);
    assert_eq!(event["payload"]["id"], "evt_stripe_1");
    assert_eq!(event["attemptLog"][0]["responseStatus"], 200);
    assert_eq!(event["lastError"], Value::Null);
    assert_eq!(events(&app, &key, "").await.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);

    // Refusals: the documented 400 bodies; none consumes the dedup key.
    let fresh = json!({"id": "evt_stripe_2", "type": "invoice.payment_failed"}).to_string();
    let good = timestamped(STRIPE_SECRET, now(), &fresh);
    let invalid = json!({"error": "invalid signature"});
    let mut changed = fresh.clone().into_bytes();
    changed[10] ^= 1;
    for (headers, body) in [
        (vec![], fresh.clone().into_bytes()),
        (
            vec![(
                "stripe-signature",
                timestamped("whsec_wrong", now(), &fresh),
            )],
            fresh.clone().into_bytes(),
        ),
        (
            vec![("stripe-signature", good[..good.len() - 3].to_owned())],
            fresh.clone().into_bytes(),
        ),
        (
            vec![(
                "stripe-signature",
                timestamped(STRIPE_SECRET, now() - 301, &fresh),
            )],
            fresh.clone().into_bytes(),
        ),
        (vec![("stripe-signature", good.clone())], changed),
    ] {
        let (status, reply) = post(&app, &path, &headers, body).await;
        assert_eq!((status, &reply), (400, &invalid));
    }
    let no_id = json!({"type": "charge.succeeded"}).to_string();
    let (status, reply) = post(
        &app,
        &path,
        &[(
            "stripe-signature",
            timestamped(STRIPE_SECRET, now(), &no_id),
        )],
        no_id,
    )
    .await;
    assert_eq!((status, reply), (400, json!({"error": "missing event id"})));
    let (status, reply) = post(&app, &path, &[("stripe-signature", good)], fresh).await;
    assert_eq!((status, reply), (200, json!({"ok": true})));
    let logged = events(&app, &key, "?type=payment.failed").await;
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["providerEventId"], "evt_stripe_2");
    // What became of each, by provider, in /metrics.
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (outcome, n) in [
        ("logged", 2),
        ("duplicate", 1),
        ("invalid_signature", 5),
        ("missing_event_id", 1),
    ] {
        let line = format!(
            "tenlyr_inbound_webhooks_total{{provider=\"stripe\",outcome=\"{outcome}\"}} {n}"
        );
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    let received_at = logged[0]["receivedAt"].as_str().unwrap().to_owned();
    let from = events(&app, &key, &format!("?receivedFrom={received_at}")).await;
    assert_eq!(
        from.len(),
        1,
        "only the second event was received from then on"
    );
    assert_eq!(
        events(&app, &key, &format!("?receivedTo={received_at}"))
            .await
            .len(),
        1
    );

    // Rotating the signing secret shows the new one once; forwarded events
    // are then signed with the old and the new.
    let (status, rotated) = call(
        &app,
        &key,
        Method::PUT,
        "/api/v1/webhooks/settings",
        Some(json!({"rotateSigningSecret": true})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["signingSecret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, signing);
    let (_, shown) = call(&app, &key, Method::GET, "/api/v1/webhooks/settings", None).await;
    assert!(
        shown.get("signingSecret").is_none() || shown["signingSecret"].is_null(),
        "{shown}"
    );
    assert_eq!(shown["signingSecretConfigured"], true);
    let third = json!({"id": "evt_stripe_3", "type": "charge.succeeded"}).to_string();
    let sig = timestamped(STRIPE_SECRET, now(), &third);
    assert_eq!(
        post(&app, &path, &[("stripe-signature", sig)], third)
            .await
            .0,
        200
    );
    let got = receiver.wait_for(3).await;
    let last = got
        .iter()
        .find(|r| r.json()["payload"]["id"] == "evt_stripe_3")
        .unwrap();
    let header = &last.headers["tenlyr-signature"];
    let t = header
        .split(',')
        .next()
        .unwrap()
        .strip_prefix("t=")
        .unwrap();
    for secret in [&signing, &new_secret] {
        let v1 = hex(&hmac256(
            secret.as_bytes(),
            &[t.as_bytes(), b".", last.body.as_bytes()],
        ));
        assert!(
            header.contains(&v1),
            "signed with both secrets during the grace: {header}"
        );
    }

    // Deleting the tenant removes its log and, in the purge job, payloads.
    let (status, _) = call(
        &app,
        &app.admin_key,
        Method::DELETE,
        &format!("/api/v1/tenants/{tenant}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let mut conn = app.db.connect().await;
    let tenant_id: uuid::Uuid = tenant.parse().unwrap();
    let mut left = -1i64;
    for _ in 0..100 {
        left = sqlx::query_scalar(
            "SELECT count(*) FROM platform_events WHERE tenant_id = $1 AND inbound",
        )
        .bind(tenant_id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the deleted tenant's webhook payloads are purged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hmac_provider_verifies_its_own_scheme() {
    let app = TestApp::spawn().await;
    let braintree = "bt_public_key:bt_private_key";
    let (_, key, slug, _) = tenant_with(
        &app,
        "providers@inbound.test",
        None,
        json!([
            {"provider": "generic", "enabled": true, "secret": "generic-secret"},
            {"provider": "shopify", "enabled": true, "secret": "shpss_secret_1"},
            {"provider": "github", "enabled": true, "secret": "It's a Secret to Everybody"},
            {"provider": "braintree", "enabled": true, "secret": braintree}
        ]),
    )
    .await;
    let ok = json!({"ok": true});
    let invalid = json!({"error": "invalid signature"});

    // generic, with the tenant key route and the id in a header.
    let body = json!({"type": "order.shipped", "occurredAt": "2026-03-01T10:00:00Z"}).to_string();
    let generic = timestamped("generic-secret", now(), &body);
    let auth = format!("Bearer {key}");
    let headers = [
        ("authorization", auth.clone()),
        ("x-syllecta-signature", generic.clone()),
        ("x-syllecta-event-id", "gen-1".to_owned()),
    ];
    assert_eq!(
        post(&app, "/v1/webhooks/generic", &headers, body.clone()).await,
        (200, ok.clone())
    );
    assert_eq!(
        post(&app, "/v1/webhooks/generic", &headers[..2], body.clone()).await,
        (400, json!({"error": "missing event id"}))
    );

    // shopify: base64 HMAC of the body; id and topic in headers.
    let body = json!({"id": 820982911946154508u64, "total_price": "10.00"}).to_string();
    let tag = hmac256(b"shpss_secret_1", &[body.as_bytes()]);
    let shopify = base64::engine::general_purpose::STANDARD.encode(&tag);
    let mut headers = vec![
        ("x-shopify-hmac-sha256", shopify),
        ("x-shopify-topic", "orders/paid".to_owned()),
        (
            "x-shopify-webhook-id",
            "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043".to_owned(),
        ),
    ];
    let path = format!("/v1/t/{slug}/webhooks/shopify");
    assert_eq!(
        post(&app, &path, &headers, body.clone()).await,
        (200, ok.clone())
    );
    headers[0].1 =
        base64::engine::general_purpose::STANDARD.encode(hmac256(b"other", &[body.as_bytes()]));
    assert_eq!(
        post(&app, &path, &headers, body).await,
        (400, invalid.clone())
    );

    // github: GitHub's documented example verifies, and its body (not
    // JSON) is then refused as a payload, not forwarded.
    let path = format!("/v1/t/{slug}/webhooks/github");
    let doc_sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let headers = vec![
        ("x-hub-signature-256", doc_sig.to_owned()),
        ("x-github-event", "ping".to_owned()),
        (
            "x-github-delivery",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned(),
        ),
    ];
    let (status, reply) = post(&app, &path, &headers, "Hello, World!").await;
    assert_eq!(status, 400);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid payload"),
        "{reply}"
    );
    let body = json!({"action": "opened", "number": 1}).to_string();
    let sig = format!(
        "sha256={}",
        hex(&hmac256(b"It's a Secret to Everybody", &[body.as_bytes()]))
    );
    let mut headers = headers;
    headers[0].1 = sig;
    headers[1].1 = "pull_request".to_owned();
    assert_eq!(post(&app, &path, &headers, body).await, (200, ok.clone()));

    // braintree: form body, HMAC-SHA1 keyed with SHA-1 of the private key.
    let xml = "<notification><kind>dispute_opened</kind>\
               <timestamp type=\"datetime\">2026-03-01T10:00:00Z</timestamp></notification>";
    let payload = base64::engine::general_purpose::STANDARD.encode(xml) + "\n";
    let key_sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, b"bt_private_key");
    let bt_sig = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key_sha1.as_ref()),
        payload.as_bytes(),
    );
    let form = |sig: &str, payload: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("bt_signature", sig)
            .append_pair("bt_payload", payload)
            .finish()
    };
    let path = format!("/v1/t/{slug}/webhooks/braintree");
    let form_type = [(
        "content-type",
        "application/x-www-form-urlencoded".to_owned(),
    )];
    let good = form(&format!("bt_public_key|{}", hex(bt_sig.as_ref())), &payload);
    assert_eq!(post(&app, &path, &form_type, good).await, (200, ok.clone()));
    let outside = form(
        &format!("bt_public_key|{}", hex(bt_sig.as_ref())),
        "abc$%def",
    );
    assert_eq!(
        post(&app, &path, &form_type, outside).await,
        (400, invalid.clone())
    );
    // Braintree's URL check: GET with bt_challenge, answered as text.
    let challenge = app
        .http
        .get(app.url(&format!(
            "{path}?bt_challenge=20f9f8ed05f77439fe955c977e4c8a53"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(challenge.status(), 200);
    let text = challenge.text().await.unwrap();
    assert!(
        text.starts_with("bt_public_key|") && text.len() == "bt_public_key|".len() + 40,
        "{text}"
    );
    // Only Braintree's challenge format is answered: the answer is the
    // signing HMAC, so anything else would let anyone sign payloads.
    let (status, reply) = json(
        app.http
            .get(app.url(&format!("{path}?bt_challenge=PG5vdGlmaWNhdGlvbj4gICAg")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{reply}");

    // Every accepted one is logged with its normalized type.
    let logged = events(&app, &key, "").await;
    let mut types: Vec<(String, String)> = logged
        .iter()
        .map(|e| {
            (
                e["provider"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            ("braintree", "chargeback.opened"),
            ("generic", "order.shipped"),
            ("github", "github.pull_request.opened"),
            ("shopify", "payment.succeeded"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    assert!(
        logged.iter().all(|e| e["status"] == "received"),
        "no callback URL: logged, kept"
    );
    let only = events(&app, &key, "?provider=shopify").await;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["providerRawType"], "orders/paid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_use_the_documented_statuses_and_bodies() {
    let app = TestApp::spawn().await;
    let (tenant, key, slug, _) = tenant_with(
        &app,
        "refusals@inbound.test",
        None,
        json!([{"provider": "stripe", "enabled": true, "secret": STRIPE_SECRET}]),
    )
    .await;
    let body = json!({"id": "evt_r1", "type": "charge.succeeded"}).to_string();
    let sig = || vec![("stripe-signature", timestamped(STRIPE_SECRET, now(), &body))];
    let not_allowed = json!({"message": "tenant not allowed"});

    // A provider the tenant did not enable.
    assert_eq!(
        post(
            &app,
            &format!("/v1/t/{slug}/webhooks/shopify"),
            &sig(),
            body.clone()
        )
        .await,
        (403, not_allowed.clone())
    );
    // Unknown provider and unknown slug: 404 in the documented error body.
    let (status, reply) = post(
        &app,
        &format!("/v1/t/{slug}/webhooks/square"),
        &sig(),
        body.clone(),
    )
    .await;
    assert_eq!(status, 404, "{reply}");
    assert_error_body(&reply, 404, "Not Found");
    let (status, reply) = post(
        &app,
        "/v1/t/no-such-tenant/webhooks/stripe",
        &sig(),
        body.clone(),
    )
    .await;
    assert_eq!(status, 404, "{reply}");
    assert_error_body(&reply, 404, "Not Found");
    // A body over the limit.
    let huge = format!("{{\"id\":\"x\",\"pad\":\"{}\"}}", "a".repeat(1024 * 1024));
    let (status, _) = post(&app, &format!("/v1/t/{slug}/webhooks/stripe"), &sig(), huge).await;
    assert_eq!(status, 413);

    // A suspended tenant is not allowed (after the settings cache's TTL).
    let (status, _) = call(
        &app,
        &app.admin_key,
        Method::POST,
        &format!("/api/v1/tenants/{tenant}/suspend"),
        Some(json!({"reason": "test"})),
    )
    .await;
    assert_eq!(status, 200);
    let path = format!("/v1/t/{slug}/webhooks/stripe");
    let mut last = (0, Value::Null);
    for _ in 0..140 {
        last = post(&app, &path, &sig(), body.clone()).await;
        if last.0 == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, (403, not_allowed));
    let _ = key;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_copies_of_one_event_are_logged_and_forwarded_once() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(Reply::Ok).await;
    let (_, key, slug, _) = tenant_with(
        &app,
        "race@inbound.test",
        Some(&receiver),
        json!([{"provider": "stripe", "enabled": true, "secret": STRIPE_SECRET}]),
    )
    .await;
    let body = json!({"id": "evt_race", "type": "charge.succeeded"}).to_string();
    let path = format!("/v1/t/{slug}/webhooks/stripe");
    let sends = (0..32).map(|_| {
        let (app, path, body) = (&app, path.clone(), body.clone());
        async move {
            let sig = timestamped(STRIPE_SECRET, now(), &body);
            post(app, &path, &[("stripe-signature", sig)], body).await
        }
    });
    let replies = futures_util::future::join_all(sends).await;
    assert!(replies.iter().all(|(s, _)| *s == 200), "{replies:?}");
    let fresh = replies
        .iter()
        .filter(|(_, r)| r == &json!({"ok": true}))
        .count();
    let cached = replies
        .iter()
        .filter(|(_, r)| r == &json!({"ok": true, "cached": true}))
        .count();
    assert_eq!((fresh, cached), (1, 31));
    receiver.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(events(&app, &key, "").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_then_up_gets_the_event_and_retry_replays_it() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(Reply::Ok).await;
    receiver.then(&[Reply::Status(500)]);
    let (_, key, slug, _) = tenant_with(
        &app,
        "retry@inbound.test",
        Some(&receiver),
        json!([{"provider": "stripe", "enabled": true, "secret": STRIPE_SECRET}]),
    )
    .await;
    let body = json!({"id": "evt_down", "type": "charge.refunded"}).to_string();
    let sig = timestamped(STRIPE_SECRET, now(), &body);
    let path = format!("/v1/t/{slug}/webhooks/stripe");
    assert_eq!(
        post(&app, &path, &[("stripe-signature", sig)], body)
            .await
            .0,
        200
    );
    let first = receiver.wait_for(1).await;
    let id = first[0].json()["id"].as_str().unwrap().to_owned();
    let failed = event_until(&app, &key, &id, |e| e["attempts"] == 1).await;
    assert_eq!(failed["status"], "received");
    assert_eq!(failed["lastError"], "HTTP 500");
    // The schedule's second attempt (5 s ± 20 %) finds it up.
    let done = event_until(&app, &key, &id, |e| e["status"] == "processed").await;
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["lastError"], Value::Null);
    assert!(done["processedAt"].is_string());

    // Retry replays a processed event (audited); a second retry while it
    // is queued is a conflict.
    let (status, retried) = call(
        &app,
        &key,
        Method::POST,
        &format!("/api/v1/webhooks/events/{id}/retry"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200, "{retried}");
    let again = receiver.wait_for(3).await;
    assert_eq!(again[2].json()["id"], id.as_str());
    let replayed = event_until(&app, &key, &id, |e| {
        e["status"] == "processed" && e["attempts"] == 3
    })
    .await;
    assert_eq!(replayed["attemptLog"].as_array().unwrap().len(), 3);
    let retries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'webhook_event.retry' AND details->>'eventId' = $1",
    )
    .bind(&id)
    .fetch_one(&mut app.db.connect().await)
    .await
    .unwrap();
    assert_eq!(retries, 1, "the retry is in the audit log");
    let (status, missing) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/webhooks/events/evt_nope/retry",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 404, "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_reach_each_others_events_or_secrets() {
    let app = TestApp::spawn().await;
    let (_, key_a, slug_a, _) = tenant_with(
        &app,
        "a@cross.test",
        None,
        json!([{"provider": "stripe", "enabled": true, "secret": "whsec_tenant_a_secret"}]),
    )
    .await;
    let (_, key_b, _, _) = tenant_with(
        &app,
        "b@cross.test",
        None,
        json!([{"provider": "stripe", "enabled": true, "secret": "whsec_tenant_b_secret"}]),
    )
    .await;
    let body = json!({"id": "evt_cross", "type": "charge.succeeded"}).to_string();
    // B's secret does not open A's slug.
    let with_b = timestamped("whsec_tenant_b_secret", now(), &body);
    let path = format!("/v1/t/{slug_a}/webhooks/stripe");
    assert_eq!(
        post(&app, &path, &[("stripe-signature", with_b)], body.clone())
            .await
            .0,
        400
    );
    let with_a = timestamped("whsec_tenant_a_secret", now(), &body);
    assert_eq!(
        post(
            &app,
            &path,
            &[("stripe-signature", with_a.clone())],
            body.clone()
        )
        .await
        .0,
        200
    );
    // B's key with A's signature goes to B's settings: refused.
    let auth = format!("Bearer {key_b}");
    let (status, _) = post(
        &app,
        "/v1/webhooks/stripe",
        &[("authorization", auth), ("stripe-signature", with_a)],
        body,
    )
    .await;
    assert_eq!(status, 400);
    let a_events = events(&app, &key_a, "").await;
    assert_eq!(a_events.len(), 1);
    let id = a_events[0]["id"].as_str().unwrap();
    assert!(events(&app, &key_b, "").await.is_empty());
    let (status, _) = call(
        &app,
        &key_b,
        Method::GET,
        &format!("/api/v1/webhooks/events/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &app,
        &key_b,
        Method::POST,
        &format!("/api/v1/webhooks/events/{id}/retry"),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_receives_by_slug_and_lists_the_history() {
    let app = TestApp::spawn().await;
    let (_, key, slug, _) = tenant_with(
        &app,
        "grpc@inbound.test",
        None,
        json!([{"provider": "stripe", "enabled": true, "secret": STRIPE_SECRET}]),
    )
    .await;
    let mut client = v1::webhook_service_client::WebhookServiceClient::new(app.channel().await);
    let body = json!({"id": "evt_grpc", "type": "customer.subscription.deleted"}).to_string();
    let message = |body: &str| v1::ReceiveWebhookBySlugRequest {
        tenant_slug: slug.clone(),
        provider: v1::WebhookProvider::Stripe as i32,
        body: Some(tenlyr::proto::google::api::HttpBody {
            content_type: "application/json".into(),
            data: body.as_bytes().to_vec(),
            extensions: vec![],
        }),
    };
    let mut request = tonic::Request::new(message(&body));
    request.metadata_mut().insert(
        "stripe-signature",
        timestamped(STRIPE_SECRET, now(), &body).parse().unwrap(),
    );
    let reply = client
        .receive_webhook_by_slug(request)
        .await
        .unwrap()
        .into_inner();
    assert!(reply.ok && reply.cached.is_none());
    let mut request = tonic::Request::new(message(&body));
    request
        .metadata_mut()
        .insert("stripe-signature", "t=1,v1=00".parse().unwrap());
    let err = client.receive_webhook_by_slug(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(err.message(), "invalid signature");

    let page = client
        .list_webhook_events(with_key(
            v1::ListWebhookEventsRequest {
                limit: 10,
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.data.len(), 1);
    assert_eq!(page.data[0].r#type, "subscription.canceled");
    assert_eq!(page.data[0].status, v1::WebhookEventStatus::Received as i32);
    let one = client
        .get_webhook_event(with_key(
            v1::GetWebhookEventRequest {
                id: page.data[0].id.clone(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.provider_event_id, "evt_grpc");
    assert!(one.payload.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_pages_with_its_cursor() {
    let app = TestApp::spawn().await;
    let (_, key, slug, _) = tenant_with(
        &app,
        "pages@inbound.test",
        None,
        json!([{"provider": "generic", "enabled": true, "secret": "generic-secret"}]),
    )
    .await;
    // Filters no event could match are refused, naming the field (a NUL
    // byte reached Postgres and came back a 500 before).
    for (query, field) in [("?type=%00x", "type"), ("?cursor=evt_%00", "cursor")] {
        let (status, body) = call(
            &app,
            &key,
            Method::GET,
            &format!("/api/v1/webhooks/events{query}"),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.to_string().contains(field), "{body}");
    }
    let path = format!("/v1/t/{slug}/webhooks/generic");
    for i in 0..7 {
        let body = json!({"id": format!("ev-{i}"), "type": "thing.happened"}).to_string();
        let sig = timestamped("generic-secret", now(), &body);
        assert_eq!(
            post(&app, &path, &[("x-syllecta-signature", sig)], body)
                .await
                .0,
            200
        );
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = call(
            &app,
            &key,
            Method::GET,
            &format!("/api/v1/webhooks/events?limit=3&cursor={cursor}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        for e in page["data"].as_array().unwrap() {
            seen.push(e["providerEventId"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..7).rev().map(|i| format!("ev-{i}")).collect::<Vec<_>>()
    );
    let (status, bad) = call(
        &app,
        &key,
        Method::GET,
        "/api/v1/webhooks/events?limit=1000",
        None,
    )
    .await;
    assert_eq!(status, 400, "{bad}");
}

/// A TCP proxy in front of the test Postgres that can drop and refuse
/// every connection: to the server, Postgres is down, then back.
struct PgProxy {
    port: u16,
    down: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl PgProxy {
    async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (d, c) = (down.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { port, down, conns }
    }

    fn stop(&self) {
        self.down.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn start_again(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_spooled_while_postgres_is_down_and_logged_once_after() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(Reply::Ok).await;
    let (_, key, slug, _) = tenant_with(
        &app,
        "spool@inbound.test",
        Some(&receiver),
        json!([{"provider": "stripe", "enabled": true, "secret": STRIPE_SECRET}]),
    )
    .await;
    let url = url::Url::parse(&app.db.url).unwrap();
    let target = tokio::net::lookup_host((url.host_str().unwrap(), url.port().unwrap_or(5432)))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = PgProxy::start(target).await;
    let mut proxied = url.clone();
    proxied.set_host(Some("127.0.0.1")).unwrap();
    proxied.set_port(Some(proxy.port)).unwrap();
    let data = std::env::temp_dir().join(format!("tenlyr-spool-{}", uuid::Uuid::new_v4().simple()));
    let dir = data.clone();
    let gateway = app
        .replica_at(
            proxied.as_str(),
            std::sync::Arc::new(tenlyr::workers::SystemClock),
            move |c| {
                c.storage.data_dir = dir;
            },
        )
        .await;

    let path = format!("/v1/t/{slug}/webhooks/stripe");
    let send = |i: usize| {
        let body = json!({"id": format!("evt_spool_{i}"), "type": "charge.succeeded"}).to_string();
        let sig = timestamped(STRIPE_SECRET, now(), &body);
        let (gateway, path) = (&gateway, path.clone());
        async move { post(gateway, &path, &[("stripe-signature", sig)], body).await }
    };
    // Seen once while Postgres is up (its settings are now known).
    assert_eq!(send(0).await, (200, json!({"ok": true})));

    proxy.stop();
    let queued = json!({"ok": true, "queued": true});
    for i in 1..=20 {
        assert_eq!(send(i).await, (202, queued.clone()), "webhook {i}");
    }
    // A copy of a spooled event is spooled again; the log dedupes it.
    assert_eq!(send(5).await, (202, queued));
    assert!(
        std::fs::metadata(data.join("inbound-spool.jsonl"))
            .unwrap()
            .len()
            > 0
    );

    proxy.start_again();
    let mut logged = Vec::new();
    for _ in 0..200 {
        logged = events(&app, &key, "?limit=100").await;
        if logged.len() == 21 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ids: Vec<&str> = logged
        .iter()
        .map(|e| e["providerEventId"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..=20).map(|i| format!("evt_spool_{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "every webhook logged exactly once");
    // And forwarded: 21 distinct events reach the receiver.
    let got = receiver.wait_for(21).await;
    let mut forwarded: Vec<String> = got
        .iter()
        .map(|r| r.json()["payload"]["id"].as_str().unwrap().to_owned())
        .collect();
    forwarded.sort();
    forwarded.dedup();
    assert_eq!(forwarded.len(), 21);
    let _ = std::fs::remove_dir_all(&data);
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA, a PayPal-like signing certificate it issued, and a
/// self-signed impostor; in a fresh directory.
fn paypal_pki() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tenlyr-paypal-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Test PayPal CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=messageverificationcerts.paypal.com",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:messageverificationcerts.paypal.com\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "rogue.key",
            "-out",
            "rogue.pem",
            "-days",
            "2",
            "-subj",
            "/CN=messageverificationcerts.paypal.com",
        ],
    );
    dir
}

/// RSA-SHA256 (PKCS#1 v1.5) of `message` with `key`, base64.
fn rsa_sign(dir: &std::path::Path, key: &str, message: &str) -> String {
    std::fs::write(dir.join("msg.txt"), message).unwrap();
    openssl(
        dir,
        &[
            "dgst", "-sha256", "-sign", key, "-out", "sig.bin", "msg.txt",
        ],
    );
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join("sig.bin")).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paypal_is_verified_offline_with_a_certificate_from_an_allowed_host() {
    let pki = paypal_pki();
    // The certificate host: serves the leaf and the rogue certificate.
    let (leaf, rogue) = (
        std::fs::read(pki.join("leaf.pem")).unwrap(),
        std::fs::read(pki.join("rogue.pem")).unwrap(),
    );
    let certs = axum::Router::new()
        .route(
            "/certs/leaf",
            axum::routing::get(move || async move { leaf.clone() }),
        )
        .route(
            "/certs/rogue",
            axum::routing::get(move || async move { rogue.clone() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, certs).await });
    let (hosts, ca) = (origin.clone(), pki.join("ca.pem"));
    let app = TestApp::spawn_with(move |c| {
        c.paypal_cert_hosts = vec!["*.paypal.com".into(), hosts];
        c.paypal_ca_file = Some(ca);
    })
    .await;
    let (_, key, slug, _) = tenant_with(
        &app,
        "paypal@inbound.test",
        None,
        json!([{"provider": "paypal", "enabled": true, "paypalWebhookId": "WH-TEST-1"}]),
    )
    .await;
    let body = json!({"id": "WH-EVT-1", "event_type": "CUSTOMER.DISPUTE.CREATED",
                      "create_time": "2026-03-01T10:00:00Z", "resource": {}})
    .to_string();
    let (tid, time) = (
        "69cd13f0-d67a-11e5-baa3-778b53f4ae55",
        "2026-03-01T10:00:01Z",
    );
    let signed = |webhook_id: &str, body: &str, key: &str| {
        rsa_sign(
            &pki,
            key,
            &format!(
                "{tid}|{time}|{webhook_id}|{}",
                crc32fast::hash(body.as_bytes())
            ),
        )
    };
    let headers = |sig: String, cert: &str| {
        vec![
            ("paypal-transmission-id", tid.to_owned()),
            ("paypal-transmission-time", time.to_owned()),
            ("paypal-transmission-sig", sig),
            ("paypal-cert-url", cert.to_owned()),
            ("paypal-auth-algo", "SHA256withRSA".to_owned()),
        ]
    };
    let path = format!("/v1/t/{slug}/webhooks/paypal");
    let leaf_url = format!("{origin}/certs/leaf");
    let invalid = (400, json!({"error": "invalid signature"}));
    // Signed for another webhook id, by a certificate no CA issued, or
    // from a host off the allow-list: refused.
    let other_id = signed("WH-OTHER", &body, "leaf.key");
    assert_eq!(
        post(&app, &path, &headers(other_id, &leaf_url), body.clone()).await,
        invalid
    );
    let rogue = signed("WH-TEST-1", &body, "rogue.key");
    let rogue_url = format!("{origin}/certs/rogue");
    assert_eq!(
        post(&app, &path, &headers(rogue, &rogue_url), body.clone()).await,
        invalid
    );
    let good = signed("WH-TEST-1", &body, "leaf.key");
    assert_eq!(
        post(
            &app,
            &path,
            &headers(good.clone(), "https://certs.evil.example/leaf"),
            body.clone()
        )
        .await,
        invalid
    );
    let mut changed = body.clone();
    changed.push(' ');
    assert_eq!(
        post(&app, &path, &headers(good.clone(), &leaf_url), changed).await,
        invalid
    );
    // The real thing.
    assert_eq!(
        post(&app, &path, &headers(good, &leaf_url), body).await,
        (200, json!({"ok": true}))
    );
    let logged = events(&app, &key, "").await;
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["providerEventId"], "WH-EVT-1");
    assert_eq!(logged[0]["type"], "chargeback.opened");
    let _ = std::fs::remove_dir_all(&pki);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_callback_pauses_forwarding_until_the_url_is_saved_again() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start(Reply::Ok).await;
    receiver.then(&[Reply::Status(410)]);
    let (_, key, slug, _) = tenant_with(
        &app,
        "gone@inbound.test",
        Some(&receiver),
        json!([{"provider": "stripe", "enabled": true, "secret": STRIPE_SECRET}]),
    )
    .await;
    let path = format!("/v1/t/{slug}/webhooks/stripe");
    let send = |id: &str| {
        let body = json!({"id": id, "type": "charge.succeeded"}).to_string();
        let sig = timestamped(STRIPE_SECRET, now(), &body);
        let (app, path) = (&app, path.clone());
        async move { post(app, &path, &[("stripe-signature", sig)], body).await }
    };
    assert_eq!(send("evt_gone_1").await.0, 200);
    let first = receiver.wait_for(1).await[0].json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = event_until(&app, &key, &first, |e| e["status"] == "delivery_failed").await;
    assert_eq!(failed["lastError"], "HTTP 410");
    // The endpoint is disabled in the transaction that records the 410.
    let (_, settings) = call(&app, &key, Method::GET, "/api/v1/webhooks/settings", None).await;
    assert_eq!(settings["callbackDisabledReason"], "gone", "{settings}");

    // Paused, not lost: the next event waits until the URL is saved again.
    assert_eq!(send("evt_gone_2").await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1);
    let waiting = events(&app, &key, "?status=received").await;
    assert_eq!(waiting.len(), 1);
    let (status, saved) = call(
        &app,
        &key,
        Method::PUT,
        "/api/v1/webhooks/settings",
        Some(json!({"callbackUrl": receiver.url("/callback")})),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["callbackDisabledReason"], Value::Null);
    let got = receiver.wait_for(2).await;
    assert_eq!(got[1].json()["payload"]["id"], "evt_gone_2");
    let id = waiting[0]["id"].as_str().unwrap();
    event_until(&app, &key, id, |e| e["status"] == "processed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_row_of_a_deleted_tenant_is_skipped_not_fatal() {
    let app = TestApp::spawn().await;
    let (tenant, key, _, _) = tenant_with(
        &app,
        "batch@inbound.test",
        None,
        json!([{"provider": "generic", "enabled": true, "secret": "generic-secret"}]),
    )
    .await;
    let row = |tenant_id: uuid::Uuid, event: &str| tenlyr::storage::inbound::InboundRow {
        tenant_id,
        id: tenlyr::domain::webhook::new_event_id(),
        provider: "generic".into(),
        provider_event_id: event.into(),
        raw_type: "thing".into(),
        event_type: "thing".into(),
        occurred_at: chrono::Utc::now(),
        received_at: chrono::Utc::now(),
        body: "{}".into(),
    };
    let live = row(tenant.parse().unwrap(), "kept");
    let orphan = row(uuid::Uuid::now_v7(), "orphan");
    let logged = tenlyr::storage::inbound::log(&app.state.db, &[orphan, live.clone()])
        .await
        .unwrap();
    assert_eq!(logged, vec![live.id]);
    assert_eq!(events(&app, &key, "").await.len(), 1);
}

/// Item 6's retention: a logged event and its dedup key are kept for
/// `TENLYR_EVENT_RETENTION_DAYS` (30 by default) and then forgotten by the
/// event-retention worker, after which the same provider event id is a new
/// event again (time moved by an injected clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_events_and_their_dedup_keys_are_forgotten_after_the_retention() {
    use tenlyr::workers::{
        Clock, Context, ManualClock, periodic::Tick, webhook_delivery::EventRetention,
    };
    let clock = ManualClock::new(chrono::Utc::now());
    let app = TestApp::spawn_with_clock(clock.clone()).await;
    let (_, key, slug, _) = tenant_with(
        &app,
        "retention@inbound.test",
        None,
        json!([{"provider": "stripe", "enabled": true, "secret": STRIPE_SECRET}]),
    )
    .await;
    let path = format!("/v1/t/{slug}/webhooks/stripe");
    let body = json!({"id": "evt_kept", "type": "charge.succeeded"}).to_string();
    // Signed at the server's (moved) time, so the 300 s tolerance holds.
    let send = || async {
        let sig = timestamped(STRIPE_SECRET, clock.now().timestamp(), &body);
        post(&app, &path, &[("stripe-signature", sig)], body.clone()).await
    };
    assert_eq!(send().await, (200, json!({"ok": true})));
    assert_eq!(send().await, (200, json!({"ok": true, "cached": true})));
    let retention = EventRetention {
        retention: chrono::Duration::days(i64::from(
            serve_config(&app.db.url).event_retention_days,
        )),
    };
    let ctx = Context::new(app_db(&app.db.url, 1).await, Arc::new(clock.clone()));

    // A day short of the retention: kept, and still a duplicate.
    clock.advance(chrono::Duration::days(29));
    retention.tick(&ctx).await.unwrap();
    assert_eq!(events(&app, &key, "").await.len(), 1);
    assert_eq!(send().await, (200, json!({"ok": true, "cached": true})));

    // Past it: the log row and the dedup key are gone; the id is new again.
    clock.advance(chrono::Duration::days(2));
    retention.tick(&ctx).await.unwrap();
    assert_eq!(events(&app, &key, "").await.len(), 0);
    assert_eq!(send().await, (200, json!({"ok": true})));
    let logged = events(&app, &key, "").await;
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0]["providerEventId"], "evt_kept");
}
