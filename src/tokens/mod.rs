//! The token protocol, behind one trait: what the session core asks of a token service.
//!
//! [`TokenService`] names the operations (mint a guest token, log a shopper in with a
//! password or by the storefront's word (client-hosted), refresh, revoke, confirm a token
//! from the hosted login), [`TokenSet`] and
//! [`TokenError`] are their results. The session core decides policy from them (only
//! [`TokenError::is_grant_rejected`] may end a session); it never builds a token request.
//!
//! Implementations: [`digitalriver::DigitalRiverClient`], the Commerce API's dialect, and
//! [`oauth2::OAuth2Client`], standard OAuth 2.0 / OpenID Connect; [`Tokens`] is the one
//! the config chose (`oauth.flavor`). Unit tests of the session core use a fake.

pub mod digitalriver;
pub mod oauth2;

use std::future::Future;

use crate::secret::{AccessToken, Password, RefreshToken};

pub use digitalriver::DigitalRiverClient;
pub use oauth2::OAuth2Client;

/// A fresh pair from the token endpoint.
#[derive(Debug)]
pub struct TokenSet {
    pub access_token: AccessToken,
    /// `None` when the API sent no refresh token (then the old one, if any, is kept).
    pub refresh_token: Option<RefreshToken>,
    /// Seconds the access token lives.
    pub expires_in: u64,
}

/// What the API says about a token it issued (nothing secret in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenDetails {
    /// Whether the token belongs to a signed-in shopper (not a guest).
    pub authenticated: bool,
    /// Seconds the token still lives, when the API says.
    pub expires_in: Option<u64>,
}

/// Why a call to the token service failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The API answered with an error about the request (4xx). `code` is the OAuth or
    /// DR error code, cut to a safe length; never the description.
    #[error("rejected with status {status} and code {code:?}")]
    Rejected { status: u16, code: String },
    /// The API could not be reached, answered 5xx or 429, or sent garbage.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// No answer within `upstream.request_timeout`.
    #[error("timed out")]
    Timeout,
    /// Every token-endpoint slot (`rate_limit.token_concurrency`) is taken.
    #[error("too many token calls in flight")]
    Busy,
}

impl TokenError {
    /// Whether the grant itself is dead (bad password, expired or revoked refresh token),
    /// as opposed to a fault of ours or the API's. Only a dead grant may end a session:
    /// a misconfigured client secret (`invalid_client`) must never log everyone out.
    pub fn is_grant_rejected(&self) -> bool {
        match self {
            TokenError::Rejected { status, code } => match code.as_str() {
                "invalid_grant" | "invalid_token" | "expired_token" => true,
                "invalid_client" | "unauthorized_client" | "unsupported_grant_type" | "invalid_request" => {
                    false
                }
                _ => *status == 401 || *status == 400,
            },
            _ => false,
        }
    }

    /// Whether the API refused the `dr_limited_token` (expired guest token).
    pub fn is_limited_token_invalid(&self) -> bool {
        matches!(self, TokenError::Rejected { code, .. } if code == "dr_limited_token_invalid")
    }
}

/// The token protocol. Every method is one call to the token service; none stores
/// anything or decides what a failure means for a session.
pub trait TokenService: Send + Sync + 'static {
    /// An anonymous shopper (guest, "limited") token. Sheds load (`Busy`) rather than
    /// queueing long: a flood of new browsers must not pile up on the token endpoint.
    fn mint_guest(&self) -> impl Future<Output = Result<TokenSet, TokenError>> + Send;

    /// A shopper token for `username`; `limited` carries the guest's session and cart over.
    fn login(
        &self,
        username: &str,
        password: &Password,
        limited: Option<&AccessToken>,
    ) -> impl Future<Output = Result<TokenSet, TokenError>> + Send;

    /// A shopper token for a shopper the storefront signed in with its own identity
    /// system (client-hosted), named by its `external_reference_id` (personal data: never
    /// log it); `limited` carries the guest's session and cart over.
    fn login_external(
        &self,
        external_reference_id: &str,
        limited: Option<&AccessToken>,
    ) -> impl Future<Output = Result<TokenSet, TokenError>> + Send;

    /// New tokens for a refresh token. The service may rotate the refresh token.
    fn refresh(
        &self,
        refresh_token: &RefreshToken,
    ) -> impl Future<Output = Result<TokenSet, TokenError>> + Send;

    /// Revokes an access token (and whatever the service ties to it). An already dead
    /// token counts as revoked.
    fn revoke(&self, access_token: &AccessToken) -> impl Future<Output = Result<(), TokenError>> + Send;

    /// Asks the service about a token it issued (the hosted login's callback brings one
    /// the browser could have forged).
    fn details(
        &self,
        access_token: &AccessToken,
    ) -> impl Future<Output = Result<TokenDetails, TokenError>> + Send;

    /// Revokes a session's tokens at logout. By default the access token only (what the
    /// Commerce API ties to it goes too); the OAuth 2.0 client revokes both (RFC 7009).
    fn revoke_all(
        &self,
        access_token: &AccessToken,
        refresh_token: Option<&RefreshToken>,
    ) -> impl Future<Output = Result<(), TokenError>> + Send {
        let _ = refresh_token;
        self.revoke(access_token)
    }

    /// A session's refresh: by default [`TokenService::refresh`]; the OpenID Connect client
    /// also checks a new ID token's `sub` against the session's `sub`.
    fn refresh_session(
        &self,
        refresh_token: &RefreshToken,
        sub: Option<&str>,
    ) -> impl Future<Output = Result<TokenSet, TokenError>> + Send {
        let _ = sub;
        self.refresh(refresh_token)
    }

    /// The OpenID Connect client, for what only the code flow does (authorize, code
    /// exchange, logout tokens); `None` for every other service.
    fn oidc(&self) -> Option<&OAuth2Client> {
        None
    }
}

/// The token service the config chose (`oauth.flavor`), dispatched by `match` (like
/// `store::Store`), so the session core is `Sessions<Tokens>` in production.
// One per process, behind an `Arc`: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Tokens {
    DigitalRiver(DigitalRiverClient),
    OAuth2(OAuth2Client),
}

impl TokenService for Tokens {
    async fn mint_guest(&self) -> Result<TokenSet, TokenError> {
        match self {
            Tokens::DigitalRiver(client) => client.mint_guest().await,
            Tokens::OAuth2(client) => client.mint_guest().await,
        }
    }

    async fn login(
        &self,
        username: &str,
        password: &Password,
        limited: Option<&AccessToken>,
    ) -> Result<TokenSet, TokenError> {
        match self {
            Tokens::DigitalRiver(client) => client.login(username, password, limited).await,
            Tokens::OAuth2(client) => client.login(username, password, limited).await,
        }
    }

    async fn login_external(
        &self,
        external_reference_id: &str,
        limited: Option<&AccessToken>,
    ) -> Result<TokenSet, TokenError> {
        match self {
            Tokens::DigitalRiver(client) => client.login_external(external_reference_id, limited).await,
            Tokens::OAuth2(client) => client.login_external(external_reference_id, limited).await,
        }
    }

    async fn refresh(&self, refresh_token: &RefreshToken) -> Result<TokenSet, TokenError> {
        match self {
            Tokens::DigitalRiver(client) => client.refresh(refresh_token).await,
            Tokens::OAuth2(client) => client.refresh(refresh_token).await,
        }
    }

    async fn revoke(&self, access_token: &AccessToken) -> Result<(), TokenError> {
        match self {
            Tokens::DigitalRiver(client) => client.revoke(access_token).await,
            Tokens::OAuth2(client) => client.revoke(access_token).await,
        }
    }

    async fn details(&self, access_token: &AccessToken) -> Result<TokenDetails, TokenError> {
        match self {
            Tokens::DigitalRiver(client) => client.details(access_token).await,
            Tokens::OAuth2(client) => client.details(access_token).await,
        }
    }

    async fn revoke_all(
        &self,
        access_token: &AccessToken,
        refresh_token: Option<&RefreshToken>,
    ) -> Result<(), TokenError> {
        match self {
            Tokens::DigitalRiver(client) => client.revoke_all(access_token, refresh_token).await,
            Tokens::OAuth2(client) => TokenService::revoke_all(client, access_token, refresh_token).await,
        }
    }

    async fn refresh_session(
        &self,
        refresh_token: &RefreshToken,
        sub: Option<&str>,
    ) -> Result<TokenSet, TokenError> {
        match self {
            Tokens::DigitalRiver(client) => client.refresh_session(refresh_token, sub).await,
            Tokens::OAuth2(client) => client.refresh_session(refresh_token, sub).await,
        }
    }

    fn oidc(&self) -> Option<&OAuth2Client> {
        match self {
            Tokens::DigitalRiver(_) => None,
            Tokens::OAuth2(client) => Some(client),
        }
    }
}
