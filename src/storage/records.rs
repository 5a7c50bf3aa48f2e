//! Idempotent records (`migrations/0011_records.sql`, `0020_record_batches.sql`).
//! Locks, saves and gets go in batches (`write_batch`: one call of
//! `tenlyr_record_batch` per place the batch's tenants live in, in arrival
//! order, one transaction). Row-level security applies as for
//! every tenant table.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row, postgres::PgRow};
use uuid::Uuid;

use super::{Db, tenant_data};
use crate::domain::record::{Record, State};

fn record(key: &str, row: &PgRow) -> Result<Record, sqlx::Error> {
    let state: String = row.try_get("state")?;
    Ok(Record {
        key: key.to_owned(),
        state: State::parse(&state)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown record state {state:?}").into()))?,
        lock_token: row.try_get("lock_token")?,
        fingerprint: row.try_get("fingerprint")?,
        locked_until: row.try_get("locked_until")?,
        data: row.try_get("data")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// One write of a batch (`tenlyr_record_batch`).
#[derive(Debug, Clone)]
pub enum Write {
    /// Lock `key` with `token` until `lease_until`.
    Lock {
        tenant: Uuid,
        key: String,
        token: Uuid,
        fingerprint: Option<String>,
        lease_until: DateTime<Utc>,
        forget_at: DateTime<Utc>,
    },
    /// Save `data` under `token`.
    Save {
        tenant: Uuid,
        key: String,
        token: Uuid,
        data: serde_json::Value,
        forget_at: DateTime<Utc>,
    },
    /// Read the record (rides along with the writes: one statement for
    /// all).
    Get { tenant: Uuid, key: String },
}

impl Write {
    pub fn tenant(&self) -> Uuid {
        match self {
            Write::Lock { tenant, .. } | Write::Save { tenant, .. } | Write::Get { tenant, .. } => {
                *tenant
            }
        }
    }

    fn key(&self) -> &str {
        match self {
            Write::Lock { key, .. } | Write::Save { key, .. } | Write::Get { key, .. } => key,
        }
    }
}

/// Runs `writes` at `now`, in order, in one transaction per place their
/// tenants live in: for each, whether it took effect (the lock was taken,
/// the save holds) and the record as it is after it (`None`: no record).
pub async fn write_batch(
    db: &Db,
    writes: &[Write],
    now: DateTime<Utc>,
) -> Result<Vec<Option<(bool, Record)>>, sqlx::Error> {
    let mut results = vec![None; writes.len()];
    let mut work = db
        .placements()
        .partition((0..writes.len()).collect(), |i| writes[*i].tenant());
    let mut refreshes = 0;
    while let Some(part) = work.pop() {
        match write_in_place(db.pool(), writes, &part, now).await {
            Ok(done) => {
                for (i, outcome) in done {
                    results[i] = Some(outcome);
                }
            }
            Err(err) if tenant_data::is_misrouted(&err) && refreshes < 3 => {
                refreshes += 1;
                db.placements().refresh(db.pool()).await?;
                work.extend(db.placements().partition(part, |i| writes[*i].tenant()));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(results)
}

async fn write_in_place(
    pool: &PgPool,
    writes: &[Write],
    part: &[usize],
    now: DateTime<Utc>,
) -> Result<Vec<(usize, (bool, Record))>, sqlx::Error> {
    let n = part.len();
    let (mut kinds, mut tenants, mut keys, mut tokens) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut prints, mut payloads, mut leases, mut forgets) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for &i in part {
        match &writes[i] {
            Write::Lock {
                tenant,
                key,
                token,
                fingerprint,
                lease_until,
                forget_at,
            } => {
                kinds.push("lock");
                tenants.push(*tenant);
                keys.push(key.as_str());
                tokens.push(*token);
                prints.push(fingerprint.as_deref());
                payloads.push(None::<&serde_json::Value>);
                leases.push(Some(*lease_until));
                forgets.push(*forget_at);
            }
            Write::Save {
                tenant,
                key,
                token,
                data,
                forget_at,
            } => {
                kinds.push("save");
                tenants.push(*tenant);
                keys.push(key.as_str());
                tokens.push(*token);
                prints.push(None);
                payloads.push(Some(data));
                leases.push(None);
                forgets.push(*forget_at);
            }
            Write::Get { tenant, key } => {
                kinds.push("get");
                tenants.push(*tenant);
                keys.push(key.as_str());
                tokens.push(Uuid::nil());
                prints.push(None);
                payloads.push(None);
                leases.push(None);
                forgets.push(DateTime::<Utc>::UNIX_EPOCH);
            }
        }
    }
    let rows = sqlx::query("SELECT * FROM tenlyr_record_batch($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(&kinds)
        .bind(&tenants)
        .bind(&keys)
        .bind(&tokens)
        .bind(&prints)
        .bind(&payloads)
        .bind(now)
        .bind(&leases)
        .bind(&forgets)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let ord: i32 = row.try_get("ord")?;
            let i = usize::try_from(ord - 1)
                .ok()
                .and_then(|o| part.get(o).copied())
                .ok_or_else(|| {
                    sqlx::Error::Decode(format!("batch row {ord} out of range").into())
                })?;
            Ok((i, (row.try_get("hit")?, record(writes[i].key(), row)?)))
        })
        .collect()
}
