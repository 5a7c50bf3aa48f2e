//! WebhookEndpointService: proto ⇄ service conversions; the rules are in
//! `service::webhook_endpoints` and `domain::webhook`.

use prost_types::value::Kind;
use tonic::{Request, Response, Status};

use super::{actor, optional_time, parse_id, timestamp};
use crate::{
    app::AppState,
    error::{ApiError, FieldViolation},
    proto::v1,
    service::webhook_endpoints::{EndpointChanges, NewEndpoint},
    storage::webhooks::{AttemptRow, DeliveryRow, EndpointRow},
};

type ApiResult<T> = Result<Response<T>, Status>;

#[derive(Clone)]
pub struct WebhookEndpointApi {
    pub state: AppState,
}

fn endpoint_to_proto(e: EndpointRow, now: chrono::DateTime<chrono::Utc>) -> v1::WebhookEndpoint {
    let breaker = match e.breaker_state.as_str() {
        "open" => v1::BreakerState::Open,
        "half_open" => v1::BreakerState::HalfOpen,
        _ => v1::BreakerState::Closed,
    };
    v1::WebhookEndpoint {
        id: e.id.to_string(),
        url: e.url,
        event_types: e.event_types,
        enabled: e.enabled,
        description: e.description,
        created_at: Some(timestamp(e.created_at)),
        updated_at: Some(timestamp(e.updated_at)),
        ordered: e.ordered,
        disabled_reason: e.disabled_reason,
        breaker_state: breaker as i32,
        previous_secret_expires_at: e
            .previous_until
            .filter(|until| e.previous_secret.is_some() && *until > now)
            .map(timestamp),
    }
}

fn status_to_proto(status: &str) -> v1::DeliveryStatus {
    match status {
        "pending" => v1::DeliveryStatus::Pending,
        "delivered" => v1::DeliveryStatus::Delivered,
        _ => v1::DeliveryStatus::Failed,
    }
}

fn delivery_to_proto(d: DeliveryRow) -> v1::WebhookDelivery {
    let status = status_to_proto(&d.status);
    v1::WebhookDelivery {
        id: d.id.to_string(),
        endpoint_id: d.endpoint_id.to_string(),
        event_id: d.event_id,
        event_type: d.event_type,
        status: status as i32,
        attempts: d.attempts,
        response_status: d.response_status,
        last_error: d.last_error,
        created_at: Some(timestamp(d.created_at)),
        next_attempt_at: (status == v1::DeliveryStatus::Pending)
            .then(|| timestamp(d.next_attempt_at)),
        delivered_at: (status == v1::DeliveryStatus::Delivered)
            .then_some(d.finished_at)
            .flatten()
            .map(timestamp),
    }
}

pub(super) fn attempt_to_proto(a: AttemptRow) -> v1::WebhookAttempt {
    v1::WebhookAttempt {
        attempt: a.attempt,
        attempted_at: Some(timestamp(a.attempted_at)),
        ok: a.ok,
        response_status: a.response_status,
        latency_ms: a.latency_ms,
        error: a.error,
        response_excerpt: a.response_excerpt,
    }
}

/// `eventTypes` of an update: a JSON array of strings.
fn event_types(list: prost_types::ListValue) -> Result<Vec<String>, ApiError> {
    list.values
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v.kind {
            Some(Kind::StringValue(s)) => Ok(s),
            _ => Err(ApiError::validation(vec![FieldViolation {
                field: format!("eventTypes[{i}]"),
                description: "must be a string".into(),
            }])),
        })
        .collect()
}

fn delivery_status_filter(raw: i32) -> Result<Option<&'static str>, ApiError> {
    match v1::DeliveryStatus::try_from(raw) {
        Ok(v1::DeliveryStatus::Unspecified) => Ok(None),
        Ok(v1::DeliveryStatus::Pending) => Ok(Some("pending")),
        Ok(v1::DeliveryStatus::Delivered) => Ok(Some("delivered")),
        Ok(v1::DeliveryStatus::Failed) => Ok(Some("failed")),
        Err(_) => Err(ApiError::bad_field(
            "status",
            "must be pending, delivered or failed",
        )),
    }
}

impl WebhookEndpointApi {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.state.clock.now()
    }
}

#[tonic::async_trait]
impl v1::webhook_endpoint_service_server::WebhookEndpointService for WebhookEndpointApi {
    async fn create_webhook_endpoint(
        &self,
        request: Request<v1::CreateWebhookEndpointRequest>,
    ) -> ApiResult<v1::CreateWebhookEndpointResponse> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let (row, secret) = self
            .state
            .webhook_endpoints
            .create(
                &actor,
                NewEndpoint {
                    url: r.url,
                    event_types: r.event_types,
                    description: r.description,
                    ordered: r.ordered,
                },
            )
            .await?;
        Ok(Response::new(v1::CreateWebhookEndpointResponse {
            endpoint: Some(endpoint_to_proto(row, self.now())),
            secret,
        }))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<v1::ListWebhookEndpointsRequest>,
    ) -> ApiResult<v1::ListWebhookEndpointsResponse> {
        let actor = actor(&request)?;
        let rows = self.state.webhook_endpoints.list(&actor).await?;
        let now = self.now();
        Ok(Response::new(v1::ListWebhookEndpointsResponse {
            data: rows
                .into_iter()
                .map(|e| endpoint_to_proto(e, now))
                .collect(),
        }))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<v1::GetWebhookEndpointRequest>,
    ) -> ApiResult<v1::WebhookEndpoint> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let row = self.state.webhook_endpoints.get(&actor, id).await?;
        Ok(Response::new(endpoint_to_proto(row, self.now())))
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<v1::UpdateWebhookEndpointRequest>,
    ) -> ApiResult<v1::WebhookEndpoint> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let id = parse_id("id", &r.id)?;
        let changes = EndpointChanges {
            url: r.url,
            event_types: r.event_types.map(event_types).transpose()?,
            description: r.description,
            enabled: r.enabled,
            ordered: r.ordered,
        };
        let row = self
            .state
            .webhook_endpoints
            .update(&actor, id, changes)
            .await?;
        Ok(Response::new(endpoint_to_proto(row, self.now())))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<v1::DeleteWebhookEndpointRequest>,
    ) -> ApiResult<v1::DeleteWebhookEndpointResponse> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        self.state.webhook_endpoints.delete(&actor, id).await?;
        Ok(Response::new(v1::DeleteWebhookEndpointResponse {}))
    }

    async fn rotate_webhook_endpoint_secret(
        &self,
        request: Request<v1::RotateWebhookEndpointSecretRequest>,
    ) -> ApiResult<v1::RotateWebhookEndpointSecretResponse> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let id = parse_id("id", &r.id)?;
        let (row, secret) = self
            .state
            .webhook_endpoints
            .rotate_secret(&actor, id, r.grace_seconds)
            .await?;
        Ok(Response::new(v1::RotateWebhookEndpointSecretResponse {
            endpoint: Some(endpoint_to_proto(row, self.now())),
            secret,
        }))
    }

    async fn send_test_webhook_event(
        &self,
        request: Request<v1::SendTestWebhookEventRequest>,
    ) -> ApiResult<v1::SendTestWebhookEventResponse> {
        let actor = actor(&request)?;
        let id = parse_id("id", &request.get_ref().id)?;
        let event_id = self.state.webhook_endpoints.send_test(&actor, id).await?;
        Ok(Response::new(v1::SendTestWebhookEventResponse { event_id }))
    }

    async fn recover_webhook_deliveries(
        &self,
        request: Request<v1::RecoverWebhookDeliveriesRequest>,
    ) -> ApiResult<v1::RecoverWebhookDeliveriesResponse> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let id = parse_id("id", &r.id)?;
        let since = optional_time("since", r.since)?;
        let recovered = self
            .state
            .webhook_endpoints
            .recover(&actor, id, since)
            .await?;
        Ok(Response::new(v1::RecoverWebhookDeliveriesResponse {
            recovered: i32::try_from(recovered).unwrap_or(i32::MAX),
        }))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<v1::ListWebhookDeliveriesRequest>,
    ) -> ApiResult<v1::ListWebhookDeliveriesResponse> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let id = parse_id("id", &r.id)?;
        let status = delivery_status_filter(r.status)?;
        let (rows, next) = self
            .state
            .webhook_endpoints
            .deliveries(&actor, id, status, &r.cursor, r.limit)
            .await?;
        Ok(Response::new(v1::ListWebhookDeliveriesResponse {
            data: rows.into_iter().map(delivery_to_proto).collect(),
            next_cursor: next,
        }))
    }

    async fn get_webhook_delivery(
        &self,
        request: Request<v1::GetWebhookDeliveryRequest>,
    ) -> ApiResult<v1::GetWebhookDeliveryResponse> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let id = parse_id("id", &r.id)?;
        let delivery_id = r
            .delivery_id
            .parse::<i64>()
            .map_err(|_| ApiError::bad_field("deliveryId", "must be a delivery id"))?;
        let (delivery, attempts) = self
            .state
            .webhook_endpoints
            .delivery(&actor, id, delivery_id)
            .await?;
        Ok(Response::new(v1::GetWebhookDeliveryResponse {
            delivery: Some(delivery_to_proto(delivery)),
            attempts: attempts.into_iter().map(attempt_to_proto).collect(),
        }))
    }
}
