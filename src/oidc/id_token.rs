//! ID token validation (OpenID Connect Core 1.0 §3.1.3.7 and §12.2).
//!
//! Checked, in order: the header (asymmetric `alg` the provider advertises, never `none`;
//! `typ`, when present, not that of a logout token), the signature against the provider's
//! JWKS, `iss` equal to the issuer, `aud` containing the client id (`jwt::verify`); then
//! `azp` (required and equal to the client id when there are several audiences, equal to
//! it whenever present), `exp` not passed, `iat` recent and not in the future, `sub`
//! present, and the `nonce` equal to the login's (at a refresh, where the provider may
//! leave it out, `sub` must instead equal the session's).
//!
//! What tokengate keeps is [`IdTokenClaims`] (nothing secret) and the raw token as an
//! [`IdToken`] (a secret: it is sent back to the provider as `id_token_hint` at logout).

use std::fmt;

use serde_json::{Map, Value};

use super::jwks::Jwks;
use super::jwt::{self, Expected, JwtError};
use super::pkce::Nonce;
use crate::secret::SecretString;

/// How old an ID token may be when tokengate receives it (it is always fresh from the
/// token endpoint).
pub const MAX_ID_TOKEN_AGE_SECS: u64 = 600;

/// The raw ID token. `Debug` is redacted, no `Display`, `==` constant-time, wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct IdToken(SecretString);

impl IdToken {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::new(value.into()))
    }

    /// The token itself (for `id_token_hint` and the store's codec only).
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for IdToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdToken(<redacted>)")
    }
}

/// The claims tokengate keeps (and `GET /session` may show): none of them is a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTokenClaims {
    pub sub: String,
    /// The provider's session id, matched by back-channel logout.
    pub sid: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    /// When the ID token expires (Unix seconds); not the session's lifetime.
    pub exp: u64,
}

/// What a valid ID token must show besides a good signature.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// At the code exchange: the `nonce` sent in the authorize URL.
    Nonce(&'a Nonce),
    /// At a refresh (§12.2): no nonce is required; `sub` must be the session's when known.
    Refresh { sub: Option<&'a str> },
}

/// Validates `token` for the client `expected.audience` at time `now` (Unix seconds).
pub async fn validate(
    token: &IdToken,
    jwks: &Jwks,
    expected: &Expected<'_>,
    binding: Binding<'_>,
    now: u64,
) -> Result<IdTokenClaims, JwtError> {
    let header = jwt::peek_header(token.expose())?;
    if header.typ.as_deref().is_some_and(|typ| typ.eq_ignore_ascii_case("logout+jwt")) {
        return Err(JwtError::Type);
    }
    let (_, claims) = jwt::verify(token.expose(), jwks, expected).await?;
    check_claims(&claims, expected.audience, binding, now)
}

/// The claim checks after the signature, `iss` and `aud` (pure; unit-tested).
pub fn check_claims(
    claims: &Map<String, Value>,
    client_id: &str,
    binding: Binding<'_>,
    now: u64,
) -> Result<IdTokenClaims, JwtError> {
    check_authorized_party(claims, client_id)?;
    let exp = jwt::check_expiry(claims, now, true)?.ok_or(JwtError::MissingClaim("exp"))?;
    jwt::check_issued_at(claims, now, MAX_ID_TOKEN_AGE_SECS)?;
    let sub = jwt::string_claim(claims, "sub")?.ok_or(JwtError::MissingClaim("sub"))?;
    let nonce = jwt::string_claim(claims, "nonce").map_err(|_| JwtError::Nonce)?;
    match binding {
        Binding::Nonce(expected) => {
            if nonce.map(Nonce::new).as_ref() != Some(expected) {
                return Err(JwtError::Nonce);
            }
        }
        Binding::Refresh { sub: Some(session_sub) } if session_sub != sub => {
            return Err(JwtError::Subject);
        }
        Binding::Refresh { .. } => {}
    }
    Ok(IdTokenClaims {
        sub,
        sid: jwt::string_claim(claims, "sid")?,
        // Profile claims are shown, never relied on: a malformed one is dropped, not fatal.
        name: jwt::string_claim(claims, "name").ok().flatten(),
        email: jwt::string_claim(claims, "email").ok().flatten(),
        exp,
    })
}

/// §3.1.3.7 items 4–5: several audiences need an `azp`; an `azp` must be the client id.
fn check_authorized_party(claims: &Map<String, Value>, client_id: &str) -> Result<(), JwtError> {
    let several = claims.get("aud").and_then(Value::as_array).is_some_and(|aud| aud.len() > 1);
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == client_id => Ok(()),
        Some(_) => Err(JwtError::AuthorizedParty),
        None if several => Err(JwtError::AuthorizedParty),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use jsonwebtoken::Algorithm;

    use super::super::test_support::{self, Provider, TestKey, CLIENT_ID};
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn claims(nonce: &str) -> Value {
        json!({
            "iss": "ISSUER", "aud": CLIENT_ID, "sub": "user-1", "sid": "sid-1",
            "name": "Ada", "email": "ada@example.com", "iat": NOW, "exp": NOW + 300, "nonce": nonce
        })
    }

    struct Setup {
        provider: Provider,
        key: TestKey,
        jwks: Jwks,
        nonce: Nonce,
    }

    impl Setup {
        async fn new() -> Self {
            let provider = Provider::start().await;
            let key = TestKey::generate("k1");
            provider.set_keys(&[&key]);
            let jwks = Jwks::new(
                test_support::client(),
                Duration::from_secs(5),
                Duration::ZERO,
                Duration::from_secs(3600),
            );
            Self { provider, key, jwks, nonce: Nonce::new("n-0123456789") }
        }

        /// The standard claims with the issuer filled in, changed by `edit`.
        fn claims(&self, edit: impl FnOnce(&mut Value)) -> Value {
            let mut claims = claims(self.nonce.expose());
            claims["iss"] = json!(self.provider.issuer());
            edit(&mut claims);
            claims
        }

        async fn validate(&self, token: &str) -> Result<IdTokenClaims, JwtError> {
            let issuer = self.provider.issuer();
            let uri = self.provider.jwks_uri();
            let expected = Expected {
                issuer: &issuer,
                audience: CLIENT_ID,
                algorithms: &[Algorithm::ES256, Algorithm::RS256],
                jwks_uri: &uri,
            };
            validate(&IdToken::new(token), &self.jwks, &expected, Binding::Nonce(&self.nonce), NOW).await
        }
    }

    #[tokio::test]
    async fn a_good_token_gives_its_claims() {
        let setup = Setup::new().await;
        let token = setup.key.sign(&setup.claims(|_| {}));
        let claims = setup.validate(&token).await.unwrap();
        assert_eq!(
            claims,
            IdTokenClaims {
                sub: "user-1".into(),
                sid: Some("sid-1".into()),
                name: Some("Ada".into()),
                email: Some("ada@example.com".into()),
                exp: NOW + 300
            }
        );
    }

    #[tokio::test]
    async fn claims_that_do_not_fit_are_refused() {
        let setup = Setup::new().await;
        type Edit = Box<dyn FnOnce(&mut Value)>;
        let cases: Vec<(Edit, JwtError)> = vec![
            (Box::new(|c| c["iss"] = json!("https://evil.example")), JwtError::Issuer),
            (
                Box::new(|c| c.as_object_mut().unwrap().remove("iss").map(drop).unwrap_or(())),
                JwtError::Issuer,
            ),
            (Box::new(|c| c["aud"] = json!("someone-else")), JwtError::Audience),
            (Box::new(|c| c["aud"] = json!([CLIENT_ID, "other"])), JwtError::AuthorizedParty),
            (Box::new(|c| c["azp"] = json!("other")), JwtError::AuthorizedParty),
            (Box::new(|c| c["exp"] = json!(NOW - 61)), JwtError::Expired),
            (Box::new(|c| c["iat"] = json!(NOW + 3600)), JwtError::IssuedAt),
            (Box::new(|c| c["nonce"] = json!("another-nonce")), JwtError::Nonce),
            (
                Box::new(|c| c.as_object_mut().unwrap().remove("nonce").map(drop).unwrap_or(())),
                JwtError::Nonce,
            ),
            (
                Box::new(|c| c.as_object_mut().unwrap().remove("sub").map(drop).unwrap_or(())),
                JwtError::MissingClaim("sub"),
            ),
        ];
        for (edit, error) in cases {
            let token = setup.key.sign(&setup.claims(edit));
            assert_eq!(setup.validate(&token).await.unwrap_err(), error);
        }
        let several_with_azp = setup.key.sign(&setup.claims(|c| {
            c["aud"] = json!(["other", CLIENT_ID]);
            c["azp"] = json!(CLIENT_ID);
        }));
        assert!(setup.validate(&several_with_azp).await.is_ok());
    }

    #[tokio::test]
    async fn alg_none_and_hmac_are_refused() {
        let setup = Setup::new().await;
        let claims = setup.claims(|_| {});
        let unsigned = test_support::unsigned(r#"{"alg":"none","kid":"k1"}"#, &claims);
        assert_eq!(setup.validate(&unsigned).await.unwrap_err(), JwtError::Algorithm);
        let hmac = jsonwebtoken::encode(
            &jsonwebtoken::Header { kid: Some("k1".into()), ..jsonwebtoken::Header::new(Algorithm::HS256) },
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"client-secret"),
        )
        .unwrap();
        assert_eq!(setup.validate(&hmac).await.unwrap_err(), JwtError::Algorithm);
        assert_eq!(setup.provider.hits("/jwks"), 0, "refused before any key is fetched");
    }

    #[tokio::test]
    async fn a_signature_by_another_key_is_refused() {
        let setup = Setup::new().await;
        let impostor = TestKey::generate("k1");
        let token = impostor.sign(&setup.claims(|_| {}));
        assert_eq!(setup.validate(&token).await.unwrap_err(), JwtError::Signature);
        let mut tampered = setup.key.sign(&setup.claims(|_| {}));
        let forged_payload = test_support::unsigned("{}", &setup.claims(|c| c["sub"] = json!("admin")));
        let payload = forged_payload.split('.').nth(1).unwrap();
        let parts: Vec<&str> = tampered.split('.').collect();
        tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert_eq!(setup.validate(&tampered).await.unwrap_err(), JwtError::Signature);
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_the_keys() {
        let setup = Setup::new().await;
        assert!(setup.validate(&setup.key.sign(&setup.claims(|_| {}))).await.is_ok());
        let rotated = TestKey::generate("k2");
        setup.provider.set_keys(&[&setup.key, &rotated]);
        assert!(setup.validate(&rotated.sign(&setup.claims(|_| {}))).await.is_ok());
        assert_eq!(setup.provider.hits("/jwks"), 2, "the new kid caused one refetch");
        let unknown = TestKey::generate("k3");
        assert_eq!(
            setup.validate(&unknown.sign(&setup.claims(|_| {}))).await.unwrap_err(),
            JwtError::UnknownKey
        );
    }

    #[tokio::test]
    async fn a_logout_token_is_not_an_id_token() {
        let setup = Setup::new().await;
        let token = setup.key.sign_with_typ(&setup.claims(|_| {}), "logout+jwt");
        assert_eq!(setup.validate(&token).await.unwrap_err(), JwtError::Type);
    }

    #[test]
    fn a_refresh_needs_no_nonce_but_the_same_subject() {
        let mut claims: Map<String, Value> = serde_json::from_value(claims("x")).unwrap();
        claims.remove("nonce");
        assert!(check_claims(&claims, CLIENT_ID, Binding::Refresh { sub: Some("user-1") }, NOW).is_ok());
        assert!(check_claims(&claims, CLIENT_ID, Binding::Refresh { sub: None }, NOW).is_ok());
        assert!(check_claims(&claims, CLIENT_ID, Binding::Refresh { sub: Some("user-2") }, NOW).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let shown = format!("{:?}", IdToken::new("eyJhbGciOi.secret.sig"));
        assert!(!shown.contains("secret") && shown.contains("redacted"));
    }
}
