//! The inbound gateway's tables (`migrations/0017_inbound_webhooks.sql`):
//! the event log and its dedup key, the tenant's callback endpoint in the
//! delivery engine, and what the gateway reads of a tenant's settings.
//!
//! Logging is one SQL function per batch on the pool (the gateway's group
//! commit spans tenants); history and settings run in the caller's
//! tenant-scoped transaction. Times come from the caller's clock.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, QueryResult};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    Db, statement,
    tenant_data::{self, Place},
    webhook_settings::{self, ProviderRow},
};

/// One verified webhook ready to log (also a line of the spool).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundRow {
    pub tenant_id: Uuid,
    /// `evt_…`: the log row and the forwarded payload's `id`.
    pub id: String,
    pub provider: String,
    pub provider_event_id: String,
    pub raw_type: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// The normalized payload exactly as it is forwarded.
    pub body: String,
}

/// Logs a batch; the ids of the rows that were new (the rest were
/// duplicates). One call per place the rows' tenants live in
/// (`storage::tenant_data`); an error after some places were logged is
/// harmless to repeat (a logged row is a duplicate the next time).
pub async fn log(db: &Db, rows: &[InboundRow]) -> Result<Vec<String>, sqlx::Error> {
    let mut work = db
        .placements()
        .partition(rows.iter().collect(), |r| r.tenant_id);
    let mut refreshes = 0;
    let mut logged = Vec::new();
    while let Some((place, part)) = work.pop() {
        let result = match &place {
            Some(Place::Database(_)) => match db.at(place.as_ref()).await {
                Ok(here) => log_in_database(db.pool(), here.pool(), &part).await,
                Err(err) => Err(tenant_data::unreachable(err)),
            },
            _ => log_in_place(db.pool(), &part).await,
        };
        match result {
            Ok(ids) => logged.extend(ids),
            Err(err) if tenant_data::is_misrouted(&err) && refreshes < 3 => {
                refreshes += 1;
                db.placements().refresh(db.pool()).await?;
                work.extend(db.placements().partition(part, |r| r.tenant_id));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(logged)
}

/// The logged columns of a batch, as the arrays the log functions take.
struct Columns<'a> {
    tenants: Vec<Uuid>,
    ids: Vec<&'a str>,
    providers: Vec<&'a str>,
    event_ids: Vec<&'a str>,
    raw_types: Vec<&'a str>,
    types: Vec<&'a str>,
    occurred: Vec<DateTime<Utc>>,
    received: Vec<DateTime<Utc>>,
}

impl<'a> Columns<'a> {
    fn of(rows: &[&'a InboundRow]) -> Self {
        Self {
            tenants: rows.iter().map(|r| r.tenant_id).collect(),
            ids: rows.iter().map(|r| r.id.as_str()).collect(),
            providers: rows.iter().map(|r| r.provider.as_str()).collect(),
            event_ids: rows.iter().map(|r| r.provider_event_id.as_str()).collect(),
            raw_types: rows.iter().map(|r| r.raw_type.as_str()).collect(),
            types: rows.iter().map(|r| r.event_type.as_str()).collect(),
            occurred: rows.iter().map(|r| r.occurred_at).collect(),
            received: rows.iter().map(|r| r.received_at).collect(),
        }
    }
}

/// The log of rows whose tenants live in one tenant database: the events
/// there (deduplicated), then their forwards here (`main`), in two
/// transactions (migration 0021). A crash between the two leaves an event
/// logged and not forwarded, still `received`: its provider, which got no
/// answer, sends it again, and that copy — a duplicate — forwards it under
/// the first copy's id (the forward is idempotent).
async fn log_in_database(
    main: &PgPool,
    tenant_db: &PgPool,
    rows: &[&InboundRow],
) -> Result<Vec<String>, sqlx::Error> {
    let c = Columns::of(rows);
    let logged: Vec<(i32, String, bool, bool)> = sqlx::query_as(
        "SELECT ord, logged_id, is_new, waiting \
         FROM tenlyr_log_inbound_events($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&c.tenants)
    .bind(&c.ids)
    .bind(&c.providers)
    .bind(&c.event_ids)
    .bind(&c.raw_types)
    .bind(&c.types)
    .bind(&c.occurred)
    .bind(&c.received)
    .fetch_all(tenant_db)
    .await?;
    let mut new = Vec::new();
    let (mut f_tenants, mut f_ids, mut f_types, mut f_received, mut f_bodies) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (ord, logged_id, is_new, waiting) in logged {
        let Some(row) = usize::try_from(ord - 1).ok().and_then(|i| rows.get(i)) else {
            continue;
        };
        if is_new {
            new.push(logged_id.clone());
        }
        if !waiting {
            continue;
        }
        let body = if logged_id == row.id {
            row.body.clone()
        } else {
            // A copy finishing an earlier copy's forward: the payload
            // carries the logged event's id.
            with_id(&row.body, &logged_id)
        };
        f_tenants.push(row.tenant_id);
        f_ids.push(logged_id);
        f_types.push(row.event_type.as_str());
        f_received.push(row.received_at);
        f_bodies.push(body);
    }
    if !f_ids.is_empty() {
        sqlx::query("SELECT tenlyr_forward_inbound($1, $2, $3, $4, $5)")
            .bind(&f_tenants)
            .bind(&f_ids)
            .bind(&f_types)
            .bind(&f_received)
            .bind(&f_bodies)
            .execute(main)
            .await?;
    }
    Ok(new)
}

/// A forwarded payload with its `id` replaced.
fn with_id(body: &str, id: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(mut value) => {
            value["id"] = serde_json::Value::from(id);
            value.to_string()
        }
        Err(_) => body.to_owned(),
    }
}

async fn log_in_place(pool: &PgPool, rows: &[&InboundRow]) -> Result<Vec<String>, sqlx::Error> {
    let c = Columns::of(rows);
    let bodies: Vec<&str> = rows.iter().map(|r| r.body.as_str()).collect();
    sqlx::query_scalar("SELECT tenlyr_log_inbound($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(&c.tenants)
        .bind(&c.ids)
        .bind(&c.providers)
        .bind(&c.event_ids)
        .bind(&c.raw_types)
        .bind(&c.types)
        .bind(&c.occurred)
        .bind(&c.received)
        .bind(&bodies)
        .fetch_all(pool)
        .await
}

/// What the gateway needs of a tenant: its status and provider settings.
#[derive(Debug, Clone)]
pub struct TenantInbound {
    pub tenant_id: Uuid,
    pub slug: String,
    pub status: String,
    pub providers: Vec<ProviderRow>,
}

/// Reads a tenant's inbound settings by id or by slug (platform scope).
pub async fn tenant_inbound(
    tx: &DatabaseTransaction,
    id: Option<Uuid>,
    slug: Option<&str>,
) -> Result<Option<TenantInbound>, DbErr> {
    let row = tx
        .query_one_raw(statement(
            "SELECT id, slug, status FROM tenants WHERE id = $1 OR slug = $2",
            [id.into(), slug.map(str::to_owned).into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let tenant_id: Uuid = row.try_get("", "id")?;
    Ok(Some(TenantInbound {
        tenant_id,
        slug: row.try_get("", "slug")?,
        status: row.try_get("", "status")?,
        providers: webhook_settings::providers(tx, tenant_id).await?,
    }))
}

/// The tenant's callback endpoint: id, URL, whether it is enabled, and
/// whether a forwarding secret is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackEndpoint {
    pub id: Uuid,
    pub url: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
}

pub async fn callback_endpoint(
    tx: &DatabaseTransaction,
    tenant: Uuid,
) -> Result<Option<CallbackEndpoint>, DbErr> {
    tx.query_one_raw(statement(
        "SELECT id, url, enabled, disabled_reason FROM webhook_endpoints WHERE tenant_id = $1",
        [tenant.into()],
    ))
    .await?
    .map(|r| {
        Ok(CallbackEndpoint {
            id: r.try_get("", "id")?,
            url: r.try_get("", "url")?,
            enabled: r.try_get("", "enabled")?,
            disabled_reason: r.try_get("", "disabled_reason")?,
        })
    })
    .transpose()
}

/// Creates the tenant's callback endpoint with a sealed secret.
pub async fn insert_callback_endpoint(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    url: &str,
    sealed: Vec<u8>,
    now: DateTime<Utc>,
) -> Result<Uuid, DbErr> {
    let id = Uuid::now_v7();
    tx.execute_raw(statement(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, description, secret, created_at, \
             updated_at) VALUES ($1, $2, $3, 'callback URL', $4, $5, $5)",
        [
            id.into(),
            tenant.into(),
            url.to_owned().into(),
            sealed.into(),
            now.into(),
        ],
    ))
    .await?;
    Ok(id)
}

/// Points the callback endpoint at `url`, or disables it (`None`): its
/// pending deliveries wait, nothing is lost, until a URL is set again.
/// Setting a URL re-enables it and closes its breaker.
pub async fn set_callback_endpoint(
    tx: &DatabaseTransaction,
    id: Uuid,
    url: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE webhook_endpoints SET url = coalesce($2, url), enabled = $2 IS NOT NULL, \
             disabled_reason = CASE WHEN $2 IS NULL THEN 'no_callback_url' END, \
             breaker_state = CASE WHEN $2 IS NULL THEN breaker_state ELSE 'closed' END, \
             breaker_until = CASE WHEN $2 IS NULL THEN breaker_until END, \
             breaker_since = $3, updated_at = $3 WHERE id = $1",
        [id.into(), url.map(str::to_owned).into(), now.into()],
    ))
    .await?;
    if url.is_some() {
        tx.execute_raw(statement("SELECT pg_notify('tenlyr_webhooks', '')", []))
            .await?;
    }
    Ok(())
}

/// One logged event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub id: String,
    pub tenant_id: Uuid,
    pub provider: String,
    pub provider_event_id: String,
    pub raw_type: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
}

const EVENT_COLUMNS: &str = "id, tenant_id, provider, provider_event_id, raw_type, type, status, \
     attempts, last_error, occurred_at, received_at, processed_at";

fn event(row: &QueryResult) -> Result<EventRow, DbErr> {
    Ok(EventRow {
        id: row.try_get("", "id")?,
        tenant_id: row.try_get("", "tenant_id")?,
        provider: row.try_get("", "provider")?,
        provider_event_id: row.try_get("", "provider_event_id")?,
        raw_type: row.try_get("", "raw_type")?,
        event_type: row.try_get("", "type")?,
        status: row.try_get("", "status")?,
        attempts: row.try_get("", "attempts")?,
        last_error: row.try_get("", "last_error")?,
        occurred_at: row.try_get("", "occurred_at")?,
        received_at: row.try_get("", "received_at")?,
        processed_at: row.try_get("", "processed_at")?,
    })
}

/// History filters; `None` takes every value.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub status: Option<String>,
    pub provider: Option<String>,
    pub event_type: Option<String>,
    pub received_from: Option<DateTime<Utc>>,
    pub received_to: Option<DateTime<Utc>>,
}

/// Up to `limit` events of the tenant, newest first, before the cursor id
/// (ids are ULIDs: they sort by receipt).
pub async fn events_page(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    filter: &EventFilter,
    before: Option<&str>,
    limit: u64,
) -> Result<Vec<EventRow>, DbErr> {
    tx.query_all_raw(statement(
        format!(
            "SELECT {EVENT_COLUMNS} FROM webhook_events WHERE tenant_id = $1 \
               AND ($2::text IS NULL OR id < $2) AND ($3::text IS NULL OR status = $3) \
               AND ($4::text IS NULL OR provider = $4) AND ($5::text IS NULL OR type = $5) \
               AND ($6::timestamptz IS NULL OR received_at >= $6) \
               AND ($7::timestamptz IS NULL OR received_at < $7) \
             ORDER BY id DESC LIMIT $8"
        ),
        [
            tenant.into(),
            before.map(str::to_owned).into(),
            filter.status.clone().into(),
            filter.provider.clone().into(),
            filter.event_type.clone().into(),
            filter.received_from.into(),
            filter.received_to.into(),
            (limit as i64).into(),
        ],
    ))
    .await?
    .iter()
    .map(event)
    .collect()
}

/// One event of the tenant with the normalized payload it is forwarded as
/// (`None` once retention removed it).
pub async fn find_event(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    id: &str,
) -> Result<Option<(EventRow, Option<String>)>, DbErr> {
    let Some(row) = tx
        .query_one_raw(statement(
            format!(
                "SELECT {EVENT_COLUMNS}, (SELECT body FROM platform_events p WHERE p.id = w.id) \
                     AS body FROM webhook_events w WHERE tenant_id = $1 AND id = $2"
            ),
            [tenant.into(), id.to_owned().into()],
        ))
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((event(&row)?, row.try_get("", "body")?)))
}

/// Every forwarding attempt of an event, oldest first.
pub async fn event_attempts(
    tx: &DatabaseTransaction,
    id: &str,
) -> Result<Vec<super::webhooks::AttemptRow>, DbErr> {
    tx.query_all_raw(statement(
        "SELECT a.attempt, a.attempted_at, a.ok, a.response_status, a.latency_ms, a.error, \
             a.response_excerpt FROM webhook_deliveries d \
         JOIN webhook_attempts a ON a.delivery_id = d.id \
         WHERE d.event_id = $1 AND d.inbound ORDER BY a.attempted_at, a.attempt",
        [id.to_owned().into()],
    ))
    .await?
    .iter()
    .map(super::webhooks::attempt)
    .collect()
}

/// What a retry came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    Queued,
    /// Its delivery is still pending (in flight or waiting for a retry).
    AlreadyPending,
}

/// Forwards an event again to the callback endpoint `endpoint`: its
/// finished delivery, if it has one, starts a fresh schedule (its attempts
/// so far stay counted and logged); else a delivery is created. The event
/// is `received` again until the delivery ends.
pub async fn retry(
    tx: &DatabaseTransaction,
    event_id: &str,
    event_type: &str,
    endpoint: Uuid,
    now: DateTime<Utc>,
) -> Result<Retried, DbErr> {
    let existing = tx
        .query_one_raw(statement(
            "SELECT id, status FROM webhook_deliveries WHERE event_id = $1 AND inbound \
             ORDER BY id DESC LIMIT 1 FOR UPDATE",
            [event_id.to_owned().into()],
        ))
        .await?;
    match existing {
        Some(row) => {
            let (id, status): (i64, String) = (row.try_get("", "id")?, row.try_get("", "status")?);
            if status == "pending" {
                return Ok(Retried::AlreadyPending);
            }
            tx.execute_raw(statement(
                "UPDATE webhook_deliveries SET status = 'pending', endpoint_id = $2, \
                     retry_base = attempts, schedule_start = $3, next_attempt_at = $3, \
                     finished_at = NULL, leased_by = NULL WHERE id = $1",
                [id.into(), endpoint.into(), now.into()],
            ))
            .await?;
        }
        None => {
            tx.execute_raw(statement(
                "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, \
                     next_attempt_at, schedule_start, created_at, inbound) \
                 VALUES ($1, $2, $3, $4, $4, $4, true)",
                [
                    endpoint.into(),
                    event_id.to_owned().into(),
                    event_type.to_owned().into(),
                    now.into(),
                ],
            ))
            .await?;
        }
    }
    tx.execute_raw(statement("SELECT pg_notify('tenlyr_webhooks', '')", []))
        .await?;
    Ok(Retried::Queued)
}

/// An event queued for its forward again: `received` (in the place its
/// tenant's data lives; [`retry`] queues the forward in the main database).
pub async fn mark_received(tx: &DatabaseTransaction, event_id: &str) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE webhook_events SET status = 'received', processed_at = NULL WHERE id = $1",
        [event_id.to_owned().into()],
    ))
    .await?;
    Ok(())
}

/// The normalized payload an event is forwarded as (in the main database,
/// whichever place holds the event).
pub async fn event_body(tx: &DatabaseTransaction, id: &str) -> Result<Option<String>, DbErr> {
    tx.query_one_raw(statement(
        "SELECT body FROM platform_events WHERE id = $1",
        [id.to_owned().into()],
    ))
    .await?
    .map(|row| row.try_get("", "body"))
    .transpose()
}

/// Deletes up to `chunk` events received before `before` (their dedup keys
/// expire with them; their payloads and deliveries go with the platform
/// events' retention); how many.
/// `schema`: one of `tenant_data::data_schemas`.
pub async fn purge_events(
    pool: &PgPool,
    schema: &str,
    before: DateTime<Utc>,
    chunk: i64,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "SELECT set_config('app.scope', 'platform', true), \
                set_config('search_path', tenlyr_place_path($1), true)",
    )
    .bind(schema)
    .execute(&mut *tx)
    .await?;
    let deleted = sqlx::query(
        "DELETE FROM webhook_events WHERE id = ANY(ARRAY( \
             SELECT id FROM webhook_events WHERE received_at < $1 ORDER BY received_at LIMIT $2))",
    )
    .bind(before)
    .bind(chunk)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(deleted)
}

/// Deletes up to `chunk` inbound payloads of a deleted tenant (its log rows
/// went with it; the payloads are platform events); how many.
pub async fn purge_tenant_payloads(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    chunk: i64,
) -> Result<u64, DbErr> {
    Ok(tx
        .execute_raw(statement(
            "DELETE FROM platform_events WHERE id = ANY(ARRAY( \
                 SELECT id FROM platform_events WHERE tenant_id = $1 AND inbound LIMIT $2))",
            [tenant.into(), chunk.into()],
        ))
        .await?
        .rows_affected())
}
