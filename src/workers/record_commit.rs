//! The committers of idempotent records' writes (`service::records`), one
//! per shard of the keys: each takes the locks, saves and gets that queued
//! while its previous commit ran and writes them in one statement
//! (`tenlyr_record_batch`). On shutdown they stop receiving and commit what
//! is queued, so every waiting request gets its answer.

use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::{Context, Worker, next_group};
use crate::service::records::{Committer, MAX_COMMIT, Submission};

/// Created with the service by `service::records::Records::new`.
#[derive(Debug)]
pub struct RecordCommitWorker {
    pub(crate) shards: Vec<mpsc::Receiver<Submission>>,
    pub(crate) committer: Committer,
}

impl Worker for RecordCommitWorker {
    const NAME: &'static str = "record-commit";

    async fn run(self, _ctx: Context, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut committers = JoinSet::new();
        for mut rx in self.shards {
            let (committer, cancel) = (self.committer.clone(), cancel.clone());
            committers.spawn(async move {
                while let Some((group, _)) = next_group(&mut rx, &cancel, MAX_COMMIT, |_| 1).await {
                    committer.commit(group).await;
                }
            });
        }
        // Every shard drains (a panic in one does not cut the others short).
        while let Some(done) = committers.join_next().await {
            if let Err(err) = done {
                tracing::error!(error = %err, "a record committer panicked");
            }
        }
        Ok(())
    }
}
