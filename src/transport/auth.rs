//! Authentication and scope, in one place for gRPC, gRPC-Web and REST.
//!
//! Each RPC declares the key it accepts with the `(tenlyr.v1.access)`
//! option and the least Backoffice role that may call it with a session
//! with `(tenlyr.v1.session)`; [`AccessTable`] reads those from the
//! descriptor pool and the [`authenticate`] middleware, wrapped around
//! every tonic service, enforces them before a handler runs. REST reaches
//! the same middleware because it dispatches in-process through the gRPC
//! router.
//!
//! A request authenticates with `Authorization: Bearer <key>` or, without
//! one, with the `tenlyr_session` cookie; a cookie request to a method
//! that is not a read (its REST binding is not `GET`) must also carry the
//! session's CSRF token in `X-CSRF-Token`.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{
    domain::user::{self as user_rules, Role, SessionRule},
    error::{ApiError, ErrorCode},
    proto::v1::{Access, SessionRole},
    service::{keys::KeyResolver, throttle::Throttle, users::Users},
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
const SESSION_OPTION: &str = "tenlyr.v1.session";
/// The header that carries a session's CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

pub use crate::service::Principal;

/// What a method declares: the key it accepts and what it asks of a
/// session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub access: Access,
    pub session: SessionRule,
}

/// The declared access of every RPC, by gRPC path.
#[derive(Debug, Clone)]
pub struct AccessTable(Arc<HashMap<String, Rule>>);

fn session_rule(role: SessionRole) -> Option<SessionRule> {
    Some(match role {
        SessionRole::Unspecified => return None,
        SessionRole::None => SessionRule::None,
        SessionRole::Viewer => SessionRule::AtLeast(Role::Viewer),
        SessionRole::Developer => SessionRule::AtLeast(Role::Developer),
        SessionRole::Owner => SessionRule::AtLeast(Role::Owner),
        SessionRole::SuperAdmin => SessionRule::SuperAdmin,
    })
}

impl AccessTable {
    /// Reads `(tenlyr.v1.access)` and `(tenlyr.v1.session)` of every method
    /// of `package`; a method without access, or a non-public one without
    /// a session rule, is a start-up error.
    pub fn from_pool(pool: &DescriptorPool, package: &str) -> Result<Self, Vec<String>> {
        let (Some(ext), Some(session_ext)) = (
            pool.get_extension_by_name(ACCESS_OPTION),
            pool.get_extension_by_name(SESSION_OPTION),
        ) else {
            return Err(vec![format!(
                "extensions {ACCESS_OPTION} and {SESSION_OPTION} are not in the descriptor pool"
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
                let session = method
                    .options()
                    .get_extension(&session_ext)
                    .as_enum_number()
                    .and_then(|n| SessionRole::try_from(n).ok())
                    .and_then(session_rule);
                let session = match (access, session) {
                    (_, Some(rule)) => rule,
                    (Access::Public, None) => SessionRule::None,
                    (_, None) => {
                        problems.push(format!(
                            "{}: no (tenlyr.v1.session) option",
                            method.full_name()
                        ));
                        SessionRule::None
                    }
                };
                table.insert(
                    format!("/{}/{}", service.full_name(), method.name()),
                    Rule { access, session },
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
        self.rule(grpc_path).map(|r| r.access)
    }

    pub fn rule(&self, grpc_path: &str) -> Option<Rule> {
        self.0.get(grpc_path).copied()
    }

    /// What a request to `grpc_path` needs. Fails closed: a tenlyr method
    /// is checked against its declared access; the operator services
    /// (health, reflection) are public; any other path is refused, so a
    /// method that somehow lacks an entry never skips authentication.
    pub fn decide(&self, grpc_path: &str) -> Decision {
        if let Some(rule) = self.rule(grpc_path) {
            return Decision::Check(rule);
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
    /// A contract method: check the key or session against its rule.
    Check(Rule),
    /// Health or reflection: passes without a principal.
    Operator,
    /// No access rule: refused.
    Refuse,
}

/// Checks keys and sessions against each method's declared rule.
#[derive(Debug, Clone)]
pub struct Authenticator {
    keys: Arc<KeyResolver>,
    users: Users,
    /// Methods that only read (REST binding `GET`): no CSRF token needed.
    reads: Arc<HashSet<String>>,
}

impl Authenticator {
    pub fn new(keys: Arc<KeyResolver>, users: Users, reads: HashSet<String>) -> Self {
        Self {
            keys,
            users,
            reads: Arc::new(reads),
        }
    }

    /// 401 for a missing, malformed, unknown or revoked key or session (or
    /// a tenant that is not active); 403 for the wrong kind of key, a role
    /// the method does not admit, or a cookie request without its CSRF
    /// token.
    pub async fn check(
        &self,
        path: &str,
        rule: Rule,
        headers: &HeaderMap,
    ) -> Result<Principal, ApiError> {
        if rule.access == Access::Public {
            return Ok(Principal::Anonymous);
        }
        if !headers.contains_key(header::AUTHORIZATION)
            && let Some(token) = session_token(headers)
        {
            return self.check_session(path, rule, token, headers).await;
        }
        let principal = self.keys.authenticate(bearer(headers)?).await?;
        admitted(rule.access, principal)
    }

    async fn check_session(
        &self,
        path: &str,
        rule: Rule,
        token: &str,
        headers: &HeaderMap,
    ) -> Result<Principal, ApiError> {
        let principal = self.users.authenticate(token).await?;
        let role = match &principal {
            Principal::Admin { via } | Principal::Tenant { via, .. } => {
                via.session().map(|s| s.role)
            }
            Principal::Anonymous => None,
        }
        .ok_or_else(|| ApiError::internal("a session principal without a user"))?;
        if !rule.session.admits(role) {
            return Err(ApiError::permission_denied(match rule.session {
                SessionRule::None => "this method takes an API key, not a session".to_owned(),
                SessionRule::SuperAdmin => "only a super admin may do this".to_owned(),
                SessionRule::AtLeast(least) => format!(
                    "your role ({}) cannot do this; it needs {} or above",
                    role.as_str(),
                    least.as_str()
                ),
            }));
        }
        let principal = admitted(rule.access, principal).map_err(|_| {
            ApiError::permission_denied(if role.is_platform() {
                "this is for tenant users, not platform users"
            } else {
                "this is for platform users only"
            })
        })?;
        if !self.reads.contains(path) {
            let presented = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !self.users.csrf_matches(token, presented) {
                return Err(ApiError::permission_denied(
                    "missing or wrong CSRF token: send the session's csrfToken in X-CSRF-Token",
                )
                .with_reason("CSRF_TOKEN_INVALID"));
            }
        }
        Ok(principal)
    }
}

/// The principal if its kind is one `access` admits, else 403.
fn admitted(access: Access, principal: Principal) -> Result<Principal, ApiError> {
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

/// The session token of the request's `tenlyr_session` cookie.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(user_rules::session_from_cookie)
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
    let (limit, default) = throttle.limit_for(tenant.rate_limit)?;
    let decision = throttle.check(*tenant_id, limit).await;
    if decision.allowed {
        return None;
    }
    let reset = decision.wait.as_secs() + u64::from(decision.wait.subsec_nanos() > 0);
    let (message, reason, policy) = if default {
        (
            format!("this tenant is limited to {limit} requests per minute"),
            "RATE_LIMITED",
            "default",
        )
    } else {
        (
            format!("this tenant is throttled to {limit} requests per minute"),
            "TENANT_THROTTLED",
            "tenant",
        )
    };
    let mut err = ApiError::new(ErrorCode::ResourceExhausted, message).with_reason(reason);
    err.retry_after = Some(decision.wait);
    err.rate_limit = Some(Box::new((
        format!("\"{policy}\";q={limit};w=60"),
        format!("\"{policy}\";r={};t={}", decision.remaining, reset.max(1)),
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
    let rule = match state.table.decide(request.uri().path()) {
        Decision::Check(rule) => rule,
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
    match state
        .authenticator
        .check(request.uri().path(), rule, request.headers())
        .await
    {
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
            Decision::Check(Rule {
                access: Access::Admin,
                session: SessionRule::AtLeast(Role::Developer),
            })
        );
        assert_eq!(
            table.rule("/tenlyr.v1.TenantService/CreateApiKey"),
            Some(Rule {
                access: Access::AdminOrTenant,
                session: SessionRule::AtLeast(Role::Developer),
            })
        );
        assert_eq!(
            table
                .rule("/tenlyr.v1.MeteringService/Track")
                .map(|r| r.session),
            Some(SessionRule::None)
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
