//! Periodic workers: a tick every period, on every replica or once per
//! period across all of them.
//!
//! An elected tick starts only if this replica takes the worker's lease row
//! (`worker_leases`): no other holder's lease is running and no tick
//! started in the last 90 % of a period (a replica whose timer fires later
//! in the same period skips it). The lease is renewed while the tick runs,
//! so a tick that overruns its period is never run twice at once; a holder
//! that dies loses it when it lapses. Within one replica, the next tick
//! waits for the last (missed ticks are skipped, not queued).

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{Context, Worker};
use crate::storage::jobs;

/// Who runs a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Election {
    /// Every replica, each for itself (flushing its own memory).
    Replica,
    /// One replica per period, through the lease row named after the task.
    Cluster,
}

/// The work of one tick.
pub trait Tick: Send + Sync + 'static {
    /// For logs, and the lease row of an elected task.
    const NAME: &'static str;

    fn tick(&self, ctx: &Context) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A [`Tick`] run every `every`.
#[derive(Debug)]
pub struct Periodic<T> {
    task: T,
    every: Duration,
    election: Election,
    /// Tick once more when cancelled (flushers).
    final_tick: bool,
}

impl<T: Tick> Periodic<T> {
    pub fn new(task: T, every: Duration, election: Election) -> Self {
        Self {
            task,
            every,
            election,
            final_tick: false,
        }
    }

    /// Runs one last tick after cancellation (on this replica, unelected).
    pub fn with_final_tick(mut self) -> Self {
        self.final_tick = true;
        self
    }

    pub fn task(&self) -> &T {
        &self.task
    }

    /// Runs one tick now if this replica may (always for
    /// [`Election::Replica`]); whether it ran. Errors are the tick's own.
    pub async fn run_once(&self, ctx: &Context) -> anyhow::Result<bool> {
        match self.election {
            Election::Replica => {
                self.task.tick(ctx).await?;
                Ok(true)
            }
            Election::Cluster => self.elected_tick(ctx).await,
        }
    }

    async fn elected_tick(&self, ctx: &Context) -> anyhow::Result<bool> {
        let period_ms = i64::try_from(self.every.as_millis()).unwrap_or(i64::MAX);
        // A lease long enough for a normal tick, renewed while it runs.
        let lease = chrono::Duration::milliseconds(period_ms.clamp(10_000, 300_000));
        let pool = ctx.db.pool();
        let won = jobs::acquire_lease(
            pool,
            T::NAME,
            &ctx.node,
            ctx.clock.now(),
            lease.num_milliseconds(),
            period_ms / 10 * 9,
        )
        .await?;
        if !won {
            return Ok(false);
        }
        let renew = async {
            let every = (lease / 3).to_std().unwrap_or(Duration::from_secs(3));
            loop {
                tokio::time::sleep(every).await;
                let until = ctx.clock.now() + lease;
                match jobs::renew_lease(pool, T::NAME, &ctx.node, until).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(worker = T::NAME, "lost the lease during a tick")
                    }
                    Err(err) => {
                        tracing::warn!(worker = T::NAME, error = %err, "renewing the lease failed")
                    }
                }
            }
        };
        let result = tokio::select! {
            result = self.task.tick(ctx) => result,
            () = renew => unreachable!("the renewal loop never ends"),
        };
        if let Err(err) = jobs::release_lease(pool, T::NAME, &ctx.node).await {
            tracing::warn!(worker = T::NAME, error = %err, "releasing the lease failed; it lapses");
        }
        result.map(|()| true)
    }
}

impl<T: Tick> Worker for Periodic<T> {
    const NAME: &'static str = T::NAME;

    async fn run(self, ctx: Context, cancel: CancellationToken) -> anyhow::Result<()> {
        // The first tick comes one period after start (the server runs what
        // must happen at start itself, e.g. partition upkeep in `bind`).
        let mut timer =
            tokio::time::interval_at(tokio::time::Instant::now() + self.every, self.every);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = timer.tick() => {}
            }
            // A tick in progress finishes before shutdown is noticed; ticks
            // are short or chunked.
            if let Err(err) = self.run_once(&ctx).await {
                tracing::warn!(
                    worker = T::NAME,
                    error = format!("{err:#}"),
                    "tick failed; retrying next period"
                );
            }
        }
        if self.final_tick {
            self.task.tick(&ctx).await?;
        }
        Ok(())
    }
}
