//! Platform events through the transactional outbox (DESIGN.md §7): a
//! change and the events it causes commit in one transaction. Every
//! service that emits (tenants now; health, alerts, isolation and billing
//! later) calls [`Outbox::emit_in`] inside its own transaction.

use chrono::SecondsFormat;
use sea_orm::ConnectionTrait;
use serde_json::json;
use uuid::Uuid;

use crate::{
    domain::webhook,
    storage::webhooks::{self as repo, NewEvent},
    workers::SharedClock,
};

/// Builds envelopes and writes them to the outbox; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    clock: SharedClock,
}

impl Outbox {
    pub fn new(clock: SharedClock) -> Self {
        Self { clock }
    }

    /// The event with its documented envelope
    /// `{"id":"evt_…","type":…,"createdAt":…,"data":{…}}`, serialized once:
    /// these bytes are signed and sent on every attempt.
    pub fn event(
        &self,
        event_type: &'static str,
        tenant_id: Option<Uuid>,
        data: serde_json::Value,
    ) -> NewEvent {
        debug_assert!(webhook::EVENT_TYPES.contains(&event_type), "{event_type}");
        let id = webhook::new_event_id();
        let created_at = self.clock.now();
        let body = json!({
            "id": id,
            "type": event_type,
            "createdAt": created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "data": data,
        })
        .to_string();
        NewEvent {
            id,
            event_type,
            tenant_id,
            body,
            created_at,
        }
    }

    /// Adds an event in the caller's transaction; it reaches every enabled
    /// endpoint whose filter takes its type once that transaction commits.
    pub async fn emit_in(
        &self,
        tx: &impl ConnectionTrait,
        event_type: &'static str,
        tenant_id: Option<Uuid>,
        data: serde_json::Value,
    ) -> Result<(), sea_orm::DbErr> {
        repo::emit_in(tx, &self.event(event_type, tenant_id, data), None).await?;
        Ok(())
    }
}
