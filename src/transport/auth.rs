//! Authentication and scope, in one place for gRPC, gRPC-Web and REST.
//!
//! Each RPC declares the key it accepts with the `(tenlyr.v1.access)`
//! option; [`AccessTable`] reads those from the descriptor pool and the
//! [`authenticate`] middleware, wrapped around every tonic service, enforces
//! them before a handler runs. REST reaches the same middleware because it
//! dispatches in-process through the gRPC router.

use std::{collections::HashMap, sync::Arc};

use crate::{
    error::{ApiError, ErrorCode},
    proto::v1::Access,
    service::{keys::KeyResolver, throttle::Throttle},
};
use axum::{
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use http::{HeaderMap, header};
use prost_reflect::DescriptorPool;

const ACCESS_OPTION: &str = "tenlyr.v1.access";

pub use crate::service::Principal;

/// The declared access of every RPC, by gRPC path.
#[derive(Debug, Clone)]
pub struct AccessTable(Arc<HashMap<String, Access>>);

impl AccessTable {
    /// Reads `(tenlyr.v1.access)` of every method of `package`; a method
    /// without it is a start-up error.
    pub fn from_pool(pool: &DescriptorPool, package: &str) -> Result<Self, Vec<String>> {
        let Some(ext) = pool.get_extension_by_name(ACCESS_OPTION) else {
            return Err(vec![format!(
                "extension {ACCESS_OPTION} is not in the descriptor pool"
            )]);
        };
        let mut table = HashMap::new();
        let mut problems = Vec::new();
        for service in pool.services().filter(|s| s.package_name() == package) {
            for method in service.methods() {
                let access = method
                    .options()
                    .get_extension(&ext)
                    .as_enum_number()
                    .and_then(|n| Access::try_from(n).ok())
                    .unwrap_or(Access::Unspecified);
                if access == Access::Unspecified {
                    problems.push(format!(
                        "{}: no (tenlyr.v1.access) option",
                        method.full_name()
                    ));
                }
                table.insert(
                    format!("/{}/{}", service.full_name(), method.name()),
                    access,
                );
            }
        }
        if problems.is_empty() {
            Ok(Self(Arc::new(table)))
        } else {
            Err(problems)
        }
    }

    pub fn get(&self, grpc_path: &str) -> Option<Access> {
        self.0.get(grpc_path).copied()
    }

    /// What a request to `grpc_path` needs. Fails closed: a tenlyr method
    /// is checked against its declared access; the operator services
    /// (health, reflection) are public; any other path is refused, so a
    /// method that somehow lacks an entry never skips authentication.
    pub fn decide(&self, grpc_path: &str) -> Decision {
        if let Some(access) = self.get(grpc_path) {
            return Decision::Check(access);
        }
        let service = grpc_path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .map_or("", |(service, _)| service);
        if OPERATOR_SERVICES.contains(&service) {
            Decision::Operator
        } else {
            Decision::Refuse
        }
    }
}

/// Services outside the contract that anyone may call: health checks and
/// server reflection (they expose no tenant data).
const OPERATOR_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The auth layer's verdict on a path, before any key is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A contract method: check the key against its access.
    Check(Access),
    /// Health or reflection: passes without a principal.
    Operator,
    /// No access rule: refused.
    Refuse,
}

/// Checks keys against each method's declared access.
#[derive(Debug, Clone)]
pub struct Authenticator {
    keys: Arc<KeyResolver>,
}

impl Authenticator {
    pub fn new(keys: Arc<KeyResolver>) -> Self {
        Self { keys }
    }

    /// 401 for a missing, malformed, unknown or revoked key (or a tenant
    /// that is not active); 403 for the wrong kind of key.
    pub async fn check(&self, access: Access, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if access == Access::Public {
            return Ok(Principal::Anonymous);
        }
        let principal = self.keys.authenticate(bearer(headers)?).await?;
        match (access, &principal) {
            (Access::Admin | Access::AdminOrTenant, Principal::Admin { .. }) => Ok(principal),
            (Access::Tenant | Access::AdminOrTenant, Principal::Tenant { .. }) => Ok(principal),
            (Access::Admin, _) => Err(ApiError::permission_denied(
                "this method requires an admin key",
            )),
            (Access::Tenant, _) => Err(ApiError::permission_denied(
                "this method requires a tenant key",
            )),
            _ => Err(ApiError::permission_denied(
                "this key cannot call this method",
            )),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthenticated("missing API key: send `Authorization: Bearer <key>`")
    })?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("malformed Authorization header"))?;
    let (scheme, key) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || key.trim().is_empty() {
        return Err(ApiError::unauthenticated(
            "malformed Authorization header: expected `Bearer <key>`",
        ));
    }
    Ok(key.trim())
}

#[derive(Clone)]
pub struct AuthState {
    pub table: AccessTable,
    pub authenticator: Authenticator,
    pub throttle: Arc<Throttle>,
}

/// 429 (RESOURCE_EXHAUSTED) if the tenant's throttle refuses this
/// request: `Retry-After` says when a retry passes, `RateLimit-Policy` and
/// `RateLimit` (IETF draft) the limit and its state.
async fn throttled(throttle: &Throttle, principal: &Principal) -> Option<ApiError> {
    let Principal::Tenant {
        tenant_id, tenant, ..
    } = principal
    else {
        return None;
    };
    let limit = tenant.rate_limit?;
    let decision = throttle.check(*tenant_id, limit).await;
    if decision.allowed {
        return None;
    }
    let reset = decision.wait.as_secs() + u64::from(decision.wait.subsec_nanos() > 0);
    let mut err = ApiError::new(
        ErrorCode::ResourceExhausted,
        format!("this tenant is throttled to {limit} requests per minute"),
    )
    .with_reason("TENANT_THROTTLED");
    err.retry_after = Some(decision.wait);
    err.rate_limit = Some(Box::new((
        format!("\"tenant\";q={limit};w=60"),
        format!("\"tenant\";r={};t={}", decision.remaining, reset.max(1)),
    )));
    Some(err)
}

/// Middleware around the tonic services: rejects with a gRPC status (which
/// gRPC-Web and REST translate) or passes the [`Principal`] on.
pub async fn authenticate(
    State(state): State<AuthState>,
    mut request: Request,
    next: Next,
) -> Response {
    let access = match state.table.decide(request.uri().path()) {
        Decision::Check(access) => access,
        Decision::Operator => return next.run(request).await,
        Decision::Refuse => {
            tracing::warn!(
                path = request.uri().path(),
                "refused a method without an access rule"
            );
            return tonic::Status::from(ApiError::permission_denied(
                "this method has no access rule",
            ))
            .into_http::<Body>();
        }
    };
    match state.authenticator.check(access, request.headers()).await {
        Ok(principal) => {
            if let Some(err) = throttled(&state.throttle, &principal).await {
                return tonic::Status::from(err).into_http::<Body>();
            }
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(err) => {
            tracing::debug!(reason = err.reason(), message = %err.message, "request rejected");
            tonic::Status::from(err).into_http::<Body>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    #[test]
    fn every_rpc_declares_its_access() {
        let table = AccessTable::from_pool(proto::pool(), proto::PACKAGE)
            .unwrap_or_else(|p| panic!("{p:#?}"));
        assert_eq!(
            table.get("/tenlyr.v1.TenantService/CreateTenant"),
            Some(Access::Admin)
        );
        assert_eq!(
            table.get("/tenlyr.v1.MeteringService/Track"),
            Some(Access::Tenant)
        );
        assert_eq!(
            table.get("/tenlyr.v1.WebhookService/ReceiveWebhookBySlug"),
            Some(Access::Public)
        );
        assert_eq!(table.get("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn paths_without_an_access_rule_are_refused() {
        let table = AccessTable::from_pool(proto::pool(), proto::PACKAGE).unwrap();
        assert_eq!(
            table.decide("/tenlyr.v1.TenantService/CreateTenant"),
            Decision::Check(Access::Admin)
        );
        assert_eq!(
            table.decide("/grpc.health.v1.Health/Check"),
            Decision::Operator
        );
        assert_eq!(
            table.decide("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Decision::Operator
        );
        // A method added to a tenlyr service without an entry, a service
        // that is not in the contract, a path that is not a method at all.
        for path in [
            "/tenlyr.v1.TenantService/DropEverything",
            "/tenlyr.v1.SecretService/Get",
            "/grpc.health.v1.Health",
            "/",
            "",
        ] {
            assert_eq!(table.decide(path), Decision::Refuse, "{path}");
        }
    }

    #[test]
    fn bearer_parsing() {
        let mut headers = HeaderMap::new();
        assert!(bearer(&headers).is_err());
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert!(bearer(&headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            "bearer  tenlyr_live_x ".parse().unwrap(),
        );
        assert_eq!(bearer(&headers).unwrap(), "tenlyr_live_x");
    }
}
