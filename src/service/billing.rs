//! Billing (DESIGN.md §11, docs/billing.md): MRR and usage cost from the
//! plan and the period's usage, and the Stripe sync that keeps a customer,
//! a subscription and the usage charges in step with Tenlyr. Reads never
//! call Stripe: they serve the last sync with its `syncedAt`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use super::{
    Actor,
    events::Outbox,
    metering::{Metering, PeriodUsage},
    stripe::{Calls, Stripe, StripeError, Subscription},
};
use crate::{
    domain::{
        billing::{self as rules, CURRENCY, MAX_ENTERPRISE_CENTS, OveragePrices},
        tenant::{Plan, PlanLimits, TenantStatus},
        usage::Metric,
    },
    error::{ApiError, FieldViolation},
    storage::{
        Db,
        billing::{self as repo, BillingRow},
        entities::tenant,
        tenant_data::Scope,
        tenants as tenant_repo,
    },
    workers::SharedClock,
};

/// A tenant's billing as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub tenant_id: Uuid,
    pub plan: String,
    pub mrr_cents: i64,
    pub usage_cost_cents: i64,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub row: BillingRow,
}

/// Platform totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub tenants: i64,
    pub paying: i64,
    pub mrr_cents: i64,
    pub usage_cost_cents: i64,
}

/// What one sync tick did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncReport {
    pub tenants: usize,
    pub calls: Calls,
    pub failed: usize,
    pub drifted: usize,
    /// Another sync held the lock; this one did nothing.
    pub skipped: bool,
}

/// The longest backoff before a tenant's sync waits for the next tick.
const MAX_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(800);
/// Tenants in a row that found Stripe unavailable before a tick stops.
const GIVE_UP_AFTER_UNAVAILABLE: usize = 3;

/// What syncing one tenant came to.
enum Synced {
    /// Stripe and Tenlyr agreed and nothing was written: only `syncedAt`
    /// moves (for all such tenants in one statement).
    Unchanged,
    Changed {
        drifted: bool,
    },
}

/// Advisory-lock key of the billing sync: "tenlyr.billing" as an integer.
const SYNC_LOCK: i64 = 0x7465_6e6c_7962_696c;

#[derive(Clone, Debug)]
pub struct Billing {
    db: Db,
    metering: Metering,
    stripe: Option<Stripe>,
    /// Verifies Stripe's webhooks to the platform.
    webhook_secret: Option<String>,
    prices: OveragePrices,
    outbox: Outbox,
    clock: SharedClock,
}

fn own_limits(t: &tenant::Model) -> PlanLimits {
    PlanLimits {
        api_calls: t.api_call_limit,
        storage_gb: t.storage_gb_limit,
        seats: t.seats_limit,
    }
}

fn used(usage: &PeriodUsage) -> impl Fn(Metric) -> f64 + '_ {
    move |m| match m {
        Metric::ApiCall => usage.api_calls as f64,
        Metric::StorageGb => usage.storage_gb,
        Metric::Seats => usage.seats as f64,
        Metric::Compute => usage.compute as f64,
    }
}

/// The Stripe plan a tenant should be subscribed to (`None`: no
/// subscription: a free plan, an unpriced enterprise, or a tenant that is
/// suspended or terminated), with its name and monthly price.
fn desired_plan(t: &tenant::Model, row: &BillingRow) -> Option<(String, String, i64)> {
    let status = TenantStatus::parse(&t.status)?;
    if status != TenantStatus::Active {
        return None;
    }
    let plan = Plan::parse(&t.plan)?;
    let cents = rules::mrr_cents(plan, row.enterprise_price_cents, false);
    if cents == 0 {
        return None;
    }
    Some(match plan {
        Plan::Enterprise => (
            format!("tenlyr_enterprise_{cents}"),
            format!("Tenlyr Enterprise ({cents} cents)"),
            cents,
        ),
        other => (
            format!("tenlyr_{}", other.as_str()),
            format!("Tenlyr {}", other.as_str()),
            cents,
        ),
    })
}

impl Billing {
    pub fn new(
        db: Db,
        metering: Metering,
        stripe: Option<Stripe>,
        webhook_secret: Option<String>,
        prices: OveragePrices,
        outbox: Outbox,
        clock: SharedClock,
    ) -> Self {
        Self {
            db,
            metering,
            stripe,
            webhook_secret,
            prices,
            outbox,
            clock,
        }
    }

    fn view(&self, t: &tenant::Model, usage: &PeriodUsage, row: BillingRow) -> View {
        let plan = Plan::parse(&t.plan).unwrap_or(Plan::Starter);
        let terminated = t.status == TenantStatus::Terminated.as_str();
        View {
            tenant_id: t.id,
            plan: t.plan.clone(),
            mrr_cents: rules::mrr_cents(plan, row.enterprise_price_cents, terminated),
            usage_cost_cents: rules::usage_cost_cents(
                plan,
                own_limits(t),
                used(usage),
                &self.prices,
            ),
            period_start: usage.period_start,
            period_end: usage.period_end,
            row,
        }
    }

    /// The billing of these tenants (in their order), in `scope`.
    pub async fn views(
        &self,
        scope: Scope,
        tenants: &[tenant::Model],
    ) -> Result<Vec<View>, ApiError> {
        let usage = self.metering.current_many(tenants).await?;
        self.views_with(scope, tenants, &usage).await
    }

    /// [`Self::views`] with each tenant's current usage already read.
    pub async fn views_with(
        &self,
        scope: Scope,
        tenants: &[tenant::Model],
        usage: &[PeriodUsage],
    ) -> Result<Vec<View>, ApiError> {
        let ids: Vec<Uuid> = tenants.iter().map(|t| t.id).collect();
        let tx = self.db.begin(scope).await?;
        let rows = repo::rows(&tx, Some(&ids)).await?;
        tx.commit().await?;
        Ok(tenants
            .iter()
            .zip(usage)
            .map(|(t, u)| {
                let row = rows
                    .iter()
                    .find(|r| r.tenant_id == t.id)
                    .cloned()
                    .unwrap_or_else(|| BillingRow {
                        tenant_id: t.id,
                        status: "not_synced".into(),
                        ..Default::default()
                    });
                self.view(t, u, row)
            })
            .collect())
    }

    /// One tenant's billing: a tenant key reads its own, an admin any.
    pub async fn get(&self, actor: &Actor, tenant: Uuid) -> Result<View, ApiError> {
        let scope = actor.scope()?;
        let tx = self.db.begin(scope).await?;
        let found = tenant_repo::find(&tx, tenant).await?;
        tx.commit().await?;
        let t = found.ok_or_else(|| ApiError::not_found("Tenant not found"))?;
        Ok(self.views(scope, &[t]).await?.remove(0))
    }

    pub async fn summary(&self, actor: &Actor) -> Result<Summary, ApiError> {
        let scope = actor.platform()?;
        let tenants = self.all_tenants().await?;
        let views = self.views(scope, &tenants).await?;
        Ok(Summary {
            tenants: views.len() as i64,
            paying: views.iter().filter(|v| v.mrr_cents > 0).count() as i64,
            mrr_cents: views.iter().map(|v| v.mrr_cents).sum(),
            usage_cost_cents: views.iter().map(|v| v.usage_cost_cents).sum(),
        })
    }

    async fn all_tenants(&self) -> Result<Vec<tenant::Model>, ApiError> {
        let tx = self.db.begin(Scope::Platform).await?;
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = tenant_repo::page(&tx, after, 1000).await?;
            let done = page.len() < 1000;
            after = page.last().map(|t| t.id);
            all.extend(page);
            if done {
                break;
            }
        }
        tx.commit().await?;
        Ok(all)
    }

    /// Sets an enterprise tenant's monthly price (admin).
    pub async fn set_enterprise_price(
        &self,
        actor: &Actor,
        tenant: Uuid,
        cents: i64,
    ) -> Result<View, ApiError> {
        if !(0..=MAX_ENTERPRISE_CENTS).contains(&cents) {
            return Err(ApiError::validation(vec![FieldViolation {
                field: "monthlyPriceCents".into(),
                description: format!("must be an integer from 0 to {MAX_ENTERPRISE_CENTS}"),
            }]));
        }
        let tx = self.db.begin(actor.platform()?).await?;
        let t = tenant_repo::find(&tx, tenant)
            .await?
            .ok_or_else(|| ApiError::not_found("Tenant not found"))?;
        if t.plan != Plan::Enterprise.as_str() {
            return Err(ApiError::new(
                crate::error::ErrorCode::FailedPrecondition,
                "only an enterprise tenant has its own price; change its plan first",
            ));
        }
        repo::set_enterprise_price(&tx, tenant, cents).await?;
        tenant_repo::audit(
            &tx,
            actor.audit(
                Some(tenant),
                "billing.set_price",
                Some(tenant),
                json!({"monthlyPriceCents": cents}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(self.views(Scope::Platform, &[t]).await?.remove(0))
    }

    /// A Stripe billing-portal URL for the tenant's customer.
    pub async fn portal_url(&self, actor: &Actor, return_url: &str) -> Result<String, ApiError> {
        let tenant = actor.tenant()?;
        let valid = url::Url::parse(return_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if valid.is_none() {
            return Err(ApiError::validation(vec![FieldViolation {
                field: "returnUrl".into(),
                description: "must be an absolute http or https URL".into(),
            }]));
        }
        let Some(stripe) = &self.stripe else {
            return Err(ApiError::new(
                crate::error::ErrorCode::FailedPrecondition,
                "billing is not connected to Stripe (TENLYR_STRIPE_SECRET_KEY)",
            ));
        };
        let tx = self.db.begin(actor.scope()?).await?;
        let row = repo::rows(&tx, Some(&[tenant])).await?.pop();
        tx.commit().await?;
        let Some(customer) = row.and_then(|r| r.stripe_customer_id) else {
            return Err(ApiError::new(
                crate::error::ErrorCode::FailedPrecondition,
                "this tenant has no Stripe customer yet; the billing sync creates one within minutes",
            ));
        };
        stripe
            .portal_session(&customer, return_url)
            .await
            .map_err(|err| match err {
                StripeError::Unavailable(why) => {
                    tracing::warn!(error = %why, "stripe unavailable for a portal session");
                    ApiError::unavailable("Stripe is unavailable; try again")
                }
                StripeError::Refused { message, .. } => {
                    ApiError::internal(format!("stripe refused a portal session: {message}"))
                }
            })
    }

    /// A webhook Stripe sent the platform: verified with the signing
    /// secret, it moves the tenant's billing status and emits
    /// `billing.payment_failed` / `billing.subscription_updated`. The
    /// tenant it concerned, if known.
    pub async fn stripe_webhook(
        &self,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Option<Uuid>, ApiError> {
        let Some(secret) = &self.webhook_secret else {
            return Err(ApiError::new(
                crate::error::ErrorCode::FailedPrecondition,
                "no Stripe webhook secret is configured (TENLYR_STRIPE_WEBHOOK_SECRET)",
            ));
        };
        let now = self.clock.now().timestamp();
        crate::domain::webhook::verify_stripe_signature(
            signature.unwrap_or_default(),
            body,
            secret,
            now,
            300,
        )
        .map_err(|why| {
            tracing::warn!(reason = why, "refused a Stripe webhook");
            ApiError::bad_request("invalid signature")
        })?;
        let event: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| ApiError::bad_request("the body is not a JSON Stripe event"))?;
        let kind = event["type"].as_str().unwrap_or_default();
        let object = &event["data"]["object"];
        let customer = object["customer"].as_str().unwrap_or_default();
        let (status, event_type) = match kind {
            "invoice.payment_failed" => {
                (Some("past_due".to_owned()), Some("billing.payment_failed"))
            }
            "invoice.paid" | "invoice.payment_succeeded" => (Some("active".to_owned()), None),
            "customer.subscription.updated" | "customer.subscription.created" => (
                object["status"].as_str().map(str::to_owned),
                Some("billing.subscription_updated"),
            ),
            "customer.subscription.deleted" => (
                Some("canceled".to_owned()),
                Some("billing.subscription_updated"),
            ),
            _ => (None, None),
        };
        if customer.is_empty() || (status.is_none() && event_type.is_none()) {
            return Ok(None);
        }
        let tx = self.db.begin(Scope::Platform).await?;
        let Some(tenant) = repo::tenant_of_customer(&tx, customer).await? else {
            tx.commit().await?;
            return Ok(None);
        };
        if let Some(status) = &status {
            repo::set_status(&tx, tenant, status).await?;
        }
        if let Some(event_type) = event_type {
            self.outbox
                .emit_in(
                    &tx,
                    event_type,
                    Some(tenant),
                    json!({
                        "tenantId": tenant,
                        "status": status,
                        "stripeEventId": event["id"],
                        "stripeEventType": kind,
                        "stripeCustomerId": customer,
                        "stripeSubscriptionId": object["subscription"].as_str().or(object["id"].as_str().filter(|_| kind.starts_with("customer.subscription"))),
                        "amountDue": object["amount_due"],
                    }),
                )
                .await?;
        }
        tx.commit().await?;
        Ok(Some(tenant))
    }

    /// One sync tick: every tenant's customer, subscription and usage
    /// charges brought in line with Tenlyr; drift between the two reported.
    /// Without Stripe configured it does nothing (status stays
    /// `not_synced`).
    pub async fn sync(&self) -> Result<SyncReport, ApiError> {
        let Some(stripe) = &self.stripe else {
            return Ok(SyncReport::default());
        };
        // One sync at a time across replicas, whatever starts it (the
        // elected tick, a test, an overlapping slow tick): a session lock
        // on one pooled connection, held for the whole run.
        let mut lock = self.db.pool().acquire().await?;
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SYNC_LOCK)
            .fetch_one(&mut *lock)
            .await?;
        if !held {
            return Ok(SyncReport {
                skipped: true,
                ..Default::default()
            });
        }
        let result = self.sync_locked(stripe).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(SYNC_LOCK)
            .execute(&mut *lock)
            .await;
        result
    }

    async fn sync_locked(&self, stripe: &Stripe) -> Result<SyncReport, ApiError> {
        let tenants = self.all_tenants().await?;
        let views = self.views(Scope::Platform, &tenants).await?;
        let mut report = SyncReport {
            tenants: tenants.len(),
            ..Default::default()
        };
        let mut plans: HashSet<String> = HashSet::new();
        // Every tenant's ledger for its current period, read once.
        let tx = self.db.begin(Scope::Platform).await?;
        let keys: Vec<(Uuid, DateTime<Utc>)> = views
            .iter()
            .map(|v| (v.tenant_id, v.period_start))
            .collect();
        let ledgers = repo::ledgers(&tx, &keys).await?;
        tx.commit().await?;
        // Tenants the tick found as they were: one statement for all.
        let mut quiet: Vec<Uuid> = Vec::new();
        let mut unavailable_in_a_row = 0;
        for (t, view) in tenants.iter().zip(views) {
            if unavailable_in_a_row >= GIVE_UP_AFTER_UNAVAILABLE {
                // Stripe is down: the rest wait for the next tick rather
                // than each waiting out its retries now.
                report.failed += 1;
                continue;
            }
            let mut calls = Calls::default();
            let ledger = ledgers.get(&t.id).cloned().unwrap_or_default();
            // Stripe unavailable (5xx, timeout, refused connection): retried
            // with backoff (200 ms, 400 ms, 800 ms) before the tenant waits
            // for the next tick. Every step is idempotent.
            let mut delay = std::time::Duration::from_millis(200);
            let result = loop {
                let result = self
                    .sync_one(stripe, t, &view, &ledger, &mut plans, &mut calls)
                    .await;
                match result {
                    Err(StripeError::Unavailable(_)) if delay <= MAX_RETRY_DELAY => {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    other => break other,
                }
            };
            unavailable_in_a_row = match &result {
                Err(StripeError::Unavailable(_)) => unavailable_in_a_row + 1,
                _ => 0,
            };
            report.calls.reads += calls.reads;
            report.calls.writes += calls.writes;
            match result {
                Ok(Synced::Unchanged) => quiet.push(t.id),
                Ok(Synced::Changed { drifted }) => report.drifted += usize::from(drifted),
                Err(err) => {
                    report.failed += 1;
                    tracing::warn!(tenant = %t.id, error = %err, "billing sync failed; the next tick retries");
                    let tx = self.db.begin(Scope::Platform).await?;
                    repo::save_error(&tx, t.id, &err.to_string()).await?;
                    tx.commit().await?;
                }
            }
        }
        if !quiet.is_empty() {
            let tx = self.db.begin(Scope::Platform).await?;
            repo::mark_synced(&tx, &quiet, self.clock.now()).await?;
            tx.commit().await?;
        }
        Ok(report)
    }

    async fn sync_one(
        &self,
        stripe: &Stripe,
        t: &tenant::Model,
        view: &View,
        ledger: &repo::Ledger,
        plans: &mut HashSet<String>,
        calls: &mut Calls,
    ) -> Result<Synced, StripeError> {
        let now = self.clock.now();
        let writes_before = calls.writes;
        let mut row = view.row.clone();
        let tenant = t.id.to_string();
        let customer = match &row.stripe_customer_id {
            Some(id) => id.clone(),
            None => {
                let c = stripe
                    .ensure_customer(&tenant, &t.owner_email, &t.name, calls)
                    .await?;
                row.stripe_customer_id = Some(c.id.clone());
                c.id
            }
        };
        let desired = desired_plan(t, &row);
        let mut drift: Option<String> = None;
        let mut current: Option<Subscription> = match &row.stripe_subscription_id {
            Some(id) => match stripe.subscription(id, calls).await {
                Ok(sub) => Some(sub),
                Err(e) if e.is_not_found() => {
                    drift = Some(format!("subscription {id} no longer exists in Stripe"));
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        if let Some(sub) = &current {
            let live = !matches!(sub.status.as_str(), "canceled" | "incomplete_expired");
            if !live && desired.is_some() && row.stripe_plan.is_some() && row.status != "canceled" {
                drift = Some(format!(
                    "subscription {} was canceled in Stripe while the tenant is {} on {}",
                    sub.id, t.status, t.plan
                ));
            }
            if live
                && let (Some(stripe_plan), Some(ours)) = (sub.plan_id(), &row.stripe_plan)
                && stripe_plan != ours
            {
                drift = Some(format!(
                    "subscription {} is on {stripe_plan} in Stripe, Tenlyr set {ours}",
                    sub.id
                ));
            }
            if !live {
                current = None;
                if desired.is_none() {
                    row.status = "canceled".into();
                }
            }
        }
        match (&desired, current) {
            (Some((plan, name, cents)), None) => {
                if plans.insert(plan.clone()) {
                    stripe
                        .ensure_plan(plan, name, *cents, CURRENCY, calls)
                        .await?;
                }
                // Stripe is the truth on whether one exists: a crash
                // between its create and our save must not make a second.
                let existing = stripe.subscriptions_of(&customer, calls).await?;
                let ours = |s: &&Subscription| s.metadata["tenant_id"] == tenant.as_str();
                for stale in existing
                    .iter()
                    .filter(ours)
                    .filter(|s| s.status == "incomplete")
                {
                    stripe.cancel_subscription(&stale.id, calls).await?;
                }
                let adopted = existing
                    .iter()
                    .filter(ours)
                    .find(|s| {
                        !matches!(
                            s.status.as_str(),
                            "canceled" | "incomplete" | "incomplete_expired"
                        )
                    })
                    .cloned();
                let created = match adopted {
                    Some(sub) if sub.plan_id() == Some(plan.as_str()) => Ok(sub),
                    Some(sub) => stripe.change_plan(&sub, plan, calls).await,
                    None => {
                        stripe
                            .create_subscription(&customer, plan, &tenant, calls)
                            .await
                    }
                };
                match created {
                    Ok(sub) => {
                        row.stripe_subscription_id = Some(sub.id.clone());
                        row.stripe_plan = Some(plan.clone());
                        row.status = sub.status;
                    }
                    // The customer has not given a payment method yet (the
                    // billing portal is where they do): a later tick
                    // subscribes them.
                    Err(StripeError::Refused { message, .. })
                        if message.contains("payment method") =>
                    {
                        // A Stripe-compatible server may keep the refused
                        // subscription as `incomplete`: not ours to keep.
                        for stale in stripe
                            .subscriptions_of(&customer, calls)
                            .await?
                            .iter()
                            .filter(|s| s.metadata["tenant_id"] == tenant.as_str())
                            .filter(|s| s.status == "incomplete")
                        {
                            stripe.cancel_subscription(&stale.id, calls).await?;
                        }
                        row.status = "requires_payment_method".into();
                    }
                    Err(e) => return Err(e),
                }
            }
            (Some((plan, name, cents)), Some(sub)) => {
                let sub = if sub.plan_id() != Some(plan.as_str()) {
                    if plans.insert(plan.clone()) {
                        stripe
                            .ensure_plan(plan, name, *cents, CURRENCY, calls)
                            .await?;
                    }
                    stripe.change_plan(&sub, plan, calls).await?
                } else {
                    sub
                };
                row.stripe_plan = Some(plan.clone());
                row.status = sub.status;
            }
            (None, Some(sub)) => {
                let sub = stripe.cancel_subscription(&sub.id, calls).await?;
                row.status = sub.status;
            }
            (None, None) => {
                if row.stripe_subscription_id.is_none() || row.status == "not_synced" {
                    row.status = "active".into();
                }
            }
        }
        self.push_usage(stripe, t, view, ledger, &customer, calls)
            .await?;
        let drifted = drift.is_some();
        let wrote = calls.writes > writes_before;
        if !wrote && !drifted && view.row.last_error.is_none() && row == view.row {
            return Ok(Synced::Unchanged);
        }
        if let Some(what) = &drift {
            tracing::warn!(tenant = %t.id, drift = %what, "billing drift between Stripe and Tenlyr; corrected");
            row.drift = drift.clone();
            row.drift_at = Some(now);
        }
        row.synced_at = Some(now);
        row.last_error = None;
        let tx = self
            .db
            .begin(Scope::Platform)
            .await
            .map_err(db_unavailable)?;
        repo::save_sync(&tx, &row).await.map_err(db_unavailable)?;
        if wrote || drifted {
            self.outbox
                .emit_in(
                    &tx,
                    "billing.synced",
                    Some(t.id),
                    json!({
                        "tenantId": t.id,
                        "status": row.status,
                        "plan": t.plan,
                        "mrrCents": view.mrr_cents,
                        "usageCostCents": view.usage_cost_cents,
                        "stripeCustomerId": row.stripe_customer_id,
                        "stripeSubscriptionId": row.stripe_subscription_id,
                        "drift": drift,
                    }),
                )
                .await
                .map_err(db_unavailable)?;
        }
        tx.commit().await.map_err(db_unavailable)?;
        Ok(Synced::Changed { drifted })
    }

    /// Sends Stripe the period's usage cost not yet billed, exactly once
    /// (the ledger protocol of `migrations/0015_billing.sql`).
    async fn push_usage(
        &self,
        stripe: &Stripe,
        t: &tenant::Model,
        view: &View,
        ledger: &repo::Ledger,
        customer: &str,
        calls: &mut Calls,
    ) -> Result<(), StripeError> {
        let now = self.clock.now();
        let period = view.period_start;
        let mut billed = ledger.billed_cents;
        if let (Some(key), Some(cents)) = (&ledger.pending_key, ledger.pending_cents) {
            // A push whose outcome was not recorded: Stripe may have it.
            let item = match stripe.find_invoice_item(customer, key, calls).await? {
                Some(item) => item,
                None => {
                    stripe
                        .add_invoice_item(
                            customer,
                            cents,
                            CURRENCY,
                            &description(t, view),
                            key,
                            calls,
                        )
                        .await?
                }
            };
            self.record_push(t.id, period, key, &item.id, now).await?;
            billed += cents;
        }
        let delta = view.usage_cost_cents - billed;
        if delta <= 0 {
            return Ok(());
        }
        let key = format!(
            "tenlyr-usage-{}-{}-{}",
            t.id,
            period.timestamp(),
            view.usage_cost_cents
        );
        let tx = self
            .db
            .begin(Scope::Platform)
            .await
            .map_err(db_unavailable)?;
        repo::begin_push(&tx, t.id, period, &key, delta, now)
            .await
            .map_err(db_unavailable)?;
        tx.commit().await.map_err(db_unavailable)?;
        let item = stripe
            .add_invoice_item(
                customer,
                delta,
                CURRENCY,
                &description(t, view),
                &key,
                calls,
            )
            .await?;
        self.record_push(t.id, period, &key, &item.id, now).await
    }

    async fn record_push(
        &self,
        tenant: Uuid,
        period: DateTime<Utc>,
        key: &str,
        item: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StripeError> {
        let tx = self
            .db
            .begin(Scope::Platform)
            .await
            .map_err(db_unavailable)?;
        repo::finish_push(&tx, tenant, period, key, item, now)
            .await
            .map_err(db_unavailable)?;
        tx.commit().await.map_err(db_unavailable)
    }
}

fn description(t: &tenant::Model, view: &View) -> String {
    format!(
        "Tenlyr usage beyond the {} plan, period from {}",
        t.plan,
        view.period_start.date_naive()
    )
}

/// A database failure during a sync: the tenant is retried next tick.
fn db_unavailable(err: sea_orm::DbErr) -> StripeError {
    StripeError::Unavailable(format!("database: {err}"))
}
