//! WebhookService (the inbound gateway): proto ⇄ service conversions for
//! receiving (`service::inbound`), the settings
//! (`service::webhook_settings`) and the event history.

use tonic::{Request, Response, Status, metadata::MetadataValue};

use super::{
    actor, optional_time, record::json_to_struct, timestamp, webhook_endpoint::attempt_to_proto,
};
use crate::{
    app::AppState,
    error::ApiError,
    proto::v1,
    service::{
        inbound::{Accepted, Addressed, EventView},
        webhook_settings::{ProviderInput, SettingsChange, SettingsView},
    },
    storage::inbound::EventFilter,
    transport::rest::HTTP_STATUS_METADATA,
};

type ApiResult<T> = Result<Response<T>, Status>;

#[derive(Clone)]
pub struct WebhookApi {
    pub state: AppState,
}

fn provider_to_proto(name: &str) -> v1::WebhookProvider {
    match name {
        "stripe" => v1::WebhookProvider::Stripe,
        "generic" => v1::WebhookProvider::Generic,
        "shopify" => v1::WebhookProvider::Shopify,
        "paypal" => v1::WebhookProvider::Paypal,
        "braintree" => v1::WebhookProvider::Braintree,
        "github" => v1::WebhookProvider::Github,
        _ => v1::WebhookProvider::Unspecified,
    }
}

fn provider_from_proto(raw: i32) -> Option<&'static str> {
    Some(match v1::WebhookProvider::try_from(raw).ok()? {
        v1::WebhookProvider::Stripe => "stripe",
        v1::WebhookProvider::Generic => "generic",
        v1::WebhookProvider::Shopify => "shopify",
        v1::WebhookProvider::Paypal => "paypal",
        v1::WebhookProvider::Braintree => "braintree",
        v1::WebhookProvider::Github => "github",
        v1::WebhookProvider::Unspecified => return None,
    })
}

fn settings_to_proto(s: SettingsView) -> v1::WebhookSettings {
    v1::WebhookSettings {
        callback_url: s.callback_url,
        providers: s
            .providers
            .into_iter()
            .map(|p| v1::ProviderSettings {
                provider: provider_to_proto(p.provider) as i32,
                enabled: p.enabled,
                secret_configured: p.secret_configured,
                inbound_url: p.inbound_url,
                paypal_webhook_id: p.paypal_webhook_id,
            })
            .collect(),
        updated_at: s.updated_at.map(timestamp),
        signing_secret: s.signing_secret,
        signing_secret_configured: s.signing_secret_configured,
        callback_disabled_reason: s.callback_disabled_reason,
    }
}

fn status_to_proto(status: &str) -> v1::WebhookEventStatus {
    match status {
        "received" => v1::WebhookEventStatus::Received,
        "queued" => v1::WebhookEventStatus::Queued,
        "processed" => v1::WebhookEventStatus::Processed,
        "delivery_failed" => v1::WebhookEventStatus::DeliveryFailed,
        _ => v1::WebhookEventStatus::Unspecified,
    }
}

fn status_from_proto(raw: i32) -> Option<&'static str> {
    Some(match v1::WebhookEventStatus::try_from(raw).ok()? {
        v1::WebhookEventStatus::Received => "received",
        v1::WebhookEventStatus::Queued => "queued",
        v1::WebhookEventStatus::Processed => "processed",
        v1::WebhookEventStatus::DeliveryFailed => "delivery_failed",
        v1::WebhookEventStatus::Unspecified => return None,
    })
}

fn object(value: Option<serde_json::Value>) -> Option<prost_types::Struct> {
    match value? {
        serde_json::Value::Object(map) => Some(json_to_struct(map)),
        _ => None,
    }
}

fn event_to_proto(v: EventView) -> v1::WebhookEvent {
    let e = v.event;
    v1::WebhookEvent {
        id: e.id,
        tenant_id: e.tenant_id.to_string(),
        provider: provider_to_proto(&e.provider) as i32,
        provider_event_id: e.provider_event_id,
        provider_raw_type: e.raw_type,
        r#type: e.event_type,
        status: status_to_proto(&e.status) as i32,
        attempts: e.attempts,
        last_error: e.last_error,
        occurred_at: Some(timestamp(e.occurred_at)),
        received_at: Some(timestamp(e.received_at)),
        processed_at: e.processed_at.map(timestamp),
        payload: object(v.payload),
        headers: object(v.headers),
        attempt_log: v.attempts.into_iter().map(attempt_to_proto).collect(),
    }
}

/// The documented answer: `{ok}`, plus `cached` (200) or `queued` (202).
fn accepted<T>(
    accepted: Accepted,
    make: impl FnOnce(Option<bool>, Option<bool>) -> T,
) -> Response<T> {
    let (cached, queued) = match accepted {
        Accepted::Logged => (None, None),
        Accepted::Duplicate => (Some(true), None),
        Accepted::Queued => (None, Some(true)),
    };
    let mut response = Response::new(make(cached, queued));
    if accepted == Accepted::Queued {
        response
            .metadata_mut()
            .insert(HTTP_STATUS_METADATA, MetadataValue::from_static("202"));
    }
    response
}

/// The provider a route names; an unknown one is 404 like an unknown
/// route (the path names nothing).
fn provider_name(raw: i32) -> Result<&'static str, ApiError> {
    provider_from_proto(raw).ok_or_else(|| {
        ApiError::not_found("unknown webhook provider").with_reason("UNKNOWN_PROVIDER")
    })
}

#[tonic::async_trait]
impl v1::webhook_service_server::WebhookService for WebhookApi {
    async fn get_webhook_settings(
        &self,
        request: Request<v1::GetWebhookSettingsRequest>,
    ) -> ApiResult<v1::WebhookSettings> {
        let actor = actor(&request)?;
        Ok(Response::new(settings_to_proto(
            self.state.webhook_settings.get(&actor).await?,
        )))
    }

    async fn update_webhook_settings(
        &self,
        request: Request<v1::UpdateWebhookSettingsRequest>,
    ) -> ApiResult<v1::WebhookSettings> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let change = SettingsChange {
            callback_url: r.callback_url,
            providers: r
                .providers
                .into_iter()
                .map(|p| ProviderInput {
                    provider: provider_from_proto(p.provider),
                    enabled: p.enabled,
                    secret: p.secret,
                    paypal_webhook_id: p.paypal_webhook_id,
                })
                .collect(),
            rotate_signing_secret: r.rotate_signing_secret,
        };
        Ok(Response::new(settings_to_proto(
            self.state.webhook_settings.update(&actor, change).await?,
        )))
    }

    async fn receive_webhook(
        &self,
        request: Request<v1::ReceiveWebhookRequest>,
    ) -> ApiResult<v1::ReceiveWebhookResponse> {
        let tenant = actor(&request)?.tenant()?;
        let (metadata, _, r) = request.into_parts();
        let provider = provider_name(r.provider)?;
        let body = r.body.unwrap_or_default();
        let outcome = self
            .state
            .inbound
            .receive(
                Addressed::Tenant(tenant),
                provider,
                &metadata.into_headers(),
                &body.data,
            )
            .await?;
        Ok(accepted(outcome, |cached, queued| {
            v1::ReceiveWebhookResponse {
                ok: true,
                cached,
                queued,
            }
        }))
    }

    async fn receive_webhook_by_slug(
        &self,
        request: Request<v1::ReceiveWebhookBySlugRequest>,
    ) -> ApiResult<v1::ReceiveWebhookBySlugResponse> {
        let (metadata, _, r) = request.into_parts();
        let provider = provider_name(r.provider)?;
        let body = r.body.unwrap_or_default();
        let outcome = self
            .state
            .inbound
            .receive(
                Addressed::Slug(&r.tenant_slug),
                provider,
                &metadata.into_headers(),
                &body.data,
            )
            .await?;
        Ok(accepted(outcome, |cached, queued| {
            v1::ReceiveWebhookBySlugResponse {
                ok: true,
                cached,
                queued,
            }
        }))
    }

    async fn verify_braintree_challenge(
        &self,
        request: Request<v1::VerifyBraintreeChallengeRequest>,
    ) -> ApiResult<crate::proto::google::api::HttpBody> {
        let r = request.into_inner();
        let answer = self
            .state
            .inbound
            .braintree_challenge(&r.tenant_slug, &r.bt_challenge)
            .await?;
        Ok(Response::new(crate::proto::google::api::HttpBody {
            content_type: "text/plain; charset=utf-8".to_owned(),
            data: answer.into_bytes(),
            extensions: Vec::new(),
        }))
    }

    async fn list_webhook_events(
        &self,
        request: Request<v1::ListWebhookEventsRequest>,
    ) -> ApiResult<v1::ListWebhookEventsResponse> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let provider = match r.provider {
            0 => None,
            raw => Some(
                provider_from_proto(raw)
                    .ok_or_else(|| ApiError::bad_field("provider", "is not a webhook provider"))?,
            ),
        };
        let status = match r.status {
            0 => None,
            raw => Some(
                status_from_proto(raw)
                    .ok_or_else(|| ApiError::bad_field("status", "is not an event status"))?,
            ),
        };
        let filter = EventFilter {
            status: status.map(str::to_owned),
            provider: provider.map(str::to_owned),
            event_type: Some(r.r#type).filter(|t| !t.is_empty()),
            received_from: optional_time("receivedFrom", r.received_from)?,
            received_to: optional_time("receivedTo", r.received_to)?,
        };
        let limit = (r.limit != 0).then_some(r.limit.max(0) as u64);
        let cursor = Some(r.cursor.as_str()).filter(|c| !c.is_empty());
        let page = self
            .state
            .webhook_events
            .list(&actor, filter, limit, cursor)
            .await?;
        Ok(Response::new(v1::ListWebhookEventsResponse {
            data: page.data.into_iter().map(event_to_proto).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    async fn get_webhook_event(
        &self,
        request: Request<v1::GetWebhookEventRequest>,
    ) -> ApiResult<v1::WebhookEvent> {
        let actor = actor(&request)?;
        let id = request.into_inner().id;
        Ok(Response::new(event_to_proto(
            self.state.webhook_events.get(&actor, &id).await?,
        )))
    }

    async fn retry_webhook_event(
        &self,
        request: Request<v1::RetryWebhookEventRequest>,
    ) -> ApiResult<v1::WebhookEvent> {
        let actor = actor(&request)?;
        let id = request.into_inner().id;
        Ok(Response::new(event_to_proto(
            self.state.webhook_events.retry(&actor, &id).await?,
        )))
    }
}
