//! Use cases: validation, scoped transactions, audit and cache
//! invalidation, over `storage`. No transport types here.

pub mod admin_keys;
pub mod alerts;
pub mod audit;
pub mod billing;
pub mod counters;
pub mod events;
pub mod health;
pub mod inbound;
pub mod isolation;
pub mod keys;
pub mod metering;
pub mod outbound;
pub mod paypal;
pub mod records;
pub mod saved_records;
pub mod stripe;
pub mod tenants;
pub mod throttle;
pub mod users;
pub mod webhook_endpoints;
pub mod webhook_settings;

use std::sync::Arc;

use uuid::Uuid;

use self::keys::TenantFacts;
use crate::{
    error::ApiError,
    storage::{tenant_data::Scope, tenants::Audit},
};

/// Who is calling; the auth layer puts it in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An admin key, or a platform user's session.
    Admin { via: Credential },
    /// A tenant key, or a tenant user's session.
    Tenant {
        tenant_id: Uuid,
        via: Credential,
        /// Its time zone and limits, as the key lookup read them.
        tenant: Arc<TenantFacts>,
    },
    /// A public method (the request authenticates itself, e.g. by signature).
    Anonymous,
}

/// What authenticated a principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// An API key (its id).
    Key(Uuid),
    /// A Backoffice user's session.
    Session(SessionUser),
}

/// The user behind a session, as the auth layer resolved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionUser {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub role: crate::domain::user::Role,
}

impl Credential {
    pub fn key_id(&self) -> Option<Uuid> {
        match self {
            Credential::Key(id) => Some(*id),
            Credential::Session(_) => None,
        }
    }

    pub fn session(&self) -> Option<&SessionUser> {
        match self {
            Credential::Key(_) => None,
            Credential::Session(user) => Some(user),
        }
    }

    /// Who owns what this credential creates (idempotency keys): the key,
    /// or the user.
    pub fn owner_id(&self) -> Uuid {
        match self {
            Credential::Key(id) => *id,
            Credential::Session(user) => user.user_id,
        }
    }
}

/// The principal of a request plus what the audit log records about it.
#[derive(Debug, Clone)]
pub struct Actor {
    pub principal: Principal,
    pub request_id: Option<String>,
}

impl Actor {
    pub fn kind(&self) -> &'static str {
        match self.principal {
            Principal::Admin { .. } => "admin",
            Principal::Tenant { .. } => "tenant",
            Principal::Anonymous => "system",
        }
    }

    /// The scope this actor's transactions run in: its tenant, or the
    /// platform for an admin. Fails closed: no key, no scope (401).
    pub fn scope(&self) -> Result<Scope, ApiError> {
        match self.principal {
            Principal::Admin { .. } => Ok(Scope::Platform),
            Principal::Tenant { tenant_id, .. } => Ok(Scope::Tenant(tenant_id)),
            Principal::Anonymous => Err(ApiError::unauthenticated("this method needs an API key")),
        }
    }

    /// Platform scope, for admins only: 401 without a key, 403 for a
    /// tenant key.
    pub fn platform(&self) -> Result<Scope, ApiError> {
        match self.principal {
            Principal::Admin { .. } => Ok(Scope::Platform),
            Principal::Tenant { .. } => Err(ApiError::permission_denied(
                "this method requires an admin key",
            )),
            Principal::Anonymous => Err(ApiError::unauthenticated("this method needs an API key")),
        }
    }

    /// The tenant of a tenant key: 401 without a key, 403 for an admin key.
    pub fn tenant(&self) -> Result<Uuid, ApiError> {
        match self.principal {
            Principal::Tenant { tenant_id, .. } => Ok(tenant_id),
            Principal::Admin { .. } => Err(ApiError::permission_denied(
                "this method requires a tenant key",
            )),
            Principal::Anonymous => Err(ApiError::unauthenticated("this method needs an API key")),
        }
    }

    /// The tenant a request names (`tenantId`), as this actor may name it:
    /// a tenant key names its own (naming none means its own; naming
    /// another is 403, answered before any lookup, so it says nothing of
    /// that tenant); an admin whichever it names (`None`: none). 401
    /// without a key.
    pub fn named_tenant(&self, named: Option<Uuid>) -> Result<Option<Uuid>, ApiError> {
        match (&self.principal, named) {
            (Principal::Tenant { tenant_id, .. }, Some(other)) if other != *tenant_id => Err(
                ApiError::permission_denied("a tenant key can only name its own tenant"),
            ),
            (Principal::Tenant { tenant_id, .. }, _) => Ok(Some(*tenant_id)),
            (Principal::Admin { .. }, named) => Ok(named),
            (Principal::Anonymous, _) => {
                Err(ApiError::unauthenticated("this method needs an API key"))
            }
        }
    }

    pub fn credential(&self) -> Option<&Credential> {
        match &self.principal {
            Principal::Admin { via } | Principal::Tenant { via, .. } => Some(via),
            Principal::Anonymous => None,
        }
    }

    pub fn key_id(&self) -> Option<Uuid> {
        self.credential().and_then(Credential::key_id)
    }

    /// The signed-in user, for a session.
    pub fn session(&self) -> Option<&SessionUser> {
        self.credential().and_then(Credential::session)
    }

    /// The audit entry for an action this actor took.
    pub fn audit(
        &self,
        tenant_id: Option<Uuid>,
        action: &'static str,
        target: Option<Uuid>,
        details: serde_json::Value,
    ) -> Audit {
        Audit {
            actor_kind: self.kind(),
            actor_key_id: self.key_id(),
            actor_user_id: self.session().map(|s| s.user_id),
            tenant_id,
            action,
            target_id: target,
            details,
            request_id: self.request_id.clone(),
        }
    }
}

/// An opaque page cursor: `tag:value` in URL-safe base64 (the tag keeps
/// one list's cursor from being taken for another's).
pub(crate) fn encode_cursor(tag: &str, value: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{tag}:{value}"))
}

/// The value of a cursor [`encode_cursor`] made with `tag`, or 400.
pub(crate) fn decode_cursor<T: std::str::FromStr>(tag: &str, cursor: &str) -> Result<T, ApiError> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            text.strip_prefix(tag)
                .and_then(|rest| rest.strip_prefix(':'))
                .and_then(|value| value.parse().ok())
        })
        .ok_or_else(|| ApiError::bad_field("cursor", "not a cursor returned by this API"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn actor(principal: Principal) -> Actor {
        Actor {
            principal,
            request_id: None,
        }
    }

    #[test]
    fn no_principal_never_gets_a_scope() {
        let anonymous = actor(Principal::Anonymous);
        for result in [anonymous.scope(), anonymous.platform()] {
            assert_eq!(result.unwrap_err().code, ErrorCode::Unauthenticated);
        }
        assert_eq!(
            anonymous.tenant().unwrap_err().code,
            ErrorCode::Unauthenticated
        );
    }

    #[test]
    fn only_admins_get_platform_scope() {
        let tenant_id = Uuid::now_v7();
        let tenant = actor(Principal::Tenant {
            tenant_id,
            via: Credential::Key(Uuid::now_v7()),
            tenant: Arc::new(TenantFacts {
                time_zone: "UTC".into(),
                limits: Default::default(),
                rate_limit: None,
            }),
        });
        assert_eq!(tenant.scope().unwrap(), Scope::Tenant(tenant_id));
        assert_eq!(
            tenant.platform().unwrap_err().code,
            ErrorCode::PermissionDenied
        );
        assert_eq!(tenant.tenant().unwrap(), tenant_id);
        let admin = actor(Principal::Admin {
            via: Credential::Key(Uuid::now_v7()),
        });
        assert_eq!(admin.scope().unwrap(), Scope::Platform);
        assert_eq!(admin.platform().unwrap(), Scope::Platform);
        assert_eq!(
            admin.tenant().unwrap_err().code,
            ErrorCode::PermissionDenied
        );
    }
}
