//! The part of ID token and logout token validation they share: the header read before
//! any key is chosen, the algorithm allowlist, the key lookup and the signature, `iss` and
//! `aud` (by `jsonwebtoken`), and reading numeric dates.
//!
//! The header is read here, not by `jsonwebtoken`, so that `alg: none` and HMAC are
//! refused by name before anything else happens and an unknown `typ` can be judged.
//! Time checks (`exp`, `iat`) are the callers', against the `now` they are given (the
//! session core's clock), not against the system clock inside the crate.

use std::collections::HashSet;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::Uri;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::discovery::ASYMMETRIC_ALGORITHMS;
use super::jwks::Jwks;

/// Longest token accepted (real ones are 1–3 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Clock skew tolerated on `exp` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// Why a token was refused. Fixed texts: never the token, a claim value or a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a well-formed JWT")]
    Malformed,
    #[error("signing algorithm not allowed")]
    Algorithm,
    #[error("token type not allowed here")]
    Type,
    #[error("no provider key matches the token's key id")]
    UnknownKey,
    #[error("the provider's keys could not be fetched")]
    KeysUnavailable,
    #[error("bad signature")]
    Signature,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("wrong authorized party")]
    AuthorizedParty,
    #[error("expired")]
    Expired,
    #[error("issued-at time out of range")]
    IssuedAt,
    #[error("subject differs from the session's")]
    Subject,
    #[error("nonce does not match")]
    Nonce,
    #[error("missing or malformed claim `{0}`")]
    MissingClaim(&'static str),
    #[error("a logout token must not carry a nonce")]
    NonceInLogoutToken,
    #[error("not a back-channel logout event")]
    NotALogoutEvent,
    #[error("a logout token names neither sid nor sub")]
    NoSubject,
    #[error("logout token already used")]
    Replayed,
}

impl JwtError {
    /// Whether the failure is the provider's or ours (keys not fetchable), not the token's:
    /// the caller answers 503 instead of refusing the token.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, JwtError::KeysUnavailable)
    }
}

/// The protected header fields tokengate reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// Reads the header of a compact JWS without trusting it.
pub fn peek_header(token: &str) -> Result<Header, JwtError> {
    if token.len() > MAX_TOKEN_BYTES || token.split('.').count() != 3 {
        return Err(JwtError::Malformed);
    }
    let encoded = token.split('.').next().ok_or(JwtError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| JwtError::Malformed)?;
    let header: Value = serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)?;
    let text = |name: &str| header.get(name).and_then(Value::as_str).map(str::to_string);
    if header.get("crit").is_some() {
        // RFC 7515 §4.1.11: extensions we do not understand must make the token invalid.
        return Err(JwtError::Malformed);
    }
    Ok(Header { alg: text("alg").ok_or(JwtError::Malformed)?, kid: text("kid"), typ: text("typ") })
}

/// The algorithm of `header` if it is asymmetric and in `allowed`.
pub fn allowed_algorithm(header: &Header, allowed: &[Algorithm]) -> Result<Algorithm, JwtError> {
    let alg = header.alg.parse::<Algorithm>().map_err(|_| JwtError::Algorithm)?;
    if !ASYMMETRIC_ALGORITHMS.contains(&alg) || !allowed.contains(&alg) {
        return Err(JwtError::Algorithm);
    }
    Ok(alg)
}

/// Who must have issued a token and for whom.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub issuer: &'a str,
    /// The client id: must be (one of) the `aud`.
    pub audience: &'a str,
    /// The provider's advertised algorithms tokengate accepts.
    pub algorithms: &'a [Algorithm],
    pub jwks_uri: &'a Uri,
}

/// Checks the signature (a key from the provider's JWKS), `iss` and `aud`, and returns
/// the header and the claims. Nothing else is checked.
pub async fn verify(
    token: &str,
    jwks: &Jwks,
    expected: &Expected<'_>,
) -> Result<(Header, Map<String, Value>), JwtError> {
    let header = peek_header(token)?;
    let alg = allowed_algorithm(&header, expected.algorithms)?;
    let keys = jwks.keys_for(expected.jwks_uri, header.kid.as_deref(), alg).await?;
    let validation = validation(alg, expected);
    let mut outcome = Err(JwtError::Signature);
    for key in keys {
        match jsonwebtoken::decode::<Map<String, Value>>(token, key.decoding_key(), &validation) {
            Ok(data) => return Ok((header, data.claims)),
            Err(error) if *error.kind() == ErrorKind::InvalidSignature => continue,
            Err(error) => {
                outcome = Err(map_error(error.kind()));
                break;
            }
        }
    }
    outcome
}

/// Signature, `iss` and `aud` required and checked; time left to the callers.
fn validation(alg: Algorithm, expected: &Expected<'_>) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_issuer(&[expected.issuer]);
    validation.set_audience(&[expected.audience]);
    validation.required_spec_claims = HashSet::from(["iss".to_string(), "aud".to_string()]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation
}

fn map_error(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::InvalidIssuer => JwtError::Issuer,
        ErrorKind::InvalidAudience => JwtError::Audience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => JwtError::Issuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => JwtError::Audience,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => JwtError::Algorithm,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::Crypto(_) => JwtError::Signature,
        _ => JwtError::Malformed,
    }
}

/// A NumericDate claim (RFC 7519 §2: seconds, possibly fractional), `None` when absent.
pub fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, JwtError> {
    let Some(value) = claims.get(name) else { return Ok(None) };
    if let Some(seconds) = value.as_u64() {
        return Ok(Some(seconds));
    }
    match value.as_f64() {
        Some(seconds) if (0.0..1e15).contains(&seconds) => Ok(Some(seconds.floor() as u64)),
        _ => Err(JwtError::MissingClaim(name)),
    }
}

/// A non-empty string claim, `None` when absent; a claim of another type is an error.
pub fn string_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<String>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(text)) if !text.is_empty() => Ok(Some(text.clone())),
        Some(_) => Err(JwtError::MissingClaim(name)),
    }
}

/// `iat` must be present, not in the future (beyond the leeway) and at most `max_age`
/// seconds old.
pub fn check_issued_at(claims: &Map<String, Value>, now: u64, max_age: u64) -> Result<u64, JwtError> {
    let iat = numeric_date(claims, "iat")?.ok_or(JwtError::MissingClaim("iat"))?;
    if iat > now.saturating_add(LEEWAY_SECS) || iat.saturating_add(max_age).saturating_add(LEEWAY_SECS) < now
    {
        return Err(JwtError::IssuedAt);
    }
    Ok(iat)
}

/// `exp` (when present, or required) must not have passed, beyond the leeway.
pub fn check_expiry(claims: &Map<String, Value>, now: u64, required: bool) -> Result<Option<u64>, JwtError> {
    let exp = numeric_date(claims, "exp")?;
    match exp {
        None if required => Err(JwtError::MissingClaim("exp")),
        Some(exp) if exp.saturating_add(LEEWAY_SECS) <= now => Err(JwtError::Expired),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_header(json: &str) -> String {
        format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(json))
    }

    #[test]
    fn headers_are_read_without_trust() {
        let header = peek_header(&encode_header(r#"{"alg":"ES256","kid":"k","typ":"JWT"}"#)).unwrap();
        assert_eq!(header, Header { alg: "ES256".into(), kid: Some("k".into()), typ: Some("JWT".into()) });
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.x",
            &encode_header(r#"{"kid":"k"}"#),
            &encode_header(r#"{"alg":"ES256","crit":["x"]}"#),
        ] {
            assert_eq!(peek_header(bad), Err(JwtError::Malformed), "{bad}");
        }
        assert_eq!(peek_header(&"a".repeat(MAX_TOKEN_BYTES + 1)), Err(JwtError::Malformed));
    }

    #[test]
    fn only_allowed_asymmetric_algorithms_pass() {
        let header = |alg: &str| Header { alg: alg.into(), kid: None, typ: None };
        let allowed = [Algorithm::RS256, Algorithm::ES256, Algorithm::HS256];
        assert_eq!(allowed_algorithm(&header("ES256"), &allowed), Ok(Algorithm::ES256));
        for refused in ["none", "None", "HS256", "PS256", "", "ES512"] {
            assert_eq!(allowed_algorithm(&header(refused), &allowed), Err(JwtError::Algorithm), "{refused}");
        }
    }

    #[test]
    fn dates_and_strings() {
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"a":10,"b":10.7,"c":"x","d":-1,"e":"","f":1}"#).unwrap();
        assert_eq!(numeric_date(&claims, "a"), Ok(Some(10)));
        assert_eq!(numeric_date(&claims, "b"), Ok(Some(10)));
        assert_eq!(numeric_date(&claims, "z"), Ok(None));
        assert!(numeric_date(&claims, "c").is_err() && numeric_date(&claims, "d").is_err());
        assert_eq!(string_claim(&claims, "c"), Ok(Some("x".into())));
        assert!(string_claim(&claims, "e").is_err() && string_claim(&claims, "f").is_err());
    }

    #[test]
    fn issued_at_and_expiry_windows() {
        let claims = |iat: u64, exp: u64| -> Map<String, Value> {
            serde_json::from_value(serde_json::json!({"iat": iat, "exp": exp})).unwrap()
        };
        let now = 1_000_000;
        assert!(check_issued_at(&claims(now, now + 60), now, 600).is_ok());
        assert_eq!(check_issued_at(&claims(now + 3600, now + 7200), now, 600), Err(JwtError::IssuedAt));
        assert_eq!(check_issued_at(&claims(now - 3600, now + 60), now, 600), Err(JwtError::IssuedAt));
        assert_eq!(check_expiry(&claims(now, now - 61), now, true), Err(JwtError::Expired));
        assert_eq!(check_expiry(&claims(now, now + 1), now, true), Ok(Some(now + 1)));
        assert_eq!(check_expiry(&Map::new(), now, true), Err(JwtError::MissingClaim("exp")));
        assert_eq!(check_expiry(&Map::new(), now, false), Ok(None));
    }
}
