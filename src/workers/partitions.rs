//! Usage partition upkeep, hourly, on one replica per tick: day partitions
//! from the late window to a week ahead exist, those older than the
//! retention are dropped (`service::metering::maintain`; the server also
//! runs it once before it serves).

use std::time::Duration;

use super::{Context, periodic::Tick};
use crate::service::metering;

pub const EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct Partitions {
    pub retention_days: u32,
}

impl Tick for Partitions {
    const NAME: &'static str = "usage-partitions";

    async fn tick(&self, ctx: &Context) -> anyhow::Result<()> {
        metering::maintain(&ctx.db, self.retention_days).await?;
        Ok(())
    }
}
