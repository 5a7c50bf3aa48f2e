//! Idempotent records (`migrations/0011_records.sql`, `0020_record_batches.sql`).
//! Locks, saves and gets go in batches (`write_batch`: one call of
//! `tenlyr_record_batch` per place the batch's tenants live in, one
//! transaction each). The batch function enters each operation's tenant
//! scope, so row-level security applies as for every tenant table.

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

/// What became of one write of a batch.
#[derive(Debug)]
pub enum Outcome {
    /// Committed: whether it took effect (the lock was taken, the save
    /// holds; a get always) and the record after it (`None`: no record).
    Done(Option<(bool, Record)>),
    /// Its place's statement was refused by the database and rolled back:
    /// nothing of it happened, it may be tried again.
    Refused,
    /// Its place's statement failed in a way that may have committed (the
    /// connection broke, the reply was unreadable) or never ran: not to be
    /// repeated blindly.
    Failed,
}

/// Runs `writes` at `now`, in one transaction per place their tenants live
/// in (each place's writes in arrival order), and says what became of each;
/// with the first error met, if any. One place failing does not undo or
/// hide another place's committed writes.
pub async fn write_batch(
    db: &Db,
    writes: &[Write],
    now: DateTime<Utc>,
) -> (Vec<Outcome>, Option<sqlx::Error>) {
    let mut outcomes: Vec<Outcome> = (0..writes.len()).map(|_| Outcome::Failed).collect();
    let mut first_error = None;
    let mut work = db
        .placements()
        .partition((0..writes.len()).collect(), |i| writes[*i].tenant());
    let mut refreshes = 0;
    while let Some((place, part)) = work.pop() {
        let result = match db.at(place.as_ref()).await {
            Ok(here) => write_in_place(here.pool(), writes, &part, now).await,
            Err(err) => Err(tenant_data::unreachable(err)),
        };
        match result {
            Ok(done) => {
                for (i, outcome) in done {
                    outcomes[i] = Outcome::Done(Some(outcome));
                }
                // A write without a row back found no record.
                for &i in &part {
                    if matches!(outcomes[i], Outcome::Failed) {
                        outcomes[i] = Outcome::Done(None);
                    }
                }
            }
            Err(err) if tenant_data::is_misrouted(&err) && refreshes < 3 => {
                refreshes += 1;
                match db.placements().refresh(db.pool()).await {
                    Ok(()) => work.extend(db.placements().partition(part, |i| writes[*i].tenant())),
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                }
            }
            Err(err) => {
                if err.as_database_error().is_some() {
                    for &i in &part {
                        outcomes[i] = Outcome::Refused;
                    }
                }
                first_error.get_or_insert(err);
            }
        }
    }
    (outcomes, first_error)
}

async fn write_in_place(
    pool: &PgPool,
    writes: &[Write],
    part: &[usize],
    now: DateTime<Utc>,
) -> Result<Vec<(usize, (bool, Record))>, sqlx::Error> {
    // Rows are locked in (tenant, key) order, so two batches (two replicas)
    // cannot deadlock on each other; the sort is stable, so writes to one
    // key keep their arrival order.
    let mut part = part.to_vec();
    part.sort_by(|&a, &b| {
        (writes[a].tenant(), writes[a].key()).cmp(&(writes[b].tenant(), writes[b].key()))
    });
    let part = part.as_slice();
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
