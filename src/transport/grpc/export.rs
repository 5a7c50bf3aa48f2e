//! The tenant export (`ExportTenant`), streamed: the tenant's own sections
//! first, then its API keys a page at a time, so a tenant with many keys
//! never sits whole in memory. JSON or `section,field,value` CSV whose
//! cells cannot start a spreadsheet formula.

use bytes::Bytes;
use futures_util::{Stream, stream};
use serde_json::{Value, json};
use tonic::Status;
use uuid::Uuid;

use crate::{
    app::AppState,
    proto::{google::api::HttpBody, v1},
    service::{Actor, billing::View, metering::PeriodUsage},
    storage::{
        entities::{api_key, tenant},
        health::HealthRow,
    },
};

/// Keys read per page.
const PAGE: u64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Csv => "text/csv",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Csv => "csv",
        }
    }
}

/// Where a stream is: the head is sent, keys after `after` are next.
struct Cursor {
    state: AppState,
    actor: Actor,
    tenant_id: Uuid,
    format: Format,
    head: Option<Vec<u8>>,
    after: Option<Uuid>,
    first_key: bool,
    done: bool,
}

/// The export of `tenant` as a stream of chunks.
pub fn stream(
    state: AppState,
    actor: Actor,
    tenant: &tenant::Model,
    usage: &PeriodUsage,
    health: Option<&HealthRow>,
    billing: Option<&View>,
    format: Format,
) -> impl Stream<Item = Result<v1::ExportTenantResponse, Status>> + Send + 'static {
    let cursor = Cursor {
        state,
        actor,
        tenant_id: tenant.id,
        format,
        head: Some(head(tenant, usage, health, billing, format)),
        after: None,
        first_key: true,
        done: false,
    };
    stream::unfold(cursor, |mut c| async move {
        if let Some(head) = c.head.take() {
            return Some((Ok(chunk(c.format, head)), c));
        }
        if c.done {
            return None;
        }
        let page = match c
            .state
            .tenants
            .export_keys(&c.actor, c.tenant_id, c.after, PAGE)
            .await
        {
            Ok(page) => page,
            Err(err) => {
                c.done = true;
                return Some((Err(Status::from(err)), c));
            }
        };
        let mut out = Vec::new();
        for key in &page {
            match c.format {
                Format::Json => {
                    if !c.first_key {
                        out.push(b',');
                    }
                    out.extend_from_slice(key_json(key).to_string().as_bytes());
                }
                Format::Csv => out.extend_from_slice(key_csv(key).as_bytes()),
            }
            c.first_key = false;
        }
        c.after = page.last().map(|k| k.id);
        if (page.len() as u64) < PAGE {
            c.done = true;
            if c.format == Format::Json {
                out.extend_from_slice(b"]}");
            }
        }
        Some((Ok(chunk(c.format, out)), c))
    })
}

fn chunk(format: Format, data: Vec<u8>) -> v1::ExportTenantResponse {
    v1::ExportTenantResponse {
        chunk: Some(HttpBody {
            content_type: format.content_type().to_owned(),
            data: Bytes::from(data).into(),
            extensions: vec![],
        }),
    }
}

/// The sections other than the keys.
fn sections(
    t: &tenant::Model,
    usage: &PeriodUsage,
    health: Option<&HealthRow>,
    billing: Option<&View>,
) -> Value {
    let limits = usage.limits;
    json!({
        "tenant": {
            "id": t.id, "name": t.name, "slug": t.slug, "ownerEmail": t.owner_email, "plan": t.plan,
            "status": t.status, "region": t.region, "timeZone": t.time_zone, "isolationLevel": t.isolation_level,
            "apiKeyPrefix": t.api_key_prefix, "createdAt": t.created_at, "lastActiveAt": t.last_active_at,
        },
        "usage": {"apiCalls": usage.api_calls, "storageGb": usage.storage_gb, "seats": usage.seats,
                  "compute": usage.compute, "periodStart": usage.period_start, "periodEnd": usage.period_end,
                  "apiCallLimit": limits.api_calls, "storageGbLimit": limits.storage_gb, "seatsLimit": limits.seats},
        "health": {"healthStatus": health.map_or("unknown", |h| h.status.as_str()),
                   "errorRate": health.map_or(0.0, |h| h.error_rate),
                   "requestRate": health.map_or(0.0, |h| h.request_rate),
                   "slaRisk": health.is_some_and(|h| h.sla_risk), "rateLimit": t.rate_limit,
                   "checkedAt": health.and_then(|h| h.checked_at)},
        "billing": {"mrrCents": billing.map_or(0, |b| b.mrr_cents),
                    "usageCostCents": billing.map_or(0, |b| b.usage_cost_cents),
                    "currency": crate::domain::billing::CURRENCY,
                    "status": billing.map_or("not_synced", |b| b.row.status.as_str()),
                    "stripeCustomerId": billing.and_then(|b| b.row.stripe_customer_id.clone()),
                    "stripeSubscriptionId": billing.and_then(|b| b.row.stripe_subscription_id.clone()),
                    "syncedAt": billing.and_then(|b| b.row.synced_at)},
        "exportedAt": chrono::Utc::now(),
    })
}

/// The first chunk: JSON up to the opening of `apiKeys`, or the CSV
/// header and section rows.
fn head(
    t: &tenant::Model,
    usage: &PeriodUsage,
    health: Option<&HealthRow>,
    billing: Option<&View>,
    format: Format,
) -> Vec<u8> {
    let sections = sections(t, usage, health, billing);
    match format {
        Format::Json => {
            let mut text = sections.to_string();
            text.pop(); // the closing brace; the keys follow
            text.push_str(",\"apiKeys\":[");
            text.into_bytes()
        }
        Format::Csv => {
            let mut out = String::from("section,field,value\n");
            for section in ["tenant", "usage", "health", "billing"] {
                for (field, value) in sections[section].as_object().into_iter().flatten() {
                    let text = match value {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    out.push_str(&csv_row(&[section, field, &text]));
                }
            }
            out.into_bytes()
        }
    }
}

fn key_json(k: &api_key::Model) -> Value {
    json!({
        "id": k.id, "label": k.label, "prefix": k.prefix, "primary": k.is_primary,
        "createdAt": k.created_at, "lastUsedAt": k.last_used_at, "revokedAt": k.revoked_at,
    })
}

fn key_csv(k: &api_key::Model) -> String {
    let state = if k.revoked_at.is_some() {
        "revoked"
    } else {
        "live"
    };
    let summary = format!("{} {} {state}", k.label, k.prefix);
    csv_row(&["apiKey", &k.id.to_string(), &summary])
}

/// One CSV line: cells quoted where needed, and a cell that a spreadsheet
/// would read as a formula (starting with `=`, `+`, `-`, `@`, tab or
/// carriage return; OWASP's CSV injection advice) prefixed with `'`.
fn csv_row(cells: &[&str]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let neutral = if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            format!("'{cell}")
        } else {
            (*cell).to_owned()
        };
        if neutral.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&neutral.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(&neutral);
        }
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_that_would_be_formulas_are_neutralised() {
        assert_eq!(
            csv_row(&["tenant", "name", "=HYPERLINK(\"x\")"]),
            "tenant,name,\"'=HYPERLINK(\"\"x\"\")\"\n"
        );
        assert_eq!(csv_row(&["a", "+1", "-2"]), "a,'+1,'-2\n");
        assert_eq!(csv_row(&["@SUM(A1)", "\tx", "ok"]), "'@SUM(A1),'\tx,ok\n");
        assert_eq!(csv_row(&["a,b", "plain", ""]), "\"a,b\",plain,\n");
    }
}
