//! Idempotent records: lock → save → get (DESIGN.md §12). A caller locks
//! a key before doing work once; a retry finds the lock held (409 with
//! `Retry-After`) or the saved result, which it returns instead of doing
//! the work again.

use chrono::Duration;
use uuid::Uuid;

use crate::{
    domain::record::{self as rules, Record, RecordError, State},
    error::{ApiError, ErrorCode, FieldViolation},
    storage::{Db, records as repo},
    workers::SharedClock,
};

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
    db: Db,
    clock: SharedClock,
    /// How long a saved record is kept.
    retention: Duration,
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
    pub fn new(db: Db, clock: SharedClock, retention: Duration) -> Self {
        Self {
            db,
            clock,
            retention,
        }
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
        // A record that vanished between the two statements of the call
        // (expired and purged) is simply locked again.
        for _ in 0..2 {
            let now = self.clock.now();
            let lease_until = now + lease;
            let found = repo::lock(
                self.db.pool(),
                tenant,
                key,
                Uuid::new_v4(),
                fingerprint,
                now,
                lease_until,
                lease_until + self.retention,
            )
            .await?;
            let Some((took, record)) = found else {
                continue;
            };
            if took {
                return Ok(LockOutcome::Locked(record));
            }
            rules::refuse_lock(&record, fingerprint, now)?;
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
        let size = serde_json::to_vec(&data).map_or(usize::MAX, |v| v.len());
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
        let now = self.clock.now();
        let (saved_now, record) = repo::save(
            self.db.pool(),
            tenant,
            key,
            token,
            &data,
            now,
            now + self.retention,
        )
        .await?
        .ok_or(RecordError::NotFound)?;
        rules::refuse_save(&record, saved_now)?;
        Ok(record)
    }

    pub async fn get(&self, tenant: Uuid, key: &str) -> Result<Record, ApiError> {
        let key = rules::key(key).map_err(|v| invalid(vec![v]))?;
        let record = repo::get(self.db.pool(), tenant, key)
            .await?
            .ok_or(RecordError::NotFound)?;
        Ok(record)
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
