//! Everything that knows about HTTP, gRPC, gRPC-Web, JSON or protobuf.
//!
//! One listener carries all three protocols: requests whose content type is
//! `application/grpc-web*` go through tonic-web to the gRPC router,
//! `application/grpc*` go to it directly, everything else is REST and goes
//! through the transcoder — which calls the same gRPC router in-process.
//!
//! Architecture Invariant: authentication, scope and request spans run in
//! one place for all protocols (the gRPC router's middleware and the outer
//! trace layer); REST never calls a service implementation directly.

pub mod auth;
pub mod backoffice;
pub mod grpc;
pub mod idempotency;
pub mod rest;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::anyhow;
use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
    routing::get,
};
use http::{HeaderName, StatusCode, header};
use tower::ServiceExt as _;
use tower_http::{
    cors::{Any, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};
use tracing::Span;

use self::{
    auth::{AccessTable, AuthState, Authenticator},
    rest::{Transcoder, json::JsonCodec, routes::RouteTable},
};
use crate::{
    app::AppState,
    error::ApiError,
    metrics::{Gauge, Metrics},
    proto,
};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every RPC the listener serves, as `package.Service/Method`: the API's,
/// health's and reflection's (what `/metrics` labels; other paths count as
/// unknown).
pub fn rpc_names() -> Vec<String> {
    let api = proto::pool()
        .services()
        .filter(|s| s.package_name() == proto::PACKAGE)
        .flat_map(|s| {
            s.methods()
                .map(|m| format!("{}/{}", s.full_name(), m.name()))
                .collect::<Vec<_>>()
        });
    let standard = [
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ];
    api.chain(standard.into_iter().map(str::to_owned)).collect()
}

/// The OpenAPI document (`tenlyr openapi`, `GET /openapi.json`).
pub fn openapi_document() -> anyhow::Result<serde_json::Value> {
    let pool = proto::pool();
    let problems = |p: Vec<String>| anyhow!("invalid API annotations:\n  {}", p.join("\n  "));
    let access = AccessTable::from_pool(pool, proto::PACKAGE).map_err(problems)?;
    let routes = RouteTable::from_pool(pool, proto::PACKAGE).map_err(problems)?;
    Ok(rest::openapi::document(
        &routes,
        &JsonCodec::new(pool),
        &access,
    ))
}

/// What the listener serves, built once at start-up.
pub struct Transport {
    pub router: Router,
    pub health: tonic_health::server::HealthReporter,
    /// Stores idempotent responses after they are sent: shutdown waits
    /// for it (`Idempotency::finish`).
    pub idempotency: idempotency::Idempotency,
}

/// Builds the one router for gRPC, gRPC-Web, REST and the probes. Fails if
/// any annotation in the contract is invalid.
pub fn build(state: &AppState) -> anyhow::Result<Transport> {
    let pool = proto::pool();
    let problems = |p: Vec<String>| anyhow!("invalid API annotations:\n  {}", p.join("\n  "));
    let access = AccessTable::from_pool(pool, proto::PACKAGE).map_err(problems)?;
    let routes = RouteTable::from_pool(pool, proto::PACKAGE).map_err(problems)?;
    let openapi: Arc<str> = rest::openapi::document(&routes, &JsonCodec::new(pool), &access)
        .to_string()
        .into();

    let (health, health_service) = tonic_health::server::health_reporter();
    // Both reflection versions describe every service on the port,
    // including health and reflection itself.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let grpc_path = |r: &rest::routes::Route| {
        format!(
            "/{}/{}",
            r.method.parent_service().full_name(),
            r.method.name()
        )
    };
    // Reads (REST `GET`) need no CSRF token with a session cookie.
    let reads = routes
        .routes()
        .iter()
        .filter(|r| r.http_method == http::Method::GET)
        .map(grpc_path)
        .collect();
    let auth = AuthState {
        table: access,
        authenticator: Authenticator::new(state.keys.clone(), state.users.clone(), reads),
        throttle: state.throttle.clone(),
    };
    // Idempotency-Key: the RPCs bound to REST POST or PATCH.
    let mutations = routes
        .routes()
        .iter()
        .filter(|r| r.http_method == http::Method::POST || r.http_method == http::Method::PATCH)
        .map(grpc_path)
        .collect();
    let idempotency = idempotency::Idempotency::new(
        state.db.clone(),
        state.clock.clone(),
        mutations,
        state.max_body_bytes,
        &state.keys.hasher().derive("idempotency-responses"),
    );
    // Authentication wraps the idempotency layer, which keys on the
    // principal.
    let grpc_router = grpc::routes(state)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            idempotency.clone(),
            idempotency::layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            auth,
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            count_rpc,
        ));
    let grpc_web = grpc_router.clone().layer(tonic_web::GrpcWebLayer::new());
    let transcoder = Arc::new(Transcoder::new(
        routes,
        JsonCodec::new(pool),
        grpc_router.clone(),
        state.max_body_bytes,
    ));
    let protocols = Protocols {
        grpc: grpc_router,
        grpc_web,
        transcoder,
        closing: state.lifecycle.closing.clone(),
        metrics: state.metrics.clone(),
    };

    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz).with_state(state.clone()))
        .route("/metrics", get(metrics).with_state(state.clone()))
        .route(
            "/openapi.json",
            get(move || {
                let body = openapi.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        body.to_string(),
                    )
                }
            }),
        )
        .merge(backoffice::routes())
        .fallback(dispatch)
        .with_state(protocols)
        .layer(cors())
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(make_span)
                .on_request(())
                .on_response(on_response)
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid));
    Ok(Transport {
        router,
        health,
        idempotency,
    })
}

#[derive(Clone)]
struct Protocols {
    grpc: Router,
    grpc_web: Router,
    transcoder: Arc<Transcoder>,
    /// The listener is closing: new requests are refused (503 /
    /// UNAVAILABLE).
    closing: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// Set by [`count_rpc`] when a REST request reached an RPC (else the
/// transcoder refused it).
#[derive(Clone, Default)]
struct RpcRan(Arc<AtomicBool>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Grpc,
    GrpcWeb,
    Rest,
}

fn protocol(request: &Request) -> Protocol {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/grpc-web") {
        Protocol::GrpcWeb
    } else if content_type.starts_with("application/grpc") {
        Protocol::Grpc
    } else {
        Protocol::Rest
    }
}

async fn dispatch(State(protocols): State<Protocols>, mut request: Request) -> Response {
    let protocol = protocol(&request);
    if protocols.closing.load(Ordering::Acquire) {
        return refuse_draining(protocol);
    }
    request.extensions_mut().insert(protocol);
    match protocol {
        Protocol::GrpcWeb => protocols.grpc_web.oneshot(request).await.into_response(),
        Protocol::Grpc => protocols.grpc.oneshot(request).await.into_response(),
        Protocol::Rest => {
            let ran = RpcRan::default();
            request.extensions_mut().insert(ran.clone());
            let response = protocols.transcoder.handle(request).await;
            if !ran.0.load(Ordering::Relaxed) {
                protocols.metrics.rest_refused(response.status().as_u16());
            }
            response
        }
    }
}

/// Records every RPC, whichever protocol carried it: method, protocol,
/// gRPC status (from a trailers-only answer's headers; a response with a
/// body is OK), and the time to the response head.
async fn count_rpc(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let protocol = match request.extensions().get::<Protocol>() {
        Some(Protocol::Rest) => "rest",
        Some(Protocol::GrpcWeb) => "grpc_web",
        _ => "grpc",
    };
    if let Some(ran) = request.extensions().get::<RpcRan>() {
        ran.0.store(true, Ordering::Relaxed);
    }
    let rpc = metrics.rpc(request.uri().path());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or("OK", |c| code_name(tonic::Code::from_i32(c)));
    rpc.observe(protocol, code, started.elapsed());
    response
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Prometheus text format: what [`Metrics`] counted, then gauges read now
/// (queues, the pool, key lookups; job and breaker states from Postgres,
/// left out when it does not answer within 2 s).
async fn metrics(State(state): State<AppState>) -> Response {
    let pool = state.db.pool();
    let idle = pool.num_idle() as f64;
    let size = f64::from(pool.size());
    let (local, shared, misses) = state.keys.lookups();
    let help_pool = "Application pool connections by state.";
    let help_keys = "API key lookups by where they were answered (hit rate: local_hit / all).";
    let mut gauges = vec![
        Gauge::new("tenlyr_db_pool_connections", help_pool, size - idle).with("state", "in_use"),
        Gauge::new("tenlyr_db_pool_connections", help_pool, idle).with("state", "idle"),
        Gauge::new(
            "tenlyr_db_pool_max_connections",
            "Application pool size limit.",
            f64::from(pool.options().get_max_connections()),
        ),
        Gauge::new(
            "tenlyr_ingest_queue_depth",
            "Track submissions waiting for an ingest committer.",
            state.metering.ingest_queued() as f64,
        ),
        Gauge::new(
            "tenlyr_inbound_queue_depth",
            "Verified inbound webhooks waiting for the log committer.",
            state.inbound.queued() as f64,
        ),
        Gauge::new("tenlyr_key_cache_lookups_total", help_keys, local as f64)
            .counter()
            .with("result", "local_hit"),
        Gauge::new("tenlyr_key_cache_lookups_total", help_keys, shared as f64)
            .counter()
            .with("result", "shared_hit"),
        Gauge::new("tenlyr_key_cache_lookups_total", help_keys, misses as f64)
            .counter()
            .with("result", "miss"),
    ];
    let read = async {
        let jobs = crate::storage::jobs::depth_by_kind(pool).await?;
        let breakers = crate::storage::webhooks::breaker_states(pool).await?;
        Ok::<_, sqlx::Error>((jobs, breakers))
    };
    let up = match tokio::time::timeout(Duration::from_secs(2), read).await {
        Ok(Ok((jobs, (breakers, pending)))) => {
            for (kind, job_state, n) in jobs {
                gauges.push(
                    Gauge::new(
                        "tenlyr_jobs",
                        "Jobs in the queue by kind and state.",
                        n as f64,
                    )
                    .with("kind", kind)
                    .with("state", job_state),
                );
            }
            for (breaker, n) in breakers {
                gauges.push(
                    Gauge::new(
                        "tenlyr_webhook_endpoints",
                        "Enabled webhook endpoints by circuit-breaker state.",
                        n as f64,
                    )
                    .with("breaker_state", breaker),
                );
            }
            gauges.push(Gauge::new(
                "tenlyr_webhook_deliveries_pending",
                "Webhook deliveries waiting to be sent or retried.",
                pending as f64,
            ));
            1.0
        }
        _ => 0.0,
    };
    gauges.push(Gauge::new(
        "tenlyr_database_up",
        "Whether Postgres answered this scrape's queries.",
        up,
    ));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&gauges),
    )
        .into_response()
}

/// A request that arrived after shutdown began: the client should go to
/// another replica. Nothing of it ran.
fn refuse_draining(protocol: Protocol) -> Response {
    let err = ApiError::unavailable("server is shutting down");
    match protocol {
        Protocol::Rest => {
            let mut response = rest::error_response(&err);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            response
        }
        Protocol::Grpc | Protocol::GrpcWeb => tonic::Status::from(err).into_http::<Body>(),
    }
}

/// Process is up.
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Ready for traffic: not shutting down and Postgres reachable. The body
/// also says how API keys are cached (`keyInvalidation`: `subscribed` to
/// other replicas' invalidations, `unsubscribed` — lookups kept at most a
/// few seconds while the subscriber reconnects — or `single-node`).
async fn readyz(State(state): State<AppState>) -> Response {
    let keys = state.keys.invalidation().as_str();
    if state.lifecycle.draining.load(Ordering::Acquire) {
        return not_ready("draining", "server is shutting down", keys);
    }
    match tokio::time::timeout(Duration::from_secs(2), state.db.ping()).await {
        Ok(Ok(())) => axum::Json(serde_json::json!({"status": "ready", "keyInvalidation": keys}))
            .into_response(),
        Ok(Err(err)) => {
            tracing::warn!(cause = %err, "not ready");
            not_ready("unavailable", "database unavailable", keys)
        }
        Err(_) => {
            tracing::warn!(cause = "database ping timed out", "not ready");
            not_ready("unavailable", "database unavailable", keys)
        }
    }
}

fn not_ready(status: &str, message: &str, keys: &str) -> Response {
    let body = serde_json::json!({
        "message": message,
        "error": "Service Unavailable",
        "statusCode": 503,
        "status": status,
        "keyInvalidation": keys,
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

/// gRPC-Web from browsers needs CORS, including the gRPC status headers.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(Any)
        .allow_headers(Any)
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
            HeaderName::from_static("x-next-cursor"),
            header::CONTENT_DISPOSITION,
            header::RETRY_AFTER,
            REQUEST_ID,
            HeaderName::from_static(idempotency::REPLAYED),
        ])
        .max_age(Duration::from_secs(600))
}

fn make_span(request: &Request<Body>) -> Span {
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // The trace's span name stays low-cardinality: a gRPC path names the
    // RPC; a REST path may hold ids, so it is only an attribute.
    let name = match protocol(request) {
        Protocol::Grpc | Protocol::GrpcWeb => request.uri().path().to_owned(),
        Protocol::Rest => request.method().to_string(),
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        method = %request.method(),
        path = request.uri().path(),
        protocol = ?protocol(request),
        request_id,
        status = tracing::field::Empty,
        grpc_status = tracing::field::Empty,
    );
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    crate::telemetry::continue_trace(&span, header("traceparent"), header("tracestate"));
    span
}

fn on_response(response: &Response, latency: Duration, span: &Span) {
    span.record("status", response.status().as_u16());
    if let Some(code) = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        span.record("grpc_status", code);
    }
    tracing::info!(latency_ms = latency.as_secs_f64() * 1000.0, "response");
}
