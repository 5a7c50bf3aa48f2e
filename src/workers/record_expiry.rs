//! Forgets idempotent records past their retention (24 h after saving by
//! default; a lock never saved, as long after its lease) and stored
//! `Idempotency-Key` responses past theirs (24 h), on one replica per
//! tick, a bounded chunk per transaction.

use std::time::Duration;

use super::{Context, periodic::Tick};
use crate::storage::{
    self,
    tenant_data::{self, Scope},
};

pub const EVERY: Duration = Duration::from_secs(300);
/// Records deleted per transaction.
const CHUNK: i64 = 10_000;

#[derive(Debug, Default)]
pub struct RecordExpiry;

impl Tick for RecordExpiry {
    const NAME: &'static str = "record-expiry";

    async fn tick(&self, ctx: &Context) -> anyhow::Result<()> {
        let now = ctx.clock.now();
        let mut total = 0;
        // Records, in every place tenant data lives: each schema of the
        // main database and of every tenant database.
        for (db, schema) in ctx.db.data_places().await? {
            loop {
                let tx = db.begin(Scope::Platform).await?;
                tenant_data::enter_schema(&tx, &schema).await?;
                let records = storage::purge_expired(&tx, "records", now, CHUNK).await?;
                tx.commit().await?;
                total += records;
                if records < CHUNK as u64 {
                    break;
                }
            }
        }
        // Stored responses: platform data.
        loop {
            let tx = ctx.db.begin(Scope::Platform).await?;
            let responses = storage::purge_expired(&tx, "idempotency_keys", now, CHUNK).await?;
            tx.commit().await?;
            total += responses;
            if responses < CHUNK as u64 {
                break;
            }
        }
        if total > 0 {
            tracing::info!(rows = total, "forgot expired records and idempotency keys");
        }
        Ok(())
    }
}
