//! Health records, throttles and alerts (`migrations/0014_health.sql`).
//! Every function runs in the caller's scoped transaction; RLS applies.

use super::{statement, tenant_data};
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, QueryResult};
use uuid::Uuid;

use crate::domain::health::{Counts, LONGEST_WINDOW, Windows};

/// A tenant's health as the last scan wrote it, with its throttle.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthRow {
    pub tenant_id: Uuid,
    pub status: String,
    pub error_rate: f64,
    pub request_rate: f64,
    pub sla_risk: bool,
    pub low_volume: bool,
    pub rate_limit: Option<i32>,
    pub checked_at: Option<DateTime<Utc>>,
}

/// Tenants joined with their health (never scanned: `unknown`).
const HEALTH_SELECT: &str = "SELECT t.id AS tenant_id, coalesce(h.status, 'unknown') AS status, \
     coalesce(h.error_rate, 0) AS error_rate, coalesce(h.request_rate, 0) AS request_rate, \
     coalesce(h.sla_risk, false) AS sla_risk, coalesce(h.low_volume, false) AS low_volume, \
     t.rate_limit, h.checked_at \
     FROM tenants t LEFT JOIN tenant_health h ON h.tenant_id = t.id";

fn health(row: &QueryResult) -> Result<HealthRow, DbErr> {
    Ok(HealthRow {
        tenant_id: row.try_get("", "tenant_id")?,
        status: row.try_get("", "status")?,
        error_rate: row.try_get("", "error_rate")?,
        request_rate: row.try_get("", "request_rate")?,
        sla_risk: row.try_get("", "sla_risk")?,
        low_volume: row.try_get("", "low_volume")?,
        rate_limit: row.try_get("", "rate_limit")?,
        checked_at: row.try_get("", "checked_at")?,
    })
}

pub async fn find(tx: &DatabaseTransaction, tenant: Uuid) -> Result<Option<HealthRow>, DbErr> {
    tx.query_one_raw(statement(
        format!("{HEALTH_SELECT} WHERE t.id = $1"),
        [tenant.into()],
    ))
    .await?
    .as_ref()
    .map(health)
    .transpose()
}

/// The health of `tenants` (every tenant when `None`), in id order.
pub async fn list(
    tx: &DatabaseTransaction,
    tenants: Option<&[Uuid]>,
) -> Result<Vec<HealthRow>, DbErr> {
    let rows = match tenants {
        Some(ids) => {
            tx.query_all_raw(statement(
                format!("{HEALTH_SELECT} WHERE t.id = ANY($1) ORDER BY t.id"),
                [ids.to_vec().into()],
            ))
            .await?
        }
        None => {
            tx.query_all_raw(statement(format!("{HEALTH_SELECT} ORDER BY t.id"), []))
                .await?
        }
    };
    rows.iter().map(health).collect()
}

/// Counts per status and the mean error rate of tenants with data.
pub async fn overview(tx: &DatabaseTransaction) -> Result<(i64, [i64; 4], f64), DbErr> {
    let row = tx
        .query_one_raw(statement(
            "SELECT count(*) AS total, \
                 count(*) FILTER (WHERE h.status = 'healthy') AS healthy, \
                 count(*) FILTER (WHERE h.status = 'warning') AS warning, \
                 count(*) FILTER (WHERE h.status = 'critical') AS critical, \
                 count(*) FILTER (WHERE coalesce(h.status, 'unknown') = 'unknown') AS unknown, \
                 coalesce(avg(h.error_rate) FILTER (WHERE h.status <> 'unknown'), 0) AS avg \
             FROM tenants t LEFT JOIN tenant_health h ON h.tenant_id = t.id",
            [],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("overview".into()))?;
    Ok((
        row.try_get("", "total")?,
        [
            row.try_get("", "healthy")?,
            row.try_get("", "warning")?,
            row.try_get("", "critical")?,
            row.try_get("", "unknown")?,
        ],
        row.try_get("", "avg")?,
    ))
}

/// Every tenant's request and error counts over the scan's windows (each
/// ending with `minute`, the current minute), with its last status.
/// One pass over the minute rollups of the longest window.
pub async fn window_counts(
    tx: &DatabaseTransaction,
    minute: DateTime<Utc>,
) -> Result<Vec<(Uuid, Windows, String)>, DbErr> {
    let since = |m: i64| minute - chrono::Duration::minutes(m - 1);
    let rows = tx
        .query_all_raw(statement(
            "WITH m AS ( \
                 SELECT tenant_id, \
                     sum(total) FILTER (WHERE metric = 'requests' AND bucket_start >= $1) AS r5, \
                     sum(total) FILTER (WHERE metric = 'errors' AND bucket_start >= $1) AS e5, \
                     sum(total) FILTER (WHERE metric = 'requests' AND bucket_start >= $2) AS r30, \
                     sum(total) FILTER (WHERE metric = 'errors' AND bucket_start >= $2) AS e30, \
                     sum(total) FILTER (WHERE metric = 'requests' AND bucket_start >= $3) AS r60, \
                     sum(total) FILTER (WHERE metric = 'errors' AND bucket_start >= $3) AS e60, \
                     sum(total) FILTER (WHERE metric = 'requests') AS r360, \
                     sum(total) FILTER (WHERE metric = 'errors') AS e360 \
                 FROM usage_rollups_all \
                 WHERE granularity = 'minute' AND bucket_start >= $4 AND bucket_start <= $5 \
                 GROUP BY tenant_id) \
             SELECT t.id, coalesce(h.status, 'unknown') AS previous, \
                 coalesce(m.r5, 0) AS r5, coalesce(m.e5, 0) AS e5, \
                 coalesce(m.r30, 0) AS r30, coalesce(m.e30, 0) AS e30, \
                 coalesce(m.r60, 0) AS r60, coalesce(m.e60, 0) AS e60, \
                 coalesce(m.r360, 0) AS r360, coalesce(m.e360, 0) AS e360 \
             FROM tenants t LEFT JOIN m ON m.tenant_id = t.id \
             LEFT JOIN tenant_health h ON h.tenant_id = t.id",
            [
                since(5).into(),
                since(30).into(),
                since(60).into(),
                since(LONGEST_WINDOW.num_minutes()).into(),
                minute.into(),
            ],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            let c = |r: &str, e: &str| -> Result<Counts, DbErr> {
                Ok(Counts {
                    requests: row.try_get("", r)?,
                    errors: row.try_get("", e)?,
                })
            };
            Ok((
                row.try_get("", "id")?,
                Windows {
                    last_5m: c("r5", "e5")?,
                    last_30m: c("r30", "e30")?,
                    last_1h: c("r60", "e60")?,
                    last_6h: c("r360", "e360")?,
                },
                row.try_get("", "previous")?,
            ))
        })
        .collect()
}

/// One scan's results.
#[derive(Debug, Default)]
pub struct ScanRows {
    pub tenants: Vec<Uuid>,
    pub statuses: Vec<String>,
    pub error_rates: Vec<f64>,
    pub request_rates: Vec<f64>,
    pub sla_risks: Vec<bool>,
    pub low_volumes: Vec<bool>,
}

/// Writes a scan's results in one statement.
pub async fn save_scan(
    tx: &DatabaseTransaction,
    rows: ScanRows,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "INSERT INTO tenant_health AS h (tenant_id, status, error_rate, request_rate, sla_risk, \
             low_volume, checked_at, changed_at) \
         SELECT t, s, e, r, k, l, $7, $7 \
         FROM unnest($1::uuid[], $2::text[], $3::float8[], $4::float8[], $5::bool[], $6::bool[]) \
             AS x(t, s, e, r, k, l) \
         ON CONFLICT (tenant_id) DO UPDATE SET status = EXCLUDED.status, \
             error_rate = EXCLUDED.error_rate, request_rate = EXCLUDED.request_rate, \
             sla_risk = EXCLUDED.sla_risk, low_volume = EXCLUDED.low_volume, \
             checked_at = EXCLUDED.checked_at, \
             changed_at = CASE WHEN h.status = EXCLUDED.status THEN h.changed_at \
                               ELSE EXCLUDED.checked_at END",
        [
            rows.tenants.into(),
            rows.statuses.into(),
            rows.error_rates.into(),
            rows.request_rates.into(),
            rows.sla_risks.into(),
            rows.low_volumes.into(),
            at.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Forgets minute counts older than the longest window, in every place
/// tenant data lives; how many rows. Leaves `tx` in the shared place.
pub async fn purge_minutes(tx: &DatabaseTransaction, before: DateTime<Utc>) -> Result<u64, DbErr> {
    let mut purged = 0;
    for schema in tenant_data::data_schemas(tx).await? {
        tenant_data::enter_schema(tx, &schema).await?;
        purged += tx
            .execute_raw(statement(
                "DELETE FROM usage_rollups WHERE granularity = 'minute' AND bucket_start < $1",
                [before.into()],
            ))
            .await?
            .rows_affected();
    }
    tenant_data::enter_schema(tx, "public").await?;
    Ok(purged)
}

/// Sets (or with `None` clears) a tenant's throttle; false if no such
/// tenant.
pub async fn set_rate_limit(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    limit: Option<i32>,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    Ok(tx
        .execute_raw(statement(
            "UPDATE tenants SET rate_limit = $2, updated_at = $3 WHERE id = $1",
            [tenant.into(), limit.into(), now.into()],
        ))
        .await?
        .rows_affected()
        == 1)
}

/// An alert.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub alert_type: String,
    pub severity: String,
    pub message: String,
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

const ALERT_COLUMNS: &str =
    "id, tenant_id, type, severity, message, source, created_at, resolved_at";

fn alert(row: &QueryResult) -> Result<AlertRow, DbErr> {
    Ok(AlertRow {
        id: row.try_get("", "id")?,
        tenant_id: row.try_get("", "tenant_id")?,
        alert_type: row.try_get("", "type")?,
        severity: row.try_get("", "severity")?,
        message: row.try_get("", "message")?,
        source: row.try_get("", "source")?,
        created_at: row.try_get("", "created_at")?,
        resolved_at: row.try_get("", "resolved_at")?,
    })
}

pub async fn insert_alert(tx: &DatabaseTransaction, a: &AlertRow) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        format!("INSERT INTO alerts ({ALERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)"),
        [
            a.id.into(),
            a.tenant_id.into(),
            a.alert_type.clone().into(),
            a.severity.clone().into(),
            a.message.clone().into(),
            a.source.clone().into(),
            a.created_at.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Alerts newest first (RLS scopes a tenant to its own), optionally of
/// one tenant and/or unresolved only; at most `limit`.
pub async fn alerts(
    tx: &DatabaseTransaction,
    tenant: Option<Uuid>,
    unresolved: bool,
    limit: i64,
) -> Result<Vec<AlertRow>, DbErr> {
    tx.query_all_raw(statement(
        format!(
            "SELECT {ALERT_COLUMNS} FROM alerts \
             WHERE ($1::uuid IS NULL OR tenant_id = $1) AND (NOT $2 OR resolved_at IS NULL) \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        ),
        [tenant.into(), unresolved.into(), limit.into()],
    ))
    .await?
    .iter()
    .map(alert)
    .collect()
}

/// Resolves one alert (a resolved one stays as it was); the row, or
/// `None` when it is not visible in this scope.
pub async fn resolve_alert(
    tx: &DatabaseTransaction,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<(AlertRow, bool)>, DbErr> {
    let updated = tx
        .query_one_raw(statement(
            format!(
                "UPDATE alerts SET resolved_at = $2 WHERE id = $1 AND resolved_at IS NULL \
                 RETURNING {ALERT_COLUMNS}"
            ),
            [id.into(), now.into()],
        ))
        .await?;
    if let Some(row) = updated {
        return Ok(Some((alert(&row)?, true)));
    }
    tx.query_one_raw(statement(
        format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"),
        [id.into()],
    ))
    .await?
    .as_ref()
    .map(|row| Ok((alert(row)?, false)))
    .transpose()
}

/// Resolves every unresolved alert in scope (of `tenant`, if given); the
/// rows it resolved.
pub async fn resolve_all(
    tx: &DatabaseTransaction,
    tenant: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<Vec<AlertRow>, DbErr> {
    tx.query_all_raw(statement(
        format!(
            "UPDATE alerts SET resolved_at = $2 \
             WHERE resolved_at IS NULL AND ($1::uuid IS NULL OR tenant_id = $1) \
             RETURNING {ALERT_COLUMNS}"
        ),
        [tenant.into(), now.into()],
    ))
    .await?
    .iter()
    .map(alert)
    .collect()
}

/// Opens a `health_critical` alert for every critical tenant without an
/// open one (the partial unique index makes a concurrent second insert a
/// no-op); the alerts it opened.
pub async fn open_critical_alerts(
    tx: &DatabaseTransaction,
    now: DateTime<Utc>,
) -> Result<Vec<AlertRow>, DbErr> {
    tx.query_all_raw(statement(
        format!(
            "INSERT INTO alerts ({ALERT_COLUMNS}) \
             SELECT gen_random_uuid(), h.tenant_id, 'health_critical', 'critical', \
                 format('Error rate %s%% over the last 5 minutes (%s requests/min)', \
                        round(h.error_rate::numeric, 2), round(h.request_rate::numeric, 2)), \
                 'worker', $1, NULL \
             FROM tenant_health h WHERE h.status = 'critical' \
             ON CONFLICT (tenant_id) WHERE type = 'health_critical' AND resolved_at IS NULL \
             DO NOTHING RETURNING {ALERT_COLUMNS}"
        ),
        [now.into()],
    ))
    .await?
    .iter()
    .map(alert)
    .collect()
}

/// Resolves the open `health_critical` alerts of tenants that are
/// healthy again; the alerts it resolved.
pub async fn resolve_recovered_alerts(
    tx: &DatabaseTransaction,
    now: DateTime<Utc>,
) -> Result<Vec<AlertRow>, DbErr> {
    tx.query_all_raw(statement(
        "UPDATE alerts a SET resolved_at = $1 FROM tenant_health h \
         WHERE a.tenant_id = h.tenant_id AND a.type = 'health_critical' \
           AND a.resolved_at IS NULL AND h.status = 'healthy' \
         RETURNING a.id, a.tenant_id, a.type, a.severity, a.message, a.source, \
                   a.created_at, a.resolved_at",
        [now.into()],
    ))
    .await?
    .iter()
    .map(alert)
    .collect()
}
