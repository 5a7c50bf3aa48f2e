//! Background work (DESIGN.md §7): one runtime owns every loop of the
//! process.
//!
//! Each worker is `run(ctx, cancel)`: it loops until `cancel` fires, then
//! finishes what it must (a last flush, the queued commits) and returns.
//! The [`Runtime`] spawns them on one `TaskTracker` and, at shutdown,
//! cancels them all and waits for them until one deadline.
//!
//! Three shapes of work run here:
//! - plain workers: a loop of their own (the ingest committers, the key
//!   invalidation subscriber, the counter publisher);
//! - [`periodic::Periodic`] ticks, run either on every replica (flushing
//!   what this replica holds in memory) or elected, once per tick across
//!   all replicas, through a lease row;
//! - [`queue`] jobs: rows in Postgres claimed `FOR UPDATE SKIP LOCKED`,
//!   woken by `LISTEN/NOTIFY`, retried with backoff, ending `dead`.
//!
//! Architecture Invariant: no `tokio::spawn` loop lives outside this
//! module; a new background task is a [`Worker`] spawned on the runtime.

pub mod activity;
pub mod billing_sync;
pub mod clock;
pub mod counters;
pub mod health;
pub mod inbound;
pub mod ingest;
pub mod isolation;
pub mod key_invalidation;
pub mod partitions;
pub mod periodic;
pub mod queue;
pub mod record_commit;
pub mod record_expiry;
pub mod tenant_data;
pub mod tenant_purge;
pub mod webhook_delivery;

use std::{future::Future, sync::Arc};

use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use self::clock::{Clock, ManualClock, SharedClock, SystemClock};
use crate::storage::Db;

/// A group-commit loop's next group: waits for one item (once `stop` fires
/// it stops receiving and drains what is already queued), then takes
/// whatever else is queued while `weight` sums to less than `max`. `None`
/// when the channel is closed and empty. The group and its weight.
pub(crate) async fn next_group<T>(
    rx: &mut tokio::sync::mpsc::Receiver<T>,
    stop: &CancellationToken,
    max: usize,
    weight: impl Fn(&T) -> usize,
) -> Option<(Vec<T>, usize)> {
    let first = tokio::select! {
        item = rx.recv() => item,
        () = stop.cancelled() => {
            rx.close();
            rx.recv().await
        }
    }?;
    let mut size = weight(&first);
    let mut group = vec![first];
    while size < max {
        match rx.try_recv() {
            Ok(next) => {
                size += weight(&next);
                group.push(next);
            }
            Err(_) => break,
        }
    }
    Some((group, size))
}

/// What every worker may use.
#[derive(Debug, Clone)]
pub struct Context {
    pub db: Db,
    pub clock: SharedClock,
    /// This process, as leases and claimed jobs name it.
    pub node: Arc<str>,
}

impl Context {
    pub fn new(db: Db, clock: SharedClock) -> Self {
        let node = format!(
            "{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .get(..8)
                .unwrap_or("")
        );
        Self {
            db,
            clock,
            node: node.into(),
        }
    }
}

/// A background loop.
pub trait Worker: Send + 'static {
    /// For logs.
    const NAME: &'static str;

    /// Runs until `cancel` fires, then finishes its own stop work.
    fn run(
        self,
        ctx: Context,
        cancel: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Owns the workers of one process.
#[derive(Debug)]
pub struct Runtime {
    ctx: Context,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Runtime {
    pub fn new(ctx: Context) -> Self {
        Self {
            ctx,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
        }
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Starts `worker`; an error it returns is logged here, once.
    pub fn spawn<W: Worker>(&self, worker: W) {
        let (ctx, cancel) = (self.ctx.clone(), self.cancel.clone());
        self.tracker.spawn(async move {
            match worker.run(ctx, cancel).await {
                Ok(()) => tracing::debug!(worker = W::NAME, "worker stopped"),
                Err(err) => {
                    tracing::error!(
                        worker = W::NAME,
                        error = format!("{err:#}"),
                        "worker failed"
                    )
                }
            }
        });
    }

    /// Cancels every worker and waits for them until `deadline`; false if
    /// some were still running then (they are abandoned with the process).
    pub async fn shutdown(self, deadline: Instant) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        let stopped = tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok();
        if !stopped {
            tracing::warn!(
                running = self.tracker.len(),
                "workers did not stop before the shutdown deadline"
            );
        }
        stopped
    }
}
