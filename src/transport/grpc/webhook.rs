//! WebhookService (the inbound gateway): proto ⇄ service conversions. The
//! settings are built (`service::webhook_settings`); receiving, the event
//! log and its history answer UNIMPLEMENTED until the gateway is.

use tonic::{Request, Response, Status};

use super::{actor, timestamp};
use crate::{
    app::AppState,
    proto::v1,
    service::webhook_settings::{ProviderInput, SettingsChange, SettingsView},
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
    }
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
        };
        Ok(Response::new(settings_to_proto(
            self.state.webhook_settings.update(&actor, change).await?,
        )))
    }
}
