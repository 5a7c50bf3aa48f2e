//! The billing sync (every 5 minutes by default, one replica per tick;
//! DESIGN.md §11): `service::billing::Billing::sync` brings Stripe in line
//! with Tenlyr.

use super::{Context, periodic::Tick};
use crate::service::billing::Billing;

#[derive(Debug)]
pub struct BillingSync(pub Billing);

impl Tick for BillingSync {
    const NAME: &'static str = "billing-sync";

    async fn tick(&self, _ctx: &Context) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let report = self
            .0
            .sync()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        tracing::info!(
            tenants = report.tenants,
            reads = report.calls.reads,
            writes = report.calls.writes,
            failed = report.failed,
            drifted = report.drifted,
            ms = started.elapsed().as_millis() as u64,
            "billing sync"
        );
        Ok(())
    }
}
