//! The inbound gateway's background half (`service::inbound`): the log
//! committers, which take whatever verified webhooks queued while their
//! previous commit ran and log them in one statement (on shutdown they
//! stop receiving and commit what is queued, so every waiting request gets
//! its answer), and the spool drainer, which logs what was spooled while
//! Postgres was unreachable once it is back.

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{Context, Worker, periodic::Tick};
use crate::service::inbound::{Committer, LogSubmission, MAX_COMMIT, Spool};

#[derive(Debug)]
pub struct InboundLogWorker(pub Committer);

impl Worker for InboundLogWorker {
    const NAME: &'static str = "inbound-log";

    async fn run(self, _ctx: Context, cancel: CancellationToken) -> anyhow::Result<()> {
        let Committer {
            shards,
            db,
            spool,
            down_until,
            pressure,
        } = self.0;
        let mut loops = JoinSet::new();
        for rx in shards {
            let committer = Committer {
                shards: Vec::new(),
                db: db.clone(),
                spool: spool.clone(),
                down_until: down_until.clone(),
                pressure: pressure.clone(),
            };
            loops.spawn(commit_loop(rx, committer, cancel.clone()));
        }
        loops.join_all().await;
        Ok(())
    }
}

async fn commit_loop(
    mut rx: mpsc::Receiver<LogSubmission>,
    committer: Committer,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            s = rx.recv() => s,
            () = stop.cancelled() => {
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { return };
        let mut group = vec![first];
        while group.len() < MAX_COMMIT {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        committer.commit(group).await;
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
