//! Outbound webhook endpoints (admin): registration behind the SSRF guard,
//! secrets shown once and sealed at rest, rotation with a grace period,
//! test events, recovery of failed deliveries, and the delivery log. The
//! sending itself is `workers::webhook_delivery`.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;
use uuid::Uuid;

use super::{Actor, events::Outbox, outbound::Guard};
use crate::{
    domain::{
        secrets::SecretBox,
        tenant::all_valid,
        webhook::{self as rules, DEFAULT_GRACE, MAX_GRACE, RECOVER_WINDOW},
    },
    error::{ApiError, ErrorCode, FieldViolation},
    storage::{
        Db, tenants as audit_repo,
        webhooks::{self as repo, AttemptRow, DeliveryRow, EndpointRow},
    },
    workers::{SharedClock, queue::Wakeups},
};

/// What `CreateWebhookEndpoint` asks for.
#[derive(Debug, Default)]
pub struct NewEndpoint {
    pub url: String,
    pub event_types: Vec<String>,
    pub description: String,
    pub ordered: bool,
}

/// `UpdateWebhookEndpoint`: only the fields present change.
#[derive(Debug, Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub ordered: Option<bool>,
}

#[derive(Clone, Debug)]
pub struct WebhookEndpoints {
    db: Db,
    secrets: SecretBox,
    guard: Guard,
    outbox: Outbox,
    clock: SharedClock,
    /// Wakes this process's dispatchers (tests, after moving the clock).
    wakeups: Wakeups,
}

fn not_found() -> ApiError {
    ApiError::not_found("Webhook endpoint not found")
}

const CURSOR_TAG: &str = "d1";

impl WebhookEndpoints {
    pub fn new(
        db: Db,
        secrets: SecretBox,
        guard: Guard,
        outbox: Outbox,
        clock: SharedClock,
        wakeups: Wakeups,
    ) -> Self {
        Self {
            db,
            secrets,
            guard,
            outbox,
            clock,
            wakeups,
        }
    }

    pub fn wake_dispatchers(&self) {
        self.wakeups.wake();
    }

    pub async fn create(
        &self,
        actor: &Actor,
        input: NewEndpoint,
    ) -> Result<(EndpointRow, String), ApiError> {
        let scope = actor.platform()?;
        let url = self.guard.checked_url("url", &input.url).await;
        let types = rules::event_types(&input.event_types);
        let description = rules::description(&input.description);
        all_valid(vec![
            url.as_ref().map(drop).map_err(Clone::clone),
            types.as_ref().map(drop).map_err(Clone::clone),
            description.as_ref().map(drop).map_err(Clone::clone),
        ])?;
        let secret = rules::new_secret();
        let now = self.clock.now();
        let row = EndpointRow {
            id: Uuid::now_v7(),
            url: url.unwrap(),
            description: description.unwrap(),
            event_types: types.unwrap(),
            enabled: true,
            disabled_reason: None,
            ordered: input.ordered,
            secret: self.secrets.seal(secret.as_bytes()),
            previous_secret: None,
            previous_until: None,
            breaker_state: "closed".into(),
            created_at: now,
            updated_at: now,
        };
        let tx = self.db.begin(scope).await?;
        repo::insert_endpoint(&tx, &row).await?;
        audit_repo::audit(
            &tx,
            actor.audit(
                None,
                "webhook_endpoint.create",
                Some(row.id),
                json!({"url": row.url, "eventTypes": row.event_types}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok((row, secret))
    }

    pub async fn list(&self, actor: &Actor) -> Result<Vec<EndpointRow>, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let rows = repo::endpoints(&tx).await?;
        tx.commit().await?;
        Ok(rows)
    }

    pub async fn get(&self, actor: &Actor, id: Uuid) -> Result<EndpointRow, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let row = repo::find_endpoint(&tx, id).await?;
        tx.commit().await?;
        row.ok_or_else(not_found)
    }

    pub async fn update(
        &self,
        actor: &Actor,
        id: Uuid,
        changes: EndpointChanges,
    ) -> Result<EndpointRow, ApiError> {
        let scope = actor.platform()?;
        let url = match &changes.url {
            Some(raw) => Some(self.guard.checked_url("url", raw).await).transpose(),
            None => Ok(None),
        };
        let types = changes
            .event_types
            .as_deref()
            .map(rules::event_types)
            .transpose();
        let description = changes
            .description
            .as_deref()
            .map(rules::description)
            .transpose();
        all_valid(vec![
            url.as_ref().map(drop).map_err(Clone::clone),
            types.as_ref().map(drop).map_err(Clone::clone),
            description.as_ref().map(drop).map_err(Clone::clone),
        ])?;
        let now = self.clock.now();
        let tx = self.db.begin(scope).await?;
        let mut row = repo::find_endpoint_for_update(&tx, id)
            .await?
            .ok_or_else(not_found)?;
        let was_enabled = row.enabled;
        let mut changed = serde_json::Map::new();
        if let Some(url) = url.unwrap() {
            changed.insert("url".into(), json!(url));
            row.url = url;
        }
        if let Some(types) = types.unwrap() {
            changed.insert("eventTypes".into(), json!(types));
            row.event_types = types;
        }
        if let Some(description) = description.unwrap() {
            changed.insert("description".into(), json!(description));
            row.description = description;
        }
        if let Some(ordered) = changes.ordered {
            changed.insert("ordered".into(), json!(ordered));
            row.ordered = ordered;
        }
        if let Some(enabled) = changes.enabled {
            changed.insert("enabled".into(), json!(enabled));
            if enabled != row.enabled {
                row.disabled_reason = (!enabled).then(|| "disabled".to_owned());
            }
            row.enabled = enabled;
            if enabled {
                row.breaker_state = "closed".into();
            }
        }
        row.updated_at = now;
        repo::update_endpoint(&tx, &row, was_enabled, now).await?;
        audit_repo::audit(
            &tx,
            actor.audit(
                None,
                "webhook_endpoint.update",
                Some(id),
                serde_json::Value::Object(changed),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Removes the endpoint; its pending deliveries stop (one in flight
    /// finishes, and its outcome is dropped).
    pub async fn delete(&self, actor: &Actor, id: Uuid) -> Result<(), ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let row = repo::find_endpoint_for_update(&tx, id)
            .await?
            .ok_or_else(not_found)?;
        repo::delete_endpoint(&tx, id).await?;
        audit_repo::audit(
            &tx,
            actor.audit(
                None,
                "webhook_endpoint.delete",
                Some(id),
                json!({"url": row.url}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A new secret, returned once; the old one signs beside it until the
    /// grace period ends.
    pub async fn rotate_secret(
        &self,
        actor: &Actor,
        id: Uuid,
        grace_seconds: Option<i64>,
    ) -> Result<(EndpointRow, String), ApiError> {
        let grace = match grace_seconds {
            None => DEFAULT_GRACE,
            Some(s) if (0..=MAX_GRACE.num_seconds()).contains(&s) => Duration::seconds(s),
            Some(_) => {
                return Err(ApiError::validation(vec![FieldViolation {
                    field: "graceSeconds".into(),
                    description: format!(
                        "must be between 0 and {} (7 days)",
                        MAX_GRACE.num_seconds()
                    ),
                }]));
            }
        };
        let now = self.clock.now();
        let tx = self.db.begin(actor.platform()?).await?;
        let mut row = repo::find_endpoint_for_update(&tx, id)
            .await?
            .ok_or_else(not_found)?;
        let secret = rules::new_secret();
        let sealed = self.secrets.seal(secret.as_bytes());
        repo::rotate_secret(&tx, id, sealed.clone(), now + grace, now).await?;
        audit_repo::audit(
            &tx,
            actor.audit(
                None,
                "webhook_endpoint.rotate_secret",
                Some(id),
                json!({"graceSeconds": grace.num_seconds()}),
            ),
        )
        .await?;
        tx.commit().await?;
        row.previous_secret = Some(std::mem::replace(&mut row.secret, sealed));
        row.previous_until = Some(now + grace);
        row.updated_at = now;
        Ok((row, secret))
    }

    /// Sends a `webhook.test` event to this endpoint alone; its id.
    pub async fn send_test(&self, actor: &Actor, id: Uuid) -> Result<String, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let row = repo::find_endpoint_for_update(&tx, id)
            .await?
            .ok_or_else(not_found)?;
        if !row.enabled {
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                "the endpoint is disabled; enable it to send a test event",
            ));
        }
        let event = self.outbox.event(
            "webhook.test",
            None,
            json!({"endpointId": id, "message": "This is a test event from Tenlyr."}),
        );
        repo::emit_in(&tx, &event, Some(id)).await?;
        tx.commit().await?;
        Ok(event.id)
    }

    /// Re-queues the deliveries that failed since `since` (at most 14 days
    /// back); how many.
    pub async fn recover(
        &self,
        actor: &Actor,
        id: Uuid,
        since: Option<DateTime<Utc>>,
    ) -> Result<u64, ApiError> {
        let now = self.clock.now();
        let since = since.ok_or_else(|| {
            ApiError::validation(vec![FieldViolation {
                field: "since".into(),
                description: "is required (an RFC 3339 time at most 14 days ago)".into(),
            }])
        })?;
        if since < now - RECOVER_WINDOW || since > now {
            return Err(ApiError::validation(vec![FieldViolation {
                field: "since".into(),
                description: "must be within the last 14 days".into(),
            }]));
        }
        let tx = self.db.begin(actor.platform()?).await?;
        let row = repo::find_endpoint_for_update(&tx, id)
            .await?
            .ok_or_else(not_found)?;
        if !row.enabled {
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                "the endpoint is disabled; enable it before recovering its deliveries",
            ));
        }
        let recovered = repo::recover(&tx, id, since, now).await?;
        audit_repo::audit(
            &tx,
            actor.audit(
                None,
                "webhook_endpoint.recover",
                Some(id),
                json!({"since": since, "recovered": recovered}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(recovered)
    }

    /// A page of an endpoint's deliveries, newest first, and the next
    /// page's cursor.
    pub async fn deliveries(
        &self,
        actor: &Actor,
        id: Uuid,
        status: Option<&str>,
        cursor: &str,
        limit: i32,
    ) -> Result<(Vec<DeliveryRow>, Option<String>), ApiError> {
        let limit = super::tenants::page_size(limit)?;
        let before = if cursor.is_empty() {
            None
        } else {
            Some(super::decode_cursor::<i64>(CURSOR_TAG, cursor)?)
        };
        let tx = self.db.begin(actor.platform()?).await?;
        repo::find_endpoint(&tx, id).await?.ok_or_else(not_found)?;
        let mut rows = repo::deliveries_page(&tx, id, status, before, limit + 1).await?;
        tx.commit().await?;
        let next = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last()
                .map(|d| super::encode_cursor(CURSOR_TAG, &d.id.to_string()))
        } else {
            None
        };
        Ok((rows, next))
    }

    pub async fn delivery(
        &self,
        actor: &Actor,
        id: Uuid,
        delivery_id: i64,
    ) -> Result<(DeliveryRow, Vec<AttemptRow>), ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let found = repo::find_delivery(&tx, id, delivery_id).await?;
        let Some(delivery) = found else {
            return Err(ApiError::not_found("Webhook delivery not found"));
        };
        let attempts = repo::attempts(&tx, delivery_id).await?;
        tx.commit().await?;
        Ok((delivery, attempts))
    }
}
