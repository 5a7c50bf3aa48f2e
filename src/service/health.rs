//! Health (DESIGN.md §9, docs/health.md): what the health scan computes
//! from per-minute counts, the overview, and per-tenant throttles.

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use super::{Actor, events::Outbox, keys::KeyResolver, tenants::live_digests};
use crate::{
    domain::health::{self as rules, Status},
    error::ApiError,
    storage::{
        Db,
        health::{self as repo, HealthRow, ScanRows},
        tenant_data::Scope,
        tenants as tenant_repo,
    },
    workers::SharedClock,
};

/// `GetOverview`.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    pub total: i64,
    pub healthy: i64,
    pub warning: i64,
    pub critical: i64,
    pub unknown: i64,
    pub avg_error_rate: f64,
}

#[derive(Clone, Debug)]
pub struct Health {
    db: Db,
    keys: Arc<KeyResolver>,
    outbox: Outbox,
    clock: SharedClock,
}

fn not_found() -> ApiError {
    ApiError::not_found("Tenant not found")
}

impl Health {
    pub fn new(db: Db, keys: Arc<KeyResolver>, outbox: Outbox, clock: SharedClock) -> Self {
        Self {
            db,
            keys,
            outbox,
            clock,
        }
    }

    pub async fn overview(&self, actor: &Actor) -> Result<Overview, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let (total, [healthy, warning, critical, unknown], avg) = repo::overview(&tx).await?;
        tx.commit().await?;
        Ok(Overview {
            total,
            healthy,
            warning,
            critical,
            unknown,
            avg_error_rate: (avg * 100.0).round() / 100.0,
        })
    }

    pub async fn list(&self, actor: &Actor) -> Result<Vec<HealthRow>, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let rows = repo::list(&tx, None).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// The health of these tenants (dashboard rows, exports), in the
    /// caller's scope.
    pub async fn of(&self, scope: Scope, tenants: &[Uuid]) -> Result<Vec<HealthRow>, ApiError> {
        let tx = self.db.begin(scope).await?;
        let rows = repo::list(&tx, Some(tenants)).await?;
        tx.commit().await?;
        Ok(rows)
    }

    pub async fn get(&self, actor: &Actor, tenant: Uuid) -> Result<HealthRow, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let row = repo::find(&tx, tenant).await?;
        tx.commit().await?;
        row.ok_or_else(not_found)
    }

    /// Sets (`Some`) or removes (`None`) the tenant's throttle; it applies
    /// on every replica at once (the tenant's cached keys are evicted).
    pub async fn throttle(
        &self,
        actor: &Actor,
        tenant: Uuid,
        limit_rpm: Option<i32>,
    ) -> Result<HealthRow, ApiError> {
        let limit = limit_rpm
            .map(rules::limit_rpm)
            .transpose()
            .map_err(|v| ApiError::validation(vec![v]))?;
        let tx = self.db.begin(actor.platform()?).await?;
        if !repo::set_rate_limit(&tx, tenant, limit, self.clock.now()).await? {
            return Err(not_found());
        }
        let digests = live_digests(&tx, tenant).await?;
        let (action, details) = match limit {
            Some(rpm) => ("health.throttle", json!({"limitRpm": rpm})),
            None => ("health.remove_throttle", json!({})),
        };
        tenant_repo::audit(
            &tx,
            actor.audit(Some(tenant), action, Some(tenant), details),
        )
        .await?;
        let row = repo::find(&tx, tenant).await?.ok_or_else(not_found)?;
        tx.commit().await?;
        self.keys.invalidate(digests).await;
        Ok(row)
    }

    /// One health scan (the health worker's tick): every tenant's windows
    /// from the minute counts, assessed and written in one statement;
    /// `health.critical` / `health.recovered` for tenants whose status
    /// changed, in the same transaction. Returns how many tenants.
    pub async fn scan(&self) -> Result<usize, ApiError> {
        let now = self.clock.now();
        let minute = rules::minute(now);
        // Tenants in their own databases: their minute counts there (the
        // main database's view has none of theirs), read first, and purged
        // there as here.
        let mut elsewhere = std::collections::HashMap::new();
        for db in self.db.data_dbs().await?.into_iter().skip(1) {
            let tx = db.begin(Scope::Platform).await?;
            for (tenant, windows, _) in repo::window_counts(&tx, minute).await? {
                elsewhere.insert(tenant, windows);
            }
            repo::purge_minutes(&tx, minute - rules::LONGEST_WINDOW).await?;
            tx.commit().await?;
        }
        let tx = self.db.begin(Scope::Platform).await?;
        let counts = repo::window_counts(&tx, minute).await?;
        let mut rows = ScanRows::default();
        for (tenant, windows, previous) in &counts {
            let a = rules::assess(elsewhere.get(tenant).copied().unwrap_or(*windows));
            let previous = Status::parse(previous).unwrap_or(Status::Unknown);
            let data = json!({
                "tenantId": tenant,
                "errorRate": a.error_rate,
                "requestRate": a.request_rate,
                "slaRisk": a.sla_risk,
            });
            if a.status == Status::Critical && previous != Status::Critical {
                self.outbox
                    .emit_in(&tx, "health.critical", Some(*tenant), data)
                    .await?;
            } else if a.status == Status::Healthy
                && matches!(previous, Status::Critical | Status::Warning)
            {
                let mut data = data;
                data["previousStatus"] = json!(previous.as_str());
                self.outbox
                    .emit_in(&tx, "health.recovered", Some(*tenant), data)
                    .await?;
            }
            rows.tenants.push(*tenant);
            rows.statuses.push(a.status.as_str().to_owned());
            rows.error_rates.push(a.error_rate);
            rows.request_rates.push(a.request_rate);
            rows.sla_risks.push(a.sla_risk);
            rows.low_volumes.push(a.low_volume);
        }
        repo::save_scan(&tx, rows, now).await?;
        repo::purge_minutes(&tx, minute - rules::LONGEST_WINDOW).await?;
        tx.commit().await?;
        Ok(counts.len())
    }
}
