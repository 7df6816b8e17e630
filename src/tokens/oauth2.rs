//! The standard OAuth 2.0 / OpenID Connect token client, `flavor = "oauth2"`: the second
//! implementation of [`TokenService`].
//!
//! Authorization code with PKCE (S256) and `nonce` (RFC 6749 §4.1, RFC 7636, OpenID
//! Connect Core §3.1): [`OAuth2Client::authorize_url`] builds the redirect,
//! [`OAuth2Client::exchange_code`] redeems the code and validates the ID token against the
//! login's nonce. [`OAuth2Client::refresh_tokens`] keeps the old refresh token when the
//! provider sends none and validates a new ID token without a nonce (§12.2).
//! [`OAuth2Client::revoke_token`] is RFC 7009 (200 is success, for unknown tokens too).
//! The client authenticates by `client_secret_basic` (client id and secret
//! form-urlencoded before base64, RFC 6749 §2.3.1) or `client_secret_post`.
//!
//! Endpoints come from the provider's metadata ([`ProviderCache`], loaded in the
//! background); before it is loaded every call is `Unavailable` (503). There is no guest
//! and no password login in this flavor: those trait methods answer
//! `Rejected { 400, "unsupported_grant_type" }`, which is not a dead grant.
//!
//! Errors never hold a token, the code, the verifier or the client secret: only status
//! codes, OAuth error codes and fixed texts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderValue, StatusCode};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{TokenDetails, TokenError, TokenService, TokenSet};
use crate::clock::Clock;
use crate::metrics::{Metrics, TokenOp, TokenOutcome};
use crate::oidc::discovery::{ProviderCache, ProviderMetadata};
use crate::oidc::fetch;
use crate::oidc::id_token::{self, Binding, IdToken, IdTokenClaims};
use crate::oidc::jwks::Jwks;
use crate::oidc::jwt::{Expected, JwtError};
use crate::oidc::logout_token::{self, LogoutSubject, ReplayCache};
use crate::oidc::pkce::{Nonce, PkceVerifier};
use crate::secret::{AccessToken, ClientSecret, Password, RefreshToken, SecretString};
use crate::upstream::HttpClient;

/// The scope asked for when the config names none.
pub const DEFAULT_SCOPE: &str = "openid profile email offline_access";

/// Lifetime assumed for an access token whose answer has no `expires_in`.
const DEFAULT_EXPIRES_IN: u64 = 3600;

/// How the client authenticates at the token and revocation endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`: HTTP Basic with the form-urlencoded id and secret.
    Basic,
    /// `client_secret_post`: `client_id` and `client_secret` in the form.
    Post,
}

/// Which token a revocation names (RFC 7009 §2.1 `token_type_hint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenTypeHint {
    AccessToken,
    RefreshToken,
}

impl TokenTypeHint {
    fn as_str(self) -> &'static str {
        match self {
            TokenTypeHint::AccessToken => "access_token",
            TokenTypeHint::RefreshToken => "refresh_token",
        }
    }
}

/// The flavor's settings (from `[oauth]`, assembled by `runtime`).
#[derive(Debug, Clone)]
pub struct OAuth2Settings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub client_auth: ClientAuth,
    /// Space-separated; [`DEFAULT_SCOPE`] when the config names none.
    pub scope: String,
    pub request_timeout: Duration,
    /// Token-endpoint calls in flight at most (`rate_limit.token_concurrency`).
    pub concurrency: usize,
    /// An unknown `kid` refetches the JWKS at most this often.
    pub jwks_refetch_interval: Duration,
    /// A JWKS older than this is refetched on its next use.
    pub jwks_max_age: Duration,
}

/// The authorization code from the callback: single use, a secret until redeemed.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorizationCode(SecretString);

impl AuthorizationCode {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::new(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl std::fmt::Debug for AuthorizationCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthorizationCode(<redacted>)")
    }
}

/// A token answer with its ID token, validated.
#[derive(Debug)]
pub struct OidcTokens {
    pub tokens: TokenSet,
    /// The raw ID token (for `id_token_hint`); at a refresh, `None` when none was sent.
    pub id_token: Option<IdToken>,
    pub claims: Option<IdTokenClaims>,
}

/// Why a code exchange, refresh or logout-token check failed.
#[derive(Debug, thiserror::Error)]
pub enum OAuth2Error {
    /// The token endpoint refused, failed or timed out (or the provider is not loaded yet).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The ID token (or logout token) is not valid.
    #[error("token validation: {0}")]
    Jwt(JwtError),
    /// A code exchange answered without an ID token although `openid` was asked for.
    #[error("the token endpoint sent no ID token")]
    NoIdToken,
}

impl From<JwtError> for OAuth2Error {
    fn from(error: JwtError) -> Self {
        if error.is_unavailable() {
            OAuth2Error::Token(TokenError::Unavailable("the provider's keys are unavailable".into()))
        } else {
            OAuth2Error::Jwt(error)
        }
    }
}

/// The OAuth 2.0 / OpenID Connect client.
pub struct OAuth2Client {
    http: HttpClient,
    provider: Arc<ProviderCache>,
    jwks: Jwks,
    settings: OAuth2Settings,
    basic_auth: HeaderValue,
    clock: Clock,
    replay: ReplayCache,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for OAuth2Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Client").field("issuer", &self.settings.issuer).finish_non_exhaustive()
    }
}

impl OAuth2Client {
    /// A client for the provider whose metadata `provider` holds (or will hold).
    pub fn new(
        http: HttpClient,
        provider: Arc<ProviderCache>,
        settings: OAuth2Settings,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let basic_auth = basic_auth(&settings.client_id, &settings.client_secret)?;
        let jwks = Jwks::new(
            http.clone(),
            settings.request_timeout,
            settings.jwks_refetch_interval,
            settings.jwks_max_age,
        );
        Ok(Self {
            slots: Arc::new(Semaphore::new(settings.concurrency.max(1))),
            http,
            provider,
            jwks,
            settings,
            basic_auth,
            clock,
            replay: ReplayCache::default(),
            metrics,
        })
    }

    /// The configured issuer: the `iss` a callback may carry (RFC 9207) and the namespace
    /// of the identity index.
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// The provider's metadata, or `Unavailable` (503) before discovery succeeded.
    fn metadata(&self) -> Result<Arc<ProviderMetadata>, TokenError> {
        self.provider.get().map_err(|error| TokenError::Unavailable(error.to_string()))
    }

    /// The URL to send the browser to: `response_type=code`, the client id, the exact
    /// `redirect_uri`, the scope, `state`, `nonce` and the S256 challenge of `verifier`,
    /// added to whatever query the authorization endpoint has.
    pub fn authorize_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &Nonce,
        verifier: &PkceVerifier,
    ) -> Result<String, TokenError> {
        let mut url = self.metadata()?.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &self.settings.scope)
            .append_pair("state", state)
            .append_pair("nonce", nonce.expose())
            .append_pair("code_challenge", &verifier.challenge())
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// The provider's logout page (RP-Initiated Logout 1.0), `None` when it has none.
    /// `id_token_hint` goes through the browser by that spec's design: never log the URL.
    pub fn end_session_url(
        &self,
        id_token_hint: Option<&IdToken>,
        post_logout_redirect_uri: Option<&str>,
    ) -> Result<Option<String>, TokenError> {
        let Some(mut url) = self.metadata()?.end_session_endpoint.clone() else { return Ok(None) };
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("client_id", &self.settings.client_id);
            if let Some(hint) = id_token_hint {
                query.append_pair("id_token_hint", hint.expose());
            }
            if let Some(uri) = post_logout_redirect_uri {
                query.append_pair("post_logout_redirect_uri", uri);
            }
        }
        Ok(Some(url.into()))
    }

    /// Redeems `code` (with the PKCE `verifier` and the same `redirect_uri` as the
    /// authorize URL) and validates the ID token against `nonce`.
    pub async fn exchange_code(
        &self,
        code: &AuthorizationCode,
        verifier: &PkceVerifier,
        redirect_uri: &str,
        nonce: &Nonce,
    ) -> Result<OidcTokens, OAuth2Error> {
        let started = Instant::now();
        let result = self.exchange(code, verifier, redirect_uri, nonce).await;
        self.record(TokenOp::Login, outcome(result.as_ref().err()), started);
        result
    }

    async fn exchange(
        &self,
        code: &AuthorizationCode,
        verifier: &PkceVerifier,
        redirect_uri: &str,
        nonce: &Nonce,
    ) -> Result<OidcTokens, OAuth2Error> {
        let metadata = self.metadata()?;
        let pairs = [
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier.expose()),
        ];
        let (tokens, id_token) = self.token_request(&metadata, &pairs).await?;
        let id_token = id_token.ok_or(OAuth2Error::NoIdToken)?;
        let claims = self.validate_id_token(&metadata, &id_token, Binding::Nonce(nonce)).await?;
        Ok(OidcTokens { tokens, id_token: Some(id_token), claims: Some(claims) })
    }

    /// New tokens for `refresh_token`; the old refresh token is kept when the provider
    /// sends none. A new ID token is validated (no nonce; `sub` equal to `session_sub`
    /// when given).
    pub async fn refresh_tokens(
        &self,
        refresh_token: &RefreshToken,
        session_sub: Option<&str>,
    ) -> Result<OidcTokens, OAuth2Error> {
        let started = Instant::now();
        let result = self.refresh_inner(refresh_token, session_sub).await;
        self.record(TokenOp::Refresh, outcome(result.as_ref().err()), started);
        result
    }

    async fn refresh_inner(
        &self,
        refresh_token: &RefreshToken,
        session_sub: Option<&str>,
    ) -> Result<OidcTokens, OAuth2Error> {
        let metadata = self.metadata()?;
        let pairs = [("grant_type", "refresh_token"), ("refresh_token", refresh_token.expose())];
        let (mut tokens, id_token) = self.token_request(&metadata, &pairs).await?;
        if tokens.refresh_token.is_none() {
            tokens.refresh_token = Some(refresh_token.clone());
        }
        let claims = match &id_token {
            Some(id_token) => Some(
                self.validate_id_token(&metadata, id_token, Binding::Refresh { sub: session_sub }).await?,
            ),
            None => None,
        };
        Ok(OidcTokens { tokens, id_token, claims })
    }

    /// RFC 7009 revocation of one token. `Ok` when the provider answers 200 (also for a
    /// token it does not know) or has no revocation endpoint.
    pub async fn revoke_token(&self, token: &str, hint: TokenTypeHint) -> Result<(), TokenError> {
        let started = Instant::now();
        let result = self.revoke_inner(token, hint).await;
        self.record(TokenOp::Revoke, token_outcome(result.as_ref().err()), started);
        result
    }

    async fn revoke_inner(&self, token: &str, hint: TokenTypeHint) -> Result<(), TokenError> {
        let metadata = self.metadata()?;
        let Some(endpoint) = &metadata.revocation_endpoint else {
            tracing::debug!("the provider has no revocation endpoint; nothing revoked");
            return Ok(());
        };
        let _slot = self.slot().await?;
        let (form, authorization) =
            self.authenticated_form(&[("token", token), ("token_type_hint", hint.as_str())]);
        let (status, body) =
            fetch::post_form(&self.http, endpoint, form, authorization, self.settings.request_timeout)
                .await?;
        if status == StatusCode::OK {
            return Ok(());
        }
        Err(fetch::classify(status, &body))
    }

    /// Revokes both tokens of a session at logout: the refresh token first (RFC 7009 §2.1:
    /// the provider may then drop its access tokens too), then the access token. Both are
    /// tried; the first failure is returned.
    pub async fn revoke_all(
        &self,
        access: &AccessToken,
        refresh: Option<&RefreshToken>,
    ) -> Result<(), TokenError> {
        let refreshed = match refresh {
            Some(token) => self.revoke_token(token.expose(), TokenTypeHint::RefreshToken).await,
            None => Ok(()),
        };
        let accessed = self.revoke_token(access.expose(), TokenTypeHint::AccessToken).await;
        refreshed.and(accessed)
    }

    /// Validates a back-channel logout token (Back-Channel Logout 1.0 §2.6).
    pub async fn validate_logout_token(&self, token: &str) -> Result<LogoutSubject, OAuth2Error> {
        let metadata = self.metadata()?;
        let expected = self.expected(&metadata);
        Ok(logout_token::validate(token, &self.jwks, &expected, &self.replay, self.clock.now()).await?)
    }

    fn expected<'a>(&'a self, metadata: &'a ProviderMetadata) -> Expected<'a> {
        Expected {
            issuer: &metadata.issuer,
            audience: &self.settings.client_id,
            algorithms: &metadata.id_token_algorithms,
            jwks_uri: &metadata.jwks_uri,
        }
    }

    async fn validate_id_token(
        &self,
        metadata: &ProviderMetadata,
        id_token: &IdToken,
        binding: Binding<'_>,
    ) -> Result<IdTokenClaims, OAuth2Error> {
        let expected = self.expected(metadata);
        Ok(id_token::validate(id_token, &self.jwks, &expected, binding, self.clock.now()).await?)
    }

    /// One token-endpoint call with client authentication; the token set and the raw ID
    /// token, if any.
    async fn token_request(
        &self,
        metadata: &ProviderMetadata,
        pairs: &[(&str, &str)],
    ) -> Result<(TokenSet, Option<IdToken>), TokenError> {
        let _slot = self.slot().await?;
        let (form, authorization) = self.authenticated_form(pairs);
        let (status, body) = fetch::post_form(
            &self.http,
            &metadata.token_endpoint,
            form,
            authorization,
            self.settings.request_timeout,
        )
        .await?;
        if status != StatusCode::OK {
            return Err(fetch::classify(status, &body));
        }
        parse_token_response(&body)
    }

    /// The form with the client's credentials in it (post) or beside it (Basic).
    fn authenticated_form(&self, pairs: &[(&str, &str)]) -> (String, Option<&HeaderValue>) {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.extend_pairs(pairs);
        match self.settings.client_auth {
            ClientAuth::Basic => (form.finish(), Some(&self.basic_auth)),
            ClientAuth::Post => {
                form.append_pair("client_id", &self.settings.client_id);
                form.append_pair("client_secret", self.settings.client_secret.expose());
                (form.finish(), None)
            }
        }
    }

    /// Waits for a token-endpoint slot, at most the request timeout.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, TokenError> {
        match tokio::time::timeout(self.settings.request_timeout, Arc::clone(&self.slots).acquire_owned())
            .await
        {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(TokenError::Busy),
        }
    }

    fn record(&self, op: TokenOp, outcome: TokenOutcome, started: Instant) {
        self.metrics.record_token_call(op, outcome, started.elapsed());
    }
}

/// How a call ended, for metrics: an invalid ID token is not a dead grant, so it counts
/// with the failures.
fn outcome(error: Option<&OAuth2Error>) -> TokenOutcome {
    match error {
        None => TokenOutcome::Ok,
        Some(OAuth2Error::Token(error)) => token_outcome(Some(error)),
        Some(_) => TokenOutcome::Unavailable,
    }
}

fn token_outcome(error: Option<&TokenError>) -> TokenOutcome {
    match error {
        None => TokenOutcome::Ok,
        Some(error) if error.is_grant_rejected() => TokenOutcome::Rejected,
        Some(_) => TokenOutcome::Unavailable,
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1), marked sensitive.
fn basic_auth(client_id: &str, secret: &ClientSecret) -> Result<HeaderValue, String> {
    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let credentials = format!("{}:{}", encode(client_id), encode(secret.expose()));
    let mut value = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(credentials)))
        .map_err(|_| "oauth.client_id: not valid in an HTTP header".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

/// A standard token response (RFC 6749 §5.1): `access_token`, `token_type` Bearer (when
/// sent), `expires_in` (number or numeric string), optional `refresh_token` and `id_token`.
fn parse_token_response(body: &[u8]) -> Result<(TokenSet, Option<IdToken>), TokenError> {
    let garbage = || TokenError::Unavailable("token endpoint answered 200 without a usable token".into());
    let value: Value = serde_json::from_slice(body).map_err(|_| garbage())?;
    let text = |name: &str| value.get(name).and_then(Value::as_str).filter(|t| !t.is_empty());
    let access_token = text("access_token").ok_or_else(garbage)?;
    if text("token_type").is_some_and(|kind| !kind.eq_ignore_ascii_case("bearer")) {
        return Err(TokenError::Unavailable(
            "token endpoint issued a token that is not a Bearer token".into(),
        ));
    }
    let expires_in = match value.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .unwrap_or(DEFAULT_EXPIRES_IN);
    let tokens = TokenSet {
        access_token: AccessToken::new(access_token),
        refresh_token: text("refresh_token").map(RefreshToken::new),
        expires_in,
    };
    Ok((tokens, text("id_token").map(IdToken::new)))
}

/// The refusal for operations this flavor does not have (no guest, no password login):
/// a 4xx that is not a dead grant (the endpoints refuse these flows first, with 400
/// `unsupported_flow`).
fn unsupported() -> TokenError {
    TokenError::Rejected { status: 400, code: "unsupported_grant_type".into() }
}

impl TokenService for OAuth2Client {
    /// No guests in this flavor (`guest = "off"`).
    async fn mint_guest(&self) -> Result<TokenSet, TokenError> {
        Err(unsupported())
    }

    /// No password login in this flavor.
    async fn login(
        &self,
        _username: &str,
        _password: &Password,
        _limited: Option<&AccessToken>,
    ) -> Result<TokenSet, TokenError> {
        Err(unsupported())
    }

    /// No client-hosted shoppers in this flavor: the provider signs shoppers in.
    async fn login_external(
        &self,
        _external_reference_id: &str,
        _limited: Option<&AccessToken>,
    ) -> Result<TokenSet, TokenError> {
        Err(unsupported())
    }

    /// A refresh; a new ID token is validated (without a session's `sub`), then dropped.
    async fn refresh(&self, refresh_token: &RefreshToken) -> Result<TokenSet, TokenError> {
        self.refresh_session(refresh_token, None).await
    }

    /// A session's refresh: a new ID token must name the session's `sub`. An ID token
    /// that does not validate is a provider fault (503), not a dead grant.
    async fn refresh_session(
        &self,
        refresh_token: &RefreshToken,
        sub: Option<&str>,
    ) -> Result<TokenSet, TokenError> {
        match self.refresh_tokens(refresh_token, sub).await {
            Ok(answer) => Ok(answer.tokens),
            Err(OAuth2Error::Token(error)) => Err(error),
            Err(error) => Err(TokenError::Unavailable(error.to_string())),
        }
    }

    /// Both tokens, refresh token first (RFC 7009 §2.1).
    async fn revoke_all(
        &self,
        access: &AccessToken,
        refresh: Option<&RefreshToken>,
    ) -> Result<(), TokenError> {
        OAuth2Client::revoke_all(self, access, refresh).await
    }

    fn oidc(&self) -> Option<&OAuth2Client> {
        Some(self)
    }

    /// Revokes the access token (RFC 7009, hint `access_token`).
    async fn revoke(&self, access_token: &AccessToken) -> Result<(), TokenError> {
        self.revoke_token(access_token.expose(), TokenTypeHint::AccessToken).await
    }

    /// Not needed here (tokens come from the back channel, never from the browser).
    async fn details(&self, _access_token: &AccessToken) -> Result<TokenDetails, TokenError> {
        Err(unsupported())
    }
}

#[cfg(test)]
mod tests;
