//! The webhook dispatcher (DESIGN.md §8): claims due deliveries
//! (`storage::webhooks`, `FOR UPDATE SKIP LOCKED`, leased), sends each
//! signed through [`Outbound`], and records every attempt.
//!
//! One dispatcher per process keeps up to `concurrency` requests in
//! flight: it claims as many deliveries as it has room for, and whenever
//! requests complete it records all the finished ones in one statement and
//! claims again (while the inbound gateway is saturated, in paced batches
//! of up to [`PRESSED_BATCH`]). It wakes on `NOTIFY tenlyr_webhooks` (an event committed,
//! deliveries recovered), else when the next retry falls due.
//!
//! After each batch: a 2xx is `delivered`; a 410 disables the endpoint; any
//! other answer (or none) is retried on the schedule of
//! `domain::webhook::SCHEDULE`, honouring `Retry-After`, until it is
//! `failed`. An endpoint whose recent attempts fail too often opens its
//! circuit breaker: nothing is claimed for it (and no retry is used up)
//! until a half-open probe succeeds.

use std::{collections::HashSet, sync::Arc, time::Duration};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{FutureExt as _, StreamExt as _, stream::FuturesUnordered};
use http::{HeaderMap, HeaderValue};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Context, Worker,
    queue::{Wakeups, jitter},
};
use crate::{
    domain::{
        secrets::SecretBox,
        webhook::{
            self as rules, BREAKER_OPEN_FOR, BREAKER_WINDOW, GIVE_UP_AFTER, Verdict, breaker_opens,
        },
    },
    service::outbound::{Answer, Outbound},
    storage::webhooks::{self as repo, Claimed, Finished},
};

/// Longest idle wait without a notification.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Dispatcher {
    pub outbound: Outbound,
    pub secrets: SecretBox,
    pub wakeups: Wakeups,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// How long a claim holds a delivery: the request timeout plus margin.
    pub lease: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The inbound gateway's saturation: while it lasts, forwarding goes
    /// in paced batches ([`PRESSED_BATCH`], [`PRESSED_PACE`]).
    pub pressure: crate::service::inbound::Pressure,
}

/// While the inbound gateway is saturated, forwarding goes in batches of
/// up to this many: a claim and a record of attempts each cost the database
/// about the same whether they hold 4 deliveries or 32 (~2 ms under the
/// benchmark's load), and one request ending at a time made them hold ~4.
/// Half a batch every [`PRESSED_PACE`] beat a whole one every twice that
/// (smaller bursts of forwarding beside the gateway's requests).
pub const PRESSED_BATCH: usize = 32;
/// While the inbound gateway is saturated, at most one claim per this
/// long, and a finished delivery waits at most this long to be recorded
/// with others: forwarding keeps moving (up to ~640/s) and leaves the CPU
/// to acknowledging webhooks; the backlog is sent once the burst is over.
pub const PRESSED_PACE: Duration = Duration::from_millis(50);

/// A sent delivery and what came back.
struct Sent {
    claim: Claimed,
    probe: bool,
    answer: Answer,
}

impl Dispatcher {
    fn lease_ms(&self) -> i64 {
        i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// The headers of one attempt: `Tenlyr-Signature` and the Standard
    /// Webhooks trio, signed with the current secret and, during a
    /// rotation's grace period, the previous one too (new last).
    fn headers(&self, claim: &Claimed, now: DateTime<Utc>) -> Result<HeaderMap, String> {
        let open = |sealed: &[u8]| {
            self.secrets
                .open(sealed)
                .and_then(|s| String::from_utf8(s).ok())
                .ok_or_else(|| {
                    "the endpoint secret cannot be opened with this server's secrets key".to_owned()
                })
        };
        let mut secrets = Vec::with_capacity(2);
        if let (Some(previous), Some(until)) = (&claim.previous_secret, claim.previous_until)
            && until > now
        {
            secrets.push(open(previous)?);
        }
        secrets.push(open(&claim.secret)?);
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let t = now.timestamp();
        let body = claim.body.as_bytes();
        let mut headers = HeaderMap::with_capacity(6);
        let value = |s: String| HeaderValue::try_from(s).map_err(|e| e.to_string());
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            "tenlyr-signature",
            value(rules::tenlyr_signature(&secrets, t, body))?,
        );
        headers.insert("webhook-id", value(claim.event_id.clone())?);
        headers.insert("webhook-timestamp", value(t.to_string())?);
        headers.insert(
            "webhook-signature",
            value(rules::standard_signature(
                &secrets,
                &claim.event_id,
                t,
                body,
            ))?,
        );
        Ok(headers)
    }

    async fn send(&self, ctx: &Context, claim: Claimed, probe: bool) -> Sent {
        let answer = match self.headers(&claim, ctx.clock.now()) {
            Ok(headers) => {
                self.outbound
                    .post(&claim.url, headers, Bytes::from(claim.body.clone()))
                    .await
            }
            Err(error) => Answer {
                status: None,
                latency: Duration::ZERO,
                error: Some(error),
                excerpt: None,
                retry_after: None,
            },
        };
        Sent {
            claim,
            probe,
            answer,
        }
    }

    /// Records a batch of sent deliveries, then moves endpoints: 410s
    /// disable theirs, probes close or reopen their breakers, and a closed
    /// breaker whose window now fails too often opens.
    async fn finish(&self, ctx: &Context, sent: Vec<Sent>) -> Result<(), sqlx::Error> {
        let now = ctx.clock.now();
        let mut gone: Vec<Uuid> = Vec::new();
        let (mut reopen, mut close) = (Vec::new(), Vec::new());
        let mut failing: HashSet<Uuid> = HashSet::new();
        let rows: Vec<Finished> = sent
            .iter()
            .map(|s| {
                let verdict = rules::verdict(s.answer.status);
                let ok = verdict == Verdict::Delivered && s.answer.error.is_none();
                let next_at = match verdict {
                    _ if ok => None,
                    Verdict::Gone => {
                        gone.push(s.claim.endpoint_id);
                        None
                    }
                    _ => next_attempt(&s.claim, &s.answer, now),
                };
                self.metrics.delivery(match (ok, verdict, next_at) {
                    (true, _, _) => "delivered",
                    (false, Verdict::Gone, _) => "gone",
                    (false, _, Some(_)) => "retry",
                    (false, _, None) => "failed",
                });
                if s.probe {
                    if ok { &mut close } else { &mut reopen }.push(s.claim.endpoint_id);
                } else if !ok {
                    failing.insert(s.claim.endpoint_id);
                }
                Finished {
                    id: s.claim.id,
                    claims: s.claim.claims,
                    ok,
                    next_at,
                    status: s.answer.status.map(i32::from),
                    latency_ms: i32::try_from(s.answer.latency.as_millis()).unwrap_or(i32::MAX),
                    error: s.answer.error.clone(),
                    excerpt: s.answer.excerpt.clone(),
                }
            })
            .collect();
        repo::finish(ctx.db.pool(), &rows, &gone, now).await?;
        for id in &gone {
            tracing::warn!(endpoint = %id, "webhook endpoint answered 410 Gone; disabled");
        }
        if !failing.is_empty() {
            let failing: Vec<Uuid> = failing.into_iter().collect();
            for (id, attempts, failures) in
                repo::breaker_window(ctx.db.pool(), &failing, now - BREAKER_WINDOW).await?
            {
                if breaker_opens(attempts, failures) {
                    tracing::warn!(endpoint = %id, attempts, failures, "webhook endpoint failing; circuit breaker open");
                    reopen.push(id);
                }
            }
        }
        repo::set_breakers(ctx.db.pool(), &reopen, &close, now + BREAKER_OPEN_FOR, now).await
    }

    /// Claims what there is room for: due probes first, then due
    /// deliveries.
    async fn claim(
        &self,
        ctx: &Context,
        me: &str,
        room: usize,
        probes: bool,
    ) -> Result<Vec<(Claimed, bool)>, sqlx::Error> {
        let now = ctx.clock.now();
        let mut claimed: Vec<(Claimed, bool)> = Vec::new();
        if probes {
            claimed.extend(
                repo::claim_probes(ctx.db.pool(), now, self.lease_ms(), me)
                    .await?
                    .into_iter()
                    .map(|c| (c, true)),
            );
        }
        let room = room.saturating_sub(claimed.len());
        if room > 0 {
            let max = i32::try_from(room).unwrap_or(i32::MAX);
            claimed.extend(
                repo::claim(ctx.db.pool(), now, self.lease_ms(), max, me)
                    .await?
                    .into_iter()
                    .map(|c| (c, false)),
            );
        }
        Ok(claimed)
    }

    /// How long to sleep with nothing in flight: until the next due
    /// delivery, at most [`POLL`].
    async fn idle_wait(&self, ctx: &Context) -> Duration {
        match repo::next_due(ctx.db.pool()).await {
            Ok(Some(at)) => (at - ctx.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(POLL),
            Ok(None) => POLL,
            Err(err) => {
                tracing::warn!(error = %err, "reading the delivery queue failed");
                POLL
            }
        }
    }
}

/// When to try a failed delivery again, or `None` when it has failed for
/// good: the schedule's next step (a `Retry-After` honoured), never past
/// 72 hours from the schedule's start.
fn next_attempt(claim: &Claimed, answer: &Answer, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let attempt = claim.scheduled_attempts + 1;
    let delay = rules::retry_delay(attempt, jitter(), answer.retry_after)?;
    let deadline = claim.schedule_start + GIVE_UP_AFTER;
    if now >= deadline {
        return None;
    }
    let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    Some(at.min(deadline))
}

impl Worker for Dispatcher {
    const NAME: &'static str = "webhook-dispatcher";

    async fn run(self, ctx: Context, cancel: CancellationToken) -> anyhow::Result<()> {
        let me = format!("{}/{}", ctx.node, Uuid::new_v4().simple());
        let mut wake = self.wakeups.subscribe();
        let mut in_flight = FuturesUnordered::new();
        // Finished deliveries not yet recorded, and since when.
        let mut done: Vec<Sent> = Vec::new();
        let mut done_since = tokio::time::Instant::now();
        let mut want_claim = true;
        let mut last_probe = tokio::time::Instant::now() - POLL;
        let mut last_claim = tokio::time::Instant::now() - PRESSED_PACE;
        let mut idle = POLL;
        while !cancel.is_cancelled() {
            let pressed = self.pressure.active();
            let limit = if pressed {
                self.concurrency.min(PRESSED_BATCH)
            } else {
                self.concurrency
            };
            // Record what finished: at once, or under pressure in batches
            // (half a batch, nothing else in flight, or the pace elapsed).
            if !done.is_empty()
                && (!pressed
                    || done.len() >= limit.div_ceil(2)
                    || in_flight.is_empty()
                    || done_since.elapsed() >= PRESSED_PACE)
            {
                if let Err(err) = self.finish(&ctx, std::mem::take(&mut done)).await {
                    // The leases lapse and the deliveries are sent again.
                    tracing::warn!(error = %err, "recording webhook attempts failed");
                }
                want_claim = true;
            }
            // Under pressure a claim waits for room for half a batch and
            // for its pace.
            let room = limit.saturating_sub(in_flight.len() + done.len());
            let (claim_room, claim_at) = if pressed {
                (limit.div_ceil(2), last_claim + PRESSED_PACE)
            } else {
                (1, last_claim)
            };
            let may_claim = want_claim && room >= claim_room;
            if may_claim && tokio::time::Instant::now() >= claim_at {
                wake.mark_unchanged();
                last_claim = tokio::time::Instant::now();
                let probes = last_probe.elapsed() >= Duration::from_millis(500);
                if probes {
                    last_probe = tokio::time::Instant::now();
                }
                match self.claim(&ctx, &me, room, probes).await {
                    Ok(claimed) => {
                        // A full claim may have left more behind.
                        want_claim = claimed.len() >= room;
                        for (claim, probe) in claimed {
                            in_flight.push(self.send(&ctx, claim, probe));
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "claiming webhook deliveries failed; retrying");
                        want_claim = false;
                    }
                }
                idle = if in_flight.is_empty() && done.is_empty() && !want_claim {
                    self.idle_wait(&ctx).await
                } else {
                    POLL
                };
                continue;
            }
            // Sleep until the next thing due: recording the waiting
            // batch, a paced claim, or the idle poll.
            let mut until = tokio::time::Instant::now() + idle;
            if !done.is_empty() {
                until = until.min(done_since + PRESSED_PACE);
            }
            if may_claim {
                until = until.min(claim_at);
            }
            tokio::select! {
                () = cancel.cancelled() => {}
                Some(first) = in_flight.next(), if !in_flight.is_empty() => {
                    if done.is_empty() {
                        done_since = tokio::time::Instant::now();
                    }
                    done.push(first);
                    while let Some(Some(more)) = in_flight.next().now_or_never() {
                        done.push(more);
                    }
                    want_claim = true;
                }
                _ = wake.changed() => want_claim = true,
                () = tokio::time::sleep_until(until) => want_claim = true,
            }
        }
        done.extend(in_flight.collect::<Vec<Sent>>().await);
        if !done.is_empty()
            && let Err(err) = self.finish(&ctx, done).await
        {
            tracing::warn!(error = %err, "recording webhook attempts at shutdown failed");
        }
        Ok(())
    }
}

/// Deletes platform events (with their deliveries and attempts) older than
/// the retention whose deliveries all finished; elected, hourly.
#[derive(Debug)]
pub struct EventRetention {
    pub retention: chrono::Duration,
}

pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);

impl super::periodic::Tick for EventRetention {
    const NAME: &'static str = "event-retention";

    async fn tick(&self, ctx: &Context) -> anyhow::Result<()> {
        let before = ctx.clock.now() - self.retention;
        let mut total = 0;
        loop {
            let n = repo::purge_events(ctx.db.pool(), before, 1000).await?;
            total += n;
            if n < 1000 {
                break;
            }
        }
        // Inbound events: their log rows and dedup keys (their payloads
        // are platform events, purged above).
        let mut inbound = 0;
        for (db, schema) in ctx.db.data_places().await? {
            loop {
                let n =
                    crate::storage::inbound::purge_events(db.pool(), &schema, before, 1000).await?;
                inbound += n;
                if n < 1000 {
                    break;
                }
            }
        }
        if total + inbound > 0 {
            tracing::info!(
                events = total,
                inbound,
                "forgot webhook events past their retention"
            );
        }
        Ok(())
    }
}
