//! Saved records this process has seen, answered without the database.
//!
//! A saved record never changes: nothing unlocks, resaves or edits it, only
//! its retention ends it (the expiry worker deletes it after `expires_at`).
//! So a get, or a lock of a key whose work is done, can be answered from
//! memory by any replica that saw the record saved or read it saved, as
//! long as `expires_at` has not passed; past it the database decides, as
//! before. The cache is bounded by bytes and forgets the oldest entries
//! first (a record is most often read again right after it was saved: the
//! caller's get, or a retry's lock).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use crate::domain::record::{Record, State};

/// Bytes an entry costs besides its key, fingerprint and data: the map and
/// queue slots, the record's fixed fields, the allocations' headers.
const ENTRY_OVERHEAD: usize = 256;
/// How long before `expires_at` an entry stops answering: another
/// replica's expiry worker, on a clock a little ahead of this one's, may
/// have purged the row (and the key been locked and saved anew) by then.
const SKEW_MARGIN: Duration = Duration::seconds(60);

#[derive(Debug)]
pub struct SavedRecords {
    /// Bytes the entries may take in all; 0 turns the cache off.
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<(Uuid, String), (Arc<Record>, usize)>,
    /// Keys in the order they were stored, oldest first.
    order: VecDeque<(Uuid, String)>,
    bytes: usize,
}

impl SavedRecords {
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget: budget_bytes,
            inner: Mutex::default(),
        }
    }

    /// The saved record of `tenant`'s `key`, if this process holds it and
    /// its retention does not end within [`SKEW_MARGIN`] of `now`.
    pub fn get(&self, tenant: Uuid, key: &str, now: DateTime<Utc>) -> Option<Record> {
        if self.budget == 0 {
            return None;
        }
        let id = (tenant, key.to_owned());
        let held = {
            let inner = self.inner.lock().expect("saved records lock");
            inner.entries.get(&id).map(|(record, _)| Arc::clone(record))
        };
        // Copied outside the lock (the data may be 64 KiB).
        held.filter(|record| record.expires_at > now + SKEW_MARGIN)
            .map(|record| (*record).clone())
    }

    /// Keeps `record` if it is saved (a locked record may still change) and
    /// not near the end of its retention at `now`.
    pub fn remember(&self, tenant: Uuid, record: &Record, now: DateTime<Utc>) {
        if record.state != State::Saved
            || self.budget == 0
            || record.expires_at <= now + SKEW_MARGIN
        {
            return;
        }
        // The key is held three times (map, queue, record).
        let size = ENTRY_OVERHEAD
            + 3 * record.key.len()
            + record.fingerprint.as_ref().map_or(0, String::len)
            + record.data.as_ref().map_or(0, json_size);
        if size > self.budget {
            return;
        }
        let id = (tenant, record.key.clone());
        let record = Arc::new(record.clone());
        let mut inner = self.inner.lock().expect("saved records lock");
        if inner.entries.contains_key(&id) {
            return;
        }
        while inner.bytes + size > self.budget {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some((_, freed)) = inner.entries.remove(&oldest) {
                inner.bytes -= freed;
            }
        }
        inner.bytes += size;
        inner.order.push_back(id.clone());
        inner.entries.insert(id, (record, size));
    }

    /// Entries held and the bytes they are counted at.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("saved records lock");
        (inner.entries.len(), inner.bytes)
    }
}

/// About what `value` takes in memory, on the generous side: per value its
/// node, per string its header and heap block (rounded up to 16 bytes),
/// per object entry the map's node share besides the key (without
/// serializing it).
fn json_size(value: &serde_json::Value) -> usize {
    const NODE: usize = 32;
    const STRING: usize = 24;
    const ENTRY: usize = 64;
    let text = |s: &str| STRING + s.len().div_ceil(16) * 16;
    NODE + match value {
        serde_json::Value::String(s) => text(s),
        serde_json::Value::Array(items) => items.iter().map(json_size).sum(),
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| ENTRY + text(k) + json_size(v))
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn record(key: &str, state: State, expires_at: DateTime<Utc>) -> Record {
        let at = DateTime::<Utc>::UNIX_EPOCH;
        Record {
            key: key.into(),
            state,
            lock_token: Uuid::new_v4(),
            fingerprint: None,
            locked_until: at,
            data: Some(serde_json::json!({"chargeId": "ch_1", "amount": 1250})),
            created_at: at,
            updated_at: at,
            expires_at,
        }
    }

    #[test]
    fn only_saved_records_are_kept_and_only_until_their_retention_ends() {
        let cache = SavedRecords::new(1 << 20);
        let (tenant, now) = (Uuid::new_v4(), Utc::now());
        let until = now + Duration::hours(24);
        cache.remember(tenant, &record("locked", State::Locked, until), now);
        cache.remember(tenant, &record("saved", State::Saved, until), now);
        assert_eq!(cache.get(tenant, "locked", now), None);
        let held = cache.get(tenant, "saved", now).expect("saved record held");
        assert_eq!(held.state, State::Saved);
        assert_eq!(held.data.unwrap()["chargeId"], "ch_1");
        // Another tenant's key of the same name is another record.
        assert_eq!(cache.get(Uuid::new_v4(), "saved", now), None);
        // Near or past its retention's end the database decides (another
        // replica's clock may be ahead), and such a record is not taken.
        assert_eq!(
            cache.get(tenant, "saved", until - Duration::seconds(30)),
            None
        );
        assert_eq!(cache.get(tenant, "saved", until), None);
        cache.remember(
            tenant,
            &record("ending", State::Saved, now + Duration::seconds(30)),
            now,
        );
        assert_eq!(cache.usage().0, 1);
    }

    #[test]
    fn the_oldest_entries_go_first_when_the_budget_is_spent() {
        let (tenant, now) = (Uuid::new_v4(), Utc::now());
        let until = now + Duration::hours(1);
        // The key counts three times (map, queue, record).
        let one = ENTRY_OVERHEAD
            + 3 * 2
            + json_size(record("k0", State::Saved, until).data.as_ref().unwrap());
        let cache = SavedRecords::new(3 * one);
        for i in 0..5 {
            cache.remember(tenant, &record(&format!("k{i}"), State::Saved, until), now);
        }
        assert_eq!(cache.usage(), (3, 3 * one));
        let held: Vec<bool> = (0..5)
            .map(|i| cache.get(tenant, &format!("k{i}"), now).is_some())
            .collect();
        assert_eq!(held, [false, false, true, true, true]);
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let cache = SavedRecords::new(0);
        let (tenant, now) = (Uuid::new_v4(), Utc::now());
        cache.remember(
            tenant,
            &record("k", State::Saved, now + Duration::hours(1)),
            now,
        );
        assert_eq!(cache.get(tenant, "k", now), None);
        assert_eq!(cache.usage(), (0, 0));
    }
}
