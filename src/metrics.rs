//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4).
//!
//! Counters and histograms live here as atomics, updated where the work
//! happens (the request layer, the dispatcher, the ingest committers);
//! gauges that describe state (queue depths, pool use, breaker states, job
//! queue depth) are read when scraped. One [`Metrics`] per server: tests
//! run several servers in one process, each with its own figures.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Upper bounds of the commit-size buckets, in events.
const SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 4000.0];

/// A histogram with fixed buckets; the sum kept in micro-units.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    /// Writes `<name>_bucket`, `_sum` and `_count` lines with `labels`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {count}", braces(labels));
    }
}

/// One RPC's histograms by protocol and gRPC code (both static names).
#[derive(Debug, Default)]
pub struct RpcStats {
    by_outcome: RwLock<HashMap<(&'static str, &'static str), Histogram>>,
}

impl RpcStats {
    /// One finished call.
    pub fn observe(&self, protocol: &'static str, code: &'static str, latency: Duration) {
        let key = (protocol, code);
        if let Some(h) = self.by_outcome.read().expect("metrics").get(&key) {
            h.observe(latency.as_secs_f64());
            return;
        }
        self.by_outcome
            .write()
            .expect("metrics")
            .entry(key)
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
            .observe(latency.as_secs_f64());
    }
}

/// The label of calls to paths that name no known RPC (so a client
/// inventing paths cannot grow the set of series).
pub const UNKNOWN_RPC: &str = "unknown";

/// Delivery attempt outcomes, as the dispatcher records them.
pub const OUTCOMES: [&str; 4] = ["delivered", "retry", "failed", "gone"];

#[derive(Debug)]
pub struct Metrics {
    /// Every known RPC (`package.Service/Method`), fixed at start-up.
    rpcs: HashMap<String, RpcStats>,
    unknown_rpc: RpcStats,
    /// REST requests refused before any RPC ran (no route, bad JSON, too
    /// large), by HTTP status.
    rest_refused: RwLock<HashMap<u16, AtomicU64>>,
    /// Inbound webhooks by provider and outcome.
    inbound: RwLock<HashMap<(&'static str, &'static str), AtomicU64>>,
    deliveries: [AtomicU64; OUTCOMES.len()],
    ingest_commit_sizes: Histogram,
}

impl Default for Metrics {
    /// No known RPC: every call counts as [`UNKNOWN_RPC`].
    fn default() -> Self {
        Self::new(std::iter::empty())
    }
}

impl Metrics {
    /// Metrics for a server whose RPCs are `rpcs` (`package.Service/Method`).
    pub fn new(rpcs: impl IntoIterator<Item = String>) -> Self {
        Self {
            rpcs: rpcs
                .into_iter()
                .map(|rpc| (rpc, RpcStats::default()))
                .collect(),
            unknown_rpc: RpcStats::default(),
            rest_refused: RwLock::default(),
            inbound: RwLock::default(),
            deliveries: Default::default(),
            ingest_commit_sizes: Histogram::new(&SIZE_BUCKETS),
        }
    }
}

/// Escapes a label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// The histograms of the RPC at `path` (`/package.Service/Method`, or
    /// without the slash); [`UNKNOWN_RPC`]'s for any other path.
    pub fn rpc(&self, path: &str) -> &RpcStats {
        self.rpcs
            .get(path.trim_start_matches('/'))
            .unwrap_or(&self.unknown_rpc)
    }

    pub fn rest_refused(&self, status: u16) {
        if let Some(c) = self.rest_refused.read().expect("metrics").get(&status) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.rest_refused
            .write()
            .expect("metrics")
            .entry(status)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One inbound webhook: its provider and what became of it (`logged`,
    /// `duplicate`, `queued`, `invalid_signature`, …).
    pub fn inbound(&self, provider: &'static str, outcome: &'static str) {
        let key = (provider, outcome);
        if let Some(c) = self.inbound.read().expect("metrics").get(&key) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inbound
            .write()
            .expect("metrics")
            .entry(key)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One delivery attempt; `outcome` one of [`OUTCOMES`].
    pub fn delivery(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.deliveries[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn ingest_commit(&self, events: usize) {
        self.ingest_commit_sizes.observe(events as f64);
    }

    /// The counters and histograms kept here, then `gauges` (read by the
    /// caller from live state).
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str(
            "# HELP tenlyr_rpc_duration_seconds RPCs by method, protocol (grpc, grpc_web, rest) and gRPC status code.\n\
             # TYPE tenlyr_rpc_duration_seconds histogram\n",
        );
        let mut rpcs: Vec<(&str, &RpcStats)> =
            self.rpcs.iter().map(|(k, v)| (k.as_str(), v)).collect();
        rpcs.sort_by_key(|(name, _)| *name);
        rpcs.push((UNKNOWN_RPC, &self.unknown_rpc));
        for (rpc, stats) in rpcs {
            let by_outcome = stats.by_outcome.read().expect("metrics");
            let mut keys: Vec<_> = by_outcome.keys().collect();
            keys.sort();
            for key in keys {
                let labels = format!(
                    "rpc=\"{}\",protocol=\"{}\",code=\"{}\"",
                    label(rpc),
                    key.0,
                    key.1
                );
                by_outcome[key].render(&mut out, "tenlyr_rpc_duration_seconds", &labels);
            }
        }
        out.push_str(
            "# HELP tenlyr_rest_refused_total REST requests refused before any RPC ran, by HTTP status.\n\
             # TYPE tenlyr_rest_refused_total counter\n",
        );
        let refused = self.rest_refused.read().expect("metrics");
        let mut statuses: Vec<_> = refused.iter().collect();
        statuses.sort_by_key(|(s, _)| **s);
        for (status, count) in statuses {
            let _ = writeln!(
                out,
                "tenlyr_rest_refused_total{{status=\"{status}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        drop(refused);
        out.push_str(
            "# HELP tenlyr_inbound_webhooks_total Inbound provider webhooks by provider and outcome.\n\
             # TYPE tenlyr_inbound_webhooks_total counter\n",
        );
        let inbound = self.inbound.read().expect("metrics");
        let mut rows: Vec<_> = inbound.iter().collect();
        rows.sort_by_key(|(k, _)| **k);
        for ((provider, outcome), count) in rows {
            let _ = writeln!(
                out,
                "tenlyr_inbound_webhooks_total{{provider=\"{provider}\",outcome=\"{outcome}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        drop(inbound);
        out.push_str(
            "# HELP tenlyr_webhook_attempts_total Webhook delivery attempts by outcome.\n\
             # TYPE tenlyr_webhook_attempts_total counter\n",
        );
        for (outcome, count) in OUTCOMES.iter().zip(&self.deliveries) {
            let _ = writeln!(
                out,
                "tenlyr_webhook_attempts_total{{outcome=\"{outcome}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP tenlyr_ingest_commit_events Usage events per ingest commit.\n\
             # TYPE tenlyr_ingest_commit_events histogram\n",
        );
        self.ingest_commit_sizes
            .render(&mut out, "tenlyr_ingest_commit_events", "");
        let mut last = "";
        for g in gauges {
            if g.name != last {
                let _ = writeln!(out, "# HELP {} {}", g.name, g.help);
                let _ = writeln!(out, "# TYPE {} {}", g.name, g.kind);
                last = g.name;
            }
            let labels: Vec<String> = g
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            if labels.is_empty() {
                let _ = writeln!(out, "{} {}", g.name, g.value);
            } else {
                let _ = writeln!(out, "{}{{{}}} {}", g.name, labels.join(","), g.value);
            }
        }
        out
    }
}

/// A value read at scrape time (consecutive samples of one name share
/// their HELP and TYPE lines).
#[derive(Debug, Clone)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

impl Gauge {
    pub fn new(name: &'static str, help: &'static str, value: f64) -> Self {
        Self {
            name,
            help,
            kind: "gauge",
            labels: Vec::new(),
            value,
        }
    }

    pub fn counter(mut self) -> Self {
        self.kind = "counter";
        self
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((name, value.into()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let m = Metrics::new(["tenlyr.v1.TenantService/GetTenant".to_owned()]);
        let rpc = m.rpc("/tenlyr.v1.TenantService/GetTenant");
        rpc.observe("rest", "OK", Duration::from_millis(3));
        rpc.observe("rest", "OK", Duration::from_millis(30));
        m.rpc("/made.up.Service/Anything")
            .observe("grpc", "UNIMPLEMENTED", Duration::ZERO);
        m.rpc("/made.up.Service/Other")
            .observe("grpc", "UNIMPLEMENTED", Duration::ZERO);
        m.rest_refused(404);
        let text = m.render(&[Gauge::new("tenlyr_x", "x", 1.0).with("k", "a\"b")]);
        assert!(text.contains(
            "tenlyr_rpc_duration_seconds_bucket{rpc=\"tenlyr.v1.TenantService/GetTenant\",protocol=\"rest\",code=\"OK\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "tenlyr_rpc_duration_seconds_bucket{rpc=\"tenlyr.v1.TenantService/GetTenant\",protocol=\"rest\",code=\"OK\",le=\"0.05\"} 2"
        ));
        assert!(text.contains("tenlyr_rest_refused_total{status=\"404\"} 1"));
        // Invented paths share one series.
        assert!(text.contains(
            "tenlyr_rpc_duration_seconds_count{rpc=\"unknown\",protocol=\"grpc\",code=\"UNIMPLEMENTED\"} 2"
        ));
        assert!(!text.contains("made.up"));
        assert!(text.contains("tenlyr_x{k=\"a\\\"b\"} 1"));
    }
}
