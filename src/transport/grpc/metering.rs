//! MeteringService: proto ⇄ service conversions; the pipeline is in
//! `service::metering`.

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{actor, timestamp};
use crate::{
    app::AppState,
    domain::usage::{EventInput, MAX_BATCH, Metric},
    error::ApiError,
    proto::v1,
    service::{
        Principal,
        keys::TenantFacts,
        metering::{PeriodUsage, TrackResult},
    },
    storage::usage::{Rollup, StoredEvent},
};

type ApiResult<T> = Result<Response<T>, Status>;

#[derive(Clone)]
pub struct MeteringApi {
    pub state: AppState,
}

/// The tenant of the calling key (the access table admits tenant keys
/// only): 401 without a principal, 403 for any other.
fn tenant_of<T>(request: &Request<T>) -> Result<Uuid, ApiError> {
    actor(request)?.tenant()
}

fn metric_from_proto(metric: i32) -> Option<Metric> {
    match v1::UsageMetric::try_from(metric).ok()? {
        v1::UsageMetric::ApiCall => Some(Metric::ApiCall),
        v1::UsageMetric::StorageGb => Some(Metric::StorageGb),
        v1::UsageMetric::Seats => Some(Metric::Seats),
        v1::UsageMetric::Compute => Some(Metric::Compute),
        v1::UsageMetric::Unspecified => None,
    }
}

fn metric_to_proto(metric: Metric) -> i32 {
    (match metric {
        Metric::ApiCall => v1::UsageMetric::ApiCall,
        Metric::StorageGb => v1::UsageMetric::StorageGb,
        Metric::Seats => v1::UsageMetric::Seats,
        Metric::Compute => v1::UsageMetric::Compute,
    }) as i32
}

fn time_from_proto(
    field: &str,
    ts: Option<prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    ts.map(|ts| {
        u32::try_from(ts.nanos)
            .ok()
            .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
            .ok_or_else(|| ApiError::bad_field(field, "is not a valid timestamp"))
    })
    .transpose()
}

fn input(
    metric: i32,
    value: f64,
    endpoint: Option<String>,
    idempotency_key: Option<String>,
    ts: Option<prost_types::Timestamp>,
    status_code: Option<i32>,
) -> Result<EventInput, ApiError> {
    Ok(EventInput {
        metric: metric_from_proto(metric),
        value,
        endpoint,
        idempotency_key,
        timestamp: time_from_proto("timestamp", ts)?,
        status_code,
    })
}

fn event_to_proto(e: StoredEvent) -> v1::UsageEvent {
    v1::UsageEvent {
        id: e.id.to_string(),
        tenant_id: e.tenant_id.to_string(),
        metric: metric_to_proto(e.metric),
        value: e.value,
        endpoint: e.endpoint,
        timestamp: Some(timestamp(e.occurred_at)),
        status_code: e.status_code,
        idempotency_key: e.idempotency_key,
    }
}

fn rollup_to_proto(r: Rollup) -> v1::UsageRollup {
    v1::UsageRollup {
        metric: metric_to_proto(r.metric),
        bucket_start: Some(timestamp(r.bucket_start)),
        total: r.total,
        events: r.events,
    }
}

pub fn usage_to_proto(tenant_id: Uuid, u: &PeriodUsage) -> v1::TenantUsageMetric {
    v1::TenantUsageMetric {
        tenant_id: tenant_id.to_string(),
        api_calls: u.api_calls,
        storage_gb: u.storage_gb,
        seats: u.seats,
        compute: u.compute,
        period_start: Some(timestamp(u.period_start)),
        period_end: Some(timestamp(u.period_end)),
        api_call_limit: u.limits.api_calls,
        storage_gb_limit: u.limits.storage_gb,
        seats_limit: u.limits.seats,
    }
}

#[tonic::async_trait]
impl v1::metering_service_server::MeteringService for MeteringApi {
    async fn track(&self, request: Request<v1::TrackRequest>) -> ApiResult<v1::UsageEvent> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let input = input(
            r.metric,
            r.value,
            r.endpoint,
            r.idempotency_key,
            r.timestamp,
            r.status_code,
        )?;
        let event = self.state.metering.track(tenant, input).await?;
        Ok(Response::new(event_to_proto(event)))
    }

    async fn track_batch(
        &self,
        request: Request<v1::TrackBatchRequest>,
    ) -> ApiResult<v1::TrackBatchResponse> {
        let tenant = tenant_of(&request)?;
        let events = request.into_inner().events;
        // Bounded before any conversion work.
        if events.len() > MAX_BATCH {
            return Err(ApiError::validation(vec![crate::error::FieldViolation {
                field: "events".into(),
                description: format!("must hold 1 to {MAX_BATCH} events"),
            }])
            .into());
        }
        let mut inputs = Vec::with_capacity(events.len());
        let mut malformed = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            match input(
                e.metric,
                e.value,
                e.endpoint,
                e.idempotency_key,
                e.timestamp,
                e.status_code,
            ) {
                Ok(input) => inputs.push(input),
                Err(err) => {
                    // Keep the slot: an invalid timestamp rejects this event only.
                    malformed.push((i, err));
                    inputs.push(EventInput {
                        value: f64::NAN,
                        ..Default::default()
                    });
                }
            }
        }
        let results = self.state.metering.track_batch(tenant, inputs).await?;
        let mut response = v1::TrackBatchResponse::default();
        for (index, result) in results.into_iter().enumerate() {
            let mut out = v1::TrackResult {
                index: index as i32,
                ..Default::default()
            };
            let result = match malformed.iter().find(|(i, _)| *i == index) {
                Some((_, err)) => TrackResult::Rejected(crate::error::FieldViolation {
                    field: "timestamp".into(),
                    description: err.message.clone(),
                }),
                None => result,
            };
            match result {
                TrackResult::Accepted(e) => {
                    response.accepted += 1;
                    out.outcome = v1::TrackOutcome::Accepted as i32;
                    out.event_id = e.id.to_string();
                }
                TrackResult::Duplicate(e) => {
                    response.duplicates += 1;
                    out.outcome = v1::TrackOutcome::Duplicate as i32;
                    out.event_id = e.id.to_string();
                }
                TrackResult::Rejected(v) => {
                    response.rejected += 1;
                    out.outcome = v1::TrackOutcome::Rejected as i32;
                    out.reason = Some(v.description);
                    out.field = (!v.field.is_empty()).then_some(v.field);
                }
            }
            response.results.push(out);
        }
        Ok(Response::new(response))
    }

    async fn get_metrics(
        &self,
        request: Request<v1::GetMetricsRequest>,
    ) -> ApiResult<v1::TenantUsageMetric> {
        let actor = actor(&request)?;
        let named = &request.get_ref().tenant_id;
        let named = (!named.is_empty())
            .then(|| super::parse_id("tenantId", named))
            .transpose()?;
        let tenant_id = actor
            .named_tenant(named)?
            .ok_or_else(|| ApiError::bad_field("tenantId", "is required with an admin key"))?;
        // A tenant key carries its tenant's facts; an admin's are read.
        let facts = match &actor.principal {
            Principal::Tenant { tenant, .. } => tenant.clone(),
            _ => std::sync::Arc::new(TenantFacts::of(
                &self.state.tenants.get(&actor, tenant_id).await?,
            )),
        };
        let usage = self.state.metering.current(tenant_id, &facts).await?;
        Ok(Response::new(usage_to_proto(tenant_id, &usage)))
    }

    async fn get_summary(
        &self,
        request: Request<v1::GetSummaryRequest>,
    ) -> ApiResult<v1::UsageSummary> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let start = time_from_proto("start", r.start)?;
        let end = time_from_proto("end", r.end)?;
        let summary = self.state.metering.summary(tenant, start, end).await?;
        Ok(Response::new(v1::UsageSummary {
            tenant_id: tenant.to_string(),
            hourly: summary.hourly.into_iter().map(rollup_to_proto).collect(),
            daily: summary.daily.into_iter().map(rollup_to_proto).collect(),
            monthly: summary.monthly.into_iter().map(rollup_to_proto).collect(),
        }))
    }

    async fn list_events(
        &self,
        request: Request<v1::ListEventsRequest>,
    ) -> ApiResult<v1::ListEventsResponse> {
        let tenant = tenant_of(&request)?;
        let r = request.into_inner();
        let (events, next) = self
            .state
            .metering
            .events(tenant, r.limit, &r.cursor)
            .await?;
        let mut response = Response::new(v1::ListEventsResponse {
            events: events.into_iter().map(event_to_proto).collect(),
            next_cursor: next.clone(),
        });
        if let Some(value) = next.and_then(|n| n.parse().ok()) {
            response.metadata_mut().insert("x-next-cursor", value);
        }
        Ok(response)
    }
}
