//! The tonic services: proto ⇄ service conversions, one module per
//! service.

pub mod admin;
pub mod audit;
pub mod billing;
pub mod export;
pub mod health;
pub mod isolation;
pub mod metering;
pub mod record;
pub mod tenant;
pub mod user;
pub mod webhook;
pub mod webhook_endpoint;

use tonic::Request;
use uuid::Uuid;

use crate::{
    app::AppState,
    error::ApiError,
    proto::v1,
    service::{Actor, Principal},
};

/// The longest request id the audit log keeps (a client may send its own
/// `x-request-id`; a longer one is cut).
pub const MAX_REQUEST_ID: usize = 128;

/// The caller, as the auth layer resolved it, and its request id. Fails
/// closed: a request the auth layer did not pass (no principal at all) is
/// 401, never an anonymous or platform caller.
pub fn actor<T>(request: &Request<T>) -> Result<Actor, ApiError> {
    let principal = request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ApiError::unauthenticated("this method needs an API key"))?;
    Ok(Actor {
        principal,
        request_id: request
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(bounded_request_id),
    })
}

/// A request id as stored: printable ASCII only, at most
/// [`MAX_REQUEST_ID`] characters.
fn bounded_request_id(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_REQUEST_ID)
        .collect()
}

/// A protobuf timestamp.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// An optional request timestamp as a UTC time, or 400 naming the field
/// when it is out of range.
pub fn optional_time(
    field: &str,
    t: Option<prost_types::Timestamp>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    t.map(|t| {
        chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
            .ok_or_else(|| ApiError::bad_field(field, "is out of range"))
    })
    .transpose()
}

/// A UUID from a request field, or 400 naming the field.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, ApiError> {
    value
        .parse()
        .map_err(|_| ApiError::bad_field(field, "must be a UUID"))
}

/// Every tenlyr.v1 service, ready to add to the router. Each refuses a
/// message larger than the REST body limit before decoding it.
pub fn routes(state: &AppState) -> tonic::service::Routes {
    let limit = state.max_body_bytes;
    tonic::service::Routes::default()
        .add_service(
            v1::admin_key_service_server::AdminKeyServiceServer::new(admin::AdminKeyApi {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            v1::tenant_service_server::TenantServiceServer::new(tenant::TenantApi {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            v1::metering_service_server::MeteringServiceServer::new(metering::MeteringApi {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            v1::record_service_server::RecordServiceServer::new(record::RecordApi {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            v1::webhook_endpoint_service_server::WebhookEndpointServiceServer::new(
                webhook_endpoint::WebhookEndpointApi {
                    state: state.clone(),
                },
            )
            .max_decoding_message_size(limit),
        )
        .add_service(
            v1::health_service_server::HealthServiceServer::new(health::HealthApi {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            v1::alert_service_server::AlertServiceServer::new(health::AlertApi {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            v1::billing_service_server::BillingServiceServer::new(billing::BillingApi {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            v1::webhook_service_server::WebhookServiceServer::new(webhook::WebhookApi {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            v1::audit_service_server::AuditServiceServer::new(audit::AuditApi {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            v1::isolation_service_server::IsolationServiceServer::new(isolation::IsolationApi {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
        .add_service(
            v1::user_service_server::UserServiceServer::new(user::UserApi {
                state: state.clone(),
            })
            .max_decoding_message_size(limit),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn a_request_the_auth_layer_did_not_pass_is_unauthenticated() {
        let request = Request::new(());
        assert_eq!(
            actor(&request).unwrap_err().code,
            ErrorCode::Unauthenticated
        );
    }

    #[test]
    fn stored_request_ids_are_bounded_printable_ascii() {
        let mut request = Request::new(());
        request.extensions_mut().insert(Principal::Anonymous);
        let long = format!("a b\tc{}", "x".repeat(10_000));
        request
            .metadata_mut()
            .insert("x-request-id", long.parse().unwrap());
        let id = actor(&request).unwrap().request_id.unwrap();
        assert_eq!(id.len(), MAX_REQUEST_ID);
        assert!(id.starts_with("abcxxx"));
    }
}
