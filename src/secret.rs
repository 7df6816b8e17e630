//! Secrets that redact themselves.
//!
//! Tokens, cookie values, passwords and the client secret live only in the types of this
//! module. Their `Debug` prints `<redacted>`, they have no `Display` and no `Serialize`,
//! and their bytes are wiped when dropped. Reading the value takes `expose()`, which is
//! easy to find with grep: the Authorization header, the token-endpoint form, the cookie
//! writer and the store's codec are its only callers.
//!
//! Equality (`==`, used to notice a changed secret at a config reload) compares in time
//! that depends only on the lengths, never on where the values first differ.
//!
//! This module depends on nothing else in the crate but the leaf `tail_grams` (what the
//! leak guard needs of a token, made with it).

use std::fmt;

use zeroize::Zeroize;

use crate::tail_grams::TailGrams;

/// Whether `a` and `b` are equal, in time that depends only on their lengths: every byte
/// is compared, and the differences are folded together before the one branch.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// A string that must never be logged or shown.
#[derive(Clone)]
pub struct SecretString(String);

/// Constant-time (see [`constant_time_eq`]).
impl PartialEq for SecretString {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for SecretString {}

impl SecretString {
    /// Wraps a value.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself. Every caller is a place where a secret leaves its box.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string (an empty secret is a configuration error).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

macro_rules! secret_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// `==` is constant-time (it compares the inner [`SecretString`]).
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(SecretString);

        impl $name {
            /// Wraps a value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretString::new(value.into()))
            }

            /// The secret itself. Every caller is a place where a secret leaves its box.
            pub fn expose(&self) -> &str {
                self.0.expose()
            }

            /// Whether the value is empty.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

/// An access token issued by the Commerce API. Sent only upstream, in `Authorization`.
///
/// Whether it can go in a header as it is (visible ASCII: a token from the token service
/// is never trusted to be free of a line break) is worked out once, when it is made, not
/// on every call it is sent with.
///
/// `==` is constant-time (it compares the inner [`SecretString`]).
/// The grams of its tail are worked out when it is made too ([`TailGrams`]): the leak guard
/// searches for it without building anything per response.
#[derive(Clone)]
pub struct AccessToken {
    value: SecretString,
    header_safe: bool,
    grams: TailGrams,
}

/// Constant-time (the values; the rest is derived from them).
impl PartialEq for AccessToken {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for AccessToken {}

impl AccessToken {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        let value = SecretString::new(value.into());
        let bytes = value.expose().as_bytes();
        let header_safe = !bytes.is_empty() && bytes.iter().all(|byte| (0x21..=0x7e).contains(byte));
        let grams = TailGrams::of(bytes);
        Self { value, header_safe, grams }
    }

    /// The secret itself. Every caller is a place where a secret leaves its box.
    pub fn expose(&self) -> &str {
        self.value.expose()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// The token's bytes, if they can go in a header as they are.
    pub fn header_bytes(&self) -> Option<&[u8]> {
        self.header_safe.then(|| self.value.expose().as_bytes())
    }

    /// The token's bytes with the grams of its tail, for the leak guard's search.
    pub fn for_search(&self) -> (&[u8], &TailGrams) {
        (self.value.expose().as_bytes(), &self.grams)
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// A refresh token. Sent only to the token endpoint. Made with the grams of its tail, as an
/// [`AccessToken`] is.
///
/// `==` is constant-time (it compares the inner [`SecretString`]).
#[derive(Clone)]
pub struct RefreshToken {
    value: SecretString,
    grams: TailGrams,
}

impl PartialEq for RefreshToken {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for RefreshToken {}

impl RefreshToken {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        let value = SecretString::new(value.into());
        let grams = TailGrams::of(value.expose().as_bytes());
        Self { value, grams }
    }

    /// The secret itself. Every caller is a place where a secret leaves its box.
    pub fn expose(&self) -> &str {
        self.value.expose()
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// The token's bytes with the grams of its tail, for the leak guard's search.
    pub fn for_search(&self) -> (&[u8], &TailGrams) {
        (self.value.expose().as_bytes(), &self.grams)
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken(<redacted>)")
    }
}

secret_newtype!(
    /// The API client secret (the password half of HTTP Basic at the token endpoint).
    ClientSecret
);
secret_newtype!(
    /// The storefront server's secret for `POST /session/external` (client-hosted shoppers).
    StorefrontSecret
);
secret_newtype!(
    /// A shopper's password, held only for the duration of one login call.
    Password
);

/// A 256-bit symmetric key (for sealing the store). `Debug` is redacted; wiped on drop;
/// `==` is constant-time.
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl PartialEq for EncryptionKey {
    fn eq(&self, other: &Self) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl Eq for EncryptionKey {}

impl EncryptionKey {
    /// Wraps raw key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key bytes, for the cipher only.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for EncryptionKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let values = [
            format!("{:?}", AccessToken::new("abc123secret")),
            format!("{:?}", RefreshToken::new("abc123secret")),
            format!("{:?}", ClientSecret::new("abc123secret")),
            format!("{:?}", Password::new("abc123secret")),
            format!("{:?}", SecretString::new("abc123secret".into())),
            format!("{:#?}", Some(AccessToken::new("abc123secret"))),
        ];
        for shown in values {
            assert!(!shown.contains("abc123secret"), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
    }

    #[test]
    fn equality_compares_the_values() {
        assert_eq!(ClientSecret::new("s3cret"), ClientSecret::new("s3cret"));
        assert_ne!(ClientSecret::new("s3cret"), ClientSecret::new("s3creT"));
        assert_ne!(ClientSecret::new("s3cret"), ClientSecret::new("s3cret2"));
        assert_ne!(ClientSecret::new(""), ClientSecret::new("x"));
        assert_eq!(EncryptionKey::new([7; 32]), EncryptionKey::new([7; 32]));
        let mut other = [7; 32];
        other[31] = 8;
        assert_ne!(EncryptionKey::new([7; 32]), EncryptionKey::new(other));
    }

    #[test]
    fn expose_returns_the_value() {
        assert_eq!(AccessToken::new("t0k").expose(), "t0k");
        assert_eq!(AccessToken::new("t0k").header_bytes(), Some(&b"t0k"[..]));
        for unsafe_token in ["", "a b", "a\r\nX-Evil: 1", "caf\u{e9}", "tab\t"] {
            assert_eq!(AccessToken::new(unsafe_token).header_bytes(), None, "{unsafe_token:?}");
        }
    }
}
