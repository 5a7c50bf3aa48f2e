//! The tonic services. Each RPC that a later capability implements answers
//! UNIMPLEMENTED (REST 501) through tonic's generated default methods until
//! then, so every documented route exists from the start.

pub mod admin;
pub mod metering;
pub mod tenant;

use tonic::Request;
use uuid::Uuid;

use crate::{
    app::AppState,
    error::ApiError,
    proto::v1,
    service::{Actor, Principal},
};

/// The caller, as the auth layer resolved it, and its request id.
pub fn actor<T>(request: &Request<T>) -> Actor {
    Actor {
        principal: request
            .extensions()
            .get::<Principal>()
            .cloned()
            .unwrap_or(Principal::Anonymous),
        request_id: request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// A protobuf timestamp.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// A UUID from a request field, or 400 naming the field.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::bad_field(field, "must be a UUID"))
}

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
            let mut routes = tonic::service::Routes::default()
                .add_service(v1::admin_key_service_server::AdminKeyServiceServer::new(admin::AdminKeyApi { state: state.clone() }))
                .add_service(v1::tenant_service_server::TenantServiceServer::new(tenant::TenantApi { state: state.clone() }))
                .add_service(v1::metering_service_server::MeteringServiceServer::new(metering::MeteringApi { state: state.clone() }));
            $(
                routes = routes.add_service(v1::$server::$ctor::new($api { state: state.clone() }));
            )*
            routes
        }
    };
}

unimplemented_services! {
    IsolationApi => isolation_service_server::IsolationService, IsolationServiceServer;
    HealthApi => health_service_server::HealthService, HealthServiceServer;
    AlertApi => alert_service_server::AlertService, AlertServiceServer;
    BillingApi => billing_service_server::BillingService, BillingServiceServer;
    WebhookApi => webhook_service_server::WebhookService, WebhookServiceServer;
    WebhookEndpointApi => webhook_endpoint_service_server::WebhookEndpointService, WebhookEndpointServiceServer;
    RecordApi => record_service_server::RecordService, RecordServiceServer;
}
