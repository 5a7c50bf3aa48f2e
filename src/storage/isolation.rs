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

/// Whether a tenant's data may be purged now: it is gone (deleted) or
/// terminated, and no isolation move of it is under way (one is finished
/// first: it would write the data back elsewhere).
pub async fn purgeable(tx: &DatabaseTransaction, tenant: Uuid) -> Result<Purgeable, DbErr> {
    let r = tx
        .query_one_raw(statement(
            "SELECT (SELECT status FROM tenants WHERE id = $1) AS status, \
                    EXISTS (SELECT 1 FROM isolation_migrations WHERE tenant_id = $1 \
                            AND status IN ('pending', 'in_progress')) AS moving",
            [tenant.into()],
        ))
        .await?
        .ok_or(DbErr::RecordNotFound("tenant".into()))?;
    let status: Option<String> = r.try_get("", "status")?;
    let moving: bool = r.try_get("", "moving")?;
    Ok(match status.as_deref() {
        Some(s) if s != "terminated" => Purgeable::Live,
        _ if moving => Purgeable::Moving,
        _ => Purgeable::Yes,
    })
}

/// See [`purgeable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purgeable {
    Yes,
    /// Not until the move ends.
    Moving,
    /// The tenant is neither deleted nor terminated.
    Live,
}

/// Removes a terminated tenant's database placement (its data then routes
/// to the shared tables, where it has none); whether it had one. A
/// deleted tenant's went with its row.
pub async fn release_database(tx: &DatabaseTransaction, tenant: Uuid) -> Result<bool, DbErr> {
    Ok(tx
        .execute_raw(statement(
            "DELETE FROM tenant_placements p USING tenants t \
             WHERE p.tenant_id = $1 AND t.id = p.tenant_id AND t.status = 'terminated' \
               AND p.level = 'dedicated_database'",
            [tenant.into()],
        ))
        .await?
        .rows_affected()
        > 0)
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

// ------------------------------------------------ moves to a database

// A move to the tenant's own database reads the source in transactions
// of the main database and writes the target in ones of the tenant
// database: the bulk of the events as binary `COPY` data
// ([`read_events_chunk`], [`write_events_chunk`]), the few rows the
// catch-up and the barrier find missing as JSON (`to_jsonb` there,
// `jsonb_populate_recordset` here). The two places are compared by the
// same row checksums ([`checksum`]), computed in each at once. Both
// transactions of a move run with `TimeZone` UTC (see
// [`set_move_session`]) so a row's text, which the checksums hash, is the
// same in both databases.

/// The settings both sides of a cross-database move run with.
pub async fn set_move_session(tx: &DatabaseTransaction) -> Result<(), DbErr> {
    tx.execute_raw(statement("SET LOCAL TimeZone = 'UTC'", []))
        .await?;
    Ok(())
}

/// The server (by key) a move to the dedicated_database tier fills: the
/// one it chose at its first run, or `pick` now.
pub async fn target_server(
    tx: &DatabaseTransaction,
    id: Uuid,
    pick: &str,
) -> Result<String, DbErr> {
    let r = tx
        .query_one_raw(statement(
            "UPDATE isolation_migrations SET target_server = coalesce(target_server, $2) \
             WHERE id = $1 RETURNING target_server",
            [id.into(), pick.into()],
        ))
        .await?
        .ok_or(DbErr::RecordNotFound("migration".into()))?;
    r.try_get("", "target_server")
}

/// How many tenants live on each server (by key), to pick the emptiest.
pub async fn databases_per_server(tx: &DatabaseTransaction) -> Result<Vec<(String, i64)>, DbErr> {
    tx.query_all_raw(statement(
        "SELECT database_server AS s, count(*) AS n FROM tenant_placements \
         WHERE level = 'dedicated_database' GROUP BY 1",
        [],
    ))
    .await?
    .iter()
    .map(|r| Ok((r.try_get("", "s")?, r.try_get("", "n")?)))
    .collect()
}

/// The first day of the tenant's events in `schema` (the tenant database's
/// partitions must reach back to it).
pub async fn first_event_day(
    tx: &DatabaseTransaction,
    schema: &str,
    tenant: Uuid,
) -> Result<Option<chrono::NaiveDate>, DbErr> {
    let r = tx
        .query_one_raw(statement(
            format!(
                "SELECT (min(occurred_at) AT TIME ZONE 'UTC')::date AS d FROM {} \
                 WHERE tenant_id = $1",
                table(schema, "usage_events")
            ),
            [tenant.into()],
        ))
        .await?;
    Ok(r.map(|r| r.try_get::<Option<chrono::NaiveDate>>("", "d"))
        .transpose()?
        .flatten())
}

/// Day partitions from `first` to `last` (in a tenant database).
pub async fn ensure_partitions(
    tx: &DatabaseTransaction,
    first: chrono::NaiveDate,
    last: chrono::NaiveDate,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "SELECT tenlyr_ensure_usage_partitions($1, $2)",
        [first.into(), last.into()],
    ))
    .await?;
    Ok(())
}

/// Inserts rows (a JSON array of whole rows of `name`) into the tenant
/// database's table; how many.
pub async fn insert_rows(
    tx: &DatabaseTransaction,
    name: &str,
    rows: serde_json::Value,
) -> Result<u64, DbErr> {
    Ok(tx
        .execute_raw(statement(
            format!(
                "INSERT INTO {t} SELECT * FROM jsonb_populate_recordset(NULL::{t}, $1)",
                t = table("public", name)
            ),
            [rows.into()],
        ))
        .await?
        .rows_affected())
}

/// The ids of the tenant's events in `schema` that occurred in
/// `[since, until)` (either end open with `None`).
async fn event_ids(
    tx: &DatabaseTransaction,
    schema: &str,
    tenant: Uuid,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<Vec<Uuid>, DbErr> {
    let r = tx
        .query_one_raw(statement(
            format!(
                "SELECT coalesce(array_agg(id), '{{}}') AS ids FROM {} WHERE tenant_id = $1 \
                   AND ($2::timestamptz IS NULL OR occurred_at >= $2) \
                   AND ($3::timestamptz IS NULL OR occurred_at < $3)",
                table(schema, "usage_events")
            ),
            [tenant.into(), since.into(), until.into()],
        ))
        .await?
        .ok_or(DbErr::RecordNotFound("ids".into()))?;
    r.try_get("", "ids")
}

/// Copies the events of `from` (in `src`) that the tenant database (`dst`)
/// lacks, among those that occurred in `[since, until)`; how many.
pub async fn copy_missing_events_across(
    src: &DatabaseTransaction,
    dst: &DatabaseTransaction,
    from: &str,
    tenant: Uuid,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<u64, DbErr> {
    let (have, source) = tokio::try_join!(
        event_ids(dst, "public", tenant, since, until),
        event_ids(src, from, tenant, since, until)
    )?;
    let have: std::collections::HashSet<Uuid> = have.into_iter().collect();
    let missing: Vec<Uuid> = source.into_iter().filter(|id| !have.contains(id)).collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let r = src
        .query_one_raw(statement(
            format!(
                "SELECT coalesce(jsonb_agg(x), '[]') AS rows FROM {} x WHERE x.tenant_id = $1 \
                   AND ($2::timestamptz IS NULL OR x.occurred_at >= $2) \
                   AND ($3::timestamptz IS NULL OR x.occurred_at < $3) AND x.id = ANY($4)",
                table(from, "usage_events")
            ),
            [tenant.into(), since.into(), until.into(), missing.into()],
        ))
        .await?
        .ok_or(DbErr::RecordNotFound("rows".into()))?;
    insert_rows(dst, "usage_events", r.try_get("", "rows")?).await
}

/// The row hashes of the tenant's rows of a table in `schema`.
async fn row_hashes(
    tx: &DatabaseTransaction,
    schema: &str,
    name: &str,
    tenant: Uuid,
) -> Result<Vec<i64>, DbErr> {
    let r = tx
        .query_one_raw(statement(
            format!(
                "SELECT coalesce(array_agg(hashtextextended(x::text, 0)), '{{}}') AS h \
                 FROM {} x WHERE x.tenant_id = $1",
                table(schema, name)
            ),
            [tenant.into()],
        ))
        .await?
        .ok_or(DbErr::RecordNotFound("hashes".into()))?;
    r.try_get("", "h")
}

/// Makes the tenant's rows of a small table in the tenant database those
/// of `from`, by difference of whole rows: rows there that the source
/// lacks (gone, or changed since) are deleted, rows of the source it lacks
/// are inserted; how many rows were written.
pub async fn sync_small_table_across(
    src: &DatabaseTransaction,
    dst: &DatabaseTransaction,
    name: &str,
    from: &str,
    tenant: Uuid,
) -> Result<u64, DbErr> {
    let (source, target) = tokio::try_join!(
        row_hashes(src, from, name, tenant),
        row_hashes(dst, "public", name, tenant)
    )?;
    let source: std::collections::HashSet<i64> = source.into_iter().collect();
    let target: std::collections::HashSet<i64> = target.into_iter().collect();
    let stale: Vec<i64> = target.difference(&source).copied().collect();
    let fresh: Vec<i64> = source.difference(&target).copied().collect();
    let mut written = 0;
    if !stale.is_empty() {
        written += dst
            .execute_raw(statement(
                format!(
                    "DELETE FROM {} x WHERE x.tenant_id = $1 \
                     AND hashtextextended(x::text, 0) = ANY($2)",
                    table("public", name)
                ),
                [tenant.into(), stale.into()],
            ))
            .await?
            .rows_affected();
    }
    if !fresh.is_empty() {
        let r = src
            .query_one_raw(statement(
                format!(
                    "SELECT coalesce(jsonb_agg(x), '[]') AS rows FROM {} x \
                     WHERE x.tenant_id = $1 AND hashtextextended(x::text, 0) = ANY($2)",
                    table(from, name)
                ),
                [tenant.into(), fresh.into()],
            ))
            .await?
            .ok_or(DbErr::RecordNotFound("rows".into()))?;
        written += insert_rows(dst, name, r.try_get("", "rows")?).await?;
    }
    Ok(written)
}

/// Flips the tenant to its own database: placement (epoch bumped), the
/// tenant's `isolation_level`.
pub async fn flip_to_database(
    tx: &DatabaseTransaction,
    tenant: Uuid,
    server: &str,
    database: &str,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "INSERT INTO tenant_placements (tenant_id, level, schema_name, database_server, \
             database_name, epoch, placed_at) \
         VALUES ($1, 'dedicated_database', 'public', $2, $3, 1, $4) \
         ON CONFLICT (tenant_id) DO UPDATE SET level = EXCLUDED.level, \
             schema_name = EXCLUDED.schema_name, database_server = EXCLUDED.database_server, \
             database_name = EXCLUDED.database_name, epoch = tenant_placements.epoch + 1, \
             placed_at = EXCLUDED.placed_at",
        [tenant.into(), server.into(), database.into(), at.into()],
    ))
    .await?;
    tx.execute_raw(statement(
        "UPDATE tenants SET isolation_level = 'dedicated_database', updated_at = $2 WHERE id = $1",
        [tenant.into(), at.into()],
    ))
    .await?;
    Ok(())
}

/// Drops the schema a tenant left for its own database, with its rows
/// (the cross-tenant views are rebuilt first).
pub async fn drop_left_schema(tx: &DatabaseTransaction, tenant: Uuid) -> Result<(), DbErr> {
    tx.execute_raw(statement(
        "SELECT tenlyr_drop_left_schema($1)",
        [tenant.into()],
    ))
    .await?;
    Ok(())
}

/// The tenant row (JSON), locked against other changes until `tx` ends
/// (readers that only need its key, like ingestion, still pass).
pub async fn lock_tenant_row(
    tx: &DatabaseTransaction,
    tenant: Uuid,
) -> Result<serde_json::Value, DbErr> {
    let r = tx
        .query_one_raw(statement(
            "SELECT to_jsonb(t) AS row FROM tenants t WHERE t.id = $1 FOR NO KEY UPDATE",
            [tenant.into()],
        ))
        .await?
        .ok_or(DbErr::RecordNotFound("tenant".into()))?;
    r.try_get("", "row")
}

/// Writes a tenant row into a tenant database, in `tx` there.
pub async fn mirror_tenant_in(
    tx: &DatabaseTransaction,
    row: serde_json::Value,
) -> Result<(), DbErr> {
    tx.execute_raw(statement("SELECT tenlyr_mirror_tenant($1)", [row.into()]))
        .await?;
    Ok(())
}

/// A chunk of a tenant's events read for a move to its own database: the
/// rows as binary `COPY` data, how many, and the last `(occurred_at, id)`.
pub struct EventChunk {
    data: Vec<bytes::Bytes>,
    pub rows: i64,
    pub last: (DateTime<Utc>, Uuid),
}

/// Reads the next `chunk` events after `after` (in `(occurred_at, id)`
/// order) that occurred before `before` from `from` in the main database,
/// in one snapshot, with binary `COPY`; `None` when there are none left.
pub async fn read_events_chunk(
    main: &sqlx::PgPool,
    from: &str,
    tenant: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    before: DateTime<Utc>,
    chunk: i64,
) -> Result<Option<EventChunk>, sqlx::Error> {
    use futures_util::TryStreamExt as _;
    let mut src = main.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *src)
        .await?;
    sqlx::query("SELECT tenlyr_enter_scope(NULL)")
        .execute(&mut *src)
        .await?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared(hashtext('tenlyr_usage_partitions'))")
        .execute(&mut *src)
        .await?;
    // COPY takes no parameters: the values are typed (a uuid, times,
    // a number) and written as literals of their type.
    let bound = match after {
        Some((at, id)) => format!(
            "AND (occurred_at, id) > ('{}'::timestamptz, '{id}'::uuid)",
            at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        ),
        None => String::new(),
    };
    let select = format!(
        "SELECT * FROM {src_table} WHERE tenant_id = '{tenant}'::uuid {bound} \
           AND occurred_at < '{before}'::timestamptz ORDER BY occurred_at, id LIMIT {chunk}",
        src_table = table(from, "usage_events"),
        before = before.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    let last: Option<(i64, DateTime<Utc>, Uuid)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) OVER (), occurred_at, id FROM ({select}) c \
         ORDER BY occurred_at DESC, id DESC LIMIT 1"
    )))
    .fetch_optional(&mut *src)
    .await?;
    let Some((rows, at, id)) = last else {
        src.commit().await?;
        return Ok(None);
    };
    let data: Vec<bytes::Bytes> = src
        .copy_out_raw(&format!("COPY ({select}) TO STDOUT (FORMAT binary)"))
        .await?
        .try_collect()
        .await?;
    src.commit().await?;
    Ok(Some(EventChunk {
        data,
        rows,
        last: (at, id),
    }))
}

/// Writes a chunk of events into the tenant database in one transaction,
/// committed before this returns (through a temporary table there: `COPY`
/// into a table with row-level security is refused); how many rows.
pub async fn write_events_chunk(
    tenant_db: &sqlx::PgPool,
    chunk: EventChunk,
) -> Result<i64, sqlx::Error> {
    let mut dst = tenant_db.begin().await?;
    sqlx::query("SELECT tenlyr_enter_scope(NULL)")
        .execute(&mut *dst)
        .await?;
    sqlx::query(
        "CREATE TEMPORARY TABLE IF NOT EXISTS tenlyr_move_events (LIKE public.usage_events) \
         ON COMMIT DELETE ROWS",
    )
    .execute(&mut *dst)
    .await?;
    let mut copy = dst
        .copy_in_raw("COPY tenlyr_move_events FROM STDIN (FORMAT binary)")
        .await?;
    for part in chunk.data {
        copy.send(part).await?;
    }
    copy.finish().await?;
    let n = sqlx::query("INSERT INTO public.usage_events SELECT * FROM tenlyr_move_events")
        .execute(&mut *dst)
        .await?
        .rows_affected();
    dst.commit().await?;
    Ok(n as i64)
}
