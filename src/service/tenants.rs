//! Tenant provisioning, lifecycle, plans and labeled API keys.

use std::sync::Arc;

use chrono::Utc;
use sea_orm::{ActiveModelTrait, DatabaseTransaction, IntoActiveModel, Set};
use serde_json::json;
use uuid::Uuid;

use super::{Actor, events::Outbox, keys::KeyResolver};
use crate::{
    domain::{
        keys::{KeyKind, NewKey},
        tenant::{self as rules, IsolationLevel, Plan, TenantStatus, Transition},
    },
    error::{ApiError, CONCURRENT_CHANGE, ErrorCode},
    storage::{
        Db,
        entities::{api_key, tenant},
        jobs,
        tenant_data::{self, Scope},
        tenants::{self as repo, Conflict},
    },
    workers::{
        queue::Queue,
        tenant_purge::{Purge, TenantPurge},
    },
};

pub const DEFAULT_PAGE: u64 = 50;
pub const MAX_PAGE: u64 = 100;
const PRIMARY_LABEL: &str = "primary";

/// What `CreateTenant` asks for, before validation.
#[derive(Debug, Default)]
pub struct NewTenantInput {
    pub name: String,
    pub owner_email: String,
    pub plan: Option<Plan>,
    pub region: Option<String>,
    pub slug: Option<String>,
    pub time_zone: Option<String>,
}

/// `UpdateTenant`: only the fields present change.
#[derive(Debug, Default)]
pub struct TenantChanges {
    pub name: Option<String>,
    pub region: Option<String>,
    pub time_zone: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Tenants {
    db: Db,
    keys: Arc<KeyResolver>,
    queue: Queue,
    outbox: Outbox,
    /// How long after termination the tenant's data is purged.
    purge_delay: chrono::Duration,
}

/// The limits in force for `t` (its own enterprise limits, else its plan's).
pub fn limits(t: &tenant::Model) -> rules::PlanLimits {
    rules::PlanLimits::effective(
        &t.plan,
        rules::PlanLimits {
            api_calls: t.api_call_limit,
            storage_gb: t.storage_gb_limit,
            seats: t.seats_limit,
        },
    )
}

fn not_found() -> ApiError {
    ApiError::not_found("Tenant not found")
}

fn status_of(t: &tenant::Model) -> TenantStatus {
    TenantStatus::parse(&t.status).unwrap_or(TenantStatus::Pending)
}

impl Tenants {
    pub fn new(db: Db, keys: Arc<KeyResolver>, queue: Queue, outbox: Outbox) -> Self {
        Self {
            db,
            keys,
            queue,
            outbox,
            purge_delay: chrono::Duration::hours(1),
        }
    }

    /// Purges a terminated tenant's data `delay` after the termination
    /// (`TENLYR_TERMINATED_PURGE_DELAY_SECS`).
    pub fn with_purge_delay(mut self, delay: chrono::Duration) -> Self {
        self.purge_delay = delay;
        self
    }

    async fn audit(
        tx: &DatabaseTransaction,
        actor: &Actor,
        tenant_id: Uuid,
        action: &'static str,
        target: Option<Uuid>,
        details: serde_json::Value,
    ) -> Result<(), ApiError> {
        repo::audit(tx, actor.audit(Some(tenant_id), action, target, details)).await?;
        Ok(())
    }

    /// Provisions a tenant: row, first key, its RLS-scoped storage and the
    /// `pending` → `active` step, in one transaction.
    pub async fn create(
        &self,
        actor: &Actor,
        input: NewTenantInput,
    ) -> Result<(tenant::Model, String), ApiError> {
        let name = rules::name(&input.name);
        let email = rules::email(&input.owner_email);
        let region = rules::region(input.region.as_deref().unwrap_or(rules::DEFAULT_REGION));
        let time_zone = rules::time_zone(
            input
                .time_zone
                .as_deref()
                .unwrap_or(rules::DEFAULT_TIME_ZONE),
        );
        let chosen_slug = input.slug.as_deref().map(rules::slug).transpose();
        rules::all_valid(vec![
            name.as_ref().map(drop).map_err(Clone::clone),
            email.as_ref().map(drop).map_err(Clone::clone),
            region.as_ref().map(drop).map_err(Clone::clone),
            time_zone.as_ref().map(drop).map_err(Clone::clone),
            chosen_slug.as_ref().map(drop).map_err(Clone::clone),
        ])?;
        let (name, email, region, time_zone) = (
            name.unwrap(),
            email.unwrap(),
            region.unwrap(),
            time_zone.unwrap(),
        );
        let chosen_slug = chosen_slug.unwrap();
        let plan = input.plan.unwrap_or(Plan::Starter);

        // A derived slug that collides gets a random suffix; retried if two
        // provisionings race for the same one.
        for attempt in 0..3 {
            let tx = self.db.begin(actor.platform()?).await?;
            let slug = match &chosen_slug {
                Some(slug) => slug.clone(),
                None => {
                    let base = rules::slug_from_name(&name);
                    if attempt == 0 && !repo::slug_taken(&tx, &base).await? {
                        base
                    } else {
                        format!("{base}-{}", short_random())
                    }
                }
            };
            match self
                .provision(&tx, actor, &name, &email, plan, &region, &time_zone, &slug)
                .await
            {
                Ok(created) => {
                    tx.commit().await?;
                    return Ok(created);
                }
                Err(err) => {
                    let _ = tx.rollback().await;
                    match repo::conflict(&err) {
                        Some(Conflict::OwnerEmail) => {
                            return Err(ApiError::new(
                                ErrorCode::AlreadyExists,
                                "a tenant with this ownerEmail already exists",
                            )
                            .with_violation("ownerEmail", "already used by another tenant"));
                        }
                        Some(Conflict::Slug) if chosen_slug.is_some() => {
                            return Err(ApiError::new(
                                ErrorCode::AlreadyExists,
                                "a tenant with this slug already exists",
                            )
                            .with_violation("slug", "already used by another tenant"));
                        }
                        Some(Conflict::Slug) => continue,
                        None => return Err(err.into()),
                    }
                }
            }
        }
        Err(ApiError::internal(
            "could not find a free slug after 3 attempts",
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn provision(
        &self,
        tx: &DatabaseTransaction,
        actor: &Actor,
        name: &str,
        email: &str,
        plan: Plan,
        region: &str,
        time_zone: &str,
        slug: &str,
    ) -> Result<(tenant::Model, String), sea_orm::DbErr> {
        let now = Utc::now();
        let id = Uuid::now_v7();
        let key = NewKey::generate(KeyKind::Tenant);
        let pending = repo::insert(
            tx,
            tenant::Model {
                id,
                name: name.to_owned(),
                slug: slug.to_owned(),
                owner_email: email.to_owned(),
                plan: plan.as_str().to_owned(),
                status: TenantStatus::Pending.as_str().to_owned(),
                region: region.to_owned(),
                time_zone: time_zone.to_owned(),
                isolation_level: IsolationLevel::SharedSchema.as_str().to_owned(),
                suspended_reason: None,
                api_key_prefix: key.display_prefix().to_owned(),
                api_call_limit: None,
                storage_gb_limit: None,
                seats_limit: None,
                created_at: now,
                updated_at: now,
                last_active_at: None,
                rate_limit: None,
            },
        )
        .await?;
        let key_row = repo::insert_key(tx, self.key_row(id, PRIMARY_LABEL, &key, true)).await?;
        // The tenant's own storage, written as the tenant (RLS applies).
        tenant_data::set_scope(tx, Scope::Tenant(id)).await?;
        repo::create_settings(tx, id).await?;
        tenant_data::set_scope(tx, Scope::Platform).await?;
        let mut active = pending.into_active_model();
        active.status = Set(TenantStatus::Active.as_str().to_owned());
        let tenant = repo::update(tx, active).await?;
        let details = json!({"name": name, "plan": plan.as_str(), "region": region, "slug": slug});
        self.outbox
            .emit_in(
                tx,
                "tenant.provisioned",
                Some(id),
                json!({"tenantId": id, "name": name, "plan": plan.as_str(), "region": region}),
            )
            .await?;
        repo::audit(
            tx,
            actor.audit(Some(id), "tenant.create", Some(id), details),
        )
        .await?;
        repo::audit(
            tx,
            actor.audit(
                Some(id),
                "key.create",
                Some(key_row.id),
                json!({"label": PRIMARY_LABEL}),
            ),
        )
        .await?;
        Ok((tenant, key.plaintext))
    }

    fn key_row(&self, tenant_id: Uuid, label: &str, key: &NewKey, primary: bool) -> api_key::Model {
        api_key::Model {
            id: Uuid::now_v7(),
            tenant_id,
            label: label.to_owned(),
            prefix: key.display_prefix().to_owned(),
            key_digest: self.keys.hasher().digest(&key.plaintext),
            is_primary: primary,
            created_at: Utc::now(),
            last_used_at: None,
            revoked_at: None,
        }
    }

    pub async fn get(&self, actor: &Actor, id: Uuid) -> Result<tenant::Model, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let found = repo::find(&tx, id).await?;
        tx.commit().await?;
        let mut tenant = found.ok_or_else(not_found)?;
        self.merge_activity(&mut tenant);
        Ok(tenant)
    }

    /// Last activity recorded in memory but not yet written.
    fn merge_activity(&self, tenant: &mut tenant::Model) {
        if let Some(pending) = self.keys.pending_activity(tenant.id) {
            tenant.last_active_at = Some(tenant.last_active_at.map_or(pending, |t| t.max(pending)));
        }
    }

    /// A page of tenants and the cursor of the next one (`None` on the last).
    pub async fn list(
        &self,
        actor: &Actor,
        cursor: &str,
        limit: i32,
    ) -> Result<(Vec<tenant::Model>, Option<String>), ApiError> {
        let limit = page_size(limit)?;
        let after = if cursor.is_empty() {
            None
        } else {
            Some(decode_cursor(cursor)?)
        };
        let tx = self.db.begin(actor.platform()?).await?;
        let mut rows = repo::page(&tx, after, limit + 1).await?;
        tx.commit().await?;
        let next = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|t| encode_cursor(t.id))
        } else {
            None
        };
        for row in &mut rows {
            self.merge_activity(row);
        }
        Ok((rows, next))
    }

    pub async fn update(
        &self,
        actor: &Actor,
        id: Uuid,
        changes: TenantChanges,
    ) -> Result<tenant::Model, ApiError> {
        let name = changes.name.as_deref().map(rules::name).transpose();
        let region = changes.region.as_deref().map(rules::region).transpose();
        let time_zone = changes
            .time_zone
            .as_deref()
            .map(rules::time_zone)
            .transpose();
        rules::all_valid(vec![
            name.as_ref().map(drop).map_err(Clone::clone),
            region.as_ref().map(drop).map_err(Clone::clone),
            time_zone.as_ref().map(drop).map_err(Clone::clone),
        ])?;
        let tx = self.db.begin(actor.platform()?).await?;
        let current = repo::find_for_update(&tx, id)
            .await?
            .ok_or_else(not_found)?;
        rules::ensure_mutable(status_of(&current))?;
        let mut model = current.into_active_model();
        let mut changed = serde_json::Map::new();
        if let Some(name) = name.unwrap() {
            changed.insert("name".into(), json!(name));
            model.name = Set(name);
        }
        if let Some(region) = region.unwrap() {
            changed.insert("region".into(), json!(region));
            model.region = Set(region);
        }
        if let Some(time_zone) = time_zone.unwrap() {
            changed.insert("timeZone".into(), json!(time_zone));
            model.time_zone = Set(time_zone);
        }
        model.updated_at = Set(Utc::now());
        let updated = model.update(&tx).await?;
        // Key lookups carry the time zone (usage periods): forget them.
        let digests = if changed.contains_key("timeZone") {
            live_digests(&tx, id).await?
        } else {
            Vec::new()
        };
        Self::audit(
            &tx,
            actor,
            id,
            "tenant.update",
            Some(id),
            serde_json::Value::Object(changed),
        )
        .await?;
        tx.commit().await?;
        self.keys.invalidate(digests).await;
        Ok(updated)
    }

    /// Suspend, reactivate or terminate; key caches everywhere forget the
    /// tenant's keys so the new state applies at once. Terminating also
    /// enqueues the purge of the tenant's data (`workers::tenant_purge`).
    pub async fn transition(
        &self,
        actor: &Actor,
        id: Uuid,
        transition: Transition,
        reason: Option<String>,
    ) -> Result<tenant::Model, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let current = repo::find_for_update(&tx, id)
            .await?
            .ok_or_else(not_found)?;
        let next = transition.apply(status_of(&current))?;
        let mut model = current.into_active_model();
        model.status = Set(next.as_str().to_owned());
        model.suspended_reason = Set(if next == TenantStatus::Suspended {
            reason.clone().filter(|r| !r.trim().is_empty())
        } else {
            None
        });
        model.updated_at = Set(Utc::now());
        let updated = model.update(&tx).await?;
        let digests = live_digests(&tx, id).await?;
        Self::audit(
            &tx,
            actor,
            id,
            transition.action(),
            Some(id),
            json!({"reason": reason}),
        )
        .await?;
        // A terminated tenant is "pending deletion": its data (and its own
        // schema or database) is purged in a job, after the delay (the
        // billing sync pushes its last usage first; writes in flight and
        // key caches settle); the row stays until DELETE.
        if next == TenantStatus::Terminated {
            let mut purge = self
                .queue
                .job::<TenantPurge>(&Purge { tenant_id: id })
                .map_err(|err| ApiError::internal(err.to_string()))?;
            purge.run_at += self.purge_delay;
            jobs::enqueue_in(&tx, &purge).await?;
        }
        let mut data = json!({"tenantId": id, "status": next.as_str()});
        if next == TenantStatus::Suspended {
            data["reason"] = json!(updated.suspended_reason);
        }
        self.outbox
            .emit_in(&tx, transition.event(), Some(id), data)
            .await?;
        tx.commit().await?;
        self.keys.invalidate(digests).await;
        Ok(updated)
    }

    pub async fn change_plan(
        &self,
        actor: &Actor,
        id: Uuid,
        plan: Plan,
    ) -> Result<tenant::Model, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let current = repo::find_for_update(&tx, id)
            .await?
            .ok_or_else(not_found)?;
        rules::ensure_mutable(status_of(&current))?;
        let from = current.plan.clone();
        let mut model = current.into_active_model();
        model.plan = Set(plan.as_str().to_owned());
        model.updated_at = Set(Utc::now());
        let updated = model.update(&tx).await?;
        // Key lookups carry the plan's limits (GetMetrics): forget them.
        let digests = live_digests(&tx, id).await?;
        Self::audit(
            &tx,
            actor,
            id,
            "tenant.change_plan",
            Some(id),
            json!({"from": from, "to": plan.as_str()}),
        )
        .await?;
        self.outbox
            .emit_in(
                &tx,
                "tenant.plan_changed",
                Some(id),
                json!({"tenantId": id, "fromPlan": from, "toPlan": plan.as_str()}),
            )
            .await?;
        tx.commit().await?;
        self.keys.invalidate(digests).await;
        Ok(updated)
    }

    /// Sets the tenant's own limits (all three: `None` clears one). Like a
    /// plan change they apply to the next usage commit and, once each
    /// replica forgets the tenant's cached keys, to GetMetrics.
    pub async fn set_limits(
        &self,
        actor: &Actor,
        id: Uuid,
        own: rules::PlanLimits,
    ) -> Result<tenant::Model, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let current = repo::find_for_update(&tx, id)
            .await?
            .ok_or_else(not_found)?;
        rules::ensure_mutable(status_of(&current))?;
        let from = json!({
            "apiCalls": current.api_call_limit,
            "storageGb": current.storage_gb_limit,
            "seats": current.seats_limit,
        });
        let mut model = current.into_active_model();
        model.api_call_limit = Set(own.api_calls);
        model.storage_gb_limit = Set(own.storage_gb);
        model.seats_limit = Set(own.seats);
        model.updated_at = Set(Utc::now());
        let updated = model.update(&tx).await?;
        // Key lookups carry the limits (GetMetrics): forget them.
        let digests = live_digests(&tx, id).await?;
        let to = json!({
            "apiCalls": own.api_calls, "storageGb": own.storage_gb, "seats": own.seats,
        });
        Self::audit(
            &tx,
            actor,
            id,
            "tenant.set_limits",
            Some(id),
            json!({"from": from, "to": to}),
        )
        .await?;
        if from != to {
            self.outbox
                .emit_in(
                    &tx,
                    "tenant.limits_changed",
                    Some(id),
                    json!({"tenantId": id, "from": from, "to": to}),
                )
                .await?;
        }
        tx.commit().await?;
        self.keys.invalidate(digests).await;
        Ok(updated)
    }

    /// Replaces the primary key: the old one stops working at once.
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        id: Uuid,
    ) -> Result<(tenant::Model, String), ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let current = repo::find_for_update(&tx, id)
            .await?
            .ok_or_else(not_found)?;
        rules::ensure_mutable(status_of(&current))?;
        let revoked = repo::revoke_keys(&tx, id, None, Utc::now()).await?;
        let key = NewKey::generate(KeyKind::Tenant);
        let row = repo::insert_key(&tx, self.key_row(id, PRIMARY_LABEL, &key, true)).await?;
        let mut model = current.into_active_model();
        model.api_key_prefix = Set(key.display_prefix().to_owned());
        model.updated_at = Set(Utc::now());
        let updated = model.update(&tx).await?;
        let old: Vec<Uuid> = revoked.iter().map(|k| k.id).collect();
        Self::audit(
            &tx,
            actor,
            id,
            "key.rotate",
            Some(row.id),
            json!({"revoked": old}),
        )
        .await?;
        self.outbox
            .emit_in(
                &tx,
                "tenant.key_rotated",
                Some(id),
                json!({"tenantId": id, "apiKeyPrefix": key.display_prefix(), "keyId": row.id}),
            )
            .await?;
        tx.commit().await?;
        self.keys
            .invalidate(revoked.into_iter().map(|k| k.key_digest).collect())
            .await;
        Ok((updated, key.plaintext))
    }

    /// Removes the tenant and every row it owns: the tenant tables cascade,
    /// and a job enqueued in the same transaction purges its raw usage
    /// events in chunks (`workers::tenant_purge`).
    ///
    /// The cascade locks rows of many tables (events, endpoints,
    /// deliveries …) that the webhook dispatcher may be updating at that
    /// moment; should PostgreSQL roll one transaction back for the other (a
    /// deadlock), nothing was done, so the deletion is tried again.
    pub async fn delete(&self, actor: &Actor, id: Uuid) -> Result<(), ApiError> {
        let mut retries = 0;
        loop {
            match self.delete_once(actor, id).await {
                Err(err) if err.reason == Some(CONCURRENT_CHANGE) && retries < 3 => retries += 1,
                done => return done,
            }
        }
    }

    async fn delete_once(&self, actor: &Actor, id: Uuid) -> Result<(), ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let current = repo::find_for_update(&tx, id)
            .await?
            .ok_or_else(not_found)?;
        let digests = live_digests(&tx, id).await?;
        repo::delete(&tx, id).await?;
        let purge = self
            .queue
            .job::<TenantPurge>(&Purge { tenant_id: id })
            .map_err(|err| ApiError::internal(err.to_string()))?;
        jobs::enqueue_in(&tx, &purge).await?;
        Self::audit(
            &tx,
            actor,
            id,
            "tenant.delete",
            Some(id),
            json!({"name": current.name, "slug": current.slug}),
        )
        .await?;
        self.outbox
            .emit_in(
                &tx,
                "tenant.deleted",
                Some(id),
                json!({"tenantId": id, "name": current.name, "slug": current.slug}),
            )
            .await?;
        tx.commit().await?;
        self.keys.invalidate(digests).await;
        Ok(())
    }

    pub async fn create_key(
        &self,
        actor: &Actor,
        tenant_id: Uuid,
        label: &str,
    ) -> Result<(api_key::Model, String), ApiError> {
        let label = rules::label(label).map_err(|v| ApiError::validation(vec![v]))?;
        let tx = self.db.begin(actor.scope()?).await?;
        let tenant = repo::find(&tx, tenant_id).await?.ok_or_else(not_found)?;
        rules::ensure_mutable(status_of(&tenant))?;
        let key = NewKey::generate(KeyKind::Tenant);
        let row = repo::insert_key(&tx, self.key_row(tenant_id, &label, &key, false)).await?;
        Self::audit(
            &tx,
            actor,
            tenant_id,
            "key.create",
            Some(row.id),
            json!({"label": label}),
        )
        .await?;
        tx.commit().await?;
        Ok((row, key.plaintext))
    }

    pub async fn list_keys(
        &self,
        actor: &Actor,
        tenant_id: Uuid,
    ) -> Result<Vec<api_key::Model>, ApiError> {
        let tx = self.db.begin(actor.scope()?).await?;
        repo::find(&tx, tenant_id).await?.ok_or_else(not_found)?;
        let keys = repo::keys(&tx, tenant_id).await?;
        tx.commit().await?;
        Ok(keys)
    }

    pub async fn revoke_key(
        &self,
        actor: &Actor,
        tenant_id: Uuid,
        key_id: Uuid,
    ) -> Result<api_key::Model, ApiError> {
        let tx = self.db.begin(actor.scope()?).await?;
        repo::find(&tx, tenant_id).await?.ok_or_else(not_found)?;
        let revoked = repo::revoke_keys(&tx, tenant_id, Some(key_id), Utc::now()).await?;
        let Some(row) = revoked.into_iter().next() else {
            let exists = repo::keys(&tx, tenant_id)
                .await?
                .into_iter()
                .find(|k| k.id == key_id);
            return match exists {
                Some(_) => Err(ApiError::new(
                    ErrorCode::FailedPrecondition,
                    "API key is already revoked",
                )),
                None => Err(ApiError::not_found("API key not found")),
            };
        };
        Self::audit(
            &tx,
            actor,
            tenant_id,
            "key.revoke",
            Some(key_id),
            json!({"label": row.label}),
        )
        .await?;
        tx.commit().await?;
        self.keys.invalidate(vec![row.key_digest.clone()]).await;
        Ok(row)
    }

    /// Starts an export: the tenant row, audited (the transport adds its
    /// usage, health and billing). Its keys follow page by page
    /// ([`Self::export_keys`]).
    pub async fn export(&self, actor: &Actor, id: Uuid) -> Result<tenant::Model, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let mut tenant = repo::find(&tx, id).await?.ok_or_else(not_found)?;
        Self::audit(&tx, actor, id, "tenant.export", Some(id), json!({})).await?;
        tx.commit().await?;
        self.merge_activity(&mut tenant);
        Ok(tenant)
    }

    /// The next page of an export's keys: up to `limit` after `after`, in
    /// id order.
    pub async fn export_keys(
        &self,
        actor: &Actor,
        id: Uuid,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<api_key::Model>, ApiError> {
        let tx = self.db.begin(actor.platform()?).await?;
        let keys = repo::keys_page(&tx, id, after, limit).await?;
        tx.commit().await?;
        Ok(keys)
    }
}

pub(crate) async fn live_digests(
    tx: &DatabaseTransaction,
    tenant_id: Uuid,
) -> Result<Vec<Vec<u8>>, ApiError> {
    Ok(repo::keys(tx, tenant_id)
        .await?
        .into_iter()
        .filter(|k| k.revoked_at.is_none())
        .map(|k| k.key_digest)
        .collect())
}

fn short_random() -> String {
    Uuid::new_v4().simple().to_string()[..6].to_owned()
}

pub(crate) fn page_size(limit: i32) -> Result<u64, ApiError> {
    match limit {
        0 => Ok(DEFAULT_PAGE),
        1..=100 => Ok(limit as u64),
        _ => Err(ApiError::validation(vec![crate::error::FieldViolation {
            field: "limit".into(),
            description: "must be between 1 and 100".into(),
        }])),
    }
}

const CURSOR_TAG: &str = "t1";

fn encode_cursor(id: Uuid) -> String {
    super::encode_cursor(CURSOR_TAG, &id.to_string())
}

fn decode_cursor(cursor: &str) -> Result<Uuid, ApiError> {
    super::decode_cursor(CURSOR_TAG, cursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        for bad in ["", "abc", "dDE6bm90LWEtdXVpZA", "%%%"] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(100).unwrap(), 100);
        assert!(page_size(101).is_err());
        assert!(page_size(-1).is_err());
    }
}
