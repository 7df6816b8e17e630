//! Session policy: lookup, lazy guests, expiry, refresh, login and logout.
//!
//! This module decides what a session may do; the store keeps it and the token client
//! talks to the API. It never handles hyper requests or responses.
//!
//! **Single-flight refresh.** Concurrent requests of one session share one refresh call:
//! each takes the session's async lock, re-reads the record, and refreshes only if the
//! `generation` it saw is still current; later waiters find the new tokens. The call itself
//! runs in a spawned task that owns the lock, so a browser that disconnects mid-refresh
//! cannot abandon a refresh token the API has already rotated.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tokio::sync::Mutex;

use crate::config::{Fixed, GuestMode, SessionPolicy};
use crate::cookie::CookieLookup;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::oauth::{OAuthError, TokenClient, TokenSet};
use crate::ratelimit::SessionRateLimit;
use crate::secret::{AccessToken, Password};
use crate::session_id::{SessionId, SessionKey};
use crate::store::{SessionKind, SessionRecord, SessionStore, Store, StoreError, StoredSession};

/// A live session found (or just made) for a request.
#[derive(Debug, Clone)]
pub struct Active {
    pub key: SessionKey,
    pub record: Arc<SessionRecord>,
    pub last_seen: u64,
}

/// What a forwarded request will run as.
#[derive(Debug)]
pub enum Resolution {
    /// The cookie's live session.
    Existing(Active),
    /// A guest session minted for this request; the response must set the cookie.
    NewGuest(Active, SessionId),
    /// No session: the call goes without a token.
    Anonymous,
}

/// The session times a browser may see (`GET /session`).
#[derive(Debug, Clone, Copy)]
pub struct SessionTimes {
    pub access_expires_at: u64,
    pub session_expires_at: u64,
}

/// Lifetimes and modes, in seconds, copied out of the config once.
#[derive(Debug, Clone)]
struct Policy {
    idle_secs: u64,
    absolute_secs: u64,
    refresh_ahead_secs: u64,
    refresh_wait: Duration,
    guest: GuestMode,
    max_sessions: usize,
    /// A session's last-seen time is written at most this often, not on every request.
    touch_every_secs: u64,
}

/// The session manager.
#[derive(Debug)]
pub struct Sessions {
    store: Arc<Store>,
    tokens: Arc<TokenClient>,
    policy: Policy,
    refresh_locks: DashMap<SessionKey, Arc<Mutex<()>>>,
    rate_limit: SessionRateLimit,
    metrics: Arc<Metrics>,
}

impl Sessions {
    /// A manager over `store`, getting tokens from `tokens`.
    pub fn new(config: &Fixed, store: Arc<Store>, tokens: Arc<TokenClient>, metrics: Arc<Metrics>) -> Self {
        let idle_secs = config.session.idle_timeout.as_secs().max(1);
        Self {
            store,
            tokens,
            policy: Policy {
                idle_secs,
                absolute_secs: config.session.absolute_timeout.as_secs().max(1),
                refresh_ahead_secs: config.oauth.refresh_ahead.as_secs(),
                refresh_wait: config.oauth.refresh_wait_timeout,
                guest: config.session.guest,
                max_sessions: config.session.max_sessions,
                touch_every_secs: (idle_secs / 100).clamp(1, 60),
            },
            refresh_locks: DashMap::new(),
            rate_limit: SessionRateLimit::new(&config.rate_limit),
            metrics,
        }
    }

    /// Takes one new-session allowance for `client` (429 when its bucket is empty).
    pub fn check_rate(&self, client: IpAddr) -> Result<(), Error> {
        self.rate_limit.check(client)
    }

    /// The token client, for the hosted-login flow.
    pub fn tokens(&self) -> &TokenClient {
        &self.tokens
    }

    /// The store, for the sweeper and the admin endpoints.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The session a cookie names, if it is live. A malformed, unknown or expired cookie is
    /// `SessionExpired` (an expired session is deleted on the way).
    pub async fn lookup(&self, cookie: &CookieLookup, now: u64) -> Result<Option<Active>, Error> {
        let id = match cookie {
            CookieLookup::Absent => return Ok(None),
            CookieLookup::Malformed => return Err(Error::SessionExpired),
            CookieLookup::Present(id) => id,
        };
        let key = id.key();
        let stored =
            self.store.get(&key).await.map_err(|e| self.store_error(e))?.ok_or(Error::SessionExpired)?;
        if self.is_expired(&stored, now) {
            self.store.remove(&key).await.map_err(|e| self.store_error(e))?;
            return Err(Error::SessionExpired);
        }
        if now >= stored.last_seen + self.policy.touch_every_secs {
            self.store.touch(&key, now).await.map_err(|e| self.store_error(e))?;
        }
        Ok(Some(Active { key, record: stored.record, last_seen: stored.last_seen.max(now) }))
    }

    fn is_expired(&self, stored: &StoredSession, now: u64) -> bool {
        now >= stored.record.absolute_expires_at || now >= stored.last_seen + self.policy.idle_secs
    }

    /// Applies a route's session policy: the cookie's session, a new lazy guest, or none.
    pub async fn resolve(
        &self,
        cookie: &CookieLookup,
        policy: SessionPolicy,
        now: u64,
        client: IpAddr,
    ) -> Result<Resolution, Error> {
        if policy == SessionPolicy::None {
            return Ok(Resolution::Anonymous);
        }
        if let Some(active) = self.lookup(cookie, now).await? {
            return Ok(Resolution::Existing(active));
        }
        match (policy, self.policy.guest) {
            (SessionPolicy::Required, GuestMode::Lazy) => {
                let (id, active) = self.mint_guest(now, client).await?;
                Ok(Resolution::NewGuest(active, id))
            }
            (SessionPolicy::Required, GuestMode::Off) => Err(Error::NoSession),
            _ => Ok(Resolution::Anonymous),
        }
    }

    /// A new guest session with its own anonymous token, if `client` may start one.
    pub async fn mint_guest(&self, now: u64, client: IpAddr) -> Result<(SessionId, Active), Error> {
        // Refuse before asking the API for a token we would have to throw away.
        if self.is_full() {
            return Err(Error::SessionsFull);
        }
        self.rate_limit.check(client)?;
        let tokens = self.tokens.mint_guest().await.map_err(|error| match error {
            // Every token-endpoint slot is busy: shed the new session, keep the API calm.
            OAuthError::Busy => Error::RateLimited { retry_after: Duration::from_secs(1) },
            other => token_service_error(other),
        })?;
        let record = Arc::new(self.new_record(SessionKind::Guest, tokens, now));
        let id = SessionId::generate().map_err(|_| Error::Internal("no randomness for a session id"))?;
        let key = id.key();
        if let Err(error) = self.store.insert(key, Arc::clone(&record), now).await {
            self.revoke_in_background(record);
            return Err(self.store_error(error));
        }
        Ok((id, Active { key, record, last_seen: now }))
    }

    fn is_full(&self) -> bool {
        let counts = self.store.counts();
        counts.guests + counts.shoppers >= self.policy.max_sessions
    }

    fn new_record(&self, kind: SessionKind, tokens: TokenSet, now: u64) -> SessionRecord {
        SessionRecord {
            kind,
            access_expires_at: now.saturating_add(tokens.expires_in),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            created_at: now,
            absolute_expires_at: now.saturating_add(self.policy.absolute_secs),
            generation: 0,
        }
    }

    /// The session's tokens, refreshed first when the access token is within
    /// `refresh_ahead` of expiry. If the refresh fails for the API's reasons but the
    /// current token still works, the current token is used: a fault upstream should not
    /// fail a request that can still succeed.
    pub async fn ensure_fresh(&self, active: &Active, now: u64) -> Result<Arc<SessionRecord>, Error> {
        let record = &active.record;
        if record.access_expires_at > now.saturating_add(self.policy.refresh_ahead_secs) {
            return Ok(Arc::clone(record));
        }
        match self.refresh(active.key, record.generation).await {
            Err(Error::TokenServiceUnavailable(_)) if record.access_expires_at > now + 1 => {
                Ok(Arc::clone(record))
            }
            other => other,
        }
    }

    /// Refreshes the session's tokens unless someone already replaced the generation
    /// `seen_generation`. Concurrent callers for one session share one token call.
    pub async fn refresh(&self, key: SessionKey, seen_generation: u64) -> Result<Arc<SessionRecord>, Error> {
        let lock = Arc::clone(&*self.refresh_locks.entry(key).or_default());
        let outcome =
            tokio::time::timeout(self.policy.refresh_wait, self.refresh_locked(&lock, key, seen_generation))
                .await;
        drop(lock);
        self.refresh_locks.remove_if(&key, |_, lock| Arc::strong_count(lock) == 1);
        outcome
            .unwrap_or_else(|_| Err(Error::TokenServiceUnavailable("waited too long for a refresh".into())))
    }

    async fn refresh_locked(
        &self,
        lock: &Arc<Mutex<()>>,
        key: SessionKey,
        seen_generation: u64,
    ) -> Result<Arc<SessionRecord>, Error> {
        let guard = Arc::clone(lock).lock_owned().await;
        let current =
            self.store.get(&key).await.map_err(|e| self.store_error(e))?.ok_or(Error::SessionExpired)?;
        if current.record.generation != seen_generation {
            self.metrics.record_refresh_coalesced();
            return Ok(current.record);
        }
        let store = Arc::clone(&self.store);
        let tokens = Arc::clone(&self.tokens);
        let task = tokio::spawn(async move {
            let outcome = refresh_and_store(&store, &tokens, key, &current.record).await;
            drop(guard);
            outcome
        });
        task.await.map_err(|_| Error::Internal("refresh task failed"))?
    }

    /// Logs a shopper in with the password grant, carrying a guest session's cart over,
    /// and moves the session to a new id (the old cookie stops working at once).
    pub async fn login(
        &self,
        current: Option<Active>,
        username: &str,
        password: &Password,
        now: u64,
        client: IpAddr,
    ) -> Result<(SessionId, Arc<SessionRecord>), Error> {
        // Each attempt counts as a new session: this also slows password guessing.
        self.rate_limit.check(client)?;
        let guest_token = current
            .as_ref()
            .filter(|active| active.record.kind == SessionKind::Guest)
            .map(|active| &active.record.access_token);
        let tokens = match self.tokens.login(username, password, guest_token).await {
            // An expired guest token must not stop the login; only the cart is lost.
            Err(error) if guest_token.is_some() && error.is_limited_token_invalid() => {
                self.tokens.login(username, password, None).await
            }
            other => other,
        }
        .map_err(|error| {
            if error.is_grant_rejected() {
                Error::InvalidCredentials
            } else {
                token_service_error(error)
            }
        })?;
        self.become_shopper(current, tokens, now).await
    }

    /// Gives the browser a shopper session holding `tokens` under a new id, replacing
    /// `current` (whose id stops working at once). A previous shopper's tokens are
    /// revoked; a guest's were carried over into the new session by the API.
    pub async fn become_shopper(
        &self,
        current: Option<Active>,
        tokens: TokenSet,
        now: u64,
    ) -> Result<(SessionId, Arc<SessionRecord>), Error> {
        let record = Arc::new(self.new_record(SessionKind::Shopper, tokens, now));
        let id = SessionId::generate().map_err(|_| Error::Internal("no randomness for a session id"))?;
        let old_key = current.as_ref().map(|active| active.key);
        if let Err(error) = self.store.rotate(old_key.as_ref(), id.key(), Arc::clone(&record), now).await {
            self.revoke_in_background(record);
            return Err(self.store_error(error));
        }
        if let Some(previous) = current.filter(|active| active.record.kind == SessionKind::Shopper) {
            self.revoke_in_background(previous.record);
        }
        Ok((id, record))
    }

    /// Revokes a token that is no longer needed, without making anyone wait for it.
    pub fn revoke_token_in_background(&self, token: AccessToken) {
        let tokens = Arc::clone(&self.tokens);
        tokio::spawn(async move {
            if let Err(error) = tokens.revoke(&token).await {
                tracing::debug!(%error, "revoking an unused token failed");
            }
        });
    }

    /// Deletes the cookie's session and revokes its tokens upstream. No session is fine.
    pub async fn logout(&self, cookie: &CookieLookup) -> Result<(), Error> {
        let CookieLookup::Present(id) = cookie else { return Ok(()) };
        let removed = self.store.remove(&id.key()).await.map_err(|e| self.store_error(e))?;
        if let Some(record) = removed {
            // The session is gone locally whatever the API says; a failed revocation only
            // means the token lives out its natural life at the API.
            if let Err(error) = self.tokens.revoke(&record.access_token).await {
                tracing::warn!(%error, "revocation at logout failed; the session is deleted anyway");
            }
        }
        Ok(())
    }

    /// The times `GET /session` reports.
    pub fn times(&self, active: &Active) -> SessionTimes {
        SessionTimes {
            access_expires_at: active.record.access_expires_at,
            session_expires_at: active
                .record
                .absolute_expires_at
                .min(active.last_seen.saturating_add(self.policy.idle_secs)),
        }
    }

    /// Seconds left until the session's absolute end: the cookie's `Max-Age`.
    pub fn cookie_max_age(&self, record: &SessionRecord, now: u64) -> Duration {
        Duration::from_secs(record.absolute_expires_at.saturating_sub(now))
    }

    /// Deletes idle and expired sessions, unused refresh locks and idle rate-limit buckets.
    pub async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        self.refresh_locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        self.rate_limit.forget_idle_clients();
        self.store.sweep(now, now.saturating_sub(self.policy.idle_secs)).await
    }

    fn revoke_in_background(&self, record: Arc<SessionRecord>) {
        self.revoke_token_in_background(record.access_token.clone());
    }

    fn store_error(&self, error: StoreError) -> Error {
        if matches!(error, StoreError::Unavailable(_)) {
            self.metrics.record_store_error();
        }
        store_error(error)
    }
}

/// One refresh call and its consequence for the store.
async fn refresh_and_store(
    store: &Store,
    tokens: &TokenClient,
    key: SessionKey,
    current: &SessionRecord,
) -> Result<Arc<SessionRecord>, Error> {
    let Some(refresh_token) = &current.refresh_token else {
        store.remove(&key).await.map_err(store_error)?;
        return Err(Error::SessionExpired);
    };
    match tokens.refresh(refresh_token).await {
        Ok(fresh) => {
            let now = now_secs();
            let record = Arc::new(SessionRecord {
                kind: current.kind,
                access_expires_at: now.saturating_add(fresh.expires_in),
                access_token: fresh.access_token,
                // Rotation-safe: keep the new refresh token when one comes, else the old.
                refresh_token: fresh.refresh_token.or_else(|| current.refresh_token.clone()),
                created_at: current.created_at,
                absolute_expires_at: current.absolute_expires_at,
                generation: current.generation.wrapping_add(1),
            });
            if !store.update(&key, Arc::clone(&record)).await.map_err(store_error)? {
                return Err(Error::SessionExpired);
            }
            tracing::debug!(session = ?key, "tokens refreshed");
            Ok(record)
        }
        Err(error) if error.is_grant_rejected() => {
            tracing::info!(session = ?key, %error, "refresh rejected; session deleted");
            store.remove(&key).await.map_err(store_error)?;
            Err(Error::SessionExpired)
        }
        Err(error) => Err(token_service_error(error)),
    }
}

fn store_error(error: StoreError) -> Error {
    match error {
        StoreError::Full => Error::SessionsFull,
        StoreError::Unavailable(why) => Error::StoreUnavailable(why),
    }
}

fn token_service_error(error: OAuthError) -> Error {
    Error::TokenServiceUnavailable(error.to_string())
}

/// Unix time in seconds.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
