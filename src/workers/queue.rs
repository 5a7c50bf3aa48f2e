//! The job queue: jobs are rows in Postgres (`storage::jobs`), claimed
//! `FOR UPDATE SKIP LOCKED` by [`Runner`]s on any replica, woken by
//! `LISTEN/NOTIFY` the moment a job is committed ([`Listener`]), and
//! polled as a fallback (scheduled retries, lapsed leases, a lost
//! notification).
//!
//! A claim leases the job for its kind's `lease`, renewed while the job
//! runs; a runner that dies leaves it to be claimed again when the lease
//! lapses. A failed attempt
//! is retried after [`Backoff`] (exponential, ±20 % jitter) until
//! `max_attempts`, then the job stays `dead` with its `last_error`.
//! Handlers must be idempotent: a crash after the effect and before the
//! acknowledgement repeats the job.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Context, Worker};
use crate::storage::{
    jobs::{self, Claimed, NewJob},
    webhooks,
};

/// Retry delays: `base · 2^(attempt-1)`, at most `max`, ±20 % jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const DEFAULT: Self = Self {
        base: Duration::from_secs(5),
        max: Duration::from_secs(3600),
    };

    /// The delay after failed attempt number `attempt` (1-based), with
    /// `jitter` in `[0, 1)` spreading it over ±20 %.
    pub fn delay(&self, attempt: i32, jitter: f64) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        let plain = self.base.saturating_mul(1u32 << exp).min(self.max);
        plain.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
    }
}

/// A uniform number in `[0, 1)` from the thread-local generator uuid uses.
pub(crate) fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth retrying on the kind's schedule.
    #[error("{0}")]
    Retry(String),
    /// Retrying cannot help: the job goes `dead` at once.
    #[error("{0}")]
    Fatal(String),
}

impl From<anyhow::Error> for JobError {
    fn from(err: anyhow::Error) -> Self {
        Self::Retry(format!("{err:#}"))
    }
}

/// One kind of job.
pub trait Job: Send + Sync + 'static {
    const KIND: &'static str;
    const MAX_ATTEMPTS: i32 = 10;
    /// How long a claim holds the job before another runner may take it.
    const LEASE: Duration = Duration::from_secs(300);
    const BACKOFF: Backoff = Backoff::DEFAULT;
    type Payload: Serialize + DeserializeOwned + Send;

    fn run(
        &self,
        ctx: &Context,
        payload: Self::Payload,
    ) -> impl Future<Output = Result<(), JobError>> + Send;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

trait Handler: Send + Sync {
    fn lease(&self) -> Duration;
    fn backoff(&self) -> Backoff;
    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        payload: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), JobError>>;
}

struct Typed<J>(J);

impl<J: Job> Handler for Typed<J> {
    fn lease(&self) -> Duration {
        J::LEASE
    }

    fn backoff(&self) -> Backoff {
        J::BACKOFF
    }

    fn run<'a>(
        &'a self,
        ctx: &'a Context,
        payload: serde_json::Value,
    ) -> BoxFuture<'a, Result<(), JobError>> {
        Box::pin(async move {
            let payload = serde_json::from_value(payload)
                .map_err(|err| JobError::Fatal(format!("bad payload: {err}")))?;
            self.0.run(ctx, payload).await
        })
    }
}

/// The job kinds a runner handles.
#[derive(Default, Clone)]
pub struct Registry {
    handlers: HashMap<&'static str, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.handlers.keys()).finish()
    }
}

impl Registry {
    pub fn with<J: Job>(mut self, job: J) -> Self {
        self.handlers.insert(J::KIND, Arc::new(Typed(job)));
        self
    }
}

/// Adds jobs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Queue {
    ctx: Context,
}

impl Queue {
    pub fn new(ctx: Context) -> Self {
        Self { ctx }
    }

    /// The row for a job of kind `J`, due now.
    pub fn job<J: Job>(&self, payload: &J::Payload) -> Result<NewJob, serde_json::Error> {
        Ok(NewJob {
            kind: J::KIND,
            payload: serde_json::to_value(payload)?,
            max_attempts: J::MAX_ATTEMPTS,
            run_at: self.ctx.clock.now(),
        })
    }

    /// Adds jobs, committed at once; their runners wake on the commit.
    pub async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<i64>, sqlx::Error> {
        jobs::enqueue(self.ctx.db.pool(), jobs).await
    }
}

/// Wakes idle runners when jobs are committed: a counter bumped per
/// notification (a runner compares it before and after claiming, so a
/// notification between its empty claim and its wait is not lost).
#[derive(Debug, Clone)]
pub struct Wakeups {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for Wakeups {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::channel(0).0),
        }
    }
}

impl Wakeups {
    /// Wakes every idle runner (tests, after moving the clock).
    pub fn wake(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// LISTENs on the job channel (and the webhook channel) and wakes the
/// runners (and dispatchers) of this process.
#[derive(Debug)]
pub struct Listener {
    pub wakeups: Wakeups,
    pub webhooks: Wakeups,
}

impl Listener {
    fn wake(&self, channel: Option<&str>) {
        match channel {
            Some(jobs::CHANNEL) => self.wakeups.wake(),
            Some(_) => self.webhooks.wake(),
            None => {
                self.wakeups.wake();
                self.webhooks.wake();
            }
        }
    }
}

impl Worker for Listener {
    const NAME: &'static str = "job-listener";

    async fn run(self, ctx: Context, cancel: CancellationToken) -> anyhow::Result<()> {
        loop {
            let mut listener = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                listener = async {
                    let mut l = sqlx::postgres::PgListener::connect_with(ctx.db.pool()).await?;
                    l.listen_all([jobs::CHANNEL, webhooks::CHANNEL]).await?;
                    Ok::<_, sqlx::Error>(l)
                } => match listener {
                    Ok(listener) => listener,
                    Err(err) => {
                        tracing::warn!(error = %err, "listening for jobs failed; runners poll meanwhile");
                        tokio::select! {
                            () = cancel.cancelled() => return Ok(()),
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                },
            };
            // A reconnect may have missed notifications: look once.
            self.wake(None);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    message = listener.try_recv() => match message {
                        Ok(Some(n)) => self.wake(Some(n.channel())),
                        // Connection lost; try_recv reconnects on the next call.
                        Ok(None) => self.wake(None),
                        Err(err) => {
                            tracing::warn!(error = %err, "job notifications failed; reconnecting");
                            break;
                        }
                    },
                }
            }
        }
    }
}

/// Claims and runs jobs of its registry's kinds until cancelled: up to
/// `batch` at a time, run concurrently, acknowledged together.
#[derive(Debug)]
pub struct Runner {
    registry: Registry,
    /// The registry's kinds and, in the same order, their leases in
    /// milliseconds, as every claim passes them.
    kinds: Vec<&'static str>,
    lease_ms: Vec<i64>,
    pub wakeups: Wakeups,
    pub batch: i32,
    /// Longest idle wait without a notification.
    pub poll: Duration,
}

impl Runner {
    pub fn new(registry: Registry, wakeups: Wakeups) -> Self {
        let kinds: Vec<&'static str> = registry.handlers.keys().copied().collect();
        let lease_ms = kinds
            .iter()
            .map(|k| i64::try_from(registry.handlers[k].lease().as_millis()).unwrap_or(i64::MAX))
            .collect();
        Self {
            registry,
            kinds,
            lease_ms,
            wakeups,
            batch: 32,
            poll: Duration::from_secs(2),
        }
    }

    /// Claims and runs one batch; how many jobs it ran.
    pub async fn run_batch(&self, ctx: &Context, runner: &str) -> Result<usize, sqlx::Error> {
        let pool = ctx.db.pool();
        let claimed = jobs::claim(
            pool,
            &self.kinds,
            &self.lease_ms,
            ctx.clock.now(),
            self.batch,
            runner,
        )
        .await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        let running = join_all(claimed.iter().map(|job| async move {
            let handler = &self.registry.handlers[job.kind.as_str()];
            (job, handler.run(ctx, job.payload.clone()).await)
        }));
        let outcomes = self.renewing(ctx, &claimed, running).await;
        let mut done = Vec::with_capacity(outcomes.len());
        for (job, outcome) in outcomes {
            match outcome {
                Ok(()) => done.push((job.id, job.attempts)),
                Err(err) => self.record_failure(ctx, job, &err).await?,
            }
        }
        if !done.is_empty() {
            jobs::complete(pool, &done).await?;
        }
        Ok(claimed.len())
    }

    /// Awaits `running`, renewing the claimed jobs' leases every third of
    /// the shortest one meanwhile: a long job keeps its claim, and the
    /// claim of a runner that died lapses after one lease.
    async fn renewing<T>(
        &self,
        ctx: &Context,
        claimed: &[Claimed],
        running: impl Future<Output = T>,
    ) -> T {
        let leases: Vec<(i64, i32, i64)> = claimed
            .iter()
            .map(|job| {
                let lease = self.registry.handlers[job.kind.as_str()].lease();
                (
                    job.id,
                    job.attempts,
                    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
                )
            })
            .collect();
        let shortest = leases.iter().map(|l| l.2).min().unwrap_or(i64::MAX);
        let every = Duration::from_millis(u64::try_from(shortest / 3).unwrap_or(u64::MAX).max(100));
        let mut running = std::pin::pin!(running);
        loop {
            tokio::select! {
                outcome = &mut running => return outcome,
                () = tokio::time::sleep(every) => {
                    if let Err(err) = jobs::renew(ctx.db.pool(), &leases, ctx.clock.now()).await {
                        tracing::warn!(error = %err, "renewing job leases failed");
                    }
                }
            }
        }
    }

    async fn record_failure(
        &self,
        ctx: &Context,
        job: &Claimed,
        err: &JobError,
    ) -> Result<(), sqlx::Error> {
        let now = ctx.clock.now();
        let retry_at = match err {
            JobError::Retry(_) if job.attempts < job.max_attempts => {
                let backoff = self.registry.handlers[job.kind.as_str()].backoff();
                let delay = backoff.delay(job.attempts, jitter());
                Some(now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX))
            }
            _ => None,
        };
        let error = err.to_string();
        if retry_at.is_none() {
            tracing::error!(job = job.id, kind = %job.kind, attempts = job.attempts, error, "job is dead");
        } else {
            tracing::warn!(job = job.id, kind = %job.kind, attempt = job.attempts, error, "job failed; retrying");
        }
        let error: String = error.chars().take(2000).collect();
        jobs::fail(ctx.db.pool(), job, &error, now, retry_at).await?;
        Ok(())
    }

    /// How long to sleep when idle: until the next due job, at most `poll`.
    async fn idle_wait(&self, ctx: &Context) -> Duration {
        match jobs::next_due(ctx.db.pool(), &self.kinds).await {
            Ok(Some(at)) => until(at, ctx.clock.now()).min(self.poll),
            Ok(None) => self.poll,
            Err(err) => {
                tracing::warn!(error = %err, "reading the job queue failed");
                self.poll
            }
        }
    }
}

fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or(Duration::ZERO)
}

impl Worker for Runner {
    const NAME: &'static str = "job-runner";

    async fn run(self, ctx: Context, cancel: CancellationToken) -> anyhow::Result<()> {
        if self.kinds.is_empty() {
            return Ok(());
        }
        let me = format!("{}/{}", ctx.node, uuid::Uuid::new_v4().simple());
        let mut wake = self.wakeups.subscribe();
        while !cancel.is_cancelled() {
            wake.mark_unchanged();
            let ran = match self.run_batch(&ctx, &me).await {
                Ok(n) => n,
                Err(err) => {
                    tracing::warn!(error = %err, "claiming jobs failed; retrying");
                    0
                }
            };
            if ran > 0 {
                continue;
            }
            let wait = self.idle_wait(&ctx).await;
            tokio::select! {
                () = cancel.cancelled() => {}
                _ = wake.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let b = Backoff {
            base: Duration::from_secs(5),
            max: Duration::from_secs(60),
        };
        assert_eq!(b.delay(1, 0.5), Duration::from_secs(5));
        assert_eq!(b.delay(2, 0.5), Duration::from_secs(10));
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(20));
        assert_eq!(b.delay(10, 0.5), Duration::from_secs(60));
        assert_eq!(b.delay(1, 0.0), Duration::from_secs(4));
        assert!(b.delay(1, 0.999_999) < Duration::from_secs(6));
        assert_eq!(b.delay(1000, 0.5), Duration::from_secs(60));
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
