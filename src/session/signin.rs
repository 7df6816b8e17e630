//! Signing in and out: the password login, the storefront's own sign-in (client-hosted),
//! the hosted login's two halves, logout.
//!
//! Every sign-in ends in [`Sessions::become_shopper`]: the new tokens go under a new id
//! (the old cookie stops working at once) by one store rotation. Races on one cookie
//! have one winner: a second login, or a login after a logout, finds the old key's
//! mark and fails with `session_expired`, and the tokens it got are revoked; a logout
//! after a login follows the mark and ends the new session too. So at most one session
//! survives, and no token that nobody holds stays alive.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{new_session_id, token_service_error, Active, Sessions};
use crate::callback::CallbackParams;
use crate::cookie::CookieLookup;
use crate::error::Error;
use crate::hosted_login::{self, state_matches, ReturnTo, STATE_LIFETIME_SECS};
use crate::secret::{AccessToken, Password};
use crate::session_id::{SessionId, SessionKey};
use crate::store::{PendingLogin, Removal, Rotation, SessionKind, SessionRecord, SessionStore, StoreError};
use crate::tokens::{TokenError, TokenService, TokenSet};

/// Rotations a logout follows at most (each is a login that finished moments before).
const MAX_FOLLOWED_ROTATIONS: usize = 4;

/// How a hosted login came back.
#[derive(Debug)]
pub enum HostedEnd {
    /// The shopper is signed in under a new id.
    SignedIn { id: SessionId, active: Active, return_to: String },
    /// The API reported an error (the shopper cancelled or failed): back to the shop.
    Failed { return_to: String, code: String },
}

impl<T: TokenService> Sessions<T> {
    /// Logs a shopper in with the password grant, carrying a guest session's cart over,
    /// and moves the session to a new id.
    pub async fn login(
        &self,
        cookie: &CookieLookup,
        username: &str,
        password: &Password,
        now: u64,
        client: IpAddr,
    ) -> Result<(SessionId, Active), Error> {
        // Each attempt counts as a new session: this also slows password guessing.
        self.rate_limit.check(client)?;
        let current = self.live_session(cookie, now).await?;
        let tokens = carrying_the_cart(guest_token_of(current.as_ref()), |limited| {
            self.tokens.login(username, password, limited)
        })
        .await?;
        self.become_shopper(
            cookie_key(cookie).as_ref(),
            self.new_record(SessionKind::Shopper, tokens, now),
            now,
        )
        .await
    }

    /// Signs in a shopper the storefront's server vouches for (client-hosted): the shopper
    /// token for `external_reference_id`, carrying over the cart of `session` when it is a
    /// live guest, under a new id (the old one stops working at once). An absent or
    /// unknown `session` gets a fresh shopper session. The id is personal data: never log it.
    pub async fn login_external(
        &self,
        session: &CookieLookup,
        external_reference_id: &str,
        now: u64,
        client: IpAddr,
    ) -> Result<(SessionId, Active), Error> {
        self.rate_limit.check(client)?;
        let current = self.live_session(session, now).await?;
        if current.is_none() && !self.store.has_room() {
            return Err(Error::SessionsFull);
        }
        let tokens = carrying_the_cart(guest_token_of(current.as_ref()), |limited| {
            self.tokens.login_external(external_reference_id, limited)
        })
        .await?;
        self.become_shopper(
            cookie_key(session).as_ref(),
            self.new_record(SessionKind::Shopper, tokens, now),
            now,
        )
        .await
    }

    /// Gives the browser a shopper session holding `tokens` under a new id, replacing
    /// the session under `old` (whose id stops working at once). A previous shopper's
    /// tokens are revoked; a guest's were carried over into the new session by the API.
    pub(super) async fn become_shopper(
        &self,
        old: Option<&SessionKey>,
        record: SessionRecord,
        now: u64,
    ) -> Result<(SessionId, Active), Error> {
        let record = Arc::new(record);
        let id = new_session_id()?;
        let key = id.key();
        match self.store.rotate(old, key, Arc::clone(&record), now).await {
            Ok(Rotation::Done { previous }) => {
                if let Some(previous) = previous.filter(|previous| previous.kind == SessionKind::Shopper) {
                    self.revoke_in_background(&previous);
                }
                Ok((id, Active { key, record, last_seen: now }))
            }
            Ok(Rotation::Conflict) => {
                tracing::info!("a concurrent login or logout on this cookie won; this login is dropped");
                self.revoke_in_background(&record);
                Err(Error::SessionExpired)
            }
            Err(error) => {
                self.revoke_in_background(&record);
                Err(self.store_error(error))
            }
        }
    }

    /// Ends the cookie's session and revokes its tokens upstream; with a login that
    /// rotated it moments ago, the session that login made too. No session is fine.
    pub async fn logout(&self, cookie: &CookieLookup, now: u64) -> Result<(), Error> {
        let Some(key) = cookie_key(cookie) else { return Ok(()) };
        if let Some(record) = self.end_session(key, now).await? {
            // Gone locally whatever the API says; a failed revocation only means the
            // tokens live out their natural life at the API.
            let refresh = record.refresh_token.as_ref();
            if let Err(error) = self.tokens.revoke_all(&record.access_token, refresh).await {
                tracing::warn!(%error, "revocation at logout failed; the session is deleted anyway");
            }
        }
        Ok(())
    }

    /// Ends the session under `key`, following a login's rotation moments ago to the
    /// session it made; the record that was ended, if any (its tokens are the caller's to
    /// revoke).
    pub(super) async fn end_session(
        &self,
        mut key: SessionKey,
        now: u64,
    ) -> Result<Option<Arc<SessionRecord>>, Error> {
        for _ in 0..MAX_FOLLOWED_ROTATIONS {
            match self.store.end(&key, now).await.map_err(|e| self.store_error(e))? {
                Removal::Removed(record) => return Ok(Some(record)),
                Removal::Moved(successor) => key = successor,
                Removal::Absent => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The session a hosted login will be bound to: the cookie's live session, or a new
    /// guest (with its id, for the browser's cookie). Either way it counts against the
    /// client's new-session allowance: each pending login holds a state for ten minutes.
    pub async fn session_for_hosted_login(
        &self,
        cookie: &CookieLookup,
        now: u64,
        client: IpAddr,
    ) -> Result<(Active, Option<SessionId>), Error> {
        if self.hosted_login.is_none() {
            return Err(Error::NotFound);
        }
        match self.live_session(cookie, now).await? {
            Some(active) => {
                self.rate_limit.check(client)?;
                Ok((active, None))
            }
            None => {
                let (id, active) = self.mint_guest(now, client).await?;
                Ok((active, Some(id)))
            }
        }
    }

    /// Starts a hosted login for `active`: a pending login with a single-use state, kept
    /// in the store under the session (replacing an earlier one), and the API's authorize URL to send the browser to (it may carry
    /// the guest token: never log it). The caller checked `return_to` before a guest was
    /// started for nothing (`hosted_login::checked_return_to`).
    pub async fn begin_hosted_login(
        &self,
        active: &Active,
        return_to: ReturnTo,
        now: u64,
    ) -> Result<String, Error> {
        let hosted = self.hosted_login.as_ref().ok_or(Error::NotFound)?;
        let authorize = hosted.authorize(&active.record)?;
        let pending = PendingLogin {
            state: authorize.state,
            return_to: return_to.into_string(),
            carried_guest: authorize.carried_guest,
            expires_at: now.saturating_add(STATE_LIFETIME_SECS),
            code_flow: None,
        };
        self.store.put_pending(active.key, pending).await.map_err(|error| match error {
            StoreError::Full => Error::RateLimited { retry_after: Duration::from_secs(30) },
            other => self.store_error(other),
        })?;
        Ok(authorize.url)
    }

    /// Completes a hosted login from the callback's parameters: the cookie's live session
    /// must have a pending login, unexpired, and a state the API echoed must be its state.
    /// Any use, even a failed one, ends it. A token from the callback is confirmed with the API (a browser could post
    /// anything) before the session becomes a shopper's under a new id.
    pub async fn complete_hosted_login(
        &self,
        cookie: &CookieLookup,
        params: CallbackParams,
        now: u64,
    ) -> Result<HostedEnd, Error> {
        let current = self.live_session(cookie, now).await?.ok_or(Error::InvalidState)?;
        let pending = self
            .store
            .take_pending(&current.key)
            .await
            .map_err(|e| self.store_error(e))?
            .ok_or(Error::InvalidState)?;
        if pending.expires_at <= now || !state_matches(params.state.as_deref(), &pending.state) {
            return Err(Error::InvalidState);
        }
        let (access_token, expires_in) = match hosted_login::token_of(params) {
            Ok(token) => token,
            Err(code) => {
                if pending.carried_guest.is_some() {
                    self.replace_exposed_guest_token(&current).await;
                }
                return Ok(HostedEnd::Failed { return_to: pending.return_to, code });
            }
        };
        let details = self.tokens.details(&access_token).await.map_err(|error| match error {
            TokenError::Rejected { .. } => Error::InvalidCredentials,
            other => token_service_error(other),
        })?;
        if !details.authenticated {
            return Err(Error::InvalidCredentials);
        }
        let expires_in = details.expires_in.or(expires_in).unwrap_or(3600);
        let tokens = TokenSet { access_token, refresh_token: None, expires_in };
        let record = self.new_record(SessionKind::Shopper, tokens, now);
        let (id, active) = self.become_shopper(Some(&current.key), record, now).await?;
        if let Some(guest_token) = pending.carried_guest {
            // The guest token travelled in a URL: revoke it now that the login is complete.
            if let Err(error) = self.tokens.revoke(&guest_token).await {
                tracing::warn!(%error, "revoking the carried guest token failed");
            }
        }
        Ok(HostedEnd::SignedIn { id, active, return_to: pending.return_to })
    }

    /// After a failed hosted login the guest session goes on, but its token travelled in
    /// a URL: refresh it, so the exposed one stops working (best effort).
    async fn replace_exposed_guest_token(&self, active: &Active) {
        if let Err(error) = self.refresh(active.key, active.record.generation).await {
            tracing::warn!(code = error.code(), "could not replace the guest token after a failed login");
        }
    }
}

/// The guest's token of a live guest session (to carry its cart over at sign-in).
fn guest_token_of(current: Option<&Active>) -> Option<&AccessToken> {
    current
        .filter(|active| active.record.kind == SessionKind::Guest)
        .map(|active| &active.record.access_token)
}

/// A sign-in (`call`) with the guest's token as `dr_limited_token`, so its cart carries
/// over; an expired guest token must not stop it (only the cart is lost), so it is tried
/// once more without. A dead grant is `invalid_credentials`.
async fn carrying_the_cart<'a, F, Fut>(
    guest_token: Option<&'a AccessToken>,
    call: F,
) -> Result<TokenSet, Error>
where
    F: Fn(Option<&'a AccessToken>) -> Fut,
    Fut: std::future::Future<Output = Result<TokenSet, TokenError>>,
{
    let tokens = match call(guest_token).await {
        Err(error) if guest_token.is_some() && error.is_limited_token_invalid() => call(None).await,
        other => other,
    };
    tokens.map_err(|error| {
        if error.is_grant_rejected() {
            Error::InvalidCredentials
        } else {
            token_service_error(error)
        }
    })
}

/// The store key the cookie names, live or not.
pub(super) fn cookie_key(cookie: &CookieLookup) -> Option<SessionKey> {
    match cookie {
        CookieLookup::Present(id) => Some(id.key()),
        CookieLookup::Absent | CookieLookup::Malformed => None,
    }
}
