//! The committer of idempotent records' writes (`service::records`): takes
//! the locks and saves that queued while its previous commit ran and
//! writes them in one statement (`tenlyr_record_batch`). On shutdown it
//! stops receiving and commits what is queued, so every waiting request
//! gets its answer.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Context, Worker, next_group};
use crate::service::records::{Committer, MAX_COMMIT, Submission};

/// Created with the service by `service::records::Records::new`.
#[derive(Debug)]
pub struct RecordCommitWorker {
    pub(crate) rx: mpsc::Receiver<Submission>,
    pub(crate) committer: Committer,
}

impl Worker for RecordCommitWorker {
    const NAME: &'static str = "record-commit";

    async fn run(mut self, _ctx: Context, cancel: CancellationToken) -> anyhow::Result<()> {
        while let Some((group, _)) = next_group(&mut self.rx, &cancel, MAX_COMMIT, |_| 1).await {
            self.committer.commit(group).await;
        }
        Ok(())
    }
}
