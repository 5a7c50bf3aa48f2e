//! BillingService: proto ⇄ service conversions; the rules are in
//! `service::billing` and `domain::billing`.

use tonic::{Request, Response, Status};

use super::{actor, parse_id, tenant::plan_to_proto, timestamp};
use crate::{app::AppState, domain::billing::CURRENCY, proto::v1, service::billing::View};

type ApiResult<T> = Result<Response<T>, Status>;

#[derive(Clone)]
pub struct BillingApi {
    pub state: AppState,
}

pub fn billing_to_proto(v: View) -> v1::TenantBilling {
    v1::TenantBilling {
        tenant_id: v.tenant_id.to_string(),
        plan: plan_to_proto(&v.plan),
        mrr_cents: v.mrr_cents,
        usage_cost_cents: v.usage_cost_cents,
        currency: CURRENCY.to_owned(),
        stripe_customer_id: v.row.stripe_customer_id,
        stripe_subscription_id: v.row.stripe_subscription_id,
        period_start: Some(timestamp(v.period_start)),
        period_end: Some(timestamp(v.period_end)),
        synced_at: v.row.synced_at.map(timestamp),
        status: v.row.status,
        drift: v.row.drift,
        drift_at: v.row.drift_at.map(timestamp),
        last_sync_error: v.row.last_error,
        enterprise_price_cents: v.row.enterprise_price_cents,
    }
}

#[tonic::async_trait]
impl v1::billing_service_server::BillingService for BillingApi {
    async fn get_billing(
        &self,
        request: Request<v1::GetBillingRequest>,
    ) -> ApiResult<v1::TenantBilling> {
        let actor = actor(&request)?;
        let tenant = actor.tenant()?;
        Ok(Response::new(billing_to_proto(
            self.state.billing.get(&actor, tenant).await?,
        )))
    }

    async fn get_tenant_billing(
        &self,
        request: Request<v1::GetTenantBillingRequest>,
    ) -> ApiResult<v1::TenantBilling> {
        let actor = actor(&request)?;
        let tenant = parse_id("tenantId", &request.get_ref().tenant_id)?;
        Ok(Response::new(billing_to_proto(
            self.state.billing.get(&actor, tenant).await?,
        )))
    }

    async fn set_enterprise_price(
        &self,
        request: Request<v1::SetEnterprisePriceRequest>,
    ) -> ApiResult<v1::TenantBilling> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        let tenant = parse_id("tenantId", &r.tenant_id)?;
        Ok(Response::new(billing_to_proto(
            self.state
                .billing
                .set_enterprise_price(&actor, tenant, r.monthly_price_cents)
                .await?,
        )))
    }

    async fn get_billing_summary(
        &self,
        request: Request<v1::GetBillingSummaryRequest>,
    ) -> ApiResult<v1::BillingSummary> {
        let actor = actor(&request)?;
        let s = self.state.billing.summary(&actor).await?;
        Ok(Response::new(v1::BillingSummary {
            tenants: s.tenants,
            paying: s.paying,
            mrr_cents: s.mrr_cents,
            usage_cost_cents: s.usage_cost_cents,
            currency: CURRENCY.to_owned(),
        }))
    }

    async fn create_portal_url(
        &self,
        request: Request<v1::CreatePortalUrlRequest>,
    ) -> ApiResult<v1::CreatePortalUrlResponse> {
        let actor = actor(&request)?;
        let url = self
            .state
            .billing
            .portal_url(&actor, &request.get_ref().return_url)
            .await?;
        Ok(Response::new(v1::CreatePortalUrlResponse { url }))
    }

    async fn receive_stripe_webhook(
        &self,
        request: Request<v1::ReceiveStripeWebhookRequest>,
    ) -> ApiResult<v1::ReceiveStripeWebhookResponse> {
        let signature = request
            .metadata()
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = request
            .into_inner()
            .body
            .map(|b| b.data)
            .unwrap_or_default();
        let tenant = self
            .state
            .billing
            .stripe_webhook(signature.as_deref(), &body)
            .await?;
        Ok(Response::new(v1::ReceiveStripeWebhookResponse {
            received: true,
            tenant_id: tenant.map(|t| t.to_string()),
        }))
    }
}
