//! Sends live usage totals to Redis off the commit path (see
//! `service::counters`): one call per wake-up carries every commit since
//! the last, and what is left is sent when the worker stops — after the
//! ingest committers, whose last commits it includes.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Context, Worker};
use crate::service::counters::LiveCounters;

#[derive(Debug)]
pub struct CounterPublisher(pub Arc<LiveCounters>);

impl Worker for CounterPublisher {
    const NAME: &'static str = "counter-publisher";

    async fn run(self, _ctx: Context, cancel: CancellationToken) -> anyhow::Result<()> {
        if !self.0.deferred() {
            return Ok(());
        }
        loop {
            tokio::select! {
                () = self.0.pending() => self.0.flush().await,
                () = cancel.cancelled() => break,
            }
        }
        // The committers stop on the same signal; their last totals are
        // flushed by the ingest worker itself when it finishes.
        self.0.flush().await;
        Ok(())
    }
}
