//! Session storage: the [`SessionStore`] trait and its backends.
//!
//! A store keeps [`SessionRecord`]s under a [`SessionKey`] (the hash of the cookie
//! value). It never speaks HTTP, never calls the token endpoint and never sees cookies.
//! Records are immutable and shared as `Arc`s, so a lookup on the memory store costs a
//! reference-count increment, not a copy of the tokens. Idle time is tracked apart from
//! the record (`touch`), so a request does not rewrite the tokens to say it was here.

pub mod memory;
pub mod snapshot;

use std::future::Future;
use std::sync::Arc;

use crate::secret::{AccessToken, RefreshToken};
use crate::session_id::SessionKey;

pub use memory::MemoryStore;

/// What kind of shopper a session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// An anonymous shopper with a limited (guest) token.
    Guest,
    /// A logged-in shopper with a full token.
    Shopper,
}

impl SessionKind {
    /// A label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Guest => "guest",
            SessionKind::Shopper => "shopper",
        }
    }
}

/// One session's tokens and lifetimes. Times are Unix seconds.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    pub kind: SessionKind,
    pub access_token: AccessToken,
    pub refresh_token: Option<RefreshToken>,
    /// When the access token stops working, by the token endpoint's `expires_in`.
    pub access_expires_at: u64,
    pub created_at: u64,
    /// The session ends at this time whatever happens (absolute timeout).
    pub absolute_expires_at: u64,
    /// Incremented at every token change, so a waiter can tell whether the tokens it
    /// saw have been refreshed by someone else.
    pub generation: u64,
}

/// A record as read from the store, with the time it was last used.
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub record: Arc<SessionRecord>,
    pub last_seen: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `max_sessions` is reached; existing sessions are untouched.
    #[error("session store is full")]
    Full,
    /// The backend cannot be reached or answered garbage.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

/// Session counts by kind, for metrics and the admin endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    pub guests: usize,
    pub shoppers: usize,
}

/// The operations tokengate needs from a session store.
pub trait SessionStore: Send + Sync + 'static {
    /// The session under `key`, if any (expired ones included: expiry is policy,
    /// decided by the session layer).
    fn get(&self, key: &SessionKey)
        -> impl Future<Output = Result<Option<StoredSession>, StoreError>> + Send;

    /// Adds a new session. Fails with [`StoreError::Full`] at `max_sessions`.
    fn insert(
        &self,
        key: SessionKey,
        record: Arc<SessionRecord>,
        now: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces the record of an existing session; `false` if it no longer exists (it is
    /// never resurrected).
    fn update(
        &self,
        key: &SessionKey,
        record: Arc<SessionRecord>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Notes that the session was used at `now` (idle timeout).
    fn touch(&self, key: &SessionKey, now: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes a session, returning what it held.
    fn remove(
        &self,
        key: &SessionKey,
    ) -> impl Future<Output = Result<Option<Arc<SessionRecord>>, StoreError>> + Send;

    /// Moves a session to a new key in one step (login rotates the id): the old key
    /// stops working at once.
    fn rotate(
        &self,
        old: Option<&SessionKey>,
        new: SessionKey,
        record: Arc<SessionRecord>,
        now: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes every session idle since before `idle_before` or past its absolute end;
    /// returns how many went.
    fn sweep(&self, now: u64, idle_before: u64) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Live session counts by kind.
    fn counts(&self) -> SessionCounts;

    /// Whether the backend answers (for `/readyz`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The configured backend. An enum rather than a trait object: no allocation per call,
/// and the request path is compiled for each backend.
#[derive(Debug)]
pub enum Store {
    Memory(MemoryStore),
}

impl SessionStore for Store {
    async fn get(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        match self {
            Store::Memory(store) => store.get(key).await,
        }
    }

    async fn insert(&self, key: SessionKey, record: Arc<SessionRecord>, now: u64) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => store.insert(key, record, now).await,
        }
    }

    async fn update(&self, key: &SessionKey, record: Arc<SessionRecord>) -> Result<bool, StoreError> {
        match self {
            Store::Memory(store) => store.update(key, record).await,
        }
    }

    async fn touch(&self, key: &SessionKey, now: u64) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => store.touch(key, now).await,
        }
    }

    async fn remove(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        match self {
            Store::Memory(store) => store.remove(key).await,
        }
    }

    async fn rotate(
        &self,
        old: Option<&SessionKey>,
        new: SessionKey,
        record: Arc<SessionRecord>,
        now: u64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => store.rotate(old, new, record, now).await,
        }
    }

    async fn sweep(&self, now: u64, idle_before: u64) -> Result<usize, StoreError> {
        match self {
            Store::Memory(store) => store.sweep(now, idle_before).await,
        }
    }

    fn counts(&self) -> SessionCounts {
        match self {
            Store::Memory(store) => store.counts(),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(store) => store.ping().await,
        }
    }
}
