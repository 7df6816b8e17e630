//! The in-process session store: a sharded `DashMap`, no global lock.
//!
//! Invariant: no `Ref`/`RefMut` of the map is ever held across an `.await` (every
//! method here is synchronous inside its future), so a slow caller cannot block a shard.
//! Counters are kept in atomics so `max_sessions` and the metrics never walk the map.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;

use super::{
    Exported, IdentityKey, PendingLogin, Removal, Rotation, SessionCounts, SessionKey, SessionKind,
    SessionRecord, SessionStore, StoreError, StoredSession, Swap, MARK_SECS, MAX_SESSIONS_PER_IDENTITY,
};

/// Pending hosted logins kept at most; beyond this new ones are refused until the sweep.
const MAX_PENDING_LOGINS: usize = 100_000;

/// Sessions in memory, bounded by `max_sessions`.
#[derive(Debug)]
pub struct MemoryStore {
    map: DashMap<SessionKey, Entry, KeyHasher>,
    /// Keys rotated away or logged out moments ago (see [`Mark`]).
    marks: DashMap<SessionKey, Mark, KeyHasher>,
    pending: DashMap<SessionKey, PendingLogin>,
    /// Sessions by the provider identity they signed in as, each with its absolute end.
    identities: DashMap<IdentityKey, Vec<(SessionKey, u64)>, KeyHasher>,
    max_sessions: usize,
    guests: AtomicUsize,
    shoppers: AtomicUsize,
}

#[derive(Debug)]
struct Entry {
    record: Arc<SessionRecord>,
    last_seen: AtomicU64,
}

/// What became of a key that held a session moments ago, so that a login and a logout
/// racing on one cookie cannot both win.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// `Some`: rotated to this key by a login; `None`: ended by a logout.
    successor: Option<SessionKey>,
    until: u64,
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
            marks: DashMap::with_hasher(KeyHasher),
            pending: DashMap::new(),
            identities: DashMap::with_hasher(KeyHasher),
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

    /// Reserves a slot for one more session (beyond `max_sessions` by `allowance`, which
    /// a rotation uses: it frees the old slot a moment later), or says the store is full.
    fn reserve(&self, kind: SessionKind, allowance: usize) -> Result<(), StoreError> {
        if self.len() >= self.max_sessions.saturating_add(allowance) {
            return Err(StoreError::Full);
        }
        self.counter(kind).fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn release(&self, kind: SessionKind) {
        self.counter(kind).fetch_sub(1, Ordering::Relaxed);
    }

    fn insert_now(
        &self,
        key: SessionKey,
        record: Arc<SessionRecord>,
        now: u64,
        allowance: usize,
    ) -> Result<(), StoreError> {
        self.reserve(record.kind, allowance)?;
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

    /// Takes `key` out and leaves `mark` behind, both under the key's shard lock, so a
    /// concurrent rotation or removal sees either the session or the mark, never neither.
    /// `Err` holds what was there instead: a mark, or nothing.
    fn take_leaving_mark(&self, key: &SessionKey, mark: Mark) -> Result<Arc<SessionRecord>, Option<Mark>> {
        match self.map.entry(*key) {
            MapEntry::Occupied(occupied) => {
                self.marks.insert(*key, mark);
                let (_, entry) = occupied.remove_entry();
                self.release(entry.record.kind);
                Ok(entry.record)
            }
            MapEntry::Vacant(_vacant) => Err(self.marks.get(key).map(|mark| *mark)),
        }
    }
}

impl SessionStore for MemoryStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        Ok(self.map.get(key).map(|entry| StoredSession {
            record: Arc::clone(&entry.record),
            last_seen: entry.last_seen.load(Ordering::Relaxed),
        }))
    }

    fn has_room(&self) -> bool {
        self.len() < self.max_sessions
    }

    async fn insert(&self, key: SessionKey, record: Arc<SessionRecord>, now: u64) -> Result<(), StoreError> {
        self.insert_now(key, record, now, 0)
    }

    async fn replace(
        &self,
        key: &SessionKey,
        expected_generation: u64,
        record: Arc<SessionRecord>,
    ) -> Result<Swap, StoreError> {
        let Some(mut entry) = self.map.get_mut(key) else { return Ok(Swap::Missing) };
        if entry.record.generation != expected_generation {
            return Ok(Swap::Stale(Arc::clone(&entry.record)));
        }
        let old_kind = entry.record.kind;
        if old_kind != record.kind {
            self.release(old_kind);
            self.counter(record.kind).fetch_add(1, Ordering::Relaxed);
        }
        entry.record = record;
        Ok(Swap::Done)
    }

    async fn touch(&self, key: &SessionKey, now: u64) -> Result<(), StoreError> {
        if let Some(entry) = self.map.get(key) {
            entry.last_seen.fetch_max(now, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn end(&self, key: &SessionKey, now: u64) -> Result<Removal, StoreError> {
        let ended = Mark { successor: None, until: now.saturating_add(MARK_SECS) };
        Ok(match self.take_leaving_mark(key, ended) {
            Ok(record) => Removal::Removed(record),
            Err(Some(Mark { successor: Some(next), .. })) => Removal::Moved(next),
            Err(_) => Removal::Absent,
        })
    }

    async fn remove_if(&self, key: &SessionKey, expected_generation: u64) -> Result<Swap, StoreError> {
        if let Some((_, entry)) =
            self.map.remove_if(key, |_, entry| entry.record.generation == expected_generation)
        {
            self.release(entry.record.kind);
            return Ok(Swap::Done);
        }
        Ok(match self.map.get(key) {
            Some(entry) => Swap::Stale(Arc::clone(&entry.record)),
            None => Swap::Missing,
        })
    }

    async fn rotate(
        &self,
        old: Option<&SessionKey>,
        new: SessionKey,
        record: Arc<SessionRecord>,
        now: u64,
    ) -> Result<Rotation, StoreError> {
        let Some(old) = old else {
            self.insert_now(new, record, now, 0)?;
            return Ok(Rotation::Done { previous: None });
        };
        // The new session goes in first (nobody knows its id yet), so that whoever
        // follows the old key's mark finds it.
        self.insert_now(new, record, now, 1)?;
        let moved = Mark { successor: Some(new), until: now.saturating_add(MARK_SECS) };
        match self.take_leaving_mark(old, moved) {
            Ok(previous) => Ok(Rotation::Done { previous: Some(previous) }),
            // Gone by expiry: nothing to take over, nothing raced.
            Err(None) => Ok(Rotation::Done { previous: None }),
            // Rotated by another login or ended by a logout first: that one won.
            Err(Some(_)) => {
                self.remove_now(&new);
                Ok(Rotation::Conflict)
            }
        }
    }

    async fn put_pending(&self, session: SessionKey, pending: PendingLogin) -> Result<(), StoreError> {
        // A replacement does not grow the map, so it is never refused.
        if self.pending.len() >= MAX_PENDING_LOGINS && !self.pending.contains_key(&session) {
            return Err(StoreError::Full);
        }
        self.pending.insert(session, pending);
        Ok(())
    }

    async fn take_pending(&self, session: &SessionKey) -> Result<Option<PendingLogin>, StoreError> {
        Ok(self.pending.remove(session).map(|(_, pending)| pending))
    }

    async fn has_pending(&self, session: &SessionKey) -> Result<bool, StoreError> {
        Ok(self.pending.contains_key(session))
    }

    async fn link_identity(
        &self,
        identity: IdentityKey,
        session: SessionKey,
        until: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut links = self.identities.entry(identity).or_default();
        links.retain(|(key, until)| *key != session && *until > now);
        if links.len() >= MAX_SESSIONS_PER_IDENTITY {
            links.remove(0);
        }
        links.push((session, until));
        Ok(())
    }

    async fn sessions_of(&self, identity: &IdentityKey) -> Result<Vec<SessionKey>, StoreError> {
        Ok(self
            .identities
            .get(identity)
            .map(|links| links.iter().map(|(key, _)| *key).collect())
            .unwrap_or_default())
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
        self.marks.retain(|_, mark| mark.until > now);
        self.pending.retain(|_, pending| pending.expires_at > now);
        self.identities.retain(|_, links| {
            links.retain(|(key, until)| *until > now && self.map.contains_key(key));
            !links.is_empty()
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

    /// The records are shared `Arc`s (no token is copied); the map is walked shard by
    /// shard and no guard outlives the call.
    fn export(&self) -> Result<Vec<Exported>, StoreError> {
        Ok(self
            .map
            .iter()
            .map(|entry| (*entry.key(), Arc::clone(&entry.record), entry.last_seen.load(Ordering::Relaxed)))
            .collect())
    }

    /// One process: the session core's in-process lock is the whole lock.
    async fn lock_refresh(
        &self,
        _key: &SessionKey,
        _token: u64,
        _lease: Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn renew_refresh_lock(
        &self,
        _key: &SessionKey,
        _token: u64,
        _lease: Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn unlock_refresh(&self, _key: &SessionKey, _token: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn is_shared(&self) -> bool {
        false
    }

    /// Keeps each session's `last_seen`; stops at `max_sessions` (put the ones to keep
    /// first).
    fn import(&self, entries: Vec<Exported>) -> Result<usize, StoreError> {
        let mut imported = 0;
        for (key, record, last_seen) in entries {
            if self.insert_now(key, record, last_seen, 0).is_err() {
                break;
            }
            imported += 1;
        }
        Ok(imported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::AccessToken;

    fn record(kind: SessionKind, absolute_expires_at: u64) -> Arc<SessionRecord> {
        with_generation(kind, absolute_expires_at, 0)
    }

    fn with_generation(kind: SessionKind, absolute_expires_at: u64, generation: u64) -> Arc<SessionRecord> {
        Arc::new(SessionRecord {
            kind,
            access_token: AccessToken::new(format!("at-{generation}")),
            refresh_token: None,
            access_expires_at: 100,
            created_at: 0,
            absolute_expires_at,
            generation,
            identity: None,
        })
    }

    fn key(n: u8) -> SessionKey {
        SessionKey([n; 32])
    }

    async fn generation_of(store: &MemoryStore, n: u8) -> Option<u64> {
        store.get(&key(n)).await.expect("memory stores answer").map(|stored| stored.record.generation)
    }

    #[tokio::test]
    async fn full_store_refuses_new_sessions_and_keeps_old_ones() {
        let store = MemoryStore::new(2);
        store.insert(key(1), record(SessionKind::Guest, 1000), 0).await.expect("room");
        store.insert(key(2), record(SessionKind::Shopper, 1000), 0).await.expect("room");
        assert!(!store.has_room());
        assert!(matches!(
            store.insert(key(3), record(SessionKind::Guest, 1000), 0).await,
            Err(StoreError::Full)
        ));
        assert!(generation_of(&store, 1).await.is_some());
        assert_eq!(store.counts(), SessionCounts { guests: 1, shoppers: 1 });
    }

    #[tokio::test]
    async fn rotation_kills_the_old_key_and_works_when_full() {
        let store = MemoryStore::new(1);
        store.insert(key(1), record(SessionKind::Guest, 1000), 0).await.expect("room");
        let rotation = store.rotate(Some(&key(1)), key(2), record(SessionKind::Shopper, 1000), 5).await;
        assert!(matches!(rotation, Ok(Rotation::Done { previous: Some(_) })), "{rotation:?}");
        assert!(generation_of(&store, 1).await.is_none());
        assert!(generation_of(&store, 2).await.is_some());
        assert_eq!(store.counts(), SessionCounts { guests: 0, shoppers: 1 });
    }

    #[tokio::test]
    async fn a_second_rotation_of_one_key_conflicts_and_changes_nothing() {
        let store = MemoryStore::new(10);
        store.insert(key(1), record(SessionKind::Guest, 1000), 0).await.expect("room");
        let first = store.rotate(Some(&key(1)), key(2), record(SessionKind::Shopper, 1000), 5).await;
        assert!(matches!(first, Ok(Rotation::Done { .. })));
        let second = store.rotate(Some(&key(1)), key(3), record(SessionKind::Shopper, 1000), 5).await;
        assert!(matches!(second, Ok(Rotation::Conflict)), "{second:?}");
        assert!(generation_of(&store, 3).await.is_none(), "the loser's session was not kept");
        assert_eq!(store.counts(), SessionCounts { guests: 0, shoppers: 1 });
    }

    #[tokio::test]
    async fn a_rotation_after_a_logout_conflicts_and_a_logout_after_a_rotation_finds_the_successor() {
        let store = MemoryStore::new(10);
        store.insert(key(1), record(SessionKind::Guest, 1000), 0).await.expect("room");
        assert!(matches!(store.end(&key(1), 5).await, Ok(Removal::Removed(_))));
        let late = store.rotate(Some(&key(1)), key(2), record(SessionKind::Shopper, 1000), 5).await;
        assert!(matches!(late, Ok(Rotation::Conflict)), "{late:?}");

        store.insert(key(4), record(SessionKind::Guest, 1000), 0).await.expect("room");
        store.rotate(Some(&key(4)), key(5), record(SessionKind::Shopper, 1000), 5).await.expect("rotates");
        assert!(matches!(store.end(&key(4), 6).await, Ok(Removal::Moved(next)) if next == key(5)));
        assert!(matches!(store.end(&key(9), 6).await, Ok(Removal::Absent)));
    }

    #[tokio::test]
    async fn an_expired_old_key_is_no_obstacle_and_marks_expire() {
        let store = MemoryStore::new(10);
        // Never stored (or swept): a login with a dead cookie just starts a session.
        let rotation = store.rotate(Some(&key(1)), key(2), record(SessionKind::Shopper, 1000), 5).await;
        assert!(matches!(rotation, Ok(Rotation::Done { previous: None })));
        store.end(&key(2), 10).await.expect("ends");
        store.sweep(10 + MARK_SECS, 0).await.expect("sweeps");
        let again = store.rotate(Some(&key(2)), key(3), record(SessionKind::Shopper, 1000), 20).await;
        assert!(matches!(again, Ok(Rotation::Done { previous: None })), "the mark was swept: {again:?}");
    }

    #[tokio::test]
    async fn replace_and_remove_if_compare_the_generation() {
        let store = MemoryStore::new(10);
        store.insert(key(1), with_generation(SessionKind::Guest, 1000, 0), 0).await.expect("room");
        let swap = store.replace(&key(1), 0, with_generation(SessionKind::Guest, 1000, 1)).await;
        assert!(matches!(swap, Ok(Swap::Done)));
        // A writer that still thinks generation 0 is current cannot bring it back.
        let stale = store.replace(&key(1), 0, with_generation(SessionKind::Guest, 1000, 7)).await;
        assert!(matches!(stale, Ok(Swap::Stale(ref now)) if now.generation == 1), "{stale:?}");
        assert!(matches!(store.remove_if(&key(1), 0).await, Ok(Swap::Stale(_))));
        assert_eq!(generation_of(&store, 1).await, Some(1));
        assert!(matches!(store.remove_if(&key(1), 1).await, Ok(Swap::Done)));
        assert!(matches!(
            store.replace(&key(1), 1, with_generation(SessionKind::Guest, 1000, 2)).await,
            Ok(Swap::Missing)
        ));
        assert!(generation_of(&store, 1).await.is_none(), "a removed session is never resurrected");
        assert_eq!(store.counts(), SessionCounts::default());
    }

    #[tokio::test]
    async fn sweep_removes_idle_and_absolute_expired_sessions_and_pending_logins() {
        let store = MemoryStore::new(10);
        store.insert(key(1), record(SessionKind::Guest, 1000), 10).await.expect("room");
        store.insert(key(2), record(SessionKind::Guest, 50), 90).await.expect("room");
        store.insert(key(3), record(SessionKind::Guest, 1000), 90).await.expect("room");
        let pending = |expires_at| PendingLogin {
            state: [7; 32],
            return_to: "/".into(),
            carried_guest: None,
            expires_at,
            code_flow: None,
        };
        store.put_pending(key(1), pending(99)).await.expect("room");
        store.put_pending(key(2), pending(200)).await.expect("room");
        let removed = store.sweep(100, 20).await.expect("sweeps");
        assert_eq!(removed, 2);
        assert!(generation_of(&store, 3).await.is_some());
        assert_eq!(store.counts().guests, 1);
        assert!(store.take_pending(&key(1)).await.expect("answers").is_none());
        assert!(store.take_pending(&key(2)).await.expect("answers").is_some());
        assert!(store.take_pending(&key(2)).await.expect("answers").is_none(), "taken once");
        store.put_pending(key(3), pending(300)).await.expect("room");
        store.put_pending(key(3), PendingLogin { state: [8; 32], ..pending(300) }).await.expect("room");
        let taken = store.take_pending(&key(3)).await.expect("answers").map(|pending| pending.state);
        assert_eq!(taken, Some([8; 32]), "a new pending login of a session replaces the old");
    }

    #[tokio::test]
    async fn export_then_import_keeps_records_last_seen_and_counts() {
        let store = MemoryStore::new(10);
        store.insert(key(1), record(SessionKind::Guest, 1000), 10).await.expect("room");
        store.insert(key(2), record(SessionKind::Shopper, 1000), 20).await.expect("room");
        store.touch(&key(2), 30).await.expect("touches");
        let mut exported = store.export().expect("exports");
        exported.sort_by_key(|(key, _, _)| key.0);
        assert_eq!(exported.len(), 2);
        assert_eq!(exported[1].2, 30);

        let copy = MemoryStore::new(10);
        assert_eq!(copy.import(exported).expect("imports"), 2);
        assert_eq!(copy.counts(), SessionCounts { guests: 1, shoppers: 1 });
        let shopper = copy.get(&key(2)).await.expect("answers").expect("imported");
        assert_eq!(shopper.last_seen, 30);
        assert_eq!(shopper.record.kind, SessionKind::Shopper);
    }

    #[tokio::test]
    async fn import_stops_at_max_sessions() {
        let store = MemoryStore::new(2);
        let entries = (1..=3).map(|n| (key(n), record(SessionKind::Guest, 1000), u64::from(n))).collect();
        assert_eq!(store.import(entries).expect("imports"), 2);
        assert_eq!(store.counts().guests, 2);
        assert!(generation_of(&store, 3).await.is_none());
    }

    #[tokio::test]
    async fn identities_find_their_sessions_until_they_end() {
        let store = MemoryStore::new(10);
        let alice = crate::store::identity_key("sid", "https://id.example", "s-1");
        store.insert(key(1), record(SessionKind::Shopper, 1000), 10).await.expect("room");
        store.link_identity(alice, key(1), 1000, 10).await.expect("links");
        store.link_identity(alice, key(2), 50, 10).await.expect("links");
        store.link_identity(alice, key(1), 1000, 10).await.expect("linking twice is one link");
        assert_eq!(store.sessions_of(&alice).await.expect("answers"), vec![key(2), key(1)]);
        let other = crate::store::identity_key("sub", "https://id.example", "s-1");
        assert!(store.sessions_of(&other).await.expect("answers").is_empty(), "sid and sub never mix");
        // The sweep drops links past their end and links to sessions that are gone.
        store.sweep(100, 0).await.expect("sweeps");
        assert_eq!(store.sessions_of(&alice).await.expect("answers"), vec![key(1)]);
        for n in 0..u8::try_from(MAX_SESSIONS_PER_IDENTITY + 3).expect("small") {
            store.link_identity(alice, key(n + 10), 1000, 10).await.expect("links");
        }
        let links = store.sessions_of(&alice).await.expect("answers");
        assert_eq!(links.len(), MAX_SESSIONS_PER_IDENTITY, "bounded");
        assert!(!links.contains(&key(1)), "the oldest link went first");
    }
}
