//! The building blocks of `flavor = "oauth2"`: a standard OAuth 2.0 / OpenID Connect
//! client (authorization code with PKCE and `nonce`), and OpenID Connect Back-Channel
//! Logout 1.0.
//!
//! How the pieces fit:
//!
//! - [`discovery`] reads `<issuer>/.well-known/openid-configuration` once, in the
//!   background at startup (retrying with backoff), into a [`discovery::ProviderCache`]
//!   the app keeps; until it is loaded, logins and refreshes answer 503.
//! - [`pkce`] makes the per-login secrets: the code verifier (its S256 challenge goes to
//!   the authorize URL), the `nonce` and the `state`. The verifier and nonce are kept with
//!   the pending login in the store and never leave tokengate except to the provider.
//! - `tokens::oauth2::OAuth2Client` builds the authorize URL, exchanges the code at the
//!   token endpoint (client authentication by Basic or by post), refreshes and revokes
//!   (RFC 7009), and validates the ID token it gets back.
//! - [`jwks`] keeps the provider's signing keys, refetching on an unknown `kid` at most
//!   once per interval; [`jwt`] holds what ID and logout token validation share (header,
//!   algorithm allowlist, signature, `iss`, `aud` — by `jsonwebtoken` over ring).
//! - [`id_token`] validates ID tokens (`exp`, `iat`, `nonce`, `azp`, `sub`) into the
//!   non-secret [`id_token::IdTokenClaims`]; the raw token stays an [`id_token::IdToken`]
//!   secret for `id_token_hint` at logout.
//! - [`logout_token`] validates the provider's back-channel logout token into the
//!   [`logout_token::LogoutSubject`] (`sid` and/or `sub`) whose sessions end, with a
//!   bounded `jti` replay cache.
//! - [`fetch`] is the bounded JSON `GET` and form `POST` over the one upstream client.
//!
//! Nothing here touches a session, the store or a browser's request: wiring into the
//! config, the session core and the endpoints is done by their owners.

pub mod discovery;
pub mod fetch;
pub mod id_token;
pub mod jwks;
pub mod jwt;
pub mod logout_token;
pub mod pkce;

#[cfg(test)]
pub(crate) mod test_support;
