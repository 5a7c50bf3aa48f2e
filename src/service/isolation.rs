//! Isolation migrations (DESIGN.md §10): starting an upgrade, reading its
//! record. The move itself is a job (`workers::isolation`); this records
//! the migration and enqueues it in one transaction.

use serde_json::json;
use uuid::Uuid;

use super::{Actor, Principal};
use crate::{
    domain::{
        isolation::{self as rules, StartError},
        tenant::{IsolationLevel, TenantStatus},
    },
    error::{ApiError, ErrorCode, FieldViolation},
    storage::{
        Db, isolation as repo, isolation::MigrationRow, jobs, tenant_data::Scope,
        tenants as tenant_repo,
    },
    workers::{
        SharedClock,
        isolation::{Migrate, MigrateJob},
        queue::Queue,
    },
};

/// Migrations a list returns, newest first.
pub const LIST_LIMIT: i64 = 100;

#[derive(Clone, Debug)]
pub struct Isolation {
    db: Db,
    queue: Queue,
    clock: SharedClock,
}

fn not_found() -> ApiError {
    ApiError::not_found("Migration not found")
}

impl From<StartError> for ApiError {
    fn from(err: StartError) -> Self {
        let message = err.to_string();
        match err {
            StartError::MissingTarget => ApiError::validation(vec![FieldViolation {
                field: "targetLevel".into(),
                description: message,
            }]),
            // States of the tenant, not of the request (DESIGN.md §3).
            StartError::Downgrade | StartError::SameLevel(_) | StartError::NotActive(_) => {
                ApiError::new(ErrorCode::FailedPrecondition, message)
            }
        }
    }
}

impl Isolation {
    pub fn new(db: Db, queue: Queue, clock: SharedClock) -> Self {
        Self { db, queue, clock }
    }

    /// Starts an upgrade of `tenant_id` (an admin names it; a tenant key
    /// migrates its own tenant, and naming another is a 403, answered
    /// before any lookup, so it says nothing of that tenant). Returns the
    /// `pending` record at once.
    pub async fn start(
        &self,
        actor: &Actor,
        tenant_id: Option<Uuid>,
        target: Option<IsolationLevel>,
    ) -> Result<MigrationRow, ApiError> {
        let tenant_id = actor.named_tenant(tenant_id)?.ok_or_else(|| {
            ApiError::validation(vec![FieldViolation {
                field: "tenantId".into(),
                description: "is required with an admin key".into(),
            }])
        })?;
        let now = self.clock.now();
        let tx = self.db.begin(Scope::Platform).await?;
        let tenant = tenant_repo::find_for_update(&tx, tenant_id)
            .await?
            .ok_or_else(|| ApiError::not_found("Tenant not found"))?;
        let from = IsolationLevel::parse(&tenant.isolation_level)
            .ok_or_else(|| ApiError::internal("unknown isolation level"))?;
        let status = TenantStatus::parse(&tenant.status)
            .ok_or_else(|| ApiError::internal("unknown tenant status"))?;
        let to = rules::check_start(from, target, status)?;
        let id = Uuid::now_v7();
        if !repo::insert(&tx, id, tenant_id, from.as_str(), to.as_str(), now).await? {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                "a migration of this tenant is already pending or in progress",
            )
            .with_reason("MIGRATION_ACTIVE"));
        }
        let job = self
            .queue
            .job::<MigrateJob>(&Migrate { migration_id: id })
            .map_err(|err| ApiError::internal(err.to_string()))?;
        jobs::enqueue_in(&tx, &job).await?;
        tenant_repo::audit(
            &tx,
            actor.audit(
                Some(tenant_id),
                "isolation.migrate",
                Some(id),
                json!({"fromLevel": from.as_str(), "toLevel": to.as_str()}),
            ),
        )
        .await?;
        let row = repo::find(&tx, id).await?.ok_or_else(not_found)?;
        tx.commit().await?;
        Ok(row)
    }

    /// One migration (a tenant key sees its own tenant's only).
    pub async fn get(&self, actor: &Actor, id: Uuid) -> Result<MigrationRow, ApiError> {
        let tx = self.db.begin(actor.scope()?).await?;
        let row = repo::find(&tx, id).await?.ok_or_else(not_found)?;
        tx.commit().await?;
        Ok(row)
    }

    /// Migrations, newest first: a tenant key's own; an admin's all, or one
    /// tenant's.
    pub async fn list(
        &self,
        actor: &Actor,
        tenant_id: Option<Uuid>,
    ) -> Result<Vec<MigrationRow>, ApiError> {
        let scope = actor.scope()?;
        let filter = match actor.principal {
            Principal::Tenant { tenant_id, .. } => Some(tenant_id),
            _ => tenant_id,
        };
        let tx = self.db.begin(scope).await?;
        let rows = repo::list(&tx, filter, LIST_LIMIT).await?;
        tx.commit().await?;
        Ok(rows)
    }
}

/// The documented payload of the `isolation.*` events.
pub fn event_data(m: &MigrationRow) -> serde_json::Value {
    json!({
        "migrationId": m.id,
        "tenantId": m.tenant_id,
        "fromLevel": m.from_level,
        "toLevel": m.to_level,
    })
}
