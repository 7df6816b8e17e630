//! The in-process session store: a sharded `DashMap`, no global lock.
//!
//! Invariant: no `Ref`/`RefMut` of the map is ever held across an `.await` (every
//! method here is synchronous inside its future), so a slow caller cannot block a shard.
//! Counters are kept in atomics so `max_sessions` and the metrics never walk the map.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use super::{SessionCounts, SessionKey, SessionKind, SessionRecord, SessionStore, StoreError, StoredSession};

/// Sessions in memory, bounded by `max_sessions`.
#[derive(Debug)]
pub struct MemoryStore {
    map: DashMap<SessionKey, Entry, KeyHasher>,
    max_sessions: usize,
    guests: AtomicUsize,
    shoppers: AtomicUsize,
}

#[derive(Debug)]
struct Entry {
    record: Arc<SessionRecord>,
    last_seen: AtomicU64,
}

/// Keys are SHA-256 outputs of random ids, already uniform: their first eight bytes are
/// a perfectly good hash, and SipHash over 32 bytes per lookup would be wasted work.
/// Only ids tokengate generated are ever inserted, so a client cannot grind collisions.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHasher;

/// The hasher [`KeyHasher`] builds.
#[derive(Debug, Default)]
pub struct KeyHash(u64);

impl BuildHasher for KeyHasher {
    type Hasher = KeyHash;
    fn build_hasher(&self) -> KeyHash {
        KeyHash(0)
    }
}

impl Hasher for KeyHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as a length prefix then the bytes; fold whatever comes.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

impl MemoryStore {
    /// An empty store holding at most `max_sessions` sessions.
    pub fn new(max_sessions: usize) -> Self {
        Self {
            map: DashMap::with_hasher(KeyHasher),
            max_sessions,
            guests: AtomicUsize::new(0),
            shoppers: AtomicUsize::new(0),
        }
    }

    fn counter(&self, kind: SessionKind) -> &AtomicUsize {
        match kind {
            SessionKind::Guest => &self.guests,
            SessionKind::Shopper => &self.shoppers,
        }
    }

    fn len(&self) -> usize {
        self.guests.load(Ordering::Relaxed) + self.shoppers.load(Ordering::Relaxed)
    }

    /// Reserves a slot for one more session, or says the store is full.
    fn reserve(&self, kind: SessionKind) -> Result<(), StoreError> {
        if self.len() >= self.max_sessions {
            return Err(StoreError::Full);
        }
        self.counter(kind).fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn release(&self, kind: SessionKind) {
        self.counter(kind).fetch_sub(1, Ordering::Relaxed);
    }

    fn insert_now(&self, key: SessionKey, record: Arc<SessionRecord>, now: u64) -> Result<(), StoreError> {
        self.reserve(record.kind)?;
        let entry = Entry { record, last_seen: AtomicU64::new(now) };
        if let Some(previous) = self.map.insert(key, entry) {
            // A 256-bit collision does not happen; keep the counters right regardless.
            self.release(previous.record.kind);
        }
        Ok(())
    }

    fn remove_now(&self, key: &SessionKey) -> Option<Arc<SessionRecord>> {
        let (_, entry) = self.map.remove(key)?;
        self.release(entry.record.kind);
        Some(entry.record)
    }

    /// Every session with the time it was last used, for the snapshot. The records are
    /// shared `Arc`s (no token is copied); the map is walked shard by shard and no guard
    /// outlives the call.
    pub fn export(&self) -> Vec<(SessionKey, Arc<SessionRecord>, u64)> {
        self.map
            .iter()
            .map(|entry| (*entry.key(), Arc::clone(&entry.record), entry.last_seen.load(Ordering::Relaxed)))
            .collect()
    }

    /// Inserts sessions read back from a snapshot, keeping each one's `last_seen`, until
    /// `max_sessions` is reached (the rest are left out: put the ones to keep first).
    /// Returns how many went in.
    pub fn import(&self, entries: impl IntoIterator<Item = (SessionKey, Arc<SessionRecord>, u64)>) -> usize {
        let mut imported = 0;
        for (key, record, last_seen) in entries {
            if self.insert_now(key, record, last_seen).is_err() {
                break;
            }
            imported += 1;
        }
        imported
    }
}

impl SessionStore for MemoryStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        Ok(self.map.get(key).map(|entry| StoredSession {
            record: Arc::clone(&entry.record),
            last_seen: entry.last_seen.load(Ordering::Relaxed),
        }))
    }

    async fn insert(&self, key: SessionKey, record: Arc<SessionRecord>, now: u64) -> Result<(), StoreError> {
        self.insert_now(key, record, now)
    }

    async fn update(&self, key: &SessionKey, record: Arc<SessionRecord>) -> Result<bool, StoreError> {
        let Some(mut entry) = self.map.get_mut(key) else { return Ok(false) };
        let old_kind = entry.record.kind;
        if old_kind != record.kind {
            self.release(old_kind);
            self.counter(record.kind).fetch_add(1, Ordering::Relaxed);
        }
        entry.record = record;
        Ok(true)
    }

    async fn touch(&self, key: &SessionKey, now: u64) -> Result<(), StoreError> {
        if let Some(entry) = self.map.get(key) {
            entry.last_seen.fetch_max(now, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn remove(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        Ok(self.remove_now(key))
    }

    async fn rotate(
        &self,
        old: Option<&SessionKey>,
        new: SessionKey,
        record: Arc<SessionRecord>,
        now: u64,
    ) -> Result<(), StoreError> {
        // Remove first so a rotation at max_sessions frees the slot it takes.
        let removed = old.and_then(|key| self.remove_now(key));
        match self.insert_now(new, record, now) {
            Ok(()) => Ok(()),
            Err(error) => {
                // Put the old session back rather than lose it.
                if let (Some(key), Some(record)) = (old, removed) {
                    let _ = self.insert_now(*key, record, now);
                }
                Err(error)
            }
        }
    }

    async fn sweep(&self, now: u64, idle_before: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        self.map.retain(|_, entry| {
            let alive = entry.record.absolute_expires_at > now
                && entry.last_seen.load(Ordering::Relaxed) >= idle_before;
            if !alive {
                removed += 1;
                self.counter(entry.record.kind).fetch_sub(1, Ordering::Relaxed);
            }
            alive
        });
        Ok(removed)
    }

    fn counts(&self) -> SessionCounts {
        SessionCounts {
            guests: self.guests.load(Ordering::Relaxed),
            shoppers: self.shoppers.load(Ordering::Relaxed),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::AccessToken;

    fn record(kind: SessionKind, absolute_expires_at: u64) -> Arc<SessionRecord> {
        Arc::new(SessionRecord {
            kind,
            access_token: AccessToken::new("at"),
            refresh_token: None,
            access_expires_at: 100,
            created_at: 0,
            absolute_expires_at,
            generation: 0,
        })
    }

    fn key(n: u8) -> SessionKey {
        SessionKey([n; 32])
    }

    #[tokio::test]
    async fn full_store_refuses_new_sessions_and_keeps_old_ones() {
        let store = MemoryStore::new(2);
        store.insert(key(1), record(SessionKind::Guest, 1000), 0).await.unwrap_or_else(|e| panic!("{e}"));
        store.insert(key(2), record(SessionKind::Shopper, 1000), 0).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            store.insert(key(3), record(SessionKind::Guest, 1000), 0).await,
            Err(StoreError::Full)
        ));
        assert!(store.get(&key(1)).await.ok().flatten().is_some());
        assert_eq!(store.counts(), SessionCounts { guests: 1, shoppers: 1 });
    }

    #[tokio::test]
    async fn rotation_kills_the_old_key_and_works_when_full() {
        let store = MemoryStore::new(1);
        store.insert(key(1), record(SessionKind::Guest, 1000), 0).await.unwrap_or_else(|e| panic!("{e}"));
        store
            .rotate(Some(&key(1)), key(2), record(SessionKind::Shopper, 1000), 5)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(store.get(&key(1)).await.ok().flatten().is_none());
        assert!(store.get(&key(2)).await.ok().flatten().is_some());
        assert_eq!(store.counts(), SessionCounts { guests: 0, shoppers: 1 });
    }

    #[tokio::test]
    async fn sweep_removes_idle_and_absolute_expired_sessions() {
        let store = MemoryStore::new(10);
        store.insert(key(1), record(SessionKind::Guest, 1000), 10).await.unwrap_or_else(|e| panic!("{e}"));
        store.insert(key(2), record(SessionKind::Guest, 50), 90).await.unwrap_or_else(|e| panic!("{e}"));
        store.insert(key(3), record(SessionKind::Guest, 1000), 90).await.unwrap_or_else(|e| panic!("{e}"));
        let removed = store.sweep(100, 20).await.unwrap_or(0);
        assert_eq!(removed, 2);
        assert!(store.get(&key(3)).await.ok().flatten().is_some());
        assert_eq!(store.counts().guests, 1);
    }

    #[tokio::test]
    async fn export_then_import_keeps_records_last_seen_and_counts() {
        let store = MemoryStore::new(10);
        store.insert(key(1), record(SessionKind::Guest, 1000), 10).await.unwrap_or_else(|e| panic!("{e}"));
        store.insert(key(2), record(SessionKind::Shopper, 1000), 20).await.unwrap_or_else(|e| panic!("{e}"));
        store.touch(&key(2), 30).await.unwrap_or_else(|e| panic!("{e}"));
        let mut exported = store.export();
        exported.sort_by_key(|(key, _, _)| key.0);
        assert_eq!(exported.len(), 2);
        assert_eq!(exported[1].2, 30);

        let copy = MemoryStore::new(10);
        assert_eq!(copy.import(exported), 2);
        assert_eq!(copy.counts(), SessionCounts { guests: 1, shoppers: 1 });
        let shopper = copy.get(&key(2)).await.ok().flatten().unwrap_or_else(|| panic!("missing"));
        assert_eq!(shopper.last_seen, 30);
        assert_eq!(shopper.record.kind, SessionKind::Shopper);
    }

    #[tokio::test]
    async fn import_stops_at_max_sessions() {
        let store = MemoryStore::new(2);
        let entries = (1..=3).map(|n| (key(n), record(SessionKind::Guest, 1000), u64::from(n)));
        assert_eq!(store.import(entries), 2);
        assert_eq!(store.counts().guests, 2);
        assert!(store.get(&key(3)).await.ok().flatten().is_none());
    }

    #[tokio::test]
    async fn update_never_resurrects_a_removed_session() {
        let store = MemoryStore::new(10);
        assert!(!store.update(&key(9), record(SessionKind::Guest, 1000)).await.unwrap_or(true));
        assert!(store.get(&key(9)).await.ok().flatten().is_none());
    }
}
