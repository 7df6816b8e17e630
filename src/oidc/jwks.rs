//! The provider's signing keys (JWKS), fetched from `jwks_uri` and cached.
//!
//! Keys are fetched on first use and kept; a token signed with a `kid` the cache does not
//! know (the provider rotated its keys) makes one refetch, at most once per
//! `min_refetch_interval` whatever the number of such tokens, so forged `kid`s cannot make
//! tokengate hammer the provider. A set older than `max_age` is refetched on its next use
//! (a key the provider withdrew stops being trusted); if that fetch fails, the old set
//! keeps serving.
//!
//! Only signature keys of the asymmetric kinds tokengate verifies are kept: RSA, EC P-256
//! and P-384, OKP Ed25519. A key marked `"use":"enc"`, a symmetric (`oct`) key or one
//! `jsonwebtoken` cannot read is skipped, not an error for the whole set.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::Uri;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::time::Instant;

use super::fetch;
use super::jwt::JwtError;
use crate::upstream::HttpClient;

/// How many keys a token without `kid` is tried against, at most.
const MAX_CANDIDATES: usize = 4;

/// The curve or key type of a verification key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// One verification key from the set.
pub struct VerifyKey {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one: then only that algorithm may use it.
    alg: Option<Algorithm>,
    kind: KeyKind,
    key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// The key for `jsonwebtoken::decode`.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    /// Whether a signature by `alg` may be checked with this key.
    fn fits(&self, alg: Algorithm) -> bool {
        let kind_fits = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.kind == KeyKind::Rsa,
            Algorithm::ES256 => self.kind == KeyKind::P256,
            Algorithm::ES384 => self.kind == KeyKind::P384,
            Algorithm::EdDSA => self.kind == KeyKind::Ed25519,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => false,
        };
        kind_fits && self.alg.is_none_or(|own| own == alg)
    }
}

/// Reads a JWK set document, keeping the keys tokengate can verify with.
pub fn parse_key_set(document: &Value) -> Vec<Arc<VerifyKey>> {
    let Some(keys) = document.get("keys").and_then(Value::as_array) else { return Vec::new() };
    keys.iter().filter_map(parse_key).map(Arc::new).collect()
}

fn parse_key(value: &Value) -> Option<VerifyKey> {
    let text = |name: &str| value.get(name).and_then(Value::as_str);
    if text("use").is_some_and(|usage| usage != "sig") {
        return None;
    }
    let kind = match (text("kty")?, text("crv")) {
        ("RSA", _) => KeyKind::Rsa,
        ("EC", Some("P-256")) => KeyKind::P256,
        ("EC", Some("P-384")) => KeyKind::P384,
        ("OKP", Some("Ed25519")) => KeyKind::Ed25519,
        _ => return None,
    };
    // A key for another algorithm (an encryption `alg`, or one we do not verify) is skipped.
    let alg = match text("alg") {
        Some(name) => Some(name.parse::<Algorithm>().ok()?),
        None => None,
    };
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(VerifyKey { kid: text("kid").map(str::to_string), alg, kind, key })
}

/// A fetched set and where and when it came from.
struct KeySet {
    uri: Uri,
    keys: Vec<Arc<VerifyKey>>,
    fetched_at: Instant,
}

impl KeySet {
    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<VerifyKey>> {
        let matching = self.keys.iter().filter(|key| key.fits(alg));
        match kid {
            Some(kid) => matching.filter(|key| key.kid.as_deref() == Some(kid)).cloned().collect(),
            None => matching.take(MAX_CANDIDATES).cloned().collect(),
        }
    }
}

/// The cache of the provider's keys. One per process, shared by every validation.
pub struct Jwks {
    http: HttpClient,
    timeout: Duration,
    min_refetch_interval: Duration,
    max_age: Duration,
    keys: ArcSwapOption<KeySet>,
    /// When the last fetch was tried; held while fetching, so one fetch runs at a time.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("min_refetch_interval", &self.min_refetch_interval)
            .finish_non_exhaustive()
    }
}

impl Jwks {
    /// An empty cache; keys are fetched on first use within `timeout`, refetched for an
    /// unknown `kid` at most once per `min_refetch_interval`, and when older than `max_age`.
    pub fn new(
        http: HttpClient,
        timeout: Duration,
        min_refetch_interval: Duration,
        max_age: Duration,
    ) -> Self {
        Self {
            http,
            timeout,
            min_refetch_interval,
            max_age,
            keys: ArcSwapOption::empty(),
            last_attempt: tokio::sync::Mutex::new(None),
        }
    }

    /// The keys from `jwks_uri` that may have signed a token with this `kid` and `alg`.
    /// Fetches as the module doc says; `UnknownKey` when none fits even after that,
    /// `KeysUnavailable` when no set could be had at all.
    pub async fn keys_for(
        &self,
        jwks_uri: &Uri,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<Arc<VerifyKey>>, JwtError> {
        if let Some(set) = self.current(jwks_uri).filter(|set| set.fetched_at.elapsed() < self.max_age) {
            let found = set.candidates(kid, alg);
            if !found.is_empty() {
                return Ok(found);
            }
        }
        let mut last_attempt = self.last_attempt.lock().await;
        // Someone may have fetched while this one waited for the lock.
        let current = self.current(jwks_uri);
        if let Some(set) = current.as_ref().filter(|set| set.fetched_at.elapsed() < self.max_age) {
            let found = set.candidates(kid, alg);
            if !found.is_empty() {
                return Ok(found);
            }
        }
        let throttled = last_attempt.is_some_and(|at| at.elapsed() < self.min_refetch_interval);
        let set = if throttled { current } else { self.fetch(jwks_uri, &mut last_attempt).await.or(current) };
        drop(last_attempt);
        let set = set.ok_or(JwtError::KeysUnavailable)?;
        let found = set.candidates(kid, alg);
        if found.is_empty() {
            return Err(JwtError::UnknownKey);
        }
        Ok(found)
    }

    fn current(&self, jwks_uri: &Uri) -> Option<Arc<KeySet>> {
        self.keys.load_full().filter(|set| &set.uri == jwks_uri)
    }

    /// One fetch; stores and returns the set, or logs and returns `None`.
    async fn fetch(&self, jwks_uri: &Uri, last_attempt: &mut Option<Instant>) -> Option<Arc<KeySet>> {
        *last_attempt = Some(Instant::now());
        match fetch::get_json(&self.http, jwks_uri, self.timeout).await {
            Ok(document) => {
                let keys = parse_key_set(&document);
                tracing::debug!(keys = keys.len(), "JWKS fetched");
                let set = Arc::new(KeySet { uri: jwks_uri.clone(), keys, fetched_at: Instant::now() });
                self.keys.store(Some(Arc::clone(&set)));
                Some(set)
            }
            Err(error) => {
                tracing::warn!(%error, "JWKS fetch failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::{self, Provider, TestKey};
    use super::*;

    #[test]
    fn keeps_only_signature_keys_it_can_verify_with() {
        let ec = TestKey::generate("ec-1");
        let mut enc = ec.jwk();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc-1");
        let mut other_alg = ec.jwk();
        other_alg["alg"] = json!("RSA-OAEP");
        let document = json!({"keys": [
            ec.jwk(),
            enc,
            other_alg,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "broken"},
            "not an object"
        ]});
        let keys = parse_key_set(&document);
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(keys[0].fits(Algorithm::ES256));
        assert!(!keys[0].fits(Algorithm::ES384));
        assert!(!keys[0].fits(Algorithm::RS256));
        assert!(!keys[0].fits(Algorithm::HS256));
        assert!(parse_key_set(&json!({"nokeys": 1})).is_empty());
    }

    #[test]
    fn a_jwk_alg_binds_the_key_to_it() {
        let mut jwk = TestKey::generate("k").jwk();
        jwk["alg"] = json!("ES384");
        let keys = parse_key_set(&json!({"keys": [jwk]}));
        assert_eq!(keys.len(), 1);
        assert!(!keys[0].fits(Algorithm::ES256), "the JWK says ES384 only");
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_once_per_interval() {
        let provider = Provider::start().await;
        let first = TestKey::generate("k1");
        provider.set_keys(&[&first]);
        let jwks = Jwks::new(
            test_support::client(),
            Duration::from_secs(5),
            Duration::from_secs(3600),
            Duration::from_secs(86400),
        );
        let uri = provider.jwks_uri();

        assert_eq!(jwks.keys_for(&uri, Some("k1"), Algorithm::ES256).await.unwrap().len(), 1);
        assert_eq!(provider.hits("/jwks"), 1);
        assert_eq!(jwks.keys_for(&uri, Some("k1"), Algorithm::ES256).await.unwrap().len(), 1);
        assert_eq!(provider.hits("/jwks"), 1, "a known kid needs no fetch");

        for _ in 0..20 {
            let error = jwks.keys_for(&uri, Some("forged"), Algorithm::ES256).await.unwrap_err();
            assert_eq!(error, JwtError::UnknownKey);
        }
        assert_eq!(provider.hits("/jwks"), 1, "unknown kids within the interval cause no fetch storm");
    }

    #[tokio::test]
    async fn a_rotated_key_is_found_by_a_refetch() {
        let provider = Provider::start().await;
        let (old, new) = (TestKey::generate("old"), TestKey::generate("new"));
        provider.set_keys(&[&old]);
        let jwks = Jwks::new(
            test_support::client(),
            Duration::from_secs(5),
            Duration::ZERO,
            Duration::from_secs(86400),
        );
        let uri = provider.jwks_uri();
        assert!(jwks.keys_for(&uri, Some("old"), Algorithm::ES256).await.is_ok());
        provider.set_keys(&[&new]);
        assert!(jwks.keys_for(&uri, Some("new"), Algorithm::ES256).await.is_ok());
        assert_eq!(provider.hits("/jwks"), 2);
    }

    #[tokio::test]
    async fn no_set_at_all_is_unavailable() {
        let jwks = Jwks::new(
            test_support::client(),
            Duration::from_millis(500),
            Duration::ZERO,
            Duration::from_secs(60),
        );
        let uri: Uri = "http://127.0.0.1:9/jwks".parse().unwrap();
        assert_eq!(jwks.keys_for(&uri, None, Algorithm::ES256).await.unwrap_err(), JwtError::KeysUnavailable);
    }
}
