//! Postgres access: the application pool, migrations, the embedded cluster
//! and one repository module per table group.
//!
//! Architecture Invariant: every request runs as `tenlyr_app`, a role that
//! owns nothing and lacks BYPASSRLS (DESIGN.md §5); only migrations run as
//! the connecting (owner) user.

pub mod admin_keys;
pub mod audit;
pub mod billing;
pub mod dedicated;
pub mod embedded;
pub mod entities;
pub mod health;
pub mod idempotency;
pub mod inbound;
pub mod isolation;
pub mod jobs;
pub mod login;
pub mod migrate;
pub mod records;
pub mod redis;
pub mod tenant_data;
pub mod tenants;
pub mod usage;
pub mod users;
pub mod webhook_settings;
pub mod webhooks;

use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr, RuntimeErr, SqlxPostgresConnector};
use sqlx::postgres::PgPoolOptions;

use self::login::AppLogin;

/// The role requests run as.
pub const APP_ROLE: &str = "tenlyr_app";

/// A pooled connection idle this long is pinged before it is handed out.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct Db {
    app: DatabaseConnection,
    placements: std::sync::Arc<tenant_data::Placements>,
    /// The tenant databases (`None` in a tenant database's own `Db`).
    dedicated: Option<std::sync::Arc<dedicated::Dedicated>>,
}

impl Db {
    /// Connects the application pool, logged in as [`APP_ROLE`]
    /// ([`AppLogin`]); every statement is bounded by `statement_timeout`.
    /// Lazy, so the server can start while Postgres is down (readiness
    /// reports it).
    pub fn connect(
        login: &AppLogin,
        pool_size: u32,
        statement_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let options = login
            .options
            .clone()
            .options([
                (
                    "statement_timeout",
                    format!("{}ms", statement_timeout.as_millis()),
                ),
                // A transaction left open by a stuck client never pins rows.
                ("idle_in_transaction_session_timeout", "60s".to_owned()),
            ])
            .application_name("tenlyr");
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(5))
            // sqlx pings every connection it hands out by default: one more
            // round trip before each transaction, on top of the ping it
            // makes when a connection comes back. A connection that was
            // just returned (and pinged) has nothing to find; one idle for
            // a while may have lost its server (a restart, a failover), so
            // only that one is pinged, and replaced if it fails. A restart
            // under load still fails the statements that were using, or
            // next take, a busy connection: each such connection once.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options);
        Ok(Self {
            app: SqlxPostgresConnector::from_sqlx_postgres_pool(pool),
            placements: Default::default(),
            dedicated: None,
        })
    }

    /// This main database, with the registry of tenant databases.
    pub fn with_dedicated(mut self, dedicated: dedicated::Dedicated) -> Self {
        self.dedicated = Some(std::sync::Arc::new(dedicated));
        self
    }

    /// The registry of tenant databases.
    pub fn dedicated(&self) -> Option<&dedicated::Dedicated> {
        self.dedicated.as_deref()
    }

    /// The database that holds the data of a tenant in `place` (this one
    /// unless it is a tenant database).
    pub async fn at(&self, place: Option<&tenant_data::Place>) -> Result<Db, DbErr> {
        match (place, &self.dedicated) {
            (Some(tenant_data::Place::Database(place)), Some(dedicated)) => dedicated
                .db(place)
                .await
                .map_err(|err| DbErr::Custom(format!("{err:#}"))),
            (Some(tenant_data::Place::Database(place)), None) => Err(DbErr::Custom(format!(
                "no tenant database registry to reach {}",
                place.name
            ))),
            _ => Ok(self.clone()),
        }
    }

    /// The database that holds `tenant`'s data, as this process last read
    /// the placements (a stale read reaches the main database, which
    /// refuses tenant-data work there with [`tenant_data::is_misrouted`]).
    pub async fn for_tenant(&self, tenant: uuid::Uuid) -> Result<Db, DbErr> {
        self.at(self.placements.place_of(tenant).as_ref()).await
    }

    /// Every place tenant data lives: each schema of this database and of
    /// every tenant database that can be reached ([`Self::data_dbs`]), with
    /// the database that holds it (platform-wide purges visit them in
    /// turn, entering each with [`tenant_data::enter_schema`]).
    pub async fn data_places(&self) -> Result<Vec<(Db, String)>, DbErr> {
        let mut places = Vec::new();
        for db in self.data_dbs().await? {
            let tx = db.begin(tenant_data::Scope::Platform).await?;
            let schemas = tenant_data::data_schemas(&tx).await?;
            tx.commit().await?;
            places.extend(schemas.into_iter().map(|schema| (db.clone(), schema)));
        }
        Ok(places)
    }

    /// This database and every tenant database that can be reached
    /// (platform-wide purges and reads; one that cannot is logged and left
    /// for the next run), after reading the placements again.
    pub async fn data_dbs(&self) -> Result<Vec<Db>, DbErr> {
        let mut all = vec![self.clone()];
        if self.dedicated.is_none() {
            return Ok(all);
        }
        self.placements
            .refresh(self.pool())
            .await
            .map_err(|err| DbErr::Custom(err.to_string()))?;
        for place in self.placements.databases() {
            match self.at(Some(&tenant_data::Place::Database(place))).await {
                Ok(db) => all.push(db),
                Err(err) => tracing::warn!(error = %err, "a tenant database is unreachable"),
            }
        }
        Ok(all)
    }

    /// Where tenants' data lives, as this process last read it.
    pub fn placements(&self) -> &tenant_data::Placements {
        &self.placements
    }

    pub fn app(&self) -> &DatabaseConnection {
        &self.app
    }

    /// The sqlx pool under the SeaORM connection, for statements SeaORM
    /// cannot express (array binds, COPY).
    pub fn pool(&self) -> &sqlx::PgPool {
        self.app.get_postgres_connection_pool()
    }

    pub async fn ping(&self) -> Result<(), DbErr> {
        self.app.ping().await
    }

    pub async fn close(&self) {
        if let Some(dedicated) = &self.dedicated {
            Box::pin(dedicated.close()).await;
        }
        if let Err(err) = self.app.close_by_ref().await {
            tracing::warn!(error = %err, "closing the database pool failed");
        }
    }
}

/// Deletes up to `chunk` rows of `table` whose `expires_at` passed, oldest
/// first, in `tx` (platform scope for tenant tables); how many. For the
/// time-bound tables (records, idempotency keys), which are not
/// partitioned, so a row's `ctid` names it.
pub async fn purge_expired(
    tx: &sea_orm::DatabaseTransaction,
    table: &'static str,
    now: chrono::DateTime<chrono::Utc>,
    chunk: i64,
) -> Result<u64, DbErr> {
    use sea_orm::ConnectionTrait as _;
    let result = tx
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            format!(
                "DELETE FROM {table} WHERE ctid = ANY(ARRAY( \
                     SELECT ctid FROM {table} WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2))"
            ),
            [now.into(), chunk.into()],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// A raw PostgreSQL statement for SeaORM's `execute_raw`/`query_*_raw`.
pub(crate) fn statement(
    sql: impl Into<String>,
    values: impl IntoIterator<Item = sea_orm::Value>,
) -> sea_orm::Statement {
    sea_orm::Statement::from_sql_and_values(sea_orm::DatabaseBackend::Postgres, sql, values)
}

/// The sqlx error under a SeaORM statement error, if that is what it is.
pub fn sqlx_error(err: &DbErr) -> Option<&sqlx::Error> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

/// The SQLSTATE of a statement error PostgreSQL raised, if it is one.
pub fn sqlstate(err: &DbErr) -> Option<String> {
    sqlx_error(err)?
        .as_database_error()?
        .code()
        .map(|code| code.into_owned())
}

/// Whether an error means "Postgres unreachable" (503) rather than a bug.
pub fn is_connection_error(err: &DbErr) -> bool {
    matches!(err, DbErr::ConnectionAcquire(_) | DbErr::Conn(_))
        || sqlx_error(err).is_some_and(is_sqlx_unavailable)
}

/// [`is_connection_error`] for statements run on the sqlx pool.
/// Besides I/O and pool errors, the server's own "shutting down",
/// "starting up" and connection-exception codes (57P0x, 08xxx) count, and
/// a database that does not exist (3D000: a terminated tenant's, dropped
/// while another replica's placement cache still named it).
pub fn is_sqlx_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("57P0") || c.starts_with("08") || c == "3D000"),
        _ => false,
    }
}
