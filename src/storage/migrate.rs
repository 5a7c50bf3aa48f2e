//! SQL migrations from `migrations/`, embedded in the binary.
//!
//! Applied in order, each in its own transaction, under a Postgres advisory
//! lock so that replicas starting together apply each exactly once. A
//! migration whose text changed after it was applied is an error.

use sqlx::{Connection, Executor, PgConnection, Row};

struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sql: include_str!("../../migrations/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "tenants",
        sql: include_str!("../../migrations/0002_tenants.sql"),
    },
    Migration {
        version: 3,
        name: "metering",
        sql: include_str!("../../migrations/0003_metering.sql"),
    },
    Migration {
        version: 4,
        name: "metering_copy",
        sql: include_str!("../../migrations/0004_metering_copy.sql"),
    },
    Migration {
        version: 5,
        name: "ingest_one_call",
        sql: include_str!("../../migrations/0005_ingest_one_call.sql"),
    },
    Migration {
        version: 6,
        name: "byte_order_keys",
        sql: include_str!("../../migrations/0006_byte_order_keys.sql"),
    },
    Migration {
        version: 7,
        name: "key_probes",
        sql: include_str!("../../migrations/0007_key_probes.sql"),
    },
    Migration {
        version: 8,
        name: "partial_key_index",
        sql: include_str!("../../migrations/0008_partial_key_index.sql"),
    },
    Migration {
        version: 9,
        name: "workers",
        sql: include_str!("../../migrations/0009_workers.sql"),
    },
    Migration {
        version: 10,
        name: "local_hours",
        sql: include_str!("../../migrations/0010_local_hours.sql"),
    },
    Migration {
        version: 11,
        name: "records",
        sql: include_str!("../../migrations/0011_records.sql"),
    },
    Migration {
        version: 12,
        name: "idempotency_keys",
        sql: include_str!("../../migrations/0012_idempotency_keys.sql"),
    },
    Migration {
        version: 13,
        name: "webhook_delivery",
        sql: include_str!("../../migrations/0013_webhook_delivery.sql"),
    },
    Migration {
        version: 14,
        name: "health",
        sql: include_str!("../../migrations/0014_health.sql"),
    },
    Migration {
        version: 15,
        name: "billing",
        sql: include_str!("../../migrations/0015_billing.sql"),
    },
    Migration {
        version: 16,
        name: "webhook_settings",
        sql: include_str!("../../migrations/0016_webhook_settings.sql"),
    },
    Migration {
        version: 17,
        name: "inbound_webhooks",
        sql: include_str!("../../migrations/0017_inbound_webhooks.sql"),
    },
    Migration {
        version: 18,
        name: "isolation",
        sql: include_str!("../../migrations/0018_isolation.sql"),
    },
    Migration {
        version: 19,
        name: "users",
        sql: include_str!("../../migrations/0019_users.sql"),
    },
    Migration {
        version: 20,
        name: "record_batches",
        sql: include_str!("../../migrations/0020_record_batches.sql"),
    },
    Migration {
        version: 21,
        name: "dedicated_databases",
        sql: include_str!("../../migrations/0021_dedicated_databases.sql"),
    },
    Migration {
        version: 22,
        name: "terminated_tenant_data",
        sql: include_str!("../../migrations/0022_terminated_tenant_data.sql"),
    },
    Migration {
        version: 23,
        name: "delivery_claims_at_scale",
        sql: include_str!("../../migrations/0023_delivery_claims_at_scale.sql"),
    },
];

/// Advisory-lock key: "tenlyr.migrate" as a fixed integer.
const LOCK_KEY: i64 = 0x7465_6e6c_796d_6967;

/// A digest of every migration's text: changes whenever one is added or
/// edited (tests key their migrated template database on it).
pub fn fingerprint() -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for migration in MIGRATIONS {
        ctx.update(migration.sql.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies pending migrations; returns how many were applied.
pub async fn run(database_url: &str) -> anyhow::Result<usize> {
    let mut conn = PgConnection::connect(database_url).await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut conn)
        .await?;
    let result = apply_pending(&mut conn).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    result
}

async fn apply_pending(conn: &mut PgConnection) -> anyhow::Result<usize> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS tenlyr_schema_migrations (
            version integer PRIMARY KEY,
            name text NOT NULL,
            checksum bytea NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let applied = sqlx::query("SELECT version, checksum FROM tenlyr_schema_migrations")
        .fetch_all(&mut *conn)
        .await?;
    let mut count = 0;
    for migration in MIGRATIONS {
        let checksum = ring::digest::digest(&ring::digest::SHA256, migration.sql.as_bytes());
        let row = applied
            .iter()
            .find(|r| r.get::<i32, _>("version") == migration.version);
        if let Some(row) = row {
            if row.get::<Vec<u8>, _>("checksum") != checksum.as_ref() {
                anyhow::bail!(
                    "migration {:04}_{} changed after it was applied; add a new migration instead",
                    migration.version,
                    migration.name
                );
            }
            continue;
        }
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(migration.sql)
            .execute(&mut *tx)
            .await
            .map_err(|err| {
                anyhow::anyhow!(
                    "migration {:04}_{} failed: {err}",
                    migration.version,
                    migration.name
                )
            })?;
        sqlx::query(
            "INSERT INTO tenlyr_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        )
        .bind(migration.version)
        .bind(migration.name)
        .bind(checksum.as_ref())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied migration"
        );
        count += 1;
    }
    Ok(count)
}
