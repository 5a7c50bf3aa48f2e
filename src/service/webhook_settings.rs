//! Inbound webhook settings of a tenant (tenant key): the callback URL
//! normalized events are forwarded to (SSRF-checked like every URL Tenlyr
//! calls), and per provider whether it is enabled, its signing secret
//! (sealed, write-only: `secretConfigured` says whether one is stored) and
//! its inbound slug URL. A replaced secret keeps verifying for an hour.
//! The callback URL is the tenant's endpoint in the delivery engine; its
//! `whsec_` secret signs forwarded events and is shown once, when the
//! first callback URL is set or the secret is rotated. Every change is
//! audited (never the secrets).

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use super::{Actor, inbound::InboundConfigCache, outbound::Guard};
use crate::{
    domain::{
        inbound::braintree_keys,
        secrets::SecretBox,
        tenant::violation,
        webhook::{self as rules, DEFAULT_GRACE, PROVIDER_SECRET_GRACE, PROVIDERS},
    },
    error::{ApiError, FieldViolation},
    storage::{
        Db, inbound as callbacks, tenants as tenant_repo,
        webhook_settings::{self as repo, ProviderRow},
        webhooks as endpoints,
    },
    workers::SharedClock,
};

/// One provider as the settings show it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderView {
    pub provider: &'static str,
    pub enabled: bool,
    pub secret_configured: bool,
    pub inbound_url: String,
    pub paypal_webhook_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SettingsView {
    pub callback_url: Option<String>,
    /// Every provider, configured or not, in `PROVIDERS` order.
    pub providers: Vec<ProviderView>,
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The forwarding secret, only in the answer of the update that
    /// created or rotated it.
    pub signing_secret: Option<String>,
    pub signing_secret_configured: bool,
    /// `gone` while a 410 paused forwarding.
    pub callback_disabled_reason: Option<String>,
}

/// One provider of an update (`provider`: `None` when the request named
/// none or an unknown one).
#[derive(Debug, Clone, Default)]
pub struct ProviderInput {
    pub provider: Option<&'static str>,
    pub enabled: bool,
    /// `None` keeps the stored secret.
    pub secret: Option<String>,
    pub paypal_webhook_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct SettingsChange {
    /// `None` keeps it; `Some("")` clears it.
    pub callback_url: Option<String>,
    pub providers: Vec<ProviderInput>,
    pub rotate_signing_secret: bool,
}

#[derive(Clone, Debug)]
pub struct WebhookSettings {
    db: Db,
    secrets: SecretBox,
    guard: Guard,
    /// The server's public base URL, for the inbound URLs shown.
    public_url: Option<String>,
    clock: SharedClock,
    /// The gateway's cache, told of every change made here.
    cache: Arc<InboundConfigCache>,
}

impl WebhookSettings {
    pub fn new(
        db: Db,
        secrets: SecretBox,
        guard: Guard,
        public_url: Option<String>,
        clock: SharedClock,
        cache: Arc<InboundConfigCache>,
    ) -> Self {
        Self {
            db,
            secrets,
            guard,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
            clock,
            cache,
        }
    }

    pub async fn get(&self, actor: &Actor) -> Result<SettingsView, ApiError> {
        let tenant = actor.tenant()?;
        let tx = self.db.begin(actor.scope()?).await?;
        let view = self.view(&tx, tenant).await?;
        tx.commit().await?;
        Ok(view)
    }

    async fn view(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        tenant: Uuid,
    ) -> Result<SettingsView, ApiError> {
        let slug = tenant_repo::find(tx, tenant)
            .await?
            .map(|t| t.slug)
            .ok_or_else(|| ApiError::not_found("Tenant not found"))?;
        let (callback_url, updated_at) = repo::callback(tx, tenant).await?;
        let stored = repo::providers(tx, tenant).await?;
        let base = self.public_url.as_deref().unwrap_or("");
        let providers = PROVIDERS
            .iter()
            .map(|&name| {
                let row = stored.iter().find(|r| r.provider == name);
                ProviderView {
                    provider: name,
                    enabled: row.is_some_and(|r| r.enabled),
                    secret_configured: row.is_some_and(|r| r.secret.is_some()),
                    inbound_url: format!("{base}/v1/t/{slug}/webhooks/{name}"),
                    paypal_webhook_id: row.and_then(|r| r.paypal_webhook_id.clone()),
                }
            })
            .collect();
        let endpoint = callbacks::callback_endpoint(tx, tenant).await?;
        let signing_secret_configured = endpoint.is_some();
        let callback_disabled_reason = endpoint
            .filter(|e| !e.enabled && callback_url.is_some())
            .and_then(|e| e.disabled_reason);
        Ok(SettingsView {
            callback_url,
            providers,
            updated_at,
            signing_secret: None,
            signing_secret_configured,
            callback_disabled_reason,
        })
    }

    pub async fn update(
        &self,
        actor: &Actor,
        change: SettingsChange,
    ) -> Result<SettingsView, ApiError> {
        let tenant = actor.tenant()?;
        let mut violations: Vec<FieldViolation> = Vec::new();
        let callback = match change.callback_url.as_deref().map(str::trim) {
            None => None,
            Some("") => Some(None),
            Some(raw) => match self.guard.checked_url("callbackUrl", raw).await {
                Ok(url) => Some(Some(url)),
                Err(v) => {
                    violations.push(v);
                    None
                }
            },
        };
        let mut seen: Vec<&'static str> = Vec::new();
        for (i, p) in change.providers.iter().enumerate() {
            match p.provider {
                None => violations.push(violation(
                    &format!("providers[{i}].provider"),
                    format!("must be one of {}", PROVIDERS.join(", ")),
                )),
                Some(name) if seen.contains(&name) => violations.push(violation(
                    &format!("providers[{i}].provider"),
                    "appears more than once",
                )),
                Some(name) => seen.push(name),
            }
            if let Some(secret) = &p.secret {
                if let Err(v) = rules::provider_secret(&format!("providers[{i}].secret"), secret) {
                    violations.push(v);
                } else if p.provider == Some("braintree") && braintree_keys(secret).is_none() {
                    violations.push(violation(
                        &format!("providers[{i}].secret"),
                        "must be <public key>:<private key> for braintree",
                    ));
                }
            }
            if p.paypal_webhook_id
                .as_ref()
                .is_some_and(|id| id.chars().count() > 200)
            {
                violations.push(violation(
                    &format!("providers[{i}].paypalWebhookId"),
                    "must be at most 200 characters",
                ));
            }
        }
        let now = self.clock.now();
        let tx = self.db.begin(actor.scope()?).await?;
        let stored = repo::providers(&tx, tenant).await?;
        for (i, p) in change.providers.iter().enumerate() {
            if p.provider == Some("paypal") {
                // PayPal is verified by certificate and webhook id.
                let has_id = p
                    .paypal_webhook_id
                    .as_ref()
                    .is_some_and(|id| !id.trim().is_empty())
                    || stored
                        .iter()
                        .any(|r| r.provider == "paypal" && r.paypal_webhook_id.is_some());
                if p.enabled && !has_id {
                    violations.push(violation(
                        &format!("providers[{i}].paypalWebhookId"),
                        "is required to enable paypal",
                    ));
                }
                continue;
            }
            let has_secret = p.secret.is_some()
                || p.provider
                    .is_some_and(|n| stored.iter().any(|r| r.provider == n && r.secret.is_some()));
            if p.enabled && !has_secret {
                violations.push(violation(
                    &format!("providers[{i}].secret"),
                    "is required to enable a provider",
                ));
            }
        }
        let endpoint = callbacks::callback_endpoint(&tx, tenant).await?;
        let will_have_endpoint = endpoint.is_some() || matches!(callback, Some(Some(_)));
        if change.rotate_signing_secret && !will_have_endpoint {
            violations.push(violation(
                "rotateSigningSecret",
                "there is no signing secret until a callback URL is set",
            ));
        }
        if !violations.is_empty() {
            return Err(ApiError::validation(violations));
        }
        let mut audit = serde_json::Map::new();
        let mut signing_secret = None;
        if let Some(callback) = &callback {
            repo::set_callback(&tx, tenant, callback.as_deref(), now).await?;
            audit.insert("callbackUrl".into(), json!(callback));
            match (&endpoint, callback) {
                (Some(e), url) => {
                    callbacks::set_callback_endpoint(&tx, e.id, url.as_deref(), now).await?
                }
                (None, Some(url)) => {
                    let secret = rules::new_secret();
                    let sealed = self.secrets.seal(secret.as_bytes());
                    callbacks::insert_callback_endpoint(&tx, tenant, url, sealed, now).await?;
                    signing_secret = Some(secret);
                }
                (None, None) => {}
            }
        } else {
            repo::touch(&tx, tenant, now).await?;
        }
        if change.rotate_signing_secret
            && let Some(e) = &endpoint
        {
            let secret = rules::new_secret();
            let sealed = self.secrets.seal(secret.as_bytes());
            endpoints::rotate_secret(&tx, e.id, sealed, now + DEFAULT_GRACE, now).await?;
            signing_secret = Some(secret);
            audit.insert("signingSecretRotated".into(), json!(true));
        }
        let mut changed = Vec::new();
        for p in &change.providers {
            let name = p.provider.expect("validated");
            let row = ProviderRow {
                provider: name.to_owned(),
                enabled: p.enabled,
                secret: None,
                previous_secret: None,
                previous_until: Some(now + PROVIDER_SECRET_GRACE),
                paypal_webhook_id: p.paypal_webhook_id.clone(),
                updated_at: now,
            };
            let sealed = p.secret.as_ref().map(|s| self.secrets.seal(s.as_bytes()));
            repo::upsert_provider(&tx, tenant, &row, sealed).await?;
            changed.push(json!({"provider": name, "enabled": p.enabled, "secretChanged": p.secret.is_some()}));
        }
        audit.insert("providers".into(), json!(changed));
        tenant_repo::audit(
            &tx,
            actor.audit(
                Some(tenant),
                "webhook_settings.update",
                Some(tenant),
                serde_json::Value::Object(audit),
            ),
        )
        .await?;
        let mut view = self.view(&tx, tenant).await?;
        tx.commit().await?;
        self.cache.forget(tenant);
        view.signing_secret = signing_secret;
        Ok(view)
    }
}
