//! Backoffice users and sessions (DESIGN.md §13): sign-in with bcrypt
//! passwords and failed-login limits, server-side sessions (idle and
//! absolute expiry, last-seen times kept in memory and written in
//! batches), one-time invite and reset links, and user management with
//! tenant-scoped roles. Every change and every sign-in is audited.
//!
//! Tokens (session, invite, reset) exist in plaintext only in the response
//! that hands them out (and, sealed, in the stored reply an
//! `Idempotency-Key` replays to the same caller); the database keeps their
//! HMAC digests under the server pepper, like API keys.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use sea_orm::{DbErr, EntityTrait as _};
use serde_json::json;
use uuid::Uuid;

use super::{
    Actor, Credential, Principal, SessionUser, decode_cursor, encode_cursor,
    keys::{KeyResolver, TenantFacts},
};
use crate::{
    domain::{
        keys::KeyHasher,
        tenant::TenantStatus,
        user::{self as rules, Lifetimes, LoginLimit, Role, UserStatus},
    },
    error::{ApiError, ErrorCode},
    storage::{
        Db,
        entities::tenant,
        tenant_data::Scope,
        tenants::{self as tenant_repo, Audit},
        users::{self as repo, SessionRow, UserRow},
    },
    workers::SharedClock,
};

pub const DEFAULT_PAGE: u64 = 50;
pub const MAX_PAGE: u64 = 200;

/// How users and sessions behave (from the configuration).
#[derive(Debug, Clone)]
pub struct UserSettings {
    pub lifetimes: Lifetimes,
    pub login_limit: LoginLimit,
    /// bcrypt's cost factor (12 in production; tests lower it).
    pub bcrypt_cost: u32,
    /// The server's public base URL, for invite and reset links.
    pub public_url: Option<String>,
}

impl UserSettings {
    /// Cookies are `Secure` when `TENLYR_PUBLIC_URL` is https (the server
    /// cannot see TLS that a proxy in front of it terminates).
    fn secure_cookie(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }

    fn link(&self, page: &str, token: &str) -> String {
        let base = self
            .public_url
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/');
        format!("{base}/backoffice/#/{page}?token={token}")
    }
}

/// A signed-in caller as the Backoffice sees it.
#[derive(Clone)]
pub struct SessionView {
    pub user: Option<UserRow>,
    pub tenant: Option<tenant::Model>,
    pub csrf_token: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A new session: what to show and the cookie to set.
pub struct SignedIn {
    pub view: SessionView,
    pub set_cookie: String,
}

/// A one-time link handed to an admin.
#[derive(Clone)]
pub struct Link {
    pub kind: &'static str,
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

// Hand-written `Debug` for what carries a token, so no `?value` in a log
// line can print one.
impl std::fmt::Debug for SessionView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionView")
            .field("user", &self.user)
            .field("tenant", &self.tenant.as_ref().map(|t| t.id))
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("kind", &self.kind)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct UserPage {
    pub data: Vec<UserRow>,
    pub next_cursor: Option<String>,
}

/// What a caller may change of a user.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserChange {
    pub role: Option<Role>,
    pub active: Option<bool>,
}

#[derive(Clone)]
pub struct Users(Arc<Inner>);

struct Inner {
    db: Db,
    keys: Arc<KeyResolver>,
    clock: SharedClock,
    settings: UserSettings,
    /// Last-seen times of sessions not yet written.
    seen: Mutex<HashMap<Uuid, DateTime<Utc>>>,
    /// A hash checked when no user has the email, so a wrong email costs
    /// as long as a wrong password.
    decoy_hash: String,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users").finish_non_exhaustive()
    }
}

const SESSION: &str = "session";
const INVITE: &str = "invite";
const RESET: &str = "reset";

impl Users {
    pub fn new(
        db: Db,
        keys: Arc<KeyResolver>,
        clock: SharedClock,
        settings: UserSettings,
    ) -> anyhow::Result<Self> {
        let decoy_hash = bcrypt::hash(rules::new_token(), settings.bcrypt_cost)?;
        Ok(Self(Arc::new(Inner {
            db,
            keys,
            clock,
            settings,
            seen: Mutex::default(),
            decoy_hash,
        })))
    }

    fn digest(&self, purpose: &str, token: &str) -> Vec<u8> {
        token_digest(self.0.keys.hasher(), purpose, token)
    }

    /// The CSRF token of a session: derived from its token under the
    /// pepper, so it needs no storage and dies with the session.
    pub fn csrf_token(&self, session_token: &str) -> String {
        crate::domain::keys::hex(&self.digest("csrf", session_token))
    }

    /// Whether `presented` is the CSRF token of `session_token` (constant
    /// time).
    pub fn csrf_matches(&self, session_token: &str, presented: &str) -> bool {
        let expected = self.csrf_token(session_token);
        self.0
            .keys
            .hasher()
            .verify_digest(expected.as_bytes(), presented.as_bytes())
    }

    async fn hash_password(&self, password: &str) -> Result<String, ApiError> {
        let input = rules::bcrypt_input(self.0.keys.hasher(), password);
        let cost = self.0.settings.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(input, cost))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)
    }

    async fn password_matches(&self, password: &str, hash: Option<&str>) -> bool {
        let input = rules::bcrypt_input(self.0.keys.hasher(), password);
        let (hash, real) = match hash {
            Some(h) => (h.to_owned(), true),
            None => (self.0.decoy_hash.clone(), false),
        };
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(input, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        real && verified
    }

    /// Signs in: 429 while the account or the address is locked out, 401
    /// for a wrong email or password (one message for both), 401 for a
    /// deactivated account or a tenant that is not active.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        address: Option<std::net::IpAddr>,
    ) -> Result<SignedIn, ApiError> {
        let now = self.0.clock.now();
        let limit = self.0.settings.login_limit;
        let account = rules::account_subject(email);
        let address = address.map(rules::address_subject);
        let subjects: Vec<String> = std::iter::once(account.clone())
            .chain(address.clone())
            .collect();
        // One transaction per attempt, serialised per account by an
        // advisory lock held across the password check: concurrent guesses
        // at one account see each other's failures, so a burst gets no more
        // tries than the limit.
        let tx = self.0.db.begin(Scope::Platform).await?;
        repo::lock_subject(&tx, &account).await?;
        if let Some(until) = repo::locked_until(&tx, &subjects, now).await? {
            tx.commit().await?;
            let mut err = ApiError::new(
                ErrorCode::ResourceExhausted,
                "too many failed sign-ins; try again later or reset the password",
            )
            .with_reason("LOGIN_LOCKED");
            err.retry_after = (until - now).to_std().ok();
            return Err(err);
        }
        let user = match rules::email(email) {
            Ok(email) => repo::find_by_email(&tx, &email).await?,
            Err(_) => None,
        };
        let hash = user.as_ref().and_then(|u| u.password_hash.as_deref());
        if !self.password_matches(password, hash).await {
            let (window, lockout) = (rules::LOGIN_WINDOW, rules::LOGIN_LOCKOUT);
            repo::record_failure(&tx, &account, limit.per_account, now, window, lockout).await?;
            if let Some(address) = &address {
                repo::record_failure(&tx, address, limit.per_address, now, window, lockout).await?;
            }
            if let Some(user) = &user {
                tenant_repo::audit(&tx, user_audit(user, "user.login_failed", json!({}))).await?;
            }
            tx.commit().await?;
            return Err(ApiError::unauthenticated("wrong email or password"));
        }
        let stored_cost = hash.and_then(rules::bcrypt_cost);
        let user = user.expect("a matching password has a user");
        let tenant = self.usable(&tx, &user).await?;
        // A hash made at another cost is redone at today's, so raising
        // TENLYR_BCRYPT_COST reaches every account at its next sign-in (and
        // no account signs in measurably faster than the decoy).
        if stored_cost != Some(self.0.settings.bcrypt_cost) {
            let rehashed = self.hash_password(password).await?;
            repo::set_password(&tx, user.id, &rehashed, now).await?;
        }
        repo::clear_failures(&tx, &account).await?;
        repo::record_login(&tx, user.id, now).await?;
        tenant_repo::audit(&tx, user_audit(&user, "user.login", json!({}))).await?;
        let signed_in = self.open_session(&tx, user, tenant, now).await?;
        tx.commit().await?;
        Ok(signed_in)
    }

    /// The user's tenant, if it has one; 401 unless the user may sign in
    /// (active, and its tenant active).
    async fn usable(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        user: &UserRow,
    ) -> Result<Option<tenant::Model>, ApiError> {
        match user.status {
            UserStatus::Active => {}
            UserStatus::Deactivated => {
                return Err(ApiError::unauthenticated("this account is deactivated"));
            }
            UserStatus::Invited => {
                return Err(ApiError::unauthenticated(
                    "this account has not accepted its invite yet",
                ));
            }
        }
        let Some(tenant_id) = user.tenant_id else {
            return Ok(None);
        };
        let tenant = tenant::Entity::find_by_id(tenant_id)
            .one(tx)
            .await?
            .ok_or_else(|| ApiError::unauthenticated("this account's tenant no longer exists"))?;
        if TenantStatus::parse(&tenant.status) != Some(TenantStatus::Active) {
            return Err(ApiError::unauthenticated(format!(
                "this account's tenant is {}",
                tenant.status
            )));
        }
        Ok(Some(tenant))
    }

    async fn open_session(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        user: UserRow,
        tenant: Option<tenant::Model>,
        now: DateTime<Utc>,
    ) -> Result<SignedIn, ApiError> {
        let token = rules::new_token();
        let life = self.0.settings.lifetimes;
        let expires_at = now + life.absolute;
        repo::create_session(tx, self.digest(SESSION, &token), user.id, now, expires_at).await?;
        Ok(SignedIn {
            set_cookie: rules::set_cookie(&token, life.absolute, self.0.settings.secure_cookie()),
            view: SessionView {
                user: Some(user),
                tenant,
                csrf_token: self.csrf_token(&token),
                expires_at: Some(expires_at),
            },
        })
    }

    /// The principal of a session cookie: 401 when the session is unknown,
    /// ended (idle or absolute expiry, logout, password reset) or its user
    /// or tenant may no longer sign in.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, ApiError> {
        let now = self.0.clock.now();
        let tx = self.0.db.begin(Scope::Platform).await?;
        let Some(session) = repo::find_session(&tx, self.digest(SESSION, token)).await? else {
            tx.commit().await?;
            return Err(ApiError::unauthenticated(
                "the session ended or is unknown: sign in again",
            ));
        };
        let seen = self.last_seen(&session);
        if !self
            .0
            .settings
            .lifetimes
            .alive(seen, session.expires_at, now)
        {
            repo::delete_session(&tx, session.id).await?;
            tx.commit().await?;
            return Err(ApiError::unauthenticated(
                "the session expired: sign in again",
            ));
        }
        let tenant = self.usable(&tx, &session.user).await?;
        tx.commit().await?;
        self.0
            .seen
            .lock()
            .expect("seen lock")
            .insert(session.id, now);
        let via = Credential::Session(SessionUser {
            user_id: session.user.id,
            session_id: session.id,
            role: session.user.role,
        });
        Ok(match tenant {
            None => Principal::Admin { via },
            Some(tenant) => Principal::Tenant {
                tenant_id: tenant.id,
                via,
                tenant: Arc::new(TenantFacts::of(&tenant)),
            },
        })
    }

    fn last_seen(&self, session: &SessionRow) -> DateTime<Utc> {
        let pending = self
            .0
            .seen
            .lock()
            .expect("seen lock")
            .get(&session.id)
            .copied();
        pending.map_or(session.last_seen_at, |p| p.max(session.last_seen_at))
    }

    /// Writes the recorded last-seen times (the activity worker, every 2 s
    /// and at shutdown), forgets sessions that ended (either way) a day ago
    /// and failed-login counters whose window and lockout are over.
    pub async fn flush_seen(&self) -> Result<(), DbErr> {
        let batch: Vec<_> = std::mem::take(&mut *self.0.seen.lock().expect("seen lock"))
            .into_iter()
            .collect();
        repo::touch_sessions(self.0.db.app(), &batch).await?;
        let now = self.0.clock.now();
        let day = chrono::Duration::days(1);
        repo::purge_sessions(
            self.0.db.app(),
            now - day,
            now - day - self.0.settings.lifetimes.idle,
        )
        .await?;
        repo::purge_failures(self.0.db.app(), now - rules::LOGIN_WINDOW, now).await?;
        Ok(())
    }

    /// Ends the caller's session; the cookie that clears it.
    pub async fn logout(&self, actor: &Actor) -> Result<String, ApiError> {
        let session = actor.session().ok_or_else(|| {
            ApiError::new(
                ErrorCode::FailedPrecondition,
                "this request is signed with an API key, not a session",
            )
        })?;
        let tx = self.0.db.begin(Scope::Platform).await?;
        repo::delete_session(&tx, session.session_id).await?;
        tenant_repo::audit(
            &tx,
            actor.audit(
                tenant_of(actor),
                "user.logout",
                Some(session.user_id),
                json!({}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(rules::clear_cookie(self.0.settings.secure_cookie()))
    }

    /// Who the caller is. `session_token` is the cookie's token when the
    /// caller is a session (for its CSRF token).
    pub async fn whoami(
        &self,
        actor: &Actor,
        session_token: Option<&str>,
    ) -> Result<SessionView, ApiError> {
        let tx = self.0.db.begin(Scope::Platform).await?;
        let tenant = match tenant_of(actor) {
            Some(id) => tenant::Entity::find_by_id(id).one(&tx).await?,
            None => None,
        };
        let view = match actor.session() {
            None => SessionView {
                user: None,
                tenant,
                csrf_token: String::new(),
                expires_at: None,
            },
            Some(session) => {
                let user = repo::get(&tx, session.user_id)
                    .await?
                    .ok_or_else(|| ApiError::unauthenticated("the user no longer exists"))?;
                let expires_at = repo::find_session(
                    &tx,
                    self.digest(SESSION, session_token.unwrap_or_default()),
                )
                .await?
                .map(|s| s.expires_at);
                SessionView {
                    user: Some(user),
                    tenant,
                    csrf_token: session_token
                        .map(|t| self.csrf_token(t))
                        .unwrap_or_default(),
                    expires_at,
                }
            }
        };
        tx.commit().await?;
        Ok(view)
    }

    /// Sets the password from an invite or reset link and signs in. A reset
    /// ends the user's other sessions.
    pub async fn redeem(
        &self,
        purpose: &'static str,
        token: &str,
        password: &str,
    ) -> Result<SignedIn, ApiError> {
        let password = rules::password(password).map_err(|v| ApiError::validation(vec![v]))?;
        let what = if purpose == INVITE {
            "invite link"
        } else {
            "reset link"
        };
        let invalid = || {
            ApiError::new(
                ErrorCode::FailedPrecondition,
                format!("this {what} is invalid or was already used; ask for a new one"),
            )
            .with_reason("LINK_INVALID")
        };
        if !rules::token_shape(token) {
            return Err(invalid());
        }
        let now = self.0.clock.now();
        let tx = self.0.db.begin(Scope::Platform).await?;
        // The token first: only a live link costs a bcrypt hash.
        let Some((user_id, expires_at)) =
            repo::take_token(&tx, self.digest(purpose, token), purpose).await?
        else {
            return Err(invalid());
        };
        if expires_at <= now {
            // The expired link is used up either way.
            tx.commit().await?;
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!("this {what} expired; ask for a new one"),
            )
            .with_reason("LINK_EXPIRED"));
        }
        let hash = self.hash_password(password).await?;
        let user = repo::set_password(&tx, user_id, &hash, now)
            .await?
            .ok_or_else(invalid)?;
        let tenant = self.usable(&tx, &user).await?;
        if purpose == RESET {
            repo::end_sessions(&tx, user.id, None).await?;
        }
        repo::clear_failures(&tx, &rules::account_subject(&user.email)).await?;
        let action = if purpose == INVITE {
            "user.invite_accept"
        } else {
            "user.password_reset"
        };
        tenant_repo::audit(&tx, user_audit(&user, action, json!({}))).await?;
        repo::record_login(&tx, user.id, now).await?;
        let signed_in = self.open_session(&tx, user, tenant, now).await?;
        tx.commit().await?;
        Ok(signed_in)
    }

    pub async fn accept_invite(&self, token: &str, password: &str) -> Result<SignedIn, ApiError> {
        self.redeem(INVITE, token, password).await
    }

    pub async fn reset_password(&self, token: &str, password: &str) -> Result<SignedIn, ApiError> {
        self.redeem(RESET, token, password).await
    }

    /// Adds a user with an invite link. Platform roles need an admin key or
    /// a super admin; a tenant caller adds users to its own tenant only.
    pub async fn create(
        &self,
        actor: &Actor,
        email: &str,
        role: Option<Role>,
        tenant_id: Option<Uuid>,
    ) -> Result<(UserRow, Link), ApiError> {
        ensure_user_manager(actor)?;
        let mut violations = Vec::new();
        let email = rules::email(email).map_err(|v| violations.push(v)).ok();
        let role = role.or_else(|| {
            violations.push(crate::domain::tenant::violation(
                "role",
                "must be one of super_admin, admin, owner, developer, viewer",
            ));
            None
        });
        let (Some(email), Some(role), true) = (email, role, violations.is_empty()) else {
            return Err(ApiError::validation(violations));
        };
        let tenant_id = self.tenant_for(actor, role, tenant_id)?;
        let now = self.0.clock.now();
        let tx = self.0.db.begin(actor.scope()?).await?;
        let user = repo::insert(&tx, &email, role, tenant_id, now)
            .await
            .map_err(|err| {
                if repo::is_email_taken(&err) {
                    ApiError::new(
                        ErrorCode::AlreadyExists,
                        "a user with this email already exists",
                    )
                } else if repo::is_unknown_tenant(&err) {
                    ApiError::not_found("Tenant not found")
                } else {
                    err.into()
                }
            })?;
        let link = self.issue(&tx, &user, INVITE, now).await?;
        tenant_repo::audit(
            &tx,
            actor.audit(
                user.tenant_id,
                "user.create",
                Some(user.id),
                json!({"email": user.email, "role": role.as_str()}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok((user, link))
    }

    /// Where a user with `role` goes: no tenant for platform roles (which
    /// only platform callers may grant), the named tenant for an admin, the
    /// caller's own for a tenant caller.
    fn tenant_for(
        &self,
        actor: &Actor,
        role: Role,
        named: Option<Uuid>,
    ) -> Result<Option<Uuid>, ApiError> {
        if role.is_platform() {
            ensure_platform_manager(actor)?;
            if named.is_some() {
                return Err(ApiError::bad_field(
                    "tenantId",
                    "must be empty for a platform role",
                ));
            }
            return Ok(None);
        }
        actor
            .named_tenant(named)?
            .ok_or_else(|| ApiError::bad_field("tenantId", "is required for a tenant role"))
            .map(Some)
    }

    async fn issue(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        user: &UserRow,
        purpose: &'static str,
        now: DateTime<Utc>,
    ) -> Result<Link, ApiError> {
        let token = rules::new_token();
        let life = self.0.settings.lifetimes;
        let (ttl, page) = if purpose == INVITE {
            (life.invite, "accept-invite")
        } else {
            (life.reset, "reset-password")
        };
        let expires_at = now + ttl;
        repo::put_token(
            tx,
            self.digest(purpose, &token),
            user.id,
            purpose,
            expires_at,
        )
        .await?;
        Ok(Link {
            kind: purpose,
            url: self.0.settings.link(page, &token),
            expires_at,
        })
    }

    pub async fn list(
        &self,
        actor: &Actor,
        tenant_id: Option<Uuid>,
        platform_only: bool,
        limit: Option<u64>,
        cursor: Option<&str>,
    ) -> Result<UserPage, ApiError> {
        ensure_user_manager(actor)?;
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::bad_field("limit", "must be 1 to 200"));
        }
        let tenant_id = match (&actor.principal, tenant_id) {
            (Principal::Tenant { tenant_id: own, .. }, Some(id)) if id != *own => {
                return Err(ApiError::not_found("Tenant not found"));
            }
            (_, filter) => filter,
        };
        let after = cursor
            .filter(|c| !c.is_empty())
            .map(|c| decode_cursor::<Uuid>("users", c))
            .transpose()?;
        let tx = self.0.db.begin(actor.scope()?).await?;
        let mut data = repo::page(&tx, tenant_id, platform_only, after, limit + 1).await?;
        tx.commit().await?;
        let next_cursor = (data.len() as u64 > limit).then(|| {
            data.truncate(limit as usize);
            encode_cursor("users", &data[data.len() - 1].id.to_string())
        });
        Ok(UserPage { data, next_cursor })
    }

    pub async fn get(&self, actor: &Actor, id: Uuid) -> Result<UserRow, ApiError> {
        ensure_user_manager(actor)?;
        let tx = self.0.db.begin(actor.scope()?).await?;
        let user = repo::get(&tx, id).await?;
        tx.commit().await?;
        user.ok_or_else(|| ApiError::not_found("User not found"))
    }

    /// The user `id` as the caller may manage it: 404 if it cannot see it,
    /// 403 for a platform user unless the caller manages those, 400 for
    /// the caller itself.
    async fn managed(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        actor: &Actor,
        id: Uuid,
    ) -> Result<UserRow, ApiError> {
        ensure_user_manager(actor)?;
        let user = repo::get(tx, id)
            .await?
            .ok_or_else(|| ApiError::not_found("User not found"))?;
        if user.role.is_platform() {
            ensure_platform_manager(actor)?;
        }
        if actor.session().is_some_and(|s| s.user_id == id) {
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                "you cannot change, deactivate or delete your own account here",
            ));
        }
        Ok(user)
    }

    pub async fn update(
        &self,
        actor: &Actor,
        id: Uuid,
        change: UserChange,
    ) -> Result<UserRow, ApiError> {
        let now = self.0.clock.now();
        let tx = self.0.db.begin(actor.scope()?).await?;
        let user = self.managed(&tx, actor, id).await?;
        if let Some(role) = change.role
            && role.is_platform() != user.role.is_platform()
        {
            return Err(ApiError::bad_field(
                "role",
                "cannot move a user between platform and tenant roles",
            ));
        }
        let status = change
            .active
            .map(|active| match (active, &user.password_hash) {
                (false, _) => UserStatus::Deactivated,
                (true, Some(_)) => UserStatus::Active,
                (true, None) => UserStatus::Invited,
            });
        let updated = repo::update(&tx, id, change.role, status, now)
            .await?
            .ok_or_else(|| ApiError::not_found("User not found"))?;
        let mut ended = 0;
        if status == Some(UserStatus::Deactivated) {
            ended = repo::end_sessions(&tx, id, None).await?.len();
            repo::drop_tokens(&tx, id).await?;
        }
        tenant_repo::audit(
            &tx,
            actor.audit(
                updated.tenant_id,
                "user.update",
                Some(id),
                json!({
                    "email": updated.email,
                    "role": {"from": user.role.as_str(), "to": updated.role.as_str()},
                    "status": {"from": user.status.as_str(), "to": updated.status.as_str()},
                    "sessionsEnded": ended,
                }),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(updated)
    }

    pub async fn delete(&self, actor: &Actor, id: Uuid) -> Result<(), ApiError> {
        let tx = self.0.db.begin(actor.scope()?).await?;
        let user = self.managed(&tx, actor, id).await?;
        repo::delete(&tx, id).await?;
        tenant_repo::audit(
            &tx,
            actor.audit(
                user.tenant_id,
                "user.delete",
                Some(id),
                json!({"email": user.email, "role": user.role.as_str()}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A new invite link for an invited user, else a reset link; 400 for
    /// a deactivated user.
    pub async fn password_link(&self, actor: &Actor, id: Uuid) -> Result<Link, ApiError> {
        let now = self.0.clock.now();
        let tx = self.0.db.begin(actor.scope()?).await?;
        let user = self.managed(&tx, actor, id).await?;
        let purpose = match user.status {
            UserStatus::Invited => INVITE,
            UserStatus::Active => RESET,
            UserStatus::Deactivated => {
                return Err(ApiError::new(
                    ErrorCode::FailedPrecondition,
                    "this user is deactivated; reactivate it first",
                ));
            }
        };
        let link = self.issue(&tx, &user, purpose, now).await?;
        tenant_repo::audit(
            &tx,
            actor.audit(
                user.tenant_id,
                "user.link_create",
                Some(id),
                json!({"email": user.email, "kind": purpose}),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(link)
    }
}

/// What the database keeps of a token: its HMAC under the pepper, with
/// its purpose, so a token of one kind never works as another.
fn token_digest(hasher: &KeyHasher, purpose: &str, token: &str) -> Vec<u8> {
    hasher.digest(&format!("{purpose}:{token}"))
}

/// `tenlyr admin create-user`: adds a user from the command line (the
/// first super admin of a new installation). With a password the user is
/// active at once; without, the result is its invite link.
pub async fn create_from_cli(
    db: &Db,
    hasher: &KeyHasher,
    settings: &UserSettings,
    email: &str,
    role: Role,
    tenant_id: Option<Uuid>,
    password: Option<&str>,
) -> anyhow::Result<(UserRow, Option<Link>)> {
    let email = rules::email(email).map_err(|v| anyhow::anyhow!("--email {}", v.description))?;
    anyhow::ensure!(
        role.is_platform() == tenant_id.is_none(),
        "--tenant-id is required for tenant roles and not allowed for platform roles"
    );
    let hash = match password {
        Some(p) => {
            let p = rules::password(p)
                .map_err(|v| anyhow::anyhow!("the password {}", v.description))?;
            let (input, cost) = (rules::bcrypt_input(hasher, p), settings.bcrypt_cost);
            Some(tokio::task::spawn_blocking(move || bcrypt::hash(input, cost)).await??)
        }
        None => None,
    };
    let now = Utc::now();
    let tx = db.begin(Scope::Platform).await?;
    let mut user = repo::insert(&tx, &email, role, tenant_id, now)
        .await
        .map_err(|err| {
            if repo::is_email_taken(&err) {
                anyhow::anyhow!("a user with this email already exists")
            } else {
                err.into()
            }
        })?;
    let link = match &hash {
        Some(hash) => {
            user = repo::set_password(&tx, user.id, hash, now)
                .await?
                .ok_or_else(|| anyhow::anyhow!("the new user vanished"))?;
            None
        }
        None => {
            let token = rules::new_token();
            let expires_at = now + settings.lifetimes.invite;
            repo::put_token(
                &tx,
                token_digest(hasher, INVITE, &token),
                user.id,
                INVITE,
                expires_at,
            )
            .await?;
            Some(Link {
                kind: INVITE,
                url: settings.link("accept-invite", &token),
                expires_at,
            })
        }
    };
    let mut entry = user_audit(
        &user,
        "user.create",
        json!({"email": user.email, "role": role.as_str(), "via": "cli"}),
    );
    entry.actor_kind = "system";
    entry.actor_user_id = None;
    tenant_repo::audit(&tx, entry).await?;
    tx.commit().await?;
    Ok((user, link))
}

/// Who may manage users: platform callers, and a tenant's owners signed in
/// to the Backoffice. A tenant key has no role — any developer can create
/// one — so it manages no users (else a developer's key could make its
/// holder an owner).
fn ensure_user_manager(actor: &Actor) -> Result<(), ApiError> {
    match (&actor.principal, actor.session()) {
        (Principal::Admin { .. }, _) => Ok(()),
        (Principal::Tenant { .. }, Some(s)) if s.role == Role::Owner => Ok(()),
        (Principal::Tenant { .. }, Some(_)) => Err(ApiError::permission_denied(
            "only the tenant's owners manage its users",
        )),
        (Principal::Tenant { .. }, None) => Err(ApiError::permission_denied(
            "users are managed by the tenant's owners in the Backoffice, or with an admin key; \
             a tenant API key cannot",
        )),
        (Principal::Anonymous, _) => Err(ApiError::unauthenticated("sign in first")),
    }
}

/// Platform users are managed with an admin key or by a super admin.
fn ensure_platform_manager(actor: &Actor) -> Result<(), ApiError> {
    match (&actor.principal, actor.session()) {
        (Principal::Admin { .. }, None) => Ok(()),
        (Principal::Admin { .. }, Some(s)) if s.role == Role::SuperAdmin => Ok(()),
        _ => Err(ApiError::permission_denied(
            "only a super admin manages platform users",
        )),
    }
}

fn tenant_of(actor: &Actor) -> Option<Uuid> {
    match actor.principal {
        Principal::Tenant { tenant_id, .. } => Some(tenant_id),
        _ => None,
    }
}

/// The audit entry of something a user did before it had a session
/// (signing in, accepting an invite).
fn user_audit(user: &UserRow, action: &'static str, details: serde_json::Value) -> Audit {
    Audit {
        actor_kind: if user.tenant_id.is_some() {
            "tenant"
        } else {
            "admin"
        },
        actor_key_id: None,
        actor_user_id: Some(user.id),
        tenant_id: user.tenant_id,
        action,
        target_id: Some(user.id),
        details,
        request_id: None,
    }
}
