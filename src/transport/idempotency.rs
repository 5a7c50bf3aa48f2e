//! The `Idempotency-Key` header (DESIGN.md §12), for every RPC bound to a
//! REST `POST` or `PATCH`, over gRPC (metadata `idempotency-key`) and REST
//! alike: REST reaches it as in-process gRPC with the header as metadata,
//! so a replay is transcoded like the first answer.
//!
//! The first request with a key runs; its response (headers, message and
//! trailers) is stored with the key, the API key that sent it and a digest
//! of the request message, for 24 hours. A retry by the same API key gets
//! that response again, marked `idempotent-replayed: true`; while the
//! first still runs, 409 with `Retry-After: 1`; with another request
//! message, 422. A server error (INTERNAL, UNAVAILABLE …) is not stored: a
//! retry runs again. The first request runs to its end even if its client
//! went away, so a retry after a dropped connection finds its response.
//!
//! The response goes out while it is being stored: its commit is off the
//! caller's path. A retry in that moment, on any replica, waits for the
//! store (the store's UPDATE holds the key's row, which the retry's claim
//! needs) and is replayed; only one arriving in the ~0.1 ms before the
//! store reaches the database gets the 409 of a request still running. A
//! crash in the window loses no more than one just before the reply
//! would: in both, the call's effects are committed and its key is still
//! in flight (taken over after 5 minutes) — but here the caller has its
//! answer.
//!
//! Stored messages are encrypted (AES-256-GCM under a key derived from the
//! pepper): a create-tenant response holds the tenant's key.

use std::{collections::HashSet, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Limited, StreamBody};
use tokio_util::task::TaskTracker;

use crate::{
    domain::secrets::SecretBox,
    error::{ApiError, ErrorCode},
    service::Principal,
    storage::{
        Db,
        idempotency::{self, Owner},
    },
    workers::SharedClock,
};

pub const HEADER: &str = "idempotency-key";
/// Marks a response that was replayed from the store.
pub const REPLAYED: &str = "idempotent-replayed";
/// How long a key and its response are kept.
const RETENTION: chrono::Duration = chrono::Duration::hours(24);
/// A key `in_flight` this long belongs to a server that died: taken over.
const TAKEOVER: chrono::Duration = chrono::Duration::minutes(5);

/// What the middleware needs.
#[derive(Clone)]
pub struct Idempotency {
    pub db: Db,
    pub clock: SharedClock,
    /// gRPC paths of the RPCs bound to REST `POST` or `PATCH`.
    pub methods: Arc<HashSet<String>>,
    pub max_body_bytes: usize,
    secrets: SecretBox,
    /// The stores in flight; shutdown waits for them (`finish`).
    stores: TaskTracker,
}

impl Idempotency {
    pub fn new(
        db: Db,
        clock: SharedClock,
        methods: HashSet<String>,
        max_body_bytes: usize,
        secret: &[u8],
    ) -> Self {
        Self {
            db,
            clock,
            methods: Arc::new(methods),
            max_body_bytes,
            secrets: SecretBox::new(secret),
            stores: TaskTracker::new(),
        }
    }

    /// Waits for the responses already sent to be stored (on shutdown,
    /// after the last request has been answered).
    pub async fn finish(&self) {
        self.stores.close();
        self.stores.wait().await;
    }
}

fn status_response(err: ApiError) -> Response {
    tonic::Status::from(err).into_http::<Body>()
}

/// A key as sent: 1 to 255 printable ASCII characters.
fn parse_key(value: &HeaderValue) -> Result<String, ApiError> {
    let bad = || {
        ApiError::validation(vec![crate::error::FieldViolation {
            field: "Idempotency-Key".into(),
            description: "must be 1 to 255 printable ASCII characters".into(),
        }])
    };
    let text = value.to_str().map_err(|_| bad())?;
    if text.is_empty() || text.len() > 255 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(text.to_owned())
}

fn headers_to_json(headers: &HeaderMap) -> serde_json::Value {
    serde_json::Value::Array(
        headers
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "date" | "content-length"))
            .filter_map(|(name, value)| {
                Some(serde_json::json!([name.as_str(), value.to_str().ok()?]))
            })
            .collect(),
    )
}

fn json_to_headers(json: Option<&serde_json::Value>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for pair in json.and_then(|j| j.as_array()).into_iter().flatten() {
        if let (Some(name), Some(value)) = (pair[0].as_str(), pair[1].as_str())
            && let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            )
        {
            headers.append(name, value);
        }
    }
    headers
}

/// A response from stored parts.
fn rebuild(headers: HeaderMap, body: Bytes, trailers: Option<HeaderMap>) -> Response {
    let mut frames = vec![Ok::<_, std::convert::Infallible>(http_body::Frame::data(
        body,
    ))];
    if let Some(trailers) = trailers {
        frames.push(Ok(http_body::Frame::trailers(trailers)));
    }
    let mut response = Response::new(Body::new(StreamBody::new(stream::iter(frames))));
    *response.headers_mut() = headers;
    response
}

/// Whether a gRPC status is the server's fault (not stored; a retry runs).
fn server_error(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> bool {
    let code = trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
    matches!(
        code,
        tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::DataLoss
    )
}

/// The middleware (inside authentication: it keys on the principal).
pub async fn layer(State(state): State<Idempotency>, request: Request, next: Next) -> Response {
    let Some(value) = request.headers().get(HEADER) else {
        return next.run(request).await;
    };
    let method = request.uri().path().to_owned();
    if !state.methods.contains(&method) {
        return next.run(request).await;
    }
    let owner = match request.extensions().get::<Principal>() {
        Some(Principal::Admin { via }) => Owner {
            key_id: via.owner_id(),
            tenant_id: None,
        },
        Some(Principal::Tenant { via, tenant_id, .. }) => Owner {
            key_id: via.owner_id(),
            tenant_id: Some(*tenant_id),
        },
        _ => return next.run(request).await,
    };
    let key = match parse_key(value) {
        Ok(key) => key,
        Err(err) => return status_response(err),
    };
    let (parts, body) = request.into_parts();
    let Ok(collected) = Limited::new(body, state.max_body_bytes + 5).collect().await else {
        return status_response(ApiError::new(
            ErrorCode::PayloadTooLarge,
            "request too large",
        ));
    };
    let message = collected.to_bytes();
    // From here on the request runs to its end even if its client goes
    // away: a key claimed and then abandoned would refuse retries (409)
    // until it went stale, and a retry after a dropped connection must find
    // the first request's response.
    let key_claimed = tokio::spawn(claim_and_run(
        state, owner, key, method, parts, message, next,
    ));
    key_claimed
        .await
        .unwrap_or_else(|_| status_response(ApiError::internal("idempotent request failed")))
}

async fn claim_and_run(
    state: Idempotency,
    owner: Owner,
    key: String,
    method: String,
    parts: http::request::Parts,
    message: Bytes,
    next: Next,
) -> Response {
    // The request message after its 5-byte gRPC frame header.
    let hash = ring::digest::digest(&ring::digest::SHA256, message.get(5..).unwrap_or_default());
    let now = state.clock.now();
    let held = match idempotency::begin(
        state.db.pool(),
        owner,
        &key,
        &method,
        hash.as_ref(),
        now,
        now - TAKEOVER,
        now + RETENTION,
    )
    .await
    {
        Ok(Some(held)) => held,
        Ok(None) => {
            return status_response(ApiError::unavailable("idempotency key vanished; retry"));
        }
        Err(err) => {
            tracing::warn!(error = %err, "idempotency key store unavailable");
            return status_response(ApiError::from(err));
        }
    };
    if !held.took {
        if held.method != method || held.request_hash != hash.as_ref() {
            return status_response(ApiError::validation(vec![crate::error::FieldViolation {
                field: "Idempotency-Key".into(),
                description: "was used with a different request".into(),
            }]));
        }
        if !held.done {
            let mut err = ApiError::new(
                ErrorCode::AlreadyExists,
                "a request with this Idempotency-Key is still running",
            )
            .with_reason("IDEMPOTENCY_KEY_IN_USE");
            err.retry_after = Some(Duration::from_secs(1));
            return status_response(err);
        }
        let body = held
            .body
            .as_deref()
            .and_then(|b| state.secrets.open(b))
            .unwrap_or_default();
        let mut headers = json_to_headers(held.headers.as_ref());
        headers.insert(REPLAYED, HeaderValue::from_static("true"));
        let trailers = held.trailers.as_ref().map(|t| json_to_headers(Some(t)));
        return rebuild(
            headers,
            Bytes::from(body),
            trailers.filter(|t| !t.is_empty()),
        );
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(message)))
        .await;
    let (parts, body) = response.into_parts();
    let (data, trailers) = match body.collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            (collected.to_bytes(), trailers)
        }
        Err(_) => (Bytes::new(), None),
    };
    let stored = if server_error(&parts.headers, trailers.as_ref()) {
        None
    } else {
        Some((
            headers_to_json(&parts.headers),
            state.secrets.seal(&data),
            trailers
                .as_ref()
                .map_or(serde_json::Value::Null, headers_to_json),
        ))
    };
    // Stored while the response goes out (see the module's doc).
    let pool = state.db.pool().clone();
    state.stores.spawn(async move {
        let finished = idempotency::finish(
            &pool,
            owner,
            &key,
            stored.as_ref().map(|(h, b, t)| (h, b.as_slice(), t)),
        )
        .await;
        if let Err(err) = finished {
            tracing::warn!(error = %err, "storing an idempotent response failed; the key is released when it goes stale");
        }
    });
    rebuild(parts.headers, data, trailers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_and_bounded() {
        assert!(parse_key(&HeaderValue::from_static("create-acme-1")).is_ok());
        for bad in ["", "has space"] {
            assert!(
                parse_key(&HeaderValue::from_str(bad).unwrap()).is_err(),
                "{bad:?}"
            );
        }
        assert!(parse_key(&HeaderValue::from_str(&"k".repeat(256)).unwrap()).is_err());
    }

    #[test]
    fn stored_headers_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        headers.insert("date", HeaderValue::from_static("today"));
        let back = json_to_headers(Some(&headers_to_json(&headers)));
        assert_eq!(back.len(), 2);
        assert_eq!(back["grpc-status"], "0");
    }
}
