//! Stored first responses for the API's `Idempotency-Key` header
//! (`migrations/0012_idempotency_keys.sql`); one SQL function per step,
//! each setting the caller's scope for its own transaction.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Who a key belongs to: the API key (or the Backoffice user of a
/// session), and its tenant (`None`: platform).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub key_id: Uuid,
    pub tenant_id: Option<Uuid>,
}

/// A stored row as `begin` found it.
#[derive(Debug, Clone)]
pub struct Held {
    /// This request now holds the key and runs.
    pub took: bool,
    pub method: String,
    pub request_hash: Vec<u8>,
    pub done: bool,
    pub headers: Option<serde_json::Value>,
    pub body: Option<Vec<u8>>,
    pub trailers: Option<serde_json::Value>,
}

#[allow(clippy::too_many_arguments)]
pub async fn begin(
    pool: &PgPool,
    owner: Owner,
    key: &str,
    method: &str,
    hash: &[u8],
    now: DateTime<Utc>,
    stale_before: DateTime<Utc>,
    forget_at: DateTime<Utc>,
) -> Result<Option<Held>, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM tenlyr_idempotency_begin($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(owner.key_id)
        .bind(owner.tenant_id)
        .bind(key)
        .bind(method)
        .bind(hash)
        .bind(now)
        .bind(stale_before)
        .bind(forget_at)
        .fetch_optional(pool)
        .await?;
    row.map(|r| {
        Ok(Held {
            took: r.try_get("took")?,
            method: r.try_get("method")?,
            request_hash: r.try_get("request_hash")?,
            done: r.try_get::<String, _>("state")? == "done",
            headers: r.try_get("response_headers")?,
            body: r.try_get("response_body")?,
            trailers: r.try_get("response_trailers")?,
        })
    })
    .transpose()
}

/// Stores the response (`Some`) or releases the key for a retry (`None`).
pub async fn finish(
    pool: &PgPool,
    owner: Owner,
    key: &str,
    response: Option<(&serde_json::Value, &[u8], &serde_json::Value)>,
) -> Result<(), sqlx::Error> {
    let (headers, body, trailers) = match response {
        Some((h, b, t)) => (Some(h), Some(b), Some(t)),
        None => (None, None, None),
    };
    sqlx::query("SELECT tenlyr_idempotency_finish($1, $2, $3, $4, $5, $6, $7)")
        .bind(owner.key_id)
        .bind(owner.tenant_id)
        .bind(key)
        .bind(response.is_some())
        .bind(headers)
        .bind(body)
        .bind(trailers)
        .execute(pool)
        .await?;
    Ok(())
}
