//! The health worker (every 60 s) and the alert worker (every 5 min), each
//! on one replica per tick (DESIGN.md §9): the health scan reads the
//! per-minute counts ingestion keeps; the alert check opens and resolves
//! `health_critical` alerts from what the scan wrote.

use std::time::Duration;

use super::{Context, periodic::Tick};
use crate::service::{alerts::Alerts, health::Health};

pub const ALERT_EVERY: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub struct HealthScan(pub Health);

impl Tick for HealthScan {
    const NAME: &'static str = "health-scan";

    async fn tick(&self, _ctx: &Context) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let tenants = self
            .0
            .scan()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        tracing::debug!(
            tenants,
            ms = started.elapsed().as_millis() as u64,
            "health scan"
        );
        Ok(())
    }
}

#[derive(Debug)]
pub struct AlertCheck(pub Alerts);

impl Tick for AlertCheck {
    const NAME: &'static str = "alert-check";

    async fn tick(&self, _ctx: &Context) -> anyhow::Result<()> {
        let (opened, resolved) = self
            .0
            .check()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        if opened + resolved > 0 {
            tracing::info!(opened, resolved, "health_critical alerts");
        }
        Ok(())
    }
}
