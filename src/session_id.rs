//! Session identifiers: the secret cookie value and the store key derived from it.
//!
//! A [`SessionId`] is 256 bits from the operating system's CSPRNG, written as 43
//! characters of unpadded base64url. It lives only in the browser's cookie and, briefly,
//! in the request that carries it. The store is keyed by [`SessionKey`], the SHA-256 of
//! the cookie value, so a dump of the store cannot be replayed as cookies.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

use crate::secret::SecretString;

/// Length of an encoded session id: 32 bytes in unpadded base64url.
pub const SESSION_ID_LEN: usize = 43;

/// The cookie value. Secret: `Debug` shows only a short prefix of its store key.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(SecretString);

/// SHA-256 of a session id; the key under which the store keeps the session.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey(pub [u8; 32]);

impl SessionId {
    /// A fresh random id. Fails only if the operating system's random source does.
    pub fn generate() -> Result<SessionId, rand::rand_core::OsError> {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.try_fill_bytes(&mut bytes)?;
        Ok(SessionId(SecretString::new(URL_SAFE_NO_PAD.encode(bytes))))
    }

    /// Accepts a cookie value only if it has the exact shape tokengate issues: anything
    /// else is refused before it touches the store.
    pub fn parse(value: &str) -> Option<SessionId> {
        if value.len() != SESSION_ID_LEN {
            return None;
        }
        let decoded = URL_SAFE_NO_PAD.decode(value).ok()?;
        (decoded.len() == 32).then(|| SessionId(SecretString::new(value.to_string())))
    }

    /// The store key for this id.
    pub fn key(&self) -> SessionKey {
        SessionKey(Sha256::digest(self.0.expose().as_bytes()).into())
    }

    /// The cookie value itself, for the `Set-Cookie` writer only.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({:?})", self.key())
    }
}

impl fmt::Debug for SessionKey {
    /// Eight hex digits of the hash: enough to correlate log lines, useless to an attacker.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_are_unique() {
        let a = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
        let b = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), SESSION_ID_LEN);
        assert_eq!(SessionId::parse(a.expose()).map(|id| id.key()), Some(a.key()));
    }

    #[test]
    fn malformed_values_are_refused() {
        for value in ["", "short", &"A".repeat(44), &"!".repeat(43), &"A".repeat(42)] {
            assert!(SessionId::parse(value).is_none(), "{value}");
        }
    }

    #[test]
    fn debug_shows_a_hash_prefix_not_the_value() {
        let id = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{id:?}");
        assert!(!shown.contains(id.expose()));
        assert!(!shown.contains(&id.expose()[..8]));
    }
}
