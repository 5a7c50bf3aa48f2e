//! The inbound gateway's background half (`service::inbound`): the log
//! committers, which take whatever verified webhooks queued while their
//! previous commit ran and log them in one statement (on shutdown they
//! stop receiving and commit what is queued, so every waiting request gets
//! its answer), and the spool drainer, which logs what was spooled while
//! Postgres was unreachable once it is back.

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{Context, Worker, next_group, periodic::Tick};
use crate::service::inbound::{Committer, LogSubmission, MAX_COMMIT, Spool};

/// Created with the gateway by `service::inbound::Gateway::new`.
#[derive(Debug)]
pub struct InboundLogWorker {
    pub(crate) shards: Vec<mpsc::Receiver<LogSubmission>>,
    pub(crate) committer: Committer,
}

impl Worker for InboundLogWorker {
    const NAME: &'static str = "inbound-log";

    async fn run(self, _ctx: Context, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut loops = JoinSet::new();
        for mut rx in self.shards {
            let (committer, stop) = (self.committer.clone(), cancel.clone());
            loops.spawn(async move {
                while let Some((group, _)) = next_group(&mut rx, &stop, MAX_COMMIT, |_| 1).await {
                    committer.commit(group).await;
                }
            });
        }
        loops.join_all().await;
        Ok(())
    }
}

/// How often the spool is checked.
pub const DRAIN_EVERY: Duration = Duration::from_secs(1);

/// Logs the spool (every replica drains its own).
#[derive(Debug)]
pub struct SpoolDrain(pub Arc<Spool>);

impl Tick for SpoolDrain {
    const NAME: &'static str = "inbound-spool";

    async fn tick(&self, ctx: &Context) -> anyhow::Result<()> {
        self.0.drain(&ctx.db).await.map(|_| ())
    }
}
