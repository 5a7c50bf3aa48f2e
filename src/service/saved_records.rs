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
    sync::Mutex,
};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::record::{Record, State};

/// Bytes an entry costs besides its key and data: the map and queue slots,
/// the record's fixed fields.
const ENTRY_OVERHEAD: usize = 256;

#[derive(Debug)]
pub struct SavedRecords {
    /// Bytes the entries may take in all; 0 turns the cache off.
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<(Uuid, String), (Record, usize)>,
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
    /// its retention has not ended at `now`.
    pub fn get(&self, tenant: Uuid, key: &str, now: DateTime<Utc>) -> Option<Record> {
        if self.budget == 0 {
            return None;
        }
        let inner = self.inner.lock().expect("saved records lock");
        inner
            .entries
            .get(&(tenant, key.to_owned()))
            .map(|(record, _)| record)
            .filter(|record| record.expires_at > now)
            .cloned()
    }

    /// Keeps `record` if it is saved (a locked record may still change).
    pub fn remember(&self, tenant: Uuid, record: &Record) {
        if record.state != State::Saved || self.budget == 0 {
            return;
        }
        let size = ENTRY_OVERHEAD + record.key.len() + record.data.as_ref().map_or(0, json_size);
        if size > self.budget {
            return;
        }
        let id = (tenant, record.key.clone());
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
        inner.entries.insert(id, (record.clone(), size));
    }

    /// Entries held and the bytes they are counted at.
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.inner.lock().expect("saved records lock");
        (inner.entries.len(), inner.bytes)
    }
}

/// About what `value` takes in memory: its text plus a node's overhead for
/// each value (without serializing it).
fn json_size(value: &serde_json::Value) -> usize {
    const NODE: usize = 32;
    NODE + match value {
        serde_json::Value::String(s) => s.len(),
        serde_json::Value::Array(items) => items.iter().map(json_size).sum(),
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| k.len() + json_size(v)).sum(),
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
        cache.remember(tenant, &record("locked", State::Locked, until));
        cache.remember(tenant, &record("saved", State::Saved, until));
        assert_eq!(cache.get(tenant, "locked", now), None);
        let held = cache.get(tenant, "saved", now).expect("saved record held");
        assert_eq!(held.state, State::Saved);
        assert_eq!(held.data.unwrap()["chargeId"], "ch_1");
        // Another tenant's key of the same name is another record.
        assert_eq!(cache.get(Uuid::new_v4(), "saved", now), None);
        // Past its retention the database decides.
        assert_eq!(cache.get(tenant, "saved", until), None);
    }

    #[test]
    fn the_oldest_entries_go_first_when_the_budget_is_spent() {
        let (tenant, now) = (Uuid::new_v4(), Utc::now());
        let until = now + Duration::hours(1);
        let one = ENTRY_OVERHEAD
            + 2
            + json_size(record("k0", State::Saved, until).data.as_ref().unwrap());
        let cache = SavedRecords::new(3 * one);
        for i in 0..5 {
            cache.remember(tenant, &record(&format!("k{i}"), State::Saved, until));
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
        cache.remember(tenant, &record("k", State::Saved, now + Duration::hours(1)));
        assert_eq!(cache.get(tenant, "k", now), None);
        assert_eq!(cache.usage(), (0, 0));
    }
}
