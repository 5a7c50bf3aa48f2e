//! Idempotent records: lock → save → get (DESIGN.md §12). A caller locks
//! a key before doing work once; a retry finds the lock held (409 with
//! `Retry-After`) or the saved result, which it returns instead of doing
//! the work again.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{
    domain::record::{self as rules, Record, RecordError, State},
    error::{ApiError, ErrorCode, FieldViolation},
    storage::{
        Db,
        records::{self as repo, Outcome, Write},
    },
    workers::{SharedClock, record_commit::RecordCommitWorker},
};

use super::saved_records::SavedRecords;

/// Writes one commit takes at most.
pub const MAX_COMMIT: usize = 512;
/// Writes that may wait for the committer before callers wait to enqueue.
const QUEUE: usize = 4096;

/// What a lock call comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum LockOutcome {
    /// This call holds the lock: save with `record.lock_token` before
    /// `record.locked_until`.
    Locked(Record),
    /// The key's work was done: here is its result.
    Saved(Record),
}

#[derive(Clone, Debug)]
pub struct Records {
    /// To the committers: every call goes through one, the same one for
    /// every call on a key (so a process never has two batches wait on
    /// each other's row locks, and a key's calls keep their order).
    writes: Arc<[mpsc::Sender<Submission>]>,
    /// Saved records answered from memory (they never change).
    saved: Arc<SavedRecords>,
    clock: SharedClock,
}

/// Committers per process: while one batch waits for its commit (the WAL
/// flush), the next is already running in another.
pub fn committers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
}

/// What a caller asks of the committer; times are taken at commit.
#[derive(Debug)]
pub(crate) enum WriteRequest {
    Lock {
        tenant: Uuid,
        key: String,
        fingerprint: Option<String>,
        lease: Duration,
    },
    Save {
        tenant: Uuid,
        key: String,
        token: Uuid,
        data: serde_json::Value,
    },
    Get {
        tenant: Uuid,
        key: String,
    },
}

/// The record after a write, whether the write took effect, and the time
/// it was judged at.
type Written = (Option<(bool, Record)>, DateTime<Utc>);

#[derive(Debug)]
pub(crate) struct Submission {
    request: WriteRequest,
    reply: oneshot::Sender<Result<Written, ApiError>>,
}

/// Runs the writes that queued while its previous commit ran as one batch
/// (`storage::records::write_batch`): one round trip and one WAL flush for
/// many locks and saves, each answered after the commit.
#[derive(Clone, Debug)]
pub struct Committer {
    db: Db,
    clock: SharedClock,
    /// How long a saved record is kept.
    retention: Duration,
}

impl Committer {
    /// The storage write for `request`, with times taken at `now`.
    fn write(&self, request: &WriteRequest, now: DateTime<Utc>) -> Write {
        match request {
            WriteRequest::Lock {
                tenant,
                key,
                fingerprint,
                lease,
            } => Write::Lock {
                tenant: *tenant,
                key: key.clone(),
                token: Uuid::new_v4(),
                fingerprint: fingerprint.clone(),
                lease_until: now + *lease,
                forget_at: now + *lease + self.retention,
            },
            WriteRequest::Save {
                tenant,
                key,
                token,
                data,
            } => Write::Save {
                tenant: *tenant,
                key: key.clone(),
                token: *token,
                data: data.clone(),
                forget_at: now + self.retention,
            },
            WriteRequest::Get { tenant, key } => Write::Get {
                tenant: *tenant,
                key: key.clone(),
            },
        }
    }

    pub(crate) async fn commit(&self, group: Vec<Submission>) {
        let now = self.clock.now();
        let writes: Vec<Write> = group.iter().map(|s| self.write(&s.request, now)).collect();
        let (outcomes, error) = repo::write_batch(&self.db, &writes, now).await;
        let error = error.map(ApiError::from);
        let alone = group.len() == 1;
        for (s, outcome) in group.into_iter().zip(outcomes) {
            let reply = match outcome {
                Outcome::Done(found) => Ok((found, now)),
                // Refused with its neighbours and rolled back: one bad
                // write must not fail the others, so each is tried alone,
                // at a fresh time.
                Outcome::Refused if !alone => {
                    let now = self.clock.now();
                    let write = self.write(&s.request, now);
                    let (mut done, err) =
                        repo::write_batch(&self.db, std::slice::from_ref(&write), now).await;
                    match (done.pop(), err) {
                        (Some(Outcome::Done(found)), _) => Ok((found, now)),
                        (_, Some(err)) => Err(ApiError::from(err)),
                        (_, None) => Err(ApiError::internal("a record write failed")),
                    }
                }
                Outcome::Refused | Outcome::Failed => Err(error
                    .clone()
                    .unwrap_or_else(|| ApiError::internal("a record write failed"))),
            };
            let _ = s.reply.send(reply);
        }
    }
}

impl WriteRequest {
    /// The record it is about.
    fn key(&self) -> (Uuid, &str) {
        match self {
            Self::Lock { tenant, key, .. }
            | Self::Save { tenant, key, .. }
            | Self::Get { tenant, key } => (*tenant, key),
        }
    }
}

impl From<RecordError> for ApiError {
    fn from(err: RecordError) -> Self {
        let message = err.to_string();
        match err {
            RecordError::NotFound => ApiError::not_found("Record not found"),
            RecordError::Locked { retry_after } => {
                let mut api =
                    ApiError::new(ErrorCode::AlreadyExists, message).with_reason("RECORD_LOCKED");
                api.retry_after = retry_after
                    .to_std()
                    .ok()
                    .map(|d| std::time::Duration::from_secs(d.as_secs_f64().ceil() as u64));
                api
            }
            // 422 naming the field (the IETF Idempotency-Key draft's
            // answer to a key reused for another request).
            RecordError::FingerprintMismatch => ApiError::validation(vec![FieldViolation {
                field: "fingerprint".into(),
                description: message,
            }]),
            RecordError::StaleToken => {
                ApiError::new(ErrorCode::AlreadyExists, message).with_reason("LOCK_TOKEN_STALE")
            }
            RecordError::AlreadySaved => {
                ApiError::new(ErrorCode::AlreadyExists, message).with_reason("RECORD_ALREADY_SAVED")
            }
        }
    }
}

fn invalid(violations: Vec<FieldViolation>) -> ApiError {
    ApiError::validation(violations)
}

impl Records {
    /// The service and the worker that commits its writes; saved records
    /// are kept in memory up to `cache_bytes` (0: not at all).
    pub fn new(
        db: Db,
        clock: SharedClock,
        retention: Duration,
        cache_bytes: usize,
    ) -> (Self, RecordCommitWorker) {
        let (writes, shards): (Vec<_>, Vec<_>) =
            (0..committers()).map(|_| mpsc::channel(QUEUE)).unzip();
        let committer = Committer {
            db,
            clock: clock.clone(),
            retention,
        };
        let records = Self {
            writes: writes.into(),
            saved: Arc::new(SavedRecords::new(cache_bytes)),
            clock,
        };
        (records, RecordCommitWorker { shards, committer })
    }

    async fn write(&self, request: WriteRequest) -> Result<Written, ApiError> {
        let (tenant, key) = request.key();
        let shard = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (tenant, key).hash(&mut h);
            (h.finish() % self.writes.len() as u64) as usize
        };
        let (reply, answer) = oneshot::channel();
        self.writes[shard]
            .send(Submission { request, reply })
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
        answer
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down"))?
    }

    /// Takes the lock on `key`, or returns the saved record.
    pub async fn lock(
        &self,
        tenant: Uuid,
        key: &str,
        ttl_seconds: i32,
        fingerprint: &str,
    ) -> Result<LockOutcome, ApiError> {
        let (key, lease, fingerprint) = match (
            rules::key(key),
            rules::lease(ttl_seconds),
            rules::fingerprint(fingerprint),
        ) {
            (Ok(k), Ok(l), Ok(f)) => (k, l, f),
            (k, l, f) => {
                let violations = [k.err(), l.err(), f.err()].into_iter().flatten().collect();
                return Err(invalid(violations));
            }
        };
        // The work is done: the saved result, as the database would answer.
        let now = self.clock.now();
        if let Some(record) = self.saved.get(tenant, key, now) {
            rules::refuse_lock(&record, fingerprint, now)?;
            return Ok(LockOutcome::Saved(record));
        }
        // A record that vanished between the two statements of the call
        // (expired and purged) is simply locked again.
        for _ in 0..2 {
            let (found, now) = self
                .write(WriteRequest::Lock {
                    tenant,
                    key: key.to_owned(),
                    fingerprint: fingerprint.map(str::to_owned),
                    lease,
                })
                .await?;
            let Some((took, record)) = found else {
                continue;
            };
            if took {
                return Ok(LockOutcome::Locked(record));
            }
            rules::refuse_lock(&record, fingerprint, now)?;
            self.saved.remember(tenant, &record, self.clock.now());
            return Ok(LockOutcome::Saved(record));
        }
        Err(RecordError::Locked {
            retry_after: Duration::seconds(1),
        }
        .into())
    }

    /// Stores `data` under the current lock token; the record is then
    /// `saved` until the retention ends.
    pub async fn save(
        &self,
        tenant: Uuid,
        key: &str,
        lock_token: &str,
        data: serde_json::Value,
    ) -> Result<Record, ApiError> {
        let token = lock_token.parse::<Uuid>().map_err(|_| FieldViolation {
            field: "lockToken".into(),
            description: "must be a lock token that Lock returned".into(),
        });
        let (key, token) = match (rules::key(key), token) {
            (Ok(key), Ok(token)) => (key, token),
            (k, t) => return Err(invalid([k.err(), t.err()].into_iter().flatten().collect())),
        };
        let text = serde_json::to_vec(&data).unwrap_or_default();
        // PostgreSQL's jsonb cannot hold a NUL; refused here, it cannot
        // fail the batch this save would join.
        if holds_nul(&data) {
            return Err(ApiError::bad_field(
                "data",
                "must not contain NUL characters (\\u0000)",
            ));
        }
        let size = if text.is_empty() {
            usize::MAX
        } else {
            text.len()
        };
        if size > rules::MAX_DATA_BYTES {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "data must be at most {} bytes of JSON",
                    rules::MAX_DATA_BYTES
                ),
            )
            .with_violation("data", format!("is {size} bytes of JSON")));
        }
        let (found, _) = self
            .write(WriteRequest::Save {
                tenant,
                key: key.to_owned(),
                token,
                data,
            })
            .await?;
        let (saved_now, record) = found.ok_or(RecordError::NotFound)?;
        rules::refuse_save(&record, saved_now)?;
        self.saved.remember(tenant, &record, self.clock.now());
        Ok(record)
    }

    pub async fn get(&self, tenant: Uuid, key: &str) -> Result<Record, ApiError> {
        let key = rules::key(key).map_err(|v| invalid(vec![v]))?;
        if let Some(record) = self.saved.get(tenant, key, self.clock.now()) {
            return Ok(record);
        }
        let (found, _) = self
            .write(WriteRequest::Get {
                tenant,
                key: key.to_owned(),
            })
            .await?;
        let (_, record) = found.ok_or(RecordError::NotFound)?;
        self.saved.remember(tenant, &record, self.clock.now());
        Ok(record)
    }
}

/// Whether any string (or object key) in `value` holds a NUL character.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// The state a lock outcome reports.
impl LockOutcome {
    pub fn state(&self) -> State {
        match self {
            Self::Locked(_) => State::Locked,
            Self::Saved(_) => State::Saved,
        }
    }
}
