//! Use cases: validation, scoped transactions, audit and cache
//! invalidation, over `storage`. No transport types here.

pub mod admin_keys;
pub mod counters;
pub mod keys;
pub mod metering;
pub mod tenants;

use uuid::Uuid;

use crate::storage::tenants::Audit;

/// Who is calling; the auth layer puts it in the request extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin {
        key_id: Uuid,
    },
    Tenant {
        tenant_id: Uuid,
        key_id: Uuid,
    },
    /// A public method (the request authenticates itself, e.g. by signature).
    Anonymous,
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

    pub fn key_id(&self) -> Option<Uuid> {
        match self.principal {
            Principal::Admin { key_id } | Principal::Tenant { key_id, .. } => Some(key_id),
            Principal::Anonymous => None,
        }
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
            tenant_id,
            action,
            target_id: target,
            details,
            request_id: self.request_id.clone(),
        }
    }
}
