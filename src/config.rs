//! One typed configuration: command-line flags, each with an environment
//! variable, over defaults. Loaded and validated at boot.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Where the data lives: shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// PostgreSQL URL. Unset: a private cluster is started under the data
    /// directory from the system's PostgreSQL binaries.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory for the embedded PostgreSQL cluster and the generated key
    /// pepper.
    #[arg(long, env = "TENLYR_DATA_DIR", default_value = ".tenlyr")]
    pub data_dir: PathBuf,

    /// Secret mixed into every API key digest (HMAC-SHA256). Unset: one is
    /// generated once into `<data dir>/key-pepper`. Replicas must share it.
    #[arg(long, env = "TENLYR_KEY_PEPPER", hide_env_values = true)]
    pub key_pepper: Option<String>,

    /// Key that seals secrets at rest (webhook endpoint secrets): any
    /// string of at least 32 characters (its SHA-256 is the AES-256 key).
    /// Unset: one is generated once into `<data dir>/secrets-key`.
    /// Replicas must share it.
    #[arg(long, env = "TENLYR_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,

    /// Connections in the application pool.
    #[arg(long, env = "TENLYR_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// How the application pool logs in: a URL for a LOGIN role with the
    /// rights of `tenlyr_app` (a member of it, or `tenlyr_app` itself).
    /// Unset: `DATABASE_URL` as `tenlyr_app`, with a password derived from
    /// the key pepper that the server sets when it migrates.
    #[arg(long, env = "TENLYR_APP_DATABASE_URL", hide_env_values = true)]
    pub app_database_url: Option<String>,

    /// Servers for tenants in the `dedicated_database` tier, each tenant's
    /// data in its own database there: owner URLs (a user that may create
    /// databases), comma-separated; a new tenant database goes to the one
    /// holding the fewest. Unset: the main server.
    #[arg(
        long,
        env = "TENLYR_DEDICATED_DATABASE_URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub dedicated_database_urls: Vec<String>,

    /// Longest a single SQL statement of a request or worker may run, in
    /// milliseconds.
    #[arg(long, env = "TENLYR_STATEMENT_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub statement_timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address for gRPC, gRPC-Web and REST, all on one port.
    #[arg(long, env = "TENLYR_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Redis URL; optional (in-process equivalents serve a single node).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Largest accepted REST request body, in bytes.
    #[arg(long, env = "TENLYR_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Seconds between SIGTERM/SIGINT and closing the listener, during
    /// which `/readyz` answers 503 but requests are still served, so a
    /// load balancer stops routing here before connections are refused
    /// (5-10 s behind one; 0 serves nothing more).
    #[arg(long, env = "TENLYR_SHUTDOWN_DELAY_SECS", default_value_t = 0)]
    pub shutdown_delay_secs: u64,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "TENLYR_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Hours an idempotent record (`/v1/record`) is kept after it was
    /// saved.
    #[arg(long, env = "TENLYR_RECORD_RETENTION_HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(1..=8760))]
    pub record_retention_hours: u32,

    /// Requests a minute each tenant's keys may make when the tenant has no
    /// throttle of its own (an admin's `POST /api/v1/health/{tenantId}/throttle`
    /// overrides it); 0: no default limit. Each limited request costs a
    /// Redis call (with Redis), so it is off unless set.
    #[arg(long, env = "TENLYR_DEFAULT_RATE_LIMIT_RPM", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub default_rate_limit_rpm: u32,

    /// MiB of saved idempotent records each replica keeps in memory to
    /// answer gets and repeated locks without the database (a saved record
    /// never changes); 0 turns it off.
    #[arg(long, env = "TENLYR_RECORD_CACHE_MB", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(0..=65_536))]
    pub record_cache_mb: u32,

    /// Seconds after a tenant is terminated before its data (and its own
    /// schema or database) is purged: the billing sync pushes its last
    /// usage first, and writes still in flight land before, not after.
    #[arg(long, env = "TENLYR_TERMINATED_PURGE_DELAY_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u32).range(0..=31_536_000))]
    pub terminated_purge_delay_secs: u32,

    /// Minutes a Backoffice session lives without a request.
    #[arg(long, env = "TENLYR_SESSION_IDLE_MINUTES", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=1440))]
    pub session_idle_minutes: u32,

    /// Hours a Backoffice session lives at most after sign-in.
    #[arg(long, env = "TENLYR_SESSION_MAX_HOURS", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(1..=720))]
    pub session_max_hours: u32,

    /// Hours an invite link stays valid (reset links: one hour).
    #[arg(long, env = "TENLYR_INVITE_TTL_HOURS", default_value_t = 72,
          value_parser = clap::value_parser!(u32).range(1..=720))]
    pub invite_ttl_hours: u32,

    /// bcrypt's cost factor for Backoffice passwords (each step doubles
    /// the work; 12 takes ~250 ms on one core).
    #[arg(long, env = "TENLYR_BCRYPT_COST", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// Rows an isolation move copies (and, after the flip, deletes) per
    /// transaction.
    #[arg(long, env = "TENLYR_ISOLATION_CHUNK_ROWS", default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    pub isolation_chunk_rows: u32,

    /// Milliseconds an isolation move pauses between chunks, to spare a
    /// busy database (0: none). Writes never wait for it: only the short
    /// barrier makes them wait.
    #[arg(long, env = "TENLYR_ISOLATION_PAUSE_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub isolation_pause_ms: u64,

    /// Job runners in this process (each claims up to 32 jobs at a time).
    #[arg(long, env = "TENLYR_JOB_RUNNERS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub job_runners: u32,

    /// Days of raw usage events kept (whole day partitions are dropped);
    /// rollups are kept.
    #[arg(long, env = "TENLYR_USAGE_RETENTION_DAYS", default_value_t = 90,
          value_parser = clap::value_parser!(u32).range(3..))]
    pub usage_retention_days: u32,

    /// Address ranges outbound webhooks may reach although the SSRF guard
    /// refuses them (loopback, private …), comma-separated CIDRs, e.g.
    /// `10.0.0.0/8` when self-hosting; empty by default.
    #[arg(long, env = "TENLYR_WEBHOOK_ALLOWED_CIDRS", value_delimiter = ',')]
    pub webhook_allowed_cidrs: Vec<ipnet::IpNet>,

    /// Seconds one webhook delivery attempt may take, connection to last
    /// byte.
    #[arg(long, env = "TENLYR_WEBHOOK_TIMEOUT_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=120))]
    pub webhook_timeout_secs: u64,

    /// Webhook requests in flight at most, per process.
    #[arg(long, env = "TENLYR_WEBHOOK_CONCURRENCY", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub webhook_concurrency: u32,

    /// Hosts PayPal webhook certificates (`PAYPAL-CERT-URL`) may be
    /// fetched from over https, comma-separated patterns (`*.paypal.com`);
    /// an entry that is a whole origin (`http://127.0.0.1:9000`) allows
    /// that origin as written (tests).
    #[arg(
        long,
        env = "TENLYR_PAYPAL_CERT_HOSTS",
        value_delimiter = ',',
        default_value = "*.paypal.com"
    )]
    pub paypal_cert_hosts: Vec<String>,

    /// A PEM file of the CAs PayPal certificates must chain to; unset:
    /// the system's roots.
    #[arg(long, env = "TENLYR_PAYPAL_CA_FILE")]
    pub paypal_ca_file: Option<std::path::PathBuf>,

    /// Days platform events (with their deliveries and attempts) are kept
    /// once every delivery finished, and inbound webhook events (with their
    /// dedup keys and payloads).
    #[arg(long, env = "TENLYR_EVENT_RETENTION_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub event_retention_days: u32,

    /// Seconds between health scans (one replica per tick).
    #[arg(long, env = "TENLYR_HEALTH_INTERVAL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub health_interval_secs: u64,

    /// Seconds between alert checks (one replica per tick).
    #[arg(long, env = "TENLYR_ALERT_INTERVAL_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub alert_interval_secs: u64,

    /// The server's public base URL (e.g. `https://api.example.com`), for
    /// the inbound webhook URLs the settings show. Unset: they are paths.
    #[arg(long, env = "TENLYR_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Stripe's API base URL (a Stripe-compatible server in tests).
    #[arg(
        long,
        env = "TENLYR_STRIPE_API_BASE",
        default_value = "https://api.stripe.com"
    )]
    pub stripe_api_base: String,

    /// Stripe secret key. Unset: no sync (billing still computes MRR and
    /// usage cost; its status stays `not_synced`).
    #[arg(long, env = "TENLYR_STRIPE_SECRET_KEY", hide_env_values = true)]
    pub stripe_secret_key: Option<String>,

    /// Signing secret of Stripe's webhooks to the platform (`whsec_…`).
    /// Unset: the Stripe webhook route refuses every call.
    #[arg(long, env = "TENLYR_STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,

    /// Seconds between billing syncs (one replica per tick).
    #[arg(long, env = "TENLYR_BILLING_SYNC_INTERVAL_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub billing_sync_interval_secs: u64,

    /// Cents per unit of usage beyond what a plan includes, per metric:
    /// `api_call=0.01,storage_gb=25,seats=500,compute=2` (the defaults).
    #[arg(long, env = "TENLYR_OVERAGE_PRICES", default_value = "")]
    pub overage_prices: crate::domain::billing::OveragePrices,

    #[command(flatten)]
    pub storage: StorageConfig,
}

#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// Log format on stderr.
    #[arg(
        long,
        env = "TENLYR_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "TENLYR_LOG", default_value = "info", global = true)]
    pub log: String,

    /// OpenTelemetry collector for trace export over OTLP/HTTP (protobuf),
    /// e.g. `http://127.0.0.1:4318`; spans go to `<endpoint>/v1/traces`.
    /// Unset: no export. The SDK's `OTEL_BSP_*` variables tune batching.
    #[arg(long, env = "TENLYR_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,

    /// `service.name` of the exported traces.
    #[arg(
        long,
        env = "TENLYR_OTLP_SERVICE_NAME",
        default_value = "tenlyr",
        global = true
    )]
    pub otlp_service_name: String,
}
