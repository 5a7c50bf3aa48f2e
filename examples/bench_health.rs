//! Health and throttling speed (`scripts/bench.sh health`), each figure
//! beside a reference measured in the same run:
//!
//! - the health scan over BENCH_HEALTH_TENANTS tenants (default 10,000)
//!   with 1,000,000 requests in the 5-minute window, as the per-minute
//!   counts ingestion keeps; beside the same aggregate computed from the
//!   raw events (what the scan avoids);
//! - one throttle decision, in-process and through Redis on loopback;
//!   beside a bare Redis `PING` round trip;
//! - single-event tracks/s with a throttle (high enough never to refuse)
//!   on every tenant, against the same load with none, interleaved.

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{Bench, load, report};
use serde_json::json;
use sqlx::Connection;
use tenlyr::{
    service::{health::Health, keys::KeyResolver, throttle::Throttle},
    storage::redis::Redis,
    workers::SystemClock,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let tenants = env_usize("BENCH_HEALTH_TENANTS", 10_000);
    println!(
        "tenlyr health benchmark: {tenants} tenants, redis: {}",
        bench.redis_url.is_some()
    );
    scan(&bench, tenants).await?;
    decisions(&bench).await?;
    tracking(&bench).await?;
    bench.finish().await
}

/// Seeds `n` tenants, 1,000,000 requests (5 % errors) over the last five
/// minutes as minute counts and as raw events, then times the scan and the
/// raw aggregate.
async fn scan(bench: &Bench, n: usize) -> anyhow::Result<()> {
    let mut owner = sqlx::PgConnection::connect(&bench.url).await?;
    sqlx::query("SELECT set_config('app.scope', 'platform', false)")
        .execute(&mut owner)
        .await?;
    sqlx::query(
        "INSERT INTO tenants (id, name, slug, owner_email, plan, status, region, time_zone, \
             isolation_level, api_key_prefix, created_at, updated_at) \
         SELECT gen_random_uuid(), 'Bench ' || g, 'bench-' || g, 'bench' || g || '@health.test', \
             'growth', 'active', 'us-east-1', 'UTC', 'shared_schema', 'tenlyr_live_xxxx', now(), now() \
         FROM generate_series(1, $1) g",
    )
    .bind(n as i64)
    .execute(&mut owner)
    .await?;
    let per_tenant_minute = 1_000_000 / (n as i64 * 5);
    let began = Instant::now();
    sqlx::query(
        "INSERT INTO usage_rollups (tenant_id, granularity, bucket_start, metric, total, events) \
         SELECT t.id, 'minute', date_trunc('minute', now()) - m * interval '1 minute', x.metric, \
                x.n, x.n::bigint \
         FROM tenants t CROSS JOIN generate_series(0, 4) m \
         CROSS JOIN (VALUES ('requests', $1::float8), ('errors', $1::float8 / 20)) x(metric, n)",
    )
    .bind(per_tenant_minute as f64)
    .execute(&mut owner)
    .await?;
    sqlx::query(
        "INSERT INTO usage_events (id, tenant_id, metric, value, endpoint, status_code, occurred_at) \
         SELECT gen_random_uuid(), t.id, 'api_call', 1, '/v1/orders', \
                CASE WHEN i % 20 = 0 THEN 503 ELSE 200 END, \
                now() - (i % 300) * interval '1 second' \
         FROM tenants t CROSS JOIN generate_series(1, $1) i",
    )
    .bind(per_tenant_minute * 5)
    .execute(&mut owner)
    .await?;
    sqlx::query("ANALYZE usage_rollups")
        .execute(&mut owner)
        .await?;
    sqlx::query("ANALYZE usage_events")
        .execute(&mut owner)
        .await?;
    println!(
        "seeded {n} tenants, {} requests as minute counts and raw events in {:.1} s",
        per_tenant_minute * 5 * n as i64,
        began.elapsed().as_secs_f64()
    );

    let keys = Arc::new(KeyResolver::new(
        bench.db.clone(),
        Arc::new(tenlyr::app::key_hasher(&tenlyr::config::StorageConfig {
            database_url: None,
            data_dir: "/nonexistent".into(),
            key_pepper: Some(common::PEPPER.into()),
            secrets_key: None,
            db_pool_size: 1,
            app_database_url: None,
            dedicated_database_urls: Vec::new(),
            statement_timeout_ms: 30_000,
        })?),
        None,
    ));
    let health = Health::new(
        bench.db.clone(),
        keys,
        tenlyr::service::events::Outbox::new(Arc::new(SystemClock)),
        Arc::new(SystemClock),
    );
    let mut scans = Vec::new();
    let mut raws = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let scanned = health
            .scan()
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        scans.push(t.elapsed());
        anyhow::ensure!(scanned >= n, "scanned {scanned}");
        let t = Instant::now();
        let rows = sqlx::query(
            "SELECT tenant_id, count(*), count(*) FILTER (WHERE status_code >= 500) \
             FROM usage_events WHERE occurred_at >= now() - interval '5 minutes' \
               AND status_code IS NOT NULL GROUP BY tenant_id",
        )
        .fetch_all(&mut owner)
        .await?;
        raws.push(t.elapsed());
        anyhow::ensure!(rows.len() >= n);
    }
    report("health scan (minute counts, write, events)", scans);
    report("reference: the 5-minute aggregate of raw events", raws);
    Ok(())
}

/// One decision at a time, 20,000 times, with the limit never reached.
async fn decisions(bench: &Bench) -> anyhow::Result<()> {
    let tenant = uuid::Uuid::now_v7();
    let local = Throttle::new(None);
    let mut samples = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        let d = local.check(tenant, 1_000_000).await;
        samples.push(t.elapsed());
        assert!(d.allowed);
    }
    report("throttle decision, in-process", samples);
    let Some(url) = &bench.redis_url else {
        println!("(no Redis: the Redis decision is not measured)");
        return Ok(());
    };
    let redis = Redis::connect(url).await?;
    let remote = Throttle::new(Some(redis.clone()));
    let mut samples = Vec::with_capacity(5_000);
    for _ in 0..5_000 {
        let t = Instant::now();
        let d = remote.check(tenant, 1_000_000).await;
        samples.push(t.elapsed());
        assert!(d.allowed);
    }
    report("throttle decision, Redis Lua (loopback)", samples);
    let mut pings = Vec::with_capacity(5_000);
    for _ in 0..5_000 {
        use fred::prelude::*;
        let t = Instant::now();
        let _: String = redis.client().ping(None).await?;
        pings.push(t.elapsed());
    }
    report("reference: Redis PING round trip", pings);
    redis.quit().await;
    Ok(())
}

/// Single tracks from 64 connections over 16 tenants, throttled
/// (1,000,000 rpm) and not, three interleaved pairs of 5 s.
async fn tracking(bench: &Bench) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let tenants = common::provision(bench, &http, 16, "throttle").await?;
    let tenants = Arc::new(tenants);
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..3 {
        for throttled in [false, true] {
            for (id, _) in tenants.iter() {
                let path = format!("{}/api/v1/health/{id}/throttle", bench.base_url);
                let request = if throttled {
                    http.post(path).json(&json!({"limitRpm": 1_000_000}))
                } else {
                    http.delete(path)
                };
                let status = request.bearer_auth(&bench.admin_key).send().await?.status();
                anyhow::ensure!(status.is_success(), "throttle: {status}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (samples, events, elapsed) = load(64, Duration::from_secs(5), {
                let (http, tenants, base) = (http.clone(), tenants.clone(), bench.base_url.clone());
                move |c, n| {
                    let (http, tenants, base) = (http.clone(), tenants.clone(), base.clone());
                    async move {
                        let key = &tenants[(c + n) % tenants.len()].1;
                        let response = http
                            .post(format!("{base}/api/v1/usage/track"))
                            .bearer_auth(key)
                            .json(&json!({"metric": "api_call", "value": 1, "statusCode": 200}))
                            .send()
                            .await;
                        usize::from(response.is_ok_and(|r| r.status() == 200))
                    }
                }
            })
            .await;
            let per_sec = events as f64 / elapsed.as_secs_f64();
            let name = if throttled {
                "tracks, every tenant throttled"
            } else {
                "tracks, no throttle"
            };
            println!("round {round}: {name:<36} {per_sec:>8.0} events/s");
            if round == 2 {
                report(&format!("  {name}: latency"), samples);
            }
            rates[usize::from(throttled)].push(per_sec);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "throttled / unthrottled: {:.1} % (mean of 3 interleaved pairs)",
        mean(&rates[1]) / mean(&rates[0]) * 100.0
    );
    Ok(())
}
