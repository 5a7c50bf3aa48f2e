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

/// The first span the collector prints for the request with `request_id`
/// (20 s at most).
async fn span_of(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    request_id: &str,
) -> Value {
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the collector runs");
            let span: Value = serde_json::from_str(&line).unwrap();
            if span["attributes"]["request_id"] == request_id {
                return span;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the span of request {request_id} reached the collector"))
}

/// With `TENLYR_OTLP_ENDPOINT` set, request spans reach an OTLP/HTTP
/// collector (decoded by the OpenTelemetry project's own protobuf
/// definitions), each with the request id as an attribute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_exported_over_otlp_with_the_request_id() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/.venv/bin/python");
    assert!(
        std::path::Path::new(python).exists(),
        "run scripts/test.sh once (it installs tests/peers/requirements.txt into tests/peers/.venv)"
    );
    let mut collector = tokio::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/otlp_collector.py"
        ))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(collector.stdout.take().unwrap()).lines();
    let port = lines.next_line().await.unwrap().unwrap();
    let port = port.strip_prefix("PORT ").expect("the collector's port");

    let db = TestDb::migrated().await;
    let data = std::env::temp_dir().join(format!("tenlyr-otlp-{}", uuid::Uuid::new_v4()));
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = start_process(
        &db,
        &data,
        &[
            ("TENLYR_OTLP_ENDPOINT", endpoint.as_str()),
            ("TENLYR_OTLP_SERVICE_NAME", "tenlyr-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}/api/v1/tenants", server.base))
        .header("x-request-id", "trace-me-0042")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let span = span_of(&mut lines, "trace-me-0042").await;
    assert_eq!(span["name"], "GET", "REST spans are named by method only");
    assert_eq!(span["kind"], 2, "SPAN_KIND_SERVER");
    assert_eq!(span["service"], "tenlyr-under-test");
    assert_eq!(span["attributes"]["path"], "/api/v1/tenants");
    // (recorded after the span opened, the bridge writes it as text)
    assert_eq!(
        span["attributes"]["status"].to_string().trim_matches('"'),
        "401"
    );
    assert_eq!(span["traceId"].as_str().unwrap().len(), 32);

    // A caller's W3C trace context is continued.
    let response = http
        .get(format!("{}/healthz", server.base))
        .header("x-request-id", "trace-me-0043")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let child = span_of(&mut lines, "trace-me-0043").await;
    assert_eq!(child["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(child["parentSpanId"], "00f067aa0ba902b7");
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}
