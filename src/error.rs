//! One error model, two mappings.
//!
//! Domain code returns [`ApiError`]; [`ErrorCode`] maps it once to a gRPC
//! code and once to an HTTP status (DESIGN.md §3). The gRPC `Status` carries
//! `google.rpc.ErrorInfo` (the reason, which tells 400 from 422 apart on the
//! way back to REST), `BadRequest` field violations and `RetryInfo`.

use std::{collections::HashMap, time::Duration};

use http::StatusCode;
use tonic_types::{ErrorDetails, StatusExt};

/// Domain of the `google.rpc.ErrorInfo` detail on every Tenlyr error.
pub const ERROR_DOMAIN: &str = "tenlyr.dev";

/// The error classes of DESIGN.md §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed JSON, wrong types, body contradicting the path: 400.
    BadRequest,
    /// A well-formed body that failed validation (fields listed): 422.
    Validation,
    /// Missing, malformed, unknown or revoked key; tenant not active: 401.
    Unauthenticated,
    /// Valid key, wrong scope: 403.
    PermissionDenied,
    NotFound,
    /// Duplicate `ownerEmail`, slug …: 409.
    AlreadyExists,
    /// State precondition (already suspended, downgrade, plan limit): 400.
    FailedPrecondition,
    /// Rate limit or throttle: 429 with `Retry-After`.
    ResourceExhausted,
    /// Body larger than the configured limit: 413.
    PayloadTooLarge,
    Unimplemented,
    /// REST only: the path exists with other HTTP methods: 405.
    MethodNotAllowed,
    /// Postgres unreachable, or the transaction rolled back for a
    /// concurrent one (`CONCURRENT_CHANGE`): 503.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::BadRequest | Self::Validation => Code::InvalidArgument,
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied => Code::PermissionDenied,
            Self::NotFound => Code::NotFound,
            Self::AlreadyExists => Code::AlreadyExists,
            Self::FailedPrecondition => Code::FailedPrecondition,
            Self::ResourceExhausted | Self::PayloadTooLarge => Code::ResourceExhausted,
            Self::Unimplemented | Self::MethodNotAllowed => Code::Unimplemented,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            Self::BadRequest | Self::FailedPrecondition => StatusCode::BAD_REQUEST,
            Self::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists => StatusCode::CONFLICT,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `ErrorInfo.reason` that travels with the gRPC status.
    pub fn reason(self) -> &'static str {
        match self {
            Self::BadRequest => "MALFORMED_REQUEST",
            Self::Validation => "VALIDATION_FAILED",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::NotFound => "NOT_FOUND",
            Self::AlreadyExists => "ALREADY_EXISTS",
            Self::FailedPrecondition => "FAILED_PRECONDITION",
            Self::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::Unimplemented => "UNIMPLEMENTED",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }

    /// The inverse of [`grpc_code`](Self::grpc_code) and
    /// [`reason`](Self::reason), for statuses coming back from a service.
    pub fn from_status(code: tonic::Code, reason: Option<&str>) -> Self {
        use tonic::Code;
        match (code, reason) {
            (Code::InvalidArgument, Some("VALIDATION_FAILED")) => Self::Validation,
            (Code::InvalidArgument | Code::OutOfRange, _) => Self::BadRequest,
            (Code::ResourceExhausted, Some("PAYLOAD_TOO_LARGE")) => Self::PayloadTooLarge,
            (Code::ResourceExhausted, _) => Self::ResourceExhausted,
            (Code::Unauthenticated, _) => Self::Unauthenticated,
            (Code::PermissionDenied, _) => Self::PermissionDenied,
            (Code::NotFound, _) => Self::NotFound,
            (Code::AlreadyExists | Code::Aborted, _) => Self::AlreadyExists,
            (Code::FailedPrecondition, _) => Self::FailedPrecondition,
            (Code::Unimplemented, _) => Self::Unimplemented,
            (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled, _) => Self::Unavailable,
            _ => Self::Internal,
        }
    }
}

/// A field that failed parsing or validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// JSON path of the field, e.g. `ownerEmail` or `events[3].value`.
    pub field: String,
    pub description: String,
}

/// An error a client sees: code, message, optional reason and field list.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Overrides [`ErrorCode::reason`], e.g. `PLAN_LIMIT_EXCEEDED`.
    pub reason: Option<&'static str>,
    pub violations: Vec<FieldViolation>,
    pub retry_after: Option<Duration>,
    /// A throttle's `RateLimit-Policy` and `RateLimit` header values
    /// (IETF draft), sent with its 429.
    pub rate_limit: Option<Box<(String, String)>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason: None,
            violations: Vec::new(),
            retry_after: None,
            rate_limit: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// A parse error naming the field: 400 with one violation.
    pub fn bad_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        let (field, description) = (field.into(), description.into());
        let message = if field.is_empty() {
            description.clone()
        } else {
            format!("invalid field `{field}`: {description}")
        };
        Self::bad_request(message).with_violation(field, description)
    }

    /// Validation failures: 422 listing every field.
    pub fn validation(violations: Vec<FieldViolation>) -> Self {
        let names: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        let message = format!("validation failed: {}", names.join(", "));
        Self {
            violations,
            ..Self::new(ErrorCode::Validation, message)
        }
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// An internal failure: the client sees a generic message; the cause is
    /// logged here, where it is handled.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    pub fn with_violation(
        mut self,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.violations.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
        self
    }

    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    pub fn reason(&self) -> &'static str {
        self.reason.unwrap_or_else(|| self.code.reason())
    }

    /// Rebuilds the error from a gRPC status produced by [`From<ApiError>`]
    /// (or by tonic itself, which carries no details).
    pub fn from_status(status: &tonic::Status) -> Self {
        let details = status.get_error_details();
        let reason = details.error_info().map(|info| info.reason.as_str());
        let code = ErrorCode::from_status(status.code(), reason);
        let violations = details
            .bad_request()
            .map(|bad| {
                bad.field_violations
                    .iter()
                    .map(|v| FieldViolation {
                        field: v.field.clone(),
                        description: v.description.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let retry_after = details.retry_info().and_then(|info| info.retry_delay);
        let rate_limit = details.error_info().and_then(|info| {
            Some(Box::new((
                info.metadata.get(RATE_LIMIT_POLICY)?.clone(),
                info.metadata.get(RATE_LIMIT)?.clone(),
            )))
        });
        let message = match code {
            // tonic's own messages for these may describe internals.
            ErrorCode::Internal if reason.is_none() => "internal error".to_owned(),
            _ => status.message().to_owned(),
        };
        Self {
            code,
            message,
            reason: reason.map(static_reason),
            violations,
            retry_after,
            rate_limit,
        }
    }
}

/// Header names of a throttle's state (and `ErrorInfo` metadata keys).
pub const RATE_LIMIT_POLICY: &str = "ratelimit-policy";
pub const RATE_LIMIT: &str = "ratelimit";

/// Reasons are a small closed set of static strings; map a received one back
/// to its static spelling, or to the generic reason of its code.
fn static_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "MALFORMED_REQUEST",
        "VALIDATION_FAILED",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "RESOURCE_EXHAUSTED",
        "PAYLOAD_TOO_LARGE",
        "UNIMPLEMENTED",
        "METHOD_NOT_ALLOWED",
        "UNAVAILABLE",
        "INTERNAL",
        "PLAN_LIMIT_EXCEEDED",
        "ROUTE_NOT_FOUND",
        "RECORD_LOCKED",
        "LOCK_TOKEN_STALE",
        "RECORD_ALREADY_SAVED",
        "TENANT_THROTTLED",
        "RATE_LIMITED",
        "IDEMPOTENCY_KEY_IN_USE",
        "MIGRATION_ACTIVE",
        CONCURRENT_CHANGE,
        "INVALID_SIGNATURE",
        "MISSING_EVENT_ID",
        "INVALID_PAYLOAD",
        "TENANT_NOT_ALLOWED",
        "UNKNOWN_PROVIDER",
        "EVENT_PENDING",
        "LOGIN_LOCKED",
        "LINK_INVALID",
        "LINK_EXPIRED",
        "CSRF_TOKEN_INVALID",
    ];
    KNOWN
        .iter()
        .find(|k| **k == reason)
        .copied()
        .unwrap_or("UNKNOWN")
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::<String, String>::new();
        if let Some((policy, state)) = err.rate_limit.as_deref() {
            metadata.insert(RATE_LIMIT_POLICY.into(), policy.clone());
            metadata.insert(RATE_LIMIT.into(), state.clone());
        }
        details.set_error_info(err.reason(), ERROR_DOMAIN, metadata);
        for v in &err.violations {
            details.add_bad_request_violation(&v.field, &v.description);
        }
        if let Some(delay) = err.retry_after {
            details.set_retry_info(Some(delay));
        }
        tonic::Status::with_error_details(err.code.grpc_code(), err.message, details)
    }
}

/// The reason of a request PostgreSQL rolled back for a concurrent one
/// (deadlock, serialization failure): nothing was done; retry.
pub const CONCURRENT_CHANGE: &str = "CONCURRENT_CHANGE";

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        if crate::storage::is_connection_error(&err) {
            tracing::warn!(error = %err, "database unavailable");
            return Self::unavailable("database unavailable");
        }
        // SQLSTATE TL001: the tenant's data moved to its own database
        // between this process's last look at the placements and this
        // transaction (storage::tenant_data). Nothing was done; the
        // placements are read again, and the next try goes there.
        if crate::storage::sqlx_error(&err).is_some_and(crate::storage::tenant_data::is_misrouted) {
            return Self::unavailable("the tenant's data just moved; try again");
        }
        // SQLSTATE 40P01 (deadlock) and 40001 (serialization failure): the
        // transaction met a concurrent one and was rolled back whole.
        // Nothing was done, so the request can be sent again: 503 with
        // Retry-After (the SDK retries it), never a 500.
        let sqlstate = crate::storage::sqlstate(&err);
        if matches!(sqlstate.as_deref(), Some("40P01" | "40001")) {
            tracing::warn!(error = %err, "transaction rolled back by a concurrent one");
            let mut api = Self::unavailable(
                "the request met a concurrent change and was rolled back; try again",
            )
            .with_reason(CONCURRENT_CHANGE);
            api.retry_after = Some(Duration::from_secs(1));
            return api;
        }
        // SQLSTATE 22021 (text) and 22P05 (jsonb): what PostgreSQL cannot
        // store, i.e. a NUL character (valid in JSON and protobuf strings).
        // The client's input, whichever field carried it: a 400, not a 500.
        if matches!(sqlstate.as_deref(), Some("22021" | "22P05")) {
            return Self::new(
                ErrorCode::BadRequest,
                "text fields must not contain NUL characters (\\u0000)",
            );
        }
        Self::internal(err)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        Self::from(sea_orm::DbErr::Query(sea_orm::RuntimeErr::SqlxError(
            std::sync::Arc::new(err),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reason set anywhere (`with_reason("…")`) must survive the gRPC
    /// round trip REST makes; one missing from the known set came out as
    /// `UNKNOWN` (MIGRATION_ACTIVE did).
    #[test]
    fn every_reason_the_services_set_survives_the_round_trip() {
        fn sources(dir: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    sources(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        let mut texts = Vec::new();
        sources(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut texts,
        );
        let mut reasons = vec![CONCURRENT_CHANGE.to_owned()];
        for text in &texts {
            for part in text.split("with_reason(\"").skip(1) {
                let reason = part.split('"').next().unwrap();
                if !reason.is_empty() && reason.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                {
                    reasons.push(reason.to_owned());
                }
            }
        }
        assert!(reasons.len() > 10, "{reasons:?}");
        for reason in reasons {
            let err = ApiError::new(ErrorCode::AlreadyExists, "x")
                .with_reason(Box::leak(reason.clone().into_boxed_str()));
            let back = ApiError::from_status(&tonic::Status::from(err));
            assert_eq!(
                back.reason(),
                reason,
                "add {reason} to static_reason's KNOWN"
            );
        }
    }

    #[test]
    fn status_round_trip_keeps_code_reason_and_fields() {
        let err = ApiError::validation(vec![FieldViolation {
            field: "ownerEmail".into(),
            description: "not a valid email".into(),
        }]);
        let back = ApiError::from_status(&tonic::Status::from(err));
        assert_eq!(back.code, ErrorCode::Validation);
        assert_eq!(back.code.http_status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(back.violations[0].field, "ownerEmail");
        assert_eq!(back.message, "validation failed: ownerEmail");
    }

    #[test]
    fn plain_invalid_argument_is_400_and_unimplemented_is_501() {
        let bad = ApiError::from_status(&tonic::Status::invalid_argument("x"));
        assert_eq!(bad.code.http_status(), StatusCode::BAD_REQUEST);
        let todo = ApiError::from_status(&tonic::Status::unimplemented("not yet"));
        assert_eq!(todo.code.http_status(), StatusCode::NOT_IMPLEMENTED);
    }

    #[test]
    fn internal_messages_from_tonic_are_not_leaked() {
        let err = ApiError::from_status(&tonic::Status::internal("pool timed out at db.rs:12"));
        assert_eq!(err.message, "internal error");
    }
}
