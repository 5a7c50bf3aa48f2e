//! Alerts (DESIGN.md §9): `health_critical` alerts the alert worker opens
//! and resolves, and alerts customers' own monitoring sends. Admin keys see
//! all (optionally one tenant's); a tenant key sees and resolves only its
//! own (RLS scopes every statement to it).

use serde_json::json;
use uuid::Uuid;

use super::{Actor, events::Outbox};
use crate::{
    domain::tenant::violation,
    error::{ApiError, FieldViolation},
    storage::{
        Db,
        health::{self as repo, AlertRow},
        tenant_data::Scope,
        tenants as tenant_repo,
    },
    workers::SharedClock,
};

/// The most alerts a list returns (newest first).
pub const LIST_LIMIT: i64 = 500;
pub const MAX_TYPE: usize = 100;
pub const MAX_MESSAGE: usize = 2000;

/// `CreateAlert`, before validation.
#[derive(Debug, Default)]
pub struct NewAlert {
    pub tenant_id: Option<Uuid>,
    pub alert_type: String,
    pub severity: Option<&'static str>,
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Alerts {
    db: Db,
    outbox: Outbox,
    clock: SharedClock,
}

fn alert_data(a: &AlertRow) -> serde_json::Value {
    json!({
        "alertId": a.id,
        "tenantId": a.tenant_id,
        "type": a.alert_type,
        "severity": a.severity,
        "message": a.message,
    })
}

impl Alerts {
    pub fn new(db: Db, outbox: Outbox, clock: SharedClock) -> Self {
        Self { db, outbox, clock }
    }

    pub async fn list(
        &self,
        actor: &Actor,
        tenant: Option<Uuid>,
        unresolved: bool,
    ) -> Result<Vec<AlertRow>, ApiError> {
        let tenant = actor.named_tenant(tenant)?;
        let tx = self.db.begin(actor.scope()?).await?;
        let rows = repo::alerts(&tx, tenant, unresolved, LIST_LIMIT).await?;
        tx.commit().await?;
        Ok(rows)
    }

    pub async fn create(&self, actor: &Actor, input: NewAlert) -> Result<AlertRow, ApiError> {
        let tenant = actor.named_tenant(input.tenant_id)?;
        let alert_type = input.alert_type.trim();
        let message = input.message.trim();
        let mut violations: Vec<FieldViolation> = Vec::new();
        if tenant.is_none() {
            violations.push(violation("tenantId", "is required with an admin key"));
        }
        if alert_type.is_empty() || alert_type.chars().count() > MAX_TYPE {
            violations.push(violation(
                "type",
                format!("must be 1 to {MAX_TYPE} characters"),
            ));
        }
        if input.severity.is_none() {
            violations.push(violation("severity", "must be info, warning or critical"));
        }
        if message.is_empty() || message.chars().count() > MAX_MESSAGE {
            violations.push(violation(
                "message",
                format!("must be 1 to {MAX_MESSAGE} characters"),
            ));
        }
        if !violations.is_empty() {
            return Err(ApiError::validation(violations));
        }
        let tenant = tenant.expect("checked");
        let row = AlertRow {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            alert_type: alert_type.to_owned(),
            severity: input.severity.expect("checked").to_owned(),
            message: message.to_owned(),
            source: "api".into(),
            created_at: self.clock.now(),
            resolved_at: None,
        };
        let tx = self.db.begin(actor.scope()?).await?;
        if tenant_repo::find(&tx, tenant).await?.is_none() {
            return Err(ApiError::not_found("Tenant not found"));
        }
        repo::insert_alert(&tx, &row).await?;
        tenant_repo::audit(
            &tx,
            actor.audit(
                Some(tenant),
                "alert.create",
                Some(row.id),
                json!({"type": row.alert_type}),
            ),
        )
        .await?;
        self.outbox
            .emit_in(&tx, "alert.created", Some(tenant), alert_data(&row))
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Resolves an alert; resolving a resolved one answers it as it is.
    /// Another tenant's alert is not found (404).
    pub async fn resolve(&self, actor: &Actor, id: Uuid) -> Result<AlertRow, ApiError> {
        let tx = self.db.begin(actor.scope()?).await?;
        let Some((row, changed)) = repo::resolve_alert(&tx, id, self.clock.now()).await? else {
            return Err(ApiError::not_found("Alert not found"));
        };
        if changed {
            tenant_repo::audit(
                &tx,
                actor.audit(Some(row.tenant_id), "alert.resolve", Some(id), json!({})),
            )
            .await?;
            self.outbox
                .emit_in(&tx, "alert.resolved", Some(row.tenant_id), alert_data(&row))
                .await?;
        }
        tx.commit().await?;
        Ok(row)
    }

    pub async fn resolve_all(&self, actor: &Actor, tenant: Option<Uuid>) -> Result<u64, ApiError> {
        let tenant = actor.named_tenant(tenant)?;
        let tx = self.db.begin(actor.scope()?).await?;
        let resolved = repo::resolve_all(&tx, tenant, self.clock.now()).await?;
        for row in &resolved {
            self.outbox
                .emit_in(&tx, "alert.resolved", Some(row.tenant_id), alert_data(row))
                .await?;
        }
        if !resolved.is_empty() {
            tenant_repo::audit(
                &tx,
                actor.audit(
                    tenant,
                    "alert.resolve_all",
                    None,
                    json!({"resolved": resolved.len()}),
                ),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(resolved.len() as u64)
    }

    /// The alert worker's tick: opens a `health_critical` alert for each
    /// critical tenant without one, resolves those of tenants healthy
    /// again; events for both. (opened, resolved).
    pub async fn check(&self) -> Result<(usize, usize), ApiError> {
        let now = self.clock.now();
        let tx = self.db.begin(Scope::Platform).await?;
        let opened = repo::open_critical_alerts(&tx, now).await?;
        for row in &opened {
            self.outbox
                .emit_in(&tx, "alert.created", Some(row.tenant_id), alert_data(row))
                .await?;
        }
        let resolved = repo::resolve_recovered_alerts(&tx, now).await?;
        for row in &resolved {
            self.outbox
                .emit_in(&tx, "alert.resolved", Some(row.tenant_id), alert_data(row))
                .await?;
        }
        tx.commit().await?;
        Ok((opened.len(), resolved.len()))
    }
}
