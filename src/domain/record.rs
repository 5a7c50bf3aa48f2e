//! Idempotent records (`/v1/record`, DESIGN.md §12): what a key, a lease,
//! a fingerprint and saved data may be, and what a lock or save attempt
//! comes to given the record as it stands.

use chrono::{DateTime, Duration, Utc};

use crate::error::FieldViolation;

/// A lease when the caller names none.
pub const DEFAULT_LEASE: Duration = Duration::seconds(60);
/// The longest lease a caller may ask for.
pub const MAX_LEASE_SECONDS: i32 = 3600;
pub const MAX_KEY_LEN: usize = 255;
pub const MAX_FINGERPRINT_LEN: usize = 255;
/// The largest saved `data`, as JSON text.
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// How long a saved record is kept by default (as Stripe keeps
/// idempotency keys).
pub const DEFAULT_RETENTION: Duration = Duration::hours(24);

fn violation(field: &str, description: &str) -> FieldViolation {
    FieldViolation {
        field: field.into(),
        description: description.into(),
    }
}

/// Printable ASCII without spaces: what a client can put in a URL path
/// segment, a header and a log line without surprises.
fn printable(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic())
}

/// A record key: 1 to 255 printable ASCII characters, no spaces.
pub fn key(raw: &str) -> Result<&str, FieldViolation> {
    if raw.is_empty() || raw.len() > MAX_KEY_LEN {
        return Err(violation("key", "must be 1 to 255 characters"));
    }
    if !printable(raw) {
        return Err(violation(
            "key",
            "must be printable ASCII without spaces or control characters",
        ));
    }
    Ok(raw)
}

/// The lease of a lock: `ttlSeconds` 1 to 3600, 0 (unset) for 60 s.
pub fn lease(ttl_seconds: i32) -> Result<Duration, FieldViolation> {
    match ttl_seconds {
        0 => Ok(DEFAULT_LEASE),
        1..=MAX_LEASE_SECONDS => Ok(Duration::seconds(i64::from(ttl_seconds))),
        _ => Err(violation("ttlSeconds", "must be between 1 and 3600")),
    }
}

/// An optional fingerprint of the request a key stands for.
pub fn fingerprint(raw: &str) -> Result<Option<&str>, FieldViolation> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_FINGERPRINT_LEN || !printable(raw) {
        return Err(violation(
            "fingerprint",
            "must be at most 255 printable ASCII characters",
        ));
    }
    Ok(Some(raw))
}

/// The state of a record, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Locked,
    Saved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Locked => "locked",
            Self::Saved => "saved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "locked" => Some(Self::Locked),
            "saved" => Some(Self::Saved),
            _ => None,
        }
    }
}

/// A record as stored (the token stays on the server side).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: String,
    pub state: State,
    pub lock_token: uuid::Uuid,
    pub fingerprint: Option<String>,
    pub locked_until: DateTime<Utc>,
    pub data: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Why a lock or save was refused, or what it found instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    #[error("record not found")]
    NotFound,
    #[error("key is locked by another request; retry after the lease ends")]
    Locked { retry_after: Duration },
    #[error("key was used with a different fingerprint")]
    FingerprintMismatch,
    #[error("lock token is not the current one, or its lease ended")]
    StaleToken,
    #[error("record was already saved with other data")]
    AlreadySaved,
}

/// What a lock attempt that did not take the lock comes to, given the
/// record as it stands.
pub fn refuse_lock(
    record: &Record,
    fingerprint: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), RecordError> {
    if record.fingerprint.as_deref() != fingerprint {
        return Err(RecordError::FingerprintMismatch);
    }
    match record.state {
        // The caller returns the stored result instead of working again.
        State::Saved => Ok(()),
        State::Locked => Err(RecordError::Locked {
            retry_after: (record.locked_until - now).max(Duration::seconds(1)),
        }),
    }
}

/// What a save that did not store comes to: done already (same token and
/// data), or refused.
pub fn refuse_save(record: &Record, saved_now: bool) -> Result<(), RecordError> {
    match (record.state, saved_now) {
        (_, true) => Ok(()),
        (State::Saved, false) => Err(RecordError::AlreadySaved),
        (State::Locked, false) => Err(RecordError::StaleToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: State, fingerprint: Option<&str>, locked_until: DateTime<Utc>) -> Record {
        Record {
            key: "k".into(),
            state,
            lock_token: uuid::Uuid::nil(),
            fingerprint: fingerprint.map(str::to_owned),
            locked_until,
            data: None,
            created_at: locked_until,
            updated_at: locked_until,
            expires_at: locked_until,
        }
    }

    #[test]
    fn keys_leases_and_fingerprints_are_bounded() {
        assert!(key("order-42:charge").is_ok());
        for bad in ["", "has space", "tab\t", "é", &"x".repeat(256)] {
            assert_eq!(key(bad).unwrap_err().field, "key", "{bad:?}");
        }
        assert_eq!(lease(0).unwrap(), Duration::seconds(60));
        assert_eq!(lease(3600).unwrap(), Duration::seconds(3600));
        for bad in [-1, 3601, i32::MAX] {
            assert_eq!(lease(bad).unwrap_err().field, "ttlSeconds");
        }
        assert_eq!(fingerprint("").unwrap(), None);
        assert_eq!(fingerprint("sha256:ab").unwrap(), Some("sha256:ab"));
        assert!(fingerprint("a b").is_err());
    }

    #[test]
    fn a_refused_lock_says_why() {
        let now = Utc::now();
        let held = record(State::Locked, Some("f1"), now + Duration::seconds(20));
        assert_eq!(
            refuse_lock(&held, Some("f1"), now),
            Err(RecordError::Locked {
                retry_after: Duration::seconds(20)
            })
        );
        assert_eq!(
            refuse_lock(&held, Some("f2"), now),
            Err(RecordError::FingerprintMismatch)
        );
        assert_eq!(
            refuse_lock(&held, None, now),
            Err(RecordError::FingerprintMismatch)
        );
        let saved = record(State::Saved, Some("f1"), now);
        assert_eq!(refuse_lock(&saved, Some("f1"), now), Ok(()));
        assert_eq!(
            refuse_lock(&saved, Some("f2"), now),
            Err(RecordError::FingerprintMismatch)
        );
        assert_eq!(refuse_save(&saved, false), Err(RecordError::AlreadySaved));
        assert_eq!(refuse_save(&held, false), Err(RecordError::StaleToken));
        assert_eq!(refuse_save(&saved, true), Ok(()));
    }
}
