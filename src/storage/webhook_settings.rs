//! Inbound webhook settings (`migrations/0016_webhook_settings.sql`): the
//! callback URL and per-provider secrets, in the caller's tenant-scoped
//! transaction.

use super::statement;
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr};
use uuid::Uuid;

/// One provider's stored settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderRow {
    pub provider: String,
    pub enabled: bool,
    pub secret: Option<Vec<u8>>,
    pub previous_secret: Option<Vec<u8>>,
    pub previous_until: Option<DateTime<Utc>>,
    pub paypal_webhook_id: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// The callback URL and when settings last changed.
pub async fn callback(
    tx: &DatabaseTransaction,
    tenant: Uuid,
) -> Result<(Option<String>, Option<DateTime<Utc>>), DbErr> {
    let row = tx
        .query_one_raw(statement(
            "SELECT callback_url, updated_at FROM tenant_settings WHERE tenant_id = $1",
            [tenant.into()],
        ))
        .await?;
    match row {
        Some(r) => Ok((r.try_get("", "callback_url")?, r.try_get("", "updated_at")?)),
        None => Ok((None, None)),
    }
}

pub async fn set_callback(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    url: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE tenant_settings SET callback_url = $2, updated_at = $3 WHERE tenant_id = $1",
        [tenant.into(), url.map(str::to_owned).into(), now.into()],
    ))
    .await?;
    Ok(())
}

pub async fn touch(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE tenant_settings SET updated_at = $2 WHERE tenant_id = $1",
        [tenant.into(), now.into()],
    ))
    .await?;
    Ok(())
}

pub async fn providers(tx: &DatabaseTransaction, tenant: Uuid) -> Result<Vec<ProviderRow>, DbErr> {
    tx.query_all_raw(statement(
        "SELECT provider, enabled, secret, previous_secret, previous_until, paypal_webhook_id, \
             updated_at FROM tenant_webhook_providers WHERE tenant_id = $1 ORDER BY provider",
        [tenant.into()],
    ))
    .await?
    .iter()
    .map(|r| {
        Ok(ProviderRow {
            provider: r.try_get("", "provider")?,
            enabled: r.try_get("", "enabled")?,
            secret: r.try_get("", "secret")?,
            previous_secret: r.try_get("", "previous_secret")?,
            previous_until: r.try_get("", "previous_until")?,
            paypal_webhook_id: r.try_get("", "paypal_webhook_id")?,
            updated_at: r.try_get("", "updated_at")?,
        })
    })
    .collect()
}

/// Writes one provider's settings. A new secret (`Some`) moves the stored
/// one to `previous_secret` until `previous_until`.
pub async fn upsert_provider(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    row: &ProviderRow,
    new_secret: Option<Vec<u8>>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "INSERT INTO tenant_webhook_providers AS p (tenant_id, provider, enabled, secret, \
             paypal_webhook_id, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (tenant_id, provider) DO UPDATE SET enabled = EXCLUDED.enabled, \
             paypal_webhook_id = EXCLUDED.paypal_webhook_id, updated_at = EXCLUDED.updated_at, \
             previous_secret = CASE WHEN $7 THEN p.secret ELSE p.previous_secret END, \
             previous_until = CASE WHEN $7 THEN $8 ELSE p.previous_until END, \
             secret = CASE WHEN $7 THEN EXCLUDED.secret ELSE p.secret END",
        [
            tenant.into(),
            row.provider.clone().into(),
            row.enabled.into(),
            new_secret.clone().into(),
            row.paypal_webhook_id.clone().into(),
            row.updated_at.into(),
            new_secret.is_some().into(),
            row.previous_until.into(),
        ],
    ))
    .await?;
    Ok(())
}
