//! IsolationService: proto ⇄ service conversions for isolation migrations
//! (`service::isolation`; the move is `workers::isolation`).

use tonic::{Request, Response, Status};

use super::{actor, parse_id, tenant::isolation_to_proto, timestamp};
use crate::{
    app::AppState, domain::isolation::MigrationStatus, domain::tenant::IsolationLevel, proto::v1,
    storage::isolation::MigrationRow,
};

#[derive(Clone)]
pub struct IsolationApi {
    pub state: AppState,
}

fn status_to_proto(status: &str) -> i32 {
    (match MigrationStatus::parse(status) {
        Some(MigrationStatus::Pending) => v1::MigrationStatus::Pending,
        Some(MigrationStatus::InProgress) => v1::MigrationStatus::InProgress,
        Some(MigrationStatus::Completed) => v1::MigrationStatus::Completed,
        Some(MigrationStatus::Failed) => v1::MigrationStatus::Failed,
        None => v1::MigrationStatus::Unspecified,
    }) as i32
}

fn migration_to_proto(m: MigrationRow) -> v1::IsolationMigration {
    v1::IsolationMigration {
        id: m.id.to_string(),
        tenant_id: m.tenant_id.to_string(),
        from_level: isolation_to_proto(&m.from_level),
        to_level: isolation_to_proto(&m.to_level),
        status: status_to_proto(&m.status),
        error: m.error,
        created_at: Some(timestamp(m.created_at)),
        started_at: m.started_at.map(timestamp),
        completed_at: m.completed_at.map(timestamp),
        rows_copied: m.rows_copied,
        rows_total: m.rows_total,
        phase: m.phase,
    }
}

fn level_from_proto(level: i32) -> Option<IsolationLevel> {
    match v1::IsolationLevel::try_from(level).ok()? {
        v1::IsolationLevel::Unspecified => None,
        v1::IsolationLevel::SharedSchema => Some(IsolationLevel::SharedSchema),
        v1::IsolationLevel::DedicatedSchema => Some(IsolationLevel::DedicatedSchema),
        v1::IsolationLevel::DedicatedDatabase => Some(IsolationLevel::DedicatedDatabase),
    }
}

fn optional_id(field: &str, raw: &str) -> Result<Option<uuid::Uuid>, Status> {
    Ok((!raw.is_empty())
        .then(|| parse_id(field, raw))
        .transpose()?)
}

#[tonic::async_trait]
impl v1::isolation_service_server::IsolationService for IsolationApi {
    async fn start_migration(
        &self,
        request: Request<v1::StartMigrationRequest>,
    ) -> Result<Response<v1::IsolationMigration>, Status> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let tenant = optional_id("tenantId", &r.tenant_id)?;
        let m = self
            .state
            .isolation
            .start(&actor, tenant, level_from_proto(r.target_level))
            .await?;
        Ok(Response::new(migration_to_proto(m)))
    }

    async fn get_migration(
        &self,
        request: Request<v1::GetMigrationRequest>,
    ) -> Result<Response<v1::IsolationMigration>, Status> {
        let actor = actor(&request)?;
        let id = request.into_inner().id;
        // Not a migration id: no such migration.
        let Ok(id) = parse_id("id", &id) else {
            return Err(crate::error::ApiError::not_found("Migration not found").into());
        };
        let m = self.state.isolation.get(&actor, id).await?;
        Ok(Response::new(migration_to_proto(m)))
    }

    async fn list_migrations(
        &self,
        request: Request<v1::ListMigrationsRequest>,
    ) -> Result<Response<v1::ListMigrationsResponse>, Status> {
        let actor = actor(&request)?;
        let tenant = optional_id("tenantId", &request.into_inner().tenant_id)?;
        let rows = self.state.isolation.list(&actor, tenant).await?;
        Ok(Response::new(v1::ListMigrationsResponse {
            migrations: rows.into_iter().map(migration_to_proto).collect(),
        }))
    }
}
