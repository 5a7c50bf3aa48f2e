//! The tonic services. Each RPC that a later capability implements answers
//! UNIMPLEMENTED (REST 501) through tonic's generated default methods until
//! then, so every documented route exists from the start.

use crate::{app::AppState, proto::v1};

macro_rules! unimplemented_services {
    ($($api:ident => $server:ident :: $trait_:ident, $ctor:ident;)*) => {
        $(
            #[doc = concat!("`", stringify!($trait_), "`: not built yet; every RPC answers UNIMPLEMENTED.")]
            #[derive(Clone)]
            pub struct $api {
                #[allow(dead_code)]
                state: AppState,
            }

            impl v1::$server::$trait_ for $api {}
        )*

        /// Every tenlyr.v1 service, ready to add to the router.
        pub fn routes(state: &AppState) -> tonic::service::Routes {
            let mut routes = tonic::service::Routes::default();
            $(
                routes = routes.add_service(v1::$server::$ctor::new($api { state: state.clone() }));
            )*
            routes
        }
    };
}

unimplemented_services! {
    TenantApi => tenant_service_server::TenantService, TenantServiceServer;
    MeteringApi => metering_service_server::MeteringService, MeteringServiceServer;
    IsolationApi => isolation_service_server::IsolationService, IsolationServiceServer;
    HealthApi => health_service_server::HealthService, HealthServiceServer;
    AlertApi => alert_service_server::AlertService, AlertServiceServer;
    BillingApi => billing_service_server::BillingService, BillingServiceServer;
    WebhookApi => webhook_service_server::WebhookService, WebhookServiceServer;
    WebhookEndpointApi => webhook_endpoint_service_server::WebhookEndpointService, WebhookEndpointServiceServer;
    RecordApi => record_service_server::RecordService, RecordServiceServer;
}
