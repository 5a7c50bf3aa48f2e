//! Billing state and the usage ledger (`migrations/0015_billing.sql`), in
//! the caller's scoped transaction.

use super::statement;
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, QueryResult};
use uuid::Uuid;

/// A tenant's billing row (defaults when it has none yet).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BillingRow {
    pub tenant_id: Uuid,
    pub enterprise_price_cents: Option<i64>,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub stripe_plan: Option<String>,
    pub status: String,
    pub synced_at: Option<DateTime<Utc>>,
    pub drift: Option<String>,
    pub drift_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

const SELECT: &str = "SELECT t.id AS tenant_id, b.enterprise_price_cents, b.stripe_customer_id, \
     b.stripe_subscription_id, b.stripe_plan, coalesce(b.status, 'not_synced') AS status, \
     b.synced_at, b.drift, b.drift_at, b.last_error \
     FROM tenants t LEFT JOIN tenant_billing b ON b.tenant_id = t.id";

fn row(r: &QueryResult) -> Result<BillingRow, DbErr> {
    Ok(BillingRow {
        tenant_id: r.try_get("", "tenant_id")?,
        enterprise_price_cents: r.try_get("", "enterprise_price_cents")?,
        stripe_customer_id: r.try_get("", "stripe_customer_id")?,
        stripe_subscription_id: r.try_get("", "stripe_subscription_id")?,
        stripe_plan: r.try_get("", "stripe_plan")?,
        status: r.try_get("", "status")?,
        synced_at: r.try_get("", "synced_at")?,
        drift: r.try_get("", "drift")?,
        drift_at: r.try_get("", "drift_at")?,
        last_error: r.try_get("", "last_error")?,
    })
}

/// The billing rows of `tenants` (all when `None`), in tenant id order.
pub async fn rows(
    tx: &DatabaseTransaction,
    tenants: Option<&[Uuid]>,
) -> Result<Vec<BillingRow>, DbErr> {
    let found = match tenants {
        Some(ids) => {
            tx.query_all_raw(statement(
                format!("{SELECT} WHERE t.id = ANY($1) ORDER BY t.id"),
                [ids.to_vec().into()],
            ))
            .await?
        }
        None => {
            tx.query_all_raw(statement(format!("{SELECT} ORDER BY t.id"), []))
                .await?
        }
    };
    found.iter().map(row).collect()
}

pub async fn set_enterprise_price(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    cents: i64,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "INSERT INTO tenant_billing (tenant_id, enterprise_price_cents) VALUES ($1, $2) \
         ON CONFLICT (tenant_id) DO UPDATE SET enterprise_price_cents = EXCLUDED.enterprise_price_cents",
        [tenant.into(), cents.into()],
    ))
    .await?;
    Ok(())
}

/// Writes what a sync learned (everything but the enterprise price).
pub async fn save_sync(tx: &DatabaseTransaction, b: &BillingRow) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "INSERT INTO tenant_billing (tenant_id, stripe_customer_id, stripe_subscription_id, \
             stripe_plan, status, synced_at, drift, drift_at, last_error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (tenant_id) DO UPDATE SET stripe_customer_id = EXCLUDED.stripe_customer_id, \
             stripe_subscription_id = EXCLUDED.stripe_subscription_id, \
             stripe_plan = EXCLUDED.stripe_plan, status = EXCLUDED.status, \
             synced_at = EXCLUDED.synced_at, drift = EXCLUDED.drift, drift_at = EXCLUDED.drift_at, \
             last_error = EXCLUDED.last_error",
        [
            b.tenant_id.into(),
            b.stripe_customer_id.clone().into(),
            b.stripe_subscription_id.clone().into(),
            b.stripe_plan.clone().into(),
            b.status.clone().into(),
            b.synced_at.into(),
            b.drift.clone().into(),
            b.drift_at.into(),
            b.last_error.clone().into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Records a sync error without touching the rest (the API keeps serving
/// the last sync).
pub async fn save_error(tx: &DatabaseTransaction, tenant: Uuid, error: &str) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "INSERT INTO tenant_billing (tenant_id, last_error) VALUES ($1, $2) \
         ON CONFLICT (tenant_id) DO UPDATE SET last_error = EXCLUDED.last_error",
        [tenant.into(), error.into()],
    ))
    .await?;
    Ok(())
}

/// A tenant's ledger row for a period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ledger {
    pub billed_cents: i64,
    pub pending_key: Option<String>,
    pub pending_cents: Option<i64>,
}

/// The ledger rows of these (tenant, period) pairs, by tenant.
pub async fn ledgers(
    tx: &DatabaseTransaction,
    keys: &[(Uuid, DateTime<Utc>)],
) -> Result<std::collections::HashMap<Uuid, Ledger>, DbErr> {
    let tenants: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let periods: Vec<DateTime<Utc>> = keys.iter().map(|k| k.1).collect();
    tx.query_all_raw(statement(
        "SELECT l.tenant_id, l.billed_cents, l.pending_key, l.pending_cents          FROM billing_usage_ledger l          JOIN unnest($1::uuid[], $2::timestamptz[]) AS k(t, p)            ON l.tenant_id = k.t AND l.period_start = k.p",
        [tenants.into(), periods.into()],
    ))
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get("", "tenant_id")?,
            Ledger {
                billed_cents: r.try_get("", "billed_cents")?,
                pending_key: r.try_get("", "pending_key")?,
                pending_cents: r.try_get("", "pending_cents")?,
            },
        ))
    })
    .collect()
}

/// Moves `synced_at` of tenants a tick found unchanged.
pub async fn mark_synced(
    tx: &DatabaseTransaction,
    tenants: &[Uuid],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE tenant_billing SET synced_at = $2 WHERE tenant_id = ANY($1)",
        [tenants.to_vec().into(), now.into()],
    ))
    .await?;
    Ok(())
}

/// Marks a push as about to happen (committed before calling Stripe).
pub async fn begin_push(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    period: DateTime<Utc>,
    key: &str,
    cents: i64,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "INSERT INTO billing_usage_ledger (tenant_id, period_start, pending_key, pending_cents, updated_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant_id, period_start) DO UPDATE SET pending_key = EXCLUDED.pending_key, \
             pending_cents = EXCLUDED.pending_cents, updated_at = EXCLUDED.updated_at",
        [tenant.into(), period.into(), key.into(), cents.into(), now.into()],
    ))
    .await?;
    Ok(())
}

/// Records a push Stripe accepted: the pending amount becomes billed.
pub async fn finish_push(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    period: DateTime<Utc>,
    key: &str,
    item: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE billing_usage_ledger SET billed_cents = billed_cents + pending_cents, \
             pending_key = NULL, pending_cents = NULL, last_item_id = $4, updated_at = $5 \
         WHERE tenant_id = $1 AND period_start = $2 AND pending_key = $3",
        [
            tenant.into(),
            period.into(),
            key.into(),
            item.into(),
            now.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// The tenant whose Stripe customer this is.
pub async fn tenant_of_customer(
    tx: &DatabaseTransaction,
    customer: &str,
) -> Result<Option<Uuid>, DbErr> {
    tx.query_one_raw(statement(
        "SELECT tenant_id FROM tenant_billing WHERE stripe_customer_id = $1",
        [customer.into()],
    ))
    .await?
    .map(|r| r.try_get("", "tenant_id"))
    .transpose()
}

/// Sets the billing status Stripe reported by webhook.
pub async fn set_status(tx: &DatabaseTransaction, tenant: Uuid, status: &str) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE tenant_billing SET status = $2 WHERE tenant_id = $1",
        [tenant.into(), status.into()],
    ))
    .await?;
    Ok(())
}
