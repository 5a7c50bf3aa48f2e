//! Logging: JSON or pretty lines on stderr (stdout is reserved for output a
//! script reads, such as a newly created admin key); and, when
//! `TENLYR_OTLP_ENDPOINT` is set, the same spans exported as OpenTelemetry
//! traces over OTLP/HTTP (protobuf) — each request's span with its method,
//! path, protocol, status and request id as attributes.

use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_proto::{
    tonic::collector::trace::v1::ExportTraceServiceRequest,
    transform::{
        common::tonic::ResourceAttributesWithSchema,
        trace::tonic::group_spans_by_resource_and_scope,
    },
};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use prost::Message as _;
use tracing_subscriber::{EnvFilter, Layer as _, filter::LevelFilter, fmt, prelude::*};

use crate::config::{LogConfig, LogFormat};

/// What `init` set up that must be flushed at exit.
#[must_use = "call shutdown() at exit so the last spans are exported"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (at most a few seconds).
    pub async fn shutdown(self) {
        if let Some(provider) = self.tracer {
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(err)) = done {
                tracing::warn!(error = %err, "exporting the last traces failed");
            }
        }
    }
}

pub fn init(config: &LogConfig) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_new(&config.log)
        .map_err(|err| anyhow::anyhow!("TENLYR_LOG is not a valid filter: {err}"))?;
    let logs = match config.log_format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        // Colours only for a terminal: a log file or collector gets plain text.
        LogFormat::Pretty => fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let tracer = config
        .otlp_endpoint
        .as_deref()
        .map(|endpoint| tracer_provider(endpoint, &config.otlp_service_name))
        .transpose()?;
    // Traces keep request spans whatever the log filter says (a quiet log
    // must not blind the traces).
    let traces = tracer.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tenlyr"))
            .with_filter(LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()?;
    Ok(Telemetry { tracer })
}

fn tracer_provider(endpoint: &str, service: &str) -> anyhow::Result<SdkTracerProvider> {
    let base = url::Url::parse(endpoint)
        .map_err(|err| anyhow::anyhow!("TENLYR_OTLP_ENDPOINT is not a URL: {err}"))?;
    anyhow::ensure!(
        matches!(base.scheme(), "http" | "https"),
        "TENLYR_OTLP_ENDPOINT must be an http(s) URL (OTLP/HTTP, e.g. http://127.0.0.1:4318)"
    );
    let url = format!("{}/v1/traces", base.as_str().trim_end_matches('/'));
    let exporter = OtlpHttp {
        // Under the SDK's 5 s shutdown wait, so the last flush can finish.
        client: reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(4))
            .build()?,
        url,
        runtime: tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("trace export needs the Tokio runtime"))?,
        resource: ResourceAttributesWithSchema::default(),
        last_warned: std::sync::atomic::AtomicI64::new(i64::MIN),
    };
    Ok(SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .with_batch_exporter(exporter)
        .build())
}

/// Makes `span` a child of the caller's trace when it sent W3C Trace Context
/// (`traceparent`, and `tracestate`), so a client's trace continues through
/// the server. Without trace export this does nothing.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    struct Carrier<'a>(Option<&'a str>, Option<&'a str>);
    impl Extractor for Carrier<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => self.0,
                "tracestate" => self.1,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    if traceparent.is_none() {
        return;
    }
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&Carrier(traceparent, tracestate));
    // Fails only when no trace layer is installed: nothing to continue.
    let _ = span.set_parent(parent);
}

/// OTLP/HTTP with protobuf bodies (`POST <endpoint>/v1/traces`), the
/// transport every collector accepts.
struct OtlpHttp {
    client: reqwest::Client,
    url: String,
    /// The batch processor calls `export` from its own thread; the request
    /// runs on the server's runtime.
    runtime: tokio::runtime::Handle,
    resource: ResourceAttributesWithSchema,
    /// When a failed export was last logged (unix seconds): once a minute.
    last_warned: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for OtlpHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpHttp").field("url", &self.url).finish()
    }
}

impl SpanExporter for OtlpHttp {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let body = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
        }
        .encode_to_vec();
        let request = self
            .client
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body);
        let sent = self
            .runtime
            .spawn(async move { request.send().await?.error_for_status() })
            .await;
        let failure = match sent {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(err)) => format!("OTLP export failed: {err}"),
            Err(err) => err.to_string(),
        };
        // The SDK drops the batch; say so, at most once a minute.
        let now = chrono::Utc::now().timestamp();
        let last = self.last_warned.load(std::sync::atomic::Ordering::Relaxed);
        if now - last >= 60
            && self
                .last_warned
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(url = %self.url, error = %failure, "trace export failed; spans dropped");
        }
        Err(OTelSdkError::InternalFailure(failure))
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}
