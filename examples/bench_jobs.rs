//! The job queue's speed (`scripts/bench.sh jobs`), each figure beside a
//! reference measured in the same run on the same database:
//!
//! - throughput: trivial jobs enqueued (1,000 per statement) and completed
//!   by two runners, against the same rows inserted and deleted by plain
//!   SQL with no queue at all;
//! - start latency on an idle system: one job enqueued at a time, from the
//!   enqueue call to the handler starting, against a bare `NOTIFY` from one
//!   connection to a `LISTEN`ing one.
//!
//! BENCH_JOBS (default 50,000) sets the throughput run's size.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Bench, report};
use serde::{Deserialize, Serialize};
use sqlx::{Connection, postgres::PgListener};
use tenlyr::workers::{
    Context, Runtime, SystemClock,
    queue::{Job, JobError, Listener, Queue, Registry, Runner, Wakeups},
};
use tokio::sync::mpsc;

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    /// Microseconds since the Unix epoch when it was enqueued (latency
    /// runs); 0 in throughput runs.
    sent_us: i64,
}

/// Does nothing but count, or report its start latency.
#[derive(Clone)]
struct Trivial {
    done: Arc<AtomicUsize>,
    started: mpsc::UnboundedSender<Duration>,
}

impl Job for Trivial {
    const KIND: &'static str = "bench.trivial";
    type Payload = Payload;

    async fn run(&self, _ctx: &Context, payload: Payload) -> Result<(), JobError> {
        if payload.sent_us > 0 {
            let now = chrono::Utc::now().timestamp_micros();
            let _ = self
                .started
                .send(Duration::from_micros((now - payload.sent_us).max(0) as u64));
        }
        self.done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn jobs() -> usize {
    std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bench = Bench::start().await?;
    let ctx = Context::new(bench.db.clone(), Arc::new(SystemClock));
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let job = Trivial {
        done: Arc::default(),
        started: started_tx,
    };
    let runtime = Runtime::new(ctx.clone());
    let wakeups = Wakeups::default();
    runtime.spawn(Listener {
        wakeups: wakeups.clone(),
        webhooks: Wakeups::default(),
    });
    for _ in 0..2 {
        runtime.spawn(Runner::new(
            Registry::default().with(job.clone()),
            wakeups.clone(),
        ));
    }
    let queue = Queue::new(ctx.clone());
    println!("tenlyr job queue benchmark: 2 runners, 32 jobs per claim");

    // Throughput.
    let total = jobs();
    let began = Instant::now();
    for chunk in 0..total.div_ceil(1000) {
        let n = 1000.min(total - chunk * 1000);
        let batch: Vec<_> = (0..n)
            .map(|_| queue.job::<Trivial>(&Payload { sent_us: 0 }))
            .collect::<Result<_, _>>()?;
        queue.enqueue(&batch).await?;
    }
    let enqueued = began.elapsed();
    while job.done.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let completed = began.elapsed();
    println!(
        "{:<52} {total} jobs: enqueued in {:.2} s, all completed in {:.2} s = {:>8.0} jobs/s",
        "queue: enqueue + claim + run + complete",
        enqueued.as_secs_f64(),
        completed.as_secs_f64(),
        total as f64 / completed.as_secs_f64()
    );
    let plain = plain_sql(&bench.url, total).await?;
    println!(
        "{:<52} {total} rows: {:.2} s = {:>8.0} rows/s",
        "reference: the same rows inserted and deleted by plain SQL",
        plain.as_secs_f64(),
        total as f64 / plain.as_secs_f64()
    );

    // Start latency on an idle system.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rounds = 300;
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let job = queue.job::<Trivial>(&Payload {
            sent_us: chrono::Utc::now().timestamp_micros(),
        })?;
        queue.enqueue(&[job]).await?;
        latencies.push(started_rx.recv().await.expect("the job started"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report("queue: enqueue -> handler start, idle", latencies);
    report(
        "reference: NOTIFY -> LISTEN receipt, idle",
        notify_round_trips(&bench.url, rounds).await?,
    );

    runtime
        .shutdown(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    bench.finish().await
}

/// The floor under the queue's throughput: the same rows inserted 1,000
/// per statement and deleted 32 at a time by id, on one connection.
async fn plain_sql(url: &str, total: usize) -> anyhow::Result<Duration> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    sqlx::query(
        "CREATE TEMPORARY TABLE plain_jobs (LIKE jobs INCLUDING DEFAULTS INCLUDING INDEXES)",
    )
    .execute(&mut conn)
    .await?;
    let began = Instant::now();
    for _ in 0..total.div_ceil(1000) {
        let ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO plain_jobs (id, kind, payload, max_attempts, run_at) \
             SELECT g, 'bench.plain', '{\"sentUs\":0}', 10, now() FROM generate_series(1, 1000) g RETURNING id",
        )
        .fetch_all(&mut conn)
        .await?;
        for chunk in ids.chunks(32) {
            sqlx::query("DELETE FROM plain_jobs WHERE id = ANY($1)")
                .bind(chunk)
                .execute(&mut conn)
                .await?;
        }
    }
    Ok(began.elapsed())
}

/// Time from a `NOTIFY` (autocommitted on one connection) to its receipt on
/// another that `LISTEN`s.
async fn notify_round_trips(url: &str, rounds: usize) -> anyhow::Result<Vec<Duration>> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen("bench_reference").await?;
    let mut sender = sqlx::PgConnection::connect(url).await?;
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let began = Instant::now();
        sqlx::query("SELECT pg_notify('bench_reference', 'x')")
            .execute(&mut sender)
            .await?;
        listener.recv().await?;
        samples.push(began.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(samples)
}
