//! Billing: MRR and usage cost per plan and overage in the tenant's own
//! period, and the Stripe sync against a real Stripe-compatible server
//! (localstripe, which scripts/test.sh starts: TENLYR_TEST_STRIPE_URL).

use std::sync::Arc;

use chrono::{Datelike, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use tenlyr::{config::ServeConfig, proto::v1, workers::SystemClock};

use crate::helpers::*;

const STRIPE_KEY: &str = "sk_test_tenlyr";

/// localstripe's URL (scripts/test.sh starts one).
fn stripe_url() -> String {
    std::env::var("TENLYR_TEST_STRIPE_URL").expect(
        "TENLYR_TEST_STRIPE_URL: a localstripe server (scripts/test.sh starts one: \
         pip install localstripe; localstripe --port N --from-scratch)",
    )
}

fn with_stripe(c: &mut ServeConfig) {
    c.stripe_api_base = stripe_url();
    c.stripe_secret_key = Some(STRIPE_KEY.into());
}

/// A GET on localstripe.
async fn stripe_get(path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}{path}", stripe_url()))
        .basic_auth(STRIPE_KEY, Some(""))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Gives the tenant's Stripe customer a test card, as the tenant would in
/// the billing portal.
async fn add_card(customer: &str) {
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{}/v1/tokens", stripe_url()))
        .form(&[
            ("key", "pk_test_tenlyr"),
            ("card[number]", "4242424242424242"),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2030"),
            ("card[cvc]", "123"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let added = http
        .post(format!("{}/v1/customers/{customer}/sources", stripe_url()))
        .basic_auth(STRIPE_KEY, Some(""))
        .form(&[("source", token["id"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert!(added.status().is_success());
}

async fn track(app: &TestApp, key: &str, metric: &str, value: f64) {
    let (status, reply) = call(
        app,
        key,
        Method::POST,
        "/api/v1/usage/track",
        Some(json!({"metric": metric, "value": value})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mrr_and_usage_cost_follow_plans_overage_and_the_tenants_own_period() {
    let app = TestApp::spawn().await;
    let (starter, starter_key) = provision(&app, "starter@billing.test", "starter", "UTC").await;
    let (growth, growth_key) = provision(&app, "growth@billing.test", "growth", "Asia/Tokyo").await;
    let (scale, _) = provision(&app, "scale@billing.test", "scale", "America/New_York").await;
    let (enterprise, enterprise_key) =
        provision(&app, "enterprise@billing.test", "enterprise", "UTC").await;

    // Growth includes 1,000 compute units: 1,500 costs 500 × 2 ¢.
    track(&app, &growth_key, "compute", 1_500.0).await;
    let (status, billing) = call(&app, &growth_key, Method::GET, "/api/v1/billing", None).await;
    assert_eq!(status, 200, "{billing}");
    assert_eq!(billing["tenantId"], growth);
    assert_eq!(billing["plan"], "growth");
    assert_eq!(billing["mrrCents"], "9900");
    assert_eq!(billing["usageCostCents"], "1000");
    assert_eq!(billing["currency"], "usd");
    assert_eq!(billing["status"], "not_synced");
    assert_eq!(billing["stripeCustomerId"], Value::Null);
    assert_eq!(billing["syncedAt"], Value::Null);
    // The period is the calendar month in Tokyo.
    let start: chrono::DateTime<Utc> = billing["periodStart"].as_str().unwrap().parse().unwrap();
    let tokyo = start.with_timezone(&chrono_tz::Asia::Tokyo);
    assert_eq!(
        (tokyo.day(), tokyo.time()),
        (1, chrono::NaiveTime::MIN),
        "{start}"
    );

    // Starter: free, and its limits are what it includes.
    track(&app, &starter_key, "api_call", 10.0).await;
    let (_, billing) = call(&app, &starter_key, Method::GET, "/api/v1/billing", None).await;
    assert_eq!(
        (
            billing["mrrCents"].as_str(),
            billing["usageCostCents"].as_str()
        ),
        (Some("0"), Some("0"))
    );

    // Enterprise: priced per tenant by an admin; its own limits included.
    let (_, billing) = call(&app, &enterprise_key, Method::GET, "/api/v1/billing", None).await;
    assert_eq!(billing["mrrCents"], "0");
    let (status, priced) = admin_call(
        &app,
        Method::PUT,
        &format!("/api/v1/billing/tenants/{enterprise}/price"),
        Some(json!({"monthlyPriceCents": 250_000})),
    )
    .await;
    assert_eq!(status, 200, "{priced}");
    assert_eq!(priced["mrrCents"], "250000");
    assert_eq!(priced["enterprisePriceCents"], "250000");
    for (body, status_expected) in [
        (json!({"monthlyPriceCents": -1}), 422),
        (json!({"monthlyPriceCents": 2_000_000_000_i64}), 422),
    ] {
        let (status, reply) = admin_call(
            &app,
            Method::PUT,
            &format!("/api/v1/billing/tenants/{enterprise}/price"),
            Some(body),
        )
        .await;
        assert_eq!(status, status_expected, "{reply}");
        assert_eq!(reply["details"][0]["field"], "monthlyPriceCents");
    }
    let (status, reply) = admin_call(
        &app,
        Method::PUT,
        &format!("/api/v1/billing/tenants/{growth}/price"),
        Some(json!({"monthlyPriceCents": 5})),
    )
    .await;
    assert_eq!(status, 400, "only enterprise has its own price: {reply}");

    // A plan change mid-period: MRR follows at once; usage already counted stays.
    let (status, _) = admin_call(
        &app,
        Method::PATCH,
        &format!("/api/v1/tenants/{growth}/plan"),
        Some(json!({"plan": "scale"})),
    )
    .await;
    assert_eq!(status, 200);
    let (_, billing) = admin_call(
        &app,
        Method::GET,
        &format!("/api/v1/billing/tenants/{growth}"),
        None,
    )
    .await;
    assert_eq!(billing["mrrCents"], "39900");
    assert_eq!(
        billing["usageCostCents"], "0",
        "scale includes 10,000 compute units"
    );

    // Platform totals and the dashboard carry the same.
    let (status, summary) = admin_call(&app, Method::GET, "/api/v1/billing/summary", None).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["tenants"], "4");
    assert_eq!(summary["paying"], "3");
    assert_eq!(summary["mrrCents"], (39_900 + 39_900 + 250_000).to_string());
    let (_, dashboard) = admin_call(&app, Method::GET, "/api/v1/tenants/dashboard", None).await;
    let row = dashboard["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == scale)
        .unwrap()
        .clone();
    assert_eq!(row["mrrCents"], "39900");
    let _ = starter;

    // A tenant key reads only its own billing; admin routes refuse it.
    let (status, _) = call(
        &app,
        &starter_key,
        Method::GET,
        "/api/v1/billing/summary",
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = admin_call(&app, Method::GET, "/api/v1/billing", None).await;
    assert_eq!(status, 403, "GetBilling takes a tenant key");
}

/// Runs one sync tick on `app`: (tenants, reads, writes, failed, drifted).
async fn sync(app: &TestApp) -> tenlyr::service::billing::SyncReport {
    app.state.billing.sync().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_keeps_one_customer_and_subscription_per_tenant_and_bills_usage_once() {
    let a = TestApp::spawn_with(with_stripe).await;
    let b = a.replica(Arc::new(SystemClock), with_stripe).await;
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let email = format!("sync-{suffix}@billing.test");
    let (tenant, key) = provision(&a, &email, "growth", "UTC").await;
    let free_email = format!("free-{suffix}@billing.test");
    let (free, _) = provision(&a, &free_email, "starter", "UTC").await;

    // Two replicas, two ticks each, at once: one customer each; no
    // payment method yet, so no subscription.
    let (x, y) = tokio::join!(sync(&a), sync(&b));
    let (_, billing) = call(&a, &key, Method::GET, "/api/v1/billing", None).await;
    assert_eq!(x.failed + y.failed, 0, "{x:?} {y:?} {billing}");
    assert!(x.skipped || y.skipped, "one sync at a time: {x:?} {y:?}");
    assert_eq!(billing["status"], "requires_payment_method", "{billing}");
    let customers = stripe_get(&format!("/v1/customers?email={email}")).await;
    let customers = customers["data"].as_array().unwrap();
    assert_eq!(customers.len(), 1, "one customer: {customers:?}");
    let customer = customers[0]["id"].as_str().unwrap().to_owned();
    add_card(&customer).await;
    for _ in 0..2 {
        let (x, y) = tokio::join!(sync(&a), sync(&b));
        assert_eq!(x.failed + y.failed, 0, "{x:?} {y:?}");
        sync(&b).await;
    }
    let customers = stripe_get(&format!("/v1/customers?email={email}")).await;
    assert_eq!(customers["data"].as_array().unwrap().len(), 1);
    // Usage beyond the plan (growth includes 1,000 compute units), billed
    // by the next ticks of both replicas: once.
    track(&a, &key, "compute", 1_500.0).await;
    let (x, y) = tokio::join!(sync(&a), sync(&b));
    assert_eq!(x.failed + y.failed, 0, "{x:?} {y:?}");
    sync(&b).await;
    let subs = stripe_get(&format!("/v1/subscriptions?customer={customer}&status=all")).await;
    let subs: Vec<&Value> = subs["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] != "canceled")
        .collect();
    assert_eq!(subs.len(), 1, "one live subscription: {subs:?}");
    assert_eq!(subs[0]["plan"]["id"], "tenlyr_growth");
    assert_eq!(subs[0]["plan"]["amount"], 9900);
    let items = stripe_get(&format!("/v1/invoiceitems?customer={customer}")).await;
    let usage: Vec<&Value> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["metadata"]["tenlyr_key"].is_string())
        .collect();
    assert_eq!(usage.len(), 1, "usage billed once: {usage:?}");
    assert_eq!(usage[0]["amount"], 1000);

    let (status, billing) = call(&a, &key, Method::GET, "/api/v1/billing", None).await;
    assert_eq!(status, 200);
    assert_eq!(billing["stripeCustomerId"], customer);
    assert_eq!(billing["stripeSubscriptionId"], subs[0]["id"]);
    assert_eq!(billing["status"], "active");
    assert_eq!(subs[0]["status"], "active");
    assert!(billing["syncedAt"].is_string());
    let (_, free_billing) = admin_call(
        &a,
        Method::GET,
        &format!("/api/v1/billing/tenants/{free}"),
        None,
    )
    .await;
    assert_eq!(free_billing["status"], "active");
    assert!(free_billing["stripeCustomerId"].is_string());
    assert_eq!(free_billing["stripeSubscriptionId"], Value::Null);

    // Nothing changed: a tick reads, writes nothing.
    let quiet = sync(&a).await;
    assert_eq!(quiet.calls.writes, 0, "{quiet:?}");

    // More usage: only the difference is billed.
    track(&a, &key, "compute", 100.0).await;
    sync(&b).await;
    sync(&a).await;
    let items = stripe_get(&format!("/v1/invoiceitems?customer={customer}")).await;
    let mut amounts: Vec<i64> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["metadata"]["tenlyr_key"].is_string())
        .map(|i| i["amount"].as_i64().unwrap())
        .collect();
    amounts.sort();
    assert_eq!(amounts, [200, 1000]);

    // A plan change moves the same subscription; termination cancels it.
    admin_call(
        &a,
        Method::PATCH,
        &format!("/api/v1/tenants/{tenant}/plan"),
        Some(json!({"plan": "scale"})),
    )
    .await;
    sync(&a).await;
    let sub = stripe_get(&format!(
        "/v1/subscriptions/{}",
        billing["stripeSubscriptionId"].as_str().unwrap()
    ))
    .await;
    assert_eq!(sub["plan"]["id"], "tenlyr_scale");
    admin_call(
        &a,
        Method::POST,
        &format!("/api/v1/tenants/{tenant}/terminate"),
        Some(json!({})),
    )
    .await;
    sync(&b).await;
    let (_, after) = admin_call(
        &a,
        Method::GET,
        &format!("/api/v1/billing/tenants/{tenant}"),
        None,
    )
    .await;
    assert_eq!(after["status"], "canceled", "{after}");
    assert_eq!(after["mrrCents"], "0");
    let sub = stripe_get(&format!(
        "/v1/subscriptions/{}",
        billing["stripeSubscriptionId"].as_str().unwrap()
    ))
    .await;
    assert_eq!(sub["status"], "canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_reported_and_a_crash_between_push_and_record_bills_once() {
    let app = TestApp::spawn_with(with_stripe).await;
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let (tenant, key) = provision(
        &app,
        &format!("drift-{suffix}@billing.test"),
        "growth",
        "UTC",
    )
    .await;
    sync(&app).await;
    let (_, billing) = call(&app, &key, Method::GET, "/api/v1/billing", None).await;
    add_card(billing["stripeCustomerId"].as_str().unwrap()).await;
    sync(&app).await;
    let (_, billing) = call(&app, &key, Method::GET, "/api/v1/billing", None).await;
    let sub_id = billing["stripeSubscriptionId"]
        .as_str()
        .unwrap_or_else(|| panic!("{billing}"))
        .to_owned();
    let customer = billing["stripeCustomerId"].as_str().unwrap().to_owned();
    assert_eq!(billing["drift"], Value::Null);

    // Someone moves the subscription in Stripe's dashboard.
    let sub = stripe_get(&format!("/v1/subscriptions/{sub_id}")).await;
    let item = sub["items"]["data"][0]["id"].as_str().unwrap();
    let http = reqwest::Client::new();
    http.post(format!("{}/v1/plans", stripe_url()))
        .basic_auth(STRIPE_KEY, Some(""))
        .form(&[
            ("id", "tenlyr_scale"),
            ("amount", "39900"),
            ("currency", "usd"),
            ("interval", "month"),
            ("product[name]", "Tenlyr scale"),
        ])
        .send()
        .await
        .unwrap();
    let moved = http
        .post(format!("{}/v1/subscriptions/{sub_id}", stripe_url()))
        .basic_auth(STRIPE_KEY, Some(""))
        .form(&[("items[0][id]", item), ("items[0][plan]", "tenlyr_scale")])
        .send()
        .await
        .unwrap();
    assert!(moved.status().is_success());
    let report = sync(&app).await;
    assert_eq!(report.drifted, 1, "{report:?}");
    let (_, billing) = call(&app, &key, Method::GET, "/api/v1/billing", None).await;
    let drift = billing["drift"].as_str().unwrap();
    assert!(
        drift.contains("tenlyr_scale") && drift.contains("tenlyr_growth"),
        "{drift}"
    );
    let sub = stripe_get(&format!("/v1/subscriptions/{sub_id}")).await;
    assert_eq!(sub["plan"]["id"], "tenlyr_growth", "corrected back");

    // A crash after Stripe created the usage item and before the ledger
    // recorded it: the ledger holds the pending key; Stripe has the item.
    track(&app, &key, "compute", 1_250.0).await; // 250 over: 500 ¢
    let period: chrono::DateTime<Utc> = billing["periodStart"].as_str().unwrap().parse().unwrap();
    let pending = format!("tenlyr-usage-{tenant}-{}-500", period.timestamp());
    let mut owner = app.db.connect().await;
    sqlx::query(
        "INSERT INTO billing_usage_ledger (tenant_id, period_start, pending_key, pending_cents, updated_at) \
         VALUES ($1, $2, $3, 500, now())",
    )
    .bind(uuid::Uuid::parse_str(&tenant).unwrap())
    .bind(period)
    .bind(&pending)
    .execute(&mut owner)
    .await
    .unwrap();
    http.post(format!("{}/v1/invoiceitems", stripe_url()))
        .basic_auth(STRIPE_KEY, Some(""))
        .form(&[
            ("customer", customer.as_str()),
            ("amount", "500"),
            ("currency", "usd"),
            ("metadata[tenlyr_key]", pending.as_str()),
        ])
        .send()
        .await
        .unwrap();
    sync(&app).await;
    sync(&app).await;
    let items = stripe_get(&format!("/v1/invoiceitems?customer={customer}")).await;
    let usage: Vec<&Value> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["metadata"]["tenlyr_key"].is_string())
        .collect();
    assert_eq!(usage.len(), 1, "billed once: {usage:?}");
    let row: (i64, Option<String>) = sqlx::query_as(
        "SELECT billed_cents, pending_key FROM billing_usage_ledger WHERE tenant_id = $1",
    )
    .bind(uuid::Uuid::parse_str(&tenant).unwrap())
    .fetch_one(&mut owner)
    .await
    .unwrap();
    assert_eq!(row, (500, None));

    // gRPC reads the same record.
    let mut grpc = v1::billing_service_client::BillingServiceClient::new(app.channel().await);
    let got = grpc
        .get_billing(with_key(v1::GetBillingRequest {}, &key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.stripe_subscription_id.as_deref(), Some(sub_id.as_str()));
    assert_eq!(got.usage_cost_cents, 500);
}

/// The first event `receiver` got (or gets, 10 s at most per arrival)
/// that `wanted` takes; events arrive in any order.
async fn event_of(receiver: &crate::webhooks::Receiver, wanted: impl Fn(&Value) -> bool) -> Value {
    for n in 1..=50 {
        let got = receiver.wait_for(n).await;
        if let Some(found) = got.iter().map(|r| r.json()).find(|e| wanted(e)) {
            return found;
        }
    }
    panic!("no such event among 50");
}

/// A stand-in for the Stripe endpoints localstripe lacks (billing-portal
/// sessions), passing everything else on to localstripe.
async fn portal_stub() -> String {
    use axum::{body::Body, extract::Request, response::IntoResponse};
    let upstream = stripe_url();
    let app = axum::Router::new()
        .route(
            "/v1/billing_portal/sessions",
            axum::routing::post(|body: String| async move {
                let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
                    .into_owned()
                    .collect();
                let get = |k: &str| {
                    form.iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                axum::Json(json!({
                    "object": "billing_portal.session",
                    "customer": get("customer"),
                    "return_url": get("return_url"),
                    "url": format!("https://billing.stripe.test/p/session/{}", get("customer")),
                }))
            }),
        )
        .fallback(move |request: Request| {
            let upstream = upstream.clone();
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let url = format!(
                    "{upstream}{}",
                    parts.uri.path_and_query().map_or("", |p| p.as_str())
                );
                let mut forward = reqwest::Client::new().request(parts.method, url).body(body);
                for (name, value) in &parts.headers {
                    if name != "host" {
                        forward = forward.header(name, value);
                    }
                }
                let reply = forward.send().await.unwrap();
                let status = reply.status();
                let bytes = reply.bytes().await.unwrap();
                (
                    status,
                    [("content-type", "application/json")],
                    Body::from(bytes),
                )
                    .into_response()
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_webhooks_move_the_status_and_the_portal_gives_a_url() {
    use crate::webhooks::{Receiver, Reply};
    const SECRET: &str = "whsec_tenlyr_platform_test";
    let stub = portal_stub().await;
    let app = TestApp::spawn_with(|c| {
        with_stripe(c);
        c.stripe_api_base = stub.clone();
        c.stripe_webhook_secret = Some(SECRET.into());
    })
    .await;
    let receiver = Receiver::start(Reply::Ok).await;
    let (status, _) = admin_call(
        &app,
        Method::POST,
        "/api/v1/webhook-endpoints",
        Some(json!({"url": receiver.url("/billing"), "eventTypes": ["billing.*"]})),
    )
    .await;
    assert_eq!(status, 200);
    // localstripe sends this server the subscription events, signed.
    let hook = format!("tenlyr-{}", uuid::Uuid::now_v7().simple());
    let registered = reqwest::Client::new()
        .post(format!("{}/_config/webhooks/{hook}", stripe_url()))
        .form(&[
            ("url", app.url("/api/v1/billing/stripe/webhook").as_str()),
            ("secret", SECRET),
            ("events[0]", "customer.subscription.deleted"),
        ])
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success());

    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let (tenant, key) = provision(
        &app,
        &format!("hooks-{suffix}@billing.test"),
        "growth",
        "UTC",
    )
    .await;
    sync(&app).await;
    let (_, billing) = call(&app, &key, Method::GET, "/api/v1/billing", None).await;
    let customer = billing["stripeCustomerId"].as_str().unwrap().to_owned();
    add_card(&customer).await;
    sync(&app).await;
    let (_, billing) = call(&app, &key, Method::GET, "/api/v1/billing", None).await;
    assert_eq!(billing["status"], "active", "{billing}");
    let sub = billing["stripeSubscriptionId"].as_str().unwrap().to_owned();

    // A bad signature changes nothing.
    let forged = app
        .http
        .post(app.url("/api/v1/billing/stripe/webhook"))
        .header("stripe-signature", format!("t={},v1=00ff", Utc::now().timestamp()))
        .header("content-type", "application/json")
        .body(json!({"type": "customer.subscription.deleted", "data": {"object": {"id": sub, "customer": customer}}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    let body: Value = forged.json().await.unwrap();
    assert_eq!(body["message"], "invalid signature");
    let (_, billing) = call(&app, &key, Method::GET, "/api/v1/billing", None).await;
    assert_eq!(billing["status"], "active");

    // Canceled in Stripe: its signed webhook moves the status at once.
    let deleted = reqwest::Client::new()
        .delete(format!("{}/v1/subscriptions/{sub}", stripe_url()))
        .basic_auth(STRIPE_KEY, Some(""))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    let mut status = Value::Null;
    for _ in 0..200 {
        let (_, billing) = call(&app, &key, Method::GET, "/api/v1/billing", None).await;
        status = billing["status"].clone();
        if status == "canceled" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(status, "canceled");
    // billing.synced events arrive too: wait for the subscription update.
    let event = event_of(&receiver, |e| e["type"] == "billing.subscription_updated").await;
    assert_eq!(event["data"]["tenantId"], tenant);
    assert_eq!(event["data"]["status"], "canceled");

    // The syncs announced themselves: billing.synced for this tenant.
    let synced = event_of(&receiver, |e| {
        e["type"] == "billing.synced" && e["data"]["tenantId"] == tenant
    })
    .await;
    assert_eq!(synced["data"]["stripeCustomerId"], customer);

    // A payment failure, signed as Stripe signs (the secret keys HMAC over
    // "t.body"): past_due and billing.payment_failed.
    let body = json!({
        "id": "evt_payment_failed_test",
        "type": "invoice.payment_failed",
        "data": {"object": {"id": "in_test", "customer": customer, "subscription": sub, "amount_due": 9900}}
    })
    .to_string();
    let t = Utc::now().timestamp();
    let signed = app
        .http
        .post(app.url("/api/v1/billing/stripe/webhook"))
        .header(
            "stripe-signature",
            tenlyr::domain::webhook::tenlyr_signature(&[SECRET], t, body.as_bytes()),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200);
    let reply: Value = signed.json().await.unwrap();
    assert_eq!(reply, json!({"received": true, "tenantId": tenant}));
    let (_, billing) = call(&app, &key, Method::GET, "/api/v1/billing", None).await;
    assert_eq!(billing["status"], "past_due");
    let failed = event_of(&receiver, |e| e["type"] == "billing.payment_failed").await;
    assert_eq!(failed["data"]["tenantId"], tenant);
    assert_eq!(failed["data"]["amountDue"], 9900);

    // The billing portal.
    let (status, reply) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/billing/portal",
        Some(json!({"returnUrl": "https://app.acme.test/settings"})),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["url"],
        format!("https://billing.stripe.test/p/session/{customer}")
    );
    let (status, reply) = call(
        &app,
        &key,
        Method::POST,
        "/api/v1/billing/portal",
        Some(json!({"returnUrl": "javascript:alert(1)"})),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["details"][0]["field"], "returnUrl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_down_never_reaches_the_api_which_serves_the_last_sync() {
    let app = TestApp::spawn_with(with_stripe).await;
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let (_, key) = provision(
        &app,
        &format!("down-{suffix}@billing.test"),
        "growth",
        "UTC",
    )
    .await;
    sync(&app).await;
    let (_, before) = call(&app, &key, Method::GET, "/api/v1/billing", None).await;
    add_card(before["stripeCustomerId"].as_str().unwrap()).await;
    sync(&app).await;
    let (_, before) = call(&app, &key, Method::GET, "/api/v1/billing", None).await;
    assert_eq!(before["status"], "active");
    let synced = before["syncedAt"].clone();
    assert!(synced.is_string());

    // The same data, Stripe unreachable (nothing listens on port 9).
    let down = app
        .replica(Arc::new(SystemClock), |c| {
            c.stripe_api_base = "http://127.0.0.1:9".into();
            c.stripe_secret_key = Some(STRIPE_KEY.into());
        })
        .await;
    let (_, key2) = provision(
        &down,
        &format!("down2-{suffix}@billing.test"),
        "growth",
        "UTC",
    )
    .await;
    let report = sync(&down).await;
    assert_eq!(report.failed, 2, "{report:?}");
    let (status, after) = call(&down, &key, Method::GET, "/api/v1/billing", None).await;
    assert_eq!(status, 200);
    assert_eq!(after["syncedAt"], synced, "the last sync is served");
    assert_eq!(after["stripeCustomerId"], before["stripeCustomerId"]);
    let (status, never) = call(&down, &key2, Method::GET, "/api/v1/billing", None).await;
    assert_eq!(status, 200);
    assert_eq!(never["status"], "not_synced");
    assert!(
        never["lastSyncError"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{never}"
    );
    // And a portal call says Stripe is unavailable, not 500.
    let (status, reply) = call(
        &down,
        &key,
        Method::POST,
        "/api/v1/billing/portal",
        Some(json!({"returnUrl": "https://a.test/"})),
    )
    .await;
    assert_eq!(status, 503, "{reply}");
}
