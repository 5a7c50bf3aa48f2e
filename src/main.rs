#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use tenlyr::{
    app::{self, Database},
    config::{LogConfig, ServeConfig, StorageConfig},
    storage::admin_keys,
    telemetry,
};

/// mimalloc instead of the system allocator: glibc's malloc and free took
/// ~7.5 % of all CPU on single tracks (the server allocates per request and
/// frees on another worker thread), mimalloc ~4.5 % (perf, same load).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tenlyr: the multi-tenant control plane.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    log: LogConfig,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC, gRPC-Web and REST on one port (migrates first).
    Serve(Box<ServeConfig>),
    /// Apply pending database migrations and exit.
    Migrate(StorageConfig),
    /// Print the REST API's OpenAPI 3.1 document (also served at
    /// `GET /openapi.json`).
    Openapi,
    /// Admin key management.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin key and print it (only it) on stdout.
    CreateKey {
        /// What the key is for, e.g. `ops-laptop`.
        #[arg(long)]
        label: String,
        #[command(flatten)]
        storage: StorageConfig,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(&cli.log)?;
    match cli.command {
        Command::Serve(config) => app::serve(*config).await,
        Command::Openapi => {
            let doc = tenlyr::transport::openapi_document()?;
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
        Command::Migrate(storage) => {
            with_database(&storage.clone(), |url| async move {
                let (db, _) = app::connect(&storage, &url, 1).await?;
                db.close().await;
                tracing::info!("migrations up to date");
                Ok(())
            })
            .await
        }
        Command::Admin {
            command: AdminCommand::CreateKey { label, storage },
        } => {
            anyhow::ensure!(
                (1..=100).contains(&label.chars().count()),
                "--label must be 1 to 100 characters"
            );
            with_database(&storage.clone(), |url| async move {
                let (db, hasher) = app::connect(&storage, &url, 1).await?;
                let key = admin_keys::create(db.app(), &hasher, &label)
                    .await
                    .context("creating the admin key")?;
                db.close().await;
                println!("{key}");
                Ok(())
            })
            .await
        }
    }
}

/// Runs `work` against the configured database, starting (and afterwards
/// stopping) the embedded cluster if that is what is configured and it is
/// not already running.
async fn with_database<F, Fut>(storage: &StorageConfig, work: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let database = Database::open(storage, false).await?;
    let result = work(database.url.clone()).await;
    database.close().await;
    result
}
