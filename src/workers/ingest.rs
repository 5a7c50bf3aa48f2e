//! The committing half of the usage ingest pipeline (`service::metering`):
//! one loop per committer, each taking whatever queued up for its tenants
//! while its previous commit ran. On shutdown — after the listener drained
//! its requests — every committer stops receiving and commits what is
//! still queued, so a caller waiting for an acknowledgement gets its
//! commit or an error, never silence; then the live counters those commits
//! produced are sent.

use std::sync::Arc;

use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{Context, Worker};
use crate::{
    service::{
        counters::LiveCounters,
        metering::{MAX_COMMIT, Submission, commit_group},
    },
    storage::{Db, usage as repo},
};

/// Created with its sending half by `service::metering::Ingest::new`.
#[derive(Debug)]
pub struct IngestWorker {
    pub(crate) shards: Vec<mpsc::Receiver<Submission>>,
    pub(crate) db: Db,
    pub(crate) counters: Arc<LiveCounters>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

impl Worker for IngestWorker {
    const NAME: &'static str = "ingest";

    async fn run(self, _ctx: Context, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut committers = JoinSet::new();
        for rx in self.shards {
            let (db, counters, stop) = (self.db.clone(), self.counters.clone(), cancel.clone());
            committers.spawn(commit_loop(rx, db, counters, self.metrics.clone(), stop));
        }
        committers.join_all().await;
        self.counters.flush().await;
        Ok(())
    }
}

async fn commit_loop(
    mut rx: mpsc::Receiver<Submission>,
    db: Db,
    counters: Arc<LiveCounters>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) {
    // What this committer last read of its tenants (for `commit_small`).
    let mut known = repo::Tenants::new();
    while let Some((group, size)) =
        super::next_group(&mut rx, &stop, MAX_COMMIT, |s: &Submission| s.events.len()).await
    {
        metrics.ingest_commit(size);
        commit_group(&db, &counters, &mut known, group).await;
    }
}
