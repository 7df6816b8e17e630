//! The session core: every whole operation on a browser's session.
//!
//! [`Sessions`] decides what a session may do; the store keeps it (`store`) and the token
//! service talks to the API (`tokens`). Endpoints and the forwarding path call one
//! operation each and never reach the store or the token service themselves:
//!
//! | operation | used by |
//! |---|---|
//! | [`Sessions::resolve`] | a forwarded call: the cookie's session, a lazy guest, or none |
//! | [`Sessions::lookup`], [`Sessions::guest`] | `GET /session`, `POST /session/guest` |
//! | [`Sessions::ensure_fresh`], [`Sessions::refresh`] (`refresh`) | before and after a forwarded call |
//! | [`Sessions::login`], [`Sessions::logout`] (`signin`) | `/session/login`, `/session/logout` |
//! | [`Sessions::session_for_hosted_login`], [`Sessions::begin_hosted_login`] (`signin`) | `/session/authorize` |
//! | [`Sessions::complete_hosted_login`] (`signin`) | `/session/callback` |
//! | [`Sessions::begin_code_login`], [`Sessions::complete_code_login`] (`code_flow`) | `/session/authorize`, `/session/callback` with `flavor = "oauth2"` |
//! | [`Sessions::backchannel_logout`] (`code_flow`) | `POST /session/backchannel-logout` |
//!
//! It never handles hyper requests or responses, and time comes from the injected
//! [`Clock`] (the caller passes the request's one `now`).

mod code_flow;
mod refresh;
mod signin;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Mutex;

use crate::clock::Clock;
use crate::config::{GuestMode, OAuthConfig, SessionConfig, SessionPolicy};
use crate::cookie::CookieLookup;
use crate::error::Error;
use crate::hosted_login::HostedLogin;
use crate::metrics::Metrics;
use crate::ratelimit::SessionRateLimit;
use crate::session_id::{SessionId, SessionKey};
use crate::store::{SessionKind, SessionRecord, SessionStore, Store, StoreError, StoredSession};
use crate::tokens::{TokenError, TokenService, TokenSet, Tokens};
use crate::trace;

pub use code_flow::CodeLoginStart;
pub use signin::HostedEnd;

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

/// What `GET /session` tells a browser about its session's tokens: times and a count,
/// never a token.
#[derive(Debug, Clone, Copy)]
pub struct SessionTimes {
    pub access_expires_at: u64,
    pub session_expires_at: u64,
    /// How many times tokengate has refreshed the session's tokens since it began (a
    /// login begins a new session): the record's generation, which only a refresh moves.
    pub refreshes: u64,
}

/// Lifetimes and modes, in seconds, read out of the config once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub idle_secs: u64,
    pub absolute_secs: u64,
    pub refresh_ahead_secs: u64,
    /// How long a request waits for another request's refresh of the same session.
    pub refresh_wait: Duration,
    pub guest: GuestMode,
    /// A session's last-seen time is written at most this often, not on every request.
    pub touch_every_secs: u64,
    /// The lease of a shared store's refresh lock (renewed while the token call runs).
    pub lock_lease: Duration,
}

impl Settings {
    /// The settings `[session]` and `[oauth]` give.
    pub fn new(session: &SessionConfig, oauth: &OAuthConfig) -> Self {
        let idle_secs = session.idle_timeout.as_secs().max(1);
        Self {
            idle_secs,
            absolute_secs: session.absolute_timeout.as_secs().max(1),
            refresh_ahead_secs: oauth.refresh_ahead.as_secs(),
            refresh_wait: oauth.refresh_wait_timeout,
            guest: session.guest,
            touch_every_secs: (idle_secs / 100).clamp(1, 60),
            lock_lease: Duration::from_secs(10),
        }
    }

    /// The same, with a shared store's refresh-lock lease.
    pub fn with_lock_lease(mut self, lease: Duration) -> Self {
        self.lock_lease = lease;
        self
    }
}

/// What the session core is built from.
pub struct Parts<T> {
    pub settings: Settings,
    pub store: Arc<Store>,
    pub tokens: Arc<T>,
    pub rate_limit: SessionRateLimit,
    /// The hosted login, when `public_origin` makes one possible.
    pub hosted_login: Option<HostedLogin>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
}

/// The session manager.
pub struct Sessions<T = Tokens> {
    store: Arc<Store>,
    tokens: Arc<T>,
    settings: Settings,
    refresh_locks: DashMap<SessionKey, Arc<Mutex<()>>>,
    rate_limit: SessionRateLimit,
    hosted_login: Option<HostedLogin>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl<T> std::fmt::Debug for Sessions<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl<T: TokenService> Sessions<T> {
    /// The session core over its parts.
    pub fn new(parts: Parts<T>) -> Self {
        Self {
            store: parts.store,
            tokens: parts.tokens,
            settings: parts.settings,
            refresh_locks: DashMap::new(),
            rate_limit: parts.rate_limit,
            hosted_login: parts.hosted_login,
            clock: parts.clock,
            metrics: parts.metrics,
        }
    }

    /// The metrics the session core counts in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The clock every `now` comes from.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The hosted login's fixed parts (callback page, parameter parsing), if configured.
    pub fn hosted_login(&self) -> Option<&HostedLogin> {
        self.hosted_login.as_ref()
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
        let span = trace::Span::internal("session.lookup");
        let stored = self.store.get(&key).await;
        match &stored {
            Ok(found) => span.set("tokengate.session.found", found.is_some()),
            Err(_) => span.fail("store_unavailable"),
        }
        drop(span);
        let Some(stored) = stored.map_err(|e| self.store_error(e))? else {
            return Box::pin(self.no_session_under(&key)).await;
        };
        if self.is_expired(&stored, now) {
            // Only this generation: a refresh that landed meanwhile does not revive it,
            // and the session is dead by time anyway.
            let removed = Box::pin(self.store.remove_if(&key, stored.record.generation)).await;
            removed.map_err(|e| self.store_error(e))?;
            return Err(Error::SessionExpired);
        }
        if now >= stored.last_seen + self.settings.touch_every_secs {
            self.store.touch(&key, now).await.map_err(|e| self.store_error(e))?;
        }
        Ok(Some(Active { key, record: stored.record, last_seen: stored.last_seen.max(now) }))
    }

    /// A cookie whose key holds no session: dead (`SessionExpired`, the cookie is cleared),
    /// unless it is the code flow's pre-login binding of a login under way, which is no
    /// session yet but must keep its cookie until the callback (`code_flow`).
    async fn no_session_under(&self, key: &SessionKey) -> Result<Option<Active>, Error> {
        if self.is_code_flow() && self.store.has_pending(key).await.map_err(|e| self.store_error(e))? {
            return Ok(None);
        }
        Err(Error::SessionExpired)
    }

    /// The cookie's live session, or `None` when there is none or it is dead (a dead
    /// cookie is exactly why a browser asks for a new session or logs in).
    async fn live_session(&self, cookie: &CookieLookup, now: u64) -> Result<Option<Active>, Error> {
        match self.lookup(cookie, now).await {
            Err(Error::SessionExpired) => Ok(None),
            other => other,
        }
    }

    /// Idle or past the absolute end. Both boundaries are inclusive: at exactly
    /// `last_seen + idle` the session is over.
    fn is_expired(&self, stored: &StoredSession, now: u64) -> bool {
        now >= stored.record.absolute_expires_at
            || now >= stored.last_seen.saturating_add(self.settings.idle_secs)
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
        match (policy, self.settings.guest) {
            (SessionPolicy::Required, GuestMode::Lazy) => {
                // Boxed: a token call's future held inline would grow every request's.
                let (id, active) = Box::pin(self.mint_guest(now, client)).await?;
                Ok(Resolution::NewGuest(active, id))
            }
            (SessionPolicy::Required, GuestMode::Off) => Err(Error::NoSession),
            _ => Ok(Resolution::Anonymous),
        }
    }

    /// `POST /session/guest`: the cookie's live session, or a new guest (with its id).
    pub async fn guest(
        &self,
        cookie: &CookieLookup,
        now: u64,
        client: IpAddr,
    ) -> Result<(Active, Option<SessionId>), Error> {
        if let Some(active) = self.live_session(cookie, now).await? {
            return Ok((active, None));
        }
        let (id, active) = self.mint_guest(now, client).await?;
        Ok((active, Some(id)))
    }

    /// A new guest session with its own anonymous token, if `client` may start one.
    async fn mint_guest(&self, now: u64, client: IpAddr) -> Result<(SessionId, Active), Error> {
        // Refuse before asking the API for a token we would have to throw away.
        if !self.store.has_room() {
            return Err(Error::SessionsFull);
        }
        self.rate_limit.check(client)?;
        let tokens = self.tokens.mint_guest().await.map_err(|error| match error {
            // Every token-endpoint slot is busy: shed the new session, keep the API calm.
            TokenError::Busy => Error::RateLimited { retry_after: Duration::from_secs(1) },
            other => token_service_error(other),
        })?;
        let record = Arc::new(self.new_record(SessionKind::Guest, tokens, now));
        let id = new_session_id()?;
        let key = id.key();
        if let Err(error) = self.store.insert(key, Arc::clone(&record), now).await {
            self.revoke_in_background(&record);
            return Err(self.store_error(error));
        }
        Ok((id, Active { key, record, last_seen: now }))
    }

    fn new_record(&self, kind: SessionKind, tokens: TokenSet, now: u64) -> SessionRecord {
        SessionRecord {
            kind,
            access_expires_at: now.saturating_add(tokens.expires_in),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            created_at: now,
            absolute_expires_at: now.saturating_add(self.settings.absolute_secs),
            generation: 0,
            identity: None,
        }
    }

    /// The times and the refresh count `GET /session` reports.
    pub fn times(&self, active: &Active) -> SessionTimes {
        SessionTimes {
            refreshes: active.record.generation,
            access_expires_at: active.record.access_expires_at,
            session_expires_at: active
                .record
                .absolute_expires_at
                .min(active.last_seen.saturating_add(self.settings.idle_secs)),
        }
    }

    /// Seconds left until the session's absolute end: the cookie's `Max-Age`.
    pub fn cookie_max_age(&self, record: &SessionRecord, now: u64) -> Duration {
        Duration::from_secs(record.absolute_expires_at.saturating_sub(now))
    }

    /// Deletes idle and expired sessions, expired pending logins, unused refresh locks
    /// and idle rate-limit buckets.
    pub async fn sweep(&self, now: u64) -> Result<usize, StoreError> {
        self.refresh_locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        self.rate_limit.forget_idle_clients();
        self.store.sweep(now, now.saturating_sub(self.settings.idle_secs)).await
    }

    /// Deletes a session that can no longer work, unless someone renewed it meanwhile.
    async fn forget(&self, key: &SessionKey, generation: u64) -> Result<(), Error> {
        self.store.remove_if(key, generation).await.map(drop).map_err(|e| self.store_error(e))
    }

    /// Revokes tokens nobody holds any more, without making anyone wait for it.
    fn revoke_in_background(&self, record: &SessionRecord) {
        revoke_in_background(&self.tokens, record);
    }

    fn store_error(&self, error: StoreError) -> Error {
        if matches!(error, StoreError::Unavailable(_)) {
            self.metrics.record_store_error();
        }
        store_error(error)
    }
}

/// Revokes a record's tokens (`TokenService::revoke_all`: the access token, and with the
/// OAuth 2.0 client the refresh token first) in a task of its own; a failure only means
/// they live out their natural life at the API.
fn revoke_in_background<T: TokenService>(tokens: &Arc<T>, record: &SessionRecord) {
    let tokens = Arc::clone(tokens);
    let (access, refresh) = (record.access_token.clone(), record.refresh_token.clone());
    tokio::spawn(async move {
        if let Err(error) = tokens.revoke_all(&access, refresh.as_ref()).await {
            tracing::debug!(%error, "revoking unused tokens failed");
        }
    });
}

fn new_session_id() -> Result<SessionId, Error> {
    SessionId::generate().map_err(|_| Error::Internal("no randomness for a session id"))
}

fn store_error(error: StoreError) -> Error {
    match error {
        StoreError::Full => Error::SessionsFull,
        StoreError::Unavailable(why) => Error::StoreUnavailable(why),
        StoreError::Unsupported(what) => Error::StoreUnavailable(what.to_string()),
    }
}

fn token_service_error(error: TokenError) -> Error {
    Error::TokenServiceUnavailable(error.to_string())
}
