//! OpenID Connect Back-Channel Logout 1.0: validating the provider's logout token (§2.6).
//!
//! The token is a signed JWT checked like an ID token (`jwt::verify`: asymmetric `alg` the
//! provider advertises, signature against its JWKS, `iss`, `aud`), then: `typ`, when
//! present, is `logout+jwt` (or the generic `JWT`); `iat` is recent; `exp`, when present,
//! has not passed; `jti` is present and not seen before; `events` holds the member
//! `http://schemas.openid.net/event/backchannel-logout`; `sid` and/or `sub` is present; and
//! there is **no** `nonce` (so an ID token can never pass as a logout token).
//!
//! The replay cache is per process and bounded both in size and in time: an entry lives
//! as long as a token with its `iat` could still be accepted, so entries past that window
//! can go; when it is full of live entries the oldest is evicted (a replayed logout token
//! can only end sessions again, while refusing fresh ones would keep sessions alive that
//! the provider ended). Round two may put it in the shared store for replicas.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::{Map, Value};

use super::jwks::Jwks;
use super::jwt::{self, Expected, JwtError};

/// The event a logout token must carry.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// How old a logout token may be (its `iat`); also how long its `jti` is remembered.
pub const MAX_LOGOUT_TOKEN_AGE_SECS: u64 = 300;

/// Whose sessions to end: every session with this provider `sid`, or of this `sub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutSubject {
    pub sid: Option<String>,
    pub sub: Option<String>,
}

/// Validates a logout token at time `now`; a valid token's `jti` is remembered in `replay`.
pub async fn validate(
    token: &str,
    jwks: &Jwks,
    expected: &Expected<'_>,
    replay: &ReplayCache,
    now: u64,
) -> Result<LogoutSubject, JwtError> {
    let header = jwt::peek_header(token)?;
    let typ_ok = header.typ.as_deref().is_none_or(|typ| {
        ["logout+jwt", "application/logout+jwt", "JWT"]
            .iter()
            .any(|allowed| typ.eq_ignore_ascii_case(allowed))
    });
    if !typ_ok {
        return Err(JwtError::Type);
    }
    let (_, claims) = jwt::verify(token, jwks, expected).await?;
    let (subject, jti) = check_claims(&claims, now)?;
    if !replay.first_use(&jti, now) {
        return Err(JwtError::Replayed);
    }
    Ok(subject)
}

/// The claim checks after the signature, `iss` and `aud` (pure; unit-tested). Returns the
/// subject and the `jti`.
pub fn check_claims(claims: &Map<String, Value>, now: u64) -> Result<(LogoutSubject, String), JwtError> {
    if claims.contains_key("nonce") {
        return Err(JwtError::NonceInLogoutToken);
    }
    let is_logout_event = claims
        .get("events")
        .and_then(Value::as_object)
        .is_some_and(|events| events.get(BACKCHANNEL_LOGOUT_EVENT).is_some_and(Value::is_object));
    if !is_logout_event {
        return Err(JwtError::NotALogoutEvent);
    }
    jwt::check_issued_at(claims, now, MAX_LOGOUT_TOKEN_AGE_SECS)?;
    jwt::check_expiry(claims, now, false)?;
    let jti = jwt::string_claim(claims, "jti")?.ok_or(JwtError::MissingClaim("jti"))?;
    let subject =
        LogoutSubject { sid: jwt::string_claim(claims, "sid")?, sub: jwt::string_claim(claims, "sub")? };
    if subject.sid.is_none() && subject.sub.is_none() {
        return Err(JwtError::NoSubject);
    }
    Ok((subject, jti))
}

/// The `jti`s of accepted logout tokens, bounded in size and time.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    ttl_secs: u64,
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// `jti` → until when it is remembered.
    until: HashMap<String, u64>,
    /// Insertion order, for eviction.
    order: VecDeque<String>,
}

impl ReplayCache {
    /// At most `capacity` entries (at least one), each kept `ttl_secs` (use at least
    /// [`MAX_LOGOUT_TOKEN_AGE_SECS`] plus the leeway, as [`ReplayCache::default`] does).
    pub fn new(capacity: usize, ttl_secs: u64) -> Self {
        Self { capacity: capacity.max(1), ttl_secs, inner: Mutex::new(Seen::default()) }
    }

    /// Records `jti`; `false` when it was already there (a replay).
    pub fn first_use(&self, jti: &str, now: u64) -> bool {
        // A poisoned lock only means another thread panicked mid-insert; the map is still
        // a valid map, so keep using it rather than fail every logout.
        let mut seen = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.forget_expired(now);
        if seen.until.get(jti).is_some_and(|&until| until > now) {
            return false;
        }
        while seen.until.len() >= self.capacity {
            let Some(oldest) = seen.order.pop_front() else { break };
            seen.until.remove(&oldest);
        }
        seen.until.insert(jti.to_string(), now.saturating_add(self.ttl_secs));
        seen.order.push_back(jti.to_string());
        true
    }

    /// How many `jti`s are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).until.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(10_000, MAX_LOGOUT_TOKEN_AGE_SECS + 2 * jwt::LEEWAY_SECS)
    }
}

impl Seen {
    /// Entries are in insertion order and all live equally long, so expired ones are at
    /// the front.
    fn forget_expired(&mut self, now: u64) {
        while let Some(front) = self.order.front() {
            if self.until.get(front).is_some_and(|&until| until > now) {
                break;
            }
            if let Some(expired) = self.order.pop_front() {
                self.until.remove(&expired);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::Algorithm;
    use serde_json::json;

    use super::super::test_support::{self, Provider, TestKey, CLIENT_ID};
    use super::*;

    const NOW: u64 = 1_800_000_000;

    struct Setup {
        provider: Provider,
        key: TestKey,
        jwks: Jwks,
        replay: ReplayCache,
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
            Self { provider, key, jwks, replay: ReplayCache::default() }
        }

        fn claims(&self, edit: impl FnOnce(&mut Map<String, Value>)) -> Value {
            let mut claims = json!({
                "iss": self.provider.issuer(), "aud": CLIENT_ID, "iat": NOW, "exp": NOW + 120,
                "jti": "jti-1", "sid": "sid-1", "sub": "user-1",
                "events": {BACKCHANNEL_LOGOUT_EVENT: {}}
            });
            edit(claims.as_object_mut().unwrap());
            claims
        }

        async fn validate(&self, token: &str) -> Result<LogoutSubject, JwtError> {
            let issuer = self.provider.issuer();
            let uri = self.provider.jwks_uri();
            let expected = Expected {
                issuer: &issuer,
                audience: CLIENT_ID,
                algorithms: &[Algorithm::ES256],
                jwks_uri: &uri,
            };
            validate(token, &self.jwks, &expected, &self.replay, NOW).await
        }
    }

    #[tokio::test]
    async fn a_good_logout_token_names_the_subject_once() {
        let setup = Setup::new().await;
        let token = setup.key.sign_with_typ(&setup.claims(|_| {}), "logout+jwt");
        let subject = setup.validate(&token).await.unwrap();
        assert_eq!(subject, LogoutSubject { sid: Some("sid-1".into()), sub: Some("user-1".into()) });
        assert_eq!(setup.validate(&token).await.unwrap_err(), JwtError::Replayed, "the same jti twice");

        let only_sid = setup.key.sign(&setup.claims(|c| {
            c.remove("sub");
            c.insert("jti".into(), json!("jti-2"));
        }));
        assert_eq!(
            setup.validate(&only_sid).await.unwrap(),
            LogoutSubject { sid: Some("sid-1".into()), sub: None }
        );
    }

    #[tokio::test]
    async fn tokens_that_are_not_logout_tokens_are_refused() {
        let setup = Setup::new().await;
        type Edit = Box<dyn FnOnce(&mut Map<String, Value>)>;
        let cases: Vec<(Edit, JwtError)> = vec![
            (Box::new(|c| drop(c.insert("nonce".into(), json!("n")))), JwtError::NonceInLogoutToken),
            (Box::new(|c| drop(c.remove("events"))), JwtError::NotALogoutEvent),
            (Box::new(|c| drop(c.insert("events".into(), json!({"other": {}})))), JwtError::NotALogoutEvent),
            (
                Box::new(|c| drop(c.insert("events".into(), json!([BACKCHANNEL_LOGOUT_EVENT])))),
                JwtError::NotALogoutEvent,
            ),
            (
                Box::new(|c| {
                    c.remove("sid");
                    c.remove("sub");
                }),
                JwtError::NoSubject,
            ),
            (Box::new(|c| drop(c.remove("jti"))), JwtError::MissingClaim("jti")),
            (Box::new(|c| drop(c.remove("iat"))), JwtError::MissingClaim("iat")),
            (Box::new(|c| drop(c.insert("iat".into(), json!(NOW - 3600)))), JwtError::IssuedAt),
            (Box::new(|c| drop(c.insert("exp".into(), json!(NOW - 100)))), JwtError::Expired),
            (Box::new(|c| drop(c.insert("aud".into(), json!("other")))), JwtError::Audience),
            (Box::new(|c| drop(c.insert("iss".into(), json!("https://evil.example")))), JwtError::Issuer),
        ];
        for (edit, error) in cases {
            let token = setup.key.sign(&setup.claims(edit));
            assert_eq!(setup.validate(&token).await.unwrap_err(), error);
        }
        assert!(setup.replay.is_empty(), "refused tokens leave no jti behind");
        let wrong_typ = setup.key.sign_with_typ(&setup.claims(|_| {}), "at+jwt");
        assert_eq!(setup.validate(&wrong_typ).await.unwrap_err(), JwtError::Type);
        let impostor = TestKey::generate("k1").sign(&setup.claims(|_| {}));
        assert_eq!(setup.validate(&impostor).await.unwrap_err(), JwtError::Signature);
        let unsigned = test_support::unsigned(r#"{"alg":"none"}"#, &setup.claims(|_| {}));
        assert_eq!(setup.validate(&unsigned).await.unwrap_err(), JwtError::Algorithm);
    }

    #[test]
    fn the_replay_cache_is_bounded_in_size_and_time() {
        let cache = ReplayCache::new(3, 100);
        assert!(cache.first_use("a", 0));
        assert!(!cache.first_use("a", 50));
        assert!(cache.first_use("a", 100), "remembered for ttl seconds only");
        for jti in ["b", "c", "d", "e"] {
            assert!(cache.first_use(jti, 101));
        }
        assert_eq!(cache.len(), 3, "never more than capacity");
        assert!(!cache.first_use("e", 102));
        assert!(cache.first_use("b", 102), "the oldest was evicted");
        assert!(cache.first_use("z", 1_000));
        assert_eq!(cache.len(), 1, "expired entries are forgotten");
    }
}
