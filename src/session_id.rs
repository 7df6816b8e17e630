//! Session identifiers: the secret cookie value and the store key derived from it.
//!
//! A [`SessionId`] is 256 bits from the operating system's CSPRNG, written as 43
//! characters of unpadded base64url. It lives only in the browser's cookie and, briefly,
//! in the request that carries it. The store is keyed by [`SessionKey`], the SHA-256 of
//! the cookie value, so a dump of the store cannot be replayed as cookies.

use std::fmt;
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

use zeroize::{Zeroize, Zeroizing};

use crate::secret::constant_time_eq;

/// Length of an encoded session id: 32 bytes in unpadded base64url.
pub const SESSION_ID_LEN: usize = 43;

/// The cookie value. Secret: `Debug` shows only a short prefix of its store key, `==`
/// takes the same time wherever two ids differ, and the bytes are wiped when dropped.
/// Held inline (no allocation per request that carries a cookie).
#[derive(Clone)]
pub struct SessionId {
    value: [u8; SESSION_ID_LEN],
    /// The store key, when already known (see [`KeyMemo`]); worked out on demand else.
    key: Option<SessionKey>,
}

/// SHA-256 of a session id; the key under which the store keeps the session.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey(pub [u8; 32]);

impl SessionId {
    /// A fresh random id. Fails only if the operating system's random source does.
    pub fn generate() -> Result<SessionId, rand::rand_core::OsError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.try_fill_bytes(bytes.as_mut())?;
        let mut id = SessionId { value: [0; SESSION_ID_LEN], key: None };
        // 32 bytes are always 43 characters of unpadded base64url.
        let _ = URL_SAFE_NO_PAD.encode_slice(bytes.as_ref(), &mut id.value);
        Ok(id)
    }

    /// Accepts a cookie value only if it has the exact shape tokengate issues (43
    /// base64url characters whose last one carries no bits beyond the 256, as a strict
    /// decoder requires): anything else is refused before it touches the store. Checked
    /// character by character, without decoding or allocating.
    pub fn parse(value: &str) -> Option<SessionId> {
        Self::parse_bytes(value.as_bytes())
    }

    /// [`SessionId::parse`] of a cookie value's bytes (no UTF-8 check first: anything
    /// but base64url is refused anyway).
    pub fn parse_bytes(value: &[u8]) -> Option<SessionId> {
        let bytes: &[u8; SESSION_ID_LEN] = value.try_into().ok()?;
        let last = sextet(bytes[SESSION_ID_LEN - 1])?;
        // A table lookup per character, every character looked at (no early exit).
        let plain = bytes.iter().fold(true, |plain, &byte| plain & BASE64URL[usize::from(byte)]);
        (plain && last & 0b11 == 0).then_some(SessionId { value: *bytes, key: None })
    }

    /// The store key for this id.
    pub fn key(&self) -> SessionKey {
        self.key.unwrap_or_else(|| self.digest())
    }

    fn digest(&self) -> SessionKey {
        SessionKey(Sha256::digest(self.value).into())
    }

    /// The cookie value itself, for the `Set-Cookie` writer only.
    pub fn expose(&self) -> &str {
        // Only base64url characters are ever stored (`generate`, `parse`).
        std::str::from_utf8(&self.value).unwrap_or_default()
    }
}

/// Which bytes are base64url characters.
const BASE64URL: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = sextet(byte as u8).is_some();
        byte += 1;
    }
    table
};

/// The six bits a base64url character stands for.
const fn sextet(byte: u8) -> Option<u8> {
    match byte {
        b'A'..=b'Z' => Some(byte - b'A'),
        b'a'..=b'z' => Some(byte - b'a' + 26),
        b'0'..=b'9' => Some(byte - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Constant-time (see [`constant_time_eq`]).
impl PartialEq for SessionId {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(&self.value, &other.value)
    }
}

impl Eq for SessionId {}

impl Drop for SessionId {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

/// The last session id seen on one connection, with its store key: a browser sends the
/// same cookie on every request of a keep-alive connection, so the SHA-256 is worked out
/// once per connection and cookie, not once per request. Per connection (no lock shared
/// between connections); the id inside is wiped when replaced or dropped.
#[derive(Debug, Default)]
pub struct KeyMemo(Mutex<Option<SessionId>>);

impl KeyMemo {
    /// The id a cookie `value` holds, with its store key: the remembered id when `value`
    /// is its value (compared in constant time; checked when it was first seen, so not
    /// parsed again), else parsed ([`SessionId::parse_bytes`]) and digested, and then
    /// remembered. `None` for a value tokengate can never have issued.
    pub fn id_of(&self, value: &[u8]) -> Option<SessionId> {
        let keyed = || {
            let mut id = SessionId::parse_bytes(value)?;
            id.key = Some(id.digest());
            Some(id)
        };
        // Poisoned by a panic elsewhere: no memo, just the parse and the digest.
        let Ok(mut last) = self.0.lock() else { return keyed() };
        if let Some(seen) = last.as_ref().filter(|seen| constant_time_eq(&seen.value, value)) {
            return Some(seen.clone());
        }
        let id = keyed()?;
        *last = Some(id.clone());
        Some(id)
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
        let padded = format!("{}=", "A".repeat(42));
        let stray_bits = format!("{}B", "A".repeat(42));
        for value in ["", "short", &"A".repeat(44), &"!".repeat(43), &"A".repeat(42), &padded, &stray_bits] {
            assert!(SessionId::parse(value).is_none(), "{value}");
        }
    }

    #[test]
    fn parse_accepts_exactly_what_a_strict_decoder_does() {
        // Every character in every position, against the base64 crate's strict decoder.
        let base = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
        for position in 0..SESSION_ID_LEN {
            for byte in 0u8..=255 {
                let mut value = base.value;
                value[position] = byte;
                let Ok(text) = std::str::from_utf8(&value) else { continue };
                let strict = URL_SAFE_NO_PAD.decode(text).is_ok_and(|decoded| decoded.len() == 32);
                assert_eq!(SessionId::parse(text).is_some(), strict, "{position} {byte}");
            }
        }
    }

    #[test]
    fn the_memo_gives_each_id_its_own_key() {
        let memo = KeyMemo::default();
        let a = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
        let b = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
        for id in [&a, &a, &b, &a, &b, &b] {
            let filled = memo.id_of(id.expose().as_bytes()).unwrap_or_else(|| panic!("parses"));
            assert_eq!(filled.key, Some(id.digest()), "the key of this id, never the last one's");
            assert!(filled == *id);
        }
        // What the memo holds is compared whole: a prefix of it, or it with more after,
        // is parsed as what it is (and refused), never taken for the id.
        let value = a.expose().as_bytes();
        assert!(memo.id_of(value).is_some());
        assert!(memo.id_of(&value[..value.len() - 1]).is_none());
        assert!(memo.id_of(&[value, b"A"].concat()).is_none());
        let mut flipped = value.to_vec();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let other = memo.id_of(&flipped);
        assert!(other.is_some_and(|other| other.key != Some(a.digest())), "another id, its own key");
    }

    #[test]
    fn debug_shows_a_hash_prefix_not_the_value() {
        let id = SessionId::generate().unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{id:?}");
        assert!(!shown.contains(id.expose()));
        assert!(!shown.contains(&id.expose()[..8]));
    }
}
