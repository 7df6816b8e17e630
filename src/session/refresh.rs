//! Refreshing a session's tokens: ahead of expiry, after an upstream 401, single-flight.
//!
//! **Single-flight.** Concurrent requests of one session share one refresh call: each
//! takes the session's async lock, re-reads the record, and refreshes only if the
//! `generation` it saw is still current; later waiters find the new tokens. The call
//! itself runs in a spawned task that owns the lock, so a browser that disconnects
//! mid-refresh cannot abandon a refresh token the API has already rotated (the same
//! problem hyper-util's pool singleton solves by passing the baton).
//!
//! **Across replicas.** On a store shared by replicas, the task also takes the session's
//! lock in the store, renews its lease while the call runs, and releases it after the
//! write; a replica that finds it held reads the winner's tokens back (`RefreshCall::run`).
//!
//! **Fresh reads.** Every read here is `get_fresh`: never the Redis store's local cache,
//! which may lag another replica's write by the time its invalidation takes to arrive; a
//! stale generation here would refresh with a refresh token that was rotated away.
//!
//! **Fenced writes.** The new record is written with a compare-and-set on the
//! generation the refresh started from, so a writer with a stale view never overwrites
//! a newer record; a dead grant deletes the session only if nobody renewed it meanwhile,
//! and otherwise the renewed tokens are used.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::{revoke_in_background, store_error, token_service_error, Active, Sessions};
use crate::clock::Clock;
use crate::error::Error;
use crate::session_id::SessionKey;
use crate::store::{SessionRecord, SessionStore, Store, Swap};
use crate::tokens::TokenService;
use crate::trace;

impl<T: TokenService> Sessions<T> {
    /// The session's tokens, refreshed first when the access token is within
    /// `refresh_ahead` of expiry. If the refresh fails for the API's reasons but the
    /// current token still works, the current token is used: a fault upstream should not
    /// fail a request that can still succeed. A session without a refresh token (the
    /// hosted login's) serves until its access token really expires.
    pub async fn ensure_fresh(&self, active: &Active, now: u64) -> Result<Arc<SessionRecord>, Error> {
        let record = &active.record;
        if record.access_expires_at > now.saturating_add(self.settings.refresh_ahead_secs) {
            return Ok(Arc::clone(record));
        }
        // The slow paths are boxed: a token call's future is kilobytes, and held inline it
        // would make every request's future (moved and copied by hyper) that much larger.
        if record.refresh_token.is_none() {
            if record.access_expires_at > now {
                return Ok(Arc::clone(record));
            }
            Box::pin(self.forget(&active.key, record.generation)).await?;
            return Err(Error::SessionExpired);
        }
        match Box::pin(self.refresh(active.key, record.generation)).await {
            Err(Error::TokenServiceUnavailable(_)) if record.access_expires_at > now.saturating_add(1) => {
                Ok(Arc::clone(record))
            }
            other => other,
        }
    }

    /// Refreshes the session's tokens unless someone already replaced the generation
    /// `seen_generation`. Concurrent callers for one session share one token call.
    pub async fn refresh(&self, key: SessionKey, seen_generation: u64) -> Result<Arc<SessionRecord>, Error> {
        let span = trace::Span::internal("session.refresh");
        let lock = Arc::clone(&*self.refresh_locks.entry(key).or_default());
        let outcome = span
            .scope(tokio::time::timeout(
                self.settings.refresh_wait,
                self.refresh_locked(&lock, key, seen_generation),
            ))
            .await;
        drop(lock);
        self.refresh_locks.remove_if(&key, |_, lock| Arc::strong_count(lock) == 1);
        let outcome = outcome
            .unwrap_or_else(|_| Err(Error::TokenServiceUnavailable("waited too long for a refresh".into())));
        if let Err(error) = &outcome {
            span.fail(error.code());
        }
        outcome
    }

    async fn refresh_locked(
        &self,
        lock: &Arc<Mutex<()>>,
        key: SessionKey,
        seen_generation: u64,
    ) -> Result<Arc<SessionRecord>, Error> {
        // The wait for this session's lock: another request's refresh, when one is running.
        let waiting = trace::Span::internal("session.refresh.lock_wait");
        let guard = Arc::clone(lock).lock_owned().await;
        drop(waiting);
        let current = self
            .store
            .get_fresh(&key)
            .await
            .map_err(|e| self.store_error(e))?
            .ok_or(Error::SessionExpired)?;
        let coalesced = current.record.generation != seen_generation;
        trace::annotate("tokengate.refresh.coalesced", coalesced);
        if coalesced {
            self.metrics.record_refresh_coalesced();
            return Ok(current.record);
        }
        let call = RefreshCall {
            store: Arc::clone(&self.store),
            tokens: Arc::clone(&self.tokens),
            clock: self.clock,
            key,
            current: current.record,
            lease: self.settings.lock_lease,
            patience: self.settings.refresh_wait,
        };
        // The task owns the lock: it finishes (and stores what the API rotated) even if
        // every request waiting for it is dropped.
        let task = tokio::spawn(trace::Carried::current().scope(async move {
            let outcome = call.run().await;
            drop(guard);
            outcome
        }));
        task.await.map_err(|_| Error::Internal("refresh task failed"))?
    }
}

/// One refresh call and its consequence for the store, owned by its own task.
struct RefreshCall<T> {
    store: Arc<Store>,
    tokens: Arc<T>,
    clock: Clock,
    key: SessionKey,
    current: Arc<SessionRecord>,
    /// The shared store's lock lease, renewed every third of it while the call runs.
    lease: Duration,
    /// How long to wait for another replica's refresh before giving up (503).
    patience: Duration,
}

/// How often a replica waiting for another replica's refresh reads the record back.
const LOCK_POLL: Duration = Duration::from_millis(50);

/// What taking the shared refresh lock came to.
enum Locked {
    /// This replica holds it and must refresh.
    Held(u64),
    /// Another replica refreshed meanwhile: its tokens.
    Refreshed(Arc<SessionRecord>),
}

impl<T: TokenService> RefreshCall<T> {
    /// With a store shared by replicas, the call runs under the session's lock in the
    /// store (taken with `SET NX PX`, renewed while the call runs, released after the
    /// write); a replica that finds the lock held reads the winner's tokens back instead
    /// of refreshing again. A store failure is a clear 503, never a wait for a lock.
    async fn run(self) -> Result<Arc<SessionRecord>, Error> {
        if !self.store.is_shared() {
            return self.refresh().await;
        }
        let waiting = trace::Span::internal("session.refresh.store_lock");
        let locked = self.lock_or_wait().await;
        drop(waiting);
        let token = match locked? {
            Locked::Held(token) => token,
            Locked::Refreshed(record) => {
                trace::annotate("tokengate.refresh.coalesced", true);
                return Ok(record);
            }
        };
        // Someone may have finished between our read and our lock.
        let outcome = match self.store.get_fresh(&self.key).await.map_err(store_error) {
            Ok(Some(stored)) if stored.record.generation != self.current.generation => {
                trace::annotate("tokengate.refresh.coalesced", true);
                Ok(stored.record)
            }
            Ok(Some(_)) => {
                tokio::select! {
                    outcome = self.refresh() => outcome,
                    () = self.renew_lease(token) => Err(Error::Internal("the lease renewal stopped")),
                }
            }
            Ok(None) => Err(Error::SessionExpired),
            Err(error) => Err(error),
        };
        if let Err(error) = self.store.unlock_refresh(&self.key, token).await {
            // It expires by its lease.
            tracing::debug!(%error, "could not release a refresh lock");
        }
        outcome
    }

    /// Takes the session's lock, or waits (reading the record back) until the holder's
    /// tokens land or its lease runs out, within `patience`.
    async fn lock_or_wait(&self) -> Result<Locked, Error> {
        let token: u64 = rand::random();
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            if self.store.lock_refresh(&self.key, token, self.lease).await.map_err(store_error)? {
                return Ok(Locked::Held(token));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::TokenServiceUnavailable("another replica's refresh took too long".into()));
            }
            tokio::time::sleep(LOCK_POLL).await;
            match self.store.get_fresh(&self.key).await.map_err(store_error)? {
                Some(stored) if stored.record.generation != self.current.generation => {
                    return Ok(Locked::Refreshed(stored.record))
                }
                Some(_) => {}
                None => return Err(Error::SessionExpired),
            }
        }
    }

    /// Renews the lease every third of it for as long as it is polled; if the lease is
    /// lost, the call goes on: the fenced write keeps a stale result out.
    async fn renew_lease(&self, token: u64) {
        let every = self.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            match self.store.renew_refresh_lock(&self.key, token, self.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(session = ?self.key, "the refresh lock's lease was lost mid-call");
                    std::future::pending::<()>().await;
                }
                Err(error) => tracing::warn!(%error, "could not renew the refresh lock"),
            }
        }
    }

    /// The token call and the fenced write of its result.
    async fn refresh(&self) -> Result<Arc<SessionRecord>, Error> {
        let current = &self.current;
        let Some(refresh_token) = &current.refresh_token else {
            // Nothing to refresh with and the API refused the token: the session is over.
            self.store.remove_if(&self.key, current.generation).await.map_err(store_error)?;
            return Err(Error::SessionExpired);
        };
        let sub = current.identity.as_ref().map(|identity| identity.sub.as_str());
        match self.tokens.refresh_session(refresh_token, sub).await {
            Ok(fresh) => {
                let now = self.clock.now();
                let record = Arc::new(SessionRecord {
                    kind: current.kind,
                    access_expires_at: now.saturating_add(fresh.expires_in),
                    access_token: fresh.access_token,
                    // Rotation-safe: keep the new refresh token when one comes, else the old.
                    refresh_token: fresh.refresh_token.or_else(|| current.refresh_token.clone()),
                    created_at: current.created_at,
                    absolute_expires_at: current.absolute_expires_at,
                    generation: current.generation.wrapping_add(1),
                    identity: current.identity.clone(),
                });
                self.store_fresh(record).await
            }
            Err(error) if error.is_grant_rejected() => {
                // Someone else may have rotated the refresh token away first: use theirs.
                match self.store.remove_if(&self.key, current.generation).await.map_err(store_error)? {
                    Swap::Stale(newer) => Ok(newer),
                    Swap::Done | Swap::Missing => {
                        tracing::info!(session = ?self.key, %error, "refresh rejected; session deleted");
                        Err(Error::SessionExpired)
                    }
                }
            }
            Err(error) => Err(token_service_error(error)),
        }
    }

    /// Writes the new tokens only over the generation the refresh started from.
    async fn store_fresh(&self, record: Arc<SessionRecord>) -> Result<Arc<SessionRecord>, Error> {
        match self.store.replace(&self.key, self.current.generation, Arc::clone(&record)).await {
            Ok(Swap::Done) => {
                tracing::debug!(session = ?self.key, "tokens refreshed");
                Ok(record)
            }
            // A newer record won; ours is left to expire (revoking it could, at some
            // APIs, revoke the refresh token the newer record shares).
            Ok(Swap::Stale(newer)) => Ok(newer),
            // Logged out while the call ran: nobody holds the new tokens.
            Ok(Swap::Missing) => {
                revoke_in_background(&self.tokens, &record);
                Err(Error::SessionExpired)
            }
            // Kept, not revoked: if the API did not rotate the refresh token, the stored
            // record still refreshes next time.
            Err(error) => Err(store_error(error)),
        }
    }
}

/// Runs a refresh call as a holder of a stale record would (tests of the fencing).
#[cfg(test)]
pub(super) mod tests_support {
    use super::*;

    pub async fn call<T: TokenService>(
        sessions: &Sessions<T>,
        key: SessionKey,
        current: Arc<SessionRecord>,
    ) -> Result<Arc<SessionRecord>, Error> {
        let call = RefreshCall {
            store: Arc::clone(&sessions.store),
            tokens: Arc::clone(&sessions.tokens),
            clock: sessions.clock,
            key,
            current,
            lease: sessions.settings.lock_lease,
            patience: sessions.settings.refresh_wait,
        };
        call.run().await
    }
}
