//! The billing sync's speed (`scripts/bench.sh billing`) against
//! localstripe, which the script starts: BENCH_BILLING_TENANTS tenants
//! (default 1,000; a third each on starter, growth and scale, usage beyond
//! the plan on every paid one), synced tick by tick:
//!
//! 1. first tick: a customer for each tenant (no payment method yet, so
//!    paid tenants wait); usage charges pushed;
//! 2. the paid customers get a test card (as they would in the portal);
//!    second tick: their subscriptions;
//! 3. third tick, nothing changed: reads only, **no Stripe write**.
//!
//! Each tick prints its time and Stripe calls per tenant, beside the
//! reference of the same reads (`GET /v1/subscriptions/{id}`) sent
//! straight to localstripe: a tick is bounded by Stripe's speed.

mod common;

use std::time::Instant;

use common::Bench;
use serde_json::Value;

fn tenants() -> usize {
    std::env::var("BENCH_BILLING_TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

const KEY: &str = "sk_test_bench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stripe =
        std::env::var("BENCH_STRIPE_URL").expect("BENCH_STRIPE_URL (scripts/bench.sh sets it)");
    let bench = Bench::start_with(|c| {
        c.stripe_api_base = stripe.clone();
        c.stripe_secret_key = Some(KEY.into());
    })
    .await?;
    let n = tenants();
    println!("tenlyr billing sync benchmark: {n} tenants against localstripe");
    let mut owner = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&bench.url).await?
    };
    let run = uuid::Uuid::now_v7().simple().to_string();
    sqlx::query(
        "INSERT INTO tenants (id, name, slug, owner_email, plan, status, region, time_zone, \
             isolation_level, api_key_prefix, created_at, updated_at) \
         SELECT gen_random_uuid(), 'Bill ' || g, 'bill-' || g, 'bill' || g || '-' || $2 || '@billing.test', \
             (ARRAY['starter', 'growth', 'scale'])[1 + g % 3], 'active', 'us-east-1', 'UTC', \
             'shared_schema', 'tenlyr_live_xxxx', now(), now() \
         FROM generate_series(1, $1) g",
    )
    .bind(n as i64)
    .bind(&run)
    .execute(&mut owner)
    .await?;
    // 20,000 compute units this month on every tenant: beyond every plan's
    // allowance (the rollups the sync reads).
    sqlx::query(
        "INSERT INTO usage_rollups (tenant_id, granularity, bucket_start, metric, total, events) \
         SELECT id, 'month', date_trunc('month', now()), 'compute', 20000, 1 FROM tenants",
    )
    .execute(&mut owner)
    .await?;

    let tick = |label: &'static str| {
        let billing = bench.state.billing.clone();
        async move {
            let started = Instant::now();
            let report = billing
                .sync()
                .await
                .map_err(|e| anyhow::anyhow!(e.message))?;
            let elapsed = started.elapsed();
            println!(
                "{label:<44} {:>6.2} s  reads/tenant {:>4.2}  writes/tenant {:>4.2}  failed {}",
                elapsed.as_secs_f64(),
                report.calls.reads as f64 / report.tenants.max(1) as f64,
                report.calls.writes as f64 / report.tenants.max(1) as f64,
                report.failed
            );
            anyhow::Ok((report, elapsed))
        }
    };
    tick("tick 1: customers and usage charges").await?;

    // Cards for the paid customers, as the portal would add them.
    let http = reqwest::Client::new();
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT b.stripe_customer_id FROM tenant_billing b JOIN tenants t ON t.id = b.tenant_id \
         WHERE t.plan <> 'starter' AND b.stripe_customer_id IS NOT NULL",
    )
    .fetch_all(&mut owner)
    .await?;
    for (customer,) in &rows {
        let token: Value = http
            .post(format!("{stripe}/v1/tokens"))
            .form(&[
                ("key", "pk_test_bench"),
                ("card[number]", "4242424242424242"),
                ("card[exp_month]", "12"),
                ("card[exp_year]", "2030"),
                ("card[cvc]", "123"),
            ])
            .send()
            .await?
            .json()
            .await?;
        http.post(format!("{stripe}/v1/customers/{customer}/sources"))
            .basic_auth(KEY, Some(""))
            .form(&[("source", token["id"].as_str().unwrap_or_default())])
            .send()
            .await?;
    }
    tick("tick 2: subscriptions").await?;
    let (quiet, elapsed) = tick("tick 3: nothing changed").await?;
    anyhow::ensure!(
        quiet.calls.writes == 0,
        "an unchanged tick wrote to Stripe: {quiet:?}"
    );

    // Reference: the same reads (each subscription), bare, one at a time.
    let reads = quiet.calls.reads as usize;
    let subs: Vec<(String,)> = sqlx::query_as(
        "SELECT stripe_subscription_id FROM tenant_billing WHERE stripe_subscription_id IS NOT NULL",
    )
    .fetch_all(&mut owner)
    .await?;
    let started = Instant::now();
    for i in 0..reads {
        let (sub,) = &subs[i % subs.len().max(1)];
        http.get(format!("{stripe}/v1/subscriptions/{sub}"))
            .basic_auth(KEY, Some(""))
            .send()
            .await?
            .bytes()
            .await?;
    }
    let bare = started.elapsed();
    println!(
        "{:<44} {:>6.2} s  ({reads} reads: the Stripe server's own time; the tick took {:.0} % of it)",
        "reference: the same reads sent straight",
        bare.as_secs_f64(),
        elapsed.as_secs_f64() / bare.as_secs_f64() * 100.0
    );
    bench.finish().await
}
