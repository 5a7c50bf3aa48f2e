//! Tenants' own databases (the `dedicated_database` tier, DESIGN.md §10).
//!
//! A tenant in that tier has a database `tenlyr_t_<id>` on one of the
//! servers `TENLYR_DEDICATED_DATABASE_URLS` names (owner URLs; default: the
//! main server). It gets every migration, like the main database, and
//! holds the tenant's data tables and a mirror of its tenant row. This
//! registry creates and drops those databases and keeps one pool per
//! database, opened on first use (migrations applied then, so an upgraded
//! server brings every tenant database along) and holding no connection
//! while idle.
//!
//! A placement names its server by its URL without the password
//! ([`server_key`]), so no credential is stored in the database and an
//! operator can rotate one by changing the configuration.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use sqlx::Connection;
use uuid::Uuid;

use super::{Db, login::AppLogin, migrate, tenant_data::DatabasePlace};
use crate::domain::keys::KeyHasher;

/// One configured server.
#[derive(Clone)]
struct Server {
    key: Arc<str>,
    url: url::Url,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

/// The registry of tenant databases and their pools.
pub struct Dedicated {
    servers: Vec<Server>,
    hasher: Arc<KeyHasher>,
    pool_size: u32,
    statement_timeout: Duration,
    /// One cell per database: the map's lock is held only to find the
    /// cell, so opening (and migrating) one database never holds up the
    /// others, nor does one whose server does not answer.
    pools: Mutex<HashMap<DatabasePlace, Arc<tokio::sync::OnceCell<Db>>>>,
    /// Databases this process brought up to date (migrations applied).
    ready: Mutex<std::collections::HashSet<DatabasePlace>>,
}

impl std::fmt::Debug for Dedicated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedicated")
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// A server's name in placements: its URL without password, database or
/// parameters (`postgres://user@host:port`).
pub fn server_key(url: &url::Url) -> String {
    let user = if url.username().is_empty() {
        String::new()
    } else {
        format!("{}@", url.username())
    };
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{user}{}{port}",
        url.scheme(),
        url.host_str().unwrap_or("")
    )
}

/// The database of a tenant.
pub fn database_of(tenant: Uuid) -> String {
    format!("tenlyr_t_{}", tenant.simple())
}

impl Dedicated {
    /// `urls`: owner URLs of the servers (their database part names where
    /// to connect to create databases, `postgres` if absent). Empty: the
    /// main server (`main_url`).
    pub fn new(
        urls: &[String],
        main_url: &str,
        hasher: Arc<KeyHasher>,
        pool_size: u32,
        statement_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let list: Vec<&str> = if urls.is_empty() {
            vec![main_url]
        } else {
            urls.iter().map(String::as_str).collect()
        };
        let servers = list
            .into_iter()
            .map(|raw| {
                let url = url::Url::parse(raw).map_err(|err| {
                    anyhow::anyhow!(
                        "TENLYR_DEDICATED_DATABASE_URLS holds a URL that does not parse: {err}"
                    )
                })?;
                Ok(Server {
                    key: server_key(&url).into(),
                    url,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            servers,
            hasher,
            pool_size,
            statement_timeout,
            pools: Default::default(),
            ready: Default::default(),
        })
    }

    /// The configured servers' keys.
    pub fn server_keys(&self) -> impl Iterator<Item = &str> {
        self.servers.iter().map(|s| &*s.key)
    }

    fn server(&self, key: &str) -> anyhow::Result<&Server> {
        self.servers
            .iter()
            .find(|s| &*s.key == key)
            .with_context(|| {
                format!(
                    "the database server {key} is not among TENLYR_DEDICATED_DATABASE_URLS \
                     (a tenant's data lives there)"
                )
            })
    }

    /// The owner URL of `place`'s database.
    fn owner_url(&self, place: &DatabasePlace) -> anyhow::Result<url::Url> {
        let mut url = self.server(&place.server)?.url.clone();
        url.set_path(&format!("/{}", place.name));
        Ok(url)
    }

    /// Creates the database of `place` if it does not exist, and applies
    /// the migrations to it. Idempotent.
    pub async fn create(&self, place: &DatabasePlace) -> anyhow::Result<()> {
        let server = self.server(&place.server)?;
        let mut admin = server.url.clone();
        if admin.path().len() <= 1 {
            admin.set_path("/postgres");
        }
        let mut conn = sqlx::PgConnection::connect(admin.as_str())
            .await
            .with_context(|| format!("connecting to {}", server.key))?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                .bind(&*place.name)
                .fetch_optional(&mut conn)
                .await?;
        if exists.is_none() {
            // The name is ours (tenlyr_t_ and hex), quoted all the same.
            let created = sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE \"{}\"",
                place.name
            )))
            .execute(&mut conn)
            .await;
            if let Err(err) = created
                && !err.to_string().contains("already exists")
            {
                return Err(err).context("creating a tenant database");
            }
        }
        let _ = conn.close().await;
        self.migrate(place).await
    }

    /// Applies pending migrations to `place`'s database, once per process.
    async fn migrate(&self, place: &DatabasePlace) -> anyhow::Result<()> {
        if self.is_ready(place) {
            return Ok(());
        }
        let url = self.owner_url(place)?;
        migrate::run(url.as_str())
            .await
            .with_context(|| format!("applying migrations to {}", place.name))?;
        AppLogin::new(url.as_str(), None, &self.hasher)?
            .grant(url.as_str())
            .await?;
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(place.clone());
        Ok(())
    }

    fn is_ready(&self, place: &DatabasePlace) -> bool {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(place)
    }

    /// The pool of `place`'s database, opened (and the database migrated)
    /// on first use.
    pub async fn db(&self, place: &DatabasePlace) -> anyhow::Result<Db> {
        let cell = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(place.clone())
            .or_default()
            .clone();
        // A failed open leaves the cell empty: the next call tries again.
        cell.get_or_try_init(|| async {
            self.migrate(place).await?;
            let url = self.owner_url(place)?;
            let login = AppLogin::new(url.as_str(), None, &self.hasher)?;
            Db::connect(&login, self.pool_size, self.statement_timeout)
        })
        .await
        .cloned()
    }

    /// The opened pools, taken out of the registry.
    fn take(&self, place: Option<&DatabasePlace>) -> Vec<Db> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let cells: Vec<_> = match place {
            Some(place) => pools.remove(place).into_iter().collect(),
            None => pools.drain().map(|(_, cell)| cell).collect(),
        };
        cells
            .iter()
            .filter_map(|cell| cell.get().cloned())
            .collect()
    }

    /// Closes `place`'s pool and drops its database (a deleted tenant's,
    /// or a failed move's target).
    pub async fn drop_database(&self, place: &DatabasePlace) -> anyhow::Result<()> {
        for db in self.take(Some(place)) {
            db.close().await;
        }
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(place);
        let server = self.server(&place.server)?;
        let mut admin = server.url.clone();
        if admin.path().len() <= 1 || admin.path() == format!("/{}", place.name) {
            admin.set_path("/postgres");
        }
        let mut conn = sqlx::PgConnection::connect(admin.as_str()).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            place.name
        )))
        .execute(&mut conn)
        .await
        .context("dropping a tenant database")?;
        let _ = conn.close().await;
        Ok(())
    }

    /// Closes every pool (shutdown).
    pub async fn close(&self) {
        for db in self.take(None) {
            db.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_named_without_its_password_or_database() {
        let url =
            url::Url::parse("postgres://owner:s3cret@db.internal:5433/postgres?sslmode=require")
                .unwrap();
        assert_eq!(server_key(&url), "postgres://owner@db.internal:5433");
        let bare = url::Url::parse("postgresql://127.0.0.1/x").unwrap();
        assert_eq!(server_key(&bare), "postgresql://127.0.0.1");
    }

    #[test]
    fn a_database_is_named_after_its_tenant() {
        let id = Uuid::parse_str("51fad484-7f82-4c97-a3e1-b0c29d4f8201").unwrap();
        assert_eq!(database_of(id), "tenlyr_t_51fad4847f824c97a3e1b0c29d4f8201");
    }
}
