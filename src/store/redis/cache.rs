//! The replica's local copy of sessions read from Redis, kept true by invalidations
//! (`tracking`): a cache hit skips the Redis round trip and the AES-GCM open.
//!
//! **The one rule: a read that raced an invalidation never leaves its copy behind.** A read
//! that may fill the cache first takes a [`Ticket`] (the cache's epoch and the key's stripe
//! counter), then reads Redis, then [`LocalCache::fill`]s, which inserts only if, under the
//! key's shard lock, neither counter moved. [`LocalCache::invalidate`] bumps the stripe
//! *before* it removes the entry (which takes the same shard lock), so either the removal
//! comes after the fill and removes it, or the fill comes after the removal and sees the
//! bumped stripe and refuses. [`LocalCache::clear`] does the same with the epoch, for every
//! key at once. Stripes (not one counter per key) keep the counters bounded; two keys
//! sharing a stripe only cost an extra refused fill.
//!
//! No negative entries: a key Redis does not hold is read from Redis every time.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::session_id::SessionKey;
use crate::store::StoredSession;

/// Invalidation counters (a power of two).
const STRIPES: usize = 1024;

/// What the cache looked like before a read from Redis: its fill is accepted only if
/// nothing was invalidated or cleared meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    epoch: u64,
    stripe: u64,
}

/// Sessions read from Redis, at most `capacity`.
pub struct LocalCache {
    entries: DashMap<SessionKey, StoredSession>,
    stripes: Box<[AtomicU64]>,
    epoch: AtomicU64,
    capacity: usize,
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl LocalCache {
    /// An empty cache that holds at most `capacity` sessions.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: DashMap::new(),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            capacity,
        }
    }

    /// The cached session under `key` (a clone: an `Arc` and a number).
    pub fn get(&self, key: &SessionKey) -> Option<StoredSession> {
        self.entries.get(key).map(|entry| entry.value().clone())
    }

    /// Taken *before* the Redis read whose answer may [`fill`](Self::fill) the cache.
    pub fn ticket(&self, key: &SessionKey) -> Ticket {
        Ticket { epoch: self.epoch.load(Ordering::SeqCst), stripe: self.stripe(key).load(Ordering::SeqCst) }
    }

    /// Keeps `stored` under `key` if nothing was invalidated since `ticket` and there is
    /// room; returns whether it did.
    pub fn fill(&self, key: &SessionKey, ticket: Ticket, stored: StoredSession) -> bool {
        // Counted before the shard lock is taken: `len` read-locks every shard.
        if self.entries.len() >= self.capacity {
            return false;
        }
        // The shard's write lock is held from here until the insert: an `invalidate` of
        // this key either removed before (and bumped its stripe before that) or removes after.
        match self.entries.entry(*key) {
            Entry::Occupied(mut entry) if self.still(key, ticket) => {
                entry.insert(stored);
                true
            }
            Entry::Vacant(entry) if self.still(key, ticket) => {
                entry.insert(stored);
                true
            }
            _ => false,
        }
    }

    /// Forgets `key`, and refuses every fill whose read began before this call.
    pub fn invalidate(&self, key: &SessionKey) {
        self.stripe(key).fetch_add(1, Ordering::SeqCst);
        self.entries.remove(key);
    }

    /// Forgets everything, and refuses every fill whose read began before this call.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    /// How many sessions are cached.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn still(&self, key: &SessionKey, ticket: Ticket) -> bool {
        self.epoch.load(Ordering::SeqCst) == ticket.epoch
            && self.stripe(key).load(Ordering::SeqCst) == ticket.stripe
    }

    fn stripe(&self, key: &SessionKey) -> &AtomicU64 {
        // A session key is a SHA-256: any eight of its bytes are uniformly spread.
        let mut low = [0u8; 8];
        low.copy_from_slice(&key.0[..8]);
        let index = usize::try_from(u64::from_le_bytes(low) % STRIPES as u64).unwrap_or(0);
        &self.stripes[index]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::secret::AccessToken;
    use crate::store::{SessionKind, SessionRecord};

    fn stored(generation: u64) -> StoredSession {
        let record = SessionRecord {
            kind: SessionKind::Guest,
            access_token: AccessToken::new(format!("token-{generation}")),
            refresh_token: None,
            access_expires_at: 100,
            created_at: 1,
            absolute_expires_at: 1000,
            generation,
            identity: None,
        };
        StoredSession { record: Arc::new(record), last_seen: 1 }
    }

    fn key(byte: u8) -> SessionKey {
        SessionKey([byte; 32])
    }

    fn cached_generation(cache: &LocalCache, key: &SessionKey) -> Option<u64> {
        cache.get(key).map(|stored| stored.record.generation)
    }

    #[test]
    fn a_fill_with_a_current_ticket_is_kept_and_read_back() {
        let cache = LocalCache::new(10);
        let ticket = cache.ticket(&key(1));
        assert!(cache.fill(&key(1), ticket, stored(3)));
        assert_eq!(cached_generation(&cache, &key(1)), Some(3));
        assert_eq!(cached_generation(&cache, &key(2)), None);
    }

    #[test]
    fn a_read_that_began_before_an_invalidation_cannot_fill() {
        // The read took its ticket, another writer changed the key and the invalidation
        // arrived, then the read's (old) answer came back: it must not be kept.
        let cache = LocalCache::new(10);
        let ticket = cache.ticket(&key(1));
        cache.invalidate(&key(1));
        assert!(!cache.fill(&key(1), ticket, stored(1)));
        assert_eq!(cached_generation(&cache, &key(1)), None);
        // A read that began after it fills.
        let later = cache.ticket(&key(1));
        assert!(cache.fill(&key(1), later, stored(2)));
        assert_eq!(cached_generation(&cache, &key(1)), Some(2));
    }

    #[test]
    fn an_invalidation_after_a_fill_removes_it() {
        let cache = LocalCache::new(10);
        let ticket = cache.ticket(&key(1));
        assert!(cache.fill(&key(1), ticket, stored(1)));
        cache.invalidate(&key(1));
        assert_eq!(cached_generation(&cache, &key(1)), None);
        // The same ticket cannot put it back.
        assert!(!cache.fill(&key(1), ticket, stored(1)));
    }

    #[test]
    fn a_read_that_began_before_a_clear_cannot_fill_any_key() {
        let cache = LocalCache::new(10);
        let (one, two) = (cache.ticket(&key(1)), cache.ticket(&key(2)));
        assert!(cache.fill(&key(1), one, stored(1)));
        cache.clear();
        assert_eq!(cache.len(), 0);
        assert!(!cache.fill(&key(2), two, stored(1)));
        assert!(!cache.fill(&key(1), one, stored(1)));
    }

    #[test]
    fn invalidating_one_key_leaves_the_others() {
        let cache = LocalCache::new(10);
        for byte in 1..=3 {
            let ticket = cache.ticket(&key(byte));
            assert!(cache.fill(&key(byte), ticket, stored(u64::from(byte))));
        }
        cache.invalidate(&key(2));
        assert_eq!(cached_generation(&cache, &key(1)), Some(1));
        assert_eq!(cached_generation(&cache, &key(2)), None);
        assert_eq!(cached_generation(&cache, &key(3)), Some(3));
    }

    #[test]
    fn a_full_cache_refuses_new_keys() {
        let cache = LocalCache::new(2);
        for byte in 1..=3 {
            let ticket = cache.ticket(&key(byte));
            cache.fill(&key(byte), ticket, stored(1));
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cached_generation(&cache, &key(3)), None);
    }

    #[test]
    fn racing_invalidations_never_leave_a_filled_stale_entry() {
        // Threads fill generation `g` with a ticket taken before reading `g` from the
        // "server"; a writer bumps the server's generation and then invalidates. At the
        // end, whatever is cached must be the final generation or nothing.
        let cache = Arc::new(LocalCache::new(10));
        let server = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (cache, server) = (Arc::clone(&cache), Arc::clone(&server));
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let ticket = cache.ticket(&key(7));
                        let seen = server.load(Ordering::SeqCst);
                        cache.fill(&key(7), ticket, stored(seen));
                    }
                })
            })
            .collect();
        for generation in 1..=2_000 {
            server.store(generation, Ordering::SeqCst);
            cache.invalidate(&key(7));
        }
        for reader in readers {
            reader.join().unwrap_or_else(|_| panic!("a reader panicked"));
        }
        let last = server.load(Ordering::SeqCst);
        let cached = cached_generation(&cache, &key(7));
        assert!(cached.is_none() || cached == Some(last), "stale entry {cached:?}, server at {last}");
    }
}
