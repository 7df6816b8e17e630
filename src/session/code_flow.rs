//! The authorization code flow of `flavor = "oauth2"` (PKCE S256, `nonce`, `state`) and
//! OpenID Connect Back-Channel Logout 1.0.
//!
//! **Binding a login to its browser.** There is no guest in this flavor, so a browser
//! without a session has nothing to keep a pending login under. `begin_code_login` then
//! makes a fresh session id, keeps the pending login under its key and sets the cookie to
//! it: only that browser can come back for it (a callback URL sent to another browser, or
//! a login CSRF, finds no pending login, or one with another state). That id never
//! becomes a session: the callback signs the shopper in under a *new* id (rotation), so
//! the pre-login cookie, like every cookie before a login, dies with the login.
//!
//! **Single use.** The pending login is taken before anything is checked, so a replayed
//! callback (same URL twice, or a replayed state) finds nothing; the provider also refuses
//! a code's second exchange. The state is required here and compared as a hash in
//! constant time; the nonce is checked against the ID token; `iss`, when the provider
//! sends it (RFC 9207), must be the issuer.
//!
//! **Identity index.** A signed-in session is linked under its `sid` (when the provider
//! sends one) and its `sub`, so a logout token finds it on any replica.

use std::sync::Arc;
use std::time::Duration;

use super::signin::cookie_key;
use super::{new_session_id, revoke_in_background, token_service_error, Active, HostedEnd, Sessions};
use crate::callback::{CodeCallback, CodeOutcome};
use crate::cookie::CookieLookup;
use crate::error::Error;
use crate::hosted_login::{state_key, state_matches, ReturnTo, STATE_LIFETIME_SECS};
use crate::oidc::id_token::IdTokenClaims;
use crate::oidc::logout_token::LogoutSubject;
use crate::oidc::pkce::{self, Nonce, PkceVerifier};
use crate::secret::constant_time_eq;
use crate::session_id::SessionId;
use crate::store::{
    identity_key, CodeFlowSecrets, Identity, IdentityKey, PendingLogin, Removal, SessionKind, SessionStore,
    StoreError,
};
use crate::tokens::oauth2::OAuth2Error;
use crate::tokens::{OAuth2Client, TokenError, TokenService};

/// Where `GET /session/authorize` sends the browser, and the pre-login cookie to set.
#[derive(Debug)]
pub struct CodeLoginStart {
    /// The provider's authorize URL (no secret in it: state, nonce and the challenge).
    pub url: String,
    /// A fresh id the pending login is bound to, when the browser had no session.
    pub binding: Option<SessionId>,
}

impl<T: TokenService> Sessions<T> {
    /// Whether this is the code flow (`flavor = "oauth2"`).
    pub fn is_code_flow(&self) -> bool {
        self.tokens.oidc().is_some()
    }

    fn oidc(&self) -> Result<&OAuth2Client, Error> {
        self.tokens.oidc().ok_or(Error::NotFound)
    }

    /// `redirect_uri`: exactly `public_origin` + `/session/callback`.
    fn redirect_uri(&self) -> Result<&str, Error> {
        self.hosted_login.as_ref().map(|hosted| hosted.callback_url()).ok_or(Error::NotFound)
    }

    /// Starts a code-flow login: a pending login (state hash, PKCE verifier, nonce,
    /// `return_to`) under the cookie's live session, or under a fresh id bound to this
    /// browser by its cookie; the provider's authorize URL. Counts against the client's
    /// new-session allowance (each pending login holds a place for ten minutes).
    pub async fn begin_code_login(
        &self,
        cookie: &CookieLookup,
        return_to: ReturnTo,
        now: u64,
        client: std::net::IpAddr,
    ) -> Result<CodeLoginStart, Error> {
        let oidc = self.oidc()?;
        let redirect_uri = self.redirect_uri()?;
        self.rate_limit.check(client)?;
        let (key, binding) = match self.live_session(cookie, now).await? {
            Some(active) => (active.key, None),
            None => {
                let id = new_session_id()?;
                (id.key(), Some(id))
            }
        };
        let no_randomness = |_| Error::Internal("no randomness for a login");
        let state = pkce::generate_state().map_err(no_randomness)?;
        let secrets = CodeFlowSecrets {
            verifier: PkceVerifier::generate().map_err(no_randomness)?,
            nonce: Nonce::generate().map_err(no_randomness)?,
        };
        let url = oidc
            .authorize_url(redirect_uri, &state, &secrets.nonce, &secrets.verifier)
            .map_err(token_service_error)?;
        let pending = PendingLogin {
            state: state_key(&state),
            return_to: return_to.into_string(),
            carried_guest: None,
            expires_at: now.saturating_add(STATE_LIFETIME_SECS),
            code_flow: Some(secrets),
        };
        self.store.put_pending(key, pending).await.map_err(|error| match error {
            StoreError::Full => Error::RateLimited { retry_after: Duration::from_secs(30) },
            other => self.store_error(other),
        })?;
        Ok(CodeLoginStart { url, binding })
    }

    /// Completes a code-flow login from the callback: the cookie's pending login (taken:
    /// single use), its state, the provider's `iss`; a provider error goes back to
    /// `return_to`; else the code is exchanged with the verifier and the ID token checked
    /// against the nonce, and the shopper's session starts under a new id, indexed under
    /// its `sid` and `sub`.
    pub async fn complete_code_login(
        &self,
        cookie: &CookieLookup,
        callback: CodeCallback,
        now: u64,
    ) -> Result<HostedEnd, Error> {
        let oidc = self.oidc()?;
        let redirect_uri = self.redirect_uri()?;
        let key = cookie_key(cookie).ok_or(Error::InvalidState)?;
        let pending = self
            .store
            .take_pending(&key)
            .await
            .map_err(|e| self.store_error(e))?
            .ok_or(Error::InvalidState)?;
        let secrets = pending.code_flow.ok_or(Error::InvalidState)?;
        let state_ok = callback.state.is_some() && state_matches(callback.state.as_deref(), &pending.state);
        if pending.expires_at <= now || !state_ok {
            return Err(Error::InvalidState);
        }
        if callback
            .iss
            .as_deref()
            .is_some_and(|iss| !constant_time_eq(iss.as_bytes(), oidc.issuer().as_bytes()))
        {
            tracing::warn!("a login callback names another issuer (RFC 9207 mix-up defence); refused");
            return Err(Error::InvalidState);
        }
        let code = match callback.outcome {
            CodeOutcome::Code(code) => code,
            CodeOutcome::Error { code } => {
                return Ok(HostedEnd::Failed { return_to: pending.return_to, code })
            }
        };
        let answer = oidc
            .exchange_code(&code, &secrets.verifier, redirect_uri, &secrets.nonce)
            .await
            .map_err(exchange_error)?;
        let claims = answer.claims.ok_or(Error::InvalidCredentials)?;
        let mut record = self.new_record(SessionKind::Shopper, answer.tokens, now);
        record.identity = Some(Arc::new(identity_of(claims)));
        let (id, active) = self.become_shopper(Some(&key), record, now).await?;
        self.link_identity(oidc.issuer(), &active, now).await;
        Ok(HostedEnd::SignedIn { id, active, return_to: pending.return_to })
    }

    /// Indexes `active` under its `sid` and `sub` until its absolute end. A failure only
    /// means a back-channel logout will not find it (its timeouts still end it).
    async fn link_identity(&self, issuer: &str, active: &Active, now: u64) {
        let Some(identity) = &active.record.identity else { return };
        let until = active.record.absolute_expires_at;
        for link in identity_keys(issuer, identity.sid.as_deref(), Some(&identity.sub)) {
            if let Err(error) = self.store.link_identity(link, active.key, until, now).await {
                tracing::warn!(%error, "could not index a session for back-channel logout");
            }
        }
    }

    /// Rebuilds the memory store's identity index from its sessions (the snapshot keeps
    /// sessions, not the index), so sessions restored at start can be logged out by the
    /// provider too. Nothing to do for a shared store (the index lives in it).
    pub async fn relink_identities(&self, now: u64) {
        let Ok(oidc) = self.oidc() else { return };
        if self.store.is_shared() {
            return;
        }
        let Ok(sessions) = self.store.export() else { return };
        for (key, record, last_seen) in sessions {
            let active = Active { key, record, last_seen };
            self.link_identity(oidc.issuer(), &active, now).await;
        }
    }

    /// Back-Channel Logout: ends the sessions of `subject` (the `sid`'s when the token
    /// names one, else every session of the `sub`) and revokes their tokens in the
    /// background. Returns how many sessions ended.
    pub async fn backchannel_logout(&self, subject: &LogoutSubject, now: u64) -> Result<usize, Error> {
        let oidc = self.oidc()?;
        let identity = match (&subject.sid, &subject.sub) {
            (Some(sid), _) => identity_key("sid", oidc.issuer(), sid),
            (None, Some(sub)) => identity_key("sub", oidc.issuer(), sub),
            (None, None) => return Ok(0),
        };
        let keys = self.store.sessions_of(&identity).await.map_err(|e| self.store_error(e))?;
        let mut ended = 0;
        for key in keys {
            // Only the indexed key itself: a rotation mark on it points at a later login,
            // which indexed itself (and may be someone else's: a shopper who signed in as
            // another user in the same browser).
            if let Removal::Removed(record) =
                self.store.end(&key, now).await.map_err(|e| self.store_error(e))?
            {
                ended += 1;
                revoke_in_background(&self.tokens, &record);
            }
        }
        Ok(ended)
    }

    /// Parses and validates a logout token (Back-Channel Logout 1.0 §2.6).
    pub async fn validate_logout_token(&self, token: &str) -> Result<LogoutSubject, OAuth2Error> {
        match self.tokens.oidc() {
            Some(oidc) => oidc.validate_logout_token(token).await,
            None => Err(OAuth2Error::Token(TokenError::Unavailable("not the oauth2 flavor".into()))),
        }
    }
}

/// The identity index keys of a `sid` and a `sub`.
fn identity_keys(issuer: &str, sid: Option<&str>, sub: Option<&str>) -> Vec<IdentityKey> {
    let sid = sid.map(|sid| identity_key("sid", issuer, sid));
    let sub = sub.map(|sub| identity_key("sub", issuer, sub));
    sid.into_iter().chain(sub).collect()
}

fn identity_of(claims: IdTokenClaims) -> Identity {
    Identity { sub: claims.sub, sid: claims.sid, name: claims.name, email: claims.email }
}

/// A failed code exchange: the provider refused the code (used, expired, wrong verifier)
/// or the ID token does not validate → 401 `invalid_credentials`; the provider
/// unreachable or unloaded → 503.
fn exchange_error(error: OAuth2Error) -> Error {
    match error {
        OAuth2Error::Token(TokenError::Rejected { code, .. }) => {
            tracing::info!(code = %code, "the provider refused the authorization code");
            Error::InvalidCredentials
        }
        OAuth2Error::Token(other) => token_service_error(other),
        OAuth2Error::Jwt(error) => {
            tracing::warn!(%error, "the ID token from the code exchange is not valid; login refused");
            Error::InvalidCredentials
        }
        OAuth2Error::NoIdToken => {
            Error::TokenServiceUnavailable("the token endpoint sent no ID token".into())
        }
    }
}
