//! The audit log API: entries newest first with filters and a cursor. An
//! admin key sees every entry (optionally one tenant's); a tenant key sees
//! its own tenant's (its transaction is tenant-scoped, so RLS enforces it)
//! and may not name another tenant.

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use super::Actor;
use crate::{
    error::ApiError,
    storage::{
        Db,
        audit::{self as repo, AuditFilter},
        entities::audit_log,
    },
};

pub const DEFAULT_PAGE: u64 = 50;
pub const MAX_PAGE: u64 = 200;
const ACTOR_KINDS: [&str; 3] = ["admin", "tenant", "system"];

/// What a caller asks for.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub tenant_id: Option<Uuid>,
    pub actor_kind: Option<String>,
    pub actor_key_id: Option<Uuid>,
    pub actor_user_id: Option<Uuid>,
    /// Exact, or `family.*`.
    pub action: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AuditPage {
    pub data: Vec<audit_log::Model>,
    pub next_cursor: Option<String>,
}

fn cursor_of(entry: &audit_log::Model) -> String {
    let raw = format!(
        "{}|{}",
        entry
            .occurred_at
            .to_rfc3339_opts(SecondsFormat::Micros, true),
        entry.id
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn parse_cursor(raw: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (at, id) = text.split_once('|')?;
    Some((
        DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
        id.parse().ok()?,
    ))
}

#[derive(Clone, Debug)]
pub struct AuditLog {
    db: Db,
}

impl AuditLog {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub async fn list(&self, actor: &Actor, query: AuditQuery) -> Result<AuditPage, ApiError> {
        let tenant = actor.named_tenant(query.tenant_id)?;
        let limit = query.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::bad_field(
                "limit",
                format!("must be 1 to {MAX_PAGE}"),
            ));
        }
        if let Some(kind) = &query.actor_kind
            && !ACTOR_KINDS.contains(&kind.as_str())
        {
            return Err(ApiError::bad_field(
                "actorKind",
                "must be admin, tenant or system",
            ));
        }
        let (action, action_prefix) = match query.action.as_deref().map(str::trim) {
            None | Some("") => (None, None),
            Some(a) if a.chars().count() > 100 || a.chars().any(char::is_control) => {
                return Err(ApiError::bad_field(
                    "action",
                    "must be at most 100 characters, without control characters",
                ));
            }
            Some(a) => match a.strip_suffix('*') {
                Some(prefix) if prefix.ends_with('.') => (None, Some(prefix.to_owned())),
                Some(_) => {
                    return Err(ApiError::bad_field(
                        "action",
                        "must be an action or a family such as `webhook_settings.*`",
                    ));
                }
                None => (Some(a.to_owned()), None),
            },
        };
        let after = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => Some(parse_cursor(raw).ok_or_else(|| {
                ApiError::bad_field("cursor", "is not a cursor this API returned")
            })?),
        };
        let filter = AuditFilter {
            tenant_id: tenant,
            actor_kind: query.actor_kind,
            actor_key_id: query.actor_key_id,
            actor_user_id: query.actor_user_id,
            action,
            action_prefix,
            from: query.from,
            to: query.to,
        };
        let tx = self.db.begin(actor.scope()?).await?;
        let mut rows = repo::page(&tx, &filter, after, limit + 1).await?;
        tx.commit().await?;
        let next_cursor = (rows.len() as u64 > limit).then(|| {
            rows.truncate(limit as usize);
            rows.last().map(cursor_of).unwrap_or_default()
        });
        Ok(AuditPage {
            data: rows,
            next_cursor,
        })
    }
}
