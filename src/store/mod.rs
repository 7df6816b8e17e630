//! Session storage: the [`SessionStore`] trait and its backends.
//!
//! A store keeps [`SessionRecord`]s under a [`SessionKey`] (the hash of the cookie
//! value), and the hosted login's pending login beside the session that started it (one
//! per session, under the same key; the state itself only as its hash). It never
//! speaks HTTP, never calls the token endpoint and never sees cookies. Records are
//! immutable and shared as `Arc`s, so a lookup on the memory store costs a
//! reference-count increment, not a copy of the tokens. Idle time is tracked apart from
//! the record (`touch`), so a request does not rewrite the tokens to say it was here.
//!
//! **Every write that replaces tokens is a compare-and-set on the record's
//! generation** ([`SessionStore::replace`], [`SessionStore::remove_if`]), so a writer
//! holding a stale view (a refresh whose lease ran out, a replica that lost a race) can
//! never bring back a refresh token that was rotated away, nor delete a session someone
//! else already renewed.
//!
//! **A login and a logout racing on one cookie cannot both win.** A rotation
//! ([`SessionStore::rotate`]) and a logout ([`SessionStore::end`]) each leave a
//! short-lived mark on the old key: a second rotation of that key finds the mark and
//! fails ([`Rotation::Conflict`]), and a logout that finds a rotation's mark learns the
//! successor ([`Removal::Moved`]) and ends it too.

pub mod memory;
pub mod redis;
pub mod snapshot;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::secret::{AccessToken, RefreshToken};
use crate::session_id::SessionKey;

pub use memory::MemoryStore;
pub use redis::RedisStore;

/// How long a rotated-away or logged-out key keeps its mark: long enough for any request
/// that was in flight at the time to finish.
pub const MARK_SECS: u64 = 120;

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
    /// saw have been refreshed by someone else, and a writer can compare-and-set. A new
    /// session starts at 0 and only a refresh moves it, so it is also the session's
    /// count of refreshes (`GET /session` reports it as `refreshes`).
    pub generation: u64,
    /// Who signed in at the OpenID provider (`flavor = "oauth2"`); `None` otherwise.
    pub identity: Option<Arc<Identity>>,
}

/// The non-secret claims of a session's ID token (`flavor = "oauth2"`). Personal data:
/// its `Debug` shows none of it, and it is never logged. The raw ID token is not kept.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    /// The provider's session id, when the provider sends one (back-channel logout).
    pub sid: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(<personal data>)")
    }
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
    /// `max_sessions` (or the cap on pending logins) is reached; existing entries are
    /// untouched.
    #[error("session store is full")]
    Full,
    /// The backend cannot be reached or answered garbage.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    /// The backend cannot do this (e.g. a snapshot of a shared store).
    #[error("not supported by this store: {0}")]
    Unsupported(&'static str),
}

/// The outcome of a compare-and-set on a session's generation.
#[derive(Debug)]
pub enum Swap {
    /// The record had the expected generation and was replaced (or removed).
    Done,
    /// No session under that key any more.
    Missing,
    /// Someone else changed the record first; this is what it holds now.
    Stale(Arc<SessionRecord>),
}

/// The outcome of moving a session to a new key.
#[derive(Debug)]
pub enum Rotation {
    /// The new key holds the new record; the old key (if any) is gone and its record is
    /// returned, so the caller can revoke tokens nobody holds any more.
    Done { previous: Option<Arc<SessionRecord>> },
    /// The old session was logged out or rotated by a concurrent login moments before:
    /// that one won, and nothing changed.
    Conflict,
}

/// What a removal found.
#[derive(Debug)]
pub enum Removal {
    /// The session was there and is gone now.
    Removed(Arc<SessionRecord>),
    /// The key had been rotated to this successor moments ago.
    Moved(SessionKey),
    /// Nothing under that key.
    Absent,
}

/// A hosted login that went to the API's page and has not come back yet. It is kept
/// under the key of the session that started it (only that session's cookie finds it),
/// one per session: a new one replaces the old.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    /// SHA-256 of the `state` sent to the API; a callback that echoes a state must match.
    pub state: StateKey,
    /// Where to send the browser afterwards (a checked same-origin path).
    pub return_to: String,
    /// The guest token put into the authorize URL, to revoke once the login completes.
    pub carried_guest: Option<AccessToken>,
    pub expires_at: u64,
    /// The code flow's secrets (`flavor = "oauth2"`); `None` for the implicit flow.
    pub code_flow: Option<CodeFlowSecrets>,
}

/// What a pending authorization-code login keeps besides its state: the PKCE verifier
/// (sent only with the code) and the `nonce` (compared with the ID token's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeFlowSecrets {
    pub verifier: crate::oidc::pkce::PkceVerifier,
    pub nonce: crate::oidc::pkce::Nonce,
}

/// SHA-256 of a hosted login's `state` (the store never holds the state itself).
pub type StateKey = [u8; 32];

/// The key sessions of one identity at an OpenID provider are indexed under, for
/// back-channel logout: SHA-256 of what names it (see [`identity_key`]). The store never
/// holds the `sub` or `sid` itself.
pub type IdentityKey = [u8; 32];

/// Most sessions one identity keeps indexed; past it the oldest link is dropped (a user
/// with more live sessions than this is signed out of the older ones by their timeouts).
pub const MAX_SESSIONS_PER_IDENTITY: usize = 64;

/// The [`IdentityKey`] of a `sid` or `sub` claim value from `issuer`. `kind` is `"sid"` or
/// `"sub"`, so equal values of the two claims never share a key.
pub fn identity_key(kind: &str, issuer: &str, value: &str) -> IdentityKey {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [kind, issuer, value] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part.as_bytes());
    }
    hash.finalize().into()
}

/// One session as exported for a snapshot: key, record, last use.
pub type Exported = (SessionKey, Arc<SessionRecord>, u64);

/// Session counts by kind, for metrics and the admin endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    pub guests: usize,
    pub shoppers: usize,
}

/// The operations tokengate needs from a session store. Each one is a single step for
/// the backend (one lock, one script), so callers never read-modify-write across calls.
pub trait SessionStore: Send + Sync + 'static {
    /// The session under `key`, if any (expired ones included: expiry is policy,
    /// decided by the session layer).
    fn get(&self, key: &SessionKey)
        -> impl Future<Output = Result<Option<StoredSession>, StoreError>> + Send;

    /// The session under `key` as the store holds it at this moment, never a replica's
    /// local copy (the Redis store's cache may lag another replica's write by the time its
    /// invalidation takes to arrive). The refresh path reads with it: a stale generation
    /// there would send a refresh token that was rotated away.
    fn get_fresh(
        &self,
        key: &SessionKey,
    ) -> impl Future<Output = Result<Option<StoredSession>, StoreError>> + Send {
        self.get(key)
    }

    /// Whether a new session would likely fit, answered without counting the store
    /// (minting a token that would then be thrown away is the cost avoided). `insert`
    /// remains the authority.
    fn has_room(&self) -> bool;

    /// Adds a new session. Fails with [`StoreError::Full`] at `max_sessions`.
    fn insert(
        &self,
        key: SessionKey,
        record: Arc<SessionRecord>,
        now: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces the record of `key` if its generation is still `expected_generation`.
    /// A removed session is never resurrected.
    fn replace(
        &self,
        key: &SessionKey,
        expected_generation: u64,
        record: Arc<SessionRecord>,
    ) -> impl Future<Output = Result<Swap, StoreError>> + Send;

    /// Notes that the session was used at `now` (idle timeout), without rewriting it.
    fn touch(&self, key: &SessionKey, now: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Ends a session at the browser's request (logout), leaving a mark for
    /// [`MARK_SECS`] so a login racing it cannot rotate the session away afterwards.
    fn end(&self, key: &SessionKey, now: u64) -> impl Future<Output = Result<Removal, StoreError>> + Send;

    /// Deletes the session only if its generation is still `expected_generation`
    /// (expiry, a dead grant). Leaves no mark.
    fn remove_if(
        &self,
        key: &SessionKey,
        expected_generation: u64,
    ) -> impl Future<Output = Result<Swap, StoreError>> + Send;

    /// Moves a session to a new key in one step (login rotates the id): the new key
    /// gets `record`, the old key stops working at once and points at the new one for
    /// [`MARK_SECS`]. An `old` key that holds nothing (expired) is no obstacle; one that
    /// holds a mark (a concurrent login or logout got there first) is
    /// [`Rotation::Conflict`] and nothing changes.
    fn rotate(
        &self,
        old: Option<&SessionKey>,
        new: SessionKey,
        record: Arc<SessionRecord>,
        now: u64,
    ) -> impl Future<Output = Result<Rotation, StoreError>> + Send;

    /// Keeps the pending hosted login of `session` until it is taken or expires,
    /// replacing any earlier one of that session.
    fn put_pending(
        &self,
        session: SessionKey,
        pending: PendingLogin,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes (and so ends) the pending login of `session`, expired or not.
    fn take_pending(
        &self,
        session: &SessionKey,
    ) -> impl Future<Output = Result<Option<PendingLogin>, StoreError>> + Send;

    /// Whether `session` has a pending login (leaving it in place).
    fn has_pending(&self, session: &SessionKey) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Notes that `session` belongs to `identity` until `until` (its absolute end; `now` is
    /// the current time), so a
    /// back-channel logout can find it on any replica.
    fn link_identity(
        &self,
        identity: IdentityKey,
        session: SessionKey,
        until: u64,
        now: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The sessions linked to `identity` (some may have ended since: the caller ends
    /// each, and an absent one is no error).
    fn sessions_of(
        &self,
        identity: &IdentityKey,
    ) -> impl Future<Output = Result<Vec<SessionKey>, StoreError>> + Send;

    /// Deletes every session idle since before `idle_before` or past its absolute end,
    /// expired pending logins and rotation marks; returns how many sessions went.
    fn sweep(&self, now: u64, idle_before: u64) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Live session counts by kind.
    fn counts(&self) -> SessionCounts;

    /// Whether the backend answers (for `/readyz`).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every session, for the snapshot writer. A shared store answers `Unsupported`.
    fn export(&self) -> Result<Vec<Exported>, StoreError>;

    /// Sessions read back from a snapshot, until `max_sessions`; returns how many went in.
    fn import(&self, entries: Vec<Exported>) -> Result<usize, StoreError>;

    /// Takes the session's refresh lock for `lease` under `token`: `Ok(false)` when
    /// another holder has it, `Err` when the store failed (never a wait for a lock that
    /// will not come). A store used by one process answers `true`: the session core's
    /// in-process lock already makes the refresh single-flight.
    fn lock_refresh(
        &self,
        key: &SessionKey,
        token: u64,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Extends a lock `token` still holds; `false` when it was lost (expired, taken).
    fn renew_refresh_lock(
        &self,
        key: &SessionKey,
        token: u64,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Releases a lock `token` still holds (never another holder's).
    fn unlock_refresh(
        &self,
        key: &SessionKey,
        token: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether other processes share this store (the refresh then takes its lock).
    fn is_shared(&self) -> bool;
}

/// A 32-byte key (a session key, a state's hash) as 64 lowercase hex digits, as the
/// snapshot and the Redis key layout write it.
pub(crate) fn to_hex(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(64);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

/// The 32 bytes [`to_hex`] wrote, or `None` for anything else.
pub(crate) fn from_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(bytes)
}

/// The configured backend. An enum rather than a trait object: no allocation per call on
/// the memory store, and the request path is compiled for each backend. A Redis call's
/// future (several KiB: the client's command and response handling) is boxed, so it does
/// not make every request's future that large; next to a network round trip, one
/// allocation is nothing.
#[derive(Debug)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// Forwards a trait method to the backend (`async`: awaited, boxed for Redis).
macro_rules! each_backend {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Memory($store) => $call,
            Store::Redis($store) => $call,
        }
    };
    (async $self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Memory($store) => $call.await,
            Store::Redis($store) => Box::pin($call).await,
        }
    };
}

impl SessionStore for Store {
    async fn get(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        each_backend!(async self, store => store.get(key))
    }

    async fn get_fresh(&self, key: &SessionKey) -> Result<Option<StoredSession>, StoreError> {
        each_backend!(async self, store => store.get_fresh(key))
    }

    fn has_room(&self) -> bool {
        each_backend!(self, store => store.has_room())
    }

    async fn insert(&self, key: SessionKey, record: Arc<SessionRecord>, now: u64) -> Result<(), StoreError> {
        each_backend!(async self, store => store.insert(key, record, now))
    }

    async fn replace(
        &self,
        key: &SessionKey,
        expected_generation: u64,
        record: Arc<SessionRecord>,
    ) -> Result<Swap, StoreError> {
        each_backend!(async self, store => store.replace(key, expected_generation, record))
    }

    async fn touch(&self, key: &SessionKey, now: u64) -> Result<(), StoreError> {
        each_backend!(async self, store => store.touch(key, now))
    }

    async fn end(&self, key: &SessionKey, now: u64) -> Result<Removal, StoreError> {
        each_backend!(async self, store => store.end(key, now))
    }

    async fn remove_if(&self, key: &SessionKey, expected_generation: u64) -> Result<Swap, StoreError> {
        each_backend!(async self, store => store.remove_if(key, expected_generation))
    }

    async fn rotate(
        &self,
        old: Option<&SessionKey>,
        new: SessionKey,
        record: Arc<SessionRecord>,
        now: u64,
    ) -> Result<Rotation, StoreError> {
        each_backend!(async self, store => store.rotate(old, new, record, now))
    }

    async fn put_pending(&self, session: SessionKey, pending: PendingLogin) -> Result<(), StoreError> {
        each_backend!(async self, store => store.put_pending(session, pending))
    }

    async fn take_pending(&self, session: &SessionKey) -> Result<Option<PendingLogin>, StoreError> {
        each_backend!(async self, store => store.take_pending(session))
    }

    async fn has_pending(&self, session: &SessionKey) -> Result<bool, StoreError> {
        each_backend!(async self, store => store.has_pending(session))
    }

    async fn link_identity(
        &self,
        identity: IdentityKey,
        session: SessionKey,
        until: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        each_backend!(async self, store => store.link_identity(identity, session, until, now))
    }

    async fn sessions_of(&self, identity: &IdentityKey) -> Result<Vec<SessionKey>, StoreError> {
        each_backend!(async self, store => store.sessions_of(identity))
    }

    async fn sweep(&self, now: u64, idle_before: u64) -> Result<usize, StoreError> {
        each_backend!(async self, store => store.sweep(now, idle_before))
    }

    fn counts(&self) -> SessionCounts {
        each_backend!(self, store => store.counts())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        each_backend!(async self, store => store.ping())
    }

    fn export(&self) -> Result<Vec<Exported>, StoreError> {
        each_backend!(self, store => store.export())
    }

    fn import(&self, entries: Vec<Exported>) -> Result<usize, StoreError> {
        each_backend!(self, store => store.import(entries))
    }

    async fn lock_refresh(&self, key: &SessionKey, token: u64, lease: Duration) -> Result<bool, StoreError> {
        each_backend!(async self, store => store.lock_refresh(key, token, lease))
    }

    async fn renew_refresh_lock(
        &self,
        key: &SessionKey,
        token: u64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        each_backend!(async self, store => store.renew_refresh_lock(key, token, lease))
    }

    async fn unlock_refresh(&self, key: &SessionKey, token: u64) -> Result<(), StoreError> {
        each_backend!(async self, store => store.unlock_refresh(key, token))
    }

    fn is_shared(&self) -> bool {
        each_backend!(self, store => store.is_shared())
    }
}
