//! `GET /metrics`: Prometheus text that the reference parser
//! (`prometheus_client`, in tests/peers/.venv) reads, and that moves when
//! traffic moves, for REST and gRPC alike.

use reqwest::Method;
use serde_json::{Value, json};
use tenlyr::proto::v1;

use crate::helpers::*;

/// Scrapes `/metrics` and parses it with prometheus_client's parser.
async fn scrape(app: &TestApp) -> Value {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/.venv/bin/python");
    assert!(
        std::path::Path::new(python).exists(),
        "run scripts/test.sh once (it installs tests/peers/requirements.txt into tests/peers/.venv)"
    );
    let mut child = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/parse_metrics.py"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(families: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    families[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family}"))
        .iter()
        .filter(|s| s[0] == name)
        .find(|s| labels.iter().all(|(k, v)| s[1][k] == *v))
        .map_or(0.0, |s| s[2].as_f64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic() {
    let app = TestApp::spawn().await;
    let (_, key) = provision(&app, "metrics@metrics.test", "growth", "UTC").await;
    let track = |n: i64| {
        let (app, key) = (&app, key.clone());
        async move {
            let (status, body) = call(
                app,
                &key,
                Method::POST,
                "/api/v1/usage/track",
                Some(json!({"metric": "api_call", "value": n})),
            )
            .await;
            assert_eq!(status, 200, "{body}");
        }
    };
    track(1).await;
    let before = scrape(&app).await;
    let rest_ok = [
        ("rpc", "tenlyr.v1.MeteringService/Track"),
        ("protocol", "rest"),
        ("code", "OK"),
    ];
    let count = "tenlyr_rpc_duration_seconds_count";
    assert_eq!(
        sample(&before, "tenlyr_rpc_duration_seconds", count, &rest_ok),
        1.0
    );
    assert_eq!(before["tenlyr_rpc_duration_seconds"]["type"], "histogram");
    assert_eq!(
        sample(&before, "tenlyr_database_up", "tenlyr_database_up", &[]),
        1.0
    );
    assert!(
        sample(
            &before,
            "tenlyr_ingest_commit_events",
            "tenlyr_ingest_commit_events_count",
            &[]
        ) >= 1.0
    );

    // Five more tracks over REST, one over gRPC, an unknown route, a bad key.
    for i in 0..5 {
        track(i + 2).await;
    }
    let mut client = v1::metering_service_client::MeteringServiceClient::new(app.channel().await);
    client
        .track(with_key(
            v1::TrackRequest {
                metric: v1::UsageMetric::ApiCall as i32,
                value: 1.0,
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap();
    let (status, _) = json(app.http.get(app.url("/api/v1/nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &app,
        "tenlyr_live_not_a_key",
        Method::GET,
        "/api/v1/usage/metrics",
        None,
    )
    .await;
    assert_eq!(status, 401);

    let after = scrape(&app).await;
    assert_eq!(
        sample(&after, "tenlyr_rpc_duration_seconds", count, &rest_ok),
        6.0
    );
    let grpc_ok = [
        ("rpc", "tenlyr.v1.MeteringService/Track"),
        ("protocol", "grpc"),
        ("code", "OK"),
    ];
    assert_eq!(
        sample(&after, "tenlyr_rpc_duration_seconds", count, &grpc_ok),
        1.0
    );
    let bucket = sample(
        &after,
        "tenlyr_rpc_duration_seconds",
        "tenlyr_rpc_duration_seconds_bucket",
        &[
            ("rpc", "tenlyr.v1.MeteringService/Track"),
            ("protocol", "rest"),
            ("le", "+Inf"),
        ],
    );
    assert_eq!(bucket, 6.0);
    assert!(
        sample(
            &after,
            "tenlyr_rpc_duration_seconds",
            count,
            &[
                ("rpc", "tenlyr.v1.MeteringService/GetMetrics"),
                ("code", "UNAUTHENTICATED")
            ],
        ) >= 1.0
    );
    assert_eq!(
        sample(
            &after,
            "tenlyr_rest_refused",
            "tenlyr_rest_refused_total",
            &[("status", "404")]
        ),
        1.0
    );
    let hits = |f: &Value| {
        sample(
            f,
            "tenlyr_key_cache_lookups",
            "tenlyr_key_cache_lookups_total",
            &[("result", "local_hit")],
        )
    };
    assert!(hits(&after) >= hits(&before) + 5.0, "key cache hits move");
    assert!(
        sample(
            &after,
            "tenlyr_ingest_commit_events",
            "tenlyr_ingest_commit_events_count",
            &[]
        ) > sample(
            &before,
            "tenlyr_ingest_commit_events",
            "tenlyr_ingest_commit_events_count",
            &[]
        )
    );
    assert!(
        sample(
            &after,
            "tenlyr_db_pool_max_connections",
            "tenlyr_db_pool_max_connections",
            &[]
        ) >= 1.0
    );
}
