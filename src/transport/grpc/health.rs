//! HealthService and AlertService: proto ⇄ service conversions; the rules
//! are in `service::health`, `service::alerts` and `domain::health`.

use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{actor, parse_id, timestamp};
use crate::{
    app::AppState,
    error::ApiError,
    proto::v1,
    service::alerts::NewAlert,
    storage::health::{AlertRow, HealthRow},
};

type ApiResult<T> = Result<Response<T>, Status>;

pub fn health_status(status: &str) -> v1::HealthStatus {
    match status {
        "healthy" => v1::HealthStatus::Healthy,
        "warning" => v1::HealthStatus::Warning,
        "critical" => v1::HealthStatus::Critical,
        _ => v1::HealthStatus::Unknown,
    }
}

pub fn health_to_proto(h: HealthRow) -> v1::TenantHealth {
    v1::TenantHealth {
        tenant_id: h.tenant_id.to_string(),
        status: health_status(&h.status) as i32,
        error_rate: h.error_rate,
        request_rate: h.request_rate,
        sla_risk: h.sla_risk,
        rate_limit: h.rate_limit,
        checked_at: h.checked_at.map(timestamp),
        low_volume: h.low_volume,
    }
}

fn alert_to_proto(a: AlertRow) -> v1::Alert {
    let severity = match a.severity.as_str() {
        "info" => v1::AlertSeverity::Info,
        "warning" => v1::AlertSeverity::Warning,
        _ => v1::AlertSeverity::Critical,
    };
    v1::Alert {
        id: a.id.to_string(),
        tenant_id: a.tenant_id.to_string(),
        r#type: a.alert_type,
        severity: severity as i32,
        message: a.message,
        resolved: a.resolved_at.is_some(),
        created_at: Some(timestamp(a.created_at)),
        resolved_at: a.resolved_at.map(timestamp),
    }
}

/// An optional tenant id filter: empty means none.
fn tenant_filter(raw: &str) -> Result<Option<Uuid>, ApiError> {
    if raw.is_empty() {
        Ok(None)
    } else {
        parse_id("tenantId", raw).map(Some)
    }
}

#[derive(Clone)]
pub struct HealthApi {
    pub state: AppState,
}

#[tonic::async_trait]
impl v1::health_service_server::HealthService for HealthApi {
    async fn get_overview(
        &self,
        request: Request<v1::GetOverviewRequest>,
    ) -> ApiResult<v1::HealthOverview> {
        let actor = actor(&request)?;
        let o = self.state.health.overview(&actor).await?;
        let n = |v: i64| i32::try_from(v).unwrap_or(i32::MAX);
        Ok(Response::new(v1::HealthOverview {
            total: n(o.total),
            healthy: n(o.healthy),
            warning: n(o.warning),
            critical: n(o.critical),
            unknown: n(o.unknown),
            avg_error_rate: o.avg_error_rate,
        }))
    }

    async fn list_health(
        &self,
        request: Request<v1::ListHealthRequest>,
    ) -> ApiResult<v1::ListHealthResponse> {
        let actor = actor(&request)?;
        let rows = self.state.health.list(&actor).await?;
        Ok(Response::new(v1::ListHealthResponse {
            health: rows.into_iter().map(health_to_proto).collect(),
        }))
    }

    async fn get_health(
        &self,
        request: Request<v1::GetHealthRequest>,
    ) -> ApiResult<v1::TenantHealth> {
        let actor = actor(&request)?;
        let id = parse_id("tenantId", &request.get_ref().tenant_id)?;
        Ok(Response::new(health_to_proto(
            self.state.health.get(&actor, id).await?,
        )))
    }

    async fn throttle(&self, request: Request<v1::ThrottleRequest>) -> ApiResult<v1::TenantHealth> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let id = parse_id("tenantId", &r.tenant_id)?;
        Ok(Response::new(health_to_proto(
            self.state
                .health
                .throttle(&actor, id, Some(r.limit_rpm))
                .await?,
        )))
    }

    async fn remove_throttle(
        &self,
        request: Request<v1::RemoveThrottleRequest>,
    ) -> ApiResult<v1::TenantHealth> {
        let actor = actor(&request)?;
        let id = parse_id("tenantId", &request.get_ref().tenant_id)?;
        Ok(Response::new(health_to_proto(
            self.state.health.throttle(&actor, id, None).await?,
        )))
    }
}

#[derive(Clone)]
pub struct AlertApi {
    pub state: AppState,
}

#[tonic::async_trait]
impl v1::alert_service_server::AlertService for AlertApi {
    async fn list_alerts(
        &self,
        request: Request<v1::ListAlertsRequest>,
    ) -> ApiResult<v1::ListAlertsResponse> {
        let actor = actor(&request)?;
        let tenant = tenant_filter(&request.get_ref().tenant_id)?;
        let rows = self.state.alerts.list(&actor, tenant, false).await?;
        Ok(Response::new(v1::ListAlertsResponse {
            alerts: rows.into_iter().map(alert_to_proto).collect(),
        }))
    }

    async fn list_unresolved_alerts(
        &self,
        request: Request<v1::ListUnresolvedAlertsRequest>,
    ) -> ApiResult<v1::ListUnresolvedAlertsResponse> {
        let actor = actor(&request)?;
        let tenant = tenant_filter(&request.get_ref().tenant_id)?;
        let rows = self.state.alerts.list(&actor, tenant, true).await?;
        Ok(Response::new(v1::ListUnresolvedAlertsResponse {
            alerts: rows.into_iter().map(alert_to_proto).collect(),
        }))
    }

    async fn create_alert(&self, request: Request<v1::CreateAlertRequest>) -> ApiResult<v1::Alert> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let severity = match v1::AlertSeverity::try_from(r.severity) {
            Ok(v1::AlertSeverity::Info) => Some("info"),
            Ok(v1::AlertSeverity::Warning) => Some("warning"),
            Ok(v1::AlertSeverity::Critical) => Some("critical"),
            _ => None,
        };
        let row = self
            .state
            .alerts
            .create(
                &actor,
                NewAlert {
                    tenant_id: tenant_filter(&r.tenant_id)?,
                    alert_type: r.r#type,
                    severity,
                    message: r.message,
                },
            )
            .await?;
        Ok(Response::new(alert_to_proto(row)))
    }

    async fn resolve_alert(
        &self,
        request: Request<v1::ResolveAlertRequest>,
    ) -> ApiResult<v1::Alert> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        Ok(Response::new(alert_to_proto(
            self.state.alerts.resolve(&actor, id).await?,
        )))
    }

    async fn resolve_all_alerts(
        &self,
        request: Request<v1::ResolveAllAlertsRequest>,
    ) -> ApiResult<v1::ResolveAllAlertsResponse> {
        let actor = actor(&request)?;
        let tenant = tenant_filter(&request.get_ref().tenant_id)?;
        let resolved = self.state.alerts.resolve_all(&actor, tenant).await?;
        Ok(Response::new(v1::ResolveAllAlertsResponse {
            resolved: i32::try_from(resolved).unwrap_or(i32::MAX),
        }))
    }
}
