//! How the application pool logs in (DESIGN.md §5, issue 12).
//!
//! Requests and workers run as `tenlyr_app` by *logging in* as it, not by
//! `SET ROLE` from the migration owner: a pool connection then has no more
//! rights than `tenlyr_app` (`RESET ROLE` returns to `tenlyr_app` itself,
//! `SET ROLE postgres` is refused).
//!
//! Credentials: `TENLYR_APP_DATABASE_URL` when set (the operator manages
//! that role's password); otherwise the owner URL with user `tenlyr_app`
//! and a password derived from the key pepper, which replicas already
//! share. The server sets that password (as a SCRAM-SHA-256 verifier it
//! computes itself, so the password never appears in SQL or server logs)
//! whenever it applies migrations.

use std::str::FromStr;

use anyhow::Context;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use ring::{digest, hmac, pbkdf2};
use sqlx::{Connection, Executor, postgres::PgConnectOptions};

use super::APP_ROLE;
use crate::domain::keys::KeyHasher;

const SCRAM_ITERATIONS: u32 = 4096;

/// The application pool's login.
#[derive(Clone)]
pub struct AppLogin {
    pub options: PgConnectOptions,
    /// The SCRAM verifier to set on `tenlyr_app`, when the password is
    /// derived (not when an operator gave `TENLYR_APP_DATABASE_URL`).
    verifier: Option<String>,
}

impl std::fmt::Debug for AppLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppLogin")
            .field("derived", &self.verifier.is_some())
            .finish_non_exhaustive()
    }
}

impl AppLogin {
    /// `app_url` if given, else `owner_url` as `tenlyr_app` with the
    /// password derived from the pepper.
    pub fn new(owner_url: &str, app_url: Option<&str>, hasher: &KeyHasher) -> anyhow::Result<Self> {
        if let Some(url) = app_url {
            let options = PgConnectOptions::from_str(url).map_err(|err| {
                anyhow::anyhow!("TENLYR_APP_DATABASE_URL is not a valid PostgreSQL URL: {err}")
            })?;
            return Ok(Self {
                options,
                verifier: None,
            });
        }
        let password = STANDARD.encode(hasher.derive("app-login-password"));
        let salt = hasher.derive("app-login-salt");
        let options = PgConnectOptions::from_str(owner_url)
            .map_err(|err| anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL: {err}"))?
            .username(APP_ROLE)
            .password(&password);
        Ok(Self {
            options,
            verifier: Some(scram_verifier(&password, &salt[..16], SCRAM_ITERATIONS)),
        })
    }

    /// Lets `tenlyr_app` log in with the derived password (run as the
    /// migration owner, after migrations). Nothing to do for an
    /// operator-given login.
    pub async fn grant(&self, owner_url: &str) -> anyhow::Result<()> {
        let Some(verifier) = &self.verifier else {
            return Ok(());
        };
        let mut conn = sqlx::PgConnection::connect(owner_url).await?;
        let result = set_password(&mut conn, verifier).await;
        let _ = conn.close().await;
        result.context(
            "letting tenlyr_app log in failed (the DATABASE_URL user needs CREATEROLE); \
             or create the login yourself and set TENLYR_APP_DATABASE_URL",
        )
    }
}

/// Sets the verifier unless it is already set (readable only to a
/// superuser). Replicas (or test databases: the role is the cluster's)
/// starting together may race on the role's row; the loser tries again.
async fn set_password(conn: &mut sqlx::PgConnection, verifier: &str) -> Result<(), sqlx::Error> {
    let current: Result<Option<Option<String>>, _> =
        sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1 AND rolcanlogin")
            .bind(APP_ROLE)
            .fetch_optional(&mut *conn)
            .await;
    if let Ok(Some(Some(current))) = current
        && current == verifier
    {
        return Ok(());
    }
    // The verifier is base64 and `$`/`:` only: nothing to escape.
    let sql = format!("ALTER ROLE {APP_ROLE} WITH LOGIN PASSWORD '{verifier}'");
    let mut attempt = 0;
    loop {
        attempt += 1;
        match conn.execute(sqlx::AssertSqlSafe(sql.clone())).await {
            Ok(_) => return Ok(()),
            // "tuple concurrently updated": another process altered the
            // role at the same moment.
            Err(err)
                if attempt < 10
                    && err
                        .as_database_error()
                        .is_some_and(|e| e.code().as_deref() == Some("XX000")) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(10 * attempt)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// A SCRAM-SHA-256 password verifier as PostgreSQL stores it (RFC 5802,
/// RFC 7677): `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
/// The test script's PostgreSQL makes `tenlyr_app` authenticate with
/// SCRAM, so every integration test logs in through it.
fn scram_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN),
        salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key.as_ref()),
        STANDARD.encode(server_key.as_ref())
    )
}
