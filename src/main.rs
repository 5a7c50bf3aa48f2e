#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use tenlyr::{
    app::{self, Database},
    config::{LogConfig, ServeConfig, StorageConfig},
    domain::user::Role,
    service::users::{self, UserSettings},
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
    /// Add a Backoffice user (the first super admin of a new
    /// installation). Prints the one-time invite link on stdout, or, with
    /// `--password-stdin`, sets the password read from stdin and prints
    /// nothing.
    CreateUser {
        #[arg(long)]
        email: String,
        /// super_admin, admin, owner, developer or viewer.
        #[arg(long)]
        role: String,
        /// The tenant of a tenant role.
        #[arg(long)]
        tenant_id: Option<uuid::Uuid>,
        /// Read the password from stdin (one line) instead of printing an
        /// invite link.
        #[arg(long)]
        password_stdin: bool,
        /// The server's public base URL, for the invite link.
        #[arg(long, env = "TENLYR_PUBLIC_URL")]
        public_url: Option<String>,
        #[arg(long, env = "TENLYR_BCRYPT_COST", default_value_t = 12,
              value_parser = clap::value_parser!(u32).range(4..=31))]
        bcrypt_cost: u32,
        #[command(flatten)]
        storage: StorageConfig,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = telemetry::init(&cli.log)?;
    let result = run(cli.command).await;
    telemetry.shutdown().await;
    result
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
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
        Command::Admin {
            command:
                AdminCommand::CreateUser {
                    email,
                    role,
                    tenant_id,
                    password_stdin,
                    public_url,
                    bcrypt_cost,
                    storage,
                },
        } => {
            let role = Role::parse(&role).with_context(|| {
                format!("--role {role:?}: one of super_admin, admin, owner, developer, viewer")
            })?;
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the password from stdin")?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                None
            };
            let settings = UserSettings {
                lifetimes: Default::default(),
                login_limit: Default::default(),
                bcrypt_cost,
                public_url,
            };
            with_database(&storage.clone(), |url| async move {
                let (db, hasher) = app::connect(&storage, &url, 1).await?;
                let created = users::create_from_cli(
                    &db,
                    &hasher,
                    &settings,
                    &email,
                    role,
                    tenant_id,
                    password.as_deref(),
                )
                .await;
                db.close().await;
                let (user, link) = created?;
                tracing::info!(user = %user.id, role = role.as_str(), "user created");
                if let Some(link) = link {
                    println!("{}", link.url);
                }
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
