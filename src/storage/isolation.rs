//! Isolation migrations (`isolation_migrations`) and the statements of a
//! move between places (DESIGN.md §10, migration 0018). Every statement
//! runs in the caller's platform-scope transaction; schemas are named by
//! `tenant_data` (`public` or `t_<id>`), never by a client.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbErr, QueryResult};
use uuid::Uuid;

use super::statement;

/// A migration as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub from_level: String,
    pub to_level: String,
    pub status: String,
    pub phase: String,
    pub error: Option<String>,
    pub rows_total: i64,
    pub rows_copied: i64,
    pub copy_started_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, tenant_id, from_level, to_level, status, phase, error, rows_total, \
     rows_copied, copy_started_at, created_at, started_at, completed_at";

fn row(r: &QueryResult) -> Result<MigrationRow, DbErr> {
    Ok(MigrationRow {
        id: r.try_get("", "id")?,
        tenant_id: r.try_get("", "tenant_id")?,
        from_level: r.try_get("", "from_level")?,
        to_level: r.try_get("", "to_level")?,
        status: r.try_get("", "status")?,
        phase: r.try_get("", "phase")?,
        error: r.try_get("", "error")?,
        rows_total: r.try_get("", "rows_total")?,
        rows_copied: r.try_get("", "rows_copied")?,
        copy_started_at: r.try_get("", "copy_started_at")?,
        created_at: r.try_get("", "created_at")?,
        started_at: r.try_get("", "started_at")?,
        completed_at: r.try_get("", "completed_at")?,
    })
}

/// Records a new `pending` migration; false when the tenant already has
/// an active one (the partial unique index decides, also between racing
/// requests).
pub async fn insert(
    tx: &DatabaseTransaction,
    id: Uuid,
    tenant: Uuid,
    from: &str,
    to: &str,
    at: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let inserted = tx
        .execute_raw(statement(
            "INSERT INTO isolation_migrations (id, tenant_id, from_level, to_level, created_at) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant_id) WHERE status IN ('pending', 'in_progress') DO NOTHING",
            [id.into(), tenant.into(), from.into(), to.into(), at.into()],
        ))
        .await?;
    Ok(inserted.rows_affected() == 1)
}

pub async fn find(tx: &impl ConnectionTrait, id: Uuid) -> Result<Option<MigrationRow>, DbErr> {
    tx.query_one_raw(statement(
        format!("SELECT {COLUMNS} FROM isolation_migrations WHERE id = $1"),
        [id.into()],
    ))
    .await?
    .as_ref()
    .map(row)
    .transpose()
}

/// Up to `limit` migrations, newest first (of one tenant, or all the scope
/// sees).
pub async fn list(
    tx: &DatabaseTransaction,
    tenant: Option<Uuid>,
    limit: i64,
) -> Result<Vec<MigrationRow>, DbErr> {
    tx.query_all_raw(statement(
        format!(
            "SELECT {COLUMNS} FROM isolation_migrations \
             WHERE $1::uuid IS NULL OR tenant_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ),
        [tenant.into(), limit.into()],
    ))
    .await?
    .iter()
    .map(row)
    .collect()
}

/// `pending` → `in_progress`; false if it was not pending.
pub async fn start(tx: &DatabaseTransaction, id: Uuid, at: DateTime<Utc>) -> Result<bool, DbErr> {
    Ok(tx
        .execute_raw(statement(
            "UPDATE isolation_migrations SET status = 'in_progress', started_at = $2 \
             WHERE id = $1 AND status = 'pending'",
            [id.into(), at.into()],
        ))
        .await?
        .rows_affected()
        == 1)
}

/// Sets the phase and progress of a running migration. `copy_started_at`
/// is kept once set; database time.
pub async fn progress(
    tx: &DatabaseTransaction,
    id: Uuid,
    phase: &str,
    rows_copied: Option<i64>,
    rows_total: Option<i64>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE isolation_migrations SET phase = $2, \
             rows_copied = coalesce($3, rows_copied), rows_total = coalesce($4, rows_total), \
             copy_started_at = CASE WHEN $2 = 'copying' THEN coalesce(copy_started_at, now()) \
                                    ELSE copy_started_at END \
         WHERE id = $1",
        [
            id.into(),
            phase.into(),
            rows_copied.into(),
            rows_total.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Ends a migration (`completed` or `failed`, with `error`).
pub async fn finish(
    tx: &DatabaseTransaction,
    id: Uuid,
    status: &str,
    phase: &str,
    error: Option<&str>,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE isolation_migrations SET status = $2, phase = $3, error = $4, completed_at = $5 \
         WHERE id = $1",
        [
            id.into(),
            status.into(),
            phase.into(),
            error.map(str::to_owned).into(),
            at.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Sets only the phase (the cleanup after a completed move).
pub async fn set_phase(tx: &DatabaseTransaction, id: Uuid, phase: &str) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "UPDATE isolation_migrations SET phase = $2 WHERE id = $1",
        [id.into(), phase.into()],
    ))
    .await?;
    Ok(())
}

// ---------------------------------------------------------------- moves

/// The tenant-data tables besides `usage_events`, which a move copies
/// whole (they are small next to the events, and mutable).
pub const SMALL_TABLES: [&str; 3] = ["usage_rollups", "records", "webhook_events"];

/// Every tenant-data table.
pub const TABLES: [&str; 4] = ["usage_events", "usage_rollups", "records", "webhook_events"];

fn table(schema: &str, name: &str) -> String {
    format!("\"{schema}\".\"{name}\"")
}

/// Creates (or completes) the tenant's schema; its name.
pub async fn create_schema(tx: &DatabaseTransaction, tenant: Uuid) -> Result<String, DbErr> {
    let r = tx
        .query_one_raw(statement(
            "SELECT tenlyr_create_tenant_schema($1) AS s",
            [tenant.into()],
        ))
        .await?
        .ok_or(DbErr::RecordNotFound("schema".into()))?;
    r.try_get("", "s")
}

/// Drops the tenant's schema (and its placement, if any).
pub async fn drop_schema(tx: &DatabaseTransaction, tenant: Uuid) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "SELECT tenlyr_drop_tenant_schema($1)",
        [tenant.into()],
    ))
    .await?;
    Ok(())
}

/// Whether the tenant has a schema.
pub async fn schema_exists(tx: &DatabaseTransaction, tenant: Uuid) -> Result<bool, DbErr> {
    let r = tx
        .query_one_raw(statement(
            "SELECT to_regnamespace(tenlyr_tenant_schema($1)) IS NOT NULL AS e",
            [tenant.into()],
        ))
        .await?
        .ok_or(DbErr::RecordNotFound("schema".into()))?;
    r.try_get("", "e")
}

/// The tenant's rows in every tenant-data table of `schema`.
pub async fn count_rows(
    tx: &DatabaseTransaction,
    schema: &str,
    tenant: Uuid,
) -> Result<i64, DbErr> {
    let sql = TABLES
        .iter()
        .map(|t| {
            format!(
                "(SELECT count(*) FROM {} WHERE tenant_id = $1)",
                table(schema, t)
            )
        })
        .collect::<Vec<_>>()
        .join(" + ");
    let r = tx
        .query_one_raw(statement(format!("SELECT {sql} AS n"), [tenant.into()]))
        .await?
        .ok_or(DbErr::RecordNotFound("count".into()))?;
    r.try_get("", "n")
}

/// Where the bulk copy of events (those before `before`) stands in `to`:
/// the last `(occurred_at, id)` copied (a restarted move goes on from
/// there).
pub async fn last_copied(
    tx: &DatabaseTransaction,
    to: &str,
    tenant: Uuid,
    before: DateTime<Utc>,
) -> Result<Option<(DateTime<Utc>, Uuid)>, DbErr> {
    let r = tx
        .query_one_raw(statement(
            format!(
                "SELECT occurred_at, id FROM {} WHERE tenant_id = $1 AND occurred_at < $2 \
                 ORDER BY occurred_at DESC, id DESC LIMIT 1",
                table(to, "usage_events")
            ),
            [tenant.into(), before.into()],
        ))
        .await?;
    r.map(|r| Ok((r.try_get("", "occurred_at")?, r.try_get("", "id")?)))
        .transpose()
}

/// Copies the next `chunk` events after `after` (in `(occurred_at, id)`
/// order) that occurred before `before` from `from` to `to`; how many, and
/// the last one copied.
pub async fn copy_events_chunk(
    tx: &DatabaseTransaction,
    from: &str,
    to: &str,
    tenant: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    before: DateTime<Utc>,
    chunk: i64,
) -> Result<(i64, Option<(DateTime<Utc>, Uuid)>), DbErr> {
    let (at, id) = after.unzip();
    let r = tx
        .query_one_raw(statement(
            format!(
                "WITH c AS ( \
                     SELECT * FROM {src} WHERE tenant_id = $1 \
                       AND ($2::timestamptz IS NULL OR (occurred_at, id) > ($2, $3)) \
                       AND occurred_at < $5 \
                     ORDER BY occurred_at, id LIMIT $4), \
                 ins AS (INSERT INTO {dst} SELECT * FROM c) \
                 SELECT (SELECT count(*) FROM c) AS n, \
                        (SELECT occurred_at FROM c ORDER BY occurred_at DESC, id DESC LIMIT 1) AS at, \
                        (SELECT id FROM c ORDER BY occurred_at DESC, id DESC LIMIT 1) AS id",
                src = table(from, "usage_events"),
                dst = table(to, "usage_events"),
            ),
            [
                tenant.into(),
                at.into(),
                id.into(),
                chunk.into(),
                before.into(),
            ],
        ))
        .await?
        .ok_or(DbErr::RecordNotFound("chunk".into()))?;
    let n: i64 = r.try_get("", "n")?;
    let last = match (
        r.try_get::<Option<DateTime<Utc>>>("", "at")?,
        r.try_get::<Option<Uuid>>("", "id")?,
    ) {
        (Some(at), Some(id)) => Some((at, id)),
        _ => None,
    };
    Ok((n, last))
}

/// Copies the events of `from` that `to` lacks, among those that occurred
/// in `[since, until)` (either end open with `None`); how many.
pub async fn copy_missing_events(
    tx: &DatabaseTransaction,
    from: &str,
    to: &str,
    tenant: Uuid,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<u64, DbErr> {
    Ok(tx
        .execute_raw(statement(
            format!(
                "INSERT INTO {dst} SELECT s.* FROM {src} s \
                 WHERE s.tenant_id = $1 AND ($2::timestamptz IS NULL OR s.occurred_at >= $2) \
                   AND ($3::timestamptz IS NULL OR s.occurred_at < $3) \
                   AND NOT EXISTS (SELECT 1 FROM {dst} d WHERE d.tenant_id = $1 \
                                   AND d.occurred_at = s.occurred_at AND d.id = s.id)",
                src = table(from, "usage_events"),
                dst = table(to, "usage_events"),
            ),
            [tenant.into(), since.into(), until.into()],
        ))
        .await?
        .rows_affected())
}

/// The tenant's hourly event counts in `schema` (by hour, then metric):
/// every write updates its hour's count in the same transaction, so two
/// readings that differ name the hours written to in between.
pub async fn hour_marks(
    tx: &DatabaseTransaction,
    schema: &str,
    tenant: Uuid,
) -> Result<Vec<(DateTime<Utc>, String, i64)>, DbErr> {
    tx.query_all_raw(statement(
        format!(
            "SELECT bucket_start, metric, events FROM {} \
             WHERE tenant_id = $1 AND granularity = 'hour' ORDER BY bucket_start, metric",
            table(schema, "usage_rollups")
        ),
        [tenant.into()],
    ))
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get("", "bucket_start")?,
            r.try_get("", "metric")?,
            r.try_get("", "events")?,
        ))
    })
    .collect()
}

/// A small tenant-data table's key and other columns, for syncing by
/// difference. A column missing here would not be synced, and the move's
/// checksum (of whole rows) would refuse the flip.
fn small_table_columns(name: &str) -> Option<(&'static [&'static str], &'static [&'static str])> {
    Some(match name {
        "usage_rollups" => (
            &["tenant_id", "granularity", "bucket_start", "metric"],
            &["total", "events"],
        ),
        "records" => (
            &["tenant_id", "key"],
            &[
                "state",
                "lock_token",
                "fingerprint",
                "locked_until",
                "data",
                "created_at",
                "updated_at",
                "expires_at",
            ],
        ),
        "webhook_events" => (
            &["id"],
            &[
                "tenant_id",
                "provider",
                "provider_event_id",
                "raw_type",
                "type",
                "status",
                "attempts",
                "last_error",
                "occurred_at",
                "received_at",
                "processed_at",
            ],
        ),
        _ => return None,
    })
}

/// Makes the tenant's rows of a small table in `to` those of `from`, by
/// difference: rows gone from the source are deleted, new or changed ones
/// upserted (after a first pass, most rows are neither, and nothing is
/// written for them); how many rows were written.
pub async fn sync_small_table(
    tx: &DatabaseTransaction,
    name: &str,
    from: &str,
    to: &str,
    tenant: Uuid,
) -> Result<u64, DbErr> {
    let (keys, values) = small_table_columns(name)
        .ok_or_else(|| DbErr::Custom(format!("{name} is not a small tenant-data table")))?;
    let (src, dst) = (table(from, name), table(to, name));
    let list = |alias: &str, columns: &[&str]| {
        columns
            .iter()
            .map(|c| format!("{alias}.\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let bare = |columns: &[&str]| {
        columns
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let deleted = tx
        .execute_raw(statement(
            format!(
                "DELETE FROM {dst} d WHERE d.tenant_id = $1 AND NOT EXISTS ( \
                     SELECT 1 FROM {src} s WHERE s.tenant_id = $1 AND ({}) = ({}))",
                list("s", keys),
                list("d", keys),
            ),
            [tenant.into()],
        ))
        .await?
        .rows_affected();
    let written = tx
        .execute_raw(statement(
            format!(
                "INSERT INTO {dst} AS d SELECT * FROM {src} WHERE tenant_id = $1 \
                 ON CONFLICT ({}) DO UPDATE SET ({}) = ROW({}) \
                 WHERE ({}) IS DISTINCT FROM ({})",
                bare(keys),
                bare(values),
                list("EXCLUDED", values),
                list("d", values),
                list("EXCLUDED", values),
            ),
            [tenant.into()],
        ))
        .await?
        .rows_affected();
    Ok(deleted + written)
}

/// Row count and checksum (sum of row hashes, order-free) of the
/// tenant's rows of a table in `schema`; events only from `since` when
/// given.
pub async fn checksum(
    tx: &DatabaseTransaction,
    schema: &str,
    name: &str,
    tenant: Uuid,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<(i64, String), DbErr> {
    let window = if name == "usage_events" {
        "AND ($2::timestamptz IS NULL OR x.occurred_at >= $2) \
         AND ($3::timestamptz IS NULL OR x.occurred_at < $3)"
    } else {
        "AND $2::timestamptz IS NULL AND $3::timestamptz IS NULL"
    };
    let r = tx
        .query_one_raw(statement(
            format!(
                "SELECT count(*) AS n, coalesce(sum(hashtextextended(x::text, 0)), 0)::text AS h \
                 FROM {} x WHERE x.tenant_id = $1 {window}",
                table(schema, name)
            ),
            [tenant.into(), since.into(), until.into()],
        ))
        .await?
        .ok_or(DbErr::RecordNotFound("checksum".into()))?;
    Ok((r.try_get("", "n")?, r.try_get("", "h")?))
}

/// Holds the usage-partition lock in shared mode until `tx` ends:
/// partition upkeep (exclusive) waits for the mover's statements.
pub async fn hold_partitions(tx: &DatabaseTransaction) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "SELECT pg_advisory_xact_lock_shared(hashtext('tenlyr_usage_partitions'))",
        [],
    ))
    .await?;
    Ok(())
}

/// Locks the migration's row; whether it is still `in_progress`.
pub async fn lock_running(tx: &DatabaseTransaction, id: Uuid) -> Result<bool, DbErr> {
    Ok(tx
        .query_one_raw(statement(
            "SELECT 1 AS one FROM isolation_migrations WHERE id = $1 AND status = 'in_progress' \
             FOR UPDATE",
            [id.into()],
        ))
        .await?
        .is_some())
}

/// Rebuilds the cross-tenant views from the placements.
pub async fn refresh_views(tx: &DatabaseTransaction) -> Result<(), DbErr> {
    tx.execute_raw(statement("SELECT tenlyr_refresh_placement_views()", []))
        .await?;
    Ok(())
}

/// The barrier: the tenant's placement lock in exclusive mode, held until
/// `tx` ends. Every writer of the tenant enters with the shared mode, so
/// this waits for those in flight and makes new ones wait.
pub async fn lock_placement(tx: &DatabaseTransaction, tenant: Uuid) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "SELECT pg_advisory_xact_lock(tenlyr_place_key($1))",
        [tenant.into()],
    ))
    .await?;
    Ok(())
}

/// Flips the tenant to its schema: placement (epoch bumped), the tenant's
/// `isolation_level` (the views follow: [`refresh_views`]).
pub async fn flip_to_schema(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    schema: &str,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "INSERT INTO tenant_placements (tenant_id, level, schema_name, epoch, placed_at) \
         VALUES ($1, 'dedicated_schema', $2, 1, $3) \
         ON CONFLICT (tenant_id) DO UPDATE SET level = EXCLUDED.level, \
             schema_name = EXCLUDED.schema_name, epoch = tenant_placements.epoch + 1, \
             placed_at = EXCLUDED.placed_at",
        [tenant.into(), schema.into(), at.into()],
    ))
    .await?;
    tx.execute_raw(statement(
        "UPDATE tenants SET isolation_level = 'dedicated_schema', updated_at = $2 WHERE id = $1",
        [tenant.into(), at.into()],
    ))
    .await?;
    Ok(())
}

/// Deletes up to `chunk` of the tenant's rows of a table in `schema` (the
/// source of a completed move); how many.
pub async fn delete_rows(
    tx: &DatabaseTransaction,
    schema: &str,
    name: &str,
    tenant: Uuid,
    chunk: i64,
) -> Result<u64, DbErr> {
    let t = table(schema, name);
    // A row's ctid is unique within one partition only: events are named
    // by their key.
    let sql = if name == "usage_events" {
        format!(
            "DELETE FROM {t} e USING (SELECT occurred_at, id FROM {t} WHERE tenant_id = $1 LIMIT $2) d \
             WHERE e.tenant_id = $1 AND e.occurred_at = d.occurred_at AND e.id = d.id"
        )
    } else {
        format!(
            "DELETE FROM {t} WHERE tenant_id = $1 AND ctid = ANY(ARRAY( \
                 SELECT ctid FROM {t} WHERE tenant_id = $1 LIMIT $2))"
        )
    };
    Ok(tx
        .execute_raw(statement(sql, [tenant.into(), chunk.into()]))
        .await?
        .rows_affected())
}
