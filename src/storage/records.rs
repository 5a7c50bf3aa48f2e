//! Idempotent records (`migrations/0011_records.sql`). Each call is one
//! SQL function that sets the tenant's scope for its own transaction, so
//! a lock, save or get is one round trip; row-level security applies as
//! for every tenant table.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row, postgres::PgRow};
use uuid::Uuid;

use crate::domain::record::{Record, State};

fn record(key: &str, row: &PgRow) -> Result<Record, sqlx::Error> {
    let state: String = row.try_get("state")?;
    Ok(Record {
        key: key.to_owned(),
        state: State::parse(&state)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown record state {state:?}").into()))?,
        lock_token: row.try_get("lock_token")?,
        fingerprint: row.try_get("fingerprint")?,
        locked_until: row.try_get("locked_until")?,
        data: row.try_get("data")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// Locks `key` with `token` until `lease_until` unless it is held, saved
/// or was locked with another fingerprint: the record as it is now and
/// whether this call took the lock (`None`: it vanished meanwhile).
#[allow(clippy::too_many_arguments)]
pub async fn lock(
    pool: &PgPool,
    tenant: Uuid,
    key: &str,
    token: Uuid,
    fingerprint: Option<&str>,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    forget_at: DateTime<Utc>,
) -> Result<Option<(bool, Record)>, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM tenlyr_record_lock($1, $2, $3, $4, $5, $6, $7)")
        .bind(tenant)
        .bind(key)
        .bind(token)
        .bind(fingerprint)
        .bind(now)
        .bind(lease_until)
        .bind(forget_at)
        .fetch_optional(pool)
        .await?;
    row.map(|row| Ok((row.try_get("took")?, record(key, &row)?)))
        .transpose()
}

/// Saves `data` under `token` if it is the current, unexpired one: the
/// record as it is now and whether the save holds (`None`: no record).
pub async fn save(
    pool: &PgPool,
    tenant: Uuid,
    key: &str,
    token: Uuid,
    data: &serde_json::Value,
    now: DateTime<Utc>,
    forget_at: DateTime<Utc>,
) -> Result<Option<(bool, Record)>, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM tenlyr_record_save($1, $2, $3, $4, $5, $6)")
        .bind(tenant)
        .bind(key)
        .bind(token)
        .bind(data)
        .bind(now)
        .bind(forget_at)
        .fetch_optional(pool)
        .await?;
    row.map(|row| Ok((row.try_get("saved_now")?, record(key, &row)?)))
        .transpose()
}

pub async fn get(pool: &PgPool, tenant: Uuid, key: &str) -> Result<Option<Record>, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM tenlyr_record_get($1, $2)")
        .bind(tenant)
        .bind(key)
        .fetch_optional(pool)
        .await?;
    row.map(|row| record(key, &row)).transpose()
}
