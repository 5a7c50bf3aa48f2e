//! The background-work runtime: the Postgres job queue (claims, retries
//! with backoff, dead jobs, lapsed leases, NOTIFY wake-ups) and elected
//! periodic ticks, against a real database with a clock the tests move.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tenlyr::{
    storage::jobs,
    workers::{
        Clock, Context, ManualClock, Runtime,
        periodic::{Election, Periodic, Tick},
        queue::{Backoff, Job, JobError, Listener, Queue, Registry, Runner, Wakeups},
    },
};
use tokio::time::Instant;

use crate::helpers::{TestDb, app_db};

fn start() -> DateTime<Utc> {
    "2026-06-01T12:00:00Z".parse().unwrap()
}

async fn context(db: &TestDb, clock: &ManualClock) -> Context {
    Context::new(app_db(&db.url, 4).await, Arc::new(clock.clone()))
}

#[derive(Debug, Serialize, Deserialize)]
struct Flaky {
    /// Attempts that fail before one succeeds.
    failures: usize,
}

/// Fails `failures` times, then succeeds; counts its runs.
#[derive(Debug, Default, Clone)]
struct FlakyJob(Arc<AtomicUsize>);

impl Job for FlakyJob {
    const KIND: &'static str = "test.flaky";
    const MAX_ATTEMPTS: i32 = 3;
    const LEASE: Duration = Duration::from_secs(30);
    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(10),
        max: Duration::from_secs(3600),
    };
    type Payload = Flaky;

    async fn run(&self, _ctx: &Context, payload: Flaky) -> Result<(), JobError> {
        let run = self.0.fetch_add(1, Ordering::SeqCst);
        if run < payload.failures {
            Err(JobError::Retry(format!("failure {}", run + 1)))
        } else {
            Ok(())
        }
    }
}

async fn enqueue(ctx: &Context, failures: usize) -> i64 {
    let queue = Queue::new(ctx.clone());
    let job = queue.job::<FlakyJob>(&Flaky { failures }).unwrap();
    queue.enqueue(&[job]).await.unwrap()[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_retry_with_backoff_then_die_with_their_error() {
    let db = TestDb::migrated().await;
    let clock = ManualClock::new(start());
    let ctx = context(&db, &clock).await;
    let job = FlakyJob::default();
    let runner = Runner::new(Registry::default().with(job.clone()), Wakeups::default());
    let id = enqueue(&ctx, 10).await;

    // Attempt 1 fails: queued again 10 s ± 20 % later, error visible.
    assert_eq!(runner.run_batch(&ctx, "r1").await.unwrap(), 1);
    let row = jobs::get(ctx.db.pool(), id).await.unwrap().unwrap();
    assert_eq!((row.state.as_str(), row.attempts), ("queued", 1), "{row:?}");
    assert_eq!(row.last_error.as_deref(), Some("failure 1"));
    let delay = (row.run_at - start()).num_milliseconds();
    assert!(
        (8_000..=12_000).contains(&delay),
        "first retry after {delay} ms"
    );

    // Not due yet: nothing is claimed.
    assert_eq!(runner.run_batch(&ctx, "r1").await.unwrap(), 0);
    clock.set(row.run_at);
    // Attempt 2 fails: the delay doubles.
    assert_eq!(runner.run_batch(&ctx, "r1").await.unwrap(), 1);
    let second = jobs::get(ctx.db.pool(), id).await.unwrap().unwrap();
    let delay = (second.run_at - row.run_at).num_milliseconds();
    assert_eq!(second.attempts, 2);
    assert!(
        (16_000..=24_000).contains(&delay),
        "second retry after {delay} ms"
    );

    // Attempt 3 was the last: the job stays, dead, with its last error.
    clock.set(second.run_at);
    assert_eq!(runner.run_batch(&ctx, "r1").await.unwrap(), 1);
    let dead = jobs::get(ctx.db.pool(), id).await.unwrap().unwrap();
    assert_eq!((dead.state.as_str(), dead.attempts), ("dead", 3));
    assert_eq!(dead.last_error.as_deref(), Some("failure 3"));
    clock.advance(chrono::Duration::days(1));
    assert_eq!(runner.run_batch(&ctx, "r1").await.unwrap(), 0);
    assert_eq!(job.0.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_job_is_gone_and_a_bad_payload_dies_at_once() {
    let db = TestDb::migrated().await;
    let clock = ManualClock::new(start());
    let ctx = context(&db, &clock).await;
    let runner = Runner::new(
        Registry::default().with(FlakyJob::default()),
        Wakeups::default(),
    );
    let ok = enqueue(&ctx, 1).await;
    let bad = jobs::enqueue(
        ctx.db.pool(),
        &[jobs::NewJob {
            kind: FlakyJob::KIND,
            payload: serde_json::json!({"failures": "many"}),
            max_attempts: 5,
            run_at: start(),
        }],
    )
    .await
    .unwrap()[0];
    assert_eq!(runner.run_batch(&ctx, "r").await.unwrap(), 2);
    let bad_row = jobs::get(ctx.db.pool(), bad).await.unwrap().unwrap();
    assert_eq!((bad_row.state.as_str(), bad_row.attempts), ("dead", 1));
    assert!(
        bad_row.last_error.unwrap().starts_with("bad payload"),
        "a payload that cannot be read is not retried"
    );
    clock.advance(chrono::Duration::minutes(1));
    assert_eq!(runner.run_batch(&ctx, "r").await.unwrap(), 1);
    assert!(
        jobs::get(ctx.db.pool(), ok).await.unwrap().is_none(),
        "a finished job is deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_runner_died_is_claimed_again_when_its_lease_lapses() {
    let db = TestDb::migrated().await;
    let clock = ManualClock::new(start());
    let ctx = context(&db, &clock).await;
    let job = FlakyJob::default();
    let runner = Runner::new(Registry::default().with(job.clone()), Wakeups::default());
    let id = enqueue(&ctx, 0).await;

    // A runner claims it and dies without a word.
    let lost = jobs::claim(
        ctx.db.pool(),
        &[FlakyJob::KIND],
        &[30_000],
        Clock::now(&clock),
        10,
        "dead-runner",
    )
    .await
    .unwrap();
    assert_eq!(lost.len(), 1);
    let row = jobs::get(ctx.db.pool(), id).await.unwrap().unwrap();
    assert_eq!(row.state, "running");

    // Within the lease nobody else takes it.
    clock.advance(chrono::Duration::seconds(29));
    assert_eq!(runner.run_batch(&ctx, "r2").await.unwrap(), 0);
    // After it, another runner does, and finishes it.
    clock.advance(chrono::Duration::seconds(2));
    assert_eq!(runner.run_batch(&ctx, "r2").await.unwrap(), 1);
    assert_eq!(job.0.load(Ordering::SeqCst), 1);
    assert!(jobs::get(ctx.db.pool(), id).await.unwrap().is_none());
    // The dead runner's late acknowledgement changes nothing (fenced by
    // the attempt number).
    assert_eq!(
        jobs::complete(ctx.db.pool(), &[(id, lost[0].attempts)])
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_share_the_queue_without_running_a_job_twice() {
    let db = TestDb::migrated().await;
    let clock = ManualClock::new(start());
    let ctx = context(&db, &clock).await;
    let job = FlakyJob::default();
    let queue = Queue::new(ctx.clone());
    let batch: Vec<_> = (0..200)
        .map(|_| queue.job::<FlakyJob>(&Flaky { failures: 0 }).unwrap())
        .collect();
    queue.enqueue(&batch).await.unwrap();
    let a = Runner::new(Registry::default().with(job.clone()), Wakeups::default());
    let b = Runner::new(Registry::default().with(job.clone()), Wakeups::default());
    let drain = |runner: Runner, name: &'static str| {
        let ctx = ctx.clone();
        async move {
            let mut ran = 0;
            loop {
                match runner.run_batch(&ctx, name).await.unwrap() {
                    0 => return ran,
                    n => ran += n,
                }
            }
        }
    };
    let (ran_a, ran_b) = tokio::join!(drain(a, "a"), drain(b, "b"));
    assert_eq!(ran_a + ran_b, 200);
    assert_eq!(job.0.load(Ordering::SeqCst), 200, "each job ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_runner_wakes_on_notify_not_on_its_poll() {
    let db = TestDb::migrated().await;
    let clock = ManualClock::new(start());
    let ctx = context(&db, &clock).await;
    let job = FlakyJob::default();
    let wakeups = Wakeups::default();
    let runtime = Runtime::new(ctx.clone());
    runtime.spawn(Listener {
        wakeups: wakeups.clone(),
        webhooks: Wakeups::default(),
    });
    let mut runner = Runner::new(Registry::default().with(job.clone()), wakeups);
    runner.poll = Duration::from_secs(60);
    runtime.spawn(runner);
    // Let the runner find the queue empty and go idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for round in 1..=3 {
        let began = Instant::now();
        enqueue(&ctx, 0).await;
        while job.0.load(Ordering::SeqCst) < round {
            assert!(
                began.elapsed() < Duration::from_secs(5),
                "the job was not started by the notification"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(
        runtime
            .shutdown(Instant::now() + Duration::from_secs(5))
            .await
    );
}

/// Counts its ticks; each takes `hold`.
#[derive(Debug, Default, Clone)]
struct Counting {
    ticks: Arc<AtomicUsize>,
    hold: Duration,
}

impl Tick for Counting {
    const NAME: &'static str = "test.counting";

    async fn tick(&self, _ctx: &Context) -> anyhow::Result<()> {
        tokio::time::sleep(self.hold).await;
        self.ticks.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elected_tick_runs_once_per_period_across_replicas() {
    let db = TestDb::migrated().await;
    let clock = ManualClock::new(start());
    let ticks = Counting::default();
    let every = Duration::from_secs(60);
    // Three replicas, each with its own pool and node name.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push((
            context(&db, &clock).await,
            Periodic::new(ticks.clone(), every, Election::Cluster),
        ));
    }
    let tick_all = || async {
        let runs = futures_util::future::join_all(
            replicas
                .iter()
                .map(|(ctx, periodic)| periodic.run_once(ctx)),
        )
        .await;
        runs.into_iter().filter(|r| *r.as_ref().unwrap()).count()
    };
    assert_eq!(tick_all().await, 1, "one replica runs the tick");
    // Later in the same period (another replica's timer): nobody.
    clock.advance(chrono::Duration::seconds(30));
    assert_eq!(tick_all().await, 0);
    // Next period: one again.
    clock.advance(chrono::Duration::seconds(31));
    assert_eq!(tick_all().await, 1);
    assert_eq!(ticks.ticks.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_that_overruns_its_period_is_not_run_twice_at_once() {
    let db = TestDb::migrated().await;
    let clock = ManualClock::new(start());
    let slow = Counting {
        ticks: Arc::default(),
        hold: Duration::from_millis(800),
    };
    let every = Duration::from_secs(60);
    let (a, b) = (context(&db, &clock).await, context(&db, &clock).await);
    let pa = Periodic::new(slow.clone(), every, Election::Cluster);
    let pb = Periodic::new(slow.clone(), every, Election::Cluster);
    let first = tokio::spawn({
        let a = a.clone();
        async move { pa.run_once(&a).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The next tick is due by the clock (55 s of a 60 s period: past the
    // 90 % gap) but the first one still runs and holds its lease (renewed
    // while it runs), so the other replica does not start a second one.
    clock.advance(chrono::Duration::seconds(55));
    assert!(!pb.run_once(&b).await.unwrap());
    assert!(first.await.unwrap());
    // Once it finished, the next tick may run.
    clock.advance(chrono::Duration::seconds(5));
    assert!(pb.run_once(&b).await.unwrap());
    assert_eq!(slow.ticks.load(Ordering::SeqCst), 2);
}
