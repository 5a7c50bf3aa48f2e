//! TenantService: proto ⇄ service conversions; the logic is in
//! `service::tenants`.

use tonic::{Request, Response, Status, codegen::BoxStream};
use uuid::Uuid;

use super::{actor, export, parse_id, timestamp};
use crate::{
    app::AppState,
    domain::tenant::{self as rules, Plan, PlanLimits, TenantStatus, Transition},
    error::ApiError,
    proto::v1,
    service::billing::View,
    service::{
        keys::TenantFacts,
        metering::PeriodUsage,
        tenants::{NewTenantInput, TenantChanges},
    },
    storage::{
        entities::{api_key, tenant},
        health::HealthRow,
    },
};

#[derive(Clone)]
pub struct TenantApi {
    pub state: AppState,
}

pub fn plan_to_proto(plan: &str) -> i32 {
    (match Plan::parse(plan) {
        Some(Plan::Starter) => v1::Plan::Starter,
        Some(Plan::Growth) => v1::Plan::Growth,
        Some(Plan::Scale) => v1::Plan::Scale,
        Some(Plan::Enterprise) => v1::Plan::Enterprise,
        None => v1::Plan::Unspecified,
    }) as i32
}

fn plan_from_proto(plan: i32) -> Result<Option<Plan>, ApiError> {
    match v1::Plan::try_from(plan) {
        Ok(v1::Plan::Unspecified) => Ok(None),
        Ok(v1::Plan::Starter) => Ok(Some(Plan::Starter)),
        Ok(v1::Plan::Growth) => Ok(Some(Plan::Growth)),
        Ok(v1::Plan::Scale) => Ok(Some(Plan::Scale)),
        Ok(v1::Plan::Enterprise) => Ok(Some(Plan::Enterprise)),
        Err(_) => Err(ApiError::bad_field(
            "plan",
            "expected one of: starter, growth, scale, enterprise",
        )),
    }
}

pub(super) fn status_to_proto(status: &str) -> i32 {
    (match TenantStatus::parse(status) {
        Some(TenantStatus::Pending) => v1::TenantStatus::Pending,
        Some(TenantStatus::Active) => v1::TenantStatus::Active,
        Some(TenantStatus::Suspended) => v1::TenantStatus::Suspended,
        Some(TenantStatus::Terminated) => v1::TenantStatus::Terminated,
        None => v1::TenantStatus::Unspecified,
    }) as i32
}

pub(super) fn isolation_to_proto(level: &str) -> i32 {
    (match rules::IsolationLevel::parse(level) {
        Some(rules::IsolationLevel::SharedSchema) => v1::IsolationLevel::SharedSchema,
        Some(rules::IsolationLevel::DedicatedSchema) => v1::IsolationLevel::DedicatedSchema,
        Some(rules::IsolationLevel::DedicatedDatabase) => v1::IsolationLevel::DedicatedDatabase,
        None => v1::IsolationLevel::Unspecified,
    }) as i32
}

pub fn tenant_to_proto(t: &tenant::Model) -> v1::Tenant {
    v1::Tenant {
        id: t.id.to_string(),
        name: t.name.clone(),
        owner_email: t.owner_email.clone(),
        plan: plan_to_proto(&t.plan),
        status: status_to_proto(&t.status),
        region: t.region.clone(),
        isolation_level: isolation_to_proto(&t.isolation_level),
        api_key_prefix: t.api_key_prefix.clone(),
        last_active_at: t.last_active_at.map(timestamp),
        created_at: Some(timestamp(t.created_at)),
        slug: t.slug.clone(),
        time_zone: t.time_zone.clone(),
        suspended_reason: t.suspended_reason.clone(),
        updated_at: Some(timestamp(t.updated_at)),
    }
}

/// A tenant's own limits and those in force.
fn limits_to_proto(t: &tenant::Model) -> v1::TenantLimits {
    let limits = crate::service::tenants::limits(t);
    v1::TenantLimits {
        tenant_id: t.id.to_string(),
        plan: plan_to_proto(&t.plan),
        own_api_calls: t.api_call_limit,
        own_storage_gb: t.storage_gb_limit,
        own_seats: t.seats_limit,
        api_call_limit: limits.api_calls,
        storage_gb_limit: limits.storage_gb,
        seats_limit: limits.seats,
    }
}

/// One dashboard row: the tenant, its usage, health and billing.
fn dashboard_row(
    t: &tenant::Model,
    usage: &PeriodUsage,
    health: Option<&HealthRow>,
    billing: &View,
) -> v1::DashboardTenant {
    let limits = usage.limits;
    v1::DashboardTenant {
        error_rate: health.map_or(0.0, |h| h.error_rate),
        request_rate: health.map_or(0.0, |h| h.request_rate),
        sla_risk: health.is_some_and(|h| h.sla_risk),
        rate_limit: t.rate_limit,
        api_calls: usage.api_calls,
        storage_gb: usage.storage_gb,
        seats: usage.seats,
        id: t.id.to_string(),
        name: t.name.clone(),
        owner_email: t.owner_email.clone(),
        plan: plan_to_proto(&t.plan),
        status: status_to_proto(&t.status),
        region: t.region.clone(),
        isolation_level: isolation_to_proto(&t.isolation_level),
        health_status: health.map_or(v1::HealthStatus::Unknown, |h| {
            super::health::health_status(&h.status)
        }) as i32,
        mrr_cents: billing.mrr_cents,
        usage_cost_cents: billing.usage_cost_cents,
        api_call_limit: limits.api_calls,
        storage_gb_limit: limits.storage_gb,
        seats_limit: limits.seats,
        slug: t.slug.clone(),
        created_at: Some(timestamp(t.created_at)),
    }
}

fn key_to_proto(k: &api_key::Model) -> v1::ApiKey {
    v1::ApiKey {
        id: k.id.to_string(),
        tenant_id: k.tenant_id.to_string(),
        label: k.label.clone(),
        prefix: k.prefix.clone(),
        created_at: Some(timestamp(k.created_at)),
        last_used_at: k.last_used_at.map(timestamp),
        revoked_at: k.revoked_at.map(timestamp),
        primary: k.is_primary,
    }
}

type ApiResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl v1::tenant_service_server::TenantService for TenantApi {
    async fn create_tenant(
        &self,
        request: Request<v1::CreateTenantRequest>,
    ) -> ApiResult<v1::CreateTenantResponse> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let input = NewTenantInput {
            plan: plan_from_proto(r.plan)?,
            name: r.name,
            owner_email: r.owner_email,
            region: Some(r.region).filter(|s| !s.is_empty()),
            slug: Some(r.slug).filter(|s| !s.is_empty()),
            time_zone: Some(r.time_zone).filter(|s| !s.is_empty()),
        };
        let (tenant, api_key) = self.state.tenants.create(&actor, input).await?;
        Ok(Response::new(v1::CreateTenantResponse {
            tenant: Some(tenant_to_proto(&tenant)),
            api_key,
        }))
    }

    async fn list_tenants(
        &self,
        request: Request<v1::ListTenantsRequest>,
    ) -> ApiResult<v1::ListTenantsResponse> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let (rows, next_cursor) = self.state.tenants.list(&actor, &r.cursor, r.limit).await?;
        Ok(Response::new(v1::ListTenantsResponse {
            data: rows.iter().map(tenant_to_proto).collect(),
            next_cursor,
        }))
    }

    async fn list_dashboard_tenants(
        &self,
        request: Request<v1::ListDashboardTenantsRequest>,
    ) -> ApiResult<v1::ListDashboardTenantsResponse> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let (rows, next_cursor) = self.state.tenants.list(&actor, &r.cursor, r.limit).await?;
        let usage = self.state.metering.current_many(&rows).await?;
        let ids: Vec<Uuid> = rows.iter().map(|t| t.id).collect();
        let health = self.state.health.of(actor.platform()?, &ids).await?;
        let health: std::collections::HashMap<Uuid, HealthRow> =
            health.into_iter().map(|h| (h.tenant_id, h)).collect();
        let billing = self
            .state
            .billing
            .views_with(actor.platform()?, &rows, &usage)
            .await?;
        Ok(Response::new(v1::ListDashboardTenantsResponse {
            data: rows
                .iter()
                .zip(&usage)
                .zip(&billing)
                .map(|((t, u), b)| dashboard_row(t, u, health.get(&t.id), b))
                .collect(),
            next_cursor,
        }))
    }

    async fn get_tenant(&self, request: Request<v1::GetTenantRequest>) -> ApiResult<v1::Tenant> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        Ok(Response::new(tenant_to_proto(
            &self.state.tenants.get(&actor, id).await?,
        )))
    }

    async fn update_tenant(
        &self,
        request: Request<v1::UpdateTenantRequest>,
    ) -> ApiResult<v1::Tenant> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let id = parse_id("id", &r.id)?;
        let masked = |field: &str| {
            r.update_mask
                .as_ref()
                .is_none_or(|m| m.paths.iter().any(|p| p == field))
        };
        if let Some(mask) = &r.update_mask
            && let Some(unknown) = mask
                .paths
                .iter()
                .find(|p| !["name", "region", "time_zone"].contains(&p.as_str()))
        {
            return Err(ApiError::bad_field(
                "updateMask",
                format!("`{unknown}` cannot be updated"),
            )
            .into());
        }
        let changes = TenantChanges {
            name: r.name.clone().filter(|_| masked("name")),
            region: r.region.clone().filter(|_| masked("region")),
            time_zone: r.time_zone.clone().filter(|_| masked("time_zone")),
        };
        Ok(Response::new(tenant_to_proto(
            &self.state.tenants.update(&actor, id, changes).await?,
        )))
    }

    async fn suspend_tenant(
        &self,
        request: Request<v1::SuspendTenantRequest>,
    ) -> ApiResult<v1::Tenant> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let id = parse_id("id", &r.id)?;
        let reason = Some(r.reason).filter(|s| !s.is_empty());
        Ok(Response::new(tenant_to_proto(
            &self
                .state
                .tenants
                .transition(&actor, id, Transition::Suspend, reason)
                .await?,
        )))
    }

    async fn reactivate_tenant(
        &self,
        request: Request<v1::ReactivateTenantRequest>,
    ) -> ApiResult<v1::Tenant> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        Ok(Response::new(tenant_to_proto(
            &self
                .state
                .tenants
                .transition(&actor, id, Transition::Reactivate, None)
                .await?,
        )))
    }

    async fn terminate_tenant(
        &self,
        request: Request<v1::TerminateTenantRequest>,
    ) -> ApiResult<v1::Tenant> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        Ok(Response::new(tenant_to_proto(
            &self
                .state
                .tenants
                .transition(&actor, id, Transition::Terminate, None)
                .await?,
        )))
    }

    async fn rotate_tenant_key(
        &self,
        request: Request<v1::RotateTenantKeyRequest>,
    ) -> ApiResult<v1::RotateTenantKeyResponse> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let (tenant, api_key) = self.state.tenants.rotate_key(&actor, id).await?;
        Ok(Response::new(v1::RotateTenantKeyResponse {
            tenant: Some(tenant_to_proto(&tenant)),
            api_key,
        }))
    }

    async fn change_tenant_plan(
        &self,
        request: Request<v1::ChangeTenantPlanRequest>,
    ) -> ApiResult<v1::Tenant> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let id = parse_id("id", &r.id)?;
        let plan = plan_from_proto(r.plan)?.ok_or_else(|| {
            ApiError::validation(vec![crate::error::FieldViolation {
                field: "plan".into(),
                description: "is required".into(),
            }])
        })?;
        Ok(Response::new(tenant_to_proto(
            &self.state.tenants.change_plan(&actor, id, plan).await?,
        )))
    }

    async fn get_tenant_limits(
        &self,
        request: Request<v1::GetTenantLimitsRequest>,
    ) -> ApiResult<v1::TenantLimits> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        Ok(Response::new(limits_to_proto(
            &self.state.tenants.get(&actor, id).await?,
        )))
    }

    async fn set_tenant_limits(
        &self,
        request: Request<v1::SetTenantLimitsRequest>,
    ) -> ApiResult<v1::TenantLimits> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let id = parse_id("id", &r.id)?;
        let own =
            PlanLimits::own(r.api_calls, r.storage_gb, r.seats).map_err(ApiError::validation)?;
        Ok(Response::new(limits_to_proto(
            &self.state.tenants.set_limits(&actor, id, own).await?,
        )))
    }

    async fn delete_tenant(
        &self,
        request: Request<v1::DeleteTenantRequest>,
    ) -> ApiResult<v1::DeleteTenantResponse> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.state.tenants.delete(&actor, id).await?;
        Ok(Response::new(v1::DeleteTenantResponse {}))
    }

    async fn export_tenant(
        &self,
        request: Request<v1::ExportTenantRequest>,
    ) -> ApiResult<BoxStream<v1::ExportTenantResponse>> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let id = parse_id("id", &r.id)?;
        let format = match v1::ExportFormat::try_from(r.format) {
            Ok(v1::ExportFormat::Csv) => export::Format::Csv,
            Ok(_) => export::Format::Json,
            Err(_) => {
                return Err(ApiError::bad_field("format", "expected one of: json, csv").into());
            }
        };
        let tenant = self.state.tenants.export(&actor, id).await?;
        let usage = self
            .state
            .metering
            .current(tenant.id, &TenantFacts::of(&tenant))
            .await?;
        let health = self
            .state
            .health
            .of(actor.platform()?, &[tenant.id])
            .await?
            .pop();
        let billing = self
            .state
            .billing
            .views_with(
                actor.platform()?,
                std::slice::from_ref(&tenant),
                std::slice::from_ref(&usage),
            )
            .await?
            .pop();
        let chunks = export::stream(
            self.state.clone(),
            actor,
            &tenant,
            &usage,
            health.as_ref(),
            billing.as_ref(),
            format,
        );
        let mut response = Response::new(Box::pin(chunks) as BoxStream<v1::ExportTenantResponse>);
        let extension = format.extension();
        let disposition = format!(
            "attachment; filename=\"tenant-{}-export.{extension}\"",
            tenant.slug
        );
        if let Ok(value) = disposition.parse() {
            response.metadata_mut().insert("content-disposition", value);
        }
        Ok(response)
    }

    async fn create_api_key(
        &self,
        request: Request<v1::CreateApiKeyRequest>,
    ) -> ApiResult<v1::CreateApiKeyResponse> {
        let actor = actor(&request)?;
        let tenant_id = parse_id("tenantId", &request.get_ref().tenant_id)?;
        actor.named_tenant(Some(tenant_id))?;
        let (key, api_key) = self
            .state
            .tenants
            .create_key(&actor, tenant_id, &request.get_ref().label)
            .await?;
        Ok(Response::new(v1::CreateApiKeyResponse {
            key: Some(key_to_proto(&key)),
            api_key,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<v1::ListApiKeysRequest>,
    ) -> ApiResult<v1::ListApiKeysResponse> {
        let actor = actor(&request)?;
        let tenant_id = parse_id("tenantId", &request.get_ref().tenant_id)?;
        actor.named_tenant(Some(tenant_id))?;
        let keys = self.state.tenants.list_keys(&actor, tenant_id).await?;
        Ok(Response::new(v1::ListApiKeysResponse {
            data: keys.iter().map(key_to_proto).collect(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<v1::RevokeApiKeyRequest>,
    ) -> ApiResult<v1::ApiKey> {
        let actor = actor(&request)?;
        let tenant_id = parse_id("tenantId", &request.get_ref().tenant_id)?;
        let key_id = parse_id("keyId", &request.get_ref().key_id)?;
        actor.named_tenant(Some(tenant_id))?;
        Ok(Response::new(key_to_proto(
            &self
                .state
                .tenants
                .revoke_key(&actor, tenant_id, key_id)
                .await?,
        )))
    }
}
